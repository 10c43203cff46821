//! Upstream behaviour (CONTRACT sections 3 and 7): streaming, timeouts, failures, TLS,
//! response hygiene, cancellation.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::support::fake_x::{FakeX, Reply};
use crate::support::http::{get, request, send, send_streaming};
use crate::support::logs;
use crate::support::proxy::{KEY, Proxy, TestConfig, config};
use crate::support::scratch;
use crate::support::tls::TestCa;

#[tokio::test]
async fn streams_are_relayed_chunk_by_chunk_keepalives_included() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("idle_timeout", "2s")
            .toml(),
    )
    .await;
    let target = "/2/tweets/sample/stream?tweet.fields=id";
    fake.script(
        "/2/tweets/sample/stream",
        Reply::stream(
            "{\"data\":{\"id\":\"1\"}}\r\n",
            "\r\n",
            Duration::from_millis(50),
            30,
            "{\"data\":{\"id\":\"2\"}}\r\n",
        ),
    );
    let resp = send_streaming(
        proxy.addr,
        request("GET", target)
            .header("x-xgate-key", KEY)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The first line arrives long before the stream ends (30 keep-alives at 50 ms later).
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.into_data().unwrap(),
        Bytes::from_static(b"{\"data\":{\"id\":\"1\"}}\r\n")
    );
    assert!(
        !fake.stream_done(target),
        "the proxy waited for the stream to end"
    );
    // When X's stream ends, xgate connects again and the consumer stays: the bytes of the
    // first connection come first, as X sent them.
    let expected = format!("{}{{\"data\":{{\"id\":\"2\"}}}}\r\n", "\r\n".repeat(30));
    let mut rest = Vec::new();
    for _ in 0..1000 {
        if rest.len() >= expected.len() {
            break;
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap()
            .unwrap();
        rest.extend_from_slice(&frame.unwrap().into_data().unwrap());
    }
    assert_eq!(String::from_utf8_lossy(&rest[..expected.len()]), expected);
}

#[tokio::test]
async fn no_total_timeout_but_idle_bodies_are_closed() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("request_timeout", "500ms")
            .server("idle_timeout", "300ms")
            .toml(),
    )
    .await;
    // Lives 1.2 s (> request_timeout and > idle_timeout) but never idles 300 ms.
    fake.script(
        "/2/live",
        Reply::stream("a", "b", Duration::from_millis(60), 20, "z"),
    );
    let a = get(proxy.addr, "/2/live", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), format!("a{}z", "b".repeat(20)));
    // Idles 1 s between chunks: closed after the head and first chunk.
    fake.script(
        "/2/stall",
        Reply::stream("a", "b", Duration::from_secs(1), 3, "z"),
    );
    let resp = send_streaming(
        proxy.addr,
        request("GET", "/2/stall")
            .header("x-xgate-key", KEY)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .unwrap();
    assert!(collected.is_err(), "a stalled body must be cut off");
}

#[tokio::test]
async fn slow_head_gets_504_and_dead_upstream_502() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("request_timeout", "300ms")
            .toml(),
    )
    .await;
    fake.script(
        "/2/slow",
        Reply::json(200, "{}").delay(Duration::from_secs(3)),
    );
    let a = get(proxy.addr, "/2/slow", None).await;
    assert_eq!(
        (a.status.as_u16(), a.kind()),
        (504, Some("upstream-timeout"))
    );

    // Nothing listens on this port.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let proxy = Proxy::start(&config(&dead_url)).await;
    let a = get(proxy.addr, "/2/tweets/1", None).await;
    assert_eq!(
        (a.status.as_u16(), a.kind()),
        (502, Some("upstream-unavailable"))
    );
    assert!(a.text().contains("connect"), "{}", a.text());
}

#[tokio::test]
async fn upstream_errors_pass_through_untouched() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
    let body = r#"{"title":"Too Many Requests","detail":"Too Many Requests","type":"about:blank","status":429}"#;
    fake.script(
        "/2/limited",
        Reply::json(429, body)
            .header("x-rate-limit-remaining", "0")
            .header("x-rate-limit-reset", "4102444800"),
    );
    let a = get(proxy.addr, "/2/limited", None).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.text(), body);
    assert_eq!(a.header("x-rate-limit-remaining"), Some("0"));
    assert!(
        a.kind().is_none(),
        "an upstream answer is not a proxy error"
    );
}

#[tokio::test]
async fn response_hygiene_and_no_decompression() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
    let gz: &[u8] = &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3];
    let mut reply = Reply::json(200, "")
        .header("content-encoding", "gzip")
        .header("keep-alive", "timeout=99")
        .header("x-rate-limit-limit", "900");
    reply.body = crate::support::fake_x::ReplyBody::Full(Bytes::from_static(gz));
    fake.script("/2/gz", reply);
    let a = send(
        proxy.addr,
        request("GET", "/2/gz")
            .header("x-xgate-key", KEY)
            .header("accept-encoding", "gzip")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], gz, "the body was altered");
    assert_eq!(a.header("content-encoding"), Some("gzip"));
    assert_eq!(a.header("x-rate-limit-limit"), Some("900"));
    assert!(
        a.headers.get("keep-alive").is_none(),
        "hop-by-hop header passed back"
    );
    assert_eq!(fake.requests()[0].header("accept-encoding"), Some("gzip"));
}

#[tokio::test]
async fn tls_upstream_with_ca_file_and_tls_failures() {
    let ca = TestCa::new();
    let fake = FakeX::start_tls(&ca).await;
    let dir = scratch("upstream-tls");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let with_ca = Proxy::start_in(
        &TestConfig::new(&fake.base_url())
            .server("workers", 1)
            .upstream("ca_file", "ca.pem")
            .toml(),
        &dir,
    )
    .await;
    // ALPN picks HTTP/2, and one connection carries every request, concurrent ones too.
    sequential_requests(&with_ca, 2).await;
    for a in concurrent_gets(&with_ca, (0..4).map(|_| "/2/users/me".to_owned())).await {
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let seen = fake.requests();
    assert_eq!(seen.len(), 6);
    assert!(seen.iter().all(|r| r.version == http::Version::HTTP_2
        && matches!(
            r.auth,
            crate::support::fake_x::Auth::Oauth1 { valid: true, .. }
        )));
    assert_eq!(fake.connections(), (1, 0), "one HTTP/2 connection");
    // Without the CA the certificate is not trusted: 502, and the request never arrived.
    let without = Proxy::start(&config(&fake.base_url())).await;
    let a = get(without.addr, "/2/users/me", Some("alice")).await;
    assert_eq!(
        (a.status.as_u16(), a.kind()),
        (502, Some("upstream-unavailable"))
    );
    assert!(a.text().contains("upstream tls"), "{}", a.text());
    assert_eq!(fake.requests().len(), 6);
}

#[tokio::test]
async fn client_disconnect_cancels_upstream_and_is_recorded_as_499() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
    fake.script(
        "/2/cancel-me",
        Reply::json(200, "{}").delay(Duration::from_secs(30)),
    );
    let target = "/2/cancel-me/499";
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\n\r\n");
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes())
        .await
        .unwrap();
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| !f
            .requests_to(target)
            .is_empty())
            .await
    );
    drop(s);
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.was_cancelled(target))
            .await,
        "upstream request was not cancelled"
    );
    logs::wait_for_line(|l| l.contains(&format!("path={target}")) && l.contains("status=499"))
        .await;
}

/// The upstream pool (`pool_max_idle_per_host`, `pool_idle_timeout`), on one worker:
/// sequential requests share one kept-alive connection; with no idle connections allowed
/// each request opens its own, closed after its answer; an idle connection is closed after
/// `pool_idle_timeout`.
#[tokio::test]
async fn the_upstream_pool_keeps_idle_connections_within_its_settings() {
    let fake = FakeX::start().await;
    let pooled = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("workers", 1)
            .toml(),
    )
    .await;
    sequential_requests(&pooled, 3).await;
    assert_eq!(fake.connections(), (1, 0), "the pool reuses one connection");
    drop(pooled);

    let fake = FakeX::start().await;
    let unpooled = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("workers", 1)
            .upstream("pool_max_idle_per_host", 0)
            .toml(),
    )
    .await;
    sequential_requests(&unpooled, 3).await;
    assert_eq!(fake.connections().0, 3);
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.connections() == (3, 3))
            .await,
        "connections were kept: {:?}",
        fake.connections()
    );

    let fake = FakeX::start().await;
    let short = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("workers", 1)
            .upstream("pool_idle_timeout", "200ms")
            .toml(),
    )
    .await;
    sequential_requests(&short, 1).await;
    // Closed well before the 90 s default would close it.
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.connections() == (1, 1))
            .await,
        "the idle connection was kept: {:?}",
        fake.connections()
    );
}

/// Concurrent requests each take a connection of their own (a kept-alive HTTP/1.1
/// connection carries one exchange at a time); once answered, all of them are kept, and the
/// next burst reuses them instead of connecting again.
#[tokio::test]
async fn concurrent_requests_reuse_the_connections_of_the_last_burst() {
    let fake = FakeX::start().await;
    fake.script(
        "/2/slow",
        Reply::json(200, "{}").delay(Duration::from_millis(50)),
    );
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("workers", 1)
            .toml(),
    )
    .await;
    let burst = || concurrent_gets(&proxy, (0..8).map(|i| format!("/2/slow/{i}")));
    for a in burst().await {
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let opened = fake.connections().0;
    assert!(
        (1..=8).contains(&opened),
        "{opened} connections for 8 requests"
    );
    for a in burst().await {
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(
        fake.connections(),
        (opened, 0),
        "the second burst connected again"
    );
    assert_eq!(fake.requests().len(), 16);
}

/// X may close a kept-alive connection between two requests: the next request goes on a new
/// connection and is answered, not failed.
#[tokio::test]
async fn a_kept_alive_connection_upstream_closed_is_not_used_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&accepted);
    let upstream = tokio::spawn(async move {
        for _ in 0..16 {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                // One request head (no body: GETs), one keep-alive answer, then close.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                let _closed = s.write_all(answer.as_bytes()).await.is_err();
                let _closed = s.shutdown().await.is_err();
            });
        }
    });
    let proxy = Proxy::start(
        &TestConfig::new(&format!("http://{addr}"))
            .server("workers", 1)
            .toml(),
    )
    .await;
    sequential_requests(&proxy, 3).await;
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    upstream.abort();
}

/// `server.workers`: client connections are handed to the workers in turn, and each worker
/// keeps its own upstream pool, so new client connections one after another use one upstream
/// connection per worker.
#[tokio::test]
async fn each_worker_has_its_own_upstream_pool() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("workers", 3)
            .toml(),
    )
    .await;
    sequential_requests(&proxy, 7).await;
    assert_eq!(fake.connections(), (3, 0));
}

/// A GET of each path as `alice`, all at once, each on its own client connection.
async fn concurrent_gets(
    proxy: &Proxy,
    paths: impl Iterator<Item = String>,
) -> Vec<crate::support::http::Answer> {
    let mut set = tokio::task::JoinSet::new();
    for path in paths {
        let addr = proxy.addr;
        set.spawn(async move { get(addr, &path, Some("alice")).await });
    }
    set.join_all().await
}

/// `n` requests one after another, each on a new client connection.
async fn sequential_requests(proxy: &Proxy, n: usize) {
    for _ in 0..n {
        let a = get(proxy.addr, "/2/users/me", Some("alice")).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
}
