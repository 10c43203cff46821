//! The shared state of a running proxy: everything the phases of a request need, built from
//! the config once at startup and shared by every connection and worker thread.
//!
//! Owns [`State`] (identities, credentials, clients, the catalogue, the limiter, the meter, the
//! shared streams, metrics, the OAuth 2.0 users' pairs, the upstream client, the clock every
//! phase reads) and building it ([`State::from_config`], which opens the token store: it holds
//! tokens, the spend and the clients' stream rules), with its typed failure, [`SetupError`].

use std::sync::Arc;
use std::time::Duration;

use crate::auth::oauth2::{Oauth2App, Oauth2User, Oauth2Users};
use crate::auth::{BadCredential, Credentials};
use crate::client_auth::Clients;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::costs::Meter;
use crate::endpoints::{Catalogue, CatalogueError};
use crate::identity::{self, Identities, IdentitiesError, IdentityKind, Resolved};
use crate::limits::Limiter;
use crate::metrics::{Metrics, MetricsError};
use crate::shared::Observer;
use crate::store::{self, StoreError};
use crate::streams::Streams;
use crate::upstream::{Upstream, UpstreamSetupError};

/// Everything a request needs, built once at startup and shared by all connections.
#[derive(Debug)]
pub struct State {
    pub(crate) identities: Arc<Identities>,
    pub(crate) credentials: Arc<Credentials>,
    pub(crate) clients: Clients,
    pub(crate) catalogue: Arc<Catalogue>,
    pub(crate) limiter: Arc<Limiter>,
    pub(crate) meter: Arc<Meter>,
    pub(crate) streams: Arc<Streams>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) oauth2: Arc<Oauth2Users>,
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) allowed_prefixes: Vec<String>,
    pub(crate) max_body_bytes: u64,
    pub(crate) idle_timeout: Duration,
}

/// The proxy could not be set up from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The token store could not be opened or read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The identities table could not be built.
    #[error(transparent)]
    Identities(#[from] IdentitiesError),
    /// A credential is not usable.
    #[error(transparent)]
    Credential(#[from] BadCredential),
    /// The endpoint catalogue could not be built.
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    /// The metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The upstream client could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    /// The shared buckets' Redis client could not be made (`[shared]`).
    #[error("shared.redis_url: {0}")]
    Shared(String),
    /// The meter could not read the day's spend from the store.
    #[error("costs: {0}")]
    Costs(String),
}

impl SetupError {
    /// Whether the configuration is at fault (a wrong `store.encryption_key`): exit status 2.
    pub fn is_config(&self) -> bool {
        match self {
            Self::Store(e) => e.is_config(),
            Self::Identities(_)
            | Self::Credential(_)
            | Self::Catalogue(_)
            | Self::Metrics(_)
            | Self::Upstream(_)
            | Self::Shared(_)
            | Self::Costs(_) => false,
        }
    }
}

impl State {
    /// Builds the shared state from a validated config.
    pub async fn from_config(config: &Config) -> Result<Self, SetupError> {
        Self::with_clock(config, Arc::new(SystemClock)).await
    }

    /// Builds the shared state with every reader of time (rate limits, client shares, token
    /// expiry, OAuth 1.0a timestamps, clock skew, budgets' periods) reading `clock`. Opens the
    /// token store, which holds the tokens X handed out and the metered spend.
    pub async fn with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Self, SetupError> {
        let identities = Arc::new(Identities::from_config(config)?);
        let catalogue =
            Arc::new(Catalogue::new(&config.limits.overrides)?.priced(&config.costs.overrides)?);
        let metrics = Arc::new(Metrics::new(&catalogue, &identities)?);
        let observer: Arc<dyn Observer> = Arc::clone(&metrics) as Arc<dyn Observer>;
        // The store keeps the metered spend (CONTRACT section 11 rule 4), so a proxy always
        // opens it, whether or not an identity's credentials live there.
        let opened = store::open(&config.store, &observer).await?;
        let store = Some(Arc::clone(&opened));
        // What credential each identity has now, read once: the credentials and the OAuth 2.0
        // users' pairs are both made from it.
        let mut resolved = Vec::with_capacity(identities.len());
        for (_, i) in identities.iter() {
            resolved.push(identity::resolve(config, &i.name, store.as_deref()).await?);
        }
        let credentials = Arc::new(Credentials::new(
            &identities,
            &resolved,
            Arc::clone(&clock),
        )?);
        let clients = Clients::from_config(config, &identities, &clock);
        let limiter = Arc::new(
            Limiter::from_config(
                Arc::clone(&catalogue),
                Arc::clone(&identities),
                &config.limits,
                config.shared.as_ref(),
                observer,
                Arc::clone(&clock),
            )
            .await
            .map_err(SetupError::Shared)?,
        );
        let meter = Meter::new(
            config,
            Arc::clone(&catalogue),
            Arc::clone(&identities),
            &metrics,
            store.clone(),
            Arc::clone(&clock),
        )
        .await
        .map_err(SetupError::Costs)?;
        tokio::spawn(Meter::flush_every_second(Arc::downgrade(&meter)));
        let upstream = Arc::new(Upstream::new(
            &config.upstream,
            config.server.request_timeout,
        )?);
        let mut users = Vec::new();
        for ((id, i), resolved) in identities.iter().zip(&mut resolved) {
            if i.kind != IdentityKind::Oauth2User {
                continue;
            }
            let app = identities.get(i.app);
            let Some(client) = config.apps.get(&*app.name).and_then(|a| a.oauth2.as_ref()) else {
                continue;
            };
            let stored = match resolved.take() {
                Some(Resolved::Oauth2 { stored }) => Some(stored),
                _ => None,
            };
            users.push(Oauth2User {
                id,
                name: Arc::clone(&i.name),
                app: Oauth2App {
                    client_id: client.client_id.clone(),
                    client_secret: client.client_secret.clone(),
                },
                stored,
            });
        }
        let streams = Arc::new(
            Streams::new(crate::streams::Parts {
                credentials: Arc::clone(&credentials),
                identities: Arc::clone(&identities),
                upstream: Arc::clone(&upstream),
                limiter: Arc::clone(&limiter),
                catalogue: Arc::clone(&catalogue),
                store: opened,
                metrics: metrics.streams(),
                config: config.streams.clone(),
                idle: config.server.idle_timeout,
                clock: Arc::clone(&clock),
                shared: config.shared.clone(),
            })
            .map_err(SetupError::Shared)?,
        );
        streams.reconcile_in_background();
        streams.follow_rules_changes();
        let changes = store.as_ref().and_then(|s| s.changes());
        let oauth2 = Arc::new(Oauth2Users::new(
            users,
            store,
            Arc::clone(&upstream),
            format!("{}/2/oauth2/token", upstream.base()),
            Arc::clone(&clock),
            Arc::clone(&metrics),
        ));
        if let Some(changes) = changes {
            // Replicas sharing the store: a pair another one rotated replaces ours promptly.
            tokio::spawn(Oauth2Users::follow(Arc::downgrade(&oauth2), changes));
        }
        Ok(Self {
            identities,
            credentials,
            clients,
            catalogue,
            limiter,
            meter,
            streams,
            metrics,
            oauth2,
            upstream,
            clock,
            allowed_prefixes: config.upstream.allowed_prefixes.clone(),
            max_body_bytes: config.server.max_body_bytes,
            idle_timeout: config.server.idle_timeout,
        })
    }

    /// The upstream client (each worker thread takes a pool of its own from it).
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The proxy's metrics (the admin listener renders them).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The endpoint catalogue.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The rate limits.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The shared streams.
    pub fn streams(&self) -> &Arc<Streams> {
        &self.streams
    }

    /// The meter: prices, budgets, spend.
    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }

    /// The identities' credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The OAuth 2.0 users' token pairs.
    pub fn oauth2(&self) -> &Arc<Oauth2Users> {
        &self.oauth2
    }

    /// The clock every phase reads.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// `server.idle_timeout`.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }
}
