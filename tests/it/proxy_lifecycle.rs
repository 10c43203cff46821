//! Listeners, connections and shutdown (CONTRACT sections 2 `[server]`, 8 health, 9).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::AsyncWriteExt;

use crate::support::fake_x::{BEARER, FakeX, Reply};
use crate::support::http::{get, raw, read_until_close, request, send, send_h2, send_streaming};
use crate::support::proxy::{KEY, Proxy, config};
use crate::support::scratch;
use crate::support::tls::TestCa;

#[tokio::test]
async fn http2_prior_knowledge() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url(), "")).await;
    let a = send_h2(
        proxy.addr,
        request("GET", "http://xgate/2/users/me")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "alice")
            .body(Full::default())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(matches!(
        fake.requests()[0].auth,
        crate::support::fake_x::Auth::Oauth1 { valid: true, .. }
    ));
}

#[tokio::test]
async fn inbound_tls() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue_pem(&["localhost", "127.0.0.1"]);
    let dir = scratch("inbound-tls");
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let fake = FakeX::start().await;
    let proxy = Proxy::start_in(
        &config(
            &fake.base_url(),
            "#server\ntls = { cert = \"cert.pem\", key = \"key.pem\" }\n",
        ),
        &dir,
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap();
    roots.add(ca_der).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = sender
        .send_request(
            request("GET", "/2/tweets/1")
                .header("host", "localhost")
                .header("x-xgate-key", KEY)
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A plain-text client gets nothing useful from a TLS port.
    let out = raw(
        proxy.addr,
        b"GET /2/tweets/1 HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!out.contains("200 OK"), "{out}");
}

#[tokio::test]
async fn max_connections_queues_further_connections() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url(), "#server\nmax_connections = 1\n")).await;
    // The first connection holds the only slot while it is open.
    let mut first = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    first
        .write_all(
            format!("GET /2/tweets/1 HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.requests().len() == 1)
            .await
    );
    let second = tokio::spawn(get(proxy.addr, "/2/tweets/2", None));
    // While the first is open the second waits in the accept queue.
    assert!(
        !fake
            .wait_until(Duration::from_millis(300), |f| f.requests().len() > 1)
            .await
    );
    drop(first);
    let a = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn idle_connections_are_closed_after_keepalive_timeout() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(
        &fake.base_url(),
        "#server\nkeepalive_timeout = \"300ms\"\n",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        format!("GET /2/tweets/1 HTTP/1.1\r\nHost: x\r\nx-xgate-key: {KEY}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // Reads the answer, then the server closes the idle connection (well before 10 s).
    let started = tokio::time::Instant::now();
    let out = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the idle connection was not closed"
    );
}

#[tokio::test]
async fn slow_request_heads_are_dropped() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(
        &fake.base_url(),
        "#server\nheader_read_timeout = \"300ms\"\n",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /2/tweets/1 HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let out = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "a slow head was not dropped"
    );
    assert!(!out.contains("200"), "{out}");
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn health_and_readiness() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url(), "")).await;
    let healthz = send(
        proxy.admin,
        request("GET", "/healthz").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(healthz.status, 200);
    let readyz = send(
        proxy.admin,
        request("GET", "/readyz").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(readyz.status, 200);
    let other = send(
        proxy.admin,
        request("GET", "/2/tweets/1").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(other.status, 404, "the admin port never proxies");
    assert!(fake.requests().is_empty());
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests_and_closes_streams_after_grace() {
    let fake = FakeX::start().await;
    let mut proxy = Proxy::start(&config(
        &fake.base_url(),
        "#server\nshutdown_grace = \"3s\"\n",
    ))
    .await;
    fake.script(
        "/2/slow",
        Reply::json(200, r#"{"slow":true}"#).delay(Duration::from_millis(800)),
    );
    fake.script(
        "/2/stream",
        Reply::stream(
            "first\r\n",
            "\r\n",
            Duration::from_millis(100),
            1000,
            "never",
        ),
    );
    let slow = tokio::spawn(get(proxy.addr, "/2/slow", None));
    let stream = send_streaming(
        proxy.addr,
        request("GET", "/2/stream")
            .header("x-xgate-key", KEY)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(stream.status(), 200);
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| !f
            .requests_to("/2/slow")
            .is_empty())
            .await
    );

    let admin = proxy.admin;
    let addr = proxy.addr;
    proxy.begin_shutdown();
    // /readyz turns 503 while in-flight requests finish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = send(
            admin,
            request("GET", "/readyz").body(Full::default()).unwrap(),
        )
        .await;
        if r.status == 503 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never turned 503"
        );
        tokio::task::yield_now().await;
    }
    let slow = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (slow.status.as_u16(), slow.text()),
        (200, r#"{"slow":true}"#.to_owned())
    );
    // No longer accepting.
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown began"
    );
    // The stream is closed when the grace period ends, and run() returns.
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), proxy.join())
        .await
        .unwrap()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(9));
    let body = tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::BodyExt::collect(stream.into_body()),
    )
    .await
    .unwrap();
    assert!(
        body.is_err(),
        "the stream should have been cut at the end of the grace period"
    );
}

/// The real binary: SIGTERM during a slow request; the request completes, exit status 0.
#[tokio::test]
async fn sigterm_during_a_slow_request_still_completes() {
    let fake = FakeX::start().await;
    fake.script(
        "/2/slow",
        Reply::json(200, r#"{"done":true}"#).delay(Duration::from_millis(1500)),
    );
    let dir = scratch("sigterm");
    std::fs::write(dir.join("proxy.toml"), config(&fake.base_url(), "")).unwrap();
    // Readiness: the startup line names the bound address.
    let served = crate::support::binary::serve(&dir, &[], &[("XGATE_LOG", "info")]).await;
    let (mut child, addr, mut rx, mut log) =
        (served.child, served.addr, served.stderr, served.startup);
    let slow = tokio::spawn(get(addr, "/2/slow", None));
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| !f
            .requests_to("/2/slow")
            .is_empty())
            .await
    );
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let a = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.text()),
        (200, r#"{"done":true}"#.to_owned())
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    while let Ok(line) = rx.try_recv() {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(log.contains("shutdown signal received"), "{log}");
    // The access record of the slow request, written by the binary's own access-log sink.
    let record = log
        .lines()
        .find(|l| l.contains("INFO request request_id=") && l.contains("path=/2/slow"))
        .unwrap_or_else(|| panic!("no access record in\n{log}"));
    for field in [
        "endpoint=\"other\"",
        "status=200",
        "upstream_status=200",
        "bytes=13",
    ] {
        assert!(record.contains(field), "no {field} in {record}");
    }
    assert!(!log.contains(BEARER), "the log shows the Bearer token");
}
