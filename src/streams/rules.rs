//! Filtered-stream rules owned by clients (CONTRACT section 12 rule 2).
//!
//! Owns [`Rules`]: per App, the book of every client's rules (the store's rows, read once and
//! reconciled with X's `GET /2/tweets/search/stream/rules`), the routes the App's channel reads,
//! and answering `GET` and `POST /2/tweets/search/stream/rules` for one client in X's shapes.
//! One rule at X per distinct value, with a tag xgate chooses (`xgate:` and 12 hex digits of
//! the value's SHA-256); each client that added the value refers to it with its own tag; the
//! rule is deleted at X when no client refers to it.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::XApi;
use super::channel::{RouteTable, Routes};
use crate::body::ProxyBody;
use crate::clock::Clock;
use crate::error::{ProxyError, UpstreamFailure};
use crate::identity::{Identities, IdentityId};
use crate::store::{RuleRow, TokenStore};

/// The filtered stream's rules.
pub const RULES_PATH: &str = "/2/tweets/search/stream/rules";

/// One App's rules, as the store holds them.
#[derive(Debug, Default)]
pub struct Book {
    rows: Vec<RuleRow>,
    /// Read from the store and reconciled with X.
    ready: bool,
}

impl Book {
    fn of<'b>(&'b self, client: &'b str) -> impl Iterator<Item = &'b RuleRow> {
        self.rows.iter().filter(move |r| r.client == client)
    }

    fn x_rule(&self, value: &str) -> Option<&RuleRow> {
        self.rows.iter().find(|r| r.value == value)
    }

    fn distinct_x_rules(&self) -> usize {
        self.rows
            .iter()
            .map(|r| &r.x_id)
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn routes(&self) -> Routes {
        Routes::new(
            self.rows
                .iter()
                .map(|r| (r.x_id.as_str(), r.client.as_str(), r.tag.as_deref())),
        )
    }
}

/// The clients' rules of every App.
#[derive(Debug)]
pub struct Rules {
    x: Arc<XApi>,
    store: Arc<dyn TokenStore>,
    identities: Arc<Identities>,
    max_rules: usize,
    clock: Arc<dyn Clock>,
    /// With `[shared]`: rules changes are announced, and the book is read again from the
    /// shared store before each use (another replica may have changed it).
    relay: Option<Arc<super::relay::Relay>>,
    books: Mutex<HashMap<IdentityId, Arc<tokio::sync::Mutex<Book>>>>,
    routes: Mutex<HashMap<IdentityId, Arc<RouteTable>>>,
}

/// The tag xgate gives the rule of `value` at X.
pub fn x_tag(value: &str) -> String {
    let digest = sha2::Sha256::digest(value.as_bytes());
    let mut tag = String::from("xgate:");
    for b in digest.iter().take(6) {
        let _infallible = write!(tag, "{b:02x}");
    }
    tag
}

/// `POST /2/tweets/search/stream/rules`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    #[serde(default)]
    add: Option<Vec<Add>>,
    #[serde(default)]
    delete: Option<Delete>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Add {
    value: String,
    #[serde(default)]
    tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Delete {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    values: Vec<String>,
}

/// `true`/`false` of a query parameter (X's booleans).
fn flag(query: &str, name: &str) -> bool {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .any(|(k, v)| k == name && v.eq_ignore_ascii_case("true"))
}

fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// X's timestamp shape for `meta.sent`.
fn sent_at(now: std::time::Duration) -> String {
    let secs = now.as_secs();
    let (y, m, d) = crate::clock::civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

fn answer(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// X's problem shape, for a request xgate answers itself.
fn invalid(detail: &str) -> Response<ProxyBody> {
    answer(
        StatusCode::BAD_REQUEST,
        &json!({
            "errors": [{"message": detail, "title": "Invalid Request", "detail": detail,
                        "type": "https://api.x.com/2/problems/invalid-request"}],
            "title": "Invalid Request",
            "detail": detail,
            "type": "https://api.x.com/2/problems/invalid-request",
        }),
    )
}

fn store_failed(e: &crate::store::StoreError) -> ProxyError {
    ProxyError::UpstreamUnavailable {
        failure: UpstreamFailure::Reset,
        detail: format!("the stream rules could not be stored: {e}"),
    }
}

/// X's answer to a rules call that is not a success, as a failure of the proxy.
fn x_refused(status: StatusCode, body: &[u8]) -> ProxyError {
    ProxyError::UpstreamUnavailable {
        failure: UpstreamFailure::Reset,
        detail: format!(
            "X answered {} to a stream rules call: {}",
            status.as_u16(),
            String::from_utf8_lossy(body.get(..body.len().min(300)).unwrap_or_default())
        ),
    }
}

/// The rules X reports (`data[]`) of an answer.
fn x_rules(body: &Value) -> Vec<(String, String, Option<String>)> {
    body.get("data")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .filter_map(|r| {
                    Some((
                        r.get("id")?.as_str()?.to_owned(),
                        r.get("value")?.as_str()?.to_owned(),
                        r.get("tag").and_then(Value::as_str).map(str::to_owned),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Rules {
    /// No book read yet.
    pub fn new(
        x: Arc<XApi>,
        store: Arc<dyn TokenStore>,
        identities: Arc<Identities>,
        max_rules: usize,
        clock: Arc<dyn Clock>,
        relay: Option<Arc<super::relay::Relay>>,
    ) -> Self {
        Self {
            x,
            store,
            identities,
            max_rules,
            clock,
            relay,
            books: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// `app`'s routes (its channel reads them for every message).
    pub fn routes(&self, app: IdentityId) -> Arc<RouteTable> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(routes.entry(app).or_default())
    }

    /// `app`'s book, read from the store and reconciled with X's rules the first time.
    pub async fn book(
        &self,
        app: IdentityId,
    ) -> Result<tokio::sync::OwnedMutexGuard<Book>, ProxyError> {
        let book = {
            let mut books = self.books.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(books.entry(app).or_default())
        };
        let mut book = book.lock_owned().await;
        if !book.ready || self.relay.is_some() {
            let name = Arc::clone(&self.identities.get(app).name);
            let rows = self
                .store
                .stream_rules(&name)
                .await
                .map_err(|e| store_failed(&e))?;
            book.rows = rows;
            if !book.ready {
                self.reconcile(app, &name, &mut book).await?;
                book.ready = true;
            }
            self.routes(app).store(book.routes());
        }
        Ok(book)
    }

    /// Reads `app`'s rules from the store again (another replica changed them).
    pub async fn reload(&self, app: IdentityId) {
        if let Err(e) = self.book(app).await {
            tracing::warn!(app = %self.identities.get(app).name, error = %e, "stream rules not read again after another replica changed them");
        }
    }

    /// Whether the store holds rules of `app` (a store that cannot be read: as if it did, so
    /// the reconciliation reports it).
    pub async fn has_stored(&self, app: IdentityId) -> bool {
        let name = &self.identities.get(app).name;
        self.store
            .stream_rules(name)
            .await
            .map_or(true, |rows| !rows.is_empty())
    }

    /// Whether `client` has a rule on `app`'s filtered stream.
    pub async fn has_rules(&self, app: IdentityId, client: &str) -> Result<bool, ProxyError> {
        let book = self.book(app).await?;
        Ok(book.of(client).next().is_some())
    }

    /// Compares the stored rules with X's: a stored rule X no longer has is added again (its
    /// clients still want it; its id changes), a rule at X that xgate does not know is left
    /// alone and reported.
    async fn reconcile(
        &self,
        app: IdentityId,
        name: &str,
        book: &mut Book,
    ) -> Result<(), ProxyError> {
        let mut at_x = Vec::new();
        let mut token: Option<String> = None;
        // X's pages hold up to 1,000 rules; 30 pages is past any App's rule limit.
        for _ in 0..30 {
            let target = match &token {
                None => format!("{RULES_PATH}?max_results=1000"),
                Some(t) => format!("{RULES_PATH}?max_results=1000&pagination_token={t}"),
            };
            let (status, body) = self.x.call_small(app, Method::GET, &target, None).await?;
            if !status.is_success() {
                return Err(x_refused(status, &body));
            }
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            at_x.extend(x_rules(&body));
            token = body
                .pointer("/meta/next_token")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        let known: BTreeSet<&str> = book.rows.iter().map(|r| r.x_id.as_str()).collect();
        let unknown: Vec<&str> = at_x
            .iter()
            .map(|(id, _, _)| id.as_str())
            .filter(|id| !known.contains(id))
            .collect();
        if !unknown.is_empty() {
            tracing::warn!(app = name, rules = unknown.len(), ids = %unknown.join(","), "X holds filtered-stream rules that were not added through xgate: left alone, and their matches go to no consumer");
        }
        let present: BTreeSet<&str> = at_x.iter().map(|(id, _, _)| id.as_str()).collect();
        let mut lost: Vec<(String, String, String)> = book
            .rows
            .iter()
            .filter(|r| !present.contains(r.x_id.as_str()))
            .map(|r| (r.x_id.clone(), r.value.clone(), r.x_tag.clone()))
            .collect();
        lost.sort();
        lost.dedup();
        if lost.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            app = name,
            rules = lost.len(),
            "stored filtered-stream rules are missing at X: adding them again"
        );
        let add: Vec<Value> = lost
            .iter()
            .map(|(_, value, tag)| json!({"value": value, "tag": tag}))
            .collect();
        let (status, body) = self.post_to_x(app, &json!({ "add": add }), false).await?;
        if !status.is_success() {
            return Err(x_refused(status, &body));
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let created: HashMap<String, String> = x_rules(&body)
            .into_iter()
            .map(|(id, value, _)| (value, id))
            .collect();
        let mut add_rows = Vec::new();
        let mut remove = Vec::new();
        for row in &mut book.rows {
            let Some(new_id) = created.get(&row.value) else {
                continue;
            };
            if *new_id == row.x_id {
                continue;
            }
            remove.push((row.client.clone(), row.x_id.clone()));
            row.x_id.clone_from(new_id);
            add_rows.push(row.clone());
        }
        self.store
            .change_stream_rules(name, &add_rows, &remove)
            .await
            .map_err(|e| store_failed(&e))?;
        Ok(())
    }

    /// `POST /2/tweets/search/stream/rules` at X as `app` (with `dry_run=true` when asked).
    async fn post_to_x(
        &self,
        app: IdentityId,
        body: &Value,
        dry_run: bool,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        let target = if dry_run {
            format!("{RULES_PATH}?dry_run=true")
        } else {
            RULES_PATH.to_owned()
        };
        let body = Some(Bytes::from(body.to_string()));
        self.x.call_small(app, Method::POST, &target, body).await
    }

    /// `GET` or `POST /2/tweets/search/stream/rules` for `client` on `app`'s stream.
    pub async fn handle(
        &self,
        app: IdentityId,
        client: &str,
        method: &Method,
        query: &str,
        body: &[u8],
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if *method == Method::GET {
            let book = self.book(app).await?;
            return Ok(list(&book, client, query, self.clock.unix_time()));
        }
        let delete_all = flag(query, "delete_all");
        let update: Update = if body.iter().all(u8::is_ascii_whitespace) && delete_all {
            Update::default()
        } else {
            match serde_json::from_slice(body) {
                Ok(u) => u,
                Err(e) => {
                    return Ok(invalid(&format!(
                        "the request body is not a rules update: {e}"
                    )));
                }
            }
        };
        let dry_run = flag(query, "dry_run");
        let mut book = self.book(app).await?;
        let resp = match (update.add, update.delete, delete_all) {
            (Some(add), None, false) => self.add(app, &mut book, client, add, dry_run).await?,
            (None, Some(delete), false) => {
                self.delete(app, &mut book, client, delete, dry_run).await?
            }
            (None, None, true) => {
                let ids = book.of(client).map(|r| r.x_id.clone()).collect();
                let delete = Delete {
                    ids,
                    values: Vec::new(),
                };
                self.delete(app, &mut book, client, delete, dry_run).await?
            }
            _ => {
                return Ok(invalid(
                    "give exactly one of add, delete or delete_all=true",
                ));
            }
        };
        if !dry_run {
            self.routes(app).store(book.routes());
            if let Some(relay) = &self.relay {
                relay.rules_changed(&self.identities.get(app).name).await;
            }
        }
        Ok(resp)
    }

    async fn add(
        &self,
        app: IdentityId,
        book: &mut Book,
        client: &str,
        add: Vec<Add>,
        dry_run: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let name = Arc::clone(&self.identities.get(app).name);
        let mut data = Vec::new();
        let mut errors = Vec::new();
        let mut new_rows = Vec::new();
        let mut to_send: Vec<&Add> = Vec::new();
        let mut invalid = 0u64;
        for rule in &add {
            if let Some(own) = book.of(client).find(|r| r.value == rule.value) {
                errors.push(
                    json!({"value": rule.value, "id": own.x_id, "title": "DuplicateRule",
                                   "type": "https://api.x.com/2/problems/duplicate-rules"}),
                );
                invalid += 1;
            } else if let Some(other) = book.x_rule(&rule.value) {
                // Another client's rule at X: this client refers to it too.
                data.push(rule_json(&other.x_id, &rule.value, rule.tag.as_deref()));
                new_rows.push(RuleRow {
                    client: client.to_owned(),
                    x_id: other.x_id.clone(),
                    value: rule.value.clone(),
                    x_tag: other.x_tag.clone(),
                    tag: rule.tag.clone(),
                });
            } else if !to_send.iter().any(|r| r.value == rule.value) {
                to_send.push(rule);
            }
        }
        let at_x = book.distinct_x_rules();
        if at_x + to_send.len() > self.max_rules {
            let detail = format!(
                "Rule cap exceeded: this App has {at_x} rules at X and may have {} (streams.max_rules); {} more were asked for.",
                self.max_rules,
                to_send.len()
            );
            return Ok(answer(
                StatusCode::BAD_REQUEST,
                &json!({
                    "errors": [{"title": "RulesCapExceeded", "detail": detail, "message": detail,
                                "type": "https://api.x.com/2/problems/rule-cap"}],
                    "meta": {"sent": sent_at(self.clock.unix_time()), "summary": {"created": 0, "not_created": add.len(), "valid": 0, "invalid": add.len()}},
                }),
            ));
        }
        if !to_send.is_empty() {
            let body = json!({"add": to_send.iter().map(|r| json!({"value": r.value, "tag": x_tag(&r.value)})).collect::<Vec<_>>()});
            let (status, answered) = self.post_to_x(app, &body, dry_run).await?;
            if !status.is_success() {
                // X refused the whole request (an invalid body, a rule cap of its own): its
                // answer, as it is.
                return Ok(raw_answer(status, answered));
            }
            let answered: Value = serde_json::from_slice(&answered).unwrap_or(Value::Null);
            let created: HashMap<String, String> = x_rules(&answered)
                .into_iter()
                .map(|(id, value, _)| (value, id))
                .collect();
            for rule in &to_send {
                if let Some(id) = created.get(&rule.value) {
                    data.push(rule_json(id, &rule.value, rule.tag.as_deref()));
                    new_rows.push(RuleRow {
                        client: client.to_owned(),
                        x_id: id.clone(),
                        value: rule.value.clone(),
                        x_tag: x_tag(&rule.value),
                        tag: rule.tag.clone(),
                    });
                }
            }
            for e in answered
                .get("errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let value = e.get("value").and_then(Value::as_str);
                let duplicate_id = e
                    .get("id")
                    .and_then(Value::as_str)
                    .filter(|_| e.get("title").and_then(Value::as_str) == Some("DuplicateRule"));
                match (value, duplicate_id) {
                    // Another replica added the value at X a moment ago: refer to its rule.
                    (Some(value), Some(id)) => {
                        let tag = to_send
                            .iter()
                            .find(|r| r.value == value)
                            .and_then(|r| r.tag.clone());
                        data.push(rule_json(id, value, tag.as_deref()));
                        new_rows.push(RuleRow {
                            client: client.to_owned(),
                            x_id: id.to_owned(),
                            value: value.to_owned(),
                            x_tag: x_tag(value),
                            tag,
                        });
                    }
                    _ => {
                        invalid += 1;
                        errors.push(e.clone());
                    }
                }
            }
        }
        if !dry_run && !new_rows.is_empty() {
            self.store
                .change_stream_rules(&name, &new_rows, &[])
                .await
                .map_err(|e| store_failed(&e))?;
            book.rows.extend(new_rows.iter().cloned());
        }
        let created = data.len();
        let mut body = json!({
            "meta": {"sent": sent_at(self.clock.unix_time()), "summary": {
                "created": created,
                "not_created": add.len().saturating_sub(created),
                "valid": created,
                "invalid": invalid,
            }},
        });
        if !data.is_empty() {
            set(&mut body, &["data"], Value::Array(data));
        }
        if !errors.is_empty() {
            set(&mut body, &["errors"], Value::Array(errors));
        }
        let status = if created > 0 && !dry_run {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok(answer(status, &body))
    }

    async fn delete(
        &self,
        app: IdentityId,
        book: &mut Book,
        client: &str,
        delete: Delete,
        dry_run: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let name = Arc::clone(&self.identities.get(app).name);
        let mut remove: Vec<(String, String)> = Vec::new();
        let mut errors = Vec::new();
        for id in &delete.ids {
            match book.of(client).find(|r| r.x_id == *id) {
                Some(r) => remove.push((client.to_owned(), r.x_id.clone())),
                None => errors.push(not_found("id", id)),
            }
        }
        for value in &delete.values {
            match book.of(client).find(|r| r.value == *value) {
                Some(r) => remove.push((client.to_owned(), r.x_id.clone())),
                None => errors.push(not_found("value", value)),
            }
        }
        remove.sort();
        remove.dedup();
        // X's rules no other client refers to go at X.
        let orphans: Vec<String> = remove
            .iter()
            .filter(|(_, id)| {
                !book
                    .rows
                    .iter()
                    .any(|r| r.x_id == *id && r.client != client)
            })
            .map(|(_, id)| id.clone())
            .collect();
        if !orphans.is_empty() {
            let body = json!({"delete": {"ids": orphans}});
            let (status, answered) = self.post_to_x(app, &body, dry_run).await?;
            if !status.is_success() {
                return Ok(raw_answer(status, answered));
            }
        }
        if !dry_run && !remove.is_empty() {
            self.store
                .change_stream_rules(&name, &[], &remove)
                .await
                .map_err(|e| store_failed(&e))?;
            book.rows
                .retain(|r| !(r.client == client && remove.iter().any(|(_, id)| *id == r.x_id)));
        }
        let mut body = json!({
            "meta": {"sent": sent_at(self.clock.unix_time()), "summary": {
                "deleted": remove.len(),
                "not_deleted": errors.len(),
            }},
        });
        if !errors.is_empty() {
            set(&mut body, &["errors"], Value::Array(errors));
        }
        Ok(answer(StatusCode::OK, &body))
    }
}

/// Sets the member at `path` of the object `v` (its parents exist).
fn set(v: &mut Value, path: &[&str], value: impl Into<Value>) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = v;
    for p in parents {
        let Some(next) = at.get_mut(*p) else { return };
        at = next;
    }
    if let Some(o) = at.as_object_mut() {
        o.insert((*last).to_owned(), value.into());
    }
}

fn rule_json(id: &str, value: &str, tag: Option<&str>) -> Value {
    let mut rule = json!({"id": id, "value": value});
    if let Some(tag) = tag {
        set(&mut rule, &["tag"], tag);
    }
    rule
}

fn not_found(what: &str, which: &str) -> Value {
    let detail = format!("No rule of this client with {what} {which}.");
    json!({what: which, "title": "Not Found Error", "detail": detail, "message": detail,
           "type": "https://api.x.com/2/problems/resource-not-found"})
}

fn raw_answer(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `GET …/rules` for `client`: its rules (with `ids`), a page of `max_results` at
/// `pagination_token`.
fn list(book: &Book, client: &str, query: &str, now: std::time::Duration) -> Response<ProxyBody> {
    let ids: Option<BTreeSet<&str>> = param(query, "ids").map(|v| {
        v.split([',', ' '])
            .flat_map(|s| s.split("%2C"))
            .filter(|s| !s.is_empty())
            .collect()
    });
    let max = match param(query, "max_results").map(str::parse::<usize>) {
        None => 1000,
        Some(Ok(n @ 1..=1000)) => n,
        Some(_) => return invalid("max_results must be a number from 1 to 1000"),
    };
    let start = match param(query, "pagination_token").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return invalid("pagination_token is not one this proxy gave"),
    };
    let mine: Vec<&RuleRow> = book
        .of(client)
        .filter(|r| ids.as_ref().is_none_or(|ids| ids.contains(r.x_id.as_str())))
        .collect();
    let page: Vec<Value> = mine
        .iter()
        .skip(start)
        .take(max)
        .map(|r| rule_json(&r.x_id, &r.value, r.tag.as_deref()))
        .collect();
    let mut body = json!({"meta": {"sent": sent_at(now), "result_count": page.len()}});
    if start + page.len() < mine.len() {
        set(
            &mut body,
            &["meta", "next_token"],
            format!("{:016}", start + page.len()),
        );
    }
    if !page.is_empty() {
        set(&mut body, &["data"], Value::Array(page));
    }
    answer(StatusCode::OK, &body)
}
