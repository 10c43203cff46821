//! The shared [`Backend`]: every bucket in Redis, so that several replicas admit together what
//! one process would (CONTRACT section 10).
//!
//! Each decision is one server-side Lua script, loaded once and called by its SHA (`EVALSHA`,
//! loaded again on `NOSCRIPT`), with Redis's clock (`TIME`) inside it, so no replica's clock
//! decides a shared window: `reserve.lua` (all-or-none over a request's buckets, the App's
//! usage-cap cooldown and the client's GCRA share: one round trip per admitted request),
//! `settle.lua` (X's reports and the requests' completions, or their reservations given back:
//! at once, on the request's path, only for a report that can change a bucket — see
//! `Snap::unchanged_by` —, else in batches from one task) and `cap.lua` (the cooldown).
//! Times in answers are translated to this process's clock by the offset Redis reports
//! alongside.
//!
//! Key layout (README, "Replicas"): `PREFIX{APP}:IDENTITY:METHOD /2/path:WINDOW_MS` per
//! bucket, `PREFIX{APP}:cap` for the usage cap and `PREFIX{APP}:share:CLIENT` for a client's
//! share, where `{APP}` is the App's name in literal braces: a Redis Cluster hash tag, so every
//! key one request touches is in one slot. Every key expires (a bucket one window after
//! its window ends, the cap and a share when they stop mattering).
//!
//! What this process learnt from an answer is kept for the flood case: a bucket known empty
//! until T, a cooldown until T, a share with no cell until T are refused here, without a round
//! trip, and never past T. Redis unreachable or slower than `shared.timeout`: the outage is
//! logged once, requests stop waiting on Redis at once and use this process's in-memory
//! buckets (`on_failure = "local"`) or get 503 (`"refuse"`), and a probe with backoff brings
//! Redis back as soon as it answers.

use std::collections::HashMap;
use std::fmt;
use std::future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Script, ScriptInvocation};
use tokio::sync::mpsc;

use super::memory::MemoryBackend;
use super::{
    Backend, DAY_WINDOW, Draw, Held, LearnFuture, PRIMARY_WINDOW, Refusal, Refused, Report,
    Reports, ReserveFuture, day_of, primary_of,
};
use crate::config::{OnFailure, Shared};
use crate::endpoints::{Catalogue, EndpointId, Figure};
use crate::identity::{Identities, IdentityId};
use crate::shared::{Engine, Health, Observer};

/// What a [`Health`] outage means for requests, by `on_failure`.
const LOCAL: &str = "requests use this replica's in-memory buckets until Redis answers";
const REFUSE: &str = "requests get 503 shared-state-unavailable until Redis answers";

/// What an outage means for requests, by `on_failure`.
fn consequence_of(on_failure: OnFailure) -> &'static str {
    match on_failure {
        OnFailure::Local => LOCAL,
        OnFailure::Refuse => REFUSE,
    }
}

/// The scripts, parsed once (their SHA computed once).
#[derive(Debug)]
struct Scripts {
    reserve: Script,
    settle: Script,
    cap: Script,
}

/// What the backend and every reservation it hands out share.
struct Inner {
    conn: ConnectionManager,
    scripts: Scripts,
    timeout: Duration,
    health: Arc<Health>,
    /// A probe is bringing Redis back.
    probing: AtomicBool,
    /// Where the probe and the settling of dropped reservations run: the runtime the backend
    /// was made on, which lives as long as the proxy.
    runtime: tokio::runtime::Handle,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inner")
            .field("at", &self.health.shown())
            .field("up", &self.health.is_up())
            .finish_non_exhaustive()
    }
}

/// The Redis client for `shared`: a connection manager that reconnects by itself, each
/// attempt and each answer bounded by `shared.timeout`. Nothing is sent until it is used.
pub(crate) fn connect(shared: &Shared) -> Result<ConnectionManager, String> {
    let client = ::redis::Client::open(shared.redis.url.expose())
        .map_err(|e| format!("not a Redis URL ({:?})", e.kind()))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(shared.timeout))
        .set_response_timeout(Some(shared.timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| format!("Redis client: {:?}", e.kind()))
}

/// Connects to `shared`'s Redis and sends one `PING` (`xgate check`): how long it took, or
/// why it failed (never the URL).
pub async fn ping(shared: &Shared) -> Result<Duration, String> {
    let conn = connect(shared)?;
    let started = tokio::time::Instant::now();
    ping_on(conn, shared.timeout).await?;
    Ok(started.elapsed())
}

/// One `PING` on `conn` within `timeout`.
async fn ping_on(mut conn: ConnectionManager, timeout: Duration) -> Result<(), String> {
    let cmd = ::redis::cmd("PING");
    match tokio::time::timeout(timeout, cmd.query_async::<String>(&mut conn)).await {
        Ok(Ok(_pong)) => Ok(()),
        Ok(Err(e)) => Err(redis_error(&e)),
        Err(_elapsed) => Err(format!("no answer within {timeout:?}")),
    }
}

/// A Redis error as a message (the client's errors name no URL).
fn redis_error(e: &::redis::RedisError) -> String {
    e.to_string()
}

impl Inner {
    /// Runs `call` named `op` within `timeout`, observed; a failure starts an outage.
    async fn run(
        self: &Arc<Self>,
        op: &'static str,
        call: ScriptInvocation<'_>,
        on_failure: &str,
    ) -> Option<Vec<i64>> {
        let mut conn = self.conn.clone();
        let invoked = async {
            call.invoke_async::<Vec<i64>>(&mut conn)
                .await
                .map_err(|e| redis_error(&e))
        };
        match self.health.run(op, self.timeout, invoked, on_failure).await {
            Ok(answer) => Some(answer),
            Err(failure) => {
                if failure.outage_started {
                    self.probe(on_failure);
                }
                None
            }
        }
    }

    /// One observed `PING`; a failure is reported to the caller, not counted as an outage
    /// here (the caller decides).
    async fn ping(&self) -> Result<(), String> {
        let started = tokio::time::Instant::now();
        let result = ping_on(self.conn.clone(), self.timeout).await;
        self.health
            .observer()
            .op(Engine::Redis, "ping", started.elapsed(), result.is_ok());
        result
    }

    /// Brings Redis back: `PING` with backoff (100 ms doubling to 5 s) until it answers.
    fn probe(self: &Arc<Self>, on_failure: &str) {
        if self.probing.swap(true, Ordering::Relaxed) {
            return;
        }
        let this = Arc::clone(self);
        let on_failure = on_failure.to_owned();
        drop(self.runtime.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::time::sleep(backoff).await;
                if let Err(e) = this.ping().await {
                    this.health.failed(&e, &on_failure);
                } else {
                    this.probing.store(false, Ordering::Relaxed);
                    this.health.succeeded();
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }));
    }
}

/// One bucket of a [`Layout`].
#[derive(Debug, Clone)]
struct Slot {
    key: String,
    limit: u32,
    window_ms: u64,
    /// Made from X's headers when the figure lacks the window: drawn from once it exists.
    learned: bool,
}

/// The keys one (identity, endpoint) draws from, and where X's reports go: the Redis twin of
/// the in-memory backend's buckets, in the same order.
#[derive(Debug)]
struct Layout {
    /// The App whose hash tag the keys carry.
    app: IdentityId,
    slots: Vec<Slot>,
    /// The bucket `x-rate-limit-*` update, `x-user-limit-24hour-*` (users only) and
    /// `x-app-limit-24hour-*`.
    primary: Option<usize>,
    user_day: Option<usize>,
    app_day: Option<usize>,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The state of one `(identity, endpoint)`'s cache of what Redis refused.
type KnownEmpty = Mutex<Option<Refusal>>;

/// Bucket state in Redis.
pub struct RedisBackend {
    inner: Arc<Inner>,
    on_failure: OnFailure,
    catalogue: Arc<Catalogue>,
    identities: Arc<Identities>,
    prefix: String,
    /// `[identity * endpoints + endpoint]`, made at first use.
    layouts: Box<[OnceLock<Arc<Layout>>]>,
    /// Per layout: a refusal Redis gave, until its reset (this process's clock).
    known_empty: Box<[KnownEmpty]>,
    /// Per identity (used for Apps): the cooldown as last seen, until this Unix ms.
    capped_until_ms: Box<[AtomicU64]>,
    /// Per identity (used for Apps): its usage-cap key.
    cap_keys: Box<[String]>,
    /// Per client: its share has no cell until this Unix ms.
    share_until_ms: Mutex<HashMap<String, u64>>,
    /// The buckets used while Redis does not answer (`on_failure = "local"`).
    local: MemoryBackend,
    /// Settlements for the batch task ([`settle_in_batches`]).
    settlements: mpsc::UnboundedSender<Settlement>,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("inner", &self.inner)
            .field("on_failure", &self.on_failure)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// The backend on `shared`'s Redis, for `identities` on `catalogue`. Must be made inside
    /// the runtime that lives as long as the proxy. Sends nothing yet.
    pub fn new(
        shared: &Shared,
        catalogue: Arc<Catalogue>,
        identities: Arc<Identities>,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, String> {
        let conn = connect(shared)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_no_runtime| "the Redis backend needs a runtime".to_owned())?;
        let n = identities.len() * catalogue.endpoints().len();
        let inner = Arc::new(Inner {
            conn,
            scripts: Scripts {
                reserve: Script::new(include_str!("redis/reserve.lua")),
                settle: Script::new(include_str!("redis/settle.lua")),
                cap: Script::new(include_str!("redis/cap.lua")),
            },
            timeout: shared.timeout,
            health: Arc::new(Health::new(
                Engine::Redis,
                shared.redis.shown.clone(),
                observer,
            )),
            probing: AtomicBool::new(false),
            runtime,
        });
        let (settlements, rx) = mpsc::unbounded_channel();
        let consequence = consequence_of(shared.on_failure);
        drop(
            inner
                .runtime
                .spawn(settle_in_batches(Arc::clone(&inner), rx, consequence)),
        );
        Ok(Self {
            inner,
            settlements,
            on_failure: shared.on_failure,
            local: MemoryBackend::new(Arc::clone(&catalogue), &identities),
            layouts: (0..n).map(|_| OnceLock::new()).collect(),
            known_empty: (0..n).map(|_| Mutex::new(None)).collect(),
            capped_until_ms: identities.iter().map(|_| AtomicU64::new(0)).collect(),
            cap_keys: identities
                .iter()
                .map(|(_, i)| {
                    format!(
                        "{}{{{}}}:cap",
                        shared.key_prefix,
                        identities.get(i.app).name
                    )
                })
                .collect(),
            share_until_ms: Mutex::new(HashMap::new()),
            prefix: shared.key_prefix.clone(),
            catalogue,
            identities,
        })
    }

    /// Sends one `PING`, so the outage (if Redis is down at start) is known and logged before
    /// the first request.
    pub async fn ping(&self) {
        match self.inner.ping().await {
            Ok(()) => {
                self.inner.health.succeeded();
                tracing::info!(at = %self.inner.health.shown(), prefix = %self.prefix, "buckets are shared in Redis");
            }
            Err(e) => self.outage(&e),
        }
    }

    fn outage(&self, why: &dyn fmt::Display) {
        let consequence = self.consequence();
        if self.inner.health.failed(why, consequence) {
            self.inner.probe(consequence);
        }
    }

    fn consequence(&self) -> &'static str {
        consequence_of(self.on_failure)
    }

    /// Hands a settlement to the batch task.
    fn queue(&self, settlement: Settlement) {
        // The task lives as long as the backend; were it gone, the keys would expire.
        let _gone = self.settlements.send(settlement);
    }

    /// The App's usage-cap key, `PREFIX{APP}:cap` (made once per App).
    fn cap_key(&self, app: IdentityId) -> &str {
        self.cap_keys.get(app.index()).map_or("", String::as_str)
    }

    /// The App's hash-tagged key prefix: `PREFIX{APP}:`.
    fn app_prefix(&self, app: IdentityId) -> String {
        format!("{}{{{}}}:", self.prefix, self.identities.get(app).name)
    }

    fn index(&self, identity: IdentityId, endpoint: EndpointId) -> Option<usize> {
        identity
            .index()
            .checked_mul(self.catalogue.endpoints().len())?
            .checked_add(endpoint)
    }

    /// The keys `identity` draws from on `endpoint`.
    fn layout(&self, identity: IdentityId, endpoint: EndpointId) -> Option<&Arc<Layout>> {
        let slot = self.layouts.get(self.index(identity, endpoint)?)?;
        let e = self.catalogue.get(endpoint)?;
        let who = self.identities.get(identity);
        let user = who.kind.is_user();
        Some(slot.get_or_init(|| {
            let prefix = self.app_prefix(who.app);
            let key = |name: &str, window_ms: u64| format!("{prefix}{name}:{}:{window_ms}", e.name);
            let mut slots = Vec::new();
            let own = if user { &e.user } else { &e.app };
            for rate in &own.rates {
                slots.push(Slot {
                    key: key(&who.name, ms(rate.window)),
                    limit: rate.limit.get(),
                    window_ms: ms(rate.window),
                    learned: false,
                });
            }
            // Where a report goes: the figure's window, none when an override sets it (an
            // override wins over what X reports), else a window learnt from X.
            let mut target =
                |index: Option<usize>, figure: &Figure, name: &str, window: Duration| match index {
                    Some(_) if figure.overridden => None,
                    Some(i) => Some(i),
                    None => {
                        slots.push(Slot {
                            key: key(name, ms(window)),
                            limit: 0,
                            window_ms: ms(window),
                            learned: true,
                        });
                        Some(slots.len() - 1)
                    }
                };
            let primary = target(primary_of(own), own, &who.name, PRIMARY_WINDOW);
            let own_day = target(day_of(own), own, &who.name, DAY_WINDOW);
            let (user_day, app_day) = if user {
                // The App's 24-hour window counts all its users' requests together.
                let app = self.identities.get(who.app);
                let app_day = match day_of(&e.app) {
                    Some(i) => {
                        let rate = e.app.rates.get(i);
                        rate.map(|rate| {
                            slots.push(Slot {
                                key: key(&app.name, ms(rate.window)),
                                limit: rate.limit.get(),
                                window_ms: ms(rate.window),
                                learned: false,
                            });
                            slots.len() - 1
                        })
                        .filter(|_| !e.app.overridden)
                    }
                    None => {
                        slots.push(Slot {
                            key: key(&app.name, ms(DAY_WINDOW)),
                            limit: 0,
                            window_ms: ms(DAY_WINDOW),
                            learned: true,
                        });
                        Some(slots.len() - 1)
                    }
                };
                (own_day, app_day)
            } else {
                (None, own_day)
            };
            Arc::new(Layout {
                app: who.app,
                slots,
                primary,
                user_day,
                app_day,
            })
        }))
    }

    /// What this process knows refuses `draw` now, without asking Redis.
    fn known_refusal(&self, draw: &Draw<'_>, now_ms: u64) -> Option<Refused> {
        let app = self.identities.get(draw.identity).app;
        let until = self
            .capped_until_ms
            .get(app.index())
            .map_or(0, |c| c.load(Ordering::Relaxed));
        if now_ms < until {
            return Some(Refused::UsageCapped { until_ms: until });
        }
        if let Some(refusal) = draw
            .endpoint
            .and_then(|e| self.index(draw.identity, e))
            .and_then(|i| self.known_empty.get(i))
            .and_then(|k| *k.lock().unwrap_or_else(PoisonError::into_inner))
            .filter(|r| now_ms < r.reset_ms)
        {
            return Some(Refused::Window(refusal));
        }
        if let Some((client, _)) = draw.client {
            let shares = self
                .share_until_ms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(&until) = shares.get(client).filter(|&&u| now_ms < u) {
                return Some(Refused::ClientShare {
                    wait: Duration::from_millis(until - now_ms),
                });
            }
        }
        None
    }

    /// The answer without Redis: this process's buckets, or 503.
    fn without_redis<'a>(
        &'a self,
        draw: Draw<'a>,
        now_ms: u64,
    ) -> Result<Box<dyn Held + 'a>, Refused> {
        match self.on_failure {
            OnFailure::Local => self
                .local
                .reserve_now(draw, now_ms)
                .map(|held| Box::new(held) as Box<dyn Held + 'a>),
            OnFailure::Refuse => Err(Refused::Unavailable),
        }
    }

    /// Turns the script's answer into the reservation or the refusal, in this process's time.
    fn decide<'a>(
        &'a self,
        answer: &[i64],
        draw: Draw<'a>,
        layout: Option<Arc<Layout>>,
        now_ms: u64,
    ) -> Result<Box<dyn Held + 'a>, Refused> {
        let number = |i: usize| answer.get(i).and_then(|&v| u64::try_from(v).ok());
        let redis_now = number(1).unwrap_or(0);
        // A time of Redis's clock on this process's.
        let local = |t: u64| now_ms.saturating_add(t.saturating_sub(redis_now));
        match answer.first() {
            Some(0) => Ok(Box::new(RedisHeld {
                inner: Arc::clone(&self.inner),
                snaps: snaps(answer),
                layout,
                known_empty: draw.endpoint.and_then(|e| self.index(draw.identity, e)),
                sent: false,
                settled: false,
                backend: self,
            })),
            Some(1) => {
                let until = local(number(2).unwrap_or(0));
                let app = self.identities.get(draw.identity).app;
                if let Some(c) = self.capped_until_ms.get(app.index()) {
                    c.fetch_max(until, Ordering::Relaxed);
                }
                Err(Refused::UsageCapped { until_ms: until })
            }
            Some(2) => {
                let refusal = Refusal {
                    reset_ms: local(number(2).unwrap_or(0)),
                    limit: u32::try_from(number(3).unwrap_or(0)).unwrap_or(u32::MAX),
                    window: Duration::from_millis(number(4).unwrap_or(0)),
                };
                if let Some(k) = draw
                    .endpoint
                    .and_then(|e| self.index(draw.identity, e))
                    .and_then(|i| self.known_empty.get(i))
                {
                    *k.lock().unwrap_or_else(PoisonError::into_inner) = Some(refusal);
                }
                Err(Refused::Window(refusal))
            }
            Some(3) => {
                let wait = Duration::from_millis(number(2).unwrap_or(0));
                if let Some((client, _)) = draw.client {
                    self.share_until_ms
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(client.to_owned(), now_ms.saturating_add(ms(wait)));
                }
                Err(Refused::ClientShare { wait })
            }
            _ => {
                self.outage(&"an answer of unexpected shape from the reserve script");
                self.without_redis(draw, now_ms)
            }
        }
    }
}

impl Backend for RedisBackend {
    fn reserve<'a>(&'a self, draw: Draw<'a>, now_ms: u64) -> ReserveFuture<'a> {
        if !self.inner.health.is_up() {
            return Box::pin(future::ready(self.without_redis(draw, now_ms)));
        }
        if let Some(refused) = self.known_refusal(&draw, now_ms) {
            return Box::pin(future::ready(Err(refused)));
        }
        let layout = draw
            .endpoint
            .and_then(|e| self.layout(draw.identity, e))
            .cloned();
        let app = self.identities.get(draw.identity).app;
        Box::pin(async move {
            let mut call = self.inner.scripts.reserve.prepare_invoke();
            let slots = layout.as_ref().map_or(&[][..], |l| &l.slots[..]);
            for s in slots {
                call.key(&s.key);
            }
            call.key(self.cap_key(app));
            call.arg(slots.len());
            match draw.client {
                Some((client, share)) => {
                    let rate = share.rate();
                    let interval = (ms(rate.window) / u64::from(rate.limit.get())).max(1);
                    call.key(format!("{}share:{client}", self.app_prefix(app)));
                    call.arg(1).arg(interval).arg(rate.limit.get());
                }
                None => {
                    call.arg(0).arg(0).arg(0);
                }
            }
            for s in slots {
                call.arg(s.limit).arg(s.window_ms).arg(u8::from(s.learned));
            }
            match self.inner.run("reserve", call, self.consequence()).await {
                Some(answer) => self.decide(&answer, draw, layout, now_ms),
                None => self.without_redis(draw, now_ms),
            }
        })
    }

    fn usage_capped(&self, app: IdentityId, now_ms: u64, cooldown: Duration) {
        if let Some(c) = self.capped_until_ms.get(app.index()) {
            c.fetch_max(now_ms.saturating_add(ms(cooldown)), Ordering::Relaxed);
        }
        self.local.usage_capped(app, now_ms, cooldown);
        if !self.inner.health.is_up() {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let key = self.cap_key(app).to_owned();
        let consequence = self.consequence();
        drop(self.inner.runtime.spawn(async move {
            let mut call = inner.scripts.cap.prepare_invoke();
            call.key(key).arg(ms(cooldown));
            drop(inner.run("cap", call, consequence).await);
        }));
    }
}

/// One bucket as a reservation left it (the reserve script's answer): what decides whether
/// X's report about it can change anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snap {
    /// The window this reservation was taken in (0: the bucket was not drawn from).
    ticket: i64,
    remaining: i64,
    inflight: i64,
    end_ms: i64,
    limit: i64,
}

impl Snap {
    fn reserved(&self) -> bool {
        self.ticket != 0
    }

    /// Whether applying `report` would leave the bucket as it is, whatever the other replicas
    /// did meanwhile. Within one window, remaining + in flight only falls (a reservation moves
    /// one from the first to the second, a completion takes one from the second, a give-back
    /// moves it back), so what X allows, `remaining - (in flight now - 1)`, is at least
    /// `report.remaining + 1 - (r + f as left)` above the bucket's remaining: when that is not
    /// negative, the report — same reset, same limit — cannot lower it, and a report never
    /// raises a bucket.
    fn unchanged_by(&self, report: &Report) -> bool {
        self.reserved()
            && i64::try_from(report.reset_ms).is_ok_and(|r| r == self.end_ms)
            && report.limit.is_none_or(|l| i64::from(l) == self.limit)
            && i64::from(report.remaining) + 1 >= self.remaining + self.inflight
    }
}

/// The snapshots in a successful reserve answer (after its status and Redis's time).
fn snaps(answer: &[i64]) -> Vec<Snap> {
    answer
        .get(2..)
        .unwrap_or_default()
        .chunks_exact(5)
        .map(|c| Snap {
            ticket: c.first().copied().unwrap_or(0),
            remaining: c.get(1).copied().unwrap_or(0),
            inflight: c.get(2).copied().unwrap_or(0),
            end_ms: c.get(3).copied().unwrap_or(0),
            limit: c.get(4).copied().unwrap_or(0),
        })
        .collect()
}

/// A request's reservations in Redis, settled once: when X's answer comes (at once, in one
/// round trip, if its reports can change a bucket; else with the next batch), or when
/// dropped (completed if sent, else given back, with the next batch).
struct RedisHeld<'a> {
    backend: &'a RedisBackend,
    inner: Arc<Inner>,
    layout: Option<Arc<Layout>>,
    snaps: Vec<Snap>,
    /// The `known_empty` entry a report clears.
    known_empty: Option<usize>,
    sent: bool,
    settled: bool,
}

impl fmt::Debug for RedisHeld<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisHeld")
            .field("snaps", &self.snaps)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

/// One request's part of a settle call: its buckets, what it reserved, whether it was sent,
/// and what X reported of each bucket (if that is to be applied).
#[derive(Debug)]
struct Settlement {
    layout: Arc<Layout>,
    snaps: Vec<Snap>,
    sent: bool,
    learnt: Vec<Option<Report>>,
}

impl Settlement {
    fn is_empty(&self) -> bool {
        !self.snaps.iter().any(Snap::reserved) && self.learnt.iter().all(Option::is_none)
    }

    /// Adds this request's keys and arguments to `call`; returns how many buckets.
    fn add_to(&self, call: &mut ScriptInvocation<'_>) -> usize {
        for (i, slot) in self.layout.slots.iter().enumerate() {
            call.key(&slot.key);
            call.arg(self.snaps.get(i).map_or(0, |s| s.ticket));
            call.arg(u8::from(self.sent));
            match self.learnt.get(i).copied().flatten() {
                Some(r) => {
                    let create = if slot.learned {
                        r.limit.unwrap_or(r.remaining).max(1)
                    } else {
                        slot.limit
                    };
                    call.arg(1)
                        .arg(r.limit.unwrap_or(0))
                        .arg(r.remaining)
                        .arg(r.reset_ms)
                        .arg(create);
                }
                None => {
                    call.arg(0).arg(0).arg(0).arg(0).arg(slot.limit);
                }
            }
            call.arg(slot.window_ms);
        }
        self.layout.slots.len()
    }
}

/// Sends `settlements` (all of one App) as one settle call.
async fn settle(inner: &Arc<Inner>, settlements: &[Settlement], consequence: &str) {
    let mut call = inner.scripts.settle.prepare_invoke();
    let n: usize = settlements.iter().map(|s| s.layout.slots.len()).sum();
    call.arg(n);
    for s in settlements {
        s.add_to(&mut call);
    }
    drop(inner.run("settle", call, consequence).await);
}

/// Settles what dropped and answered reservations leave behind, in batches: whatever is
/// waiting when a call goes out goes in it (one call per App, up to [`BATCH`] requests), so
/// under load completions cost a fraction of a round trip per request and never one on a
/// request's path. While Redis is down they are dropped: the keys expire.
async fn settle_in_batches(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<Settlement>,
    consequence: &'static str,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_empty_or_closed) => break,
            }
        }
        if !inner.health.is_up() {
            continue;
        }
        batch.sort_by_key(|s| s.layout.app.index());
        for group in batch.chunk_by(|a, b| a.layout.app == b.layout.app) {
            settle(&inner, group, consequence).await;
        }
    }
}

/// Most requests settled by one batch.
const BATCH: usize = 256;

impl RedisHeld<'_> {
    /// This request's settlement, with `reports` applied where they go.
    fn settlement(&mut self, reports: Option<&Reports>) -> Option<Settlement> {
        let layout = self.layout.take()?;
        let mut learnt: Vec<Option<Report>> = vec![None; layout.slots.len()];
        if let Some(reports) = reports {
            for (target, report) in [
                (layout.primary, reports.primary),
                (layout.user_day, reports.user_day),
                (layout.app_day, reports.app_day),
            ] {
                if let Some(l) = target.and_then(|i| learnt.get_mut(i)) {
                    *l = report;
                }
            }
        }
        Some(Settlement {
            snaps: std::mem::take(&mut self.snaps),
            sent: self.sent,
            learnt,
            layout,
        })
    }

    /// Whether any of `s`'s reports can change a bucket (so it is settled at once).
    fn matters(s: &Settlement) -> bool {
        s.learnt.iter().enumerate().any(|(i, report)| {
            report.is_some_and(|r| !s.snaps.get(i).is_some_and(|snap| snap.unchanged_by(&r)))
        })
    }
}

impl Held for RedisHeld<'_> {
    fn set_sent(&mut self, sent: bool) {
        self.sent = sent;
    }

    /// X's reports that can change a bucket are applied at once, with the completion, in one
    /// round trip before the answer goes on; reports that cannot (the usual case: X counted
    /// what xgate counted) leave only the completion, which goes with the next batch.
    fn learn<'s>(&'s mut self, reports: &Reports, _now_ms: u64) -> LearnFuture<'s> {
        let reports = *reports;
        Box::pin(async move {
            self.settled = true;
            let Some(settlement) = self.settlement(Some(&reports)) else {
                return;
            };
            if !Self::matters(&settlement) {
                let mut settlement = settlement;
                settlement.learnt.iter_mut().for_each(|l| *l = None);
                if !settlement.is_empty() {
                    self.backend.queue(settlement);
                }
                return;
            }
            if let Some(k) = self
                .known_empty
                .and_then(|i| self.backend.known_empty.get(i))
            {
                *k.lock().unwrap_or_else(PoisonError::into_inner) = None;
            }
            settle(
                &self.inner,
                std::slice::from_ref(&settlement),
                self.backend.consequence(),
            )
            .await;
        })
    }
}

impl Drop for RedisHeld<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Completed if sent, else given back: with the next batch (a drop cannot wait).
        if let Some(settlement) = self.settlement(None).filter(|s| !s.is_empty()) {
            self.backend.queue(settlement);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_900_000;

    fn snap(remaining: i64, inflight: i64) -> Snap {
        Snap {
            ticket: 1_700_000_000_000,
            remaining,
            inflight,
            end_ms: i64::try_from(T).unwrap(),
            limit: 900,
        }
    }

    fn report(remaining: u32, reset_ms: u64, limit: Option<u32>) -> Report {
        Report {
            limit,
            remaining,
            reset_ms,
        }
    }

    #[test]
    fn a_report_is_skipped_only_when_it_cannot_lower_the_bucket() {
        // Left at 9 remaining, 1 in flight (this one): X allowing 9 more after it cannot lower.
        assert!(snap(9, 1).unchanged_by(&report(9, T, Some(900))));
        assert!(snap(9, 1).unchanged_by(&report(50, T, None)));
        // One fewer than xgate counted: applied.
        assert!(!snap(9, 1).unchanged_by(&report(8, T, Some(900))));
        // Other replicas' requests in flight count against X's figure.
        assert!(!snap(9, 3).unchanged_by(&report(10, T, None)));
        assert!(snap(9, 3).unchanged_by(&report(11, T, None)));
        // Another window, another limit, or a bucket this request did not draw from: applied.
        assert!(!snap(9, 1).unchanged_by(&report(500, T + 1, None)));
        assert!(!snap(9, 1).unchanged_by(&report(500, T, Some(450))));
        let mut not_drawn = snap(9, 1);
        not_drawn.ticket = 0;
        assert!(!not_drawn.unchanged_by(&report(500, T, None)));
    }

    #[test]
    fn snapshots_are_read_five_numbers_a_bucket() {
        let answer = [0, 42, 7, 3, 1, 99, 10, 0, 0, 0, 0, 0];
        assert_eq!(
            snaps(&answer),
            [
                Snap {
                    ticket: 7,
                    remaining: 3,
                    inflight: 1,
                    end_ms: 99,
                    limit: 10
                },
                Snap::default()
            ]
        );
    }
}
