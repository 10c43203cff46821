//! CONTRACT section 12 (streams shared by several consumers) over real sockets against
//! FakeX's live filtered stream and its rules: clients' own rules and tags, one rule at X per
//! value, rules kept across a restart and reconciled with X, 409 for a client without rules,
//! a slow consumer dropped while a fast one gets everything, consumers kept through an
//! upstream reconnect, one connection at X for many consumers, `max_consumers`, the sample
//! stream to everyone, metrics and the consumer's access record. Reconnect waits and
//! keep-alives are tested in paused time in `src/streams/tests.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::support::fake_x::FakeX;
use crate::support::http::{Answer, metric, request, send, send_streaming};
use crate::support::proxy::{KEY, NARROW_KEY, Proxy, TestConfig};

const FILTERED: &str = "/2/tweets/search/stream";
const RULES: &str = "/2/tweets/search/stream/rules";

async fn fake() -> FakeX {
    let fake = FakeX::start().await;
    fake.live().serve(FILTERED);
    fake
}

fn config(fake: &FakeX) -> TestConfig {
    TestConfig::new(&fake.base_url())
}

/// `POST …/rules` as the client of `key`.
async fn post_rules(addr: SocketAddr, key: &str, query: &str, body: Value) -> Answer {
    let req = request("POST", &format!("{RULES}{query}"))
        .header("x-xgate-key", key)
        .header("x-xgate-identity", "main")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    send(addr, req).await
}

async fn get_rules(addr: SocketAddr, key: &str, query: &str) -> Value {
    let req = request("GET", &format!("{RULES}{query}"))
        .header("x-xgate-key", key)
        .header("x-xgate-identity", "main")
        .body(Full::default())
        .unwrap();
    let answer = send(addr, req).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    serde_json::from_slice(&answer.body).unwrap()
}

pub(crate) async fn add(addr: SocketAddr, key: &str, rules: Value) -> Value {
    let answer = post_rules(addr, key, "", json!({ "add": rules })).await;
    assert!(
        answer.status.is_success(),
        "{} {}",
        answer.status,
        answer.text()
    );
    serde_json::from_slice(&answer.body).unwrap()
}

/// A consumer of a stream through the proxy.
pub(crate) struct Consumer {
    body: Incoming,
    buf: Vec<u8>,
}

impl Consumer {
    pub(crate) async fn connect(addr: SocketAddr, key: &str, path: &str) -> Result<Self, Answer> {
        let req = request("GET", path)
            .header("x-xgate-key", key)
            .header("x-xgate-identity", "main")
            .body(Full::default())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), send_streaming(addr, req))
            .await
            .expect("no answer head within 20 s");
        if resp.status() != 200 {
            return Err(crate::support::http::collect(resp).await);
        }
        Ok(Self {
            body: resp.into_body(),
            buf: Vec::new(),
        })
    }

    /// The next line (keep-alives included), within 10 s.
    async fn line(&mut self) -> String {
        for _ in 0..10_000 {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                return String::from_utf8(line).unwrap();
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), self.body.frame())
                .await
                .expect("nothing for 10 s")
                .expect("the stream ended")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
        panic!("no line");
    }

    /// The next message within `limit` (keep-alives skipped), or `None`.
    async fn try_message(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        for _ in 0..10_000 {
            while let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                if !line.trim_ascii().is_empty() {
                    return Some(serde_json::from_slice(&line).unwrap());
                }
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()?;
            if let Ok(data) = frame.expect("the stream ended").unwrap().into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
        None
    }

    /// The next message, skipping keep-alives, parsed.
    pub(crate) async fn message(&mut self) -> Value {
        for _ in 0..100 {
            let line = self.line().await;
            if !line.trim().is_empty() {
                return serde_json::from_str(&line).unwrap();
            }
        }
        panic!("only keep-alives");
    }
}

/// A message of X's for a Post `id` that matched the rules `ids` (X's tags on them).
pub(crate) fn message(id: u32, ids: &[&str]) -> String {
    let rules: Vec<Value> = ids
        .iter()
        .map(|i| json!({"id": i, "tag": "xgate:whatever"}))
        .collect();
    json!({"data": {"id": id.to_string(), "text": format!("post {id}")}, "matching_rules": rules})
        .to_string()
}

fn tags(msg: &Value) -> Vec<(String, Option<String>)> {
    msg["matching_rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r.get("tag").and_then(Value::as_str).map(str::to_owned),
            )
        })
        .collect()
}

async fn metrics(proxy: &Proxy) -> String {
    crate::support::http::get(proxy.admin, "/metrics", None)
        .await
        .text()
}

/// Waits (bounded) until the metric line starting with `prefix` reads `want`.
async fn wait_metric(proxy: &Proxy, prefix: &str, want: f64) {
    let mut last = 0.0;
    for _ in 0..500 {
        last = metric(&metrics(proxy).await, prefix);
        if (last - want).abs() < 1e-9 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{prefix} is {last}, not {want}");
}

async fn wait_open(fake: &FakeX, connects: usize) {
    let live = |f: &FakeX| f.live().counts();
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| live(f).0 == connects
            && live(f).2 == 1)
            .await,
        "FakeX: {:?} (connects, refused, open)",
        fake.live().counts()
    );
}

/// Two clients with overlapping rules each get exactly the messages of their rules, with
/// their own tags and the rest of the message unchanged; two consumers of one client each
/// get all of that client's; X sees one connection.
#[tokio::test]
async fn each_client_gets_exactly_its_messages_with_its_own_tags() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake).toml()).await;
    let b = add(
        proxy.addr,
        KEY,
        json!([{"value": "cats", "tag": "b-cats"}, {"value": "dogs", "tag": "b-dogs"}]),
    )
    .await;
    assert_eq!(b["meta"]["summary"]["created"], 2, "{b}");
    let n = add(
        proxy.addr,
        NARROW_KEY,
        json!([{"value": "dogs", "tag": "n-dogs"}, {"value": "birds"}]),
    )
    .await;
    assert_eq!(n["meta"]["summary"]["created"], 2, "{n}");
    let at_x = fake.live().rules();
    assert_eq!(at_x.len(), 3, "{at_x:?}");
    assert!(
        at_x.iter()
            .all(|r| r.tag.as_deref().is_some_and(|t| t.starts_with("xgate:")))
    );
    let (cats, dogs, birds) = (
        fake.live().id_of("cats"),
        fake.live().id_of("dogs"),
        fake.live().id_of("birds"),
    );
    assert_eq!(n["data"][0]["id"], dogs.as_str(), "the client sees X's id");

    let mut b1 = Consumer::connect(proxy.addr, KEY, FILTERED).await.unwrap();
    let mut b2 = Consumer::connect(proxy.addr, KEY, FILTERED).await.unwrap();
    let mut n1 = Consumer::connect(proxy.addr, NARROW_KEY, FILTERED)
        .await
        .unwrap();
    wait_open(&fake, 1).await;

    fake.live().send(&message(1, &[&cats]));
    fake.live().send(&message(2, &[&dogs]));
    fake.live().send(&message(3, &[&birds]));
    fake.live().send(&message(4, &[&cats, &birds]));

    for c in [&mut b1, &mut b2] {
        let m = c.message().await;
        assert_eq!(m["data"]["id"], "1");
        assert_eq!(tags(&m), [(cats.clone(), Some("b-cats".to_owned()))]);
        let m = c.message().await;
        assert_eq!(m["data"]["id"], "2");
        assert_eq!(tags(&m), [(dogs.clone(), Some("b-dogs".to_owned()))]);
        let m = c.message().await;
        assert_eq!(
            m["data"]["id"], "4",
            "message 3 matched none of backend's rules"
        );
        assert_eq!(tags(&m), [(cats.clone(), Some("b-cats".to_owned()))]);
    }
    let m = n1.message().await;
    assert_eq!(
        m["data"]["id"], "2",
        "message 1 matched none of narrow's rules"
    );
    assert_eq!(tags(&m), [(dogs.clone(), Some("n-dogs".to_owned()))]);
    let m = n1.message().await;
    assert_eq!(m["data"]["id"], "3");
    assert_eq!(
        tags(&m),
        [(birds.clone(), None)],
        "a rule without a tag has none"
    );
    let m = n1.message().await;
    assert_eq!(m["data"]["id"], "4");
    assert_eq!(tags(&m), [(birds.clone(), None)]);
    assert_eq!(
        m["data"]["text"], "post 4",
        "the rest of the message is X's"
    );

    assert_eq!(fake.live().counts(), (1, 0, 1), "one connection at X");
    let stream_requests = fake.requests_to(FILTERED);
    assert!(
        stream_requests.iter().all(|r| r.header("authorization")
            == Some(&format!("Bearer {}", crate::support::fake_x::BEARER)[..])),
        "the App's Bearer token"
    );
}

/// One X rule per value: the same value from two clients is one rule, kept while either
/// refers to it and deleted at X with the last; a client sees and deletes only its own.
#[tokio::test]
async fn one_rule_at_x_per_value_and_each_client_sees_its_own() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake).toml()).await;
    let b = add(proxy.addr, KEY, json!([{"value": "dogs", "tag": "mine"}])).await;
    let n = add(
        proxy.addr,
        NARROW_KEY,
        json!([{"value": "dogs"}, {"value": "birds", "tag": "n"}]),
    )
    .await;
    assert_eq!(fake.live().rules().len(), 2, "dogs once, birds");
    assert_eq!(b["data"][0]["id"], n["data"][0]["id"], "one X rule");

    let listed = get_rules(proxy.addr, KEY, "").await;
    assert_eq!(
        listed["data"],
        json!([{"id": fake.live().id_of("dogs"), "value": "dogs", "tag": "mine"}])
    );
    assert_eq!(listed["meta"]["result_count"], 1);
    let listed = get_rules(proxy.addr, NARROW_KEY, "?max_results=1").await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    let token = listed["meta"]["next_token"].as_str().unwrap().to_owned();
    let page2 = get_rules(
        proxy.addr,
        NARROW_KEY,
        &format!("?max_results=1&pagination_token={token}"),
    )
    .await;
    assert_eq!(page2["data"][0]["value"], "birds");
    assert!(page2["meta"].get("next_token").is_none());

    let birds_id = fake.live().id_of("birds");
    let by_id = get_rules(proxy.addr, NARROW_KEY, &format!("?ids={birds_id}")).await;
    assert_eq!(
        by_id["data"],
        json!([{"id": birds_id, "value": "birds", "tag": "n"}])
    );
    let not_mine = get_rules(proxy.addr, KEY, &format!("?ids={birds_id}")).await;
    assert_eq!(
        not_mine["meta"]["result_count"], 0,
        "another client's rule is invisible"
    );

    // A duplicate of the client's own rule: X's DuplicateRule, nothing created.
    let dup = post_rules(proxy.addr, KEY, "", json!({"add": [{"value": "dogs"}]})).await;
    let dup: Value = serde_json::from_slice(&dup.body).unwrap();
    assert_eq!(dup["errors"][0]["title"], "DuplicateRule", "{dup}");
    assert_eq!(dup["meta"]["summary"]["created"], 0);

    // backend deletes its dogs: the rule stays at X for narrow.
    let dogs = fake.live().id_of("dogs");
    let del = post_rules(proxy.addr, KEY, "", json!({"delete": {"ids": [dogs]}})).await;
    let del: Value = serde_json::from_slice(&del.body).unwrap();
    assert_eq!(del["meta"]["summary"]["deleted"], 1, "{del}");
    assert_eq!(fake.live().rules().len(), 2);
    assert_eq!(
        get_rules(proxy.addr, KEY, "").await["meta"]["result_count"],
        0
    );
    // Another client's rule cannot be deleted by id: it is not this client's.
    let birds = fake.live().id_of("birds");
    let other = post_rules(proxy.addr, KEY, "", json!({"delete": {"ids": [birds]}})).await;
    let other: Value = serde_json::from_slice(&other.body).unwrap();
    assert_eq!(other["meta"]["summary"]["not_deleted"], 1, "{other}");
    assert_eq!(fake.live().rules().len(), 2);

    // narrow deletes dogs by value, then everything: X has no rule left.
    let del = post_rules(
        proxy.addr,
        NARROW_KEY,
        "",
        json!({"delete": {"values": ["dogs"]}}),
    )
    .await;
    assert_eq!(del.status, 200, "{}", del.text());
    assert_eq!(fake.live().rules().len(), 1);
    let all = post_rules(proxy.addr, NARROW_KEY, "?delete_all=true", json!({})).await;
    assert_eq!(all.status, 200, "{}", all.text());
    assert!(fake.live().rules().is_empty());

    // dry_run reaches X as dry_run, and changes nothing.
    let dry = post_rules(
        proxy.addr,
        KEY,
        "?dry_run=true",
        json!({"add": [{"value": "fish"}]}),
    )
    .await;
    assert_eq!(dry.status, 200, "{}", dry.text());
    assert!(fake.live().rules().is_empty());
    assert_eq!(
        get_rules(proxy.addr, KEY, "").await["meta"]["result_count"],
        0
    );
    let calls = fake.live().rule_calls.lock().unwrap().clone();
    assert!(calls.iter().any(|(m, b)| m == "POST" && b.contains("fish")));

    // X's own rejection of a rule comes back in X's shape.
    let bad = post_rules(
        proxy.addr,
        KEY,
        "",
        json!({"add": [{"value": "INVALID ("}]}),
    )
    .await;
    let bad: Value = serde_json::from_slice(&bad.body).unwrap();
    assert_eq!(bad["errors"][0]["value"], "INVALID (", "{bad}");
    assert_eq!(bad["meta"]["summary"]["invalid"], 1);
}

/// More rules than `streams.max_rules` at X: X's rule-cap shape, answered locally.
#[tokio::test]
async fn the_rule_cap_is_answered_locally() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake).section("streams", "max_rules", 2).toml()).await;
    add(proxy.addr, KEY, json!([{"value": "a"}])).await;
    // A value another client has is no new rule at X.
    add(
        proxy.addr,
        NARROW_KEY,
        json!([{"value": "a"}, {"value": "b"}]),
    )
    .await;
    let calls = fake.live().rule_calls.lock().unwrap().len();
    let over = post_rules(proxy.addr, KEY, "", json!({"add": [{"value": "c"}]})).await;
    assert_eq!(over.status, 400);
    let over: Value = serde_json::from_slice(&over.body).unwrap();
    assert_eq!(over["errors"][0]["title"], "RulesCapExceeded", "{over}");
    assert!(
        over["errors"][0]["type"]
            .as_str()
            .unwrap()
            .ends_with("/rule-cap")
    );
    assert_eq!(
        fake.live().rule_calls.lock().unwrap().len(),
        calls,
        "X was not asked"
    );
    assert_eq!(fake.live().rules().len(), 2);
}

/// The mapping is in the store: after a restart the clients' rules are there, a rule X lost
/// is added again, and a rule at X that xgate does not know is left alone.
#[tokio::test]
async fn rules_survive_a_restart_and_are_reconciled_with_x() {
    let fake = fake().await;
    let dir = crate::support::scratch("stream-rules");
    let toml = config(&fake).toml();
    let proxy = Proxy::start_in(&toml, &dir).await;
    add(
        proxy.addr,
        KEY,
        json!([{"value": "cats", "tag": "c"}, {"value": "dogs"}]),
    )
    .await;
    proxy.stop().await.unwrap();

    fake.live().forget("cats");
    let foreign = fake.live().add_foreign("added elsewhere");
    let proxy = Proxy::start_in(&toml, &dir).await;
    let listed = get_rules(proxy.addr, KEY, "").await;
    let values: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["cats", "dogs"], "{listed}");
    let cats = fake.live().id_of("cats");
    assert_eq!(
        listed["data"][0]["id"],
        cats.as_str(),
        "cats again, with X's new id"
    );
    assert_eq!(listed["data"][0]["tag"], "c");
    assert!(
        fake.live().rules().iter().any(|r| r.id == foreign),
        "left alone"
    );
    crate::support::logs::wait_for_line(|l| {
        l.contains("not added through xgate") && l.contains(&foreign)
    })
    .await;
}

/// A consumer whose client has no rules gets X's 409, and X is not asked.
#[tokio::test]
async fn a_consumer_without_rules_gets_409() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake).toml()).await;
    add(proxy.addr, KEY, json!([{"value": "cats"}])).await;
    let refused = Consumer::connect(proxy.addr, NARROW_KEY, FILTERED)
        .await
        .err()
        .unwrap();
    assert_eq!(refused.status, 409, "{}", refused.text());
    let body: Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(body["title"], "ConnectionException");
    assert_eq!(fake.live().counts(), (0, 0, 0));
}

/// A consumer that stops reading is dropped once `consumer_buffer_bytes` are queued for it;
/// the fast consumer gets every message in order.
#[tokio::test]
async fn a_slow_consumer_is_dropped_and_a_fast_one_gets_every_message() {
    let fake = fake().await;
    let proxy = Proxy::start(
        &config(&fake)
            .section("streams", "consumer_buffer_bytes", 65_536)
            .toml(),
    )
    .await;
    add(proxy.addr, KEY, json!([{"value": "all"}])).await;
    let all = fake.live().id_of("all");
    let mut fast = Consumer::connect(proxy.addr, KEY, FILTERED).await.unwrap();
    // The slow one sends its request and never reads.
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut slow,
        format!("GET {FILTERED} HTTP/1.1\r\nhost: x\r\nx-xgate-key: {KEY}\r\nx-xgate-identity: main\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    wait_metric(&proxy, "xgate_stream_consumers{app=\"main\"", 2.0).await;
    // 24 MB, at a pace the fast consumer keeps up with (X's is 250 Posts/s): more than the
    // slow consumer's socket buffers and its queue hold.
    let filler = "x".repeat(4000);
    let n = 6000;
    for batch in 0..n / 8 {
        for i in batch * 8..batch * 8 + 8 {
            let line = json!({"data": {"id": i.to_string(), "text": filler}, "matching_rules": [{"id": all, "tag": "t"}]});
            fake.live().send(&line.to_string());
        }
        for i in batch * 8..batch * 8 + 8 {
            let m = fast.message().await;
            assert_eq!(m["data"]["id"], i.to_string(), "in order, none missing");
        }
    }
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(&m, "xgate_stream_consumers_dropped_total{app=\"main\""),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "xgate_stream_consumers{app=\"main\""), 1.0);
    assert!(m.contains("# TYPE xgate_stream_consumers_dropped_total counter"));
    assert!(m.contains(r#"reason="slow"} 1"#), "{m}");
    crate::support::logs::wait_for_line(|l| {
        l.contains("fell streams.consumer_buffer_bytes behind")
    })
    .await;
    drop(slow);
}

/// X drops the connection: the consumers stay connected, xgate connects again at once, and
/// messages resume.
#[tokio::test]
async fn consumers_stay_connected_while_xgate_reconnects() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake).toml()).await;
    add(proxy.addr, KEY, json!([{"value": "cats"}])).await;
    let cats = fake.live().id_of("cats");
    let mut c = Consumer::connect(proxy.addr, KEY, FILTERED).await.unwrap();
    wait_open(&fake, 1).await;
    fake.live().send(&message(1, &[&cats]));
    assert_eq!(c.message().await["data"]["id"], "1");
    fake.live().cut();
    wait_open(&fake, 2).await;
    fake.live().send(&message(2, &[&cats]));
    assert_eq!(c.message().await["data"]["id"], "2");
    let m = metrics(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "xgate_stream_reconnects_total{app=\"main\",cause=\"ended\""
        ),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "xgate_stream_upstream_up{app=\"main\""), 1.0);
    assert!(m.contains("# TYPE xgate_stream_reconnects_total counter"));
}

/// However many consumers, X sees one connection; past `max_consumers` a consumer gets 429;
/// the connection closes `linger` after the last one left, and the consumer's access record
/// says what it was delivered.
#[tokio::test]
async fn one_connection_for_many_consumers_closed_after_linger() {
    let fake = fake().await;
    let proxy = Proxy::start(
        &config(&fake)
            .section("streams", "max_consumers", 4)
            .section("streams", "linger", "200ms")
            .toml(),
    )
    .await;
    add(proxy.addr, KEY, json!([{"value": "cats"}])).await;
    add(proxy.addr, NARROW_KEY, json!([{"value": "dogs"}])).await;
    let cats = fake.live().id_of("cats");
    let mut consumers = Vec::new();
    for key in [KEY, KEY, NARROW_KEY, NARROW_KEY] {
        consumers.push(Consumer::connect(proxy.addr, key, FILTERED).await.unwrap());
    }
    wait_open(&fake, 1).await;
    let crowded = Consumer::connect(proxy.addr, KEY, FILTERED)
        .await
        .err()
        .unwrap();
    assert_eq!(crowded.status, 429);
    assert_eq!(crowded.kind(), Some("rate-limited"));
    fake.live().send(&message(7, &[&cats]));
    assert_eq!(consumers[0].message().await["data"]["id"], "7");
    let m = metrics(&proxy).await;
    for kind in [
        "xgate_stream_consumers gauge",
        "xgate_stream_upstream_up gauge",
        "xgate_stream_messages_total counter",
    ] {
        assert!(m.contains(&format!("# TYPE {kind}")), "no {kind} in\n{m}");
    }
    assert_eq!(
        metric(&m, "xgate_stream_consumers{app=\"main\""),
        4.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "xgate_stream_messages_total{client=\"backend\""),
        2.0,
        "both of backend's consumers"
    );
    assert_eq!(fake.live().counts(), (1, 0, 1));
    drop(consumers);
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.live().counts().2 == 0)
            .await,
        "closed after linger"
    );
    crate::support::logs::wait_for_line(|l| {
        l.contains("xgate::access")
            && l.contains("/2/tweets/search/stream")
            && l.contains("messages=1")
    })
    .await;
}

/// The sample stream has no rules: every consumer gets every message as X sent it.
#[tokio::test]
async fn the_sample_stream_goes_to_every_consumer_unchanged() {
    let fake = fake().await;
    fake.live().serve("/2/tweets/sample/stream");
    let proxy = Proxy::start(&config(&fake).toml()).await;
    let mut a = Consumer::connect(proxy.addr, KEY, "/2/tweets/sample/stream")
        .await
        .unwrap();
    let mut b = Consumer::connect(proxy.addr, NARROW_KEY, "/2/tweets/sample/stream")
        .await
        .unwrap();
    wait_open(&fake, 1).await;
    let line = r#"{"data":{"id":"42","text":"sampled"}}"#;
    fake.live().send(line);
    assert_eq!(a.line().await, format!("{line}\r\n"));
    assert_eq!(b.line().await, format!("{line}\r\n"));
    assert_eq!(fake.live().counts(), (1, 0, 1));
}

/// Sends messages matching `rules` (ids from `*next`) until `consumer` has one whose id is at
/// least `min` (bounded: 300 tries, 100 ms each).
async fn until_received(
    fake: &FakeX,
    consumer: &mut Consumer,
    rules: &[&str],
    next: &mut u32,
    min: u32,
) -> Value {
    for _ in 0..300 {
        fake.live().send(&message(*next, rules));
        *next += 1;
        while let Some(m) = consumer.try_message(Duration::from_millis(100)).await {
            if m["data"]["id"].as_str().unwrap().parse::<u32>().unwrap() >= min {
                return m;
            }
        }
    }
    panic!("no message from id {min} within 30 s");
}

/// With `[shared]`: three replicas' consumers share one connection at X, held by one replica
/// and relayed to the others through Redis, with the rules in PostgreSQL; the holder killed
/// (`kill -9`), another replica takes the stream over within seconds and the consumers of the
/// survivors keep their connections and get the messages again.
#[tokio::test]
async fn replicas_share_one_connection_and_another_takes_over_when_the_holder_dies() {
    let Some(redis) = crate::support::engines::redis_url().await else {
        return;
    };
    let Some(db) = crate::support::engines::Database::create().await else {
        return;
    };
    let fake = fake().await;
    let dir = crate::support::scratch("stream-replicas");
    std::fs::write(
        dir.join("proxy.toml"),
        config(&fake)
            .shared(&redis, &crate::support::engines::unique("xgs"))
            .section("store", "url", db.url.as_str())
            .toml(),
    )
    .unwrap();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let served = crate::support::binary::serve(&dir, &[], &[]).await;
        replicas.push((
            served.addr,
            crate::support::binary::KillOnDrop(served.child),
        ));
    }
    let addr = |i: usize| replicas[i].0;
    // Rules added on two replicas: one mapping, in the shared store.
    add(addr(0), KEY, json!([{"value": "cats", "tag": "b"}])).await;
    add(addr(1), NARROW_KEY, json!([{"value": "dogs", "tag": "n"}])).await;
    assert_eq!(fake.live().rules().len(), 2);
    let (cats, dogs) = (fake.live().id_of("cats"), fake.live().id_of("dogs"));

    let mut c0 = Consumer::connect(addr(0), KEY, FILTERED).await.unwrap();
    wait_open(&fake, 1).await;
    let mut c1 = Consumer::connect(addr(1), KEY, FILTERED).await.unwrap();
    let mut c2 = Consumer::connect(addr(2), NARROW_KEY, FILTERED)
        .await
        .unwrap();
    let mut next = 1;
    let both = [cats.as_str(), dogs.as_str()];
    let m = until_received(&fake, &mut c1, &both, &mut next, 0).await;
    assert_eq!(
        tags(&m),
        [(cats.clone(), Some("b".to_owned()))],
        "routed by replica 1's own view of the rules"
    );
    let m = until_received(&fake, &mut c2, &both, &mut next, 0).await;
    assert_eq!(tags(&m), [(dogs.clone(), Some("n".to_owned()))]);
    assert_eq!(
        c0.message().await["data"]["id"],
        "1",
        "the holder's own consumer"
    );
    assert_eq!(
        fake.live().counts(),
        (1, 0, 1),
        "one connection at X for three replicas"
    );

    // The holder dies.
    let (_, mut holder) = replicas.remove(0);
    holder.0.kill().unwrap();
    let _reaped = holder.0.wait();
    assert!(
        fake.wait_until(Duration::from_secs(30), |f| f.live().counts().0 == 2
            && f.live().counts().2 == 1)
            .await,
        "no replica took the stream over: {:?}",
        fake.live().counts()
    );
    let min = next + 10_000;
    next = min;
    let m = until_received(&fake, &mut c1, &both, &mut next, min).await;
    assert_eq!(tags(&m), [(cats.clone(), Some("b".to_owned()))]);
    until_received(&fake, &mut c2, &both, &mut next, min).await;
    assert_eq!(
        fake.live().counts(),
        (2, 0, 1),
        "never two connections at once"
    );
    drop(c0);
}

/// At shutdown a consumer's stream ends cleanly (after what was queued for it) and the App's
/// connection to X is let go, well within `shutdown_grace`.
#[tokio::test]
async fn shutdown_ends_consumers_and_lets_x_go() {
    let fake = fake().await;
    let proxy = Proxy::start(&config(&fake).toml()).await;
    add(proxy.addr, KEY, json!([{"value": "cats"}])).await;
    let cats = fake.live().id_of("cats");
    let mut c = Consumer::connect(proxy.addr, KEY, FILTERED).await.unwrap();
    wait_open(&fake, 1).await;
    fake.live().send(&message(1, &[&cats]));
    assert_eq!(c.message().await["data"]["id"], "1");
    let stopped = tokio::spawn(proxy.stop());
    let mut ended = false;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(10), c.body.frame()).await {
            Ok(None) => {
                ended = true;
                break;
            }
            Ok(Some(frame)) => {
                frame.expect("a clean end, not an error");
            }
            Err(_elapsed) => break,
        }
    }
    assert!(ended, "the consumer's stream did not end");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the proxy did not stop within 10 s")
        .unwrap()
        .unwrap();
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.live().counts().2 == 0)
            .await,
        "X's connection is still open"
    );
}

/// Another process holds the App's stream (here: a second xgate without `[shared]`): X answers
/// 429 `TooManyConnections`; xgate logs the fix, keeps its consumer connected and backs off.
#[tokio::test]
async fn too_many_connections_is_logged_with_its_fix_and_backed_off() {
    let fake = fake().await;
    // One store (the rules), two proxies that share nothing else.
    let dir = crate::support::scratch("too-many-connections");
    let first = Proxy::start_in(&config(&fake).toml(), &dir).await;
    add(first.addr, KEY, json!([{"value": "cats"}])).await;
    let _holder = Consumer::connect(first.addr, KEY, FILTERED).await.unwrap();
    wait_open(&fake, 1).await;
    let second = Proxy::start_in(&config(&fake).toml(), &dir).await;
    let _waiting = Consumer::connect(second.addr, KEY, FILTERED)
        .await
        .expect("the consumer stays while xgate backs off");
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.live().counts().1 == 1)
            .await,
        "{:?}",
        fake.live().counts()
    );
    crate::support::logs::wait_for_line(|l| {
        l.contains("TooManyConnections") && l.contains("DELETE /2/connections/all")
    })
    .await;
    assert_eq!(
        fake.live().counts(),
        (1, 1, 1),
        "one refused, no retry within a minute"
    );
}

/// X's partitioned streams are one connection per partition: consumers of one partition share
/// one, another partition gets its own.
#[tokio::test]
async fn each_partition_is_a_connection_of_its_own() {
    let fake = FakeX::start().await;
    fake.script(
        "/2/tweets/firehose/stream",
        crate::support::fake_x::Reply::stream(
            "{\"data\":{\"id\":\"1\"}}\r\n",
            "\r\n",
            Duration::from_millis(100),
            600,
            "",
        ),
    );
    let proxy = Proxy::start(&config(&fake).toml()).await;
    let path = |p: u8| format!("/2/tweets/firehose/stream?partition={p}");
    let mut a = Consumer::connect(proxy.addr, KEY, &path(1)).await.unwrap();
    assert_eq!(a.message().await["data"]["id"], "1");
    // A second consumer of partition 1 joins its connection (and gets what comes next).
    let _b = Consumer::connect(proxy.addr, NARROW_KEY, &path(1))
        .await
        .unwrap();
    let mut c = Consumer::connect(proxy.addr, KEY, &path(2)).await.unwrap();
    assert_eq!(
        c.message().await["data"]["id"],
        "1",
        "partition 2's own first message"
    );
    let targets: Vec<String> = fake
        .requests_to("/2/tweets/firehose/stream")
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(targets, [path(1), path(2)], "one connection per partition");
}

/// Every (re)connect draws from the endpoint's bucket: with one connect per 15 minutes, the
/// drop after the first connection is not followed by a second one (nothing reaches X), and
/// the consumer stays connected, on keep-alives.
#[tokio::test]
async fn every_connect_draws_from_the_endpoints_bucket() {
    let fake = fake().await;
    let proxy = Proxy::start(
        &config(&fake)
            .limit_override("GET /2/tweets/search/stream", &["1/15m"], &[])
            .toml(),
    )
    .await;
    add(proxy.addr, KEY, json!([{"value": "cats"}])).await;
    let cats = fake.live().id_of("cats");
    let mut c = Consumer::connect(proxy.addr, KEY, FILTERED).await.unwrap();
    wait_open(&fake, 1).await;
    fake.live().send(&message(1, &[&cats]));
    assert_eq!(c.message().await["data"]["id"], "1");
    fake.live().cut();
    // xgate's own keep-alive comes within 15 s; by then a reconnect would long have happened.
    let frame = tokio::time::timeout(Duration::from_secs(20), c.body.frame())
        .await
        .expect("no keep-alive within 20 s")
        .expect("the consumer's stream ended")
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), "\r\n");
    assert_eq!(
        fake.live().counts(),
        (1, 0, 0),
        "a second connect while the bucket is empty"
    );
    assert_eq!(
        fake.requests_to(FILTERED)
            .iter()
            .filter(|r| r.target == FILTERED)
            .count(),
        1
    );
}
