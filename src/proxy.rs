//! The proxy itself: one request from the client to X and back.
//!
//! Owns [`handle`], which runs the phases of a request in the order of answers of CONTRACT
//! section 7 — method, client key, identity, path, stored OAuth 2.0 token, auth pre-check,
//! body size, rate limits, then credentials and upstream — so that order lives in exactly one
//! function. Also owns the shared [`State`] built from the config (opening the token store
//! when an identity needs it), the tower service that wraps `handle` ([`ProxyService`]:
//! errors become responses here, through `ProxyError::to_response`), the per-request access
//! record (request id, metrics at the response head, the log line when the body ends; a
//! client that goes away before the head is recorded as 499), and the per-connection activity
//! count the server uses for `keepalive_timeout`.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::auth::IdentitiesError;
use crate::auth::oauth2::{Oauth2App, Oauth2Users};
use crate::auth::{Credential, Identities, Identity, IdentityId, IdentityKind};
use crate::body::{BodyDone, ProxyBody, UpstreamBody};
use crate::client_auth::{Client, Clients};
use crate::clock::{Clock, NonceSource as _, RandomNonce, SystemClock};
use crate::config::{Config, UserAuth};
use crate::error::{ErrorKind, ProxyError, UpstreamFailure};
use crate::headers::REQUEST_ID;
use crate::limits::{self, Admission, Catalogue, EndpointId, Limiter, Refused};
use crate::metrics::{EndpointLabel, InflightMetric, LimitSource, Metrics};
use crate::store::{SqliteStore, StoreError, TokenStore};
use crate::telemetry::{self, access::Access};
use crate::{headers, inbound, upstream::Upstream};

/// Everything a request needs, built once at startup and shared by all connections.
#[derive(Debug)]
pub struct State {
    identities: Identities,
    clients: Clients,
    limiter: Limiter,
    metrics: Arc<Metrics>,
    oauth2: Arc<Oauth2Users>,
    upstream: Arc<Upstream>,
    allowed_prefixes: Vec<String>,
    max_body_bytes: u64,
    idle_timeout: Duration,
}

/// The proxy could not be set up from a valid config.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SetupError {
    /// What failed.
    pub message: String,
    /// The configuration is at fault (a wrong `store.encryption_key`): exit status 2.
    pub config: bool,
}

impl SetupError {
    fn runtime(message: String) -> Self {
        Self {
            message,
            config: false,
        }
    }
}

impl From<StoreError> for SetupError {
    fn from(e: StoreError) -> Self {
        Self {
            config: e.is_config(),
            message: e.to_string(),
        }
    }
}

/// Whether an identity's credentials can come only from the token store.
fn needs_store(config: &Config) -> bool {
    config.users.values().any(|u| match &u.auth {
        UserAuth::Oauth2 { .. } => true,
        UserAuth::Oauth1 { token } => token.is_none(),
    }) || config
        .apps
        .values()
        .any(|a| a.bearer_token.is_none() && a.consumer.is_some())
}

impl State {
    /// Builds the shared state from a validated config.
    pub fn from_config(config: &Config) -> Result<Self, SetupError> {
        Self::with_clock(config, &(Arc::new(SystemClock) as Arc<dyn Clock>))
    }

    /// Builds the shared state with the rate limits and token expiry reading time from
    /// `clock`. Opens the token store when an identity needs it (an OAuth 2.0 user, an App
    /// without `bearer_token`, an OAuth 1.0a user without a token pair).
    pub fn with_clock(config: &Config, clock: &Arc<dyn Clock>) -> Result<Self, SetupError> {
        let store = if needs_store(config) {
            let key = config.store.encryption_key.as_ref();
            let store = SqliteStore::open(&config.store.path, key).map_err(SetupError::from)?;
            Some(Arc::new(store) as Arc<dyn TokenStore>)
        } else {
            None
        };
        let identities =
            Identities::from_config(config, store.as_deref()).map_err(|e| match e {
                IdentitiesError::Store(e) => SetupError::from(e),
                IdentitiesError::Credential(e) => SetupError::runtime(e.to_string()),
            })?;
        let clients = Clients::from_config(config, &identities);
        let catalogue = Catalogue::new(&config.limits.overrides)
            .map_err(|e| SetupError::runtime(e.to_string()))?;
        let metrics = Arc::new(
            Metrics::new(&catalogue, &identities)
                .map_err(|e| SetupError::runtime(e.to_string()))?,
        );
        let limiter = Limiter::new(
            catalogue,
            identities.all(),
            &config.limits,
            Arc::clone(clock),
        );
        let upstream = Arc::new(
            Upstream::new(&config.upstream, config.server.request_timeout)
                .map_err(|e| SetupError::runtime(e.to_string()))?,
        );
        let oauth2_identities = identities
            .all()
            .iter()
            .enumerate()
            .filter(|(_, i)| i.kind == IdentityKind::Oauth2User)
            .filter_map(|(id, i)| {
                let app = config.apps.values().nth(i.app)?;
                let client = app.oauth2.as_ref()?;
                Some((
                    id,
                    Arc::clone(&i.name),
                    Oauth2App {
                        client_id: client.client_id.clone(),
                        client_secret: client.client_secret.clone(),
                    },
                ))
            })
            .collect();
        let oauth2 = Arc::new(
            Oauth2Users::new(
                oauth2_identities,
                store,
                Arc::clone(&upstream),
                format!("{}/2/oauth2/token", upstream.base()),
                Arc::clone(clock),
                Arc::clone(&metrics),
            )
            .map_err(SetupError::from)?,
        );
        Ok(Self {
            identities,
            clients,
            limiter,
            metrics,
            oauth2,
            upstream,
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
}

/// Where a request got in matching its endpoint (the metrics' `endpoint` label).
#[derive(Debug, Clone, Copy)]
enum Matched {
    /// Answered before the endpoint was matched: `-`.
    No,
    /// A catalogue endpoint, or `other` (`None`).
    Yes(Option<EndpointId>),
}

/// What the access log and the metrics record about a request. Written when the response body
/// is done (or when the client leaves before the response head: status 499), so it knows the
/// bytes relayed; counted in the metrics at the response head.
struct AccessRecord {
    state: Arc<State>,
    start: Instant,
    method: Method,
    /// The path only: queries can be long and personal.
    path: String,
    request_id: String,
    client: Option<Arc<str>>,
    identity: Option<Arc<str>>,
    endpoint: Matched,
    upstream_status: Option<u16>,
    upstream_time: Option<Duration>,
    /// Status and time of the response head, once sent.
    head: Option<(u16, Duration)>,
    bytes: u64,
    /// Released with the record: the connection's and the process's in-flight counts.
    _inflight: (InflightGuard, InflightMetric),
}

impl fmt::Debug for AccessRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessRecord")
            .field("request_id", &self.request_id)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

impl AccessRecord {
    fn endpoint_label(&self) -> EndpointLabel<'_> {
        match self.endpoint {
            Matched::No => EndpointLabel::UNMATCHED,
            Matched::Yes(id) => EndpointLabel::of(self.state.limiter.catalogue(), id),
        }
    }

    /// The response head is going out with `status`: counted now.
    fn head(&mut self, status: StatusCode) {
        let took = self.start.elapsed();
        self.head = Some((status.as_u16(), took));
        self.count(status.as_u16(), took);
    }

    fn count(&self, status: u16, took: Duration) {
        self.state.metrics.request(
            self.client.as_deref().unwrap_or("-"),
            self.identity.as_deref().unwrap_or("-"),
            self.endpoint_label(),
            status,
            took,
        );
    }
}

impl BodyDone for AccessRecord {
    fn done(mut self: Box<Self>, bytes: u64) {
        self.bytes = bytes;
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let (status, to_head) = self.head.unwrap_or_else(|| {
            // The client went away before the response head: its upstream request, if any,
            // was cancelled with the request's future.
            let took = self.start.elapsed();
            self.count(499, took);
            (499, took)
        });
        let endpoint = self.endpoint_label();
        telemetry::access::log(&Access {
            request_id: &self.request_id,
            client: self.client.as_deref().unwrap_or("-"),
            identity: self.identity.as_deref().unwrap_or("-"),
            endpoint: endpoint.name,
            method: self.method.as_str(),
            path: &self.path,
            status,
            upstream_status: self.upstream_status,
            duration: to_head,
            upstream: self.upstream_time,
            bytes: self.bytes,
            total: self.start.elapsed(),
        });
    }
}

/// The longest client `x-request-id` kept as it is.
const MAX_REQUEST_ID: usize = 128;

/// The client's `x-request-id` when it is well-formed (1 to 128 of `A-Z a-z 0-9 - _ . : @`)
/// and does not look like a client key (`xgk_…`, which must never reach a log line), else a
/// fresh random one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID)
        .map(HeaderValue::as_bytes)
        .filter(|v| {
            (1..=MAX_REQUEST_ID).contains(&v.len())
                && !v.starts_with(crate::client_key::KEY_PREFIX.as_bytes())
                && v.iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(b))
        })
        .and_then(|v| std::str::from_utf8(v).ok());
    match given {
        Some(id) => id.to_owned(),
        // The nonce generator is a CSPRNG; should it fail, a request still gets an id.
        None => RandomNonce
            .nonce()
            .unwrap_or_else(|_no_randomness| "-".to_owned()),
    }
}

/// Whether a request's body is `application/x-www-form-urlencoded`.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The most of a refused request's unread body that is read and thrown away.
const DISCARD_MAX_BYTES: u64 = 16 << 20;
/// How long a refused request's unread body is read at most.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Reads and throws away the body of a request refused before its body was read, at most
/// [`DISCARD_MAX_BYTES`] for at most [`DISCARD_TIME`], in a task of its own while the answer
/// goes out. A client still sending its body then gets the answer (404, 413, 429, ...) and
/// can keep the connection; had the connection been closed with its bytes unread, the kernel
/// would have reset it and the client would see a broken pipe instead of the answer. A body
/// that is declared larger, or whose client waits for `100 Continue` (which a refusal never
/// sends), is not read: hyper closes the connection after the answer.
fn discard_unread(body: Incoming, expects_continue: bool) {
    let declared = body.size_hint().exact();
    if body.is_end_stream() || expects_continue || declared.is_some_and(|n| n > DISCARD_MAX_BYTES) {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0u64;
        let _gave_up = tokio::time::timeout(DISCARD_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > DISCARD_MAX_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// One request, phase by phase. Each `?` is one of CONTRACT section 7's answers, in its order.
///
/// The body stays in `body` until the credentials phase takes it: a request refused before
/// that leaves it there, unread, for [`discard_unread`].
async fn handle(
    state: &State,
    upstream: &Upstream,
    mut parts: http::request::Parts,
    body: &mut Option<Incoming>,
    record: &mut AccessRecord,
) -> Result<Response<ProxyBody>, ProxyError> {
    // 1. Method (405). Unparseable requests (400, 431) never get here: hyper answers them.
    inbound::check_method(&parts.method)?;

    // 2. Client key (401), then identity (400, 403).
    let client = state.clients.authenticate(&parts.headers)?;
    record.client = Some(client.name.clone());
    let id = Clients::identity(client, &parts.headers, &state.identities)?;
    let identity = state
        .identities
        .get(id)
        .ok_or(ProxyError::IdentityForbidden)?;
    record.identity = Some(identity.name.clone());

    // 3. Path: encoding and dot segments (400), then the allowed prefixes (404). Only the
    //    path and query are used; the target's authority and Host are ignored.
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .ok_or_else(|| ProxyError::BadRequest("the request target has no path".to_owned()))?;
    inbound::check_target(path_and_query.path(), path_and_query.query())?;
    inbound::check_prefix(path_and_query.path(), &state.allowed_prefixes)?;
    // The X endpoint, matched on the exact path that goes upstream (`None` is `other`).
    let catalogue = state.limiter.catalogue();
    let endpoint_id = catalogue.lookup(&parts.method, path_and_query.path());
    let endpoint = endpoint_id.and_then(|e| catalogue.get(e));
    record.endpoint = Matched::Yes(endpoint_id);

    // 4. An OAuth 2.0 user with no stored token (401), before anything costs work.
    let oauth2 = if identity.kind == IdentityKind::Oauth2User {
        let Some(current) = state.oauth2.current(id) else {
            let name = &identity.name;
            return Err(ProxyError::CredentialsMissing {
                identity: name.to_string(),
                hint: format!(
                    "no OAuth 2.0 token is stored for {name}: run `xgate login --identity {name}`"
                ),
            });
        };
        Some(current)
    } else {
        None
    };

    // 5. The endpoint's auth kinds and, for OAuth 2.0, the scopes X granted (403).
    if let Some(endpoint) = endpoint {
        let granted = oauth2.as_ref().map_or(&identity.scopes, |c| &c.scopes);
        limits::precheck(endpoint, identity, granted)?;
    }
    drop(oauth2);

    // 6. Body size, when declared (413); a streamed body is cut at the same limit below.
    if content_length(&parts.headers).is_some_and(|n| n > state.max_body_bytes) {
        return Err(ProxyError::BodyTooLarge {
            limit: state.max_body_bytes,
        });
    }

    // 7. Rate limits (429): every bucket the request draws from, or none.
    let mut admission = admit(state, client, id, identity, endpoint_id).await?;

    // 8. Credentials (401), over exactly the URL that goes upstream. A form body on an
    //    OAuth 1.0a identity is read (bounded) because its parameters are signed; every other
    //    body is streamed. A failure here sends nothing, so the reservations are given back.
    let Some(body) = body.take() else {
        admission.release();
        return Err(ProxyError::BadRequest(
            "the request body was already read".to_owned(),
        ));
    };
    let empty_body = body.is_end_stream();
    let prepared = prepare(state, id, identity, &mut parts, path_and_query, body).await;
    let (body, generation) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            admission.release();
            return Err(e);
        }
    };
    // An OAuth 2.0 request with no body can be replayed once after a 401 (CONTRACT 6).
    let replay = generation.filter(|_| empty_body).map(|_| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });

    // 9. Upstream (502, 504), and the answer streamed back.
    let sent = Instant::now();
    let mut first = upstream.send(Request::from_parts(parts, body)).await;
    let unauthorized = matches!(&first, Ok(r) if r.status() == StatusCode::UNAUTHORIZED);
    if let (true, Some(generation)) = (unauthorized, generation) {
        match replay {
            // A streamed body cannot be sent again: X's 401 goes back, and the pair is
            // refreshed for the requests that follow.
            None => state.oauth2.refresh_soon(id, generation),
            Some((method, uri, mut headers)) => {
                let fresh = state
                    .oauth2
                    .after_unauthorized(id, &identity.name, generation)
                    .await?;
                headers.insert(header::AUTHORIZATION, fresh);
                let mut again = Request::new(UpstreamBody::Full(None));
                *again.method_mut() = method;
                *again.uri_mut() = uri;
                *again.headers_mut() = headers;
                tracing::debug!(identity = %identity.name, "replaying after a 401 with the refreshed token");
                first = upstream.send(again).await;
            }
        }
    }
    let resp = match first {
        Ok(resp) => resp,
        Err(e) => {
            let failure = match &e {
                ProxyError::UpstreamUnavailable { failure, .. } => Some(*failure),
                _ => None,
            };
            state.metrics.upstream_error(failure);
            if let Some(UpstreamFailure::Connect | UpstreamFailure::Tls) = failure {
                // No connection, so nothing reached X.
                admission.release();
            }
            return Err(e);
        }
    };
    let took = sent.elapsed();
    let label = EndpointLabel::of(catalogue, endpoint_id);
    state.metrics.upstream(label, took);
    record.upstream_time = Some(took);
    let (mut parts, body) = resp.into_parts();
    if let (Some(remaining), Some(_)) = (admission.learn(&parts.headers), endpoint) {
        state
            .metrics
            .remaining(&identity.name, label.name, remaining);
    }
    drop(admission);
    if let Some(date) = parts.headers.get(header::DATE) {
        state
            .identities
            .skew()
            .observe(date, &SystemClock as &dyn Clock);
    }
    record.upstream_status = Some(parts.status.as_u16());
    headers::clean_response(&mut parts.headers);
    parts.version = Version::HTTP_11;
    if parts.status == StatusCode::TOO_MANY_REQUESTS {
        // Small, and read whole to see whether it is X's usage-capped problem (rule 3).
        let bytes = read_upstream_small(body, state.idle_timeout).await?;
        let source = if limits::is_usage_capped(&bytes) {
            tracing::warn!(
                identity = %identity.name,
                "X answered usage-capped: requests of this App are answered locally for limits.usage_cap_cooldown"
            );
            state.limiter.usage_capped(id);
            LimitSource::UsageCapped
        } else {
            LimitSource::Upstream
        };
        state
            .metrics
            .rate_limited(&identity.name, label.name, source);
        return Ok(Response::from_parts(parts, ProxyBody::full(bytes)));
    }
    Ok(Response::from_parts(
        parts,
        ProxyBody::upstream(body, state.idle_timeout),
    ))
}

/// Reserves the request's buckets (and the client's own share); with `on_exhausted =
/// "wait"`, waits for room while it comes within `max_wait` of the request's arrival.
async fn admit<'s>(
    state: &'s State,
    client: &Client,
    id: IdentityId,
    identity: &Identity,
    endpoint_id: Option<EndpointId>,
) -> Result<Admission<'s>, ProxyError> {
    let limiter = &state.limiter;
    let endpoint = endpoint_id.and_then(|e| limiter.catalogue().get(e));
    // Clocks are read only once a request is refused: the admitted path reads none here.
    let mut deadline = None;
    loop {
        let (wait, err) = match limiter.admit(id, endpoint_id) {
            Ok(mut admission) => {
                let Some(share) = &client.rate else {
                    return Ok(admission);
                };
                match share.check() {
                    Ok(()) => return Ok(admission),
                    Err(wait) => {
                        admission.release();
                        let err = limits::client_rate_error(
                            &client.name,
                            share.rate(),
                            endpoint,
                            wait,
                            limiter.now_ms(),
                        );
                        (Some(wait), err)
                    }
                }
            }
            Err(refused) => {
                let now_ms = limiter.now_ms();
                let wait = match refused {
                    Refused::Window(r) => {
                        Some(Duration::from_millis(r.reset_ms.saturating_sub(now_ms)))
                    }
                    Refused::UsageCapped { .. } => None,
                };
                (
                    wait,
                    limits::refused_error(refused, &identity.name, endpoint, now_ms),
                )
            }
        };
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limiter.max_wait());
        match wait {
            Some(wait) if Instant::now() + wait <= deadline => {
                tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            }
            _ => return Err(err),
        }
    }
}

/// The request as it goes upstream: URI, cleaned headers, credentials, and its body; for an
/// OAuth 2.0 identity also the generation of the token pair attached.
async fn prepare(
    state: &State,
    id: IdentityId,
    identity: &Identity,
    parts: &mut http::request::Parts,
    path_and_query: http::uri::PathAndQuery,
    body: Incoming,
) -> Result<(UpstreamBody, Option<u64>), ProxyError> {
    let uri = state.upstream.uri(path_and_query)?;
    let form = matches!(identity.credential, Credential::Oauth1(_)) && is_form(&parts.headers);
    let (form_body, body) = if form {
        let bytes = read_bounded(body, state.max_body_bytes).await?;
        (Some(bytes.clone()), UpstreamBody::Full(Some(bytes)))
    } else {
        (None, UpstreamBody::limited(body, state.max_body_bytes))
    };
    headers::clean_request(&mut parts.headers);
    let mut generation = None;
    if let Credential::Oauth2 = identity.credential {
        let (value, g) = state.oauth2.authorization(id, &identity.name).await?;
        parts.headers.insert(header::AUTHORIZATION, value);
        generation = Some(g);
    } else {
        state.identities.authorize(
            identity,
            &parts.method,
            &uri,
            form_body.as_deref(),
            &mut parts.headers,
        )?;
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok((body, generation))
}

/// The most of an upstream 429 body read to look for `usage-capped`.
const MAX_429_BODY: usize = 64 * 1024;

/// Reads a small upstream body whole, within `idle` per wait.
async fn read_upstream_small(body: Incoming, idle: Duration) -> Result<Bytes, ProxyError> {
    let failed = |detail: String| ProxyError::UpstreamUnavailable {
        failure: UpstreamFailure::Reset,
        detail,
    };
    let collect = http_body_util::Limited::new(body, MAX_429_BODY).collect();
    match tokio::time::timeout(idle, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(failed(format!(
            "the 429 answer's body could not be read: {e}"
        ))),
        Err(_elapsed) => Err(failed(format!(
            "the 429 answer's body sent nothing for {idle:?}"
        ))),
    }
}

/// Reads a whole body, at most `limit` bytes (413 past it).
async fn read_bounded(body: Incoming, limit: u64) -> Result<Bytes, ProxyError> {
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, limit_usize)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(e) => Err(ProxyError::BadRequest(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

// === connection activity ===

/// Requests in flight on one connection, and when it last became idle; the server closes a
/// connection idle for `keepalive_timeout`.
#[derive(Debug)]
pub struct ConnActivity {
    base: Instant,
    inflight: AtomicUsize,
    idle_since_ms: AtomicU64,
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            inflight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

impl ConnActivity {
    fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(Arc::clone(self))
    }

    /// `None` while a request is in flight, else when the connection became idle.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.base + Duration::from_millis(ms))
    }
}

/// Held from the start of a request until its response body is done or dropped.
#[derive(Debug)]
struct InflightGuard(Arc<ConnActivity>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.idle_since_ms.store(ms, Ordering::Release);
        a.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

// === the service ===

/// The proxy as a tower service for one connection; never fails (errors are responses).
#[derive(Debug, Clone)]
pub struct ProxyService {
    state: Arc<State>,
    upstream: Arc<Upstream>,
    activity: Arc<ConnActivity>,
}

impl ProxyService {
    /// The service for a connection whose activity is tracked in `activity`, sending upstream
    /// through `upstream` (the pool of the worker thread that serves the connection).
    pub fn new(state: Arc<State>, upstream: Arc<Upstream>, activity: Arc<ConnActivity>) -> Self {
        Self {
            state,
            upstream,
            activity,
        }
    }
}

impl tower::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let state = Arc::clone(&self.state);
        let upstream = Arc::clone(&self.upstream);
        let inflight = (self.activity.begin(), state.metrics.begin());
        Box::pin(async move {
            let mut record = Box::new(AccessRecord {
                state: Arc::clone(&state),
                start: Instant::now(),
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
                request_id: request_id(req.headers()),
                client: None,
                identity: None,
                endpoint: Matched::No,
                upstream_status: None,
                upstream_time: None,
                head: None,
                bytes: 0,
                _inflight: inflight,
            });
            let expects_continue = req.headers().contains_key(header::EXPECT);
            let (parts, body) = req.into_parts();
            let mut body = Some(body);
            let handled = handle(&state, &upstream, parts, &mut body, &mut record).await;
            if let Some(unread) = body {
                discard_unread(unread, expects_continue);
            }
            let mut resp = match handled {
                Ok(resp) => resp,
                Err(e) => {
                    let kind = e.kind();
                    tracing::debug!(error = %e, %kind, "request refused");
                    if matches!(kind, ErrorKind::RateLimited | ErrorKind::UsageCapped) {
                        state.metrics.rate_limited(
                            record.identity.as_deref().unwrap_or("-"),
                            record.endpoint_label().name,
                            LimitSource::Local,
                        );
                    }
                    e.to_response()
                }
            };
            if let Ok(id) = HeaderValue::from_str(&record.request_id) {
                resp.headers_mut().insert(REQUEST_ID, id);
            }
            record.head(resp.status());
            resp.body_mut().on_done(record);
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_form(&h));
        h.insert(
            header::CONTENT_TYPE,
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8"
                .parse()
                .unwrap(),
        );
        assert!(is_form(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_form(&h));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_tracks_inflight_and_idle_time() {
        let a = Arc::new(ConnActivity::default());
        assert!(a.idle_since().is_some());
        let g = a.begin();
        assert!(a.idle_since().is_none());
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(g);
        let since = a.idle_since().unwrap();
        assert!(since.duration_since(a.base) >= Duration::from_secs(5));
    }
}
