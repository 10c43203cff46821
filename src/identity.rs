//! Who a request acts as: the identities of proxy.toml, and what credential each has now.
//!
//! Owns the identity model ([`Identities`], [`Identity`], [`IdentityKind`]), the
//! [`IdentityId`] that indexes every per-identity table of a running proxy (buckets, metrics,
//! OAuth 2.0 pairs), and [`resolve`], the one answer to "what credential does this identity
//! have now" — proxy.toml's, else the token store's — that `serve`, `sign` and `check` share.
//!
//! An [`IdentityId`] is made only by [`Identities`] for a position in its own list, and an
//! identity's App is looked up when the table is built, so "an id with no identity" and "a
//! user whose App is unknown" cannot be represented once the table exists.
//!
//! This module knows nothing of how a credential is attached (that is `auth`) or of rate
//! limits: it sits below both.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::config::{Config, ConsumerKeys, UserAuth};
use crate::secret::SecretString;
use crate::store::{StoreError, StoredToken, TokenKind, TokenStore};

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

impl IdentityKind {
    /// Whether requests as this identity are in user context.
    pub fn is_user(self) -> bool {
        !matches!(self, Self::App)
    }

    /// How requests as this kind are authorised, for problem details.
    pub fn describe(self) -> &'static str {
        match self {
            Self::App => "app-only Bearer",
            Self::Oauth1User => "OAuth 1.0a user context",
            Self::Oauth2User => "OAuth 2.0 user context",
        }
    }
}

/// An identity of one [`Identities`] table. Only that table makes them, each for a position in
/// its list, so an id always names an identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentityId(u32);

impl IdentityId {
    /// The position in the table, for tables that hold one entry per identity.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One identity: an App or a user of one.
#[derive(Debug)]
pub struct Identity {
    /// The name clients use (`X-Xgate-Identity`).
    pub name: Arc<str>,
    /// App or user, and which auth.
    pub kind: IdentityKind,
    /// The App it acts through (its own id for an App).
    pub app: IdentityId,
    /// The OAuth 2.0 scopes configured for it (what X granted comes with its token); empty
    /// for other kinds.
    pub scopes: Vec<String>,
}

/// One identity as the table is built from it.
#[derive(Debug, Clone)]
pub struct IdentitySpec {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: IdentityKind,
    /// The App's name, for a user (an App acts through itself).
    pub app: Option<String>,
    /// Configured OAuth 2.0 scopes.
    pub scopes: Vec<String>,
}

impl IdentitySpec {
    /// An App.
    pub fn app(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: IdentityKind::App,
            app: None,
            scopes: Vec::new(),
        }
    }

    /// A user of `app`, of `kind`, with configured `scopes` (OAuth 2.0 users only).
    pub fn user(name: &str, kind: IdentityKind, app: &str, scopes: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            app: Some(app.to_owned()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

/// The table could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentitiesError {
    /// A user names an App the table does not hold.
    #[error("identity {user}: its App {app} is not an App identity")]
    UnknownApp {
        /// The user.
        user: String,
        /// The App it names.
        app: String,
    },
    /// Two identities share a name.
    #[error("identity {0} is defined twice")]
    Duplicate(String),
    /// More identities than an id can count.
    #[error("too many identities")]
    TooMany,
}

/// Every identity of the config, by id and by name.
#[derive(Debug)]
pub struct Identities {
    list: Vec<Identity>,
    by_name: HashMap<Box<str>, IdentityId>,
}

impl Identities {
    /// The table for `specs`: Apps get their ids first, in the order given, then users.
    pub fn new(specs: impl IntoIterator<Item = IdentitySpec>) -> Result<Self, IdentitiesError> {
        let (apps, users): (Vec<_>, Vec<_>) =
            specs.into_iter().partition(|s| s.kind == IdentityKind::App);
        let mut table = Self {
            list: Vec::with_capacity(apps.len() + users.len()),
            by_name: HashMap::new(),
        };
        for spec in apps.into_iter().chain(users) {
            let id = IdentityId(
                u32::try_from(table.list.len()).map_err(|_too_many| IdentitiesError::TooMany)?,
            );
            let app = match &spec.app {
                Some(app) if spec.kind.is_user() => table
                    .find(app)
                    .filter(|a| table.get(*a).kind == IdentityKind::App)
                    .ok_or_else(|| IdentitiesError::UnknownApp {
                        user: spec.name.clone(),
                        app: app.clone(),
                    })?,
                _ => id,
            };
            if table
                .by_name
                .insert(spec.name.as_str().into(), id)
                .is_some()
            {
                return Err(IdentitiesError::Duplicate(spec.name));
            }
            table.list.push(Identity {
                name: Arc::from(spec.name.as_str()),
                kind: spec.kind,
                app,
                scopes: spec.scopes,
            });
        }
        Ok(table)
    }

    /// The table of a validated config.
    pub fn from_config(config: &Config) -> Result<Self, IdentitiesError> {
        let apps = config.apps.values().map(|a| IdentitySpec {
            name: a.name.clone(),
            kind: IdentityKind::App,
            app: None,
            scopes: Vec::new(),
        });
        let users = config.users.values().map(|u| {
            let (kind, scopes) = match &u.auth {
                UserAuth::Oauth1 { .. } => (IdentityKind::Oauth1User, Vec::new()),
                UserAuth::Oauth2 { scopes } => (IdentityKind::Oauth2User, scopes.clone()),
            };
            IdentitySpec {
                name: u.name.clone(),
                kind,
                app: Some(u.app.clone()),
                scopes,
            }
        });
        Self::new(apps.chain(users))
    }

    /// The identity called `name`.
    pub fn find(&self, name: &str) -> Option<IdentityId> {
        self.by_name.get(name).copied()
    }

    /// The identity `id` names.
    #[expect(
        clippy::indexing_slicing,
        reason = "an IdentityId is made only by this table, for a position in its list, which never shrinks"
    )]
    pub fn get(&self, id: IdentityId) -> &Identity {
        &self.list[id.index()]
    }

    /// Every identity with its id, Apps first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (IdentityId, &Identity)> {
        // The list never holds more than u32::MAX entries (checked in `new`).
        self.list
            .iter()
            .enumerate()
            .map(|(i, identity)| (IdentityId(i as u32), identity))
    }

    /// How many identities there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

// === what credential an identity has now ===

/// Where a credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// In proxy.toml.
    Config,
    /// In the token store (`xgate bearer`, `xgate login`).
    Store,
}

impl Source {
    /// For summaries: `"proxy.toml"` or `"the store"`.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Config => "proxy.toml",
            Self::Store => "the store",
        }
    }
}

/// The credential an identity has now.
pub enum Resolved {
    /// An App's app-only Bearer token.
    Bearer {
        /// The token.
        token: SecretString,
        /// Where it came from.
        source: Source,
    },
    /// An OAuth 1.0a user's keys: the App's consumer pair and the user's token pair.
    Oauth1 {
        /// The App's consumer key and secret.
        consumer: ConsumerKeys,
        /// The access token.
        token: SecretString,
        /// Its secret.
        token_secret: SecretString,
        /// Where the token pair came from.
        source: Source,
    },
    /// An OAuth 2.0 user's stored pair (the proxy refreshes it while serving).
    Oauth2 {
        /// What the store holds.
        stored: StoredToken,
    },
    /// Nothing usable yet.
    Missing {
        /// What the operator should do.
        hint: String,
    },
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never a value; `SecretString` and `StoredToken` redact themselves, the rest is shape.
        match self {
            Self::Bearer { source, .. } => f
                .debug_struct("Bearer")
                .field("source", source)
                .finish_non_exhaustive(),
            Self::Oauth1 { source, .. } => f
                .debug_struct("Oauth1")
                .field("source", source)
                .finish_non_exhaustive(),
            Self::Oauth2 { stored } => f.debug_struct("Oauth2").field("stored", stored).finish(),
            Self::Missing { hint } => f.debug_struct("Missing").field("hint", hint).finish(),
        }
    }
}

/// What credential the identity `name` has now: proxy.toml's, else the one `store` holds (an
/// App's Bearer from `xgate bearer`, an OAuth 1.0a pair from `xgate login --oauth1`, an OAuth
/// 2.0 pair from `xgate login`). `None` when no identity has that name.
pub async fn resolve(
    config: &Config,
    name: &str,
    store: Option<&dyn TokenStore>,
) -> Result<Option<Resolved>, StoreError> {
    let stored = async |kind| match store {
        Some(s) => s.load(name, kind).await,
        None => Ok(None),
    };
    if let Some(app) = config.apps.get(name) {
        if let Some(token) = &app.bearer_token {
            return Ok(Some(Resolved::Bearer {
                token: token.clone(),
                source: Source::Config,
            }));
        }
        return Ok(Some(match stored(TokenKind::Bearer).await?.as_ref() {
            Some(StoredToken::Bearer { token }) => Resolved::Bearer {
                token: SecretString::from(token.as_str()),
                source: Source::Store,
            },
            _ => Resolved::Missing {
                hint: format!("set apps.{name}.bearer_token or run `xgate bearer --app {name}`"),
            },
        }));
    }
    let Some(user) = config.users.get(name) else {
        return Ok(None);
    };
    Ok(Some(match &user.auth {
        UserAuth::Oauth1 { token } => {
            let consumer = config.apps.get(&user.app).and_then(|a| a.consumer.clone());
            let pair = match token {
                Some((t, s)) => Some((t.clone(), s.clone(), Source::Config)),
                None => match stored(TokenKind::Oauth1).await?.as_ref() {
                    Some(StoredToken::Oauth1 {
                        token,
                        token_secret,
                    }) => Some((
                        SecretString::from(token.as_str()),
                        SecretString::from(token_secret.as_str()),
                        Source::Store,
                    )),
                    _ => None,
                },
            };
            match (consumer, pair) {
                (Some(consumer), Some((token, token_secret, source))) => Resolved::Oauth1 {
                    consumer,
                    token,
                    token_secret,
                    source,
                },
                (None, _) => Resolved::Missing {
                    hint: format!(
                        "apps.{} has no consumer_key/consumer_secret, which OAuth 1.0a signing needs",
                        user.app
                    ),
                },
                (Some(_), None) => Resolved::Missing {
                    hint: format!(
                        "set users.{name}.token and token_secret, or run `xgate login --identity {name} --oauth1`"
                    ),
                },
            }
        }
        UserAuth::Oauth2 { .. } => match stored(TokenKind::Oauth2).await? {
            Some(stored @ StoredToken::Oauth2 { .. }) => Resolved::Oauth2 { stored },
            _ => Resolved::Missing {
                hint: format!(
                    "no OAuth 2.0 token is stored for {name}: run `xgate login --identity {name}`"
                ),
            },
        },
    }))
}

/// The identities the unit tests of several modules use: Apps `main` and `other`, OAuth 1.0a
/// users `alice` and `carol` of main, OAuth 2.0 user `bob` of main (tweet.read users.read).
#[cfg(test)]
pub(crate) fn test_identities() -> Identities {
    let table = Identities::new([
        IdentitySpec::app("main"),
        IdentitySpec::app("other"),
        IdentitySpec::user("alice", IdentityKind::Oauth1User, "main", &[]),
        IdentitySpec::user("carol", IdentityKind::Oauth1User, "main", &[]),
        IdentitySpec::user(
            "bob",
            IdentityKind::Oauth2User,
            "main",
            &["tweet.read", "users.read"],
        ),
    ]);
    match table {
        Ok(table) => table,
        Err(e) => panic!("the test identities: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, kind: IdentityKind, app: Option<&str>) -> IdentitySpec {
        match app {
            Some(app) => IdentitySpec::user(name, kind, app, &[]),
            None => IdentitySpec::app(name),
        }
    }

    #[test]
    fn apps_come_first_and_users_point_at_their_app() {
        let t = Identities::new([
            spec("alice", IdentityKind::Oauth1User, Some("main")),
            spec("main", IdentityKind::App, None),
            spec("other", IdentityKind::App, None),
        ])
        .unwrap();
        let main = t.find("main").unwrap();
        let alice = t.find("alice").unwrap();
        assert_eq!(main.index(), 0);
        assert_eq!(t.find("other").unwrap().index(), 1);
        assert_eq!(t.get(alice).app, main);
        assert_eq!(t.get(main).app, main);
        assert_eq!(t.len(), 3);
        assert!(t.find("nobody").is_none());
    }

    #[test]
    fn a_user_of_an_unknown_app_or_of_a_user_is_refused() {
        let err =
            Identities::new([spec("alice", IdentityKind::Oauth1User, Some("main"))]).unwrap_err();
        assert_eq!(
            err,
            IdentitiesError::UnknownApp {
                user: "alice".into(),
                app: "main".into()
            }
        );
        let err = Identities::new([
            spec("main", IdentityKind::App, None),
            spec("alice", IdentityKind::Oauth1User, Some("main")),
            spec("bob", IdentityKind::Oauth2User, Some("alice")),
        ])
        .unwrap_err();
        assert!(matches!(err, IdentitiesError::UnknownApp { .. }), "{err}");
        let err = Identities::new([
            spec("main", IdentityKind::App, None),
            spec("main", IdentityKind::App, None),
        ])
        .unwrap_err();
        assert_eq!(err, IdentitiesError::Duplicate("main".into()));
    }
}
