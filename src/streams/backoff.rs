//! How long to wait before connecting to X's stream again (CONTRACT section 12 rule 4, X's
//! "handling disconnections"): at once after a connection that was up drops, then linearly by
//! 250 ms up to 16 s after network errors, exponentially from 5 s up to 320 s after HTTP
//! errors, exponentially from one minute after a 429.

use std::time::Duration;

/// Why a connection to X's stream ended or could not be made: the `cause` label of
/// `xgate_stream_reconnects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A TCP or TLS error, a reset, or a body that failed.
    Network,
    /// 20 s without a byte.
    Stall,
    /// X ended the body.
    Ended,
    /// X sent an `operational-disconnect` message.
    OperationalDisconnect,
    /// X answered with an HTTP error other than 429.
    Http,
    /// X answered 429 (another process holds the App's stream, or too many connects).
    TooManyRequests,
}

impl Cause {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::Stall => "stall",
            Self::Ended => "ended",
            Self::OperationalDisconnect => "operational_disconnect",
            Self::Http => "http",
            Self::TooManyRequests => "too_many_requests",
        }
    }
}

const NETWORK_STEP: Duration = Duration::from_millis(250);
const NETWORK_MAX: Duration = Duration::from_secs(16);
const HTTP_FIRST: Duration = Duration::from_secs(5);
const HTTP_MAX: Duration = Duration::from_secs(320);
const LIMITED_FIRST: Duration = Duration::from_secs(60);
/// X gives no ceiling for 429s; 16 minutes is past its 15-minute windows.
const LIMITED_MAX: Duration = Duration::from_secs(960);

/// The waits of one stream connection, reset when a connection is up.
#[derive(Debug, Default)]
pub struct Backoff {
    /// Failures in a row since the last connection that was up.
    failures: u32,
    /// The last connection was up: the next attempt after its end goes at once.
    was_up: bool,
}

impl Backoff {
    /// A connection is up (X answered 200).
    pub fn up(&mut self) {
        self.failures = 0;
        self.was_up = true;
    }

    /// The wait before the next attempt, after `cause`.
    pub fn next(&mut self, cause: Cause) -> Duration {
        let up = std::mem::take(&mut self.was_up);
        let n = self.failures;
        self.failures = self.failures.saturating_add(1);
        let doubled = |first: Duration, max: Duration| {
            first
                .checked_mul(1u32.checked_shl(n).unwrap_or(u32::MAX))
                .map_or(max, |d| d.min(max))
        };
        match cause {
            Cause::Network | Cause::Stall | Cause::Ended | Cause::OperationalDisconnect => {
                if up {
                    // X: reconnect at once after a drop; back off from the next failure.
                    self.failures = 0;
                    return Duration::ZERO;
                }
                NETWORK_STEP
                    .saturating_mul(n.saturating_add(1))
                    .min(NETWORK_MAX)
            }
            Cause::Http => doubled(HTTP_FIRST, HTTP_MAX),
            Cause::TooManyRequests => doubled(LIMITED_FIRST, LIMITED_MAX),
        }
    }
}
