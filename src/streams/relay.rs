//! One App's stream across replicas (CONTRACT section 12 rule 1, with `[shared]`): exactly one
//! replica holds the connection to X, and every other replica's consumers receive what it
//! reads through Redis.
//!
//! Owns the lease (`PREFIX{streams}:lease:APP:ENDPOINT`, a fencing value `REPLICA:N` from an
//! `INCR`, set `NX` with a [`LEASE_TTL`] and renewed every [`RENEW_EVERY`] by its holder only),
//! the holder's publisher (every chunk X sends, keep-alives included, published with the
//! fencing value to `PREFIX{streams}:feed:APP:ENDPOINT`) and a follower's subscription (chunks
//! of the current holder only; it ends when the lease is free or changes hands, and the next
//! attempt takes the lease or follows the new holder). A holder that cannot renew stops
//! reading X at once: two replicas never both think they hold the App's one connection.
//!
//! Pub/sub, not Redis streams: a live feed for whoever is subscribed now, like X's own stream;
//! nothing is kept in Redis memory and nothing needs trimming. A follower that misses
//! messages while it resubscribes loses them, as a consumer of X directly would across a
//! reconnect (X's `backfill_minutes` is the recovery).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{AsyncCommands as _, Script};
use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;
use tokio::sync::mpsc;

use super::channel::{Opened, Source, StreamBody};
use crate::body::BoxError;
use crate::config::Shared;

/// A lease not renewed for this long is free.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the holder renews it, and a follower looks at it.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The Redis side of shared streams.
pub struct Relay {
    conn: ConnectionManager,
    client: ::redis::Client,
    prefix: String,
    replica: String,
    timeout: Duration,
    renew: Script,
    release: Script,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// The failure of a Redis operation, described without the URL.
fn failed(e: &::redis::RedisError) -> String {
    format!("Redis: {e}")
}

impl Relay {
    /// The relay on `shared`'s Redis; `replica` names this process in fencing values.
    pub fn new(shared: &Shared, replica: String) -> Result<Self, String> {
        let client = ::redis::Client::open(shared.redis.url.expose())
            .map_err(|e| format!("not a Redis URL ({:?})", e.kind()))?;
        Ok(Self {
            conn: crate::limits::redis::connect(shared)?,
            client,
            prefix: shared.key_prefix.clone(),
            replica,
            timeout: shared.timeout,
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
        })
    }

    fn key(&self, what: &str, app: &str, endpoint: &str) -> String {
        let endpoint: String = endpoint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '/' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}{{streams}}:{what}:{app}:{endpoint}", self.prefix)
    }

    /// The channel rules changes are announced on.
    pub fn rules_channel(&self) -> String {
        format!("{}{{streams}}:rules", self.prefix)
    }

    async fn bounded<T>(
        &self,
        op: impl std::future::Future<Output = ::redis::RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(r) => r.map_err(|e| failed(&e)),
            Err(_elapsed) => Err(format!("Redis: no answer within {:?}", self.timeout)),
        }
    }

    /// Takes the lease if it is free: its fencing value.
    async fn acquire(&self, lease: &str) -> Result<Option<String>, String> {
        let mut conn = self.conn.clone();
        let fence = format!("{}{{streams}}:fence", self.prefix);
        let n: u64 = self.bounded(conn.incr(&fence, 1)).await?;
        let token = format!("{}:{n}", self.replica);
        let ttl = u64::try_from(LEASE_TTL.as_millis()).unwrap_or(5000);
        let set: Option<String> = self
            .bounded(
                ::redis::cmd("SET")
                    .arg(lease)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(set.map(|_| token))
    }

    async fn holder(&self, lease: &str) -> Result<Option<String>, String> {
        let mut conn = self.conn.clone();
        self.bounded(conn.get(lease)).await
    }

    async fn renew(&self, lease: &str, token: &str) -> Result<bool, String> {
        let mut conn = self.conn.clone();
        let ttl = u64::try_from(LEASE_TTL.as_millis()).unwrap_or(5000);
        let mut call = self.renew.key(lease);
        call.arg(token).arg(ttl);
        let renewed: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(renewed == 1)
    }

    async fn give_up(&self, lease: &str, token: &str) {
        let mut conn = self.conn.clone();
        let mut call = self.release.key(lease);
        call.arg(token);
        if let Err(e) = self.bounded(call.invoke_async::<i64>(&mut conn)).await {
            tracing::warn!(lease, error = %e, "stream lease not released; it expires by itself");
        }
    }

    async fn publish(&self, feed: &str, payload: Vec<u8>) -> Result<(), String> {
        let mut conn = self.conn.clone();
        self.bounded(conn.publish::<_, _, i64>(feed, payload))
            .await
            .map(drop)
    }

    /// Announces that `app`'s rules changed (other replicas read them again).
    pub async fn rules_changed(&self, app: &str) {
        let mut conn = self.conn.clone();
        if let Err(e) = self
            .bounded(conn.publish::<_, _, i64>(self.rules_channel(), app))
            .await
        {
            tracing::warn!(app, error = %e, "rules change not announced to the other replicas; they read the rules again at their next rule request or consumer");
        }
    }

    /// A subscription to `channel`.
    pub async fn subscribe(&self, channel: &str) -> Result<::redis::aio::PubSubStream, String> {
        let mut pubsub = self.bounded(self.client.get_async_pubsub()).await?;
        self.bounded(pubsub.subscribe(channel)).await?;
        Ok(pubsub.into_on_message())
    }
}

/// A channel's source with `[shared]`: the lease's holder reads X (and publishes what it
/// reads), every other replica follows the holder through Redis.
#[derive(Debug)]
pub struct SharedSource {
    relay: Arc<Relay>,
    x: Box<dyn Source>,
    lease: String,
    feed: String,
}

impl SharedSource {
    /// `x` (the App's stream at X) shared through `relay` as `app`'s `endpoint`.
    pub fn new(relay: Arc<Relay>, x: Box<dyn Source>, app: &str, endpoint: &str) -> Self {
        Self {
            lease: relay.key("lease", app, endpoint),
            feed: relay.key("feed", app, endpoint),
            relay,
            x,
        }
    }
}

impl Source for SharedSource {
    fn open(&self) -> Pin<Box<dyn std::future::Future<Output = Opened> + Send + '_>> {
        Box::pin(async move {
            match self.relay.acquire(&self.lease).await {
                Err(e) => Opened::Failed(e),
                Ok(Some(token)) => match self.x.open().await {
                    Opened::Up(body) => {
                        tracing::info!(lease = %self.lease, token = %token, "this replica holds the stream's lease");
                        Opened::Up(hold(
                            Arc::clone(&self.relay),
                            &self.lease,
                            &self.feed,
                            token,
                            body,
                        ))
                    }
                    other => {
                        self.relay.give_up(&self.lease, &token).await;
                        other
                    }
                },
                Ok(None) => match self.relay.subscribe(&self.feed).await {
                    Err(e) => Opened::Failed(e),
                    Ok(messages) => {
                        tracing::info!(lease = %self.lease, "following the replica that holds the stream");
                        Opened::Up(follow(Arc::clone(&self.relay), &self.lease, messages))
                    }
                },
            }
        })
    }
}

/// Set when a background task ends a body (the lease was lost, or changed hands).
#[derive(Debug, Default)]
struct Ended {
    ended: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Ended {
    fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            w.wake();
        }
    }

    /// Whether it ended; else the waker is kept.
    fn check(&self, cx: &Context<'_>) -> bool {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        self.ended.load(Ordering::SeqCst)
    }
}

/// The lease was lost: this replica stops reading X.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the stream's lease was lost (Redis unreachable, or another replica holds it)")]
pub struct LeaseLost;

/// X's body as the holder reads it: each chunk published to the followers, the lease renewed
/// meanwhile; dropped, the lease is given up.
/// The publisher task ends when `chunks` closes (the body dropped), and gives the lease up.
struct Holding {
    body: StreamBody,
    chunks: mpsc::UnboundedSender<Bytes>,
    ended: Arc<Ended>,
}

fn hold(relay: Arc<Relay>, lease: &str, feed: &str, token: String, body: StreamBody) -> StreamBody {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let ended = Arc::new(Ended::default());
    let (lease, feed) = (lease.to_owned(), feed.to_owned());
    tokio::spawn({
        let ended = Arc::clone(&ended);
        async move {
            let mut renew = tokio::time::interval(RENEW_EVERY);
            renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A renewal that fails (Redis slow or away) is tried again while the lease may
            // still be ours; past that, or told another replica has it, the holder stops.
            let mut renewed = tokio::time::Instant::now();
            let mut publishing = true;
            loop {
                tokio::select! {
                    chunk = rx.recv() => {
                        let Some(chunk) = chunk else { break };
                        let mut payload = Vec::with_capacity(token.len() + 1 + chunk.len());
                        payload.extend_from_slice(token.as_bytes());
                        payload.push(b' ');
                        payload.extend_from_slice(&chunk);
                        let published = relay.publish(&feed, payload).await;
                        match (published, publishing) {
                            (Ok(()), false) => {
                                tracing::info!(lease = %lease, "stream chunks reach the other replicas again");
                                publishing = true;
                            }
                            (Err(e), true) => {
                                tracing::warn!(lease = %lease, error = %e, "stream chunks do not reach the other replicas (logged once until they do)");
                                publishing = false;
                            }
                            (Ok(()), true) | (Err(_), false) => {}
                        }
                    }
                    _ = renew.tick() => {
                        match relay.renew(&lease, &token).await {
                            Ok(true) => renewed = tokio::time::Instant::now(),
                            Ok(false) => {
                                tracing::warn!(lease = %lease, "stream lease held by another replica: this replica stops reading X");
                                ended.end();
                                break;
                            }
                            Err(e) if renewed.elapsed() + RENEW_EVERY >= LEASE_TTL => {
                                tracing::warn!(lease = %lease, error = %e, "stream lease not renewed before it runs out: this replica stops reading X");
                                ended.end();
                                break;
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
            relay.give_up(&lease, &token).await;
        }
    });
    Holding {
        body,
        chunks: tx,
        ended,
    }
    .boxed_unsync()
}

impl Body for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended.check(cx) {
            return Poll::Ready(Some(Err(Box::new(LeaseLost))));
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        if let Some(Ok(Some(data))) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let _gone = this.chunks.send(data.clone());
        }
        Poll::Ready(frame)
    }
}

/// The holder's chunks as a follower receives them; it ends when the lease is free or
/// changes hands (the next attempt takes it, or follows the new holder).
struct Following {
    messages: ::redis::aio::PubSubStream,
    holder: Arc<Mutex<Option<String>>>,
    ended: Arc<Ended>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for Following {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn follow(relay: Arc<Relay>, lease: &str, messages: ::redis::aio::PubSubStream) -> StreamBody {
    let ended = Arc::new(Ended::default());
    let holder = Arc::new(Mutex::new(None));
    let lease = lease.to_owned();
    let watcher = tokio::spawn({
        let (ended, holder) = (Arc::clone(&ended), Arc::clone(&holder));
        async move {
            let mut first: Option<String> = None;
            loop {
                let now = relay.holder(&lease).await;
                match (&first, now) {
                    (_, Err(_) | Ok(None)) => break,
                    (None, Ok(Some(h))) => {
                        *holder.lock().unwrap_or_else(PoisonError::into_inner) = Some(h.clone());
                        first = Some(h);
                    }
                    (Some(f), Ok(Some(h))) if *f != h => break,
                    (Some(_), Ok(Some(_))) => {}
                }
                tokio::time::sleep(RENEW_EVERY).await;
            }
            ended.end();
        }
    });
    Following {
        messages,
        holder,
        ended,
        watcher,
    }
    .boxed_unsync()
}

impl Body for Following {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.ended.check(cx) {
                return Poll::Ready(None);
            }
            let Some(msg) = std::task::ready!(futures_core::Stream::poll_next(
                Pin::new(&mut this.messages),
                cx
            )) else {
                return Poll::Ready(Some(Err("the Redis subscription ended".into())));
            };
            let payload = msg.get_payload_bytes();
            let Some(space) = memchr::memchr(b' ', payload) else {
                continue;
            };
            let (token, chunk) = (payload.get(..space), payload.get(space + 1..));
            let current = this
                .holder
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            // Fencing: chunks of a replica that no longer holds the lease are dropped.
            if current
                .as_deref()
                .is_some_and(|h| Some(h.as_bytes()) != token)
            {
                continue;
            }
            if let Some(chunk) = chunk {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(chunk)))));
            }
        }
    }
}
