//! The parts of a shared stream without sockets: lines and `matching_rules` (known answers and
//! a property test against serde_json), the backoff sequences, and a channel driven by a
//! scripted source in paused time (reconnect waits, keep-alives while reconnecting, a stall,
//! `operational-disconnect`, a slow consumer cut while a fast one gets every message).

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use proptest::prelude::*;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::backoff::{Backoff, Cause};
use super::channel::{
    Channel, Closer, Opened, Refusal, RouteTable, Routes, Settings, Source, StreamBody,
};
use super::line::{Lines, Matched, matching_rules_span};
use super::queue::ConsumerBody;
use crate::metrics::StreamMetrics;

// === lines and matching_rules ===

#[test]
fn lines_are_cut_at_newlines_whatever_the_chunks() {
    let mut lines = Lines::default();
    let mut out = Vec::new();
    for chunk in [
        "{\"a\":1}\r\n{\"b\"",
        ":2}\r",
        "\n\r\n",
        "{\"c\":3}\r\n{\"d\"",
    ] {
        lines.push(Bytes::from(chunk), |l| out.push(l)).unwrap();
    }
    assert_eq!(
        out,
        ["{\"a\":1}\r\n", "{\"b\":2}\r\n", "\r\n", "{\"c\":3}\r\n"]
    );
    lines.reset();
    lines
        .push(Bytes::from_static(b"{}\n"), |l| out.push(l))
        .unwrap();
    assert_eq!(
        out.last().unwrap(),
        "{}\n",
        "a reset drops the partial line"
    );
}

#[test]
fn the_span_of_matching_rules_is_found_at_the_top_level_only() {
    let line = br#"{"data":{"matching_rules":"not this","text":"a \"}\" here"},"matching_rules":[{"id":"1","tag":"x"}],"z":1}"#;
    let span = matching_rules_span(line).unwrap();
    assert_eq!(&line[span], br#"[{"id":"1","tag":"x"}]"#);
    assert_eq!(matching_rules_span(br#"{"data":{"id":"1"}}"#), None);
    assert_eq!(matching_rules_span(b"[1,2]"), None);
    assert_eq!(
        matching_rules_span(br#"{"matching_rules": [ ] }"#),
        Some(19..22)
    );
    assert_eq!(matching_rules_span(br#"{"a":"#), None);
    // A repeated key is read as JSON parsers read it: the last one (found by fuzzing).
    let twice = br#"{"matching_rules":{"id":"2"},"matching_rules":[{"id":""}]}"#;
    assert_eq!(
        &twice[matching_rules_span(twice).unwrap()],
        br#"[{"id":""}]"#
    );
}

#[test]
fn a_message_is_rewritten_per_client_with_the_rest_of_the_line_as_it_was() {
    let line = Bytes::from_static(
        br#"{"data":{"id":"5","text":"cats and dogs"},"includes":{"users":[]},"matching_rules":[{"id":"101","tag":"xgate:aa"},{"id":"102","tag":"xgate:bb","embedding_similarity":0.9}]}"#,
    );
    let m = Matched::parse(line).unwrap();
    assert_eq!(m.ids().collect::<Vec<_>>(), ["101", "102"]);
    let routes = Routes::new([
        ("101", "backend", Some("my-cats")),
        ("102", "backend", None),
        ("102", "narrow", Some("dogs!")),
    ]);
    let backend = m.for_client(|id| routes.tag(id, "backend")).unwrap();
    assert_eq!(
        backend,
        r#"{"data":{"id":"5","text":"cats and dogs"},"includes":{"users":[]},"matching_rules":[{"id":"101","tag":"my-cats"},{"id":"102","embedding_similarity":0.9}]}"#
    );
    let narrow = m.for_client(|id| routes.tag(id, "narrow")).unwrap();
    assert_eq!(
        narrow,
        r#"{"data":{"id":"5","text":"cats and dogs"},"includes":{"users":[]},"matching_rules":[{"id":"102","tag":"dogs!","embedding_similarity":0.9}]}"#
    );
    assert_eq!(m.for_client(|id| routes.tag(id, "third")), None);
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[ -~\\\\\"{}\\[\\]é]{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z_]{1,15}", inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// The scanner finds what serde_json finds: the top-level `matching_rules` member, in any
    /// object, compact or pretty.
    #[test]
    fn the_span_agrees_with_serde_json(
        members in prop::collection::btree_map("[a-z_]{1,15}", json_value(), 0..6),
        rules in prop::option::of(json_value()),
        pretty in any::<bool>(),
    ) {
        let mut object: serde_json::Map<String, serde_json::Value> = members.into_iter().collect();
        if let Some(rules) = &rules {
            object.insert("matching_rules".to_owned(), rules.clone());
        }
        let value = serde_json::Value::Object(object);
        let text = if pretty {
            serde_json::to_vec_pretty(&value).unwrap()
        } else {
            serde_json::to_vec(&value).unwrap()
        };
        let found = matching_rules_span(&text)
            .map(|span| serde_json::from_slice::<serde_json::Value>(&text[span]).unwrap());
        prop_assert_eq!(found.as_ref(), value.get("matching_rules"));
    }

    /// Bytes from outside never panic the scanner, and a span it gives lies in the line.
    #[test]
    fn the_scanner_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Some(span) = matching_rules_span(&bytes) {
            prop_assert!(span.start <= span.end && span.end <= bytes.len());
        }
        let _ = Matched::parse(Bytes::from(bytes));
    }
}

// === backoff ===

fn waits(backoff: &mut Backoff, cause: Cause, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| u64::try_from(backoff.next(cause).as_millis()).unwrap())
        .collect()
}

#[test]
fn backoff_follows_x_for_each_kind_of_failure() {
    let mut b = Backoff::default();
    assert_eq!(
        waits(&mut b, Cause::Network, 4),
        [250, 500, 750, 1000],
        "linear by 250 ms"
    );
    let mut b = Backoff::default();
    assert_eq!(
        waits(&mut b, Cause::Network, 70).last(),
        Some(&16_000),
        "up to 16 s"
    );
    let mut b = Backoff::default();
    assert_eq!(
        waits(&mut b, Cause::Http, 8),
        [
            5_000, 10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 320_000
        ]
    );
    let mut b = Backoff::default();
    assert_eq!(
        waits(&mut b, Cause::TooManyRequests, 6),
        [60_000, 120_000, 240_000, 480_000, 960_000, 960_000]
    );
    let mut b = Backoff::default();
    waits(&mut b, Cause::Http, 3);
    b.up();
    assert_eq!(
        waits(&mut b, Cause::Ended, 3),
        [0, 250, 500],
        "at once after a drop, then linear again"
    );
}

// === a channel with a scripted source ===

/// A source that answers from a script and records when it was asked.
#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Box<dyn FnOnce() -> Opened + Send>>>,
    opened: Mutex<Vec<Instant>>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script")
    }
}

#[derive(Debug)]
struct Scripted(Arc<Script>);

impl Source for Scripted {
    fn open(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Opened> + Send + '_>> {
        Box::pin(async move {
            self.0.opened.lock().unwrap().push(Instant::now());
            let next = self.0.answers.lock().unwrap().pop_front();
            match next {
                Some(answer) => answer(),
                None => Opened::Failed("script ended".to_owned()),
            }
        })
    }
}

fn refused(status: u16) -> Opened {
    Opened::Refused(Arc::new(Refusal {
        status: http::StatusCode::from_u16(status).unwrap(),
        headers: http::HeaderMap::new(),
        body: Bytes::from_static(br#"{"connection_issue":"TooManyConnections"}"#),
    }))
}

/// A body the test writes to; it ends when the sender is dropped.
struct Fed(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

fn fed() -> (mpsc::UnboundedSender<Bytes>, StreamBody) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Fed(rx).boxed_unsync())
}

/// Forgets nothing: channels of these tests close themselves.
#[derive(Debug)]
struct NoHub;

impl Closer for NoHub {
    fn close_if_deserted(&self, channel: &Arc<Channel>) -> bool {
        let deserted = channel.is_deserted();
        if deserted {
            channel.closed();
        }
        deserted
    }
    fn forget(&self, _: &Arc<Channel>) {}
}

fn settings(buffer: usize) -> Settings {
    Settings {
        buffer,
        linger: Duration::from_secs(30),
        max_consumers: 10,
    }
}

/// A started channel reading `script`, with routes when `routes` is given.
fn channel(
    script: &Arc<Script>,
    routes: Option<Arc<RouteTable>>,
    buffer: usize,
) -> (Arc<Channel>, Arc<NoHub>) {
    let metrics = StreamMetrics::new().unwrap();
    let channel = Channel::new(
        Arc::from("main"),
        Arc::from("GET /2/tweets/search/stream"),
        routes,
        Box::new(Scripted(Arc::clone(script))),
        settings(buffer),
        metrics.handles("main", "GET /2/tweets/search/stream"),
    );
    let hub = Arc::new(NoHub);
    let closer: Weak<dyn Closer> = Arc::downgrade(&hub) as Weak<dyn Closer>;
    channel.start(closer);
    (channel, hub)
}

/// A consumer of `client`: its body.
fn consumer(channel: &Arc<Channel>, client: &str) -> ConsumerBody {
    let (id, queue) = channel.join(&Arc::from(client)).unwrap();
    let c = Arc::clone(channel);
    ConsumerBody::new(
        queue,
        Arc::new(AtomicU64::new(0)),
        Box::new(move || c.leave(id)),
    )
}

async fn next_line(body: &mut ConsumerBody) -> Bytes {
    body.frame().await.unwrap().unwrap().into_data().unwrap()
}

fn script(answers: Vec<Box<dyn FnOnce() -> Opened + Send>>) -> Arc<Script> {
    Arc::new(Script {
        answers: Mutex::new(answers.into()),
        opened: Mutex::new(Vec::new()),
    })
}

/// The gaps between the attempts, in ms, once there have been `n`.
async fn gaps(script: &Script, n: usize) -> Vec<u64> {
    for _ in 0..10_000 {
        if script.opened.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let opened = script.opened.lock().unwrap();
    assert!(opened.len() >= n, "{} attempts, not {n}", opened.len());
    opened
        .windows(2)
        .take(n - 1)
        .map(|w| u64::try_from((w[1] - w[0]).as_millis()).unwrap())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn network_errors_are_retried_linearly() {
    let s = script(Vec::new());
    let (ch, _hub) = channel(&s, None, 1 << 20);
    let _c = consumer(&ch, "backend");
    assert_eq!(gaps(&s, 5).await, [250, 500, 750, 1000]);
}

#[tokio::test(start_paused = true)]
async fn http_503s_are_retried_exponentially_from_5_s() {
    let answers: Vec<Box<dyn FnOnce() -> Opened + Send>> = (0..5)
        .map(|_| Box::new(|| refused(503)) as Box<dyn FnOnce() -> Opened + Send>)
        .collect();
    let s = script(answers);
    let (ch, _hub) = channel(&s, None, 1 << 20);
    let _c = consumer(&ch, "backend");
    assert_eq!(gaps(&s, 5).await, [5_000, 10_000, 20_000, 40_000]);
}

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_exponentially_from_a_minute() {
    let answers: Vec<Box<dyn FnOnce() -> Opened + Send>> = (0..4)
        .map(|_| Box::new(|| refused(429)) as Box<dyn FnOnce() -> Opened + Send>)
        .collect();
    let s = script(answers);
    let (ch, _hub) = channel(&s, None, 1 << 20);
    let _c = consumer(&ch, "backend");
    assert_eq!(gaps(&s, 4).await, [60_000, 120_000, 240_000]);
}

/// A 4xx other than 429 on the first connect is X's answer to the waiting consumers, and
/// no retry follows.
#[tokio::test(start_paused = true)]
async fn a_first_connect_refused_with_a_4xx_is_not_retried() {
    let s = script(vec![Box::new(|| refused(401))]);
    let (ch, _hub) = channel(&s, None, 1 << 20);
    let _c = consumer(&ch, "backend");
    match ch.settled().await {
        super::channel::Phase::Refused(r) => assert_eq!(r.status, 401),
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(s.opened.lock().unwrap().len(), 1);
}

fn msg(id: u32) -> Bytes {
    Bytes::from(format!("{{\"data\":{{\"id\":\"{id}\"}}}}\r\n"))
}

/// X sends nothing for 20 s: the connection is dead and opened again at once; consumers get
/// xgate's keep-alives meanwhile, never 20 s apart.
#[tokio::test(start_paused = true)]
async fn a_stall_reconnects_and_consumers_get_keepalives_meanwhile() {
    let (tx1, body1) = fed();
    let (tx2, body2) = fed();
    let s = script(vec![
        Box::new(move || Opened::Up(body1)),
        Box::new(|| refused(503)),
        Box::new(move || Opened::Up(body2)),
    ]);
    let (ch, _hub) = channel(&s, None, 1 << 20);
    let mut c = consumer(&ch, "backend");
    let start = Instant::now();
    tx1.send(msg(1)).unwrap();
    assert_eq!(next_line(&mut c).await, msg(1));
    // Silence from X: keep-alives from xgate through the stall (20 s), the 503, its 5 s
    // wait, until the second connection.
    let mut last = Instant::now();
    let mut keepalives = 0;
    while s.opened.lock().unwrap().len() < 3 {
        let line = next_line(&mut c).await;
        assert_eq!(line, "\r\n");
        assert!(
            last.elapsed() <= Duration::from_secs(15),
            "{:?} without a byte",
            last.elapsed()
        );
        last = Instant::now();
        keepalives += 1;
        assert!(keepalives < 20, "bounded");
    }
    assert_eq!(
        gaps(&s, 3).await,
        [20_000, 5_000],
        "the stall at 20 s, the 503's wait"
    );
    tx2.send(msg(2)).unwrap();
    let mut line = next_line(&mut c).await;
    for _ in 0..5 {
        if line != "\r\n" {
            break;
        }
        line = next_line(&mut c).await;
    }
    assert_eq!(line, msg(2));
    assert!(start.elapsed() >= Duration::from_secs(25));
    drop(tx1);
}

/// `operational-disconnect` ends the connection (it is not passed on), and the next one is
/// opened at once.
#[tokio::test(start_paused = true)]
async fn operational_disconnect_reconnects_at_once() {
    let (tx1, body1) = fed();
    let (tx2, body2) = fed();
    let s = script(vec![
        Box::new(move || Opened::Up(body1)),
        Box::new(move || Opened::Up(body2)),
    ]);
    let (ch, _hub) = channel(&s, None, 1 << 20);
    let mut c = consumer(&ch, "backend");
    tx1.send(Bytes::from_static(
        b"{\"errors\":[{\"title\":\"operational-disconnect\",\"disconnect_type\":\"UpstreamOperationalDisconnect\",\"type\":\"https://api.x.com/2/problems/operational-disconnect\"}]}\r\n",
    ))
    .unwrap();
    assert_eq!(gaps(&s, 2).await, [0]);
    tx2.send(msg(3)).unwrap();
    assert_eq!(next_line(&mut c).await, msg(3));
    drop(tx1);
}

/// A consumer that reads nothing is cut off when `consumer_buffer_bytes` are queued for it;
/// the other gets every message, in order, and the reader never waited.
#[tokio::test(start_paused = true)]
async fn a_slow_consumer_is_cut_and_the_fast_one_gets_everything() {
    let (tx, body) = fed();
    let s = script(vec![Box::new(move || Opened::Up(body))]);
    let routes = Arc::new(RouteTable::default());
    routes.store(Routes::new([("9", "backend", Some("mine"))]));
    let (ch, _hub) = channel(&s, Some(routes), 10_000);
    let mut fast = consumer(&ch, "backend");
    let mut slow = consumer(&ch, "backend");
    let line = |i: u32, tag: &str| {
        format!(
            "{{\"data\":{{\"id\":\"{i}\"}},\"matching_rules\":[{{\"id\":\"9\",\"tag\":\"{tag}\"}}]}}\r\n"
        )
    };
    for i in 0..400 {
        tx.send(Bytes::from(line(i, "xgate:00"))).unwrap();
        // The fast consumer reads as the messages come.
        assert_eq!(next_line(&mut fast).await, line(i, "mine"));
    }
    assert_eq!(ch.consumers(), 1);
    let err = slow.frame().await.unwrap().unwrap_err();
    assert!(err.is::<super::queue::TooSlow>(), "{err}");
    drop(tx);
}
