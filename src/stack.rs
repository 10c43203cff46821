//! The one place where the service that serves a proxy connection is assembled.
//!
//! Order, outermost first (a request passes down, its response back up):
//!
//! 1. `TowerToHyperService` (in `server`): hyper's connection drives the tower service.
//! 2. [`ProxyService`]: the error boundary and access record. Below it everything returns
//!    `Result<Response, ProxyError>`; here each error becomes its contract response
//!    (`ProxyError::to_response`), so the service's error type is `Infallible`, and the
//!    request's status is recorded (499 if the client left first).
//! 3. `proxy::handle`: the phases of one request in CONTRACT section 7's order (method, client
//!    key, identity, path, stored credentials, auth pre-check, body size, rate limits,
//!    credentials, upstream). They are
//!    plain sequential steps rather than one tower layer each: they share the request's parts
//!    and the identity, which layers would have to pass through request extensions, and a
//!    reader sees the whole order in one function.
//!
//! Metrics and request ids live in the access record that `ProxyService` keeps per request
//! (it needs the identity and endpoint that only `handle` learns); further cross-cutting
//! layers go around [`ProxyService`] here.

use std::sync::Arc;

use hyper::body::Incoming;

use crate::service::{ConnActivity, ProxyService};
use crate::state::State;
use crate::upstream::Upstream;

/// The service for one proxy connection, served by the worker whose upstream pool is
/// `upstream`.
pub fn proxy_connection(
    state: &Arc<State>,
    upstream: &Arc<Upstream>,
    activity: &Arc<ConnActivity>,
) -> ProxyService<Incoming> {
    tower::ServiceBuilder::new().service(ProxyService::new(
        Arc::clone(state),
        Arc::clone(upstream),
        Arc::clone(activity),
    ))
}
