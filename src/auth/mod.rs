//! Outbound credentials: what xgate attaches to a request before it goes upstream.
//!
//! Owns the identities table built from the config ([`Identities`]), the credential of each
//! ([`Credential`]: a Bearer header value, an OAuth 1.0a key, or missing with a hint for the
//! operator), attaching it to a request ([`Identities::authorize`]), and the offset to
//! upstream's clock for OAuth 1.0a timestamps ([`ClockSkew`], CONTRACT section 4). Only this
//! module and `config` read secret values; header values made from them are marked sensitive.

pub mod oauth1;
pub mod oauth2;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use http::{HeaderMap, HeaderValue, header};

use crate::clock::{Clock, RandomNonce, SystemClock};
use crate::config::{Config, UserAuth};
use crate::error::ProxyError;
use crate::secret::SecretString;
use crate::store::{StoredToken, TokenKind, TokenStore};
use oauth1::{Oauth1Key, Oauth1Signer};

/// What kind of identity a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// An App: app-only Bearer.
    App,
    /// A user with OAuth 1.0a.
    Oauth1User,
    /// A user with OAuth 2.0 tokens from the store.
    Oauth2User,
}

/// How a request as this identity is authorised.
#[derive(Debug)]
pub enum Credential {
    /// `Authorization: Bearer ...`, prepared once and marked sensitive.
    Bearer(HeaderValue),
    /// OAuth 1.0a user context.
    Oauth1(Box<Oauth1Key>),
    /// OAuth 2.0 user context: the token pair lives in [`oauth2::Oauth2Users`].
    Oauth2,
    /// Nothing usable yet; `hint` tells the operator what to do.
    Missing {
        /// What the operator should do.
        hint: String,
    },
}

/// One identity: an App or a user of one.
#[derive(Debug)]
pub struct Identity {
    /// The name clients use (`X-Xgate-Identity`).
    pub name: Arc<str>,
    /// App or user, and which auth.
    pub kind: IdentityKind,
    /// Its credential.
    pub credential: Credential,
    /// The App it acts through (its own index for an App).
    pub app: IdentityId,
    /// OAuth 2.0 scopes it has (the configured ones until the token store lands); empty for
    /// other kinds.
    pub scopes: Vec<String>,
}

/// Index of an identity in [`Identities`].
pub type IdentityId = usize;

/// Every identity of the config, by index and by name.
#[derive(Debug)]
pub struct Identities {
    list: Vec<Identity>,
    by_name: HashMap<String, IdentityId>,
    signer: Oauth1Signer<SystemClock, RandomNonce>,
    skew: ClockSkew,
}

/// A secret that cannot be a header value (control characters, newlines).
#[derive(Debug, thiserror::Error)]
#[error("{0}: not usable in an HTTP header (control characters or non-ASCII text)")]
pub struct BadCredential(pub String);

/// The identities table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IdentitiesError {
    /// A credential is not usable.
    #[error(transparent)]
    Credential(#[from] BadCredential),
    /// The token store failed.
    #[error(transparent)]
    Store(crate::store::StoreError),
}

fn bearer_header(token: &str, path: &str) -> Result<HeaderValue, BadCredential> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_invalid| BadCredential(path.to_owned()))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Identities {
    /// Builds the table from a validated config; credentials proxy.toml lacks are taken from
    /// `store` (an App's Bearer from `xgate bearer`, an OAuth 1.0a pair from
    /// `xgate login --oauth1`).
    pub fn from_config(
        config: &Config,
        store: Option<&dyn TokenStore>,
    ) -> Result<Self, IdentitiesError> {
        let stored = |name: &str, kind| -> Result<Option<StoredToken>, IdentitiesError> {
            match store {
                Some(s) => s.load(name, kind).map_err(IdentitiesError::Store),
                None => Ok(None),
            }
        };
        let mut list = Vec::with_capacity(config.apps.len() + config.users.len());
        // Apps come first, in `config.apps` order, so an App's index is its position there.
        let app_index = |name: &str| config.apps.keys().position(|k| k == name).unwrap_or(0);
        for app in config.apps.values() {
            let from_store = stored(&app.name, TokenKind::Bearer)?;
            let credential = match (&app.bearer_token, from_store.as_ref()) {
                (Some(token), _) => Credential::Bearer(bearer_header(
                    token.expose(),
                    &format!("apps.{}.bearer_token", app.name),
                )?),
                (None, Some(StoredToken::Bearer { token })) => Credential::Bearer(bearer_header(
                    token,
                    &format!("the Bearer token stored for {}", app.name),
                )?),
                (None, _) => Credential::Missing {
                    hint: format!(
                        "set apps.{0}.bearer_token or run `xgate bearer --app {0}`",
                        app.name
                    ),
                },
            };
            list.push(Identity {
                name: Arc::from(app.name.as_str()),
                kind: IdentityKind::App,
                credential,
                app: list.len(),
                scopes: Vec::new(),
            });
        }
        for user in config.users.values() {
            let mut scopes = Vec::new();
            let (kind, credential) = match &user.auth {
                UserAuth::Oauth1 { token } => {
                    let consumer = config.apps.get(&user.app).and_then(|a| a.consumer.as_ref());
                    let pair = match token {
                        Some((t, s)) => Some((t.clone(), s.clone())),
                        None => match stored(&user.name, TokenKind::Oauth1)?.as_ref() {
                            Some(StoredToken::Oauth1 {
                                token,
                                token_secret,
                            }) => Some((
                                SecretString::from(token.as_str()),
                                SecretString::from(token_secret.as_str()),
                            )),
                            _ => None,
                        },
                    };
                    let credential = match (consumer, &pair) {
                        (Some(c), Some((token, secret))) => Credential::Oauth1(Box::new(
                            Oauth1Key::new(&c.key, &c.secret, Some((token, secret))),
                        )),
                        _ => Credential::Missing {
                            hint: format!(
                                "set users.{0}.token and token_secret, or run `xgate login --identity {0} --oauth1`",
                                user.name
                            ),
                        },
                    };
                    (IdentityKind::Oauth1User, credential)
                }
                UserAuth::Oauth2 { scopes: configured } => {
                    scopes.clone_from(configured);
                    (IdentityKind::Oauth2User, Credential::Oauth2)
                }
            };
            list.push(Identity {
                name: Arc::from(user.name.as_str()),
                kind,
                credential,
                app: app_index(&user.app),
                scopes,
            });
        }
        let by_name = list
            .iter()
            .enumerate()
            .map(|(i, id)| (id.name.to_string(), i))
            .collect();
        Ok(Self {
            list,
            by_name,
            signer: Oauth1Signer::new(SystemClock, RandomNonce),
            skew: ClockSkew::default(),
        })
    }

    /// The identity called `name`.
    pub fn find(&self, name: &str) -> Option<IdentityId> {
        self.by_name.get(name).copied()
    }

    /// The identity at `id`.
    pub fn get(&self, id: IdentityId) -> Option<&Identity> {
        self.list.get(id)
    }

    /// Every identity, by index.
    pub fn all(&self) -> &[Identity] {
        &self.list
    }

    /// The offset to upstream's clock.
    pub fn skew(&self) -> &ClockSkew {
        &self.skew
    }

    /// Sets `Authorization` on `headers` for a request to `uri` as `identity`; `form_body` is
    /// the request's `application/x-www-form-urlencoded` body, whose parameters OAuth 1.0a
    /// signs.
    pub fn authorize(
        &self,
        identity: &Identity,
        method: &http::Method,
        uri: &http::Uri,
        form_body: Option<&[u8]>,
        headers: &mut HeaderMap,
    ) -> Result<(), ProxyError> {
        let value = match &identity.credential {
            Credential::Bearer(value) => value.clone(),
            Credential::Oauth1(key) => {
                let signed = self
                    .signer
                    .sign(key, method.as_str(), uri, form_body, self.skew.offset())
                    .map_err(|e| match e {
                        oauth1::SignError::Request(e) => ProxyError::BadRequest(e.to_string()),
                        oauth1::SignError::Random(e) => ProxyError::Prepare(e.to_string()),
                    })?;
                let mut value = HeaderValue::try_from(signed)
                    .map_err(|e| ProxyError::Prepare(e.to_string()))?;
                value.set_sensitive(true);
                value
            }
            // Attached by the caller from `oauth2::Oauth2Users`, which may refresh first.
            Credential::Oauth2 => return Ok(()),
            Credential::Missing { hint } => {
                return Err(ProxyError::CredentialsMissing {
                    identity: identity.name.to_string(),
                    hint: hint.clone(),
                });
            }
        };
        headers.insert(header::AUTHORIZATION, value);
        Ok(())
    }
}

/// Offset between upstream's clock (its `Date` header) and ours, applied to OAuth 1.0a
/// timestamps when it is over 30 s (X rejects skewed timestamps with error 135).
#[derive(Debug, Default)]
pub struct ClockSkew {
    offset: AtomicI64,
    logged: AtomicBool,
    /// The last `Date` value seen: with one-second resolution, most answers repeat it, and
    /// those are not parsed again.
    last: std::sync::Mutex<Option<HeaderValue>>,
}

/// Differences up to this are normal network and clock jitter.
const SKEW_TOLERANCE_SECS: i64 = 30;

impl ClockSkew {
    /// Seconds to add to the local clock.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Learns from an upstream `Date` header value.
    pub fn observe(&self, date: &HeaderValue, clock: &dyn Clock) {
        if let Ok(mut last) = self.last.try_lock() {
            if last.as_ref() == Some(date) {
                return;
            }
            *last = Some(date.clone());
        }
        let Some(upstream) = date
            .to_str()
            .ok()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        else {
            return;
        };
        let diff = i64::try_from(upstream.as_secs()).unwrap_or(i64::MAX)
            - i64::try_from(clock.unix_seconds()).unwrap_or(i64::MAX);
        let offset = if diff.abs() > SKEW_TOLERANCE_SECS {
            diff
        } else {
            0
        };
        let previous = self.offset.swap(offset, Ordering::Relaxed);
        if offset != 0 && previous == 0 && !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                offset_seconds = offset,
                "upstream's clock differs from ours by more than {SKEW_TOLERANCE_SECS} s; OAuth 1.0a timestamps follow upstream's clock"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn skew_applies_only_past_thirty_seconds() {
        let skew = ClockSkew::default();
        let clock = ManualClock::at(1_700_000_000);
        let date = |t: u64| {
            let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
            HeaderValue::from_str(&httpdate::fmt_http_date(st)).unwrap()
        };
        skew.observe(&date(1_700_000_020), &*clock);
        assert_eq!(skew.offset(), 0);
        skew.observe(&date(1_700_003_600), &*clock);
        assert_eq!(skew.offset(), 3600);
        skew.observe(&date(1_699_999_900), &*clock);
        assert_eq!(skew.offset(), -100);
        skew.observe(&HeaderValue::from_static("not a date"), &*clock);
        assert_eq!(skew.offset(), -100);
        skew.observe(&date(1_700_000_001), &*clock);
        assert_eq!(skew.offset(), 0);
    }
}
