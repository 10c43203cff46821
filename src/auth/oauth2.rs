//! OAuth 2.0 user tokens while serving (CONTRACT section 6).
//!
//! Owns, per `auth = "oauth2"` identity, the current token pair (loaded from the store at
//! startup) and its refresh. X's refresh tokens are single-use, so:
//! - one refresh per identity at a time: the first caller starts it, every later caller waits
//!   on the same outcome (a `watch` channel);
//! - the refresh runs in its own task, so a client that disconnects never cancels it between
//!   X's answer and the store write;
//! - the store is re-read first: a token another process already rotated is adopted, not
//!   refreshed again;
//! - the new pair is written to the store (one durable transaction) before the new access
//!   token is used.
//!
//! A token within [`REFRESH_AHEAD`] of expiry is refreshed in the background while requests
//! keep using it; an expired one makes requests wait for the refresh. `invalid_grant` is
//! [`Outcome::Rejected`] (401 `token-refresh-failed`); a passing failure (timeout, 5xx) is
//! retried with backoff, then [`Outcome::Failed`], which requests see only once the access
//! token has expired (502).
//!
//! A store that cannot be written (read-only, full, down) fails the refresh before X is
//! asked ([`Outcome::Unstorable`]), so X never rotates a pair that could not be kept. If it
//! fails between X's answer and the commit, the new pair is used from memory and stored as
//! soon as the store takes it ([`Oauth2Users::store_later`]); shutdown waits for that too.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::BodyExt as _;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, TokenUrl};
use tokio::sync::watch;

use crate::body::UpstreamBody;
use crate::clock::Clock;
use crate::error::{ProxyError, UpstreamFailure};
use crate::identity::{Identity, IdentityId, IdentityKind};
use crate::metrics::Metrics;
use crate::secret::SecretString;
use crate::store::{Refresh, StoredToken, TokenStore};
use crate::upstream::Upstream;

/// Tokens this close to expiry are refreshed ahead of time.
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);

/// Attempts of one refresh before it is a passing failure.
const ATTEMPTS: u32 = 3;

/// The longest wait between attempts to store a refreshed pair the store refused.
const STORE_RETRY_MAX: Duration = Duration::from_secs(10);

/// The largest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// An identity's OAuth 2.0 client (its App's).
#[derive(Clone)]
pub struct Oauth2App {
    /// `client_id`.
    pub client_id: SecretString,
    /// `client_secret`, for confidential clients (HTTP Basic); public clients send
    /// `client_id` in the body.
    pub client_secret: Option<SecretString>,
}

impl fmt::Debug for Oauth2App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oauth2App")
            .field("confidential", &self.client_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// The token pair in use.
pub struct Current {
    /// `Bearer <access token>`, marked sensitive.
    pub header: HeaderValue,
    refresh_token: Option<SecretString>,
    /// Unix seconds.
    pub expires_at: Option<u64>,
    /// What X granted.
    pub scopes: Vec<String>,
    /// Bumped each time the pair changes.
    pub generation: u64,
    access_token: SecretString,
}

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Current")
            .field("expires_at", &self.expires_at)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// How a refresh ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A new (or adopted) pair.
    Ok(Arc<Current>),
    /// X refused the refresh token: a new login is needed.
    Rejected(String),
    /// A passing failure, after retries.
    Failed(String),
    /// The store cannot be written now, so X was not asked (its answer would rotate a pair
    /// that could not be kept).
    Unstorable(String),
}

struct Slot {
    name: Arc<str>,
    app: Oauth2App,
    current: RwLock<Option<Arc<Current>>>,
    refreshing: Mutex<Option<watch::Receiver<Option<Outcome>>>>,
    /// The generation whose refresh token X refused, and why: it is not sent again (only a
    /// new pair in the store, from a new login, is tried).
    rejected: Mutex<Option<(u64, String)>>,
}

/// Refreshes running now, for shutdown to wait on.
#[derive(Debug, Default)]
struct Running {
    count: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Counts one running refresh until dropped.
struct RunningGuard(Arc<Running>);

impl RunningGuard {
    fn new(running: &Arc<Running>) -> Self {
        running
            .count
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(running))
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self
            .0
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.0.idle.notify_waiters();
        }
    }
}

/// Every OAuth 2.0 identity's tokens.
pub struct Oauth2Users {
    running: Arc<Running>,
    store: Option<Arc<dyn TokenStore>>,
    upstream: Arc<Upstream>,
    token_url: String,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    slots: HashMap<IdentityId, Slot>,
}

impl fmt::Debug for Oauth2Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oauth2Users")
            .field("identities", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The upstream client as the `oauth2` crate's HTTP client: the token endpoint is reached
/// through the same pool, TLS roots (`ca_file`) and timeouts as every request.
pub(crate) struct TokenHttp<'a>(pub(crate) &'a Upstream);

/// A token-endpoint exchange failed before X answered.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenHttpError(String);

impl<'c> oauth2::AsyncHttpClient<'c> for TokenHttp<'_> {
    type Error = TokenHttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<oauth2::HttpResponse, TokenHttpError>> + Send + 'c>>;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let req = http::Request::from_parts(parts, UpstreamBody::Full(Some(Bytes::from(body))));
            let resp = self
                .0
                .send(req)
                .await
                .map_err(|e| TokenHttpError(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            let body = http_body_util::Limited::new(body, MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(|e| TokenHttpError(format!("the token answer could not be read: {e}")))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, body.to_vec()))
        })
    }
}

/// `Bearer <token>` as a sensitive header value.
fn bearer(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

impl Current {
    fn from_stored(t: &StoredToken, generation: u64) -> Option<Self> {
        let StoredToken::Oauth2 {
            access_token,
            refresh_token,
            expires_at,
            scopes,
        } = t
        else {
            return None;
        };
        Some(Self {
            header: bearer(access_token)?,
            access_token: SecretString::from(access_token.as_str()),
            refresh_token: refresh_token.as_deref().map(SecretString::from),
            expires_at: *expires_at,
            scopes: scopes.clone(),
            generation,
        })
    }

    /// Whether the access token has expired at `now` (Unix seconds).
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }

    fn due(&self, now: u64) -> bool {
        self.expires_at
            .is_some_and(|e| now.saturating_add(REFRESH_AHEAD.as_secs()) >= e)
    }
}

/// The token endpoint's answer, as it goes into the store.
pub fn stored_from_response<R: oauth2::TokenResponse>(
    resp: &R,
    now: u64,
    requested: &[String],
    old_refresh: Option<&str>,
) -> StoredToken {
    StoredToken::Oauth2 {
        access_token: resp.access_token().secret().clone(),
        refresh_token: resp
            .refresh_token()
            .map(|r| r.secret().clone())
            .or_else(|| old_refresh.map(str::to_owned)),
        expires_at: resp.expires_in().map(|d| now.saturating_add(d.as_secs())),
        scopes: match resp.scopes() {
            Some(s) => s.iter().map(|s| s.to_string()).collect(),
            None => requested.to_vec(),
        },
    }
}

/// The `oauth2` client type with only its token endpoint set.
pub type TokenClient = oauth2::Client<
    oauth2::basic::BasicErrorResponse,
    oauth2::basic::BasicTokenResponse,
    oauth2::basic::BasicTokenIntrospectionResponse,
    oauth2::StandardRevocableToken,
    oauth2::basic::BasicRevocationErrorResponse,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

/// The `oauth2` client for `app` at `token_url`: HTTP Basic for a confidential client,
/// `client_id` in the body for a public one.
pub fn oauth2_client(
    app: &Oauth2App,
    token_url: &str,
) -> Result<TokenClient, oauth2::url::ParseError> {
    let token = TokenUrl::new(token_url.to_owned())?;
    let client =
        BasicClient::new(ClientId::new(app.client_id.expose().to_owned())).set_token_uri(token);
    Ok(match &app.client_secret {
        Some(secret) => client.set_client_secret(ClientSecret::new(secret.expose().to_owned())),
        None => client.set_auth_type(AuthType::RequestBody),
    })
}

/// One OAuth 2.0 identity as [`Oauth2Users`] starts: its id, name, App client, and the pair
/// the store held at startup.
#[derive(Debug)]
pub struct Oauth2User {
    /// Its id.
    pub id: IdentityId,
    /// Its name.
    pub name: Arc<str>,
    /// Its App's OAuth 2.0 client.
    pub app: Oauth2App,
    /// The stored pair, if there is one.
    pub stored: Option<StoredToken>,
}

impl Oauth2Users {
    /// The OAuth 2.0 identities `users`, with the pairs stored at startup.
    pub fn new(
        users: Vec<Oauth2User>,
        store: Option<Arc<dyn TokenStore>>,
        upstream: Arc<Upstream>,
        token_url: String,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut slots = HashMap::with_capacity(users.len());
        for Oauth2User {
            id,
            name,
            app,
            stored,
        } in users
        {
            let current = stored
                .as_ref()
                .and_then(|t| Current::from_stored(t, 1))
                .map(Arc::new);
            slots.insert(
                id,
                Slot {
                    name,
                    app,
                    current: RwLock::new(current),
                    refreshing: Mutex::new(None),
                    rejected: Mutex::new(None),
                },
            );
        }
        Self {
            running: Arc::default(),
            store,
            upstream,
            token_url,
            clock,
            metrics,
            slots,
        }
    }

    /// Waits until no refresh is running, at most `limit`: shutdown calls it so that a pair X
    /// has already rotated is stored before the process exits. Whether they all finished.
    pub async fn finish_refreshes(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let idle = self.running.idle.notified();
            let mut idle = std::pin::pin!(idle);
            idle.as_mut().enable();
            let running = self.running.count.load(std::sync::atomic::Ordering::SeqCst);
            if running == 0 {
                return true;
            }
            tracing::info!(running, "waiting for OAuth 2.0 token refreshes to finish");
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return false;
            }
        }
    }

    /// Follows a shared store's change feed until it ends: a pair another replica stored
    /// (a refresh, a new login) replaces the one in use, so this replica stops sending the old
    /// access token without refreshing itself. An empty name means every identity. Holds the
    /// users weakly: the feed ends with the store, which they own.
    pub async fn follow(this: std::sync::Weak<Self>, mut changes: crate::store::Changes) {
        while let Some(name) = changes.recv().await {
            let Some(users) = this.upgrade() else {
                return;
            };
            for (&id, slot) in &users.slots {
                if name.is_empty() || *slot.name == *name {
                    users.adopt_stored(id, slot).await;
                }
            }
        }
    }

    /// Re-reads `slot`'s pair and uses it if it is not the one in use.
    async fn adopt_stored(&self, id: IdentityId, slot: &Slot) {
        let Some(store) = &self.store else {
            return;
        };
        let stored = match store
            .load(&slot.name, crate::store::TokenKind::Oauth2)
            .await
        {
            Ok(Some(stored)) => stored,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(identity = %slot.name, error = %e, "could not read the pair another replica stored");
                return;
            }
        };
        let StoredToken::Oauth2 { access_token, .. } = &stored else {
            return;
        };
        let current = self.current(id);
        if current
            .as_ref()
            .is_some_and(|c| c.access_token.expose() == access_token)
        {
            return;
        }
        tracing::info!(identity = %slot.name, "using the token pair another replica stored");
        let generation = current.map_or(0, |c| c.generation);
        drop(Self::publish(slot, &stored, generation));
        // A pair X refused before is no reason to refuse the new one.
        *slot.rejected.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The pair in use for `id`, if one was ever stored.
    pub fn current(&self, id: IdentityId) -> Option<Arc<Current>> {
        let slot = self.slots.get(&id)?;
        slot.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The pair stored for `identity` (`id`) when it is an OAuth 2.0 user: none stored is 401
    /// `credentials-missing`, before anything costs work. `None` for other kinds.
    pub fn stored_pair(
        &self,
        id: IdentityId,
        identity: &Identity,
    ) -> Result<Option<Arc<Current>>, ProxyError> {
        if identity.kind != IdentityKind::Oauth2User {
            return Ok(None);
        }
        match self.current(id) {
            Some(current) => Ok(Some(current)),
            None => Err(missing(&identity.name)),
        }
    }

    /// The `Authorization` value for a request as `id` and the generation it belongs to:
    /// refreshed first when expired, refreshed in the background when due.
    pub async fn authorization(
        self: &Arc<Self>,
        id: IdentityId,
        name: &str,
    ) -> Result<(HeaderValue, u64), ProxyError> {
        let Some(current) = self.current(id) else {
            return Err(missing(name));
        };
        let now = self.clock.unix_seconds();
        if current.expired(now) {
            let fresh = self.refresh(id, current.generation).await;
            return self
                .answer(fresh, id, name, now)
                .map(|c| (c.header.clone(), c.generation));
        }
        if current.due(now) {
            // Requests keep the current token; the refresh runs on its own.
            drop(self.start_refresh(id, current.generation));
        }
        Ok((current.header.clone(), current.generation))
    }

    /// Upstream answered 401 to a request made with `generation`: refreshes if that pair is
    /// still the current one (else another request already did), and gives the header to
    /// replay with.
    pub async fn after_unauthorized(
        self: &Arc<Self>,
        id: IdentityId,
        name: &str,
        generation: u64,
    ) -> Result<HeaderValue, ProxyError> {
        let now = self.clock.unix_seconds();
        let fresh = self.refresh(id, generation).await;
        self.answer(fresh, id, name, now).map(|c| c.header.clone())
    }

    /// Upstream answered 401 to a request that cannot be replayed: refreshes the pair in the
    /// background if `generation` is still the current one.
    pub fn refresh_soon(self: &Arc<Self>, id: IdentityId, generation: u64) {
        drop(self.start_refresh(id, generation));
    }

    fn answer(
        &self,
        outcome: Outcome,
        id: IdentityId,
        name: &str,
        now: u64,
    ) -> Result<Arc<Current>, ProxyError> {
        match outcome {
            Outcome::Ok(c) => Ok(c),
            Outcome::Rejected(why) => Err(ProxyError::TokenRefreshFailed {
                identity: name.to_owned(),
                detail: why,
            }),
            Outcome::Failed(why) => match self.current(id) {
                // The refresh failed for a passing reason, but the token still works.
                Some(c) if !c.expired(now) => Ok(c),
                _ => Err(ProxyError::UpstreamUnavailable {
                    failure: UpstreamFailure::Reset,
                    detail: format!("the OAuth 2.0 token refresh for {name} failed: {why}"),
                }),
            },
            Outcome::Unstorable(why) => match self.current(id) {
                Some(c) if !c.expired(now) => Ok(c),
                _ => Err(ProxyError::TokenStoreUnwritable {
                    identity: name.to_owned(),
                    detail: why,
                }),
            },
        }
    }

    /// Waits for the refresh of `id` from `generation` (starting it if none runs).
    async fn refresh(self: &Arc<Self>, id: IdentityId, generation: u64) -> Outcome {
        let mut rx = self.start_refresh(id, generation);
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                // The task ended without an answer (the runtime is shutting down).
                return Outcome::Failed("the refresh was interrupted".to_owned());
            }
        }
    }

    /// Starts the refresh of `id` from `generation` unless one runs or the pair already
    /// changed; returns where its outcome will appear.
    fn start_refresh(
        self: &Arc<Self>,
        id: IdentityId,
        generation: u64,
    ) -> watch::Receiver<Option<Outcome>> {
        let Some(slot) = self.slots.get(&id) else {
            return watch::channel(Some(Outcome::Failed(
                "not an OAuth 2.0 identity".to_owned(),
            )))
            .1;
        };
        let mut refreshing = slot
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = self.current(id).filter(|c| c.generation != generation) {
            return watch::channel(Some(Outcome::Ok(current))).1;
        }
        if let Some(rx) = refreshing.as_ref() {
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        *refreshing = Some(rx.clone());
        let this = Arc::clone(self);
        let running = RunningGuard::new(&self.running);
        tokio::spawn(async move {
            let _running = running;
            // Cleared however the task ends, so a later refresh never joins a dead one.
            let _clear = ClearOnDrop(&this, id);
            let (outcome, unstored) = this.run_refresh(id).await;
            let _no_waiters = tx.send(Some(outcome));
            // Still "refreshing" (and running, for shutdown) until the pair is stored: no
            // other refresh may spend its refresh token before then.
            if let Some(pair) = unstored {
                this.store_later(id, pair).await;
            }
        });
        rx
    }

    /// One refresh of `id`: begin it in the store (exclusive among processes where the store
    /// is shared), adopt a pair another process stored, else ask X (with retries for passing
    /// failures), commit the new pair durably, then publish it. Also returns a pair X
    /// delivered that the store refused, to be stored later.
    async fn run_refresh(&self, id: IdentityId) -> (Outcome, Option<StoredToken>) {
        let Some(slot) = self.slots.get(&id) else {
            return (
                Outcome::Failed("not an OAuth 2.0 identity".to_owned()),
                None,
            );
        };
        let name = Arc::clone(&slot.name);
        let Some(current) = self.current(id) else {
            return (Outcome::Rejected("no token is stored".to_owned()), None);
        };
        let refresh = match &self.store {
            Some(store) => match store.begin_refresh(&name).await {
                Ok(refresh) => Some(refresh),
                Err(e) => {
                    // Without the store the new pair could not be kept: refreshing now would
                    // spend X's single-use refresh token for nothing durable.
                    self.metrics.token_refresh(&name, "error");
                    tracing::warn!(identity = %name, error = %e, "the token store cannot be written; not refreshing");
                    return (
                        Outcome::Unstorable(format!(
                            "the OAuth 2.0 token refresh was not attempted, because the token store cannot be written: {e}"
                        )),
                        None,
                    );
                }
            },
            None => None,
        };
        // Another process may have rotated the pair: its refresh token is the live one.
        if let Some(StoredToken::Oauth2 { access_token, .. }) =
            refresh.as_ref().and_then(|r| r.stored())
        {
            if access_token != current.access_token.expose() {
                tracing::info!(identity = %name, "adopting the token pair another process stored");
                let stored = refresh.as_ref().and_then(|r| r.stored().cloned());
                let outcome = match stored {
                    Some(stored) => Self::publish(slot, &stored, current.generation),
                    None => Outcome::Failed("the stored pair vanished".to_owned()),
                };
                return (outcome, None);
            }
        }
        let refused = slot
            .rejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some((_, why)) = refused.filter(|(g, _)| *g == current.generation) {
            return (Outcome::Rejected(why), None);
        }
        let (outcome, unstored) = self.ask_x(slot, &name, &current, refresh).await;
        if let Outcome::Rejected(why) = &outcome {
            *slot.rejected.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((current.generation, why.clone()));
        }
        (outcome, unstored)
    }

    /// Stores a pair X delivered that the store refused at commit, retrying with backoff
    /// until it is stored or another pair replaces it in memory. Dropped first (shutdown
    /// gave up on it), it says at error level that the user has to log in again.
    async fn store_later(&self, id: IdentityId, pair: StoredToken) {
        let (Some(slot), Some(store)) = (self.slots.get(&id), self.store.as_ref()) else {
            return;
        };
        let StoredToken::Oauth2 {
            access_token: ref ours,
            ..
        } = pair
        else {
            return;
        };
        let mut unstored = Unstored(Some(Arc::clone(&slot.name)));
        let mut backoff = Duration::from_millis(250);
        for attempt in 2u32.. {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(STORE_RETRY_MAX);
            if self
                .current(id)
                .is_none_or(|c| c.access_token.expose() != ours.as_str())
            {
                // A newer pair (a new login) replaced it.
                unstored.0 = None;
                return;
            }
            let stored = match store.begin_refresh(&slot.name).await {
                Ok(refresh) => refresh.commit(pair.clone()).await,
                Err(e) => Err(e),
            };
            match stored {
                Ok(()) => {
                    tracing::info!(identity = %slot.name, attempt, "the refreshed token pair is stored now");
                    unstored.0 = None;
                    return;
                }
                Err(e) => {
                    tracing::warn!(identity = %slot.name, attempt, error = %e, "the refreshed token pair is still not stored; it is used from memory");
                }
            }
        }
    }

    /// The refresh-token grant at X, with retries for passing failures; a new pair is
    /// committed through `refresh` before it is published.
    async fn ask_x(
        &self,
        slot: &Slot,
        name: &Arc<str>,
        current: &Current,
        refresh: Option<Box<dyn Refresh>>,
    ) -> (Outcome, Option<StoredToken>) {
        let Some(refresh_token) = current.refresh_token.as_ref() else {
            let why = "no refresh token was granted (log in with the offline.access scope)";
            return (Outcome::Rejected(why.to_owned()), None);
        };
        let client = match oauth2_client(&slot.app, &self.token_url) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("the token endpoint URL: {e}");
                return (Outcome::Failed(why), None);
            }
        };
        let http = TokenHttp(&self.upstream);
        let mut backoff = Duration::from_millis(250);
        for attempt in 1..=ATTEMPTS {
            let result = client
                .exchange_refresh_token(&RefreshToken::new(refresh_token.expose().to_owned()))
                .request_async(&http)
                .await;
            match result {
                Ok(resp) => {
                    let now = self.clock.unix_seconds();
                    let stored = stored_from_response(
                        &resp,
                        now,
                        &current.scopes,
                        Some(refresh_token.expose()),
                    );
                    let committed = match refresh {
                        Some(refresh) => refresh
                            .commit(stored.clone())
                            .await
                            .map_err(|e| e.to_string()),
                        None => Err("no token store".to_owned()),
                    };
                    self.metrics.token_refresh(name, "ok");
                    tracing::info!(identity = %name, "OAuth 2.0 token refreshed");
                    let outcome = Self::publish(slot, &stored, current.generation);
                    return match committed {
                        Ok(()) => (outcome, None),
                        Err(e) => {
                            // X has rotated the pair: the new one only lives here until the
                            // store takes it. Use it rather than lose the user, and say so.
                            tracing::error!(identity = %name, error = %e, "the refreshed token pair could not be stored; it is used from memory and stored as soon as the store allows");
                            (outcome, Some(stored))
                        }
                    };
                }
                Err(RequestTokenError::ServerResponse(err))
                    if matches!(
                        err.error(),
                        BasicErrorResponseType::InvalidGrant
                            | BasicErrorResponseType::InvalidClient
                            | BasicErrorResponseType::UnauthorizedClient
                    ) =>
                {
                    self.metrics.token_refresh(name, "rejected");
                    tracing::warn!(identity = %name, error = %err.error(), "X refused the refresh token: log in again");
                    let why = format!(
                        "X refused the refresh token ({}); run `xgate login --identity {name}` again",
                        err.error()
                    );
                    return (Outcome::Rejected(why), None);
                }
                Err(e) => {
                    let why = describe(&e);
                    tracing::warn!(identity = %name, attempt, error = %why, "OAuth 2.0 token refresh failed");
                    if attempt == ATTEMPTS {
                        self.metrics.token_refresh(name, "error");
                        return (Outcome::Failed(why), None);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                }
            }
        }
        (Outcome::Failed("no attempt was made".to_owned()), None)
    }

    fn publish(slot: &Slot, stored: &StoredToken, generation: u64) -> Outcome {
        match Current::from_stored(stored, generation + 1) {
            Some(c) => {
                let c = Arc::new(c);
                *slot.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Some(Arc::clone(&c));
                Outcome::Ok(c)
            }
            None => Outcome::Failed("the new access token is not usable in a header".to_owned()),
        }
    }
}

/// 401 `credentials-missing` for an OAuth 2.0 user with no stored pair.
fn missing(name: &str) -> ProxyError {
    ProxyError::CredentialsMissing {
        identity: name.to_owned(),
        hint: format!(
            "no OAuth 2.0 token is stored for {name}: run `xgate login --identity {name}`"
        ),
    }
}

/// A refreshed pair the store has not taken yet; dropped while it holds the name (shutdown
/// gave up), the pair is lost, which is said once at error level.
struct Unstored(Option<Arc<str>>);

impl Drop for Unstored {
    fn drop(&mut self) {
        if let Some(name) = self.0.take() {
            tracing::error!(identity = %name, "the refreshed token pair was never stored and X has rotated the old one: run `xgate login --identity {name}` once the store can be written");
        }
    }
}

/// Marks an identity's refresh as finished when dropped.
struct ClearOnDrop<'a>(&'a Oauth2Users, IdentityId);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.slots.get(&self.1) {
            *slot
                .refreshing
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// A token-endpoint failure, without token values.
fn describe<E: std::error::Error>(
    e: &RequestTokenError<E, oauth2::basic::BasicErrorResponse>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => format!("X answered {}", r.error()),
        RequestTokenError::Request(e) => e.to_string(),
        RequestTokenError::Parse(e, _body) => format!("unreadable token answer: {e}"),
        RequestTokenError::Other(s) => s.clone(),
    }
}
