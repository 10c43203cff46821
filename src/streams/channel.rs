//! One App's stream on one endpoint: the single connection to X, and every consumer it feeds
//! (CONTRACT section 12 rules 1, 3, 4, 5).
//!
//! Owns [`Channel`]: its consumers (each a bounded [`Queue`]), the reader task that opens X's
//! stream through a [`Source`], cuts it into lines and routes each one, reconnecting as
//! [`Backoff`] says; the keep-alive task that sends every consumer a `\r\n` when X has sent none
//! for [`KEEPALIVE_GAP`]; and closing the connection `linger` after the last consumer left.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use tokio::sync::watch;
use tokio::time::Instant;

use super::backoff::{Backoff, Cause};
use super::line::{self, Lines, Matched};
use super::queue::{Queue, Refused};
use crate::body::{BodyIdle, BoxError};
use crate::metrics::StreamHandles;

/// A stream's body from X, boxed.
pub type StreamBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// 20 s without a byte from X is a dead connection (X's rule).
pub const STALL: Duration = Duration::from_secs(20);
/// A consumer gets xgate's own `\r\n` when X's last one is this old.
pub const KEEPALIVE_GAP: Duration = Duration::from_secs(10);
/// How often the keep-alive task looks.
const KEEPALIVE_CHECK: Duration = Duration::from_secs(5);

const KEEPALIVE: Bytes = Bytes::from_static(b"\r\n");

/// What opening X's stream gave.
#[derive(Debug)]
pub enum Opened {
    /// 200: the body.
    Up(StreamBody),
    /// X answered `status`, not 200, with this head and (small) body.
    Refused(Arc<Refusal>),
    /// No answer: the connection failed (`detail`).
    Failed(String),
    /// The endpoint's local bucket is empty: nothing was sent; try again after this.
    Wait(Duration),
}

/// X's answer to a connect that it refused.
#[derive(Debug)]
pub struct Refusal {
    /// Its status.
    pub status: StatusCode,
    /// Its headers (hop-by-hop ones removed).
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

/// Opens X's stream for a channel (the App's credential, the endpoint, the connection's query).
pub trait Source: Send + Sync + std::fmt::Debug + 'static {
    /// One attempt.
    fn open(&self) -> Pin<Box<dyn Future<Output = Opened> + Send + '_>>;
}

/// The clients that refer to one rule of X's, each with its own tag.
type Owners = Vec<(Arc<str>, Option<Arc<str>>)>;

/// Which rules of X's are whose: X's rule id → (client, the client's tag).
#[derive(Debug, Default)]
pub struct Routes {
    by_id: HashMap<String, Owners>,
}

impl Routes {
    /// Routes of `rules`: (X's id, client, client's tag).
    pub fn new<'r>(rules: impl IntoIterator<Item = (&'r str, &'r str, Option<&'r str>)>) -> Self {
        let mut by_id: HashMap<String, Owners> = HashMap::new();
        for (id, client, tag) in rules {
            by_id
                .entry(id.to_owned())
                .or_default()
                .push((Arc::from(client), tag.map(Arc::from)));
        }
        Self { by_id }
    }

    /// `client`'s tag for X's rule `id`: `None` when the rule is not the client's.
    pub fn tag(&self, id: &str, client: &str) -> Option<Option<&str>> {
        self.by_id
            .get(id)?
            .iter()
            .find(|(c, _)| &**c == client)
            .map(|(_, tag)| tag.as_deref())
    }
}

/// The routes of one App, replaced whole when its rules change.
#[derive(Debug, Default)]
pub struct RouteTable(RwLock<Arc<Routes>>);

impl RouteTable {
    /// The routes now.
    pub fn load(&self) -> Arc<Routes> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the routes.
    pub fn store(&self, routes: Routes) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(routes);
    }
}

/// Where a channel is: consumers waiting on its first connect read it.
#[derive(Debug, Clone)]
pub enum Phase {
    /// The first connect has not been answered.
    Connecting,
    /// Serving (connected, or reconnecting).
    Serving,
    /// X refused the first connect with an answer that another try would not change (a 4xx
    /// other than 429): its consumers get that answer.
    Refused(Arc<Refusal>),
    /// Closed: the last consumer left `linger` ago.
    Closed,
}

/// The settings of a channel.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `streams.consumer_buffer_bytes`.
    pub buffer: usize,
    /// `streams.linger`.
    pub linger: Duration,
    /// `streams.max_consumers`.
    pub max_consumers: usize,
}

struct Slot {
    id: u64,
    client: Arc<str>,
    queue: Arc<Queue>,
    delivered: prometheus::IntCounter,
}

/// One App's stream on one endpoint.
pub struct Channel {
    /// The App's name.
    pub app: Arc<str>,
    /// The endpoint's name.
    pub endpoint: Arc<str>,
    /// Messages are routed by their `matching_rules` (the filtered stream).
    routes: Option<Arc<RouteTable>>,
    source: Box<dyn Source>,
    settings: Settings,
    consumers: Mutex<Vec<Slot>>,
    next_id: AtomicU64,
    count: watch::Sender<usize>,
    phase: watch::Sender<Phase>,
    metrics: StreamHandles,
    born: Instant,
    /// When X's (or xgate's) last keep-alive went out, in ms since `born`.
    last_keepalive: AtomicU64,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("app", &self.app)
            .field("endpoint", &self.endpoint)
            .field("consumers", &*self.count.borrow())
            .finish_non_exhaustive()
    }
}

/// More than `max_consumers` would be connected.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0} consumers are connected already (streams.max_consumers)")]
pub struct Crowded(pub usize);

/// Closes a channel whose consumers are all gone (the owner of the channels decides: it holds
/// the lock a new consumer takes to join).
pub trait Closer: Send + Sync + 'static {
    /// Closes `channel` if it still has no consumer; whether it did.
    fn close_if_deserted(&self, channel: &Arc<Channel>) -> bool;
    /// Forgets `channel` (refused by X).
    fn forget(&self, channel: &Arc<Channel>);
}

impl Channel {
    /// A channel; nothing runs until [`Channel::start`].
    pub fn new(
        app: Arc<str>,
        endpoint: Arc<str>,
        routes: Option<Arc<RouteTable>>,
        source: Box<dyn Source>,
        settings: Settings,
        metrics: StreamHandles,
    ) -> Arc<Self> {
        Arc::new(Self {
            app,
            endpoint,
            routes,
            source,
            settings,
            consumers: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            count: watch::Sender::new(0),
            phase: watch::Sender::new(Phase::Connecting),
            metrics,
            born: Instant::now(),
            last_keepalive: AtomicU64::new(0),
        })
    }

    /// Starts the reader and the keep-alive tasks.
    pub fn start(self: &Arc<Self>, closer: Weak<dyn Closer>) {
        tokio::spawn(Arc::clone(self).run(closer));
        tokio::spawn(keepalive(Arc::downgrade(self)));
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a consumer of `client`: its id and queue.
    pub fn join(&self, client: &Arc<str>) -> Result<(u64, Arc<Queue>), Crowded> {
        let mut consumers = self.lock();
        if consumers.len() >= self.settings.max_consumers {
            return Err(Crowded(consumers.len()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let queue = Queue::new(self.settings.buffer);
        consumers.push(Slot {
            id,
            client: Arc::clone(client),
            queue: Arc::clone(&queue),
            delivered: self.metrics.messages(client),
        });
        self.counted(consumers.len());
        Ok((id, queue))
    }

    /// The consumer `id` left.
    pub fn leave(&self, id: u64) {
        let mut consumers = self.lock();
        consumers.retain(|s| s.id != id);
        self.counted(consumers.len());
    }

    fn counted(&self, n: usize) {
        self.metrics
            .consumers
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        self.count.send_replace(n);
    }

    /// Consumers connected now.
    pub fn consumers(&self) -> usize {
        *self.count.borrow()
    }

    /// Whether no consumer is connected (the channel may be closing).
    pub fn is_deserted(&self) -> bool {
        self.lock().is_empty()
    }

    /// Marks the channel closed.
    pub fn closed(&self) {
        self.phase.send_replace(Phase::Closed);
    }

    /// Ends every consumer's stream (after what is queued for it) and stops the reader: the
    /// proxy is shutting down.
    pub fn stop(&self) {
        self.closed();
        let mut consumers = self.lock();
        for slot in consumers.drain(..) {
            slot.queue.close();
        }
        self.counted(0);
    }

    /// Resolves once the channel is closed.
    async fn stopped(&self) {
        let mut rx = self.phase.subscribe();
        let _closed = rx.wait_for(|p| matches!(p, Phase::Closed)).await;
    }

    /// The phase, once the first connect is answered (or the channel closed).
    pub async fn settled(&self) -> Phase {
        let mut rx = self.phase.subscribe();
        let phase = rx
            .wait_for(|p| !matches!(p, Phase::Connecting))
            .await
            .map(|p| p.clone());
        phase.unwrap_or(Phase::Closed)
    }

    /// Resolves once no consumer has been connected for `linger`.
    async fn deserted(&self) {
        let mut rx = self.count.subscribe();
        loop {
            if rx.wait_for(|n| *n == 0).await.is_err() {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.linger) => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    }

    /// The reader: connects, relays, reconnects, until the channel is closed.
    async fn run(self: Arc<Self>, closer: Weak<dyn Closer>) {
        let mut backoff = Backoff::default();
        let mut lines = Lines::default();
        let mut ever_up = false;
        let mut after: Option<Cause> = None;
        loop {
            if matches!(*self.phase.borrow(), Phase::Closed) {
                return;
            }
            if self.consumers() == 0 {
                let mut rx = self.count.subscribe();
                tokio::select! {
                    () = self.deserted() => {
                        if self.close(&closer) {
                            return;
                        }
                    }
                    _ = rx.wait_for(|n| *n > 0) => {}
                    () = self.stopped() => return,
                }
                continue;
            }
            let opened = tokio::select! {
                opened = self.source.open() => opened,
                () = self.stopped() => return,
            };
            let wait = match opened {
                Opened::Up(body) => {
                    if let Some(cause) = after.take() {
                        self.metrics.reconnect(cause.as_str());
                    }
                    backoff.up();
                    ever_up = true;
                    // (Not over `Closed`: the proxy may be shutting down.)
                    self.phase.send_if_modified(|p| {
                        let open = !matches!(p, Phase::Closed);
                        if open {
                            *p = Phase::Serving;
                        }
                        open
                    });
                    self.metrics.upstream_up.set(1);
                    tracing::info!(app = %self.app, endpoint = %self.endpoint, consumers = self.consumers(), "stream connected to X");
                    let ended = self.relay(body, &mut lines).await;
                    lines.reset();
                    self.metrics.upstream_up.set(0);
                    let Some(cause) = ended else {
                        tracing::info!(app = %self.app, endpoint = %self.endpoint, cause = "no_consumer", "stream disconnected from X: no consumer left (streams.linger, or shutting down)");
                        if self.close(&closer) {
                            return;
                        }
                        continue;
                    };
                    tracing::warn!(app = %self.app, endpoint = %self.endpoint, cause = cause.as_str(), "stream disconnected from X; reconnecting");
                    after = Some(cause);
                    backoff.next(cause)
                }
                Opened::Refused(refusal) => {
                    let status = refusal.status;
                    if !ever_up
                        && status.is_client_error()
                        && status != StatusCode::TOO_MANY_REQUESTS
                    {
                        tracing::warn!(app = %self.app, endpoint = %self.endpoint, status = status.as_u16(), "X refused the stream; its answer goes to the waiting consumers");
                        self.phase.send_replace(Phase::Refused(refusal));
                        if let Some(closer) = closer.upgrade() {
                            closer.forget(&self);
                        }
                        return;
                    }
                    let cause = if status == StatusCode::TOO_MANY_REQUESTS {
                        if memchr::memmem::find(&refusal.body, b"TooManyConnections").is_some() {
                            tracing::warn!(app = %self.app, endpoint = %self.endpoint, "X answered 429 TooManyConnections: another process holds this App's stream (a stale connection ends by itself, or list and end it with GET /2/connections and DELETE /2/connections/all, which xgate does not call by itself); retrying with backoff from one minute");
                        }
                        Cause::TooManyRequests
                    } else {
                        Cause::Http
                    };
                    let wait = backoff.next(cause);
                    tracing::warn!(app = %self.app, endpoint = %self.endpoint, status = status.as_u16(), retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "X refused the stream connection");
                    after = Some(cause);
                    wait
                }
                Opened::Failed(detail) => {
                    let wait = backoff.next(Cause::Network);
                    tracing::warn!(app = %self.app, endpoint = %self.endpoint, error = %detail, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "stream connection to X failed");
                    after = Some(Cause::Network);
                    wait
                }
                Opened::Wait(wait) => wait,
            };
            // Consumers waiting on the first connect stay, and get keep-alives meanwhile.
            self.phase.send_if_modified(|p| {
                let first = matches!(p, Phase::Connecting);
                if first {
                    *p = Phase::Serving;
                }
                first
            });
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.deserted() => {
                    if self.close(&closer) {
                        return;
                    }
                }
                () = self.stopped() => return,
            }
        }
    }

    fn close(self: &Arc<Self>, closer: &Weak<dyn Closer>) -> bool {
        let Some(closer) = closer.upgrade() else {
            self.closed();
            return true;
        };
        closer.close_if_deserted(self)
    }

    /// Relays X's body until it ends (its cause) or no consumer is left for `linger` (`None`).
    async fn relay(&self, body: StreamBody, lines: &mut Lines) -> Option<Cause> {
        let mut body = crate::body::IdleTimeout::new(body, STALL);
        // One linger timer for the whole relay (it restarts only when consumers come and go).
        let deserted = self.deserted();
        tokio::pin!(deserted);
        loop {
            tokio::select! {
                frame = body.frame() => match frame {
                    None => return Some(Cause::Ended),
                    Some(Err(e)) if e.is::<BodyIdle>() => return Some(Cause::Stall),
                    Some(Err(e)) => {
                        tracing::debug!(app = %self.app, error = %e, "stream body failed");
                        return Some(Cause::Network);
                    }
                    Some(Ok(frame)) => {
                        let Ok(data) = frame.into_data() else { continue };
                        let mut operational = false;
                        let pushed = lines.push(data, |line| operational |= self.dispatch(&line));
                        if pushed.is_err() {
                            return Some(Cause::Network);
                        }
                        if operational {
                            return Some(Cause::OperationalDisconnect);
                        }
                    }
                },
                () = &mut deserted => return None,
                () = self.stopped() => return None,
            }
        }
    }

    /// Routes one line of X's; `true` when it is X's `operational-disconnect`.
    pub fn dispatch(&self, line: &Bytes) -> bool {
        if line::is_keepalive(line) {
            self.keepalive_sent();
            self.broadcast(&KEEPALIVE, false);
            return false;
        }
        if is_operational_disconnect(line) {
            return true;
        }
        let matched = self
            .routes
            .as_ref()
            .and_then(|r| Some((r.load(), Matched::parse(line.clone())?)));
        let Some((routes, matched)) = matched else {
            // A rule-less stream, or a message without `matching_rules` (a system message).
            self.broadcast(line, true);
            return false;
        };
        let mut consumers = self.lock();
        let mut per_client: Vec<(Arc<str>, Option<Bytes>)> = Vec::new();
        let mut slow = Vec::new();
        for (i, slot) in consumers.iter().enumerate() {
            let bytes = match per_client
                .iter()
                .find(|(c, _)| Arc::ptr_eq(c, &slot.client) || **c == *slot.client)
            {
                Some((_, b)) => b.clone(),
                None => {
                    let b = matched.for_client(|id| routes.tag(id, &slot.client));
                    per_client.push((Arc::clone(&slot.client), b.clone()));
                    b
                }
            };
            if let Some(bytes) = bytes {
                match slot.queue.push(bytes) {
                    Ok(()) => slot.delivered.inc(),
                    Err(Refused::Full) => slow.push(i),
                    Err(Refused::Closed) => {}
                }
            }
        }
        self.drop_slow(&mut consumers, &slow);
        false
    }

    /// Sends `bytes` to every consumer.
    fn broadcast(&self, bytes: &Bytes, message: bool) {
        let mut consumers = self.lock();
        let mut slow = Vec::new();
        for (i, slot) in consumers.iter().enumerate() {
            match slot.queue.push(bytes.clone()) {
                Ok(()) if message => slot.delivered.inc(),
                Ok(()) | Err(Refused::Closed) => {}
                Err(Refused::Full) => slow.push(i),
            }
        }
        self.drop_slow(&mut consumers, &slow);
    }

    /// Cuts off the consumers at `slow` (indices, ascending).
    fn drop_slow(&self, consumers: &mut Vec<Slot>, slow: &[usize]) {
        if slow.is_empty() {
            return;
        }
        for &i in slow.iter().rev() {
            let slot = consumers.remove(i);
            tracing::warn!(app = %self.app, endpoint = %self.endpoint, client = %slot.client, behind_bytes = slot.queue.len(), "stream consumer disconnected: it fell streams.consumer_buffer_bytes behind");
            slot.queue.cut();
            self.metrics.dropped("slow");
        }
        self.counted(consumers.len());
    }

    fn keepalive_sent(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_keepalive.store(ms, Ordering::Relaxed);
    }

    fn keepalive_age(&self) -> Duration {
        let last = Duration::from_millis(self.last_keepalive.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}

/// Every consumer of `channel` gets a `\r\n` when none went out for [`KEEPALIVE_GAP`] (X
/// silent, or xgate reconnecting), so none waits 20 s for a byte.
async fn keepalive(channel: Weak<Channel>) {
    loop {
        tokio::time::sleep(KEEPALIVE_CHECK).await;
        let Some(channel) = channel.upgrade() else {
            return;
        };
        if matches!(*channel.phase.borrow(), Phase::Closed | Phase::Refused(_)) {
            return;
        }
        if channel.keepalive_age() >= KEEPALIVE_GAP {
            channel.keepalive_sent();
            channel.broadcast(&KEEPALIVE, false);
        }
    }
}

/// Whether `line` is X's `operational-disconnect` message (an `errors` object naming it).
fn is_operational_disconnect(line: &[u8]) -> bool {
    let start = line.iter().position(|b| !b.is_ascii_whitespace());
    start.is_some_and(|s| line.get(s..).is_some_and(|l| l.starts_with(b"{\"errors\"")))
        && memchr::memmem::find(line, b"operational-disconnect").is_some()
}
