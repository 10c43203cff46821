//! The one place where the service that serves a proxy connection is assembled.
//!
//! Order, outermost first (a request passes down, its response back up):
//!
//! 1. `TowerToHyperService` (in `server`): hyper's connection drives the tower service.
//! 2. [`CatchPanicLayer`]: a panic while a request is handled becomes a 500 problem response
//!    (`internal-error`) instead of a connection torn down with the task, and the other
//!    requests of that connection go on. Outermost, so it catches a panic anywhere below.
//! 3. [`ProxyService`] (`service.rs`): the error boundary and the access record. Below it
//!    everything returns `Result<Response, ProxyError>`; there each error becomes its
//!    contract response, so its error type is `Infallible`.
//! 4. `proxy::handle`: the phases of one request in CONTRACT section 7's order.
//!
//! What is not a layer, and why: the request id and the in-flight counts live in the
//! service's access record, because the record needs what the phases learn (client,
//! identity, endpoint) and must last until the response *body* ends (a stream can last
//! hours), which a layer around the service future does not see. Load shedding is not a
//! layer either: concurrency is already bounded where it is cheapest — `max_connections`
//! before accept (further connections wait in the kernel's queue) and
//! `http2_max_concurrent_streams` per connection — and nothing measured so far calls for a
//! second bound whose threshold would be a new setting.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::service::{ConnActivity, ProxyService};
use crate::state::State;
use crate::upstream::Upstream;

/// The service for one proxy connection, served by the worker whose upstream pool is
/// `upstream`.
pub fn proxy_connection(
    state: &Arc<State>,
    upstream: &Arc<Upstream>,
    activity: &Arc<ConnActivity>,
) -> CatchPanic<ProxyService<Incoming>> {
    tower::ServiceBuilder::new()
        .layer(CatchPanicLayer)
        .service(ProxyService::new(
            Arc::clone(state),
            Arc::clone(upstream),
            Arc::clone(activity),
        ))
}

// === catching panics ===

/// Turns a panic of the inner service (in `call` or while its future runs) into a 500
/// problem response.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchPanicLayer;

impl<S> tower::Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic { inner }
    }
}

/// The service [`CatchPanicLayer`] makes.
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

/// What a caught panic said, for the log (a `&str` or `String` payload; anything else is
/// unnamed).
fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic with no message")
}

fn panicked(payload: &(dyn Any + Send)) -> Response<ProxyBody> {
    tracing::error!(
        panic = panic_message(payload),
        "a request's handling panicked; answered 500"
    );
    ProxyError::Panicked.to_response()
}

impl<S, R> tower::Service<R> for CatchPanic<S>
where
    S: tower::Service<R, Response = Response<ProxyBody>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = CatchPanicFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(inner) => CatchPanicFuture::Running(inner),
            Err(payload) => CatchPanicFuture::Panicked(Some(Box::new(panicked(&*payload)))),
        }
    }
}

/// The future of [`CatchPanic`].
#[derive(Debug)]
pub enum CatchPanicFuture<F> {
    /// The inner service's future.
    Running(F),
    /// `call` itself panicked: this answer is ready.
    Panicked(Option<Box<Response<ProxyBody>>>),
}

impl<F> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Unpin,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Running(inner) => {
                // The inner future is not polled again after a panic: it is replaced.
                match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx)))
                {
                    Ok(poll) => poll,
                    Err(payload) => Poll::Ready(Ok(panicked(&*payload))),
                }
            }
            Self::Panicked(answer) => match answer.take() {
                Some(answer) => Poll::Ready(Ok(*answer)),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer as _, Service as _};

    /// A service that panics in `call` or in its future, on request.
    #[derive(Clone, Copy)]
    struct Panics {
        in_call: bool,
    }

    type Boxed = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    impl tower::Service<u8> for Panics {
        type Response = Response<ProxyBody>;
        type Error = Infallible;
        type Future = Boxed;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u8) -> Boxed {
            assert!(!self.in_call, "panic in call {n}");
            Box::pin(async move {
                assert!(n == 0, "panic in the future of request {n}");
                Ok(Response::new(ProxyBody::full("fine")))
            })
        }
    }

    #[tokio::test]
    async fn a_panic_becomes_a_500_problem_and_the_service_goes_on() {
        let mut svc = CatchPanicLayer.layer(Panics { in_call: false });
        let resp = svc.call(7).await.unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["x-xgate-error"], "internal-error");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        // The same service answers the next request.
        assert_eq!(svc.call(0).await.unwrap().status(), 200);
        let mut svc = CatchPanicLayer.layer(Panics { in_call: true });
        assert_eq!(svc.call(0).await.unwrap().status(), 500);
    }
}
