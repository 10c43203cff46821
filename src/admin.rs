//! The admin listener (CONTRACT section 8): `/healthz`, `/readyz`, `/metrics`.
//!
//! Owns the admin endpoints. `/healthz` answers 200 while the process runs; `/readyz` answers
//! 200 while serving and 503 once shutdown has begun; `/metrics` renders the proxy's registry
//! in the Prometheus text format. It runs on its own listener, never the proxy's, and stays
//! up through the shutdown grace period so orchestrators see the 503.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::metrics::Metrics;

/// Whether the proxy is accepting requests.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the proxy ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether it is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// What the admin endpoints report on.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `/readyz`.
    pub readiness: Arc<Readiness>,
    /// `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// Answers one admin request.
pub async fn handle(
    admin: Admin,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"));
    }
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if admin.readiness.get() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        "/metrics" => {
            let mut resp = Response::new(ProxyBody::full(admin.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    })
}
