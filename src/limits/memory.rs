//! The in-memory [`Backend`]: every bucket in this process (the embedded default).
//!
//! Buckets are fixed windows (`bucket.rs`) keyed by (identity, endpoint): app-only
//! requests draw from the App's figure, user-context requests from the user's figure plus the
//! App's 24-hour window (which counts all its users together). The keys are dense small
//! integers known at startup, so the buckets live in one flat table of lazily initialised
//! slots (identities × catalogue endpoints) rather than a hash map: a lookup is an index, and
//! memory is bounded by construction — a raw path can never create a key. Reservations are
//! taken in a fixed order (the identity's windows, its learned ones, then for user context the
//! App's 24-hour ones) and given back in full when one bucket refuses.

use std::future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::bucket::{Bucket, Ticket};
use super::{
    Backend, DAY_WINDOW, Draw, Held, LearnFuture, PRIMARY_WINDOW, Refused, Report, Reports,
    ReserveFuture, day_of, primary_of,
};
use crate::endpoints::{Catalogue, EndpointId, Figure};
use crate::identity::{Identities, IdentityId};

/// Most buckets one request draws from: a figure has at most
/// [`crate::config::MAX_RATES_PER_FIGURE`] windows, plus two learned ones, plus the App's
/// 24-hour window and its learned twin.
const MAX_HELD: usize = crate::config::MAX_RATES_PER_FIGURE + 4;

/// The buckets of one (identity, endpoint).
#[derive(Debug)]
pub(super) struct EndpointBuckets {
    /// One per window of the figure, in figure order.
    pub(super) windows: Box<[Bucket]>,
    /// The window X's `x-rate-limit-*` describe: the 15-minute one, else the first that is
    /// neither 24 hours nor a second or less.
    primary: Option<usize>,
    /// The 24-hour window.
    day: Option<usize>,
    /// Made from X's headers when the figure lacks that window.
    pub(super) learned_primary: OnceLock<Bucket>,
    pub(super) learned_day: OnceLock<Bucket>,
    /// The figure comes from an override, which wins over what X reports.
    overridden: bool,
}

impl EndpointBuckets {
    fn new(figure: &Figure) -> Self {
        Self {
            windows: figure.rates.iter().map(|&r| Bucket::new(r)).collect(),
            primary: primary_of(figure),
            day: day_of(figure),
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

/// Bucket state in this process's memory.
#[derive(Debug)]
pub struct MemoryBackend {
    catalogue: Arc<Catalogue>,
    /// Indexed by identity.
    subjects: Box<[Subject]>,
    /// `[identity * endpoints + endpoint]`.
    slots: Box<[OnceLock<EndpointBuckets>]>,
    /// Per identity (used for Apps): usage-capped until this Unix ms.
    capped_until_ms: Box<[AtomicU64]>,
}

impl MemoryBackend {
    /// Empty buckets for every identity of `identities` on every endpoint of `catalogue`,
    /// each made at its first request.
    pub fn new(catalogue: Arc<Catalogue>, identities: &Identities) -> Self {
        let subjects: Box<[Subject]> = identities
            .iter()
            .map(|(_, id)| Subject {
                user: id.kind.is_user(),
                app: id.app,
            })
            .collect();
        let n = subjects.len() * catalogue.endpoints().len();
        Self {
            slots: (0..n).map(|_| OnceLock::new()).collect(),
            capped_until_ms: subjects.iter().map(|_| AtomicU64::new(0)).collect(),
            subjects,
            catalogue,
        }
    }

    pub(super) fn buckets(
        &self,
        identity: IdentityId,
        endpoint: EndpointId,
    ) -> Option<&EndpointBuckets> {
        let n = self.catalogue.endpoints().len();
        let slot = self
            .slots
            .get(identity.index().checked_mul(n)?.checked_add(endpoint)?)?;
        let subject = self.subjects.get(identity.index())?;
        let e = self.catalogue.get(endpoint)?;
        Some(slot.get_or_init(|| EndpointBuckets::new(if subject.user { &e.user } else { &e.app })))
    }

    /// The subject of `identity`.
    #[expect(
        clippy::indexing_slicing,
        reason = "the subjects are made from the identities table, one per IdentityId it hands out"
    )]
    fn subject(&self, identity: IdentityId) -> Subject {
        self.subjects[identity.index()]
    }

    /// The synchronous decision behind [`Backend::reserve`].
    pub(super) fn reserve_now(&self, draw: Draw<'_>, now: u64) -> Result<MemoryHeld<'_>, Refused> {
        let subject = self.subject(draw.identity);
        let until = self
            .capped_until_ms
            .get(subject.app.index())
            .map_or(0, |c| c.load(Ordering::Relaxed));
        if now < until {
            return Err(Refused::UsageCapped { until_ms: until });
        }
        let mut held = MemoryHeld {
            own: None,
            app: None,
            held: [None; MAX_HELD],
            sent: false,
        };
        if let Some(endpoint) = draw.endpoint {
            let own = self.buckets(draw.identity, endpoint);
            let app = if subject.user {
                self.buckets(subject.app, endpoint)
            } else {
                None
            };
            held.own = own;
            held.app = app;
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
                        if let Some(slot) = held.held.get_mut(n) {
                            *slot = Some((bucket, ticket));
                            n += 1;
                        } else {
                            // More buckets than MAX_HELD cannot be configured; never let one
                            // go uncounted if it happens.
                            bucket.release(ticket);
                        }
                    }
                    Err(refusal) => {
                        // `held` gives back what it took when it is dropped here.
                        let worst = all
                            .filter_map(|b| b.peek(now))
                            .fold(refusal, |w, r| if r.reset_ms > w.reset_ms { r } else { w });
                        return Err(Refused::Window(worst));
                    }
                }
            }
        }
        if let Some((_, share)) = draw.client {
            // Taken last: a request the buckets refuse uses up none of the client's share.
            share
                .check()
                .map_err(|wait| Refused::ClientShare { wait })?;
        }
        Ok(held)
    }
}

impl Backend for MemoryBackend {
    fn reserve<'a>(&'a self, draw: Draw<'a>, now_ms: u64) -> ReserveFuture<'a> {
        let decided = self
            .reserve_now(draw, now_ms)
            .map(|held| Box::new(held) as Box<dyn Held + 'a>);
        Box::pin(future::ready(decided))
    }

    fn usage_capped(&self, app: IdentityId, now_ms: u64, cooldown: Duration) {
        let until_ms =
            now_ms.saturating_add(u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX));
        if let Some(c) = self.capped_until_ms.get(app.index()) {
            c.fetch_max(until_ms, Ordering::Relaxed);
        }
    }
}

/// A request's reservations in memory.
#[derive(Debug)]
pub(super) struct MemoryHeld<'a> {
    own: Option<&'a EndpointBuckets>,
    app: Option<&'a EndpointBuckets>,
    held: [Option<(&'a Bucket, Ticket)>; MAX_HELD],
    sent: bool,
}

impl MemoryHeld<'_> {
    fn holds(&self, bucket: &Bucket) -> bool {
        self.held
            .iter()
            .flatten()
            .any(|(b, _)| std::ptr::eq(*b, bucket))
    }
}

impl Held for MemoryHeld<'_> {
    fn set_sent(&mut self, sent: bool) {
        self.sent = sent;
    }

    /// `x-rate-limit-*` go to the identity's primary window, `x-user-limit-24hour-*` to a
    /// user's 24-hour window and `x-app-limit-24hour-*` to the App's; a header for a window the
    /// figure lacks creates that bucket.
    fn learn<'s>(&'s mut self, reports: &Reports, now_ms: u64) -> LearnFuture<'s> {
        self.learn_now(reports, now_ms);
        Box::pin(future::ready(()))
    }
}

impl MemoryHeld<'_> {
    /// The synchronous work behind [`Held::learn`].
    pub(super) fn learn_now(&self, reports: &Reports, now_ms: u64) {
        let apply = |buckets: Option<&EndpointBuckets>, day: bool, r: Report| {
            if let Some(b) = buckets.and_then(|b| b.learned(day, &r)) {
                b.learn(now_ms, r, self.holds(b));
            }
        };
        if let Some(r) = reports.primary {
            apply(self.own, false, r);
        }
        if let (Some(r), Some(_)) = (reports.user_day, self.app) {
            apply(self.own, true, r);
        }
        if let Some(r) = reports.app_day {
            // For app-only requests the App's buckets are the identity's own.
            apply(self.app.or(self.own), true, r);
        }
    }
}

impl Drop for MemoryHeld<'_> {
    fn drop(&mut self) {
        let sent = self.sent;
        for (bucket, ticket) in self.held.iter_mut().filter_map(Option::take) {
            if sent {
                bucket.complete();
            } else {
                bucket.release(ticket);
            }
        }
    }
}
