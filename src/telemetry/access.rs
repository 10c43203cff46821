//! The access log: one line per request, formatted by hand.
//!
//! The access record is the one log line every request writes, so it skips tracing's generic
//! formatter (field visitors, `Debug` escaping, float formatting: about 8 % of the proxy's CPU
//! in a profile, BENCHMARKS.md) and is written straight into the log batch, in the same shape
//! tracing's text and JSON formats give other lines: a timestamp, `INFO`, the message
//! `request`, then the fields. Whether it is written at all still follows the log filter
//! (`xgate::access` at `info`). Without an installed sink (tests, or a program that set its own
//! subscriber) the record goes through tracing as an ordinary event.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::{BatchWriter, LogFormat};
use crate::clock::{Clock, SystemClock};
use crate::endpoints::EndpointId;

/// Where access lines go once logging is set up.
#[derive(Debug)]
struct Sink {
    writer: BatchWriter,
    format: LogFormat,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends access lines straight to `writer` in `format` (once, at startup).
pub(super) fn install(writer: BatchWriter, format: LogFormat) {
    let _already_set = SINK.set(Sink { writer, format });
}

/// What the phases of a request learn about it, for its access record and its metrics: each
/// phase notes what it finds out (the client, the identity, the endpoint, upstream's answer).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    /// The calling client's name, once known.
    pub client: Option<Arc<str>>,
    /// The identity's name, once known.
    pub identity: Option<Arc<str>>,
    /// The endpoint, once matched: `Some(None)` is `other`; `None`, answered before matching.
    pub endpoint: Option<Option<EndpointId>>,
    /// Upstream's status and the time to its head, when it answered.
    pub upstream: Option<(u16, Duration)>,
    /// A stream consumer's count of messages delivered (keep-alives not counted).
    pub messages: Option<Arc<std::sync::atomic::AtomicU64>>,
}

/// The fields of one access record.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    /// `x-request-id`.
    pub request_id: &'a str,
    /// Client name, `-` if unknown.
    pub client: &'a str,
    /// Identity name, `-` if unknown.
    pub identity: &'a str,
    /// Endpoint template, `other` or `-`.
    pub endpoint: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Request path, without its query.
    pub path: &'a str,
    /// Status sent (499: the client left first).
    pub status: u16,
    /// Upstream's status, when it answered.
    pub upstream_status: Option<u16>,
    /// Arrival to response head.
    pub duration: Duration,
    /// Sending upstream to upstream's head.
    pub upstream: Option<Duration>,
    /// Response body bytes relayed.
    pub bytes: u64,
    /// Arrival to the end of the response body.
    pub total: Duration,
    /// What X's answer costs, as metered (micro-USD; an estimate of X's bill).
    pub cost_micros: u64,
    /// Messages delivered, for a stream consumer.
    pub messages: Option<u64>,
}

/// Writes one access record, if `xgate::access` is enabled at `info`.
pub fn log(a: &Access<'_>) {
    if !tracing::enabled!(target: "xgate::access", tracing::Level::INFO) {
        return;
    }
    let Some(sink) = SINK.get() else {
        tracing::info!(
            target: "xgate::access",
            request_id = %a.request_id,
            client = a.client,
            identity = a.identity,
            endpoint = a.endpoint,
            method = %a.method,
            path = %a.path,
            status = a.status,
            upstream_status = a.upstream_status,
            duration_ms = %Millis(a.duration),
            upstream_ms = a.upstream.map(|d| tracing::field::display(Millis(d))),
            bytes = a.bytes,
            total_ms = %Millis(a.total),
            cost_usd = %Usd(a.cost_micros),
            messages = a.messages,
            "request"
        );
        return;
    };
    thread_local! {
        static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    }
    LINE.with(|cell| {
        let Ok(mut line) = cell.try_borrow_mut() else {
            return;
        };
        line.clear();
        let now = SystemClock.unix_time();
        // Writing to a String cannot fail.
        let _infallible = match sink.format {
            LogFormat::Text => text(&mut line, now, a),
            LogFormat::Json => json(&mut line, now, a),
        };
        let mut writer = sink.writer.clone();
        let _never_fails = writer.write_all(line.as_bytes());
    });
}

/// Milliseconds with three decimals, from whole microseconds (no float formatting).
#[derive(Debug, Clone, Copy)]
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let us = self.0.as_micros();
        write!(f, "{}.{:03}", us / 1000, us % 1000)
    }
}

/// USD with six decimals, from micro-USD (no float formatting).
#[derive(Debug, Clone, Copy)]
struct Usd(u64);

impl std::fmt::Display for Usd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

/// `2026-12-01T08:00:00.123456Z`, as tracing-subscriber prints it.
struct Timestamp(Duration);

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        let days = i64::try_from(secs / 86_400).unwrap_or(0);
        let rem = secs % 86_400;
        let (year, month, day) = crate::clock::civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            self.0.subsec_micros()
        )
    }
}

/// A value tracing's text format would print with `Debug`: quoted, escaped.
struct Quoted<'a>(&'a str);

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

fn text(out: &mut String, now: Duration, a: &Access<'_>) -> std::fmt::Result {
    write!(
        out,
        "{}  INFO request request_id={} client={} identity={} endpoint={} method={} path={} status={}",
        Timestamp(now),
        a.request_id,
        Quoted(a.client),
        Quoted(a.identity),
        Quoted(a.endpoint),
        a.method,
        a.path,
        a.status
    )?;
    if let Some(s) = a.upstream_status {
        write!(out, " upstream_status={s}")?;
    }
    write!(out, " duration_ms={}", Millis(a.duration))?;
    if let Some(d) = a.upstream {
        write!(out, " upstream_ms={}", Millis(d))?;
    }
    write!(
        out,
        " bytes={} total_ms={} cost_usd={}",
        a.bytes,
        Millis(a.total),
        Usd(a.cost_micros)
    )?;
    if let Some(n) = a.messages {
        write!(out, " messages={n}")?;
    }
    writeln!(out)
}

/// A JSON string (escaped by serde_json).
struct Json<'a>(&'a str);

impl std::fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self.0) {
            Ok(s) => f.write_str(&s),
            Err(_) => f.write_str("\"\""),
        }
    }
}

fn json(out: &mut String, now: Duration, a: &Access<'_>) -> std::fmt::Result {
    write!(
        out,
        r#"{{"timestamp":"{}","level":"INFO","message":"request","request_id":{},"client":{},"identity":{},"endpoint":{},"method":{},"path":{},"status":{}"#,
        Timestamp(now),
        Json(a.request_id),
        Json(a.client),
        Json(a.identity),
        Json(a.endpoint),
        Json(a.method),
        Json(a.path),
        a.status
    )?;
    if let Some(s) = a.upstream_status {
        write!(out, r#","upstream_status":{s}"#)?;
    }
    write!(out, r#","duration_ms":{}"#, Millis(a.duration))?;
    if let Some(d) = a.upstream {
        write!(out, r#","upstream_ms":{}"#, Millis(d))?;
    }
    write!(
        out,
        r#","bytes":{},"total_ms":{},"cost_usd":{}"#,
        a.bytes,
        Millis(a.total),
        Usd(a.cost_micros)
    )?;
    if let Some(n) = a.messages {
        write!(out, r#","messages":{n}"#)?;
    }
    writeln!(out, r#","target":"xgate::access"}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Access<'static> {
        Access {
            request_id: "req-1",
            client: "backend",
            identity: "main",
            endpoint: "GET /2/tweets/:id",
            method: "GET",
            path: "/2/tweets/20",
            status: 200,
            upstream_status: Some(200),
            duration: Duration::from_micros(1_234),
            upstream: Some(Duration::from_micros(1_000)),
            bytes: 35,
            messages: None,
            total: Duration::from_micros(1_300_007),
            cost_micros: 5_000,
        }
    }

    // 2024-02-29T12:34:56.789012Z: a leap day, to exercise the calendar.
    const NOW: Duration = Duration::new(1_709_210_096, 789_012_345);

    #[test]
    fn timestamps_match_rfc_3339_utc() {
        assert_eq!(Timestamp(NOW).to_string(), "2024-02-29T12:34:56.789012Z");
        assert_eq!(
            Timestamp(Duration::ZERO).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp(Duration::from_secs(4_102_444_799)).to_string(),
            "2099-12-31T23:59:59.000000Z"
        );
    }

    #[test]
    fn text_lines_look_like_tracings_own() {
        let mut s = String::new();
        text(&mut s, NOW, &sample()).unwrap();
        assert_eq!(
            s,
            "2024-02-29T12:34:56.789012Z  INFO request request_id=req-1 client=\"backend\" identity=\"main\" endpoint=\"GET /2/tweets/:id\" method=GET path=/2/tweets/20 status=200 upstream_status=200 duration_ms=1.234 upstream_ms=1.000 bytes=35 total_ms=1300.007 cost_usd=0.005000\n"
        );
        let mut s = String::new();
        let local = Access {
            upstream_status: None,
            upstream: None,
            ..sample()
        };
        text(&mut s, NOW, &local).unwrap();
        assert!(s.contains(" status=200 duration_ms=1.234 bytes=35"), "{s}");
    }

    #[test]
    fn json_lines_parse_and_escape() {
        let mut s = String::new();
        let odd = Access {
            path: "/2/x\"y\\z",
            ..sample()
        };
        json(&mut s, NOW, &odd).unwrap();
        assert!(s.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["path"], "/2/x\"y\\z");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.234);
        assert_eq!(v["message"], "request");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["timestamp"], "2024-02-29T12:34:56.789012Z");
        assert_eq!(v["endpoint"], "GET /2/tweets/:id");
        assert_eq!(v["cost_usd"], 0.005);
    }
}
