//! The token store: where tokens obtained from X live (CONTRACT sections 2, 6 and 10).
//!
//! Owns the [`TokenStore`] trait, the records ([`StoredToken`]), sealing them at rest
//! ([`Sealer`]: XChaCha20-Poly1305 with a fresh random nonce each, the identity and kind as
//! associated data, and a key-check record that makes a wrong key a clear error at open, never
//! garbage), and [`open`], the one place that picks the backend:
//! - [`sqlite::SqliteStore`], the embedded default: one file at `store.path`;
//! - [`postgres::PostgresStore`], at `store.url`: one database shared by several replicas,
//!   whose refresh is exclusive among them (a lock in the database).

pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

pub use sqlite::SqliteStore;

use crate::clock::fill_random;
use crate::config::StoreLocation;
use crate::secret::StoreKey;
use crate::shared::Observer;

/// What the key-check record seals.
const KEY_CHECK: &[u8] = b"xgate token store key check v1";

/// A stored credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredToken {
    /// An OAuth 2.0 user token pair (`xgate login`).
    Oauth2 {
        /// The access token.
        access_token: String,
        /// The refresh token, when `offline.access` was granted.
        refresh_token: Option<String>,
        /// When the access token expires (Unix seconds), if X said.
        expires_at: Option<u64>,
        /// The scopes X granted.
        scopes: Vec<String>,
    },
    /// An App's app-only Bearer token (`xgate bearer`).
    Bearer {
        /// The token.
        token: String,
    },
    /// An OAuth 1.0a user's access token and secret (`xgate login --oauth1`).
    Oauth1 {
        /// `oauth_token`.
        token: String,
        /// Its secret.
        token_secret: String,
    },
}

impl StoredToken {
    /// The record kind (a column of the table).
    pub fn kind(&self) -> TokenKind {
        match self {
            Self::Oauth2 { .. } => TokenKind::Oauth2,
            Self::Bearer { .. } => TokenKind::Bearer,
            Self::Oauth1 { .. } => TokenKind::Oauth1,
        }
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token values.
        match self {
            Self::Oauth2 {
                expires_at, scopes, ..
            } => f
                .debug_struct("Oauth2")
                .field("expires_at", expires_at)
                .field("scopes", scopes)
                .finish_non_exhaustive(),
            Self::Bearer { .. } => f.write_str("Bearer([redacted])"),
            Self::Oauth1 { .. } => f.write_str("Oauth1([redacted])"),
        }
    }
}

impl Drop for StoredToken {
    fn drop(&mut self) {
        use zeroize::Zeroize as _;
        match self {
            Self::Oauth2 {
                access_token,
                refresh_token,
                ..
            } => {
                access_token.zeroize();
                refresh_token.zeroize();
            }
            Self::Bearer { token } => token.zeroize(),
            Self::Oauth1 {
                token,
                token_secret,
            } => {
                token.zeroize();
                token_secret.zeroize();
            }
        }
    }
}

/// Which kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// [`StoredToken::Oauth2`].
    Oauth2,
    /// [`StoredToken::Bearer`].
    Bearer,
    /// [`StoredToken::Oauth1`].
    Oauth1,
}

impl TokenKind {
    /// The record kind's name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oauth2 => "oauth2",
            Self::Bearer => "bearer",
            Self::Oauth1 => "oauth1",
        }
    }
}

/// The store failed; the message names the store (its file, or its database without user or
/// password) and never a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached, opened, read or written.
    #[error("token store {at}: {message}")]
    Io {
        /// The store: its file, or `postgres://host:port/db`.
        at: String,
        /// What failed.
        message: String,
    },
    /// `store.encryption_key` does not open this store (or one is needed, or was not used).
    #[error("token store {at}: {message}")]
    Key {
        /// The store.
        at: String,
        /// What is wrong.
        message: String,
    },
}

impl StoreError {
    /// Whether the configuration is at fault (exit status 2) rather than the system.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Key { .. })
    }
}

/// What a [`TokenStore`] operation gives back, later.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where tokens are kept: the one interface every command and the proxy use, whatever the
/// backend (the embedded SQLite file; a database shared by replicas). Operations are async
/// and fallible, so a networked backend fits behind it with its own timeouts. Implementations
/// are durable: when `save` (or a refresh's `commit`) returns, the record survives a crash.
pub trait TokenStore: Send + Sync + fmt::Debug {
    /// The record of `kind` for `identity`.
    fn load<'a>(
        &'a self,
        identity: &'a str,
        kind: TokenKind,
    ) -> StoreFuture<'a, Option<StoredToken>>;
    /// Replaces the record of the token's kind for `identity`, durably.
    fn save<'a>(&'a self, identity: &'a str, token: &'a StoredToken) -> StoreFuture<'a, ()>;
    /// Forgets the record of `kind` for `identity`.
    fn delete<'a>(&'a self, identity: &'a str, kind: TokenKind) -> StoreFuture<'a, ()>;
    /// Begins the refresh of `identity`'s OAuth 2.0 pair: the record as it is now, read once
    /// the refresh is this caller's, and the way to commit its successor. A store shared by
    /// several processes makes it exclusive among them (a lock in the database) until
    /// committed or dropped; the embedded store, which one proxy process serves from, needs
    /// no more than the proxy's own one-refresh-per-identity rule. Every backend fails here,
    /// before X is asked, when it cannot be written now (a read-only or full disk, a database
    /// that is down): X's answer rotates the refresh token, so a pair that cannot be kept must
    /// not be asked for.
    fn begin_refresh<'a>(&'a self, identity: &'a str) -> StoreFuture<'a, Box<dyn Refresh>>;
    /// Where the names of identities whose records another process changed arrive (a shared
    /// store's notifications), so a replica drops a rotated access token promptly; `None` for
    /// a store only this process writes to while serving.
    fn changes(&self) -> Option<Changes> {
        None
    }
    /// Adds `rows` to the spend kept per UTC day, client, identity and endpoint, in one
    /// transaction (CONTRACT section 11 rule 4): each figure of a row already stored grows by
    /// the new row's.
    fn add_spend<'a>(&'a self, rows: &'a [SpendRow]) -> StoreFuture<'a, ()>;
    /// Every spend row of the UTC days `from` to `to` (`YYYY-MM-DD`, both included).
    fn spend<'a>(&'a self, from: &'a str, to: &'a str) -> StoreFuture<'a, Vec<SpendRow>>;
    /// A value of the store's metadata (not a secret: an identity's X user id).
    fn load_meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Sets a value of the store's metadata.
    fn save_meta<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()>;
    /// Every filtered-stream rule of `app`'s clients (CONTRACT section 12 rule 2).
    fn stream_rules<'a>(&'a self, app: &'a str) -> StoreFuture<'a, Vec<RuleRow>>;
    /// Adds `add` and removes `remove` (client, X rule id) among `app`'s rules, in one
    /// transaction.
    fn change_stream_rules<'a>(
        &'a self,
        app: &'a str,
        add: &'a [RuleRow],
        remove: &'a [(String, String)],
    ) -> StoreFuture<'a, ()>;
}

/// A client's filtered-stream rule and the rule at X it is: one X rule per distinct value,
/// which every client that added the value refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    /// The client's name.
    pub client: String,
    /// X's id of the rule.
    pub x_id: String,
    /// The rule's value.
    pub value: String,
    /// The tag xgate gave the rule at X.
    pub x_tag: String,
    /// The client's own tag, if it gave one.
    pub tag: Option<String>,
}

/// Metered spend of one UTC day, client, identity and endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendRow {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// The client's name.
    pub client: String,
    /// The identity's name.
    pub identity: String,
    /// The endpoint (`GET /2/tweets/:id`), or `other`.
    pub endpoint: String,
    /// Requests metered.
    pub requests: u64,
    /// Billable resources returned, repeats of the day included.
    pub resources: u64,
    /// Of them, repeats of a resource already metered that day for the App (cost 0).
    pub repeats: u64,
    /// Posts read (what X's `GET /2/usage/tweets` counts): new resources of "Posts: Read".
    pub posts: u64,
    /// The metered cost, micro-USD.
    pub micros: u64,
}

/// A refresh begun with [`TokenStore::begin_refresh`]. Dropped without [`Refresh::commit`],
/// it changes nothing and lets the next refresh begin.
pub trait Refresh: Send + fmt::Debug {
    /// The record when the refresh began (another process may have rotated it).
    fn stored(&self) -> Option<&StoredToken>;
    /// Stores the new pair durably, ending the refresh.
    fn commit(self: Box<Self>, token: StoredToken) -> StoreFuture<'static, ()>;
}

/// A backend's change feed: the names of identities whose records another process changed;
/// an empty name means any of them may have changed.
pub type Changes = tokio::sync::mpsc::Receiver<String>;

/// Seals token records with `store.encryption_key`, or passes them through without one.
#[derive(Clone)]
pub struct Sealer {
    cipher: Option<XChaCha20Poly1305>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("encrypted", &self.cipher.is_some())
            .finish()
    }
}

/// What a store's key-check record says about the configured key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key (or its absence) fits the store.
    Fits,
    /// A new encrypted store: this sealed check record is to be written.
    Write(Vec<u8>),
    /// It does not: why, for [`StoreError::Key`].
    Wrong(&'static str),
}

impl Sealer {
    /// A sealer for `key` (none: records are stored as they are).
    pub fn new(key: Option<&StoreKey>) -> Self {
        Self {
            cipher: key.map(|k| XChaCha20Poly1305::new(k.expose().into())),
        }
    }

    /// Whether records are encrypted.
    pub fn encrypts(&self) -> bool {
        self.cipher.is_some()
    }

    /// `nonce || ciphertext`, or the plain bytes without a key.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
        let Some(cipher) = &self.cipher else {
            return Ok(plain.to_vec());
        };
        let mut nonce = [0u8; 24];
        fill_random(&mut nonce).map_err(|e| e.to_string())?;
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_opaque| "encryption failed".to_owned())?;
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plain bytes of `stored`, or `None` when the key does not open it.
    pub fn open(&self, stored: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let Some(cipher) = &self.cipher else {
            return Some(stored.to_vec());
        };
        let (nonce, sealed) = stored.split_at_checked(24)?;
        cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }

    /// Judges the configured key against a store's key-check record (`check`) and whether it
    /// holds tokens. `write`: a store being opened for use, which gets a check record with
    /// its first key; `xgate check` passes `false` and changes nothing.
    pub fn judge(
        &self,
        check: Option<&[u8]>,
        has_tokens: bool,
        write: bool,
    ) -> Result<KeyCheck, String> {
        Ok(match (self.encrypts(), check) {
            (true, Some(sealed)) => {
                if self.open(sealed, b"key_check").as_deref() == Some(KEY_CHECK) {
                    KeyCheck::Fits
                } else {
                    KeyCheck::Wrong("store.encryption_key does not open this store (wrong key)")
                }
            }
            (true, None) if has_tokens => KeyCheck::Wrong(
                "the store holds unencrypted tokens; remove store.encryption_key, or move the store away and log in again to start an encrypted one",
            ),
            (true, None) if !write => KeyCheck::Fits,
            (true, None) => KeyCheck::Write(self.seal(KEY_CHECK, b"key_check")?),
            (false, Some(_)) => {
                KeyCheck::Wrong("the store is encrypted: set store.encryption_key to its key")
            }
            (false, None) => KeyCheck::Fits,
        })
    }

    /// Seals `token` as `identity`'s record.
    pub fn seal_token(&self, identity: &str, token: &StoredToken) -> Result<Vec<u8>, String> {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(token).map_err(|e| e.to_string())?);
        self.seal(&plain, &aad(identity, token.kind()))
    }

    /// Opens `identity`'s record of `kind`; the error says whether the key or the record is at
    /// fault.
    pub fn open_token(
        &self,
        identity: &str,
        kind: TokenKind,
        data: &[u8],
    ) -> Result<StoredToken, (bool, String)> {
        let plain =
            zeroize::Zeroizing::new(self.open(data, &aad(identity, kind)).ok_or_else(|| {
                (
                    true,
                    "a token record does not decrypt with store.encryption_key".to_owned(),
                )
            })?);
        serde_json::from_slice(&plain).map_err(|e| {
            (
                false,
                format!("a token record for {identity} is unreadable: {e}"),
            )
        })
    }
}

fn aad(identity: &str, kind: TokenKind) -> Vec<u8> {
    format!("{identity}\0{}", kind.as_str()).into_bytes()
}

/// Opens the token store `[store]` configures, creating it (or its schema) if missing: the
/// one place that picks the backend, so every command and the proxy use the same one.
pub async fn open(
    config: &crate::config::Store,
    observer: &Arc<dyn Observer>,
) -> Result<Arc<dyn TokenStore>, StoreError> {
    match &config.location {
        StoreLocation::File(path) => {
            let (path, key) = (path.clone(), config.encryption_key.clone());
            let at = path.display().to_string();
            let opened =
                tokio::task::spawn_blocking(move || SqliteStore::open(&path, key.as_ref()))
                    .await
                    .map_err(|e| StoreError::Io {
                        at,
                        message: format!("opening the store did not finish: {e}"),
                    })??;
            Ok(Arc::new(opened))
        }
        StoreLocation::Postgres(url) => Ok(Arc::new(
            postgres::PostgresStore::open(url, config.encryption_key.as_ref(), observer, true)
                .await?,
        )),
    }
}

/// Opens the configured store without creating or changing it (`check`, `sign`); `None` when
/// there is none yet.
pub async fn open_existing(
    config: &crate::config::Store,
    observer: &Arc<dyn Observer>,
) -> Result<Option<Arc<dyn TokenStore>>, StoreError> {
    match &config.location {
        StoreLocation::File(path) => Ok(SqliteStore::open_read_only(
            path,
            config.encryption_key.as_ref(),
        )?
        .map(|s| Arc::new(s) as Arc<dyn TokenStore>)),
        StoreLocation::Postgres(url) => Ok(Some(Arc::new(
            postgres::PostgresStore::open(url, config.encryption_key.as_ref(), observer, false)
                .await?,
        ))),
    }
}
