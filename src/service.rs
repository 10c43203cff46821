//! The proxy as a tower service: the error boundary, the access record and connection
//! activity around [`crate::proxy::handle`].
//!
//! Owns [`ProxyService`] (generic over the request body, so phases can be driven without a
//! socket): every [`crate::error::ProxyError`] becomes its contract response here, through
//! [`crate::error::ProxyError::to_response`], so the service's error type is `Infallible`.
//! Owns the per-request access record (request id, metrics at the response head, the log
//! line when the body ends; a client that goes away before the head is recorded as 499, a
//! request whose handling panicked as 500) and the per-connection activity count the server
//! uses for `keepalive_timeout`.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;

use crate::body::{BodyDone, BoxError, ProxyBody, Tapped};
use crate::clock::{NonceSource as _, RandomNonce};
use crate::error::ErrorKind;
use crate::headers::REQUEST_ID;
use crate::metrics::{EndpointLabel, InflightMetric, LimitSource};
use crate::proxy;
use crate::state::State;
use crate::telemetry::access::{self, Access, RequestFacts};
use crate::upstream::Upstream;

/// What the access log and the metrics record about a request. Written when the response body
/// is done (or when the client leaves before the response head: status 499), so it knows the
/// bytes relayed; counted in the metrics at the response head. The phases fill in `facts`.
struct AccessRecord {
    state: Arc<State>,
    start: Instant,
    method: Method,
    /// The path only: queries can be long and personal.
    path: String,
    request_id: String,
    facts: RequestFacts,
    /// Status and time of the response head, once sent.
    head: Option<(u16, Duration)>,
    bytes: u64,
    /// What metering made of the body, when it was metered (a mutex only to be `Sync`; never
    /// contended).
    cost: std::sync::Mutex<Option<Tapped>>,
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
        match self.facts.endpoint {
            None => EndpointLabel::UNMATCHED,
            Some(id) => EndpointLabel::of(self.state.catalogue(), id),
        }
    }

    /// The response head is going out with `status`: counted now.
    fn head(&mut self, status: StatusCode) {
        let took = self.start.elapsed();
        self.head = Some((status.as_u16(), took));
        self.count(status.as_u16(), took);
    }

    fn count(&self, status: u16, took: Duration) {
        self.state.metrics().request(
            self.facts.client.as_deref().unwrap_or("-"),
            self.facts.identity.as_deref().unwrap_or("-"),
            self.endpoint_label(),
            status,
            took,
        );
    }
}

impl BodyDone for AccessRecord {
    fn done(mut self: Box<Self>, bytes: u64, tapped: Option<Tapped>) {
        self.bytes = bytes;
        self.cost = std::sync::Mutex::new(tapped);
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let (status, to_head) = self.head.unwrap_or_else(|| {
            // No response head went out. Dropped while its handling panicked, the client gets
            // a 500 (`stack::CatchPanicLayer`); else the client went away first, and its
            // upstream request, if any, was cancelled with the request's future.
            let status = if std::thread::panicking() { 500 } else { 499 };
            let took = self.start.elapsed();
            self.count(status, took);
            (status, took)
        });
        let endpoint = self.endpoint_label().name.to_owned();
        let line = Line {
            request_id: std::mem::take(&mut self.request_id),
            client: self.facts.client.clone(),
            identity: self.facts.identity.clone(),
            endpoint,
            method: self.method.clone(),
            path: std::mem::take(&mut self.path),
            status,
            upstream: self.facts.upstream,
            to_head,
            bytes: self.bytes,
            total: self.start.elapsed(),
            messages: self
                .facts
                .messages
                .as_ref()
                .map(|n| n.load(std::sync::atomic::Ordering::Relaxed)),
        };
        let cost = self
            .cost
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match cost {
            None => line.log(0),
            Some(Tapped::Now(cost)) => line.log(cost),
            // The cost needs a round trip to Redis (deduplication across replicas): the line
            // is written when it is known.
            Some(Tapped::Later(cost)) => {
                drop(tokio::spawn(async move { line.log(cost.await) }));
            }
        }
    }
}

/// An access line, owned, so that it can be written after the record is gone.
struct Line {
    request_id: String,
    client: Option<Arc<str>>,
    identity: Option<Arc<str>>,
    endpoint: String,
    method: Method,
    path: String,
    status: u16,
    upstream: Option<(u16, Duration)>,
    to_head: Duration,
    bytes: u64,
    total: Duration,
    messages: Option<u64>,
}

impl Line {
    fn log(&self, cost_micros: u64) {
        access::log(&Access {
            request_id: &self.request_id,
            client: self.client.as_deref().unwrap_or("-"),
            identity: self.identity.as_deref().unwrap_or("-"),
            endpoint: &self.endpoint,
            method: self.method.as_str(),
            path: &self.path,
            status: self.status,
            upstream_status: self.upstream.map(|(status, _)| status),
            duration: self.to_head,
            upstream: self.upstream.map(|(_, took)| took),
            bytes: self.bytes,
            total: self.total,
            cost_micros,
            messages: self.messages,
        });
    }
}

/// The longest client `x-request-id` kept as it is.
const MAX_REQUEST_ID: usize = 128;

/// The longest run of URL-safe base64 characters a kept `x-request-id` may hold: a UUID (36)
/// or a W3C trace id (32) fits, a client key's 43 random characters do not.
const MAX_TOKEN_RUN: usize = 39;

/// Whether a client's `x-request-id` may be logged and returned as it is: 1 to 128 of
/// `A-Z a-z 0-9 - _ . : @`, with nothing that may be a client key in it — no `xgk` in any case
/// and no run of more than [`MAX_TOKEN_RUN`] URL-safe base64 characters (a key without its
/// prefix, wrapped in another).
fn acceptable_request_id(v: &[u8]) -> bool {
    let safe = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:@".contains(b);
    let key_like = v.windows(3).any(|w| w.eq_ignore_ascii_case(b"xgk"))
        || v.split(|b| !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'))
            .any(|run| run.len() > MAX_TOKEN_RUN);
    (1..=MAX_REQUEST_ID).contains(&v.len()) && v.iter().all(safe) && !key_like
}

/// The client's `x-request-id` when it is [acceptable](acceptable_request_id), else a fresh
/// random one.
fn request_id(headers: &HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID)
        .map(HeaderValue::as_bytes)
        .filter(|v| acceptable_request_id(v))
        .and_then(|v| std::str::from_utf8(v).ok());
    match given {
        Some(id) => id.to_owned(),
        // The nonce generator is a CSPRNG; should it fail, a request still gets an id.
        None => RandomNonce
            .nonce()
            .unwrap_or_else(|_no_randomness| "-".to_owned()),
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
    /// Requests begun on the connection.
    started: AtomicU64,
    /// When bytes of a request head began to arrive with no request in flight (ms after
    /// `base`), or [`NO_HEAD`].
    head_since_ms: AtomicU64,
    /// When a write to the client began to wait for the client to read (ms after `base`),
    /// or [`NOT_BLOCKED`].
    write_blocked_since_ms: AtomicU64,
}

/// No write to the client is waiting.
const NOT_BLOCKED: u64 = u64::MAX;

/// No request head is being read.
const NO_HEAD: u64 = u64::MAX;

/// What a connection is doing, for its timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// A request is in flight; `write_blocked` is when a write to the client began to wait
    /// for the client to read, if one waits now.
    Busy {
        /// Since when the client has taken no bytes.
        write_blocked: Option<Instant>,
    },
    /// A request head began to arrive at this instant and is not complete yet.
    ReadingHead(Instant),
    /// Nothing in flight since this instant; `served` once a request was.
    Idle {
        /// Since when.
        since: Instant,
        /// Whether the connection has served a request (else it has sent nothing yet).
        served: bool,
    },
}

impl Default for ConnActivity {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            inflight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            started: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(NO_HEAD),
            write_blocked_since_ms: AtomicU64::new(NOT_BLOCKED),
        }
    }
}

impl ConnActivity {
    fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::AcqRel);
        self.head_since_ms.store(NO_HEAD, Ordering::Release);
        InflightGuard(Arc::clone(self))
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    /// Bytes arrived from the client: with no request in flight, they begin a request head.
    pub fn bytes_read(&self) {
        if self.inflight.load(Ordering::Acquire) == 0 {
            self.start_clock(&self.head_since_ms, NO_HEAD);
        }
    }

    /// A write to the client could not go on (its receive window is full): the client reads
    /// nothing now. The first such write starts the clock.
    pub fn write_blocked(&self) {
        self.start_clock(&self.write_blocked_since_ms, NOT_BLOCKED);
    }

    /// Sets `clock` to now unless it runs already (is not `unset`).
    fn start_clock(&self, clock: &AtomicU64, unset: u64) {
        if clock.load(Ordering::Acquire) == unset {
            let now = self.elapsed_ms();
            // Lost to a concurrent start: that one's time stands.
            let _started = clock.compare_exchange(unset, now, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Bytes reached the client: it reads again (one load per write when it never stopped).
    pub fn wrote(&self) {
        if self.write_blocked_since_ms.load(Ordering::Relaxed) != NOT_BLOCKED {
            self.write_blocked_since_ms
                .store(NOT_BLOCKED, Ordering::Release);
        }
    }

    /// `None` while a request is in flight, else when the connection became idle.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.inflight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since_ms.load(Ordering::Acquire);
        Some(self.base + Duration::from_millis(ms))
    }

    /// What the connection is doing now.
    pub fn state(&self) -> ConnState {
        let Some(since) = self.idle_since() else {
            let blocked = self.write_blocked_since_ms.load(Ordering::Acquire);
            return ConnState::Busy {
                write_blocked: (blocked != NOT_BLOCKED)
                    .then(|| self.base + Duration::from_millis(blocked)),
            };
        };
        match self.head_since_ms.load(Ordering::Acquire) {
            NO_HEAD => ConnState::Idle {
                since,
                served: self.started.load(Ordering::Acquire) > 0,
            },
            ms => ConnState::ReadingHead(self.base + Duration::from_millis(ms)),
        }
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

/// The proxy as a tower service for one connection, over request bodies of type `B`; never
/// fails (errors are responses).
pub struct ProxyService<B> {
    state: Arc<State>,
    upstream: Arc<Upstream>,
    activity: Arc<ConnActivity>,
    _body: PhantomData<fn(B)>,
}

impl<B> fmt::Debug for ProxyService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyService").finish_non_exhaustive()
    }
}

impl<B> Clone for ProxyService<B> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
            upstream: Arc::clone(&self.upstream),
            activity: Arc::clone(&self.activity),
            _body: PhantomData,
        }
    }
}

impl<B> ProxyService<B> {
    /// The service for a connection whose activity is tracked in `activity`, sending upstream
    /// through `upstream` (the pool of the worker thread that serves the connection).
    pub fn new(state: Arc<State>, upstream: Arc<Upstream>, activity: Arc<ConnActivity>) -> Self {
        Self {
            state,
            upstream,
            activity,
            _body: PhantomData,
        }
    }
}

impl<B> tower::Service<Request<B>> for ProxyService<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = Arc::clone(&self.state);
        let upstream = Arc::clone(&self.upstream);
        let inflight = (self.activity.begin(), state.metrics().begin());
        Box::pin(async move {
            let mut record = Box::new(AccessRecord {
                state: Arc::clone(&state),
                start: Instant::now(),
                method: req.method().clone(),
                path: req.uri().path().to_owned(),
                request_id: request_id(req.headers()),
                facts: RequestFacts::default(),
                head: None,
                bytes: 0,
                cost: std::sync::Mutex::new(None),
                _inflight: inflight,
            });
            let handled = proxy::handle(&state, &upstream, req, &mut record.facts).await;
            let mut resp = match handled {
                Ok(resp) => resp,
                Err(e) => {
                    let kind = e.kind();
                    tracing::debug!(error = %e, %kind, "request refused");
                    if matches!(kind, ErrorKind::RateLimited | ErrorKind::UsageCapped) {
                        state.metrics().rate_limited(
                            record.facts.identity.as_deref().unwrap_or("-"),
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
