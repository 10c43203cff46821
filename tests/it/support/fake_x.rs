//! FakeX: an in-process stand-in for api.x.com on 127.0.0.1:0.
//!
//! It records every request (method, target, headers, body, trailers), checks Bearer tokens
//! and OAuth 1.0a signatures like X does (401 otherwise), and answers what the test scripted
//! for a path prefix: a status, headers and body, a delay before the head, or a slow stream.
//! It can serve TLS with a certificate from a CA made at test time. It also notices when a
//! request is abandoned by its client (the proxy), which is how tests see cancellation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use super::tls::TestCa;

pub const BEARER: &str = "AAAAfake-app-bearer%2Ftoken%3D";
pub const CONSUMER_KEY: &str = "fake-consumer-key";
pub const CONSUMER_SECRET: &str = "fake-consumer-secret+/=";
pub const ALICE_TOKEN: &str = "111-alice-access-token";
pub const ALICE_SECRET: &str = "alice token secret!*";
/// The PIN FakeX's 3-legged OAuth 1.0a flow accepts.
pub const PIN: &str = "9876543";
/// The request token of that flow, and its secret.
pub const REQUEST_TOKEN: &str = "req-token";
const REQUEST_SECRET: &str = "req secret&=";
/// The Bearer token FakeX's `/oauth2/token` hands out (`xgate bearer`).
pub const ISSUED_BEARER: &str = "AAAAissued%2Fbearer%3D";

/// What upstream saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
    /// How the credentials checked out.
    pub auth: Auth,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The credential a request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// A Bearer token; `valid` when it is the App's.
    Bearer {
        valid: bool,
    },
    /// OAuth 1.0a: the decoded header parameters, and whether the signature is right.
    Oauth1 {
        valid: bool,
        params: BTreeMap<String, String>,
    },
    Other,
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: ReplyBody,
    /// Wait this long before sending the head.
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub enum ReplyBody {
    Full(Bytes),
    /// `first`, then `tick` every `every`, `ticks` times, then `last`.
    Stream {
        first: Bytes,
        tick: Bytes,
        every: Duration,
        ticks: usize,
        last: Bytes,
    },
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ReplyBody::Full(Bytes::from(body.to_owned())),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn stream(first: &str, tick: &str, every: Duration, ticks: usize, last: &str) -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: ReplyBody::Stream {
                first: Bytes::from(first.to_owned()),
                tick: Bytes::from(tick.to_owned()),
                every,
                ticks,
                last: Bytes::from(last.to_owned()),
            },
            delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    scripts: Mutex<Vec<(String, Reply)>>,
    /// Targets whose request was abandoned before the answer was complete.
    cancelled: Mutex<Vec<String>>,
    /// Targets whose streamed body was sent to the end.
    streams_done: Mutex<Vec<String>>,
    oauth: Mutex<OauthState>,
    /// Connections accepted, and those of them that have ended.
    connections: Mutex<(usize, usize)>,
    changed: Notify,
}

/// FakeX's OAuth 2.0 authorization server: codes, a rotating refresh chain, access tokens.
#[derive(Debug)]
struct OauthState {
    /// Authorization code → the PKCE challenge it was issued for.
    codes: HashMap<String, String>,
    /// Refresh tokens that work now; each works once (rotation).
    live_refresh: HashSet<String>,
    /// User access tokens X accepts.
    valid_access: HashSet<String>,
    refresh_calls: usize,
    code_calls: usize,
    bearer_calls: usize,
    invalidated: Vec<String>,
    issued: usize,
    /// The next this many refresh calls answer 503.
    fail_next: usize,
    /// Every refresh call waits this long first.
    delay: Duration,
    expires_in: u64,
    /// How the last token request authenticated the client: `basic:ID` or `body:ID`.
    last_client_auth: Option<String>,
}

impl Default for OauthState {
    fn default() -> Self {
        Self {
            codes: HashMap::new(),
            live_refresh: HashSet::new(),
            valid_access: HashSet::new(),
            refresh_calls: 0,
            code_calls: 0,
            bearer_calls: 0,
            invalidated: Vec::new(),
            issued: 0,
            fail_next: 0,
            delay: Duration::ZERO,
            expires_in: 7200,
            last_client_auth: None,
        }
    }
}

/// A running fake.
#[derive(Debug)]
pub struct FakeX {
    pub addr: SocketAddr,
    pub tls: bool,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeX {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeX {
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// Serves TLS with a certificate for 127.0.0.1 and localhost from `ca`.
    pub async fn start_tls(ca: &TestCa) -> Self {
        let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]);
        let certs = vec![rustls::pki_types::CertificateDer::from(cert)];
        let key = rustls::pki_types::PrivateKeyDer::try_from(key).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start_inner(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let is_tls = tls.is_some();
        let sh = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                sh.connections.lock().unwrap().0 += 1;
                let conn_sh = Arc::clone(&sh);
                let sh = Arc::clone(&sh);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _counted = ConnectionEnd(conn_sh);
                    let svc = hyper::service::service_fn(move |req| {
                        let sh = Arc::clone(&sh);
                        async move { Ok::<_, Infallible>(serve(sh, addr, is_tls, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let _ignored =
                                builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                        Some(acc) => {
                            if let Ok(s) = acc.accept(stream).await {
                                let _ignored = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            tls: is_tls,
            shared,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.addr
        )
    }

    /// Answers requests whose target starts with `prefix` with `reply` (latest script wins).
    pub fn script(&self, prefix: &str, reply: Reply) {
        self.shared
            .scripts
            .lock()
            .unwrap()
            .push((prefix.to_owned(), reply));
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests whose target starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.target.starts_with(prefix))
            .collect()
    }

    pub fn stream_done(&self, target: &str) -> bool {
        self.shared
            .streams_done
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == target)
    }

    /// Connections accepted so far, and how many of them have ended.
    pub fn connections(&self) -> (usize, usize) {
        *self.shared.connections.lock().unwrap()
    }

    /// Waits (at most `limit`) until `pred` holds on the fake's records.
    pub async fn wait_until(&self, limit: Duration, pred: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.shared.changed.notified();
            if pred(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(self);
            }
        }
    }

    /// Makes `access` a valid user token and `refresh` a live refresh token (a pair stored
    /// by an earlier login).
    pub fn oauth_issue(&self, access: &str, refresh: &str) {
        let mut o = self.shared.oauth.lock().unwrap();
        o.valid_access.insert(access.to_owned());
        o.live_refresh.insert(refresh.to_owned());
    }

    /// Accepts authorization `code` once, for a verifier whose S256 is `challenge`.
    pub fn oauth_expect_code(&self, code: &str, challenge: &str) {
        self.shared
            .oauth
            .lock()
            .unwrap()
            .codes
            .insert(code.to_owned(), challenge.to_owned());
    }

    /// X no longer accepts `access` (as if revoked): requests with it get 401.
    pub fn oauth_revoke(&self, access: &str) {
        self.shared
            .oauth
            .lock()
            .unwrap()
            .valid_access
            .remove(access);
    }

    /// The next `n` refresh calls answer 503; every refresh waits `delay` first.
    pub fn oauth_trouble(&self, fail_next: usize, delay: Duration) {
        let mut o = self.shared.oauth.lock().unwrap();
        o.fail_next = fail_next;
        o.delay = delay;
    }

    /// (refresh calls, code exchanges, Bearer token requests).
    pub fn oauth_calls(&self) -> (usize, usize, usize) {
        let o = self.shared.oauth.lock().unwrap();
        (o.refresh_calls, o.code_calls, o.bearer_calls)
    }

    /// How the last token request authenticated its client.
    pub fn oauth_client_auth(&self) -> Option<String> {
        self.shared.oauth.lock().unwrap().last_client_auth.clone()
    }

    /// Bearer tokens invalidated through `/oauth2/invalidate_token`.
    pub fn invalidated(&self) -> Vec<String> {
        self.shared.oauth.lock().unwrap().invalidated.clone()
    }

    pub fn was_cancelled(&self, target: &str) -> bool {
        self.shared
            .cancelled
            .lock()
            .unwrap()
            .iter()
            .any(|t| t == target)
    }
}

/// Counts a connection as ended when its task finishes (or is dropped with the fake).
struct ConnectionEnd(Arc<Shared>);

impl Drop for ConnectionEnd {
    fn drop(&mut self) {
        self.0.connections.lock().unwrap().1 += 1;
        self.0.changed.notify_waiters();
    }
}

/// Marks a request cancelled if dropped before `done`.
struct CancelGuard {
    shared: Arc<Shared>,
    target: String,
    done: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .cancelled
                .lock()
                .unwrap()
                .push(self.target.clone());
            self.shared.changed.notify_waiters();
        }
    }
}

type FakeBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn serve(
    sh: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    req: Request<Incoming>,
) -> Response<FakeBody> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let mut guard = CancelGuard {
        shared: Arc::clone(&sh),
        target: target.clone(),
        done: false,
    };
    let (parts, body) = req.into_parts();
    let collected = body
        .collect()
        .await
        .map(|c| (c.trailers().cloned(), c.to_bytes()));
    let (trailers, body) = collected.unwrap_or((None, Bytes::new()));
    let is_form = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let url = format!("{}://{addr}{}", if tls { "https" } else { "http" }, target);
    let token_endpoint = [
        "/2/oauth2/token",
        "/oauth2/token",
        "/oauth2/invalidate_token",
        "/oauth/request_token",
        "/oauth/access_token",
    ]
    .contains(&parts.uri.path());
    let auth = if token_endpoint {
        Auth::Other
    } else {
        let user_tokens = sh.oauth.lock().unwrap().valid_access.clone();
        check_auth(
            parts.method.as_str(),
            &url,
            &parts.headers,
            is_form.then_some(&body[..]),
            &user_tokens,
        )
    };
    sh.requests.lock().unwrap().push(Recorded {
        method: parts.method.clone(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        trailers,
        auth: auth.clone(),
    });
    sh.changed.notify_waiters();

    let reply = {
        let scripts = sh.scripts.lock().unwrap();
        scripts
            .iter()
            .rev()
            .find(|(p, _)| target.starts_with(p.as_str()))
            .map(|(_, r)| r.clone())
    };
    let reply = if parts.uri.path().starts_with("/oauth/") {
        Some(oauth1_token_reply(parts.uri.path(), &url, &parts.headers))
    } else if token_endpoint {
        Some(token_reply(&sh, parts.uri.path(), &parts.headers, &body).await)
    } else {
        reply
    };
    let reply = match (&auth, reply) {
        (Auth::Bearer { valid: false } | Auth::Oauth1 { valid: false, .. }, _) => Reply::json(
            401,
            r#"{"title":"Unauthorized","type":"about:blank","status":401,"detail":"Unauthorized"}"#,
        ),
        (_, Some(r)) => r,
        (_, None) => Reply::json(200, r#"{"data":{"id":"20","text":"hello"}}"#)
            .header("x-rate-limit-limit", "900")
            .header("x-rate-limit-remaining", "899")
            .header("x-rate-limit-reset", "4102444800"),
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut builder = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (k, v) in &reply.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body: FakeBody = match reply.body {
        ReplyBody::Full(b) => {
            guard.done = true;
            http_body_util::Full::new(b).boxed()
        }
        ReplyBody::Stream {
            first,
            tick,
            every,
            ticks,
            last,
        } => {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            tokio::spawn(async move {
                let mut guard = guard;
                if tx.send(first).await.is_err() {
                    return;
                }
                for _ in 0..ticks {
                    tokio::time::sleep(every).await;
                    if tx.send(tick.clone()).await.is_err() {
                        return;
                    }
                }
                if tx.send(last).await.is_ok() {
                    guard.done = true;
                    guard
                        .shared
                        .streams_done
                        .lock()
                        .unwrap()
                        .push(guard.target.clone());
                    guard.shared.changed.notify_waiters();
                }
            });
            ChannelBody(rx).boxed()
        }
    };
    builder.body(body).unwrap()
}

/// A body fed by a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

// === credential checks, written independently of xgate's signer ===

fn check_auth(
    method: &str,
    url: &str,
    headers: &HeaderMap,
    form: Option<&[u8]>,
    user_tokens: &HashSet<String>,
) -> Auth {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Auth::None;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Auth::Bearer {
            valid: token == BEARER || token == ISSUED_BEARER || user_tokens.contains(token),
        };
    }
    if value.starts_with("OAuth ") {
        return match verify_oauth1(method, url, value, form, CONSUMER_SECRET, ALICE_SECRET) {
            Ok(params) => Auth::Oauth1 {
                valid: true,
                params,
            },
            Err(_) => Auth::Oauth1 {
                valid: false,
                params: parse_oauth_header(value),
            },
        };
    }
    Auth::Other
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&dec(k)).into_owned(),
                String::from_utf8_lossy(&dec(v)).into_owned(),
            )
        })
        .collect()
}

fn oauth_error(status: u16, error: &str) -> Reply {
    Reply::json(
        status,
        &format!(r#"{{"error":"{error}","error_description":"fake"}}"#),
    )
}

/// The client authentication of a token request: HTTP Basic, else `client_id` in the body.
fn client_auth(headers: &HeaderMap, form: &BTreeMap<String, String>) -> Option<String> {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    match basic {
        Some(pair) => Some(format!("basic:{pair}")),
        None => form.get("client_id").map(|id| format!("body:{id}")),
    }
}

/// X's 3-legged OAuth 1.0a steps, with signatures checked: the request token (consumer keys
/// only, `oauth_callback=oob`), then the access token (signed with the request token, with
/// `oauth_verifier` = [`PIN`]), which is alice's pair so the verifier accepts it afterwards.
fn oauth1_token_reply(path: &str, url: &str, headers: &HeaderMap) -> Reply {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let form = |status: u16, body: &str| Reply {
        status,
        headers: vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: ReplyBody::Full(Bytes::from(body.to_owned())),
        delay: Duration::ZERO,
    };
    let refused = || form(401, "error=invalid_signature");
    if path == "/oauth/request_token" {
        return match verify_oauth1("POST", url, header, None, CONSUMER_SECRET, "") {
            Ok(p)
                if p.get("oauth_callback").map(String::as_str) == Some("oob")
                    && !p.contains_key("oauth_token") =>
            {
                form(
                    200,
                    &format!(
                        "oauth_token={REQUEST_TOKEN}&oauth_token_secret={}&oauth_callback_confirmed=true",
                        enc(REQUEST_SECRET.as_bytes())
                    ),
                )
            }
            _ => refused(),
        };
    }
    match verify_oauth1("POST", url, header, None, CONSUMER_SECRET, REQUEST_SECRET) {
        Ok(p)
            if p.get("oauth_token").map(String::as_str) == Some(REQUEST_TOKEN)
                && p.get("oauth_verifier").map(String::as_str) == Some(PIN) =>
        {
            form(
                200,
                &format!(
                    "oauth_token={}&oauth_token_secret={}&user_id=111&screen_name=alice",
                    enc(ALICE_TOKEN.as_bytes()),
                    enc(ALICE_SECRET.as_bytes())
                ),
            )
        }
        _ => refused(),
    }
}

/// The token endpoints: OAuth 2.0 code exchange and refresh (rotating refresh tokens), the
/// App's Bearer token, and its invalidation.
async fn token_reply(sh: &Shared, path: &str, headers: &HeaderMap, body: &[u8]) -> Reply {
    let f = form(body);
    let auth = client_auth(headers, &f);
    if path == "/oauth2/token" || path == "/oauth2/invalidate_token" {
        let want = format!(
            "basic:{}:{}",
            enc(CONSUMER_KEY.as_bytes()),
            enc(CONSUMER_SECRET.as_bytes())
        );
        if auth.as_deref() != Some(want.as_str()) {
            return Reply::json(
                403,
                r#"{"errors":[{"code":99,"message":"Unable to verify your credentials"}]}"#,
            );
        }
        let mut o = sh.oauth.lock().unwrap();
        if path == "/oauth2/invalidate_token" {
            let token = f.get("access_token").cloned().unwrap_or_default();
            o.invalidated.push(token.clone());
            return Reply::json(200, &format!(r#"{{"access_token":"{token}"}}"#));
        }
        o.bearer_calls += 1;
        if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return Reply::json(403, r#"{"errors":[{"code":99,"message":"bad grant"}]}"#);
        }
        return Reply::json(
            200,
            &format!(r#"{{"token_type":"bearer","access_token":"{ISSUED_BEARER}"}}"#),
        );
    }
    let delay = {
        let mut o = sh.oauth.lock().unwrap();
        o.last_client_auth = auth;
        if f.get("grant_type").map(String::as_str) == Some("refresh_token") {
            o.refresh_calls += 1;
            sh.changed.notify_waiters();
            o.delay
        } else {
            Duration::ZERO
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut o = sh.oauth.lock().unwrap();
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            o.code_calls += 1;
            let Some(challenge) = f.get("code").and_then(|c| o.codes.remove(c)) else {
                return oauth_error(400, "invalid_grant");
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            let s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
            if s256 != challenge {
                return oauth_error(400, "invalid_grant");
            }
        }
        Some("refresh_token") => {
            if o.fail_next > 0 {
                o.fail_next -= 1;
                return Reply::json(503, r#"{"title":"Service Unavailable"}"#);
            }
            let rt = f.get("refresh_token").cloned().unwrap_or_default();
            if !o.live_refresh.remove(&rt) {
                return oauth_error(400, "invalid_grant");
            }
        }
        _ => return oauth_error(400, "unsupported_grant_type"),
    }
    o.issued += 1;
    let n = o.issued;
    let (access, refresh) = (format!("at-{n}"), format!("rt-{n}"));
    o.valid_access.insert(access.clone());
    o.live_refresh.insert(refresh.clone());
    Reply::json(
        200,
        &format!(
            r#"{{"token_type":"bearer","expires_in":{},"access_token":"{access}","refresh_token":"{refresh}","scope":"tweet.read users.read offline.access"}}"#,
            o.expires_in
        ),
    )
}

/// RFC 3986 unreserved stays, every other byte is %XX (upper case).
pub fn enc(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Form decoding: `+` is a space, `%XX` a byte.
pub fn dec(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn pairs(s: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), Vec::new()),
        })
        .collect()
}

pub fn parse_oauth_header(header: &str) -> BTreeMap<String, String> {
    header
        .trim_start_matches("OAuth ")
        .split(", ")
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let v = v.trim_matches('"');
            Some((
                String::from_utf8(dec(k)).unwrap(),
                String::from_utf8(dec(v)).unwrap(),
            ))
        })
        .collect()
}

/// Checks an OAuth 1.0a header the way X would; returns its parameters when valid.
pub fn verify_oauth1(
    method: &str,
    url: &str,
    header: &str,
    form: Option<&[u8]>,
    consumer_secret: &str,
    token_secret: &str,
) -> Result<BTreeMap<String, String>, String> {
    let params = parse_oauth_header(header);
    let signature = params
        .get("oauth_signature")
        .ok_or("no oauth_signature")?
        .clone();
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut all: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| *k != "oauth_signature" && *k != "realm")
        .map(|(k, v)| (enc(k.as_bytes()), enc(v.as_bytes())))
        .collect();
    for (k, v) in pairs(query) {
        all.push((enc(&k), enc(&v)));
    }
    if let Some(body) = form {
        for (k, v) in pairs(std::str::from_utf8(body).map_err(|e| e.to_string())?) {
            all.push((enc(&k), enc(&v)));
        }
    }
    all.sort();
    let joined: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let base_string = format!(
        "{}&{}&{}",
        method.to_uppercase(),
        enc(base.to_lowercase().as_bytes()),
        enc(joined.join("&").as_bytes())
    );
    use hmac::Mac;
    let key = format!(
        "{}&{}",
        enc(consumer_secret.as_bytes()),
        enc(token_secret.as_bytes())
    );
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(base_string.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if expected == signature {
        Ok(params)
    } else {
        Err(format!("signature mismatch over {base_string}"))
    }
}

#[test]
fn verifier_accepts_x_published_example_and_rejects_tampering() {
    let header = "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", oauth_signature=\"Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D\", oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"1318622958\", oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", oauth_version=\"1.0\"";
    let url = "https://api.x.com/1.1/statuses/update.json?include_entities=true";
    let body = b"status=Hello%20Ladies%20%2b%20Gentlemen%2c%20a%20signed%20OAuth%20request%21";
    let cs = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";
    let ts = "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE";
    assert!(verify_oauth1("POST", url, header, Some(body), cs, ts).is_ok());
    assert!(verify_oauth1("POST", url, header, Some(b"status=Hello"), cs, ts).is_err());
    assert!(verify_oauth1("GET", url, header, Some(body), cs, ts).is_err());
    assert!(verify_oauth1("POST", url, header, Some(body), cs, "wrong").is_err());
}
