//! End-to-end cost of one request through xgate on loopback, beside the same request sent
//! straight to the upstream: a tiny in-process hyper server answering a fixed tweet.
//!
//! `cargo bench --bench proxy`. Each iteration is one request on a kept-alive HTTP/1.1
//! connection; no log subscriber is installed, so the access log costs nothing here (the
//! shared rig, `shared/bench/compare.sh`, measures with it). Figures: BENCHMARKS.md.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup: a panic aborts the run"
)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const TWEET: &str =
    r#"{"data":{"id":"1460323737035677698","text":"Introducing a new era of the X API"}}"#;

async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r = Response::new(Full::new(Bytes::from_static(TWEET.as_bytes())));
                    r.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                    r.headers_mut()
                        .insert("x-rate-limit-remaining", "899".parse().unwrap());
                    Ok::<_, Infallible>(r)
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ignored = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

async fn proxy(upstream: SocketAddr) -> SocketAddr {
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
base_url = "http://{upstream}"
[apps.main]
consumer_key = "bench-consumer-key"
consumer_secret = "bench-consumer-secret"
bearer_token = "bench-bearer"
[users.alice]
app = "main"
auth = "oauth1"
token = "bench-access-token"
token_secret = "bench-access-token-secret"
[[clients]]
name = "bench"
anonymous = true
identities = ["main", "alice"]
default_identity = "main"
# Buckets too large to trip in a run (the check still runs on every request), as in
# shared/bench/xgate-bench.toml.
[[limits.override]]
endpoint = "GET /2/tweets/:id"
app = "4000000000/15m"
user = "4000000000/15m"
"#
    );
    let config =
        xgate::config::Config::from_toml_str(&toml, Path::new("."), &BTreeMap::new()).unwrap();
    let listeners = xgate::server::Listeners {
        proxy: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listeners.proxy.local_addr().unwrap();
    tokio::spawn(xgate::server::run(
        listeners,
        config,
        std::future::pending(),
    ));
    addr
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut Sender, identity: &str) -> usize {
    sender.ready().await.unwrap();
    let req = Request::get("/2/tweets/1460323737035677698?tweet.fields=created_at")
        .header("host", "bench")
        .header("x-xgate-identity", identity)
        .body(Full::default())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap().to_bytes().len()
}

fn proxy_bench(c: &mut Criterion) {
    let rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (upstream_addr, proxy_addr) = rt.block_on(async {
        let up = upstream().await;
        (up, proxy(up).await)
    });
    let mut direct = rt.block_on(connect(upstream_addr));
    let mut via_bearer = rt.block_on(connect(proxy_addr));
    let mut via_oauth1 = rt.block_on(connect(proxy_addr));

    let mut g = c.benchmark_group("e2e");
    g.bench_function("direct_to_upstream", |b| {
        b.iter(|| rt.block_on(one(&mut direct, "main")))
    });
    g.bench_function("xgate_bearer", |b| {
        b.iter(|| rt.block_on(one(&mut via_bearer, "main")))
    });
    g.bench_function("xgate_oauth1", |b| {
        b.iter(|| rt.block_on(one(&mut via_oauth1, "alice")))
    });
    g.finish();
}

criterion_group!(benches, proxy_bench);
criterion_main!(benches);
