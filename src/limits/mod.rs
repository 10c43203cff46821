//! X's rate limits, kept locally (CONTRACT section 5).
//!
//! Owns admission: which buckets a request draws from, reserving them all or none, the
//! client's own share ([`ClientRate`], GCRA through `governor`), the usage-cap cooldown, the
//! `on_exhausted = "wait"` policy, learning from X's `x-rate-limit-*` and 24-hour headers, and
//! the 429s these refusals become.
//!
//! Two layers. [`Limiter`] is what the request path calls: it reads the clock once, asks the
//! backend, waits when the policy allows, and builds the contract's errors. A [`Backend`] keeps
//! the bucket state and makes the all-or-none decision; today's is [`memory::MemoryBackend`]
//! (this process's memory), and a shared one (several replicas) fits behind the same trait:
//! its calls are async and may fail, and failure has its own refusal,
//! [`Refused::Unavailable`], decided here and nowhere else.
//!
//! A reservation ([`Admission`]) gives itself back: dropped before [`Admission::sent`] it
//! uses up nothing, so no early return between admission and upstream can leak quota; once
//! sent, dropping it completes the request (its answer came back, or it went upstream and
//! failed there).

mod bucket;
pub mod memory;
pub mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

pub use bucket::Refusal;

use crate::clock::{Clock, GovernorClock};
use crate::config::{Limits, OnExhausted, Rate};
use crate::endpoints::{Catalogue, Endpoint, EndpointId, Figure};
use crate::error::ProxyError;
use crate::identity::{Identities, Identity, IdentityId};

/// The window X's `x-rate-limit-*` headers describe when the figure names none.
pub(crate) const PRIMARY_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The window of X's 24-hour headers.
pub(crate) const DAY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The figure's primary window, the one X's `x-rate-limit-*` headers describe: 15 minutes,
/// else the first that is neither 24 hours nor a second or less.
pub(crate) fn primary_of(figure: &Figure) -> Option<usize> {
    let rates = &figure.rates;
    rates
        .iter()
        .position(|r| r.window == PRIMARY_WINDOW)
        .or_else(|| {
            rates
                .iter()
                .position(|r| r.window != DAY_WINDOW && r.window > Duration::from_secs(1))
        })
}

/// The figure's 24-hour window, the one X's 24-hour headers describe.
pub(crate) fn day_of(figure: &Figure) -> Option<usize> {
    figure.rates.iter().position(|r| r.window == DAY_WINDOW)
}

/// What one request draws from.
#[derive(Debug, Clone, Copy)]
pub struct Draw<'a> {
    /// The identity it acts as.
    pub identity: IdentityId,
    /// Its endpoint; `None` is `other`, which has no bucket.
    pub endpoint: Option<EndpointId>,
    /// The calling client's name and its own share (`rate`), when it has one.
    pub client: Option<(&'a str, &'a ClientRate)>,
}

/// Why a backend refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A bucket is empty (the one that allows a request last, when several are).
    Window(Refusal),
    /// The App's usage cap answer is cooling down until this Unix ms.
    UsageCapped {
        /// When requests go upstream again.
        until_ms: u64,
    },
    /// The client's own share has no cell free for this long.
    ClientShare {
        /// Until one is.
        wait: Duration,
    },
    /// The backend could not decide (a shared backend that is unreachable).
    Unavailable,
}

/// What X reported about one of its windows in one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// `*-limit`, when sent.
    pub limit: Option<u32>,
    /// `*-remaining`.
    pub remaining: u32,
    /// `*-reset`, in Unix ms.
    pub reset_ms: u64,
}

/// X's reports in one answer: the primary window, the user's 24 hours, the App's 24 hours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reports {
    /// `x-rate-limit-*`.
    pub primary: Option<Report>,
    /// `x-user-limit-24hour-*`.
    pub user_day: Option<Report>,
    /// `x-app-limit-24hour-*`.
    pub app_day: Option<Report>,
}

impl Reports {
    /// The reports in an answer's headers, read in one pass over them (nine lookups, each
    /// hashing a name, cost more than a walk over an answer's few headers); of a repeated
    /// header the first value counts, as with `HeaderMap::get`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        // Per window (primary, user day, app day): limit, remaining, reset; `Some(None)` is
        // a header that is there but not a number.
        let mut seen = [[None::<Option<u64>>; 3]; 3];
        for (name, value) in headers {
            let Some((window, field)) = report_field(name.as_str()) else {
                continue;
            };
            if let Some(slot @ None) = seen.get_mut(window).and_then(|w| w.get_mut(field)) {
                *slot = Some(number(value));
            }
        }
        let [primary, user_day, app_day] = seen.map(|fields| {
            let [limit, remaining, reset] = fields.map(Option::flatten);
            Some(report_of(limit, remaining?, reset?))
        });
        Self {
            primary,
            user_day,
            app_day,
        }
    }
}

/// A backend's future answer to a reservation.
pub type ReserveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Box<dyn Held + 'a>, Refused>> + Send + 'a>>;

/// A backend's learning from an answer, done when it completes.
pub type LearnFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where bucket state lives, and the all-or-none decision over it.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Reserves the request in every bucket of `draw` (and the client's share), or in none.
    /// `now_ms` is the limiter's clock; a shared backend uses its own, and answers in the
    /// limiter's.
    fn reserve<'a>(&'a self, draw: Draw<'a>, now_ms: u64) -> ReserveFuture<'a>;

    /// X answered `usage-capped` for `app` at `now_ms`: its requests and its users' are
    /// refused for `cooldown`.
    fn usage_capped(&self, app: IdentityId, now_ms: u64, cooldown: Duration);
}

/// One request's reservations in a backend. Dropped while [`Held::set_sent`] says unsent, they are given
/// back; after it, dropping completes them.
pub trait Held: Send + fmt::Debug {
    /// Whether the request went upstream: while `true`, dropping completes the reservations
    /// (they count as used); while `false`, dropping gives them back.
    fn set_sent(&mut self, sent: bool);

    /// Applies X's reports of the answer to this request (rule 2) at `now_ms`. The answer
    /// has come back, so a backend may complete the reservations with it.
    fn learn<'s>(&'s mut self, reports: &Reports, now_ms: u64) -> LearnFuture<'s>;
}

/// The rate-limit policy of the whole proxy, over its backend.
#[derive(Debug)]
pub struct Limiter {
    catalogue: Arc<Catalogue>,
    backend: Box<dyn Backend>,
    clock: Arc<dyn Clock>,
    identities: Arc<Identities>,
    max_wait: Duration,
    usage_cap_cooldown: Duration,
}

fn unix_ms(clock: &dyn Clock) -> u64 {
    u64::try_from(clock.unix_time().as_millis()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Limiter {
    /// The limiter with the Redis backend of `shared`, or the in-memory one without it.
    pub async fn from_config(
        catalogue: Arc<Catalogue>,
        identities: Arc<Identities>,
        limits: &Limits,
        shared: Option<&crate::config::Shared>,
        observer: Arc<dyn crate::shared::Observer>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        let Some(shared) = shared else {
            return Ok(Self::in_memory(catalogue, identities, limits, clock));
        };
        let backend = redis::RedisBackend::new(
            shared,
            Arc::clone(&catalogue),
            Arc::clone(&identities),
            observer,
        )?;
        backend.ping().await;
        Ok(Self::new(
            catalogue,
            identities,
            Box::new(backend),
            limits,
            clock,
        ))
    }

    /// The limiter with the in-memory backend: buckets in this process.
    pub fn in_memory(
        catalogue: Arc<Catalogue>,
        identities: Arc<Identities>,
        limits: &Limits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let backend = memory::MemoryBackend::new(Arc::clone(&catalogue), &identities);
        Self::new(catalogue, identities, Box::new(backend), limits, clock)
    }

    /// The limiter over `backend`, reading time from `clock`.
    pub fn new(
        catalogue: Arc<Catalogue>,
        identities: Arc<Identities>,
        backend: Box<dyn Backend>,
        limits: &Limits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            catalogue,
            backend,
            clock,
            identities,
            max_wait: match limits.on_exhausted {
                OnExhausted::Wait => limits.max_wait,
                OnExhausted::Reject => Duration::ZERO,
            },
            usage_cap_cooldown: limits.usage_cap_cooldown,
        }
    }

    /// Unix milliseconds by the limiter's clock.
    pub fn now_ms(&self) -> u64 {
        unix_ms(&*self.clock)
    }

    /// A client's own share (`[[clients]] rate`), reading this limiter's clock.
    pub fn client_rate(&self, rate: Rate) -> ClientRate {
        ClientRate::new(rate, Arc::clone(&self.clock))
    }

    /// Reserves what `draw` draws from. Refused, it answers the contract's 429 (or 503 when
    /// the backend cannot decide) — unless `on_exhausted = "wait"` and every bucket has room
    /// again within `max_wait` of the first try, in which case it waits and tries again.
    pub async fn admit<'a>(&'a self, draw: Draw<'a>) -> Result<Admission<'a>, ProxyError> {
        let mut deadline = None;
        loop {
            let refused = match self.backend.reserve(draw, self.now_ms()).await {
                Ok(held) => {
                    return Ok(Admission {
                        limiter: self,
                        held,
                    });
                }
                Err(refused) => refused,
            };
            let now_ms = self.now_ms();
            let wait = match refused {
                Refused::Window(r) => {
                    Some(Duration::from_millis(r.reset_ms.saturating_sub(now_ms)))
                }
                Refused::ClientShare { wait } => Some(wait),
                Refused::UsageCapped { .. } | Refused::Unavailable => None,
            };
            // Time is read through tokio, so paused-time tests drive the wait.
            let now = tokio::time::Instant::now();
            let deadline = *deadline.get_or_insert(now + self.max_wait);
            match wait {
                Some(wait) if now + wait <= deadline => {
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
                _ => return Err(self.refused_error(refused, draw, now_ms)),
            }
        }
    }

    /// X answered `usage-capped` to a request as `identity`: its App's requests and all its
    /// users' are answered locally for `usage_cap_cooldown`.
    pub fn usage_capped(&self, identity: IdentityId) {
        let app = self.identities.get(identity).app;
        self.backend
            .usage_capped(app, self.now_ms(), self.usage_cap_cooldown);
    }

    /// The 429 (or 503) for a refusal (rule 3).
    fn refused_error(&self, refused: Refused, draw: Draw<'_>, now_ms: u64) -> ProxyError {
        let identity: &Identity = self.identities.get(draw.identity);
        let endpoint = endpoint_name(draw.endpoint.and_then(|e| self.catalogue.get(e)));
        match refused {
            Refused::Window(r) => ProxyError::RateLimited {
                who: format!("identity {}", identity.name),
                endpoint,
                limit: r.limit,
                window: r.window,
                reset_ms: r.reset_ms,
                now_ms,
            },
            Refused::UsageCapped { until_ms } => ProxyError::UsageCapped {
                identity: identity.name.to_string(),
                until_ms,
                now_ms,
            },
            Refused::ClientShare { wait } => {
                let (client, rate) = draw
                    .client
                    .map_or(("-", None), |(name, share)| (name, Some(share.rate())));
                ProxyError::RateLimited {
                    who: format!("client {client}"),
                    endpoint,
                    limit: rate.map_or(0, |r| r.limit.get()),
                    window: rate.map_or(Duration::ZERO, |r| r.window),
                    reset_ms: now_ms.saturating_add(millis(wait)),
                    now_ms,
                }
            }
            Refused::Unavailable => ProxyError::SharedStateUnavailable,
        }
    }
}

fn endpoint_name(endpoint: Option<&Endpoint>) -> String {
    endpoint.map_or("other", |e| e.name.as_str()).to_owned()
}

/// A request's reservations: given back when dropped, unless [`Admission::sent`] was called
/// first.
#[derive(Debug)]
pub struct Admission<'a> {
    limiter: &'a Limiter,
    held: Box<dyn Held + 'a>,
}

impl Admission<'_> {
    /// The request is going upstream: it counts as used from now on (a client that leaves
    /// while X answers does not give it back).
    pub fn sent(&mut self) {
        self.held.set_sent(true);
    }

    /// The request was sent but no connection to X was made (connect or TLS failure):
    /// nothing reached X, so dropping gives the reservations back after all.
    pub fn never_reached(&mut self) {
        self.held.set_sent(false);
    }

    /// Applies X's rate-limit headers of the answer to this request (rule 2). Returns the
    /// primary window's `remaining` as X reported it, if it did.
    pub async fn learn(&mut self, headers: &HeaderMap) -> Option<u32> {
        let reports = Reports::from_headers(headers);
        if reports != Reports::default() {
            let now_ms = self.limiter.now_ms();
            self.held.learn(&reports, now_ms).await;
        }
        reports.primary.map(|r| r.remaining)
    }
}

/// Which window and field an `x-…-limit` header reports: (0 primary, 1 user day, 2 app day;
/// 0 limit, 1 remaining, 2 reset).
fn report_field(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("x-")?;
    let (window, field) = if let Some(f) = rest.strip_prefix("rate-limit-") {
        (0, f)
    } else if let Some(f) = rest.strip_prefix("user-limit-24hour-") {
        (1, f)
    } else {
        (2, rest.strip_prefix("app-limit-24hour-")?)
    };
    let field = match field {
        "limit" => 0,
        "remaining" => 1,
        "reset" => 2,
        _ => return None,
    };
    Some((window, field))
}

/// A header's value as a number, spaces around it allowed.
fn number(value: &HeaderValue) -> Option<u64> {
    value.to_str().ok()?.trim().parse().ok()
}

/// One window's report from its limit, remaining and reset (Unix seconds).
fn report_of(limit: Option<u64>, remaining: u64, reset_s: u64) -> Report {
    Report {
        limit: limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset_ms: reset_s.saturating_mul(1000),
    }
}

/// Whether an upstream 429 body is X's `usage-capped` problem (its `type` ends in
/// `/2/problems/usage-capped`).
pub fn is_usage_capped(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Problem<'a> {
        #[serde(borrow, rename = "type")]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Problem<'_>>(body)
        .ok()
        .and_then(|p| p.kind)
        .is_some_and(|t| t.ends_with("/2/problems/usage-capped"))
}

// === per-client smoothing ===

/// The `governor` limiter of one client share, on the injected clock.
type ShareLimiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    GovernorClock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// A client's own share (`[[clients]] rate`): GCRA as `governor` implements it, with a burst
/// of the rate's limit.
#[derive(Debug)]
pub struct ClientRate {
    rate: Rate,
    limiter: ShareLimiter,
}

impl ClientRate {
    /// The smoothing bucket for `rate`: `limit` at once, then one per `window / limit`, by
    /// `clock`.
    pub fn new(rate: Rate, clock: Arc<dyn Clock>) -> Self {
        let period = rate.window / rate.limit.get();
        let quota = governor::Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| governor::Quota::per_second(rate.limit))
            .allow_burst(rate.limit);
        Self {
            rate,
            limiter: governor::RateLimiter::direct_with_clock(quota, GovernorClock(clock)),
        }
    }

    /// Takes one cell, or says how long until one is free.
    pub fn check(&self) -> Result<(), Duration> {
        use governor::clock::Clock as _;
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// The configured rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }
}

#[cfg(test)]
mod tests;
