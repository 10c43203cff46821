//! A small HTTP client for tests: one connection per request, HTTP/1.1 or HTTP/2, and raw
//! bytes for what a well-behaved client would never send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A finished response.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The `x-xgate-error` kind, if any.
    pub fn kind(&self) -> Option<&str> {
        self.header("x-xgate-error")
    }
}

/// Builds a request to the proxy, with the `Host` header every HTTP/1.1 client sends.
pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "xgate.test")
}

/// Sends over HTTP/1.1 and returns the response with its body unread. A request without
/// `Host` gets one, as every HTTP/1.1 client sends (RFC 9112 §3.2); a test of its absence
/// writes raw bytes.
pub async fn send_streaming(
    addr: SocketAddr,
    mut req: Request<Full<Bytes>>,
) -> hyper::Response<Incoming> {
    if !req.headers().contains_key(http::header::HOST) {
        req.headers_mut()
            .insert(http::header::HOST, addr.to_string().parse().unwrap());
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender.send_request(req).await.unwrap()
}

/// Sends over HTTP/1.1 and reads the whole answer.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(20), send_streaming(addr, req))
        .await
        .expect("no answer within 20 s");
    collect(resp).await
}

/// Sends over HTTP/2 with prior knowledge (h2c).
pub async fn send_h2(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Answer, hyper::Error> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    Ok(collect(resp).await)
}

pub async fn collect(resp: hyper::Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body not complete within 20 s")
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET path` with the backend key and optional identity.
pub async fn get(addr: SocketAddr, path: &str, identity: Option<&str>) -> Answer {
    let mut b = request("GET", path).header("x-xgate-key", super::proxy::KEY);
    if let Some(id) = identity {
        b = b.header("x-xgate-identity", id);
    }
    send(addr, b.body(Full::default()).unwrap()).await
}

/// Writes raw bytes and reads until the peer closes or `limit` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_until_close(&mut stream, limit).await
}

pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ignored = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of the first Prometheus line starting with `prefix` (0 when absent).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}
