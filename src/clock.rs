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

/// Unix time that moves with tokio's clock from a fixed start: under paused time
/// (`tokio::time::pause`, `advance`) it moves exactly as far as the runtime's timers do, so a
/// test of a wait or a window advances one clock, not two.
#[derive(Debug)]
pub struct TokioClock {
    start_unix: Duration,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `unix_seconds` now (by tokio's clock).
    pub fn at(unix_seconds: u64) -> Arc<Self> {
        Arc::new(Self {
            start_unix: Duration::from_secs(unix_seconds),
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn unix_time(&self) -> Duration {
        self.start_unix + self.start.elapsed()
    }
}

/// An injected [`Clock`] as `governor`'s clock, so the client shares' GCRA reads the same
/// time as the fixed windows (and tests move both at once). Unix time is not monotonic; a
/// step back reads as no time passing (`governor` saturates).
#[derive(Debug, Clone)]
pub struct GovernorClock(pub Arc<dyn Clock>);

impl governor::clock::Clock for GovernorClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.0.unix_time()
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

/// No random bytes could be had; nothing sensible can be made without them.
#[derive(Debug, thiserror::Error)]
pub enum RandomError {
    /// The OS random source failed (getrandom).
    #[error("the operating system's random source failed: {0}")]
    Os(getrandom::Error),
    /// The per-thread generator was unavailable (re-entered); never expected.
    #[error("the random generator is unavailable")]
    Exhausted,
}

/// Fills `buf` from the OS CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::getrandom(buf).map_err(RandomError::Os)
}

/// Nonces of 32 ASCII alphanumerics from a cryptographically secure generator: a per-thread
/// ChaCha20 keystream whose key comes from the OS CSPRNG and is replaced every
/// [`REKEY_BYTES`]. One `getrandom(2)` per request cost as much as the rest of the OAuth 1.0a
/// header (BENCHMARKS.md); this costs one system call per ~1,300 nonces. Keystream bytes are
/// zeroed once used, so a memory dump shows no past nonce.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomNonce;

/// Length of the nonces [`RandomNonce`] makes.
pub const NONCE_LEN: usize = 32;

/// Keystream bytes drawn under one OS-provided key before a new key is fetched.
pub const REKEY_BYTES: usize = 64 * 1024;

const ALPHANUMERIC: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A ChaCha20 keystream, consumed from a small buffer.
struct KeyStream {
    cipher: chacha20::ChaCha20,
    buf: [u8; 256],
    pos: usize,
    drawn: usize,
}

impl KeyStream {
    fn keyed_from_os() -> Result<Self, RandomError> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        fill_random(key.as_mut())?;
        Ok(Self::keyed(&key))
    }

    /// The keystream of `key`, whose IV is all zeros: every stream of the proxy gets a fresh
    /// random key ([`KeyStream::keyed_from_os`]), so no (key, IV) pair is used twice.
    fn keyed(key: &[u8; 32]) -> Self {
        use chacha20::cipher::KeyIvInit as _;
        let cipher = chacha20::ChaCha20::new(&(*key).into(), &[0u8; 12].into());
        Self {
            cipher,
            buf: [0; 256],
            pos: 256,
            drawn: 0,
        }
    }

    /// The unused keystream bytes, at least one: a fresh block is made when none is left,
    /// re-keying from the OS every [`REKEY_BYTES`]. The caller zeroes what it uses and moves
    /// `pos` past it.
    fn available(&mut self) -> Result<&mut [u8], RandomError> {
        use chacha20::cipher::StreamCipher as _;
        if self.pos >= self.buf.len() {
            if self.drawn >= REKEY_BYTES {
                *self = Self::keyed_from_os()?;
            }
            self.cipher.apply_keystream(&mut self.buf);
            self.pos = 0;
            self.drawn += self.buf.len();
        }
        self.buf.get_mut(self.pos..).ok_or(RandomError::Exhausted)
    }

    /// A nonce of [`NONCE_LEN`] alphanumerics from the next keystream bytes.
    fn nonce(&mut self) -> Result<String, RandomError> {
        let mut out = [0u8; NONCE_LEN];
        let mut filled = 0;
        while filled < NONCE_LEN {
            let bytes = self.available()?;
            let mut used = 0;
            for byte in bytes.iter_mut() {
                if filled == NONCE_LEN {
                    break;
                }
                used += 1;
                // Rejection sampling: 248 = 4 * 62, so `b % 62` is uniform for b < 248.
                let b = std::mem::take(byte);
                if b < 248 {
                    let c = ALPHANUMERIC.get(usize::from(b % 62));
                    if let (Some(slot), Some(&c)) = (out.get_mut(filled), c) {
                        *slot = c;
                        filled += 1;
                    }
                }
            }
            self.pos += used;
        }
        let nonce = String::from_utf8(out.to_vec());
        zeroize::Zeroize::zeroize(&mut out);
        nonce.map_err(|_not_ascii| RandomError::Exhausted)
    }
}

impl Drop for KeyStream {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buf);
    }
}

thread_local! {
    static KEYSTREAM: std::cell::RefCell<Option<KeyStream>> = const { std::cell::RefCell::new(None) };
}

impl NonceSource for RandomNonce {
    fn nonce(&self) -> Result<String, RandomError> {
        KEYSTREAM.with(|cell| {
            let mut slot = cell
                .try_borrow_mut()
                .map_err(|_reentered| RandomError::Exhausted)?;
            let stream = match &mut *slot {
                Some(stream) => stream,
                empty => empty.insert(KeyStream::keyed_from_os()?),
            };
            stream.nonce()
        })
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

// === the UTC calendar ===

/// Days since 1970-01-01 → `(year, month, day)` (proleptic Gregorian; Howard Hinnant's
/// days-to-civil).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// `(year, month, day)` → days since 1970-01-01 (Howard Hinnant's days-from-civil).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` of the UTC day `days` after 1970-01-01.
pub fn date_of_days(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 of `YYYY-MM-DD`, if it is a date.
pub fn days_of_date(date: &str) -> Option<i64> {
    let mut parts = date.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d)).then_some(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_nonces_are_32_alphanumerics_and_fresh_across_rekeys() {
        // Enough nonces to re-key the thread's stream several times (48 bytes or so each).
        let n = 4 * REKEY_BYTES / 40;
        let mut seen = std::collections::HashSet::with_capacity(n);
        let mut counts = [0u32; 62];
        for _ in 0..n {
            let a = RandomNonce.nonce().unwrap();
            assert_eq!(a.len(), NONCE_LEN);
            for c in a.bytes() {
                let i = ALPHANUMERIC
                    .iter()
                    .position(|&x| x == c)
                    .expect("alphanumeric");
                counts[i] += 1;
            }
            assert!(seen.insert(a), "a nonce repeated");
        }
        // Uniform over 62 symbols: each expected n*32/62 times; allow a wide margin.
        let expected = f64::from(u32::try_from(n * NONCE_LEN).unwrap()) / 62.0;
        for (i, &c) in counts.iter().enumerate() {
            let ratio = f64::from(c) / expected;
            assert!((0.9..1.1).contains(&ratio), "symbol {i}: {ratio}");
        }
    }

    /// Known answer: the nonces of a fixed key are the first accepted keystream bytes
    /// (below 248) mapped to the alphabet, one nonce after the other, across a block's end;
    /// the bytes used are zeroed.
    #[test]
    fn nonces_follow_the_keystream_by_rejection_sampling() {
        use chacha20::cipher::{KeyIvInit as _, StreamCipher as _};
        let key = [7u8; 32];
        let mut reference = [0u8; 1024];
        chacha20::ChaCha20::new(&key.into(), &[0u8; 12].into()).apply_keystream(&mut reference);
        let accepted: Vec<u8> = reference
            .iter()
            .filter(|&&b| b < 248)
            .map(|&b| ALPHANUMERIC[usize::from(b % 62)])
            .collect();
        assert!(
            reference.iter().take(256).any(|&b| b >= 248),
            "the key rejects nothing"
        );
        let mut stream = KeyStream::keyed(&key);
        for i in 0..20 {
            let nonce = stream.nonce().unwrap();
            assert_eq!(
                nonce.as_bytes(),
                &accepted[i * NONCE_LEN..(i + 1) * NONCE_LEN],
                "nonce {i}"
            );
            assert!(
                stream.buf[..stream.pos].iter().all(|&b| b == 0),
                "used bytes kept"
            );
        }
    }

    #[test]
    fn threads_draw_different_nonces() {
        let a = std::thread::spawn(|| RandomNonce.nonce().unwrap())
            .join()
            .unwrap();
        let b = std::thread::spawn(|| RandomNonce.nonce().unwrap())
            .join()
            .unwrap();
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
