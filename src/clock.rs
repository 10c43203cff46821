//! Time and randomness, injected.
//!
//! The only module allowed to read the wall clock or the OS random source (`clippy.toml` bans
//! `SystemTime::now` and `Instant::now` elsewhere). Everything that depends on time (OAuth 1.0a
//! timestamps, token expiry, rate-limit windows) or on randomness (nonces, client keys) takes a
//! [`Clock`] or a [`NonceSource`], so tests can fix both.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of Unix time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Time since the Unix epoch.
    fn unix_time(&self) -> Duration;

    /// Whole seconds since the Unix epoch.
    fn unix_seconds(&self) -> u64 {
        self.unix_time().as_secs()
    }
}

impl<T: Clock + ?Sized> Clock for Arc<T> {
    fn unix_time(&self) -> Duration {
        (**self).unix_time()
    }
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[expect(
        clippy::disallowed_methods,
        reason = "this is the one place that reads the wall clock"
    )]
    fn unix_time(&self) -> Duration {
        // A clock before 1970 is a broken host; report the epoch rather than panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// A clock that stands still until told to move, for tests and benchmarks.
#[derive(Debug, Default)]
pub struct ManualClock {
    millis: AtomicU64,
}

impl ManualClock {
    /// A clock reading `unix_seconds`.
    pub fn at(unix_seconds: u64) -> Arc<Self> {
        Arc::new(Self {
            millis: AtomicU64::new(unix_seconds.saturating_mul(1000)),
        })
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_time(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

/// A source of OAuth 1.0a nonces.
pub trait NonceSource: Send + Sync + fmt::Debug {
    /// A fresh nonce: ASCII letters and digits only.
    fn nonce(&self) -> Result<String, RandomError>;
}

impl<T: NonceSource + ?Sized> NonceSource for Arc<T> {
    fn nonce(&self) -> Result<String, RandomError> {
        (**self).nonce()
    }
}

/// The OS random source failed (getrandom); nothing sensible can be made without it.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomError(getrandom::Error);

/// Fills `buf` from the OS CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::getrandom(buf).map_err(RandomError)
}

/// Nonces of 32 ASCII alphanumerics drawn from the OS CSPRNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsNonce;

/// Length of the nonces [`OsNonce`] makes.
pub const NONCE_LEN: usize = 32;

const ALPHANUMERIC: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl NonceSource for OsNonce {
    fn nonce(&self) -> Result<String, RandomError> {
        let mut out = String::with_capacity(NONCE_LEN);
        let mut buf = [0u8; 48];
        while out.len() < NONCE_LEN {
            fill_random(&mut buf)?;
            // Rejection sampling: 248 = 4 * 62, so `b % 62` is uniform for b < 248.
            for &b in buf.iter().filter(|&&b| b < 248) {
                if out.len() == NONCE_LEN {
                    break;
                }
                if let Some(&c) = ALPHANUMERIC.get(usize::from(b % 62)) {
                    out.push(char::from(c));
                }
            }
        }
        Ok(out)
    }
}

/// Always the same nonce, for known-answer tests and `xgate sign --nonce`.
#[derive(Debug, Clone)]
pub struct FixedNonce(pub String);

impl NonceSource for FixedNonce {
    fn nonce(&self) -> Result<String, RandomError> {
        Ok(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_nonce_is_32_alphanumerics_and_fresh() {
        let a = OsNonce.nonce().unwrap();
        let b = OsNonce.nonce().unwrap();
        assert_eq!(a.len(), NONCE_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.unix_seconds(), 1_000);
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.unix_seconds(), 1_001);
        assert_eq!(c.unix_time(), Duration::from_millis(1_001_500));
    }
}
