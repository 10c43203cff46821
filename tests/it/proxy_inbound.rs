//! CONTRACT section 3 (inbound requests) and section 7 (errors and their order), over real
//! sockets against FakeX.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::support::fake_x::{Auth, FakeX};
use crate::support::http::{get, raw, request, send, send_h2};
use crate::support::proxy::{KEY, NARROW_KEY, Proxy, TestClient, TestConfig, config};

async fn setup() -> (FakeX, Proxy) {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
    (fake, proxy)
}

fn empty() -> Full<Bytes> {
    Full::default()
}

/// The problem body has the contract's fields.
fn assert_problem(a: &crate::support::http::Answer, status: u16, kind: &str) {
    assert_eq!(a.status.as_u16(), status, "{}", a.text());
    assert_eq!(a.kind(), Some(kind), "{:?}", a.headers);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(v["type"], format!("urn:xgate:problem:{kind}"));
    assert_eq!(v["status"], status);
    assert!(v["title"].is_string() && v["detail"].is_string(), "{v}");
    // The shapes X's client libraries show (twitter-api-v2: `errors`, xdk: `message`).
    assert_eq!(v["message"], v["detail"], "{v}");
    assert_eq!(
        v["errors"],
        serde_json::json!([{ "message": v["detail"] }]),
        "{v}"
    );
}

#[tokio::test]
async fn client_key_in_either_header_x_xgate_key_wins() {
    let (fake, proxy) = setup().await;
    let ok = get(proxy.addr, "/2/tweets/20", None).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.text(), r#"{"data":{"id":"20","text":"hello"}}"#);

    let bearer = send(
        proxy.addr,
        request("GET", "/2/tweets/21")
            .header("authorization", format!("Bearer {KEY}"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(bearer.status, 200);
    let lower = send(
        proxy.addr,
        request("GET", "/2/tweets/22")
            .header("authorization", format!("bearer {KEY}"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(lower.status, 200);
    // X-Xgate-Key wins over Authorization, both ways round.
    let wins = send(
        proxy.addr,
        request("GET", "/2/tweets/23")
            .header("x-xgate-key", KEY)
            .header("authorization", "Bearer xgk_wrong")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(wins.status, 200);
    let loses = send(
        proxy.addr,
        request("GET", "/2/tweets/24")
            .header("x-xgate-key", "xgk_wrong")
            .header("authorization", format!("Bearer {KEY}"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_problem(&loses, 401, "client-unauthenticated");
    // The client key never reaches upstream, and upstream got the App's Bearer.
    for r in fake.requests() {
        assert!(
            !format!("{:?}", r.headers).contains("xgk_"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.auth, Auth::Bearer { valid: true });
    }
    assert_eq!(fake.requests().len(), 4);
}

#[tokio::test]
async fn missing_unknown_and_non_bearer_keys_get_401_without_upstream() {
    let (fake, proxy) = setup().await;
    for req in [
        request("GET", "/2/tweets/1").body(empty()).unwrap(),
        request("GET", "/2/tweets/1")
            .header("x-xgate-key", "xgk_unknown")
            .body(empty())
            .unwrap(),
        request("GET", "/2/tweets/1")
            .header("authorization", "Bearer xgk_unknown")
            .body(empty())
            .unwrap(),
        // Not Bearer: counts as no key; there is no anonymous client here.
        request("GET", "/2/tweets/1")
            .header("authorization", format!("Basic {KEY}"))
            .body(empty())
            .unwrap(),
    ] {
        let a = send(proxy.addr, req).await;
        assert_problem(&a, 401, "client-unauthenticated");
        assert!(
            !a.text().contains("xgk_"),
            "the answer echoes a key: {}",
            a.text()
        );
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn anonymous_client_serves_requests_without_a_key() {
    let fake = FakeX::start().await;
    let cfg = TestConfig::new(&fake.base_url()).client(TestClient {
        name: "sidecar",
        key: None,
        identities: &["main"],
        default_identity: Some("main"),
        rate: None,
    });
    let proxy = Proxy::start(&cfg.toml()).await;
    let a = send(
        proxy.addr,
        request("GET", "/2/tweets/1").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    // An OAuth header is not a client key: still anonymous.
    let a = send(
        proxy.addr,
        request("GET", "/2/tweets/2")
            .header("authorization", "OAuth x=1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(fake.requests()[1].auth, Auth::Bearer { valid: true });
    // An unknown key is not anonymous.
    let a = send(
        proxy.addr,
        request("GET", "/2/tweets/3")
            .header("x-xgate-key", "nope")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 401);
}

#[tokio::test]
async fn identity_selection_and_identical_403s() {
    let (fake, proxy) = setup().await;
    let a = get(proxy.addr, "/2/users/me", Some("alice")).await;
    assert_eq!(a.status, 200);
    assert!(matches!(
        fake.requests()[0].auth,
        Auth::Oauth1 { valid: true, .. }
    ));

    let unknown = get(proxy.addr, "/2/users/me", Some("mallory")).await;
    let forbidden = send(
        proxy.addr,
        request("GET", "/2/users/me")
            .header("x-xgate-key", NARROW_KEY)
            .header("x-xgate-identity", "alice")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_problem(&unknown, 403, "identity-forbidden");
    assert_problem(&forbidden, 403, "identity-forbidden");
    assert_eq!(
        unknown.body, forbidden.body,
        "unknown and forbidden identities must look the same"
    );
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn no_identity_and_no_default_is_400() {
    let fake = FakeX::start().await;
    let cfg = TestConfig::new(&fake.base_url()).client(TestClient {
        name: "nodefault",
        key: Some("abc"),
        identities: &["main"],
        default_identity: None,
        rate: None,
    });
    let proxy = Proxy::start(&cfg.toml()).await;
    let a = send(
        proxy.addr,
        request("GET", "/2/tweets/1")
            .header("x-xgate-key", "abc")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_problem(&a, 400, "bad-request");
    assert!(a.text().contains("X-Xgate-Identity"), "{}", a.text());
    let a = send(
        proxy.addr,
        request("GET", "/2/tweets/1")
            .header("x-xgate-key", "abc")
            .header("x-xgate-identity", "main")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn paths_outside_the_prefixes_get_404_and_bad_paths_400() {
    let (fake, proxy) = setup().await;
    assert_problem(
        &get(proxy.addr, "/1.1/statuses/home_timeline.json", None).await,
        404,
        "path-not-allowed",
    );
    assert_problem(&get(proxy.addr, "/", None).await, 404, "path-not-allowed");
    assert_problem(
        &get(proxy.addr, "/oauth2/token", None).await,
        404,
        "path-not-allowed",
    );
    for bad in [
        "/2/../1.1/x",
        "/2/./tweets",
        "/2/%2e%2e/admin",
        "/2/%2E/x",
        "/2/tweets/%zz",
        "/2/tweets?q=%4",
        "//2/tweets",
        "/2//tweets/1",
        "/2/tweets%2F1",
        "/2/tweets%2f1",
        "/2/users%5Cme",
    ] {
        assert_problem(&get(proxy.addr, bad, None).await, 400, "bad-request");
    }
    // A raw backslash, which an HTTP client library would refuse to send.
    let req = format!(
        "GET /2/users\\me HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\nConnection: close\r\n\r\n"
    );
    let out = raw(proxy.addr, req.as_bytes(), Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("x-xgate-error: bad-request"), "{out}");
    // X's own OAuth 2.0 token endpoints: never forwarded, and the answer says why.
    for path in ["/2/oauth2/token", "/2/oauth2/revoke"] {
        let a = get(proxy.addr, path, None).await;
        assert_problem(&a, 404, "path-not-allowed");
        assert!(a.text().contains("xgate login"), "{}", a.text());
    }
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn path_and_query_reach_upstream_byte_for_byte() {
    let (fake, proxy) = setup().await;
    let target = "/2/tweets/search/recent?query=from%3AXDevelopers+-is:retweet%20x&ids=1&ids=2&empty=&t=~%7e!*'()&u=%E2%98%83";
    assert_eq!(get(proxy.addr, target, None).await.status, 200);
    assert_eq!(fake.requests()[0].target, target);
}

#[tokio::test]
async fn authority_and_host_are_ignored() {
    let (fake, proxy) = setup().await;
    // Absolute-form target aimed elsewhere, and a Host header naming another host.
    let req = format!(
        "GET http://evil.example:81/2/tweets/7 HTTP/1.1\r\nHost: evil.example:81\r\nx-xgate-key: {KEY}\r\nConnection: close\r\n\r\n"
    );
    let out = raw(proxy.addr, req.as_bytes(), Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let r = &fake.requests()[0];
    assert_eq!(r.target, "/2/tweets/7");
    assert_eq!(r.header("host"), Some(fake.addr.to_string().as_str()));
}

#[tokio::test]
async fn connect_and_trace_get_405() {
    let (fake, proxy) = setup().await;
    let out = raw(
        proxy.addr,
        format!(
            "CONNECT api.x.com:443 HTTP/1.1\r\nHost: api.x.com:443\r\nx-xgate-key: {KEY}\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.contains("x-xgate-error: method-not-allowed"), "{out}");
    let a = send(
        proxy.addr,
        request("TRACE", "/2/tweets")
            .header("x-xgate-key", KEY)
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_problem(&a, 405, "method-not-allowed");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn request_header_hygiene() {
    let (fake, proxy) = setup().await;
    let a = send(
        proxy.addr,
        request("GET", "/2/tweets/1")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "main")
            .header("x-xgate-debug", "1")
            .header("proxy-authorization", "Basic abc")
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("upgrade", "websocket")
            .header("accept-encoding", "gzip, br")
            .header("user-agent", "tests/1.0")
            .header("x-request-id", "r-1")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    let r = &fake.requests()[0];
    for gone in [
        "x-xgate-key",
        "x-xgate-identity",
        "x-xgate-debug",
        "proxy-authorization",
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
    ] {
        assert!(
            r.headers.get(gone).is_none(),
            "{gone} reached upstream: {:?}",
            r.headers
        );
    }
    assert_eq!(r.header("accept-encoding"), Some("gzip, br"));
    assert_eq!(r.header("user-agent"), Some("tests/1.0"));
    assert_eq!(r.header("x-request-id"), Some("r-1"));
    assert_eq!(
        r.header("authorization").map(|v| v.starts_with("Bearer ")),
        Some(true)
    );
}

#[tokio::test]
async fn oversized_heads_get_431_on_http1_and_http2_and_the_proxy_stays_healthy() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("max_header_bytes", 8192)
            .toml(),
    )
    .await;
    let big = "a".repeat(10_000);
    let out = raw(
        proxy.addr,
        format!(
            "GET /2/tweets/1 HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\nx-big: {big}\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    let h2 = send_h2(
        proxy.addr,
        request("GET", "http://proxy/2/tweets/1")
            .header("x-xgate-key", KEY)
            .header("x-big", big.as_str())
            .body(empty())
            .unwrap(),
    )
    .await;
    match h2 {
        Ok(a) => assert_eq!(a.status, 431),
        Err(e) => panic!("h2 request failed instead of 431: {e}"),
    }
    assert!(fake.requests().is_empty());
    // Still serving, on both protocols.
    assert_eq!(get(proxy.addr, "/2/tweets/1", None).await.status, 200);
    let h2 = send_h2(
        proxy.addr,
        request("GET", "http://proxy/2/tweets/2")
            .header("x-xgate-key", KEY)
            .body(empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(h2.status, 200);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("max_body_bytes", 1000)
            .toml(),
    )
    .await;
    // Declared length over the limit: refused before upstream.
    let a = send(
        proxy.addr,
        request("POST", "/2/compliance/jobs")
            .header("x-xgate-key", KEY)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(vec![b'x'; 1001])))
            .unwrap(),
    )
    .await;
    assert_problem(&a, 413, "body-too-large");
    assert!(fake.requests().is_empty());
    // Chunked (no length) over the limit: cut while streaming.
    let chunked = format!(
        "POST /2/compliance/jobs HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3e8\r\n{}\r\n3e8\r\n{}\r\n0\r\n\r\n",
        "y".repeat(1000),
        "y".repeat(1000)
    );
    let out = raw(proxy.addr, chunked.as_bytes(), Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // A form body for an OAuth 1.0a identity is read, within the same limit.
    let a = send(
        proxy.addr,
        request("POST", "/2/x")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "alice")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("transfer-encoding", "chunked")
            .body(Full::new(Bytes::from(vec![b'a'; 2000])))
            .unwrap(),
    )
    .await;
    assert_problem(&a, 413, "body-too-large");
    // At the limit it passes.
    let a = send(
        proxy.addr,
        request("POST", "/2/compliance/jobs")
            .header("x-xgate-key", KEY)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(vec![b'z'; 1000])))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        fake.requests_to("/2/compliance/jobs")
            .last()
            .unwrap()
            .body
            .len(),
        1000
    );
}

#[tokio::test]
async fn expect_continue_is_answered_here_and_trailers_are_dropped() {
    let (fake, proxy) = setup().await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(format!("POST /2/compliance/jobs HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"{}").await.unwrap();
    let rest = crate::support::http::read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    let r = &fake.requests()[0];
    assert!(r.headers.get("expect").is_none());
    assert_eq!(&r.body[..], b"{}");

    // A chunked body with a trailer: the trailer stays here.
    let out = raw(
        proxy.addr,
        format!("POST /2/compliance/jobs HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\nconnection: close\r\n\r\n2\r\n{{}}\r\n0\r\nx-checksum: 1\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let r = &fake.requests()[1];
    assert_eq!(&r.body[..], b"{}");
    assert!(r.trailers.is_none(), "{:?}", r.trailers);
    assert!(r.headers.get("trailer").is_none());
}

#[tokio::test]
async fn order_of_answers() {
    let (fake, proxy) = setup().await;
    let huge = || Full::new(Bytes::from(vec![b'x'; 6_000_000]));
    // 405 before the client key.
    let a = send(
        proxy.addr,
        request("TRACE", "/nowhere").body(empty()).unwrap(),
    )
    .await;
    assert_eq!(a.status, 405);
    // 401 before identity and path.
    let a = send(
        proxy.addr,
        request("GET", "/nowhere")
            .header("x-xgate-identity", "mallory")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 401);
    // 403 (identity) before the path.
    let a = send(
        proxy.addr,
        request("GET", "/nowhere")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "mallory")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 403);
    // The path (404) before the stored-credential check and the body size.
    let a = send(
        proxy.addr,
        request("POST", "/nowhere")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "bob")
            .body(huge())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 404);
    // An OAuth 2.0 identity with no stored token (401) before the body size (413).
    let a = send(
        proxy.addr,
        request("POST", "/2/tweets")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "bob")
            .body(huge())
            .unwrap(),
    )
    .await;
    assert_problem(&a, 401, "credentials-missing");
    assert!(
        a.text().contains("xgate login --identity bob"),
        "{}",
        a.text()
    );
    // The auth pre-check (403: an App on an endpoint that needs user context) before the
    // body size (413).
    let a = send(
        proxy.addr,
        request("POST", "/2/tweets")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "bare")
            .body(huge())
            .unwrap(),
    )
    .await;
    assert_problem(&a, 403, "auth-type-unsupported");
    // The body size (413) before other credentials (401).
    let a = send(
        proxy.addr,
        request("POST", "/2/compliance/jobs")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "bare")
            .body(huge())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 413);
    let a = get(proxy.addr, "/2/tweets", Some("bare")).await;
    assert_problem(&a, 401, "credentials-missing");
    assert!(a.text().contains("xgate bearer --app bare"), "{}", a.text());
    assert!(
        fake.requests().is_empty(),
        "a refused request reached upstream"
    );
}

/// A request refused before its body is read (here a 404 for the path and the auth
/// pre-check's 403 for an App posting a Post) still gets its answer while the client is sending a large body, and the connection stays usable: the
/// proxy reads and discards the body instead of closing on unread bytes (which would reset
/// the connection under the client's feet).
#[tokio::test]
async fn a_refused_request_with_a_large_body_keeps_its_connection() {
    let (fake, proxy) = setup().await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for path in ["/nowhere", "/2/tweets"] {
        sender.ready().await.unwrap();
        let resp = tokio::time::timeout(
            Duration::from_secs(20),
            sender.send_request(
                request("POST", path)
                    .header("x-xgate-key", KEY)
                    .body(Full::new(Bytes::from(vec![b'x'; 3_000_000])))
                    .unwrap(),
            ),
        )
        .await
        .expect("no answer within 20 s")
        .unwrap();
        let a = crate::support::http::collect(resp).await;
        assert_eq!(
            a.status,
            if path == "/nowhere" { 404 } else { 403 },
            "{}",
            a.text()
        );
    }
    // The same connection still carries a request that goes upstream.
    sender.ready().await.unwrap();
    let resp = sender
        .send_request(
            request("GET", "/2/tweets/20")
                .header("x-xgate-key", KEY)
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(crate::support::http::collect(resp).await.status, 200);
    assert_eq!(fake.requests().len(), 1);
}
