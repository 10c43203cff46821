//! X's rate limits, kept locally (CONTRACT section 5 and the pre-check of section 4).
//!
//! Owns the decision for one request: which buckets it draws from, reserving them all or none
//! ([`Limiter::admit`]), giving them back when the request never went upstream, learning from
//! X's `x-rate-limit-*` and 24-hour headers ([`Admission::learn`]), the App-wide usage-cap
//! cooldown, the per-client smoothing bucket ([`ClientRate`], GCRA through `governor`), and
//! the auth and scope pre-check ([`precheck`]).
//!
//! Buckets are fixed windows ([`bucket`]) keyed by (identity, endpoint): app-only requests
//! draw from the App's figure, user-context requests from the user's figure plus the App's
//! 24-hour window (which counts all its users together). The keys are dense small integers
//! known at startup, so the buckets live in one flat table of lazily initialised slots
//! (identities × catalogue endpoints) rather than a hash map: a lookup is an index, and memory
//! is bounded by construction — a raw path can never create a key. Unix time comes from an
//! injected [`Clock`], so tests move windows in milliseconds.

mod bucket;
pub mod catalogue;
mod catalogue_table;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName};

pub use bucket::Refusal;
use bucket::{Bucket, Report, Ticket};
pub use catalogue::{Catalogue, Endpoint, EndpointId};

use crate::auth::{Identity, IdentityId, IdentityKind};
use crate::clock::Clock;
use crate::config::{Limits, OnExhausted, Rate};
use crate::error::ProxyError;

/// The window X's `x-rate-limit-*` headers describe when the figure names none.
const PRIMARY_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The window of X's 24-hour headers.
const DAY_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
/// Most buckets one request draws from: a figure has at most
/// [`crate::config::MAX_RATES_PER_FIGURE`] windows, plus two learned ones, plus the App's
/// 24-hour window and its learned twin.
const MAX_HELD: usize = crate::config::MAX_RATES_PER_FIGURE + 4;

/// The buckets of one (identity, endpoint).
#[derive(Debug)]
struct EndpointBuckets {
    /// One per window of the figure, in figure order.
    windows: Box<[Bucket]>,
    /// The window X's `x-rate-limit-*` describe: the 15-minute one, else the first that is
    /// neither 24 hours nor a second or less.
    primary: Option<usize>,
    /// The 24-hour window.
    day: Option<usize>,
    /// Made from X's headers when the figure lacks that window.
    learned_primary: OnceLock<Bucket>,
    learned_day: OnceLock<Bucket>,
    /// The figure comes from an override, which wins over what X reports.
    overridden: bool,
}

impl EndpointBuckets {
    fn new(figure: &catalogue::Figure) -> Self {
        let rates = &figure.rates;
        let primary = rates
            .iter()
            .position(|r| r.window == PRIMARY_WINDOW)
            .or_else(|| {
                rates
                    .iter()
                    .position(|r| r.window != DAY_WINDOW && r.window > Duration::from_secs(1))
            });
        Self {
            windows: rates.iter().map(|&r| Bucket::new(r)).collect(),
            primary,
            day: rates.iter().position(|r| r.window == DAY_WINDOW),
            learned_primary: OnceLock::new(),
            learned_day: OnceLock::new(),
            overridden: figure.overridden,
        }
    }

    /// The bucket X's primary (or 24-hour) headers describe, made from X's report when the
    /// figure lacks that window. `None` when the window comes from `[[limits.override]]`: an
    /// override wins over what X reports, and X's reset, which ends X's window, would
    /// otherwise stretch or cut a window of another length.
    fn learned(&self, day: bool, report: &Report) -> Option<&Bucket> {
        let (index, slot, window) = if day {
            (self.day, &self.learned_day, DAY_WINDOW)
        } else {
            (self.primary, &self.learned_primary, PRIMARY_WINDOW)
        };
        match index {
            Some(_) if self.overridden => None,
            Some(i) => self.windows.get(i),
            None => Some(slot.get_or_init(|| {
                let limit = report.limit.unwrap_or(report.remaining).max(1);
                Bucket::with(limit, u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
            })),
        }
    }
}

/// What kind of subject an identity is for the buckets.
#[derive(Debug, Clone, Copy)]
struct Subject {
    user: bool,
    /// The App it belongs to (itself for an App).
    app: IdentityId,
}

/// Why a request was refused before going upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A bucket is empty (the one that allows a request last, when several are).
    Window(Refusal),
    /// The App's usage cap answer is cooling down until this Unix ms.
    UsageCapped {
        /// When requests go upstream again.
        until_ms: u64,
    },
}

/// The rate-limit state of the whole proxy.
#[derive(Debug)]
pub struct Limiter {
    catalogue: Catalogue,
    clock: Arc<dyn Clock>,
    subjects: Box<[Subject]>,
    /// `[identity * endpoints + endpoint]`.
    slots: Box<[OnceLock<EndpointBuckets>]>,
    /// Per identity (used for Apps): usage-capped until this Unix ms.
    capped_until_ms: Box<[AtomicU64]>,
    on_exhausted: OnExhausted,
    max_wait: Duration,
    usage_cap_cooldown: Duration,
}

fn unix_ms(clock: &dyn Clock) -> u64 {
    u64::try_from(clock.unix_time().as_millis()).unwrap_or(u64::MAX)
}

impl Limiter {
    /// The limiter for `identities` (each with the index of its App), reading time from
    /// `clock`.
    pub fn new(
        catalogue: Catalogue,
        identities: &[Identity],
        limits: &Limits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let subjects: Box<[Subject]> = identities
            .iter()
            .map(|id| Subject {
                user: id.kind != IdentityKind::App,
                app: id.app,
            })
            .collect();
        let n = subjects.len() * catalogue.endpoints().len();
        Self {
            slots: (0..n).map(|_| OnceLock::new()).collect(),
            capped_until_ms: subjects.iter().map(|_| AtomicU64::new(0)).collect(),
            subjects,
            catalogue,
            clock,
            on_exhausted: limits.on_exhausted,
            max_wait: limits.max_wait,
            usage_cap_cooldown: limits.usage_cap_cooldown,
        }
    }

    /// The catalogue requests are matched against.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// Unix milliseconds by the limiter's clock.
    pub fn now_ms(&self) -> u64 {
        unix_ms(&*self.clock)
    }

    /// How long a request may wait for room (`on_exhausted = "wait"`), else zero.
    pub fn max_wait(&self) -> Duration {
        match self.on_exhausted {
            OnExhausted::Wait => self.max_wait,
            OnExhausted::Reject => Duration::ZERO,
        }
    }

    fn buckets(&self, identity: IdentityId, endpoint: EndpointId) -> Option<&EndpointBuckets> {
        let n = self.catalogue.endpoints().len();
        let slot = self
            .slots
            .get(identity.checked_mul(n)?.checked_add(endpoint)?)?;
        let subject = self.subjects.get(identity)?;
        let e = self.catalogue.get(endpoint)?;
        Some(slot.get_or_init(|| EndpointBuckets::new(if subject.user { &e.user } else { &e.app })))
    }

    /// Reserves the request in every bucket it draws from, in a fixed order (the identity's
    /// windows, its learned ones, then for user context the App's 24-hour ones), or in none:
    /// when one refuses, every reservation already taken is given back, and the answer names
    /// the refusing bucket that allows a request last. `endpoint` `None` (`other`) has no
    /// bucket.
    pub fn admit(
        &self,
        identity: IdentityId,
        endpoint: Option<EndpointId>,
    ) -> Result<Admission<'_>, Refused> {
        let now = self.now_ms();
        let subject = self.subjects.get(identity).copied().unwrap_or(Subject {
            user: false,
            app: identity,
        });
        let until = self
            .capped_until_ms
            .get(subject.app)
            .map_or(0, |c| c.load(Ordering::Relaxed));
        if now < until {
            return Err(Refused::UsageCapped { until_ms: until });
        }
        let mut admission = Admission {
            limiter: self,
            own: None,
            app: None,
            held: [None; MAX_HELD],
        };
        let Some(endpoint) = endpoint else {
            return Ok(admission);
        };
        let own = self.buckets(identity, endpoint);
        let app = if subject.user {
            self.buckets(subject.app, endpoint)
        } else {
            None
        };
        admission.own = own;
        admission.app = app;
        let own_buckets = own.into_iter().flat_map(|b| {
            b.windows
                .iter()
                .chain(b.learned_primary.get())
                .chain(b.learned_day.get())
        });
        let app_buckets = app.into_iter().flat_map(|b| {
            b.day
                .and_then(|i| b.windows.get(i))
                .into_iter()
                .chain(b.learned_day.get())
        });
        let mut all = own_buckets.chain(app_buckets);
        let mut n = 0;
        while let Some(bucket) = all.next() {
            match bucket.reserve(now) {
                Ok(ticket) => {
                    if let Some(slot) = admission.held.get_mut(n) {
                        *slot = Some((bucket, ticket));
                        n += 1;
                    } else {
                        // More buckets than MAX_HELD cannot be configured; never let one go
                        // uncounted if it happens.
                        bucket.release(ticket);
                    }
                }
                Err(refusal) => {
                    admission.release();
                    let worst = all
                        .filter_map(|b| b.peek(now))
                        .fold(refusal, |w, r| if r.reset_ms > w.reset_ms { r } else { w });
                    return Err(Refused::Window(worst));
                }
            }
        }
        Ok(admission)
    }

    /// Records an upstream `usage-capped` 429 for `identity`'s App: its requests and all its
    /// users' are answered locally for `usage_cap_cooldown`.
    pub fn usage_capped(&self, identity: IdentityId) {
        let app = self.subjects.get(identity).map_or(identity, |s| s.app);
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(self.usage_cap_cooldown.as_millis()).unwrap_or(u64::MAX));
        if let Some(c) = self.capped_until_ms.get(app) {
            c.fetch_max(until, Ordering::Relaxed);
        }
    }
}

/// A request's reservations. Dropping it counts them as used (the request went upstream);
/// [`Admission::release`] gives them back.
#[derive(Debug)]
pub struct Admission<'a> {
    limiter: &'a Limiter,
    own: Option<&'a EndpointBuckets>,
    app: Option<&'a EndpointBuckets>,
    held: [Option<(&'a Bucket, Ticket)>; MAX_HELD],
}

impl Admission<'_> {
    /// The request never went upstream: it used up nothing.
    pub fn release(&mut self) {
        for (bucket, ticket) in self.held.iter_mut().filter_map(Option::take) {
            bucket.release(ticket);
        }
    }

    fn holds(&self, bucket: &Bucket) -> bool {
        self.held
            .iter()
            .flatten()
            .any(|(b, _)| std::ptr::eq(*b, bucket))
    }

    /// Applies X's rate-limit headers of the answer to this request (rule 2):
    /// `x-rate-limit-*` to the identity's primary window, `x-user-limit-24hour-*` to a user's
    /// 24-hour window and `x-app-limit-24hour-*` to the App's; a header for a window the
    /// figure lacks creates that bucket. Returns the primary window's `remaining` as X
    /// reported it, if it did.
    pub fn learn(&self, headers: &HeaderMap) -> Option<u32> {
        let now = self.limiter.now_ms();
        let apply = |buckets: Option<&EndpointBuckets>, day: bool, r: Report| {
            if let Some(b) = buckets.and_then(|b| b.learned(day, &r)) {
                b.learn(now, r, self.holds(b));
            }
        };
        let primary = report(headers, &PRIMARY_HEADERS);
        if let Some(r) = primary {
            apply(self.own, false, r);
        }
        if let (Some(r), Some(_)) = (report(headers, &USER_DAY_HEADERS), self.app) {
            apply(self.own, true, r);
        }
        if let Some(r) = report(headers, &APP_DAY_HEADERS) {
            // For app-only requests the App's buckets are the identity's own.
            apply(self.app.or(self.own), true, r);
        }
        primary.map(|r| r.remaining)
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        for (bucket, _) in self.held.iter_mut().filter_map(Option::take) {
            bucket.complete();
        }
    }
}

/// The three headers of one of X's windows: `-limit`, `-remaining`, `-reset`.
type ReportHeaders = [HeaderName; 3];

const PRIMARY_HEADERS: ReportHeaders = [
    HeaderName::from_static("x-rate-limit-limit"),
    HeaderName::from_static("x-rate-limit-remaining"),
    HeaderName::from_static("x-rate-limit-reset"),
];
const USER_DAY_HEADERS: ReportHeaders = [
    HeaderName::from_static("x-user-limit-24hour-limit"),
    HeaderName::from_static("x-user-limit-24hour-remaining"),
    HeaderName::from_static("x-user-limit-24hour-reset"),
];
const APP_DAY_HEADERS: ReportHeaders = [
    HeaderName::from_static("x-app-limit-24hour-limit"),
    HeaderName::from_static("x-app-limit-24hour-remaining"),
    HeaderName::from_static("x-app-limit-24hour-reset"),
];

/// Reads one window's limit, remaining and reset (Unix seconds); `None` unless remaining and
/// reset are both there and numeric.
fn report(headers: &HeaderMap, [limit, remaining, reset]: &ReportHeaders) -> Option<Report> {
    let num = |name: &HeaderName| -> Option<u64> {
        headers.get(name)?.to_str().ok()?.trim().parse().ok()
    };
    let remaining = num(remaining)?;
    let reset_s = num(reset)?;
    Some(Report {
        limit: num(limit).map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset_ms: reset_s.saturating_mul(1000),
    })
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

/// A client's own share (`[[clients]] rate`): GCRA as `governor` implements it, with a burst
/// of the rate's limit.
#[derive(Debug)]
pub struct ClientRate {
    rate: Rate,
    limiter: governor::DefaultDirectRateLimiter,
}

impl ClientRate {
    /// The smoothing bucket for `rate`: `limit` at once, then one per `window / limit`.
    pub fn new(rate: Rate) -> Self {
        let period = rate.window / rate.limit.get();
        let quota = governor::Quota::with_period(period.max(Duration::from_nanos(1)))
            .unwrap_or_else(|| governor::Quota::per_second(rate.limit))
            .allow_burst(rate.limit);
        Self {
            rate,
            limiter: governor::RateLimiter::direct(quota),
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

// === answers ===

/// The 429 for a refused request (rule 3).
pub fn refused_error(
    refused: Refused,
    identity: &str,
    endpoint: Option<&Endpoint>,
    now_ms: u64,
) -> ProxyError {
    let endpoint = endpoint.map_or("other", |e| e.name.as_str()).to_owned();
    match refused {
        Refused::Window(r) => ProxyError::RateLimited {
            who: format!("identity {identity}"),
            endpoint,
            limit: r.limit,
            window: r.window,
            reset_ms: r.reset_ms,
            now_ms,
        },
        Refused::UsageCapped { until_ms } => ProxyError::UsageCapped {
            identity: identity.to_owned(),
            until_ms,
            now_ms,
        },
    }
}

/// The 429 for a client over its own rate.
pub fn client_rate_error(
    client: &str,
    rate: Rate,
    endpoint: Option<&Endpoint>,
    wait: Duration,
    now_ms: u64,
) -> ProxyError {
    ProxyError::RateLimited {
        who: format!("client {client}"),
        endpoint: endpoint.map_or("other", |e| e.name.as_str()).to_owned(),
        limit: rate.limit.get(),
        window: rate.window,
        reset_ms: now_ms.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
        now_ms,
    }
}

// === pre-check ===

/// CONTRACT section 4's pre-check: the endpoint must accept the identity's kind of auth and,
/// for OAuth 2.0 users, `granted` must hold every scope it needs.
pub fn precheck(
    endpoint: &Endpoint,
    identity: &Identity,
    granted: &[String],
) -> Result<(), ProxyError> {
    let auth = endpoint.auth;
    if auth.none() {
        return Ok(());
    }
    let (ok, has) = match identity.kind {
        IdentityKind::App => (auth.app(), "app-only Bearer"),
        IdentityKind::Oauth1User => (auth.oauth1_user(), "OAuth 1.0a user context"),
        IdentityKind::Oauth2User => (auth.oauth2_user(), "OAuth 2.0 user context"),
    };
    if !ok {
        return Err(ProxyError::AuthTypeUnsupported {
            identity: identity.name.to_string(),
            endpoint: endpoint.name.clone(),
            needs: auth.describe(),
            has,
        });
    }
    if identity.kind == IdentityKind::Oauth2User {
        let missing: Vec<String> = endpoint
            .scopes
            .iter()
            .filter(|s| !granted.iter().any(|g| g == **s))
            .map(|s| (*s).to_owned())
            .collect();
        if !missing.is_empty() {
            return Err(ProxyError::ScopeMissing {
                identity: identity.name.to_string(),
                endpoint: endpoint.name.clone(),
                missing,
                has: granted.to_vec(),
            });
        }
    }
    Ok(())
}

/// `"450/15m"`, for problem details.
pub fn figure(limit: u32, window: Duration) -> String {
    match NonZeroU32::new(limit) {
        Some(limit) => Rate { limit, window }.to_string(),
        None => format!("0/{}", crate::config::format_duration(window)),
    }
}

#[cfg(test)]
mod tests;
