//! One request from the client to X and back, as CONTRACT section 7 orders its answers.
//!
//! Owns [`handle`], the list of phases — one call each, in the contract's order, each phase in
//! the module named for its concern. Choosing status codes is `error.rs`'s; turning errors into
//! responses and writing the access record are `service.rs`'s; what every phase reads is
//! `state.rs`'s.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::{Either, Full};

use crate::auth;
use crate::body::{BoxError, ProxyBody};
use crate::client_auth::Clients;
use crate::costs;
use crate::endpoints::{self, EndpointId};
use crate::error::ProxyError;
use crate::identity::IdentityId;
use crate::limits::Draw;
use crate::state::State;
use crate::streams;
use crate::telemetry::access::RequestFacts;
use crate::upstream::Upstream;
use crate::{forward, inbound};

/// One request, phase by phase: each line is one of CONTRACT section 7's answers, in its
/// order. Requests that cannot be parsed (400, 431) never get here: hyper answers them.
///
/// The body is first touched by the credentials phase; a request refused before it has its
/// unread body thrown away (bounded) so the client can read the answer.
pub async fn handle<B>(
    state: &State,
    upstream: &Upstream,
    req: http::Request<B>,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, ProxyError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let checked = async {
        inbound::check_framing(parts.version, &parts.headers)?; // 400, 501
        inbound::check_method(&parts.method)?; // 405
        let client = state.clients.authenticate(&parts.headers)?; // 401
        facts.client = Some(Arc::clone(&client.name));
        let id = Clients::identity(client, &parts.headers, &state.identities)?; // 400, 403
        let identity = state.identities.get(id);
        facts.identity = Some(Arc::clone(&identity.name));
        let target = inbound::target(&parts.uri, &state.allowed_prefixes)?; // 400, 404
        let endpoint = state.catalogue.lookup(&parts.method, target.path());
        facts.endpoint = Some(endpoint);
        let pair = state.oauth2.stored_pair(id, identity)?; // 401 credentials-missing
        let granted = pair
            .as_ref()
            .map_or(&identity.scopes[..], |p| &p.scopes[..]);
        endpoints::precheck_at(&state.catalogue, endpoint, identity, granted)?; // 403
        inbound::check_declared_size(&parts.headers, state.max_body_bytes)?; // 413
        Ok((client, (id, identity), endpoint, target))
    }
    .await;
    let (client, who, endpoint, target) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            crate::body::discard_unread(body, &parts.headers);
            return Err(e);
        }
    };
    if let Some(kind) = state.streams.kind(endpoint) {
        return shared_stream(
            state,
            kind,
            (client, who.0, endpoint),
            &parts,
            body,
            target,
            facts,
        )
        .await;
    }
    // A Post's price depends on whether its text holds a URL: that endpoint's body (a small
    // JSON document) is read first, bounded by `max_body_bytes`, and sent as read.
    let url_priced = parts.method == http::Method::POST
        && endpoint
            .and_then(|e| state.catalogue.get(e))
            .is_some_and(|e| e.price.url_micros > 0);
    let (body, url) = if url_priced {
        let bytes = auth::read_bounded(body, state.max_body_bytes).await?; // 400, 413
        let url = costs::post_has_url(&bytes);
        (Either::Right(Full::new(bytes)), url)
    } else {
        (Either::Left(body), None)
    };
    let admitted = async {
        let charge = state
            .meter
            .reserve(
                Arc::clone(&client.name),
                who.0,
                endpoint,
                (&parts.method, &parts.uri),
                url,
            )
            .await?; // 429 budget-exhausted
        let share = client.rate.as_ref().map(|r| (&*client.name, r));
        let draw = Draw {
            identity: who.0,
            endpoint,
            client: share,
        };
        let admission = state.limiter.admit(draw).await?; // 429
        Ok((charge, state.upstream.uri(target)?, admission))
    }
    .await;
    let (charge, uri, admission) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            crate::body::discard_unread(body, &parts.headers);
            return Err(e);
        }
    };
    let max_body = state.max_body_bytes;
    let outbound = auth::outbound(
        &state.credentials,
        &state.oauth2,
        who,
        parts,
        uri,
        body,
        max_body,
    )
    .await?; // 401, 413
    let exchange = forward::Exchange {
        who,
        endpoint,
        admission,
        charge,
    };
    forward::exchange(state, upstream, exchange, outbound, facts).await // 502, 504
}

/// A request that [`crate::streams`] answers (CONTRACT section 12): a consumer of a stream
/// joins its App's one connection; a rules request acts on the client's own rules. Both are
/// metered like every request; the connections xgate makes draw from the buckets themselves.
async fn shared_stream<B>(
    state: &State,
    kind: streams::Kind,
    (client, id, endpoint): (&crate::client_auth::Client, IdentityId, Option<EndpointId>),
    parts: &http::request::Parts,
    body: B,
    target: http::uri::PathAndQuery,
    facts: &mut RequestFacts,
) -> Result<Response<ProxyBody>, ProxyError>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let app = state.identities.get(id).app;
    let reserved = state
        .meter
        .reserve(
            Arc::clone(&client.name),
            id,
            endpoint,
            (&parts.method, &parts.uri),
            None,
        )
        .await; // 429 budget-exhausted
    let mut charge = match reserved {
        Ok(charge) => charge,
        Err(e) => {
            crate::body::discard_unread(body, &parts.headers);
            return Err(e);
        }
    };
    let mut resp = match (kind, endpoint) {
        (streams::Kind::Stream, Some(endpoint)) => {
            crate::body::discard_unread(body, &parts.headers);
            let messages = Arc::new(std::sync::atomic::AtomicU64::new(0));
            facts.messages = Some(Arc::clone(&messages));
            state
                .streams
                .consume(&client.name, app, endpoint, target.as_str(), messages)
                .await?
        }
        _ => {
            let bytes = auth::read_bounded(body, state.max_body_bytes).await?; // 400, 413
            state
                .streams
                .rules()
                .handle(
                    app,
                    &client.name,
                    &parts.method,
                    target.query().unwrap_or(""),
                    &bytes,
                )
                .await?
        }
    };
    charge.answered(resp.status().as_u16());
    resp.body_mut().tap(Box::new(charge));
    Ok(resp)
}

#[cfg(test)]
mod tests;
