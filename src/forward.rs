//! The upstream exchange: one prepared request to X and its answer back (CONTRACT sections
//! 3 to 6, from the moment the request leaves).
//!
//! Owns sending (the reservation is marked sent as the request leaves, and given back only
//! when no connection to X was made), the one replay of an OAuth 2.0 request that X answered
//! 401, learning from X's rate-limit headers, recognising X's `usage-capped` 429, following
//! upstream's clock for OAuth 1.0a timestamps, and turning upstream's answer into the
//! client's response (hop-by-hop headers removed, the body relayed with `idle_timeout`).

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::auth::Outbound;
use crate::body::{ProxyBody, UpstreamBody};
use crate::costs::Charge;
use crate::endpoints::EndpointId;
use crate::error::{ProxyError, UpstreamFailure};
use crate::headers;
use crate::identity::{Identity, IdentityId};
use crate::limits::{self, Admission};
use crate::metrics::{EndpointLabel, LimitSource};
use crate::state::State;
use crate::telemetry::access::RequestFacts;
use crate::upstream::Upstream;

/// The most of an upstream 429 body read to look for `usage-capped`.
const MAX_429_BODY: usize = 64 * 1024;

/// What the phases before the exchange decided: who, where, and what was reserved.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// The identity, and its id.
    pub who: (IdentityId, &'a Identity),
    /// The endpoint; `None` is `other`.
    pub endpoint: Option<EndpointId>,
    /// The rate-limit reservation.
    pub admission: Admission<'a>,
    /// The price and the budgets' reservation.
    pub charge: Charge,
}

/// Sends `outbound` as `identity` (`id`) on `endpoint`, and returns the client's response,
/// metered as its body streams by.
pub async fn exchange(
    state: &State,
    upstream: &Upstream,
    exchange: Exchange<'_>,
    outbound: Outbound,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Exchange {
        who: (id, identity),
        endpoint,
        mut admission,
        mut charge,
    } = exchange;
    let Outbound {
        request,
        generation,
        replay,
    } = outbound;
    let sent = Instant::now();
    admission.sent();
    let mut first = upstream.send(request).await;
    let unauthorized = matches!(&first, Ok(r) if r.status() == StatusCode::UNAUTHORIZED);
    if let (true, Some(generation)) = (unauthorized, generation) {
        match replay {
            // A streamed body cannot be sent again: X's 401 goes back, and the pair is
            // refreshed for the requests that follow.
            None => state.oauth2().refresh_soon(id, generation),
            Some((method, uri, mut headers)) => {
                let fresh = state
                    .oauth2()
                    .after_unauthorized(id, &identity.name, generation)
                    .await?;
                headers.insert(header::AUTHORIZATION, fresh);
                let mut again = Request::new(UpstreamBody::Full(None));
                *again.method_mut() = method;
                *again.uri_mut() = uri;
                *again.headers_mut() = headers;
                tracing::debug!(identity = %identity.name, "replaying after a 401 with the refreshed token");
                first = upstream.send(again).await;
            }
        }
    }
    let resp = match first {
        Ok(resp) => resp,
        Err(e) => {
            if let Some(failure) = e.upstream_failure() {
                state.metrics().upstream_error(failure);
            }
            if let ProxyError::UpstreamUnavailable {
                failure: UpstreamFailure::Connect | UpstreamFailure::Tls,
                ..
            } = e
            {
                // No connection was made, so nothing reached X: the reservation goes back
                // (with the admission, dropped here). Any other failure may have reached X,
                // and stays counted.
                admission.never_reached();
            }
            return Err(e);
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // No request xgate sends asks for an upgrade, and no tunnel is ever relayed.
        state.metrics().upstream_error(UpstreamFailure::Reset);
        return Err(ProxyError::UpstreamUnavailable {
            failure: UpstreamFailure::Reset,
            detail:
                "upstream answered 101 Switching Protocols to a request that asked for no upgrade"
                    .to_owned(),
        });
    }
    let took = sent.elapsed();
    let label = EndpointLabel::of(state.catalogue(), endpoint);
    state.metrics().upstream(label, took);
    facts.upstream = Some((resp.status().as_u16(), took));
    charge.answered(resp.status().as_u16());
    let (mut parts, body) = resp.into_parts();
    if let (Some(remaining), Some(_)) = (admission.learn(&parts.headers).await, endpoint) {
        state
            .metrics()
            .remaining(&identity.name, label.name, remaining);
    }
    drop(admission);
    if let Some(date) = parts.headers.get(header::DATE) {
        state.credentials().skew().observe(date, state.clock());
    }
    headers::clean_response(&mut parts.headers);
    parts.version = Version::HTTP_11;
    if parts.status == StatusCode::TOO_MANY_REQUESTS {
        // Small, and read whole to see whether it is X's usage-capped problem (rule 3).
        let bytes = read_upstream_small(body, state.idle_timeout()).await?;
        let source = if limits::is_usage_capped(&bytes) {
            tracing::warn!(
                identity = %identity.name,
                "X answered usage-capped: requests of this App are answered locally for limits.usage_cap_cooldown"
            );
            state.limiter().usage_capped(id);
            LimitSource::UsageCapped
        } else {
            LimitSource::Upstream
        };
        state
            .metrics()
            .rate_limited(&identity.name, label.name, source);
        let mut body = ProxyBody::full(bytes);
        body.tap(Box::new(charge));
        return Ok(Response::from_parts(parts, body));
    }
    let mut body = first_frame(body, state.idle_timeout())
        .await
        .inspect_err(|e| {
            if let Some(failure) = e.upstream_failure() {
                state.metrics().upstream_error(failure);
            }
        })?;
    body.tap(Box::new(charge));
    Ok(Response::from_parts(parts, body))
}

/// How long the response head waits for the first frame of upstream's body.
const FIRST_FRAME_WAIT: Duration = Duration::from_millis(25);

/// Upstream's body, its first frame read first when it comes within [`FIRST_FRAME_WAIT`]: a body
/// that fails before its first byte (broken chunked framing, a connection cut after the head)
/// is then a 502 the client receives, instead of a head already sent and a closed connection.
/// A body that takes longer (a stream waiting for its first event) is relayed as it comes.
async fn first_frame(body: Incoming, idle: Duration) -> Result<ProxyBody, ProxyError> {
    let mut rest = crate::body::IdleTimeout::new(body, idle);
    if rest.is_end_stream() {
        return Ok(ProxyBody::upstream_after(None, rest));
    }
    match tokio::time::timeout(FIRST_FRAME_WAIT, rest.frame()).await {
        Ok(Some(Err(e))) => Err(ProxyError::UpstreamUnavailable {
            failure: UpstreamFailure::Reset,
            detail: format!("the answer's body failed before its first byte: {e}"),
        }),
        Ok(Some(Ok(frame))) => Ok(ProxyBody::upstream_after(frame.into_data().ok(), rest)),
        Ok(None) | Err(_) => Ok(ProxyBody::upstream_after(None, rest)),
    }
}

/// Reads a small upstream body whole, within `idle` per wait.
async fn read_upstream_small(body: Incoming, idle: Duration) -> Result<Bytes, ProxyError> {
    let failed = |detail: String| ProxyError::UpstreamUnavailable {
        failure: UpstreamFailure::Reset,
        detail,
    };
    let collect = http_body_util::Limited::new(body, MAX_429_BODY).collect();
    match tokio::time::timeout(idle, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(failed(format!(
            "the 429 answer's body could not be read: {e}"
        ))),
        Err(_elapsed) => Err(failed(format!(
            "the 429 answer's body sent nothing for {idle:?}"
        ))),
    }
}
