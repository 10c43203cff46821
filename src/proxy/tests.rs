//! The phases driven through [`crate::service::ProxyService`] without a client socket: the
//! request body is a test body, upstream is a port nobody listens on.

use std::collections::BTreeMap;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request, StatusCode};
use http_body::Frame;
use tower::Service as _;

use super::*;
use crate::config::Config;
use crate::endpoints::EndpointId;
use crate::identity::IdentityId;
use crate::service::{ConnActivity, ProxyService};
use crate::store::SqliteStore;
use crate::store::StoredToken;

const KEY: &str = "xgk_proxy-phase-tests";

/// A client body that is empty, breaks on its first read, or never sends anything.
#[derive(Debug, Clone, Copy)]
enum TestBody {
    Empty,
    Broken,
    Silent,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match *self {
            Self::Empty => Poll::Ready(None),
            Self::Broken => Poll::Ready(Some(Err("the client broke its body".into()))),
            Self::Silent => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Empty)
    }
}

/// A port on 127.0.0.1 that refuses connections (bound, then closed).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Every bucket that matters here has a limit of 1: App `main` and App `bare` (no credentials)
/// on `GET /2/tweets/:id`, users `alice` (OAuth 1.0a) and `bob` (OAuth 2.0) on it and on
/// `POST /2/tweets`.
fn config(dir: &std::path::Path) -> Config {
    let sha = crate::client_key::to_hex(&crate::client_key::sha256(KEY));
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
base_url = "http://127.0.0.1:{port}"
connect_timeout = "1s"
[store]
path = "xgate.db"
[apps.main]
bearer_token = "main-bearer"
consumer_key = "ck"
consumer_secret = "cs"
oauth2_client_id = "cid"
[apps.bare]
oauth2_client_id = "cid"
[users.alice]
app = "main"
auth = "oauth1"
token = "alice-token"
token_secret = "alice-secret"
[users.bob]
app = "main"
auth = "oauth2"
scopes = ["tweet.read", "tweet.write", "users.read", "offline.access"]
[[clients]]
name = "backend"
key_sha256 = "{sha}"
identities = ["main", "bare", "alice", "bob"]
default_identity = "main"
[[limits.override]]
endpoint = "GET /2/tweets/:id"
app = "1/15m"
user = "1/15m"
[[limits.override]]
endpoint = "POST /2/tweets"
app = "1/24h"
user = "1/15m"
"#,
        port = closed_port()
    );
    Config::from_toml_str(&toml, dir, &BTreeMap::new()).unwrap()
}

struct Harness {
    state: Arc<State>,
    service: ProxyService<TestBody>,
    _dir: std::path::PathBuf,
}

async fn harness(name: &str) -> Harness {
    let dir = std::env::temp_dir().join(format!("xgate-phases-{name}-{}", std::process::id()));
    let _fresh = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // bob's pair has expired; refreshing it needs upstream, which refuses connections.
    let store = SqliteStore::open(&dir.join("xgate.db"), None).unwrap();
    store
        .save_blocking(
            "bob",
            &StoredToken::Oauth2 {
                access_token: "bob-access".into(),
                refresh_token: Some("bob-refresh".into()),
                expires_at: Some(1),
                scopes: vec![
                    "tweet.read".into(),
                    "tweet.write".into(),
                    "users.read".into(),
                    "offline.access".into(),
                ],
            },
        )
        .unwrap();
    drop(store);
    let state = Arc::new(State::from_config(&config(&dir)).await.unwrap());
    let upstream = Arc::new(state.upstream().with_own_pool());
    let service = ProxyService::new(
        Arc::clone(&state),
        upstream,
        Arc::new(ConnActivity::default()),
    );
    Harness {
        state,
        service,
        _dir: dir,
    }
}

impl Harness {
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        identity: &str,
        body: TestBody,
    ) -> StatusCode {
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().unwrap();
        let h = req.headers_mut();
        h.insert(http::header::HOST, "xgate.test".parse().unwrap());
        h.insert("x-xgate-key", KEY.parse().unwrap());
        h.insert("x-xgate-identity", identity.parse().unwrap());
        h.insert(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        self.service.call(req).await.unwrap().status()
    }

    fn id(&self, name: &str) -> IdentityId {
        self.state.identities.find(name).unwrap()
    }

    fn endpoint(&self, method: &Method, path: &str) -> EndpointId {
        self.state.catalogue().lookup(method, path).unwrap()
    }

    /// The buckets of `identity` on `endpoint` are as before any request: exactly one
    /// reservation fits (every limit here is 1), and it is given back again.
    async fn assert_untouched(&self, identity: &str, endpoint: EndpointId, after: &str) {
        let draw = Draw {
            identity: self.id(identity),
            endpoint: Some(endpoint),
            client: None,
        };
        let limiter = self.state.limiter();
        let first = limiter.admit(draw).await;
        assert!(
            first.is_ok(),
            "{after}: {identity}'s bucket was used up: {first:?}"
        );
        let second = limiter.admit(draw).await;
        assert!(
            second.is_err(),
            "{after}: {identity}'s bucket holds more than its limit"
        );
    }
}

#[tokio::test]
async fn every_early_return_after_admission_gives_the_reservations_back() {
    let mut h = harness("early-returns").await;
    let tweet = h.endpoint(&Method::GET, "/2/tweets/1");
    let post = h.endpoint(&Method::POST, "/2/tweets");

    // Credentials: an App with no Bearer (401 credentials-missing).
    let status = h
        .call(Method::GET, "/2/tweets/1", "bare", TestBody::Empty)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    h.assert_untouched("bare", tweet, "credentials-missing")
        .await;

    // Credentials: an expired OAuth 2.0 pair whose refresh cannot reach X (502).
    let status = h
        .call(Method::GET, "/2/tweets/1", "bob", TestBody::Empty)
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    h.assert_untouched("bob", tweet, "a failed refresh").await;

    // Body: an OAuth 1.0a form body that breaks while it is read for signing (400).
    let status = h
        .call(Method::POST, "/2/tweets", "alice", TestBody::Broken)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.assert_untouched("alice", post, "a broken body").await;
    // ... and the App's 24-hour window, which counts its users' posts, too.
    h.assert_untouched("main", post, "a broken body (App day window)")
        .await;

    // Upstream: nothing listens, so no connection was made (502 connect).
    let status = h
        .call(Method::GET, "/2/tweets/1", "main", TestBody::Empty)
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    h.assert_untouched("main", tweet, "a connect failure").await;

    // The client goes away while its form body is being read: the request's future is
    // dropped before anything was sent.
    let mut req = Request::new(TestBody::Silent);
    *req.method_mut() = Method::POST;
    *req.uri_mut() = "/2/tweets".parse().unwrap();
    req.headers_mut()
        .insert(http::header::HOST, "xgate.test".parse().unwrap());
    req.headers_mut()
        .insert("x-xgate-key", KEY.parse().unwrap());
    req.headers_mut()
        .insert("x-xgate-identity", "alice".parse().unwrap());
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    let mut pending = Box::pin(h.service.call(req));
    let polled = std::future::poll_fn(|cx| Poll::Ready(pending.as_mut().poll(cx))).await;
    assert!(polled.is_pending(), "the silent body was not being read");
    drop(pending);
    h.assert_untouched("alice", post, "the client going away")
        .await;
}

#[tokio::test]
async fn answers_before_admission_never_touch_a_bucket() {
    let mut h = harness("before-admission").await;
    let tweet = h.endpoint(&Method::GET, "/2/tweets/1");
    // The auth pre-check: an App on a user-context-only endpoint (403), then a path outside
    // the prefixes (404): neither reaches the limits.
    let status = h
        .call(Method::GET, "/2/users/me", "main", TestBody::Empty)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let status = h
        .call(Method::GET, "/1.1/statuses", "main", TestBody::Empty)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    h.assert_untouched("main", tweet, "answers before admission")
        .await;
}
