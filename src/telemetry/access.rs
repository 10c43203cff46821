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
use crate::digits::push_decimal;
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
        match sink.format {
            LogFormat::Text => text(&mut line, now, a),
            LogFormat::Json => json(&mut line, now, a),
        }
        let mut writer = sink.writer.clone();
        let _never_fails = writer.write_all(line.as_bytes());
    });
}

/// Milliseconds with three decimals, from whole microseconds (no float formatting).
#[derive(Debug, Clone, Copy)]
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(12);
        push_millis(&mut s, self.0);
        f.write_str(&s)
    }
}

/// USD with six decimals, from micro-USD (no float formatting).
#[derive(Debug, Clone, Copy)]
struct Usd(u64);

impl std::fmt::Display for Usd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::with_capacity(12);
        push_usd(&mut s, self.0);
        f.write_str(&s)
    }
}

// The line is assembled by hand, digits included (`crate::digits`): `write!` with a dozen
// arguments cost more than the rest of the record (BENCHMARKS.md, "The request path").

fn push_millis(out: &mut String, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_decimal(out, us / 1000, 1);
    out.push('.');
    push_decimal(out, us % 1000, 3);
}

fn push_usd(out: &mut String, micros: u64) {
    push_decimal(out, micros / 1_000_000, 1);
    out.push('.');
    push_decimal(out, micros % 1_000_000, 6);
}

/// `2026-12-01T08:00:00.123456Z`, as tracing-subscriber prints it.
fn push_timestamp(out: &mut String, now: Duration) {
    let secs = now.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = crate::clock::civil_from_days(days);
    let fields = [
        (u64::try_from(year).unwrap_or(0), 4, '-'),
        (u64::from(month), 2, '-'),
        (u64::from(day), 2, 'T'),
        (rem / 3600, 2, ':'),
        (rem % 3600 / 60, 2, ':'),
        (rem % 60, 2, '.'),
        (u64::from(now.subsec_micros()), 6, 'Z'),
    ];
    for (n, width, then) in fields {
        push_decimal(out, n, width);
        out.push(then);
    }
}

/// Whether `s` prints the same raw as in a quoted string, escaped by Rust's `Debug` or by
/// JSON: printable ASCII without `"` and `\`.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

/// A value as tracing's text format prints it with `Debug`: quoted, escaped.
fn push_quoted(out: &mut String, s: &str) {
    if plain(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Writing to a String cannot fail.
        let _infallible = write!(out, "{s:?}");
    }
}

/// A JSON string (escaped by serde_json unless [plain]).
fn push_json(out: &mut String, s: &str) {
    if plain(s) {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return;
    }
    match serde_json::to_string(s) {
        Ok(s) => out.push_str(&s),
        Err(_) => out.push_str("\"\""),
    }
}

/// The fields of a line, in order.
#[derive(Clone, Copy)]
enum Field {
    RequestId,
    Client,
    Identity,
    Endpoint,
    Method,
    Path,
    Status,
    UpstreamStatus,
    DurationMs,
    UpstreamMs,
    Bytes,
    TotalMs,
    CostUsd,
    Messages,
}

/// How one format spells a line: what comes before each field's value (the separator and the
/// name, by [`Field`]), around the timestamp, at the end.
struct Spelling {
    open: &'static str,
    after_time: &'static str,
    names: [&'static str; 14],
    close: &'static str,
    /// How a string value is written.
    string: fn(&mut String, &str),
    /// Whether `request_id`, `method` and `path` are written as strings (JSON) or raw (text,
    /// as tracing's `%` fields are).
    all_strings: bool,
}

const TEXT: Spelling = Spelling {
    open: "",
    after_time: "  INFO request ",
    names: [
        "request_id=",
        " client=",
        " identity=",
        " endpoint=",
        " method=",
        " path=",
        " status=",
        " upstream_status=",
        " duration_ms=",
        " upstream_ms=",
        " bytes=",
        " total_ms=",
        " cost_usd=",
        " messages=",
    ],
    close: "\n",
    string: push_quoted,
    all_strings: false,
};

const JSON: Spelling = Spelling {
    open: r#"{"timestamp":""#,
    after_time: r#"","level":"INFO","message":"request","#,
    names: [
        r#""request_id":"#,
        r#","client":"#,
        r#","identity":"#,
        r#","endpoint":"#,
        r#","method":"#,
        r#","path":"#,
        r#","status":"#,
        r#","upstream_status":"#,
        r#","duration_ms":"#,
        r#","upstream_ms":"#,
        r#","bytes":"#,
        r#","total_ms":"#,
        r#","cost_usd":"#,
        r#","messages":"#,
    ],
    close: ",\"target\":\"xgate::access\"}\n",
    string: push_json,
    all_strings: true,
};

/// A field's value, as the line writes it.
enum Value<'a> {
    Str(&'a str),
    Raw(&'a str),
    Int(u64),
    Millis(Duration),
    Usd(u64),
}

fn line(out: &mut String, sp: &Spelling, now: Duration, a: &Access<'_>) {
    out.push_str(sp.open);
    push_timestamp(out, now);
    out.push_str(sp.after_time);
    let mut put = |field: Field, value: Value<'_>| {
        out.push_str(sp.names.get(field as usize).copied().unwrap_or_default());
        match value {
            Value::Str(v) => (sp.string)(out, v),
            Value::Raw(v) if sp.all_strings => (sp.string)(out, v),
            Value::Raw(v) => out.push_str(v),
            Value::Int(n) => push_decimal(out, n, 1),
            Value::Millis(d) => push_millis(out, d),
            Value::Usd(micros) => push_usd(out, micros),
        }
    };
    put(Field::RequestId, Value::Raw(a.request_id));
    put(Field::Client, Value::Str(a.client));
    put(Field::Identity, Value::Str(a.identity));
    put(Field::Endpoint, Value::Str(a.endpoint));
    put(Field::Method, Value::Raw(a.method));
    put(Field::Path, Value::Raw(a.path));
    put(Field::Status, Value::Int(u64::from(a.status)));
    if let Some(s) = a.upstream_status {
        put(Field::UpstreamStatus, Value::Int(u64::from(s)));
    }
    put(Field::DurationMs, Value::Millis(a.duration));
    if let Some(d) = a.upstream {
        put(Field::UpstreamMs, Value::Millis(d));
    }
    put(Field::Bytes, Value::Int(a.bytes));
    put(Field::TotalMs, Value::Millis(a.total));
    put(Field::CostUsd, Value::Usd(a.cost_micros));
    if let Some(n) = a.messages {
        put(Field::Messages, Value::Int(n));
    }
    out.push_str(sp.close);
}

fn text(out: &mut String, now: Duration, a: &Access<'_>) {
    line(out, &TEXT, now, a);
}

fn json(out: &mut String, now: Duration, a: &Access<'_>) {
    line(out, &JSON, now, a);
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
        let stamp = |d| {
            let mut s = String::new();
            push_timestamp(&mut s, d);
            s
        };
        assert_eq!(stamp(NOW), "2024-02-29T12:34:56.789012Z");
        assert_eq!(stamp(Duration::ZERO), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            stamp(Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59.000000Z"
        );
    }

    #[test]
    fn text_lines_look_like_tracings_own() {
        let mut s = String::new();
        text(&mut s, NOW, &sample());
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
        text(&mut s, NOW, &local);
        assert!(s.contains(" status=200 duration_ms=1.234 bytes=35"), "{s}");
    }

    #[test]
    fn json_lines_parse_and_escape() {
        let mut s = String::new();
        let odd = Access {
            path: "/2/x\"y\\z",
            ..sample()
        };
        json(&mut s, NOW, &odd);
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

    proptest::proptest! {
        /// Any string comes out as tracing's text format (`Debug`) and serde_json would write
        /// it, whichever path (raw or escaped) the writer takes.
        #[test]
        fn fields_escape_like_debug_and_serde_json(value in ".{0,40}") {
            let a = Access { client: &value, path: &value, request_id: &value, ..sample() };
            let mut s = String::new();
            text(&mut s, NOW, &a);
            let quoted = format!(" client={value:?} ");
            proptest::prop_assert!(s.contains(&quoted), "{}", s);
            let mut s = String::new();
            json(&mut s, NOW, &a);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap();
            proptest::prop_assert_eq!(v["client"].as_str(), Some(value.as_str()));
            proptest::prop_assert_eq!(v["path"].as_str(), Some(value.as_str()));
            proptest::prop_assert_eq!(v["request_id"].as_str(), Some(value.as_str()));
            proptest::prop_assert_eq!(v["target"].as_str(), Some("xgate::access"));
        }
    }
}
