//! FakeX: an in-process stand-in for api.x.com on 127.0.0.1:0.
//!
//! Three parts: this module is the API server (recording, scripts, streams, cancellation);
//! [`oauth`] holds X's token endpoints (OAuth 2.0 code and refresh with rotating refresh
//! tokens, app-only Bearer, 3-legged OAuth 1.0a); [`verify`] checks credentials the way X
//! does, written independently of xgate's signer. A panic in a handler (a broken fake or a
//! failed assertion in it) is kept and raised again when the fake is dropped, so the test
//! fails with it instead of seeing a dead connection.
//!
//! It records every request (method, target, headers, body, trailers), checks Bearer tokens
//! and OAuth 1.0a signatures like X does (401 otherwise), and answers what the test scripted
//! for a path prefix: a status, headers and body, a delay before the head, or a slow stream.
//! It can serve TLS with a certificate from a CA made at test time. It also notices when a
//! request is abandoned by its client (the proxy), which is how tests see cancellation.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

use super::tls::TestCa;

pub mod live;
mod oauth;
mod verify;

use oauth::{OauthState, oauth1_token_reply, token_reply};
use verify::check_auth;
pub use verify::{dec, verify_oauth1};

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
    /// The HTTP version the request came in (HTTP/2 when ALPN picked it).
    pub version: http::Version,
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

/// A scripted answer and the requests it is for.
#[derive(Debug)]
struct Script {
    /// Any method when `None`.
    method: Option<http::Method>,
    /// The target (path and query) starts with it.
    prefix: String,
    /// ... and contains it.
    contains: Option<String>,
    reply: Reply,
}

impl Script {
    fn matches(&self, method: &http::Method, target: &str) -> bool {
        self.method.as_ref().is_none_or(|m| m == method)
            && target.starts_with(self.prefix.as_str())
            && self
                .contains
                .as_ref()
                .is_none_or(|c| target.contains(c.as_str()))
    }
}

#[derive(Debug, Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    scripts: Mutex<Vec<Script>>,
    /// Targets whose request was abandoned before the answer was complete.
    cancelled: Mutex<Vec<String>>,
    /// Targets whose streamed body was sent to the end.
    streams_done: Mutex<Vec<String>>,
    oauth: Mutex<OauthState>,
    /// Connections accepted, and those of them that have ended.
    connections: Mutex<(usize, usize)>,
    changed: Notify,
    /// The live stream and its rules.
    live: live::Live,
    /// Panics of handlers, raised again when the fake is dropped.
    panics: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
}

/// FakeX's OAuth 2.0 authorization server: codes, a rotating refresh chain, access tokens.
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
        // A handler that panicked fails the test that used this fake (unless the test is
        // failing already).
        let panicked = self.shared.panics.lock().unwrap().pop();
        if let (Some(payload), false) = (panicked, std::thread::panicking()) {
            std::panic::resume_unwind(payload);
        }
    }
}

/// Aborts a handler task when the request it serves is dropped (the client went away), so
/// the handler's guards see the cancellation as they did before it ran in a task of its own.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
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
                        async move {
                            // In a task of its own, so a panic is caught and kept for Drop.
                            let mut task = AbortOnDrop(tokio::spawn(serve(
                                Arc::clone(&sh),
                                addr,
                                is_tls,
                                req,
                            )));
                            let resp = match (&mut task.0).await {
                                Ok(resp) => resp,
                                Err(e) => {
                                    if let Ok(payload) = e.try_into_panic() {
                                        sh.panics.lock().unwrap().push(payload);
                                        sh.changed.notify_waiters();
                                    }
                                    Response::builder()
                                        .status(500)
                                        .body(
                                            http_body_util::Full::new(Bytes::from_static(
                                                b"FakeX panicked",
                                            ))
                                            .boxed(),
                                        )
                                        .unwrap()
                                }
                            };
                            Ok::<_, Infallible>(resp)
                        }
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
        self.route(None, prefix, None, reply);
    }

    /// Answers requests of `method` (any when `None`) whose target starts with `prefix` and
    /// contains `contains` (when given) with `reply` (latest script wins).
    pub fn route(
        &self,
        method: Option<http::Method>,
        prefix: &str,
        contains: Option<&str>,
        reply: Reply,
    ) {
        self.shared.scripts.lock().unwrap().push(Script {
            method,
            prefix: prefix.to_owned(),
            contains: contains.map(str::to_owned),
            reply,
        });
    }

    /// The live stream and rules (served for the paths [`live::Live::serve`] names).
    pub fn live(&self) -> &live::Live {
        &self.shared.live
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
        o.issued_refresh.insert(refresh.to_owned());
    }

    /// Refresh calls that presented an already used refresh token (0 when rotation is safe).
    pub fn oauth_refresh_reuse(&self) -> usize {
        self.shared.oauth.lock().unwrap().refresh_reuse
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
        version: parts.version,
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
            .find(|s| s.matches(&parts.method, &target))
            .map(|s| s.reply.clone())
    };
    let reply = if parts.uri.path().starts_with("/oauth/") {
        Some(oauth1_token_reply(parts.uri.path(), &url, &parts.headers))
    } else if token_endpoint {
        Some(token_reply(&sh, parts.uri.path(), &parts.headers, &body).await)
    } else {
        reply
    };
    if matches!(auth, Auth::Bearer { valid: true }) {
        let path = parts.uri.path();
        let query = parts.uri.query().unwrap_or("");
        if path == "/2/tweets/search/stream/rules" && sh.live.rules_served() {
            guard.done = true;
            let (status, body) = sh.live.rules_call(parts.method.as_str(), query, &body);
            sh.changed.notify_waiters();
            return Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(Bytes::from(body)).boxed())
                .unwrap();
        }
        if sh.live.is_live(path) {
            guard.done = true;
            let connect = sh.live.connect(path);
            sh.changed.notify_waiters();
            return match connect {
                live::Connect::Up(body) => Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(body.boxed())
                    .unwrap(),
                live::Connect::Refused(status, body) => Response::builder()
                    .status(status)
                    .header("content-type", "application/problem+json")
                    .body(http_body_util::Full::new(Bytes::from(body)).boxed())
                    .unwrap(),
            };
        }
    }
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

/// The fake's own panics reach the test: a handler that panics (here: a scripted status no
/// HTTP response can have) makes dropping the fake panic with the handler's message.
#[tokio::test]
#[should_panic(expected = "InvalidStatusCode")]
async fn a_panic_in_a_handler_fails_the_test() {
    let fake = FakeX::start().await;
    fake.script("/2/broken", Reply::json(1000, "{}"));
    let mut stream = tokio::net::TcpStream::connect(fake.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /2/broken HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut answer)
        .await
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 500");
    drop(fake);
}
