//! The token store in PostgreSQL (`store.url`), shared by several replicas (CONTRACT section
//! 10 rule 3).
//!
//! The same records as the SQLite file, sealed the same way, in two tables of their own
//! (`xgate_meta`, `xgate_tokens`) created and migrated at start under an advisory lock, so
//! replicas starting together migrate once. A refresh ([`TokenStore::begin_refresh`]) is one
//! transaction that first takes a transaction-scoped advisory lock on the identity: one refresh
//! per identity at a time among all replicas, the pair re-read once the lock is held, the new
//! pair written and `NOTIFY xgate_tokens` sent in the commit that releases it. A replica that
//! dies holding the lock loses its connection, and PostgreSQL releases the lock with it.
//! [`TokenStore::changes`] LISTENs on its own connection (reconnecting with backoff), so the
//! replicas that did not refresh adopt the new pair promptly.
//!
//! A small pool (deadpool-postgres); every operation is bounded by [`OP_TIMEOUT`], and the lock
//! wait by [`LOCK_TIMEOUT`]. TLS (rustls on ring) when the URL asks for it with
//! `sslmode=require` (or `prefer`), the server verified against the webpki roots or the PEM
//! file of `sslrootcert=PATH`; without `sslmode`, none.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    Changes, KeyCheck, Refresh, RuleRow, Sealer, SpendRow, StoreError, StoreFuture, StoredToken,
    TokenKind, TokenStore,
};
use crate::config::EngineUrl;
use crate::secret::StoreKey;
use crate::shared::{Engine, Health, Observer};

/// The newest schema version this build writes.
const SCHEMA_VERSION: i32 = 3;

/// Connections in the pool: token operations are rare (logins, refreshes, adoptions).
const POOL_SIZE: usize = 4;

/// One operation (connect, query, commit).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refresh waits for another replica's refresh of the same identity: longer than
/// that refresh's three attempts at X.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// What a store outage means, in its one warning.
const STORE_DOWN: &str = "token store operations (refreshes included) fail until it answers";

/// The channel replicas are told on that an identity's record changed.
const CHANNEL: &str = "xgate_tokens";

/// The advisory lock that serialises migrations (any constant of our own).
const MIGRATION_LOCK: i64 = 0x7867_6174_6531; // "xgate1"

/// The PostgreSQL store.
pub struct PostgresStore {
    pool: Pool,
    /// For the listener's own connection.
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    sealer: Sealer,
    health: Arc<Health>,
    /// Whether the tables exist (a read-only open of an empty database finds none).
    schema: bool,
    listener: Mutex<Option<AbortHandle>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("at", &self.health.shown())
            .field("encrypted", &self.sealer.encrypts())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            listener.abort();
        }
    }
}

/// rustls on ring, for `sslmode=prefer|require`: the server verified against the webpki
/// roots, or against the PEM certificates of `sslrootcert` when the URL names a file.
fn tls(sslrootcert: Option<&std::path::Path>) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    match sslrootcert {
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            use rustls::pki_types::pem::PemObject as _;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("sslrootcert {}: no certificate", path.display()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Whether a PostgreSQL URL sets `sslmode` in its query.
fn has_sslmode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("sslmode"))
    })
}

/// A PostgreSQL error without anything the server echoed of our parameters.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

impl PostgresStore {
    /// Connects to `url`, checks `key` against the store's key-check record and, when
    /// `create`, creates or migrates the schema; without `create` (`xgate check`) nothing is
    /// changed, and a database without the tables is an empty store.
    pub async fn open(
        url: &EngineUrl,
        key: Option<&StoreKey>,
        observer: &Arc<dyn Observer>,
        create: bool,
    ) -> Result<Self, StoreError> {
        let io = |message: String| StoreError::Io {
            at: url.shown.clone(),
            message,
        };
        let (plain, root) = crate::config::postgres_url_parts(url.url.expose());
        let plain = zeroize::Zeroizing::new(plain);
        let mut pg: tokio_postgres::Config = plain
            .parse()
            .map_err(|e: tokio_postgres::Error| io(format!("not a PostgreSQL URL: {e}")))?;
        pg.connect_timeout(OP_TIMEOUT);
        // TLS only when the URL asks for it (`sslmode=require`, or `prefer` said explicitly):
        // tokio-postgres's default, `prefer`, would fail on a server whose certificate the
        // webpki roots do not cover instead of falling back.
        if !has_sslmode(url.url.expose()) {
            pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("xgate");
        }
        let tls = tls(root.as_deref()).map_err(|e| io(format!("TLS setup: {e}")))?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .create_timeout(Some(OP_TIMEOUT))
            .wait_timeout(Some(OP_TIMEOUT))
            .recycle_timeout(Some(OP_TIMEOUT))
            .build()
            .map_err(|e| io(format!("connection pool: {e}")))?;
        let health = Arc::new(Health::new(
            Engine::Postgres,
            url.shown.clone(),
            Arc::clone(observer),
        ));
        let mut store = Self {
            pool,
            pg,
            tls,
            sealer: Sealer::new(key),
            health,
            schema: true,
            listener: Mutex::new(None),
        };
        if create {
            store.migrate().await?;
        } else {
            store.schema = store.has_schema().await?;
        }
        store.check_key(create).await?;
        Ok(store)
    }

    fn io(&self, message: String) -> StoreError {
        StoreError::Io {
            at: self.health.shown().to_owned(),
            message,
        }
    }

    fn key_error(&self, message: &str) -> StoreError {
        StoreError::Key {
            at: self.health.shown().to_owned(),
            message: message.to_owned(),
        }
    }

    /// Runs `op` named `name` within [`OP_TIMEOUT`], observed and counted against the health.
    async fn timed<T, F>(&self, name: &'static str, op: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, String>>,
    {
        self.health
            .run(name, OP_TIMEOUT, op, STORE_DOWN)
            .await
            .map_err(|f| self.io(f.message))
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, String> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => describe(&e),
            other => other.to_string(),
        })
    }

    /// Creates or migrates the schema, one transaction under [`MIGRATION_LOCK`].
    async fn migrate(&self) -> Result<(), StoreError> {
        let found = self
            .timed("migrate", async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| describe(&e))?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                    .await
                    .map_err(|e| describe(&e))?;
                tx.batch_execute(
                    "CREATE TABLE IF NOT EXISTS xgate_meta (
                         key TEXT PRIMARY KEY,
                         value BYTEA NOT NULL
                     );
                     CREATE TABLE IF NOT EXISTS xgate_tokens (
                         identity TEXT NOT NULL,
                         kind TEXT NOT NULL,
                         data BYTEA NOT NULL,
                         updated_at BIGINT NOT NULL,
                         PRIMARY KEY (identity, kind)
                     );
                     CREATE TABLE IF NOT EXISTS xgate_spend (
                         day TEXT NOT NULL,
                         client TEXT NOT NULL,
                         identity TEXT NOT NULL,
                         endpoint TEXT NOT NULL,
                         requests BIGINT NOT NULL,
                         resources BIGINT NOT NULL,
                         repeats BIGINT NOT NULL,
                         posts BIGINT NOT NULL,
                         micros BIGINT NOT NULL,
                         PRIMARY KEY (day, client, identity, endpoint)
                     );
                     CREATE TABLE IF NOT EXISTS xgate_stream_rules (
                         app TEXT NOT NULL,
                         client TEXT NOT NULL,
                         x_id TEXT NOT NULL,
                         value TEXT NOT NULL,
                         x_tag TEXT NOT NULL,
                         tag TEXT,
                         created BIGSERIAL,
                         PRIMARY KEY (app, client, x_id)
                     );",
                )
                .await
                .map_err(|e| describe(&e))?;
                let row = tx
                    .query_opt(
                        "SELECT value FROM xgate_meta WHERE key = 'schema_version'",
                        &[],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                let found = match row {
                    Some(row) => {
                        let v: Vec<u8> = row.try_get(0).map_err(|e| describe(&e))?;
                        String::from_utf8_lossy(&v).parse::<i32>().unwrap_or(0)
                    }
                    None => 0,
                };
                if found < SCHEMA_VERSION {
                    tx.execute(
                        "INSERT INTO xgate_meta (key, value) VALUES ('schema_version', $1)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&SCHEMA_VERSION.to_string().into_bytes()],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                }
                tx.commit().await.map_err(|e| describe(&e))?;
                Ok(found)
            })
            .await?;
        if found > SCHEMA_VERSION {
            return Err(self.io(format!(
                "schema version {found} is newer than this xgate understands ({SCHEMA_VERSION}): upgrade xgate"
            )));
        }
        Ok(())
    }

    /// Whether the tables exist, without creating them.
    async fn has_schema(&self) -> Result<bool, StoreError> {
        self.timed("check", async {
            let client = self.client().await?;
            let row = client
                .query_one("SELECT to_regclass('xgate_tokens') IS NOT NULL", &[])
                .await
                .map_err(|e| describe(&e))?;
            row.try_get::<_, bool>(0).map_err(|e| describe(&e))
        })
        .await
    }

    /// The key-check record, as in the SQLite store: written with the first key (when
    /// `write`), verified on every later open.
    async fn check_key(&self, write: bool) -> Result<(), StoreError> {
        if !self.schema {
            return match self.sealer.judge(None, false, false) {
                Ok(KeyCheck::Wrong(why)) => Err(self.key_error(why)),
                Ok(_) => Ok(()),
                Err(e) => Err(self.io(e)),
            };
        }
        let (check, has_tokens) = self
            .timed("load", async {
                let client = self.client().await?;
                let check = client
                    .query_opt("SELECT value FROM xgate_meta WHERE key = 'key_check'", &[])
                    .await
                    .map_err(|e| describe(&e))?
                    .map(|row| row.try_get::<_, Vec<u8>>(0))
                    .transpose()
                    .map_err(|e| describe(&e))?;
                let has_tokens: bool = client
                    .query_one("SELECT EXISTS (SELECT 1 FROM xgate_tokens)", &[])
                    .await
                    .map_err(|e| describe(&e))?
                    .try_get(0)
                    .map_err(|e| describe(&e))?;
                Ok((check, has_tokens))
            })
            .await?;
        let judged = self
            .sealer
            .judge(check.as_deref(), has_tokens, write)
            .map_err(|e| self.io(e))?;
        match judged {
            KeyCheck::Fits => Ok(()),
            KeyCheck::Wrong(why) => Err(self.key_error(why)),
            KeyCheck::Write(sealed) => {
                // A replica starting at the same moment may have written its check first:
                // keep the first, then verify ours opens it.
                let stored = self
                    .timed("save", async {
                        let client = self.client().await?;
                        client
                            .execute(
                                "INSERT INTO xgate_meta (key, value) VALUES ('key_check', $1)
                                 ON CONFLICT (key) DO NOTHING",
                                &[&sealed],
                            )
                            .await
                            .map_err(|e| describe(&e))?;
                        client
                            .query_one("SELECT value FROM xgate_meta WHERE key = 'key_check'", &[])
                            .await
                            .map_err(|e| describe(&e))?
                            .try_get::<_, Vec<u8>>(0)
                            .map_err(|e| describe(&e))
                    })
                    .await?;
                match self.sealer.judge(Some(&stored), has_tokens, false) {
                    Ok(KeyCheck::Fits) => Ok(()),
                    _ => {
                        Err(self
                            .key_error("store.encryption_key does not open this store (wrong key)"))
                    }
                }
            }
        }
    }

    fn open_record(
        &self,
        identity: &str,
        kind: TokenKind,
        data: &[u8],
    ) -> Result<StoredToken, StoreError> {
        self.sealer
            .open_token(identity, kind, data)
            .map_err(|(key, why)| {
                if key {
                    self.key_error(&why)
                } else {
                    self.io(why)
                }
            })
    }

    /// Starts the LISTEN connection once; it runs until the store is dropped.
    fn listen(&self) -> Changes {
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(listen(
            self.pg.clone(),
            self.tls.clone(),
            Arc::clone(&self.health),
            tx,
        ));
        if let Some(old) = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(task.abort_handle())
        {
            old.abort();
        }
        rx
    }
}

/// `UPSERT` of one record, and the notification the other replicas listen for (delivered
/// when the transaction that sent it commits).
const SAVE: &str = "INSERT INTO xgate_tokens (identity, kind, data, updated_at)
     VALUES ($1, $2, $3, extract(epoch from now())::bigint)
     ON CONFLICT (identity, kind) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at";

fn notify(identity: &str) -> String {
    // Identity names are plain (`A-Z a-z 0-9 _ . -`), so they need no quoting beyond this.
    format!("NOTIFY {CHANNEL}, '{}'", identity.replace('\'', "''"))
}

/// A figure as PostgreSQL stores it (`BIGINT`).
fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Adds a day's figures to what is stored (the row's key taken from `$1`–`$4`).
const ADD_SPEND: &str = "INSERT INTO xgate_spend
         (day, client, identity, endpoint, requests, resources, repeats, posts, micros)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (day, client, identity, endpoint) DO UPDATE SET
         requests = xgate_spend.requests + excluded.requests,
         resources = xgate_spend.resources + excluded.resources,
         repeats = xgate_spend.repeats + excluded.repeats,
         posts = xgate_spend.posts + excluded.posts,
         micros = xgate_spend.micros + excluded.micros";

impl TokenStore for PostgresStore {
    fn add_spend<'a>(&'a self, rows: &'a [SpendRow]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.timed("add_spend", async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| describe(&e))?;
                for r in rows {
                    tx.execute(
                        ADD_SPEND,
                        &[
                            &r.day,
                            &r.client,
                            &r.identity,
                            &r.endpoint,
                            &int(r.requests),
                            &int(r.resources),
                            &int(r.repeats),
                            &int(r.posts),
                            &int(r.micros),
                        ],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                }
                tx.commit().await.map_err(|e| describe(&e))
            })
            .await
        })
    }

    fn spend<'a>(&'a self, from: &'a str, to: &'a str) -> StoreFuture<'a, Vec<SpendRow>> {
        Box::pin(async move {
            if !self.schema {
                return Ok(Vec::new());
            }
            self.timed("spend", async {
                let client = self.client().await?;
                let exists: bool = client
                    .query_one("SELECT to_regclass('xgate_spend') IS NOT NULL", &[])
                    .await
                    .and_then(|r| r.try_get(0))
                    .map_err(|e| describe(&e))?;
                if !exists {
                    return Ok(Vec::new());
                }
                let rows = client
                    .query(
                        "SELECT day, client, identity, endpoint, requests, resources, repeats, posts, micros
                         FROM xgate_spend WHERE day >= $1 AND day <= $2
                         ORDER BY day, client, identity, endpoint",
                        &[&from, &to],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                let uint = |v: i64| u64::try_from(v).unwrap_or(0);
                rows.iter()
                    .map(|r| {
                        Ok(SpendRow {
                            day: r.try_get(0)?,
                            client: r.try_get(1)?,
                            identity: r.try_get(2)?,
                            endpoint: r.try_get(3)?,
                            requests: uint(r.try_get(4)?),
                            resources: uint(r.try_get(5)?),
                            repeats: uint(r.try_get(6)?),
                            posts: uint(r.try_get(7)?),
                            micros: uint(r.try_get(8)?),
                        })
                    })
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                    .map_err(|e| describe(&e))
            })
            .await
        })
    }

    fn stream_rules<'a>(&'a self, app: &'a str) -> StoreFuture<'a, Vec<RuleRow>> {
        Box::pin(async move {
            if !self.schema {
                return Ok(Vec::new());
            }
            self.timed("stream_rules", async {
                let client = self.client().await?;
                let rows = client
                    .query(
                        "SELECT client, x_id, value, x_tag, tag FROM xgate_stream_rules
                         WHERE app = $1 ORDER BY client, created",
                        &[&app],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                rows.iter()
                    .map(|r| {
                        Ok(RuleRow {
                            client: r.try_get(0)?,
                            x_id: r.try_get(1)?,
                            value: r.try_get(2)?,
                            x_tag: r.try_get(3)?,
                            tag: r.try_get(4)?,
                        })
                    })
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()
                    .map_err(|e| describe(&e))
            })
            .await
        })
    }

    fn change_stream_rules<'a>(
        &'a self,
        app: &'a str,
        add: &'a [RuleRow],
        remove: &'a [(String, String)],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.timed("change_stream_rules", async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| describe(&e))?;
                for (c, x_id) in remove {
                    tx.execute(
                        "DELETE FROM xgate_stream_rules WHERE app = $1 AND client = $2 AND x_id = $3",
                        &[&app, c, x_id],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                }
                for r in add {
                    tx.execute(
                        "INSERT INTO xgate_stream_rules (app, client, x_id, value, x_tag, tag)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (app, client, x_id) DO UPDATE
                         SET value = excluded.value, x_tag = excluded.x_tag, tag = excluded.tag",
                        &[&app, &r.client, &r.x_id, &r.value, &r.x_tag, &r.tag],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                }
                tx.commit().await.map_err(|e| describe(&e))
            })
            .await
        })
    }

    fn load_meta<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        Box::pin(async move {
            if !self.schema {
                return Ok(None);
            }
            self.timed("load_meta", async {
                let client = self.client().await?;
                client
                    .query_opt("SELECT value FROM xgate_meta WHERE key = $1", &[&key])
                    .await
                    .map_err(|e| describe(&e))?
                    .map(|row| row.try_get::<_, Vec<u8>>(0))
                    .transpose()
                    .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
                    .map_err(|e| describe(&e))
            })
            .await
        })
    }

    fn save_meta<'a>(&'a self, key: &'a str, value: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.timed("save_meta", async {
                let client = self.client().await?;
                client
                    .execute(
                        "INSERT INTO xgate_meta (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        &[&key, &value.as_bytes()],
                    )
                    .await
                    .map(drop)
                    .map_err(|e| describe(&e))
            })
            .await
        })
    }

    fn load<'a>(
        &'a self,
        identity: &'a str,
        kind: TokenKind,
    ) -> StoreFuture<'a, Option<StoredToken>> {
        Box::pin(async move {
            if !self.schema {
                return Ok(None);
            }
            let data = self
                .timed("load", async {
                    let client = self.client().await?;
                    client
                        .query_opt(
                            "SELECT data FROM xgate_tokens WHERE identity = $1 AND kind = $2",
                            &[&identity, &kind.as_str()],
                        )
                        .await
                        .map_err(|e| describe(&e))?
                        .map(|row| row.try_get::<_, Vec<u8>>(0))
                        .transpose()
                        .map_err(|e| describe(&e))
                })
                .await?;
            data.map(|d| self.open_record(identity, kind, &d))
                .transpose()
        })
    }

    fn save<'a>(&'a self, identity: &'a str, token: &'a StoredToken) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let data = self
                .sealer
                .seal_token(identity, token)
                .map_err(|e| self.io(e))?;
            self.timed("save", async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(|e| describe(&e))?;
                tx.execute(SAVE, &[&identity, &token.kind().as_str(), &data])
                    .await
                    .map_err(|e| describe(&e))?;
                tx.batch_execute(&notify(identity))
                    .await
                    .map_err(|e| describe(&e))?;
                tx.commit().await.map_err(|e| describe(&e))
            })
            .await
        })
    }

    fn delete<'a>(&'a self, identity: &'a str, kind: TokenKind) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if !self.schema {
                return Ok(());
            }
            self.timed("delete", async {
                let client = self.client().await?;
                client
                    .execute(
                        "DELETE FROM xgate_tokens WHERE identity = $1 AND kind = $2",
                        &[&identity, &kind.as_str()],
                    )
                    .await
                    .map(drop)
                    .map_err(|e| describe(&e))
            })
            .await
        })
    }

    fn begin_refresh<'a>(&'a self, identity: &'a str) -> StoreFuture<'a, Box<dyn Refresh>> {
        Box::pin(async move {
            // The lock wait is longer than one operation: bounded by LOCK_TIMEOUT instead.
            let locking = async {
                let client = self.client().await?;
                client
                    .batch_execute(&format!(
                        "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                        LOCK_TIMEOUT.as_millis()
                    ))
                    .await
                    .map_err(|e| describe(&e))?;
                let mut held = Held {
                    client: Some(client),
                };
                let client = held.client().map_err(str::to_owned)?;
                client
                    .execute(
                        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                        &[&format!("xgate-refresh:{identity}")],
                    )
                    .await
                    .map_err(|e| describe(&e))?;
                // FOR UPDATE: a database that only reads (a standby, a read-only
                // transaction default) refuses it here, before X is asked.
                let data = client
                    .query_opt(
                        "SELECT data FROM xgate_tokens WHERE identity = $1 AND kind = 'oauth2' FOR UPDATE",
                        &[&identity],
                    )
                    .await
                    .map_err(|e| describe(&e))?
                    .map(|row| row.try_get::<_, Vec<u8>>(0))
                    .transpose()
                    .map_err(|e| describe(&e))?;
                Ok::<_, String>((held, data))
            };
            let (held, data) = self
                .health
                .run("lock", LOCK_TIMEOUT + OP_TIMEOUT, locking, STORE_DOWN)
                .await
                .map_err(|f| self.io(f.message))?;
            let stored = data
                .map(|d| self.open_record(identity, TokenKind::Oauth2, &d))
                .transpose()?;
            Ok(Box::new(PostgresRefresh {
                held,
                identity: identity.to_owned(),
                stored,
                sealer: self.sealer.clone(),
                health: Arc::clone(&self.health),
            }) as Box<dyn Refresh>)
        })
    }

    fn changes(&self) -> Option<Changes> {
        Some(self.listen())
    }
}

/// A pooled connection inside an open transaction. Dropped without a commit, the transaction
/// is rolled back on a task of its own (then the connection goes back to the pool); with no
/// runtime to run that on, the connection is closed instead, which rolls back too.
struct Held {
    client: Option<Object>,
}

impl Held {
    fn client(&mut self) -> Result<&mut Object, &'static str> {
        self.client
            .as_mut()
            .ok_or("the refresh transaction is gone")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(Object::take(client));
                    }
                });
            }
            Err(_) => drop(Object::take(client)),
        }
    }
}

/// A refresh holding the identity's lock in PostgreSQL.
struct PostgresRefresh {
    held: Held,
    identity: String,
    stored: Option<StoredToken>,
    sealer: Sealer,
    health: Arc<Health>,
}

impl fmt::Debug for PostgresRefresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresRefresh")
            .field("identity", &self.identity)
            .field("stored", &self.stored)
            .finish_non_exhaustive()
    }
}

impl Refresh for PostgresRefresh {
    fn stored(&self) -> Option<&StoredToken> {
        self.stored.as_ref()
    }

    fn commit(self: Box<Self>, token: StoredToken) -> StoreFuture<'static, ()> {
        let Self {
            mut held,
            identity,
            sealer,
            health,
            ..
        } = *self;
        Box::pin(async move {
            let at = || health.shown().to_owned();
            let data = sealer
                .seal_token(&identity, &token)
                .map_err(|message| StoreError::Io { at: at(), message })?;
            let committing = async {
                let client = held.client().map_err(str::to_owned)?;
                client
                    .execute(SAVE, &[&identity, &TokenKind::Oauth2.as_str(), &data])
                    .await
                    .map_err(|e| describe(&e))?;
                client
                    .batch_execute(&format!("{}; COMMIT", notify(&identity)))
                    .await
                    .map_err(|e| describe(&e))?;
                // Committed: the connection goes back to the pool as it is.
                drop(held.client.take());
                Ok::<_, String>(())
            };
            health
                .run("commit", OP_TIMEOUT, committing, STORE_DOWN)
                .await
                .map_err(|f| StoreError::Io {
                    at: at(),
                    message: f.message,
                })
        })
    }
}

/// What the LISTEN connection saw.
enum Heard {
    /// `LISTEN` was accepted (`true`) or refused.
    Subscribed(bool),
    /// A message from the server, or the connection's end.
    Message(Option<Result<Box<tokio_postgres::AsyncMessage>, tokio_postgres::Error>>),
}

/// The LISTEN connection: forwards each notification's identity to `tx`, reconnecting with
/// backoff, until `tx`'s receiver is gone. Each time LISTEN is accepted it first sends an
/// empty name, "every identity": what changed before (between the pairs read at start and the
/// first LISTEN, or while disconnected) is unknown.
async fn listen(
    pg: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    health: Arc<Health>,
    tx: mpsc::Sender<String>,
) {
    use std::task::Poll;
    let mut backoff = Duration::from_millis(100);
    loop {
        match pg.connect(tls.clone()).await {
            Ok((client, mut conn)) => {
                let subscribe = format!("LISTEN {CHANNEL}");
                let mut listening = std::pin::pin!(client.batch_execute(&subscribe));
                let mut subscribed = false;
                loop {
                    let heard = std::future::poll_fn(|cx| {
                        if !subscribed {
                            if let Poll::Ready(r) = listening.as_mut().poll(cx) {
                                return Poll::Ready(Heard::Subscribed(r.is_ok()));
                            }
                        }
                        conn.poll_message(cx)
                            .map(|m| Heard::Message(m.map(|m| m.map(Box::new))))
                    })
                    .await;
                    match heard {
                        Heard::Subscribed(true) => {
                            subscribed = true;
                            backoff = Duration::from_millis(100);
                            health.succeeded();
                            if tx.send(String::new()).await.is_err() {
                                return;
                            }
                        }
                        Heard::Message(Some(Ok(message))) => {
                            let tokio_postgres::AsyncMessage::Notification(n) = *message else {
                                continue;
                            };
                            if tx.send(n.payload().to_owned()).await.is_err() {
                                return;
                            }
                        }
                        Heard::Subscribed(false) | Heard::Message(Some(Err(_)) | None) => break,
                    }
                }
            }
            Err(e) => {
                health.failed(
                    &describe(&e),
                    "replicas pick up rotated tokens when they next refresh",
                );
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
