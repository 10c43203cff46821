//! Issue "hardening": answers for a hostile client and a faulty upstream that the probes found
//! wrong (RFC 9112 framing, a body broken on either side, an unsolicited upgrade), each over
//! real sockets.

use std::time::Duration;

use crate::store_faults::{pair, store_pair, stored_access};
use crate::support::fake_x::FakeX;
use crate::support::faulty::Faulty;
use crate::support::http::{get, metric, raw};
use crate::support::proxy::{KEY, Proxy, config};

/// RFC 9112 §3.2: an HTTP/1.1 request needs exactly one `Host`; §6.1: a transfer coding the
/// server does not implement is a 501, never a coding dropped in silence. Nothing reaches X.
#[tokio::test]
async fn host_and_transfer_coding_rules() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
    let send = |head: String| async move {
        raw(proxy.addr, head.as_bytes(), Duration::from_secs(10)).await
    };
    let no_host =
        format!("GET /2/tweets/1 HTTP/1.1\r\nx-xgate-key: {KEY}\r\nConnection: close\r\n\r\n");
    let two_hosts = format!(
        "GET /2/tweets/1 HTTP/1.1\r\nHost: a\r\nHost: b\r\nx-xgate-key: {KEY}\r\nConnection: close\r\n\r\n"
    );
    for head in [no_host, two_hosts] {
        let out = send(head).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(out.contains("x-xgate-error: bad-request"), "{out}");
        assert!(out.contains("Host header"), "{out}");
    }
    let gzip = format!(
        "POST /2/tweets HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    );
    let out = send(gzip).await;
    assert!(out.starts_with("HTTP/1.1 501"), "{out}");
    assert!(out.contains("x-xgate-error: not-implemented"), "{out}");
    // HTTP/1.0 needs no Host.
    let old = format!("GET /2/tweets/1 HTTP/1.0\r\nx-xgate-key: {KEY}\r\n\r\n");
    let out = send(old).await;
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    assert_eq!(fake.requests().len(), 1);
}

/// A client whose chunked body breaks after its head went upstream gets 400 `bad-request`,
/// and the failure is not counted as upstream's.
#[tokio::test]
async fn a_clients_broken_chunked_body_is_its_400_not_an_upstream_reset() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
    let req = format!(
        "POST /2/tweets HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\nx-xgate-identity: alice\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\n{{\"a\":\r\nzz\r\n"
    );
    let out = raw(proxy.addr, req.as_bytes(), Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("x-xgate-error: bad-request"), "{out}");
    let text = get(proxy.admin, "/metrics", None).await.text();
    assert_eq!(
        metric(&text, r#"xgate_upstream_errors_total{kind="reset"}"#),
        0.0,
        "{text}"
    );
}

/// An upstream whose body fails before its first byte (an invalid first chunk) gets the
/// client a 502, and the access record and `xgate_requests_total` say 502, not 200.
#[tokio::test]
async fn an_upstream_body_broken_before_its_first_byte_is_a_502() {
    let upstream =
        Faulty::start(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")
            .await;
    let proxy = Proxy::start(&config(&upstream.base_url())).await;
    let a = get(proxy.addr, "/2/tweets/31337", None).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.kind(), Some("upstream-unavailable"));
    let text = get(proxy.admin, "/metrics", None).await.text();
    assert!(
        text.lines().any(|l| l.starts_with("xgate_requests_total")
            && l.contains(r#"endpoint="GET /2/tweets/:id""#)
            && l.contains(r#"status="502""#)),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("xgate_requests_total")
            && l.contains(r#"endpoint="GET /2/tweets/:id""#)
            && l.contains(r#"status="200""#)),
        "{text}"
    );
    crate::support::logs::wait_for_line(|l| {
        l.contains("xgate::access")
            && l.contains("path=/2/tweets/31337")
            && l.contains("status=502")
    })
    .await;
}

/// An unsolicited `101 Switching Protocols` is a 502: no tunnel is ever relayed.
#[tokio::test]
async fn an_unsolicited_101_from_upstream_is_a_502() {
    let upstream = Faulty::start(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let proxy = Proxy::start(&config(&upstream.base_url())).await;
    let a = get(proxy.addr, "/2/tweets/1", None).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(a.kind(), Some("upstream-unavailable"));
    assert!(a.text().contains("101"), "{}", a.text());
}

/// SIGTERM (and SIGINT) during a background refresh that X takes 1 s to answer: the
/// proxy waits for the refresh, stores the rotated pair and exits 0; after a restart the user
/// works with that pair, and no refresh token was sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_during_a_refresh_waits_for_it_and_keeps_the_new_pair() {
    use crate::proxy_oauth2::{binary_config_with_store, free_port, get_anon, serve};
    for signal in ["-TERM", "-INT"] {
        let fake = FakeX::start().await;
        fake.oauth_issue("at-old", "rt-old");
        fake.oauth_trouble(0, Duration::from_secs(1));
        let dir = crate::support::scratch("signal-refresh");
        let store = crate::support::proxy::table([("path", "xgate.db".into())]);
        std::fs::write(
            dir.join("proxy.toml"),
            binary_config_with_store(&fake.base_url(), free_port(), store, false),
        )
        .unwrap();
        // Due within the 60 s refresh-ahead: the request goes on with it, the refresh runs
        // in the background.
        store_pair(&dir, &pair(crate::proxy_oauth2::now() + 30));
        let (mut child, addr, _stderr) = serve(&dir).await;
        assert_eq!(get_anon(addr, "bob").await.status, 200);
        assert!(
            fake.wait_until(Duration::from_secs(10), |f| f.oauth_calls().0 == 1)
                .await,
            "no background refresh"
        );
        // The signal comes while X is still answering (it takes 1 s).
        let status = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert_eq!(exit.code(), Some(0), "{signal}");
        assert_eq!(
            stored_access(&dir).as_deref(),
            Some("at-1"),
            "{signal}: the rotated pair was lost"
        );
        let (mut child, addr, _stderr) = serve(&dir).await;
        let a = get_anon(addr, "bob").await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(fake.oauth_refresh_reuse(), 0);
        assert_eq!(fake.oauth_calls().0, 1);
        child.kill().unwrap();
        let _exited = child.wait();
    }
}

// === fault injection: an upstream that misbehaves, every case a clean answer ===

/// `xgate_inflight_requests` of `proxy`, once it is back to `want` (bounded wait: the access
/// record of a broken body lands as the connection closes).
async fn inflight_settles(proxy: &Proxy, want: f64) {
    for _ in 0..200 {
        let text = get(proxy.admin, "/metrics", None).await.text();
        if metric(&text, "xgate_inflight_requests") == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("requests still in flight");
}

/// Upstream closes before its head, answers garbage, or sends a head larger than any X
/// sends: 502 `upstream-unavailable` each, at once, nothing left in flight.
#[tokio::test]
async fn an_upstream_that_closes_answers_garbage_or_a_huge_head_is_a_502() {
    static HUGE: std::sync::OnceLock<&'static [u8]> = std::sync::OnceLock::new();
    let huge = HUGE.get_or_init(|| {
        let mut h = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nx-big: ".to_vec();
        h.extend(std::iter::repeat_n(b'a', 1 << 20));
        h.extend_from_slice(b"\r\n\r\n");
        Box::leak(h.into_boxed_slice())
    });
    for reply in [&b""[..], b"NOT HTTP AT ALL\r\n\r\n", huge] {
        let upstream = Faulty::start(reply).await;
        let proxy = Proxy::start(&config(&upstream.base_url())).await;
        let a = get(proxy.addr, "/2/tweets/1", None).await;
        assert_eq!(a.status, 502, "{}", a.text());
        assert_eq!(a.kind(), Some("upstream-unavailable"));
        inflight_settles(&proxy, 0.0).await;
    }
}

/// Upstream takes the request and never answers: 504 at `request_timeout`, not a hang.
#[tokio::test]
async fn an_upstream_that_stalls_is_a_504_at_request_timeout() {
    let upstream = Faulty::start(crate::support::faulty::STALL).await;
    let toml = crate::support::proxy::TestConfig::new(&upstream.base_url())
        .server("request_timeout", "300ms")
        .toml();
    let proxy = Proxy::start(&toml).await;
    let a = tokio::time::timeout(Duration::from_secs(5), get(proxy.addr, "/2/tweets/1", None))
        .await
        .expect("no answer");
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(a.kind(), Some("upstream-timeout"));
    inflight_settles(&proxy, 0.0).await;
}

/// Upstream resets mid-body, after its head and first bytes went out: the client sees its
/// body end early (the head is gone; nothing else is possible), never a hang, and the request
/// leaves nothing in flight.
#[tokio::test]
async fn an_upstream_that_resets_mid_body_ends_the_clients_body() {
    let upstream = Faulty::start(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\":").await;
    let proxy = Proxy::start(&config(&upstream.base_url())).await;
    let req = format!(
        "GET /2/tweets/1 HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\nConnection: close\r\n\r\n"
    );
    let out = raw(proxy.addr, req.as_bytes(), Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("{\"data\":"), "{out}");
    inflight_settles(&proxy, 0.0).await;
}

/// The token endpoint dies mid-answer while an expired token is refreshed: the request gets
/// 502 naming the refresh, and the stored pair is kept as it was (nothing half-written).
#[tokio::test]
async fn a_token_endpoint_dying_mid_answer_loses_nothing() {
    let upstream = Faulty::start(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"access_token\":\"at-",
    )
    .await;
    let dir = crate::support::scratch("token-dies");
    let pair = pair(crate::proxy_oauth2::now() - 10);
    store_pair(&dir, &pair);
    let proxy = Proxy::start_in(&config(&upstream.base_url()), &dir).await;
    let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert!(a.text().contains("refresh"), "{}", a.text());
    let kept = xgate::store::SqliteStore::open(&dir.join("xgate.db"), None)
        .unwrap()
        .load_blocking("bob", xgate::store::TokenKind::Oauth2)
        .unwrap();
    assert_eq!(kept, Some(pair));
}

/// A client that stops reading a stream without closing it (an SDK whose `close()` leaves the
/// request open) is cut off once `streams.consumer_buffer_bytes` are queued for it, and with
/// no consumer left the upstream stream ends after `streams.linger`: X's one stream
/// connection of the App is not held for ever.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_at_idle_timeout() {
    use tokio::io::AsyncWriteExt as _;
    let fake = FakeX::start().await;
    let chunk = format!("{}\r\n", "x".repeat(64 * 1024));
    // 64 KiB every millisecond for up to 100 s: the socket buffers fill within a second.
    fake.script(
        "/2/tweets/sample/stream",
        crate::support::fake_x::Reply::stream(
            &chunk,
            &chunk,
            Duration::from_millis(1),
            100_000,
            "",
        ),
    );
    let proxy = Proxy::start(
        &crate::support::proxy::TestConfig::new(&fake.base_url())
            .server("idle_timeout", "1s")
            .section("streams", "linger", "0s")
            .toml(),
    )
    .await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(
            format!(
                "GET /2/tweets/sample/stream HTTP/1.1\r\nHost: x\r\nX-Xgate-Key: {KEY}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // The client never reads.
    assert!(
        fake.wait_until(Duration::from_secs(20), |f| f
            .was_cancelled("/2/tweets/sample/stream"))
            .await,
        "the upstream stream was still open 20 s after the client stopped reading"
    );
    assert!(!fake.stream_done("/2/tweets/sample/stream"));
    drop(client);
}
