//! One worker's connections to X: HTTP/1.1 senders kept alive between requests, or one
//! HTTP/2 connection shared by all of them when ALPN picks `h2`.
//!
//! A pool serves one worker thread (its runtime), so its locks are never contended; it holds
//! only what hyper's connection API needs (no pool key to hash, no task per request to give a
//! connection back). An HTTP/1.1 sender goes back to the idle list when the response head
//! arrives, and is taken again only once hyper says the connection is ready (its previous
//! answer read to the end). Idle connections past `pool_idle_timeout` are closed by a sweep.

use std::error::Error as StdError;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderValue, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower::Service as _;

use crate::body::UpstreamBody;

/// Why a request got no answer.
#[derive(Debug)]
pub(super) enum SendError {
    /// No connection: TCP connect, its timeout, or TLS.
    Connect(Box<dyn StdError + Send + Sync>),
    /// The connection was made but refused its protocol's handshake (no request sent).
    Handshake(hyper::Error),
    /// The exchange failed after the request started to leave.
    Exchange(hyper::Error),
}

/// A kept-alive HTTP/1.1 connection, and since when it has been in the list.
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// A fresh connection, by the protocol ALPN chose.
enum Fresh {
    H1(http1::SendRequest<UpstreamBody>),
    H2(http2::SendRequest<UpstreamBody>),
}

/// The connections of one worker to `upstream.base_url`.
pub(super) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    authority: Authority,
    /// `Host` for HTTP/1.1 requests (the authority without a default port).
    host: HeaderValue,
    idle_timeout: Duration,
    max_idle: usize,
    /// HTTP/1.1 senders, most recently used last.
    h1: Mutex<Vec<Idle>>,
    /// The shared HTTP/2 connection, once ALPN picked it.
    h2: Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    /// Whether the idle sweep runs.
    sweeping: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

/// The list's lock, whatever a panicking holder left (a `Vec` of senders stays valid).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pool {
    pub(super) fn new(
        connector: HttpsConnector<HttpConnector>,
        authority: Authority,
        host: HeaderValue,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Self {
        Self {
            connector,
            authority,
            host,
            idle_timeout,
            max_idle,
            h1: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            sweeping: AtomicBool::new(false),
        }
    }

    /// Sends `req` (absolute URI on the pool's authority, which [`super::Upstream::send`]
    /// checks) on a kept-alive connection, or a new
    /// one; a request a reused connection could not take (closed meanwhile) goes on the next.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let uri = req.uri().clone();
        if let Some(mut h2) = self.shared_h2() {
            match h2.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(e) => req = unsent(e)?,
            }
        }
        to_origin_form(&mut req, &self.host);
        while let Some(mut sender) = self.checkout() {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin(sender);
                    return Ok(resp);
                }
                Err(e) => req = unsent(e)?,
            }
        }
        // Boxed: the connect and handshake futures are large, and kept out of the request's
        // own future (which every request moves) they cost only the requests that connect.
        match Box::pin(self.connect(uri)).await? {
            Fresh::H1(mut sender) => {
                let resp = sender
                    .send_request(req)
                    .await
                    .map_err(SendError::Exchange)?;
                self.checkin(sender);
                Ok(resp)
            }
            Fresh::H2(mut sender) => {
                absolute_form(&mut req, &self.authority);
                sender.send_request(req).await.map_err(SendError::Exchange)
            }
        }
    }

    /// A clone of the HTTP/2 sender, unless there is none or its connection closed.
    fn shared_h2(&self) -> Option<http2::SendRequest<UpstreamBody>> {
        let mut slot = lock(&self.h2);
        match slot.as_ref() {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// The most recently used ready HTTP/1.1 connection; stale ones are dropped on the way,
    /// busy ones (an answer still streaming) stay.
    fn checkout(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let now = Instant::now();
        let mut idle = lock(&self.h1);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let Some(entry) = idle.get(i) else { break };
            if self.is_stale(entry, now) {
                idle.swap_remove(i);
            } else if entry.sender.is_ready() {
                return Some(idle.swap_remove(i).sender);
            }
        }
        None
    }

    /// Whether `entry` is to be dropped: its connection closed, or idle past `idle_timeout`.
    fn is_stale(&self, entry: &Idle, now: Instant) -> bool {
        entry.sender.is_closed()
            || (entry.sender.is_ready()
                && now.saturating_duration_since(entry.since) > self.idle_timeout)
    }

    /// `sender` back in the list (it will be ready once its answer is read), unless
    /// `pool_max_idle_per_host` idle connections are there already.
    fn checkin(self: &Arc<Self>, sender: http1::SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        {
            let mut idle = lock(&self.h1);
            // Busy connections (an answer still streaming) do not count against the limit.
            if idle.len() >= self.max_idle
                && idle.iter().filter(|e| e.sender.is_ready()).count() >= self.max_idle
            {
                return;
            }
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
        self.start_sweep();
    }

    /// A new connection to `uri`'s authority, its protocol's handshake done.
    async fn connect(&self, uri: Uri) -> Result<Fresh, SendError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector.call(uri).await.map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(SendError::Handshake)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            *lock(&self.h2) = Some(sender.clone());
            return Ok(Fresh::H2(sender));
        }
        let (sender, conn) = http1::handshake(io).await.map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(Fresh::H1(sender))
    }

    /// Starts the task that closes connections idle past `idle_timeout`, once; it ends with
    /// the pool.
    fn start_sweep(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        let every = self.idle_timeout.max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep();
            }
        });
    }

    /// Drops the stale connections.
    fn sweep(&self) {
        let now = Instant::now();
        lock(&self.h1).retain(|e| !self.is_stale(e, now));
    }
}

/// The request back from a connection that did not send it, or the failure.
fn unsent(mut e: TrySendError<Request<UpstreamBody>>) -> Result<Request<UpstreamBody>, SendError> {
    e.take_message()
        .ok_or_else(|| SendError::Exchange(e.into_error()))
}

/// HTTP/1.1 wants `/path?query` and a `Host` header.
fn to_origin_form(req: &mut Request<UpstreamBody>, host: &HeaderValue) {
    let origin = req
        .uri()
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    *req.uri_mut() = origin;
    req.headers_mut()
        .entry(header::HOST)
        .or_insert_with(|| host.clone());
}

/// HTTP/2 wants the absolute URI back (`:scheme`, `:authority`), and no `Host`.
fn absolute_form(req: &mut Request<UpstreamBody>, authority: &Authority) {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    parts.authority = Some(authority.clone());
    parts.path_and_query = req.uri().path_and_query().cloned();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req.headers_mut().remove(header::HOST);
}
