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
use crate::support::proxy::{KEY, Proxy, TestConfig, config, table};
use crate::support::scratch;
use crate::support::tls::TestCa;

#[tokio::test]
async fn http2_prior_knowledge() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
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

/// A proxy serving inbound TLS with a certificate from a test CA; `server` adds to the
/// config.
async fn tls_proxy(
    name: &str,
    server: impl FnOnce(TestConfig) -> TestConfig,
) -> (TestCa, FakeX, Proxy) {
    let ca = TestCa::new();
    let (cert, key) = ca.issue_pem(&["localhost", "127.0.0.1"]);
    let dir = scratch(name);
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let fake = FakeX::start().await;
    let tls = table([("cert", "cert.pem".into()), ("key", "key.pem".into())]);
    let cfg = server(TestConfig::new(&fake.base_url()).server("tls", tls));
    let proxy = Proxy::start_in(&cfg.toml(), &dir).await;
    (ca, fake, proxy)
}

#[tokio::test]
async fn inbound_tls() {
    let (ca, _fake, proxy) = tls_proxy("inbound-tls", |c| c).await;

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
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("max_connections", 1)
            .toml(),
    )
    .await;
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

// `keepalive_timeout` and `header_read_timeout` are tested in paused time over an in-memory
// connection (`server::tests`), exactly and without waiting.

#[tokio::test]
async fn health_and_readiness() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
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
    let mut proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("shutdown_grace", "3s")
            .toml(),
    )
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
    // The stream is closed when the grace period ends, and run() returns (the scripted
    // stream would outlive the 10 s bound by far).
    tokio::time::timeout(Duration::from_secs(10), proxy.join())
        .await
        .unwrap()
        .unwrap();
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
    std::fs::write(dir.join("proxy.toml"), config(&fake.base_url())).unwrap();
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
    // The child has exited, but the thread reading its stderr may not have passed on the
    // last lines yet: read to the end of the output.
    log.extend(crate::support::binary::remaining_lines(&mut rx).await);
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

/// `tls_handshake_timeout`: a connection that never starts its TLS handshake is dropped
/// (well before the 10 s default).
#[tokio::test]
async fn a_stalled_tls_handshake_is_dropped_after_tls_handshake_timeout() {
    let (_ca, _fake, proxy) =
        tls_proxy("tls-stall", |c| c.server("tls_handshake_timeout", "200ms")).await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let closed = read_until_close(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed.is_empty());
    // Had the timeout not applied, the read above would have run into its own 5 s limit
    // with the connection still open: check it really is closed.
    let write = tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0x16; 64]).await;
    let mut buf = [0u8; 8];
    let read = tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await;
    assert!(
        write.is_err() || matches!(read, Ok(0) | Err(_)),
        "{write:?} {read:?}"
    );
}

/// `http2_max_concurrent_streams` and `max_header_bytes` reach HTTP/2 clients in the
/// server's SETTINGS frame, with the flow-control windows xgate grants (256 KiB per stream,
/// 512 KiB per connection: README, "Memory").
#[tokio::test]
async fn http2_settings_carry_the_configured_limits() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .server("http2_max_concurrent_streams", 7)
            .server("max_header_bytes", 20000)
            .toml(),
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // The client preface and an empty SETTINGS frame.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    tcp.write_all(&hello).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut head),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(head[3], 4, "the server's first frame is not SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut payload)
        .await
        .unwrap();
    let settings: std::collections::BTreeMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS (0x3) and SETTINGS_MAX_HEADER_LIST_SIZE (0x6).
    assert_eq!(settings.get(&3), Some(&7), "{settings:?}");
    assert_eq!(settings.get(&6), Some(&20000), "{settings:?}");
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4).
    assert_eq!(settings.get(&4), Some(&(256 * 1024)), "{settings:?}");
    // The connection's window grows from the protocol's 65,535 bytes by a WINDOW_UPDATE
    // (type 8) on stream 0, among the server's next few frames.
    let mut increment = None;
    for _ in 0..4 {
        let mut head = [0u8; 9];
        tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut head),
        )
        .await
        .unwrap()
        .unwrap();
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut payload)
            .await
            .unwrap();
        if head[3] == 8 && head[5..9] == [0, 0, 0, 0] {
            increment = Some(u32::from_be_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ]));
            break;
        }
    }
    assert_eq!(increment, Some(512 * 1024 - 65_535));
}
