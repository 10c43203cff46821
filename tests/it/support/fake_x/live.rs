//! FakeX's filtered stream and its rules, as X behaves (x-api-v2.md sections 6 and 10): one
//! connection per App (a second gets 429 `TooManyConnections`), 409 when there are no rules,
//! rules with ids X chooses, `DuplicateRule` for a value it holds already. The test writes the
//! stream's lines ([`Live::send`]) and cuts connections ([`Live::cut`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A rule at FakeX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XRule {
    pub id: String,
    pub value: String,
    pub tag: Option<String>,
}

/// The live stream and rules of one fake.
#[derive(Debug, Default)]
pub struct Live {
    rules: Mutex<Vec<XRule>>,
    next_id: AtomicUsize,
    /// Open stream connections.
    senders: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
    /// Stream connections opened (200) and refused.
    connects: AtomicUsize,
    refused: AtomicUsize,
    open: Arc<AtomicUsize>,
    /// The stream paths served live (others are scripted); the rules path alone serves the
    /// rules without a live stream.
    pub paths: Mutex<Vec<String>>,
    /// Rule calls seen: (method, body).
    pub rule_calls: Mutex<Vec<(String, String)>>,
}

/// A live stream body: what the test sends, until it cuts.
pub struct LiveBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    open: Arc<AtomicUsize>,
}

impl Drop for LiveBody {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl http_body::Body for LiveBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// What FakeX answers a stream connect.
pub enum Connect {
    Up(LiveBody),
    Refused(u16, String),
}

impl Live {
    /// Serves `path` live.
    pub fn serve(&self, path: &str) {
        self.paths.lock().unwrap().push(path.to_owned());
    }

    /// Whether the rules endpoints are served (they are with a live filtered stream).
    pub fn rules_served(&self) -> bool {
        self.is_live("/2/tweets/search/stream/rules") || self.is_live("/2/tweets/search/stream")
    }

    pub fn is_live(&self, path: &str) -> bool {
        self.paths.lock().unwrap().iter().any(|p| p == path)
    }

    /// A connect to the stream at `path`.
    pub fn connect(&self, path: &str) -> Connect {
        let filtered = path == "/2/tweets/search/stream";
        if self.open.load(Ordering::SeqCst) > 0 {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Connect::Refused(
                429,
                json!({"title": "ConnectionException", "detail": "This stream is currently at the maximum allowed connection limit.",
                       "connection_issue": "TooManyConnections", "type": "https://api.x.com/2/problems/streaming-connection"})
                    .to_string(),
            );
        }
        if filtered && self.rules.lock().unwrap().is_empty() {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Connect::Refused(
                409,
                json!({"title": "ConnectionException", "detail": "This stream has no rules.",
                       "type": "https://api.x.com/2/problems/streaming-connection"})
                .to_string(),
            );
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.senders.lock().unwrap().push(tx);
        self.connects.fetch_add(1, Ordering::SeqCst);
        self.open.fetch_add(1, Ordering::SeqCst);
        Connect::Up(LiveBody {
            rx,
            open: Arc::clone(&self.open),
        })
    }

    /// Writes `line` (and `\r\n`) to every open stream connection.
    pub fn send(&self, line: &str) {
        let bytes = Bytes::from(format!("{line}\r\n"));
        self.senders
            .lock()
            .unwrap()
            .retain(|tx| tx.send(bytes.clone()).is_ok());
    }

    /// Ends every open stream connection.
    pub fn cut(&self) {
        self.senders.lock().unwrap().clear();
    }

    /// (connects answered 200, connects refused, connections open now).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.connects.load(Ordering::SeqCst),
            self.refused.load(Ordering::SeqCst),
            self.open.load(Ordering::SeqCst),
        )
    }

    pub fn rules(&self) -> Vec<XRule> {
        self.rules.lock().unwrap().clone()
    }

    /// X's id of the rule of `value`.
    pub fn id_of(&self, value: &str) -> String {
        let rules = self.rules.lock().unwrap();
        let found = rules.iter().find(|r| r.value == value);
        assert!(found.is_some(), "no rule {value:?} at FakeX");
        found.unwrap().id.clone()
    }

    /// Forgets a rule (as if deleted by another tool).
    pub fn forget(&self, value: &str) {
        self.rules.lock().unwrap().retain(|r| r.value != value);
    }

    /// Adds a rule behind xgate's back.
    pub fn add_foreign(&self, value: &str) -> String {
        let id = self.fresh_id();
        self.rules.lock().unwrap().push(XRule {
            id: id.clone(),
            value: value.to_owned(),
            tag: None,
        });
        id
    }

    fn fresh_id(&self) -> String {
        rule_id(self.next_id.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// `GET` or `POST /2/tweets/search/stream/rules`: (status, body).
    pub fn rules_call(&self, method: &str, query: &str, body: &[u8]) -> (u16, String) {
        self.rule_calls.lock().unwrap().push((
            method.to_owned(),
            String::from_utf8_lossy(body).into_owned(),
        ));
        let sent = "2026-12-02T10:00:00.000Z";
        let mut rules = self.rules.lock().unwrap();
        if method == "GET" {
            let data: Vec<Value> = rules.iter().map(rule_json).collect();
            let mut out = json!({"meta": {"sent": sent, "result_count": data.len()}});
            if !data.is_empty() {
                out["data"] = Value::Array(data);
            }
            return (200, out.to_string());
        }
        let dry_run = query.contains("dry_run=true");
        let Ok(req) = serde_json::from_slice::<Value>(body) else {
            return (400, json!({"title": "Invalid Request", "detail": "body", "type": "https://api.x.com/2/problems/invalid-request"}).to_string());
        };
        if let Some(add) = req.get("add").and_then(Value::as_array) {
            let (mut data, mut errors) = (Vec::new(), Vec::new());
            for r in add {
                let value = r["value"].as_str().unwrap_or_default().to_owned();
                if value.contains("INVALID") {
                    errors.push(json!({"value": value, "title": "UnprocessableEntity", "details": ["invalid rule"], "type": "https://api.x.com/2/problems/invalid-rules"}));
                } else if let Some(existing) = rules.iter().find(|x| x.value == value) {
                    errors.push(json!({"value": value, "id": existing.id, "title": "DuplicateRule", "type": "https://api.x.com/2/problems/duplicate-rules"}));
                } else {
                    let rule = XRule {
                        id: self.fresh_id(),
                        value,
                        tag: r.get("tag").and_then(Value::as_str).map(str::to_owned),
                    };
                    data.push(rule_json(&rule));
                    if !dry_run {
                        rules.push(rule);
                    }
                }
            }
            let mut out = json!({"meta": {"sent": sent, "summary": {"created": data.len(), "not_created": errors.len(), "valid": data.len(), "invalid": errors.len()}}});
            if !data.is_empty() {
                out["data"] = Value::Array(data);
            }
            if !errors.is_empty() {
                out["errors"] = Value::Array(errors);
            }
            return (201, out.to_string());
        }
        if let Some(ids) = req.pointer("/delete/ids").and_then(Value::as_array) {
            let ids: Vec<&str> = ids.iter().filter_map(Value::as_str).collect();
            let before = rules.len();
            if !dry_run {
                rules.retain(|r| !ids.contains(&r.id.as_str()));
            }
            let deleted = before - rules.len();
            return (
                200,
                json!({"meta": {"sent": sent, "summary": {"deleted": deleted, "not_deleted": ids.len() - deleted}}}).to_string(),
            );
        }
        (400, json!({"title": "Invalid Request", "detail": "no add or delete", "type": "https://api.x.com/2/problems/invalid-request"}).to_string())
    }
}

/// The id FakeX gives the `n`-th rule it creates (from 1).
pub fn rule_id(n: usize) -> String {
    format!("17{n:017}")
}

fn rule_json(r: &XRule) -> Value {
    let mut v = json!({"id": r.id, "value": r.value});
    if let Some(tag) = &r.tag {
        v["tag"] = tag.clone().into();
    }
    v
}
