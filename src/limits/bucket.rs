//! One fixed-window bucket, as X counts: a limit of L admits L requests until the window
//! ends, and a new window starts at the first request after that (CONTRACT section 5).
//!
//! Owns the arithmetic of one bucket: reserving a request, giving a reservation back when the
//! request never went upstream, counting requests in flight, and learning from X's reported
//! remaining and reset (rule 2). The window's counters sit behind a short mutex (a few
//! integer operations per request); the count of requests in flight is an atomic, so
//! completing a request takes no lock. Times are Unix milliseconds passed in by the caller,
//! which reads its clock once per request.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::Report;
use crate::config::Rate;

/// A bucket's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    /// Requests per window (the figure, or what X reports).
    limit: u32,
    /// Length of a window that starts locally.
    window_ms: u64,
    /// When the current window ends (Unix ms); 0 until the first request.
    end_ms: u64,
    /// Requests the current window still admits.
    remaining: u32,
    /// Counts windows started locally, so a reservation from an earlier window is never
    /// given back to a later one.
    epoch: u32,
}

/// A fixed window.
#[derive(Debug)]
pub(super) struct Bucket {
    state: Mutex<State>,
    /// Reserved requests whose answer has not come back.
    inflight: AtomicU32,
}

/// A reservation in one bucket: the window it was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ticket(u32);

/// A bucket with no room: its figure and when it next admits a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The refusing bucket's limit.
    pub limit: u32,
    /// Its window length.
    pub window: Duration,
    /// When it next admits a request (Unix ms).
    pub reset_ms: u64,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Bucket {
    /// A bucket for `rate`, with no window started.
    pub(super) fn new(rate: Rate) -> Self {
        Self::with(rate.limit.get(), ms(rate.window))
    }

    /// A bucket of `limit` per `window`, with no window started.
    pub(super) fn with(limit: u32, window_ms: u64) -> Self {
        Self {
            state: Mutex::new(State {
                limit,
                window_ms: window_ms.max(1),
                end_ms: 0,
                remaining: limit,
                epoch: 0,
            }),
            inflight: AtomicU32::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The critical sections cannot panic; were one to, its integers are still sound.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one request from the bucket, starting a new window if the last one has ended.
    pub(super) fn reserve(&self, now_ms: u64) -> Result<Ticket, Refusal> {
        let mut s = self.lock();
        s.roll(now_ms);
        if s.remaining == 0 {
            return Err(s.refusal());
        }
        s.remaining -= 1;
        // Inside the lock, so `learn` never sees a reservation without its count.
        self.inflight.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket(s.epoch))
    }

    /// Whether the bucket would refuse a request now, and how.
    pub(super) fn peek(&self, now_ms: u64) -> Option<Refusal> {
        let mut s = *self.lock();
        s.roll(now_ms);
        (s.remaining == 0).then(|| s.refusal())
    }

    /// Gives a reservation back: its request never went upstream, so it used up nothing.
    pub(super) fn release(&self, ticket: Ticket) {
        let mut s = self.lock();
        self.complete();
        if ticket.0 == s.epoch && s.remaining < s.limit {
            s.remaining += 1;
        }
    }

    /// The reserved request's answer came back (or it went upstream and failed there).
    pub(super) fn complete(&self) {
        // Never below zero: each call matches one reservation's increment.
        let _previous = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Applies X's report for this bucket (rule 2): the window ends at X's reset, and at most
    /// X's remaining requests go out before it, counting those in flight (other than the
    /// caller's own, when `holds_ticket`). A report for the current window's end never raises
    /// what remains; a stale report (reset already passed) changes nothing. X's limit, when
    /// sent, becomes the bucket's limit for the windows that follow.
    pub(super) fn learn(&self, now_ms: u64, report: Report, holds_ticket: bool) {
        if report.reset_ms <= now_ms {
            return;
        }
        let mut s = self.lock();
        if let Some(limit) = report.limit.filter(|&l| l > 0) {
            s.limit = limit;
        }
        let others = self
            .inflight
            .load(Ordering::Relaxed)
            .saturating_sub(u32::from(holds_ticket));
        let allowed = report.remaining.saturating_sub(others).min(s.limit);
        if report.reset_ms == s.end_ms {
            s.remaining = s.remaining.min(allowed);
        } else {
            s.end_ms = report.reset_ms;
            s.remaining = allowed;
        }
    }

    /// `(limit, remaining, end_ms, inflight)`, for tests.
    #[cfg(test)]
    pub(super) fn snapshot(&self) -> (u32, u32, u64, u32) {
        let s = self.lock();
        (
            s.limit,
            s.remaining,
            s.end_ms,
            self.inflight.load(Ordering::Relaxed),
        )
    }
}

impl State {
    /// Starts a new window when the current one has ended.
    fn roll(&mut self, now_ms: u64) {
        if now_ms >= self.end_ms {
            self.end_ms = now_ms.saturating_add(self.window_ms);
            self.remaining = self.limit;
            self.epoch = self.epoch.wrapping_add(1);
        }
    }

    fn refusal(&self) -> Refusal {
        Refusal {
            limit: self.limit,
            window: Duration::from_millis(self.window_ms),
            reset_ms: self.end_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn bucket(limit: u32, window_ms: u64) -> Bucket {
        Bucket::with(limit, window_ms)
    }

    #[test]
    fn a_fixed_window_admits_its_limit_then_refuses_until_it_ends() {
        let b = bucket(3, 1_000);
        for _ in 0..3 {
            b.reserve(T0).unwrap();
        }
        let r = b.reserve(T0 + 999).unwrap_err();
        assert_eq!(r.reset_ms, T0 + 1_000);
        assert_eq!(r.limit, 3);
        // The window ends: the next request starts a new one, which is full again.
        b.reserve(T0 + 1_000).unwrap();
        assert_eq!(b.snapshot().1, 2);
        assert_eq!(b.snapshot().2, T0 + 2_000);
    }

    #[test]
    fn a_new_window_starts_at_the_first_request_after_the_last_one_ended() {
        let b = bucket(1, 1_000);
        b.reserve(T0).unwrap();
        // Long quiet time: the next window starts now, not at a multiple of the window.
        b.reserve(T0 + 5_500).unwrap();
        assert_eq!(b.reserve(T0 + 6_000).unwrap_err().reset_ms, T0 + 6_500);
    }

    #[test]
    fn release_gives_back_only_within_the_same_window() {
        let b = bucket(1, 1_000);
        let t = b.reserve(T0).unwrap();
        b.release(t);
        let t = b.reserve(T0 + 10).unwrap();
        // The window rolls while the reservation is out: giving it back must not add to the
        // new window.
        let t2 = b.reserve(T0 + 1_000).unwrap();
        b.release(t);
        assert_eq!(b.snapshot().1, 0);
        b.release(t2);
        assert_eq!(b.snapshot().1, 1);
        assert_eq!(b.snapshot().3, 0);
    }

    #[test]
    fn learning_sets_the_window_end_and_counts_requests_in_flight() {
        let b = bucket(450, 900_000);
        let _mine = b.reserve(T0).unwrap();
        let _other1 = b.reserve(T0).unwrap();
        let _other2 = b.reserve(T0).unwrap();
        let reset = T0 + 300_000;
        b.learn(
            T0 + 5,
            Report {
                limit: Some(450),
                remaining: 5,
                reset_ms: reset,
            },
            true,
        );
        // X said 5 left after my request; two others are in flight, so 3 may still go.
        assert_eq!(b.snapshot(), (450, 3, reset, 3));
        // A later answer with the same reset never raises what remains.
        b.learn(
            T0 + 6,
            Report {
                limit: Some(450),
                remaining: 400,
                reset_ms: reset,
            },
            true,
        );
        assert_eq!(b.snapshot().1, 3);
        // A lower one lowers it.
        b.learn(
            T0 + 7,
            Report {
                limit: None,
                remaining: 1,
                reset_ms: reset,
            },
            true,
        );
        assert_eq!(b.snapshot().1, 0);
        assert_eq!(b.reserve(T0 + 8).unwrap_err().reset_ms, reset);
        // At X's reset a new window starts.
        b.reserve(reset).unwrap();
    }

    #[test]
    fn x_reporting_zero_refuses_until_the_reset() {
        let b = bucket(900, 900_000);
        let reset = T0 + 42_000;
        b.learn(
            T0,
            Report {
                limit: Some(900),
                remaining: 0,
                reset_ms: reset,
            },
            false,
        );
        assert_eq!(b.reserve(T0 + 41_999).unwrap_err().reset_ms, reset);
        b.reserve(reset).unwrap();
    }

    #[test]
    fn stale_reports_are_ignored() {
        let b = bucket(10, 1_000);
        b.reserve(T0).unwrap();
        b.learn(
            T0 + 500,
            Report {
                limit: Some(99),
                remaining: 0,
                reset_ms: T0 + 500,
            },
            false,
        );
        assert_eq!(b.snapshot(), (10, 9, T0 + 1_000, 1));
    }

    #[test]
    fn peek_reports_without_reserving() {
        let b = bucket(1, 1_000);
        assert_eq!(b.peek(T0), None);
        b.reserve(T0).unwrap();
        assert_eq!(b.peek(T0).unwrap().reset_ms, T0 + 1_000);
        assert_eq!(b.snapshot().1, 0);
    }
}
