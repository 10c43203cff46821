//! The value syntaxes of `proxy.toml`: durations (`"500ms"`, `"15m"`) and rates (`"450/15m"`).
//!
//! Owns parsing and printing them; both print back in the form they are written in.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

/// Parses `"500ms"`, `"30s"`, `"15m"`, `"24h"` (a whole number and one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let bad = || {
        format!(
            r#"invalid duration "{s}": expected a whole number and a unit, such as "500ms", "30s", "15m" or "24h""#
        )
    };
    let n: u64 = digits.parse().map_err(|_not_a_number| bad())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!(r#"duration "{s}" is too large"#))
}

/// Prints a duration in the largest unit that divides it: `15m`, `24h`, `500ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    for (unit, size) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// A request rate: `limit` requests per `window` (`"450/15m"`, `"1/1s"`, `"10000/24h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests admitted per window.
    pub limit: NonZeroU32,
    /// The window's length.
    pub window: Duration,
}

impl Rate {
    /// Parses `"<limit>/<duration>"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(r#"invalid rate "{s}": {why} (expected e.g. "450/15m", "1/1s" or "10000/24h")"#)
        };
        let (limit, window) = s.split_once('/').ok_or_else(|| bad("no '/'"))?;
        let limit: u32 = limit
            .trim()
            .parse()
            .map_err(|_not_a_number| bad("the limit is not a whole number"))?;
        let limit = NonZeroU32::new(limit).ok_or_else(|| bad("the limit must be at least 1"))?;
        let window = parse_duration(window).map_err(|e| bad(&e))?;
        if window.is_zero() {
            return Err(bad("the window must be longer than 0"));
        }
        Ok(Self { limit, window })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.limit, format_duration(self.window))
    }
}

/// `"450/15m"` for `limit` per `window`, also for a limit of 0 (a window X reported
/// exhausted), for problem details.
pub fn figure(limit: u32, window: Duration) -> String {
    match NonZeroU32::new(limit) {
        Some(limit) => Rate { limit, window }.to_string(),
        None => format!("0/{}", format_duration(window)),
    }
}

/// `"25.00"` USD → 25,000,000 micro-USD: digits, then at most six decimals after a point.
pub fn parse_usd(s: &str) -> Result<u64, String> {
    let bad = || format!(r#"invalid amount "{s}": expected USD such as "25" or "0.005""#);
    let (whole, frac, point) = match s.trim().split_once('.') {
        Some((w, f)) => (w, f, true),
        None => (s.trim(), "", false),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || !digits(whole)
        || !digits(frac)
        || frac.len() > 6
        || (point && frac.is_empty())
    {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_overflow| bad())?;
    let frac: u64 = format!("{frac:0<6}").parse().map_err(|_overflow| bad())?;
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(bad)
}

/// 25,000,000 micro-USD → `"25.000000"`.
pub fn format_usd(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usd_amounts_are_exact_micro_dollars() {
        assert_eq!(parse_usd("25.00"), Ok(25_000_000));
        assert_eq!(parse_usd("25"), Ok(25_000_000));
        assert_eq!(parse_usd("0.005"), Ok(5_000));
        assert_eq!(parse_usd("0.000001"), Ok(1));
        for bad in [
            "",
            ".5",
            "1.",
            "-1",
            "1e3",
            "0.0000001",
            "1,5",
            "99999999999999999999",
        ] {
            assert!(parse_usd(bad).is_err(), "{bad}");
        }
        assert_eq!(format_usd(25_000_000), "25.000000");
        assert_eq!(format_usd(5_000), "0.005000");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in [
            "",
            "15",
            "m",
            "1.5s",
            "-1s",
            "15 min",
            "1d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for s in ["500ms", "30s", "15m", "24h", "0s", "90s", "1500ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn rates() {
        let r = Rate::parse("450/15m").unwrap();
        assert_eq!(r.limit.get(), 450);
        assert_eq!(r.window, Duration::from_secs(900));
        assert_eq!(r.to_string(), "450/15m");
        assert_eq!(Rate::parse("10000/24h").unwrap().to_string(), "10000/24h");
        for bad in ["450", "0/15m", "x/15m", "450/", "450/0s", "450/15", "-1/1s"] {
            let e = Rate::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }
}
