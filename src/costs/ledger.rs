//! Budgets and deduplication in this process: the default, and the fallback of `[shared]`
//! with `on_failure = "local"`.
//!
//! A budget's figure is what it has spent in its period plus what requests in flight have
//! reserved; a reservation is all-or-none over the budgets of a request, under one lock, so
//! concurrent requests can never together reserve more than a limit. Deduplication keeps a
//! 64-bit fingerprint of each resource id metered per App and UTC day, at most
//! `costs.dedup_max_ids` per App: about 16 bytes each in a hash set (16 MiB per million ids).
//! Past the bound, further ids are not remembered, so their repeats are metered as new: the
//! estimate errs towards X's higher bill, never below it.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, PoisonError};

use super::{Day, Rule};
use crate::identity::IdentityId;

/// The fingerprint of resource `id` of category `kind` (FNV-1a, 64 bits): the same in every
/// process and build, so replicas deduplicate through Redis with it.
pub fn fingerprint(kind: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain([0]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A hasher that passes a fingerprint through (it is a hash already).
#[derive(Debug, Default)]
struct Passthrough(u64);

impl Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Prints = HashSet<u64, BuildHasherDefault<Passthrough>>;

/// One App's ids of one UTC day.
#[derive(Debug, Default)]
struct Seen {
    day: Day,
    prints: Prints,
}

/// A budget's figure in its current period.
#[derive(Debug, Clone, Copy, Default)]
struct Figure {
    period: Day,
    used: u64,
}

/// The outcome of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reserved {
    /// Reserved in every budget; their figures now, in order.
    Ok(Vec<u64>),
    /// `budget` (an index of the rules) has no room: it has `used` spent or reserved.
    Refused {
        /// The budget.
        budget: usize,
        /// Its figure.
        used: u64,
    },
}

/// This process's budgets and deduplication.
#[derive(Debug)]
pub(super) struct Ledger {
    figures: Mutex<Vec<Figure>>,
    seen: Mutex<HashMap<IdentityId, Seen>>,
    max_ids: usize,
}

impl Ledger {
    /// `budgets` budgets at 0, remembering up to `max_ids` ids per App and day.
    pub(super) fn new(budgets: usize, max_ids: usize) -> Self {
        Self {
            figures: Mutex::new(vec![Figure::default(); budgets]),
            seen: Mutex::new(HashMap::new()),
            max_ids,
        }
    }

    /// Budget `i` has spent `spent` in the period `period` (read from the store at start).
    pub(super) fn seed(&self, i: usize, period: Day, spent: u64) {
        let mut figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = figures.get_mut(i) {
            *f = Figure {
                period,
                used: spent,
            };
        }
    }

    /// Budget `i`'s figure in `period` is `used`, as the shared figure was last seen (the
    /// fallback, and the seed of a budget Redis lost, start from it).
    pub(super) fn mirror(&self, i: usize, period: Day, used: u64) {
        let mut figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = figures.get_mut(i) {
            *f = Figure { period, used };
        }
    }

    /// Budget `i`'s figure in `period` (0 for a period it has not reached).
    pub(super) fn used(&self, i: usize, period: Day) -> u64 {
        let figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        figures
            .get(i)
            .filter(|f| f.period == period)
            .map_or(0, |f| f.used)
    }

    /// Reserves `worst` in every budget of `budgets` (index, period), or in none.
    pub(super) fn reserve(&self, rules: &[Rule], budgets: &[(usize, Day)], worst: u64) -> Reserved {
        let mut figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        for &(i, period) in budgets {
            let (Some(f), Some(rule)) = (figures.get_mut(i), rules.get(i)) else {
                continue;
            };
            if f.period != period {
                // A new period begins with nothing spent.
                *f = Figure { period, used: 0 };
            }
            if f.used.saturating_add(worst) > rule.limit {
                return Reserved::Refused {
                    budget: i,
                    used: f.used,
                };
            }
        }
        let mut out = Vec::with_capacity(budgets.len());
        for &(i, _) in budgets {
            if let Some(f) = figures.get_mut(i) {
                f.used += worst;
                out.push(f.used);
            }
        }
        Reserved::Ok(out)
    }

    /// Adds `cost` and gives back `release` in every budget of `budgets` whose period is
    /// still the one reserved in (a reservation of a period that ended is gone with it); the
    /// figures after.
    pub(super) fn settle(
        &self,
        _rules: &[Rule],
        budgets: &[(usize, Day)],
        cost: u64,
        release: u64,
    ) -> Vec<u64> {
        if budgets.is_empty() {
            return Vec::new();
        }
        let mut figures = self.figures.lock().unwrap_or_else(PoisonError::into_inner);
        budgets
            .iter()
            .filter_map(|&(i, period)| {
                let f = figures.get_mut(i)?;
                if f.period == period {
                    f.used = (f.used + cost).saturating_sub(release);
                }
                Some(f.used)
            })
            .collect()
    }

    /// How many of `prints` are new for `app` on `day` (each is remembered, within the
    /// bound; a new day forgets the last).
    pub(super) fn dedup(&self, app: IdentityId, day: Day, prints: &[u64]) -> u64 {
        if prints.is_empty() {
            return 0;
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let set = seen.entry(app).or_default();
        if set.day != day {
            *set = Seen {
                day,
                prints: Prints::default(),
            };
        }
        let mut new = 0;
        for &p in prints {
            if set.prints.contains(&p) {
                continue;
            }
            new += 1;
            if set.prints.len() < self.max_ids {
                set.prints.insert(p);
            }
        }
        new
    }
}
