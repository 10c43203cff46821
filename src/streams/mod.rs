//! Streams shared by several consumers (CONTRACT section 12): one connection to X per App and
//! streaming endpoint, however many consumers read it, and filtered-stream rules owned by
//! clients.
//!
//! Owns [`Streams`]: the channels by (App, endpoint) and a consumer joining one
//! ([`Streams::consume`]), the clients' rules ([`rules`]), and the one way xgate calls X here
//! ([`XApi`]: the App's Bearer credential, a draw from the endpoint's bucket per call, as every
//! request of xgate's). Cutting X's bytes into messages and rewriting `matching_rules` is
//! [`line`]'s; a channel's reader, routing and reconnects are [`channel`]'s; the waits between
//! reconnects are [`backoff`]'s; a consumer's bounded queue is [`queue`]'s.

pub mod backoff;
pub mod channel;
pub mod line;
pub mod queue;
pub mod relay;
pub mod rules;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use crate::auth::Credentials;
use crate::body::{ProxyBody, UpstreamBody};
use crate::endpoints::{Catalogue, EndpointId};
use crate::error::{ProxyError, UpstreamFailure};
use crate::identity::{Identities, IdentityId};
use crate::limits::{Draw, Limiter};
use crate::metrics::StreamMetrics;
use crate::store::TokenStore;
use crate::upstream::Upstream;
use channel::{Channel, Closer, Opened, Phase, Refusal, Settings, Source};

/// The filtered stream, whose messages are routed by rule.
pub const FILTERED: &str = "GET /2/tweets/search/stream";

/// The most of a small answer of X's read (rules, refusals).
const MAX_ANSWER: usize = 4 << 20;

/// How xgate itself calls X for streams and rules: as the App, through its Bearer token, with
/// one draw from the endpoint's bucket per call.
#[derive(Debug)]
pub struct XApi {
    credentials: Arc<Credentials>,
    identities: Arc<Identities>,
    upstream: Arc<Upstream>,
    limiter: Arc<Limiter>,
    catalogue: Arc<Catalogue>,
    idle: Duration,
}

/// What a call of xgate's own got.
#[derive(Debug)]
enum Called {
    /// X's answer head (its body unread).
    Answer(Response<Incoming>),
    /// The local bucket is empty; nothing was sent.
    Limited(Duration),
}

impl XApi {
    /// A call of `method` `target` (path and query) as `app`, with `body` (JSON) if any.
    async fn call(
        &self,
        app: IdentityId,
        method: Method,
        target: &str,
        body: Option<Bytes>,
    ) -> Result<Called, ProxyError> {
        let path = target.split('?').next().unwrap_or(target);
        let endpoint = self.catalogue.lookup(&method, path);
        let draw = Draw {
            identity: app,
            endpoint,
            client: None,
        };
        let mut admission = match self.limiter.admit(draw).await {
            Ok(admission) => admission,
            Err(ProxyError::RateLimited {
                reset_ms, now_ms, ..
            }) => {
                return Ok(Called::Limited(Duration::from_millis(
                    reset_ms.saturating_sub(now_ms).max(1),
                )));
            }
            Err(e) => return Err(e),
        };
        let pq: http::uri::PathAndQuery =
            target
                .parse()
                .map_err(|e: http::uri::InvalidUri| ProxyError::UpstreamUnavailable {
                    failure: UpstreamFailure::Connect,
                    detail: format!("{target}: {e}"),
                })?;
        let uri = self.upstream.uri(pq)?;
        let mut headers = http::HeaderMap::new();
        let identity = self.identities.get(app);
        self.credentials
            .authorize(app, identity, &method, &uri, None, &mut headers)?;
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("xgate/", env!("CARGO_PKG_VERSION"))),
        );
        let body = match body {
            Some(b) => {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                UpstreamBody::Full(Some(b))
            }
            None => UpstreamBody::Full(None),
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        admission.sent();
        let resp = match self.upstream.send(req).await {
            Ok(resp) => resp,
            Err(e) => {
                if matches!(
                    e,
                    ProxyError::UpstreamUnavailable {
                        failure: UpstreamFailure::Connect | UpstreamFailure::Tls,
                        ..
                    }
                ) {
                    admission.never_reached();
                }
                return Err(e);
            }
        };
        let _remaining = admission.learn(resp.headers()).await;
        Ok(Called::Answer(resp))
    }

    /// A call whose answer is read whole: its status and body.
    async fn call_small(
        &self,
        app: IdentityId,
        method: Method,
        target: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ProxyError> {
        let resp = match self.call(app, method, target, body).await? {
            Called::Answer(resp) => resp,
            Called::Limited(wait) => {
                return Err(ProxyError::UpstreamUnavailable {
                    failure: UpstreamFailure::Connect,
                    detail: format!(
                        "the App's bucket for {target} is empty; it refills in {} s",
                        wait.as_secs().max(1)
                    ),
                });
            }
        };
        let status = resp.status();
        let body = read_small(resp.into_body(), self.idle).await?;
        Ok((status, body))
    }
}

/// Reads a small answer body whole, within `idle` per wait.
async fn read_small(body: Incoming, idle: Duration) -> Result<Bytes, ProxyError> {
    let collect = http_body_util::Limited::new(body, MAX_ANSWER).collect();
    match tokio::time::timeout(idle, collect).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(ProxyError::UpstreamUnavailable {
            failure: UpstreamFailure::Reset,
            detail: format!("X's answer could not be read: {e}"),
        }),
        Err(_elapsed) => Err(ProxyError::UpstreamTimeout(idle)),
    }
}

/// Opens one App's stream on one endpoint, with the query of the consumer that opened the
/// channel.
#[derive(Debug)]
struct XStream {
    x: Arc<XApi>,
    app: IdentityId,
    target: String,
}

impl Source for XStream {
    fn open(&self) -> Pin<Box<dyn Future<Output = Opened> + Send + '_>> {
        Box::pin(async move {
            let resp = match self.x.call(self.app, Method::GET, &self.target, None).await {
                Ok(Called::Answer(resp)) => resp,
                Ok(Called::Limited(wait)) => return Opened::Wait(wait),
                Err(e) => return Opened::Failed(e.to_string()),
            };
            let (mut parts, body) = resp.into_parts();
            if parts.status == StatusCode::OK {
                return Opened::Up(body.map_err(Into::into).boxed_unsync());
            }
            crate::headers::clean_response(&mut parts.headers);
            let body = read_small(body, self.x.idle).await.unwrap_or_default();
            Opened::Refused(Arc::new(Refusal {
                status: parts.status,
                headers: parts.headers,
                body,
            }))
        })
    }
}

/// What a channel is for: the App, the endpoint, and the `partition` asked for (X's
/// partitioned streams — firehose, compliance, the 10 % sample — are one connection per
/// partition).
type Key = (IdentityId, EndpointId, Option<String>);

/// The channels, by App, endpoint and partition.
#[derive(Debug, Default)]
struct Hub {
    channels: Mutex<HashMap<Key, Arc<Channel>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Channel>>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Closer for Hub {
    fn close_if_deserted(&self, channel: &Arc<Channel>) -> bool {
        let mut channels = self.lock();
        if !channel.is_deserted() {
            return false;
        }
        channels.retain(|_, c| !Arc::ptr_eq(c, channel));
        channel.closed();
        true
    }

    fn forget(&self, channel: &Arc<Channel>) {
        self.lock().retain(|_, c| !Arc::ptr_eq(c, channel));
    }
}

/// Everything needed to build [`Streams`].
#[derive(Debug)]
pub struct Parts {
    /// The identities' credentials.
    pub credentials: Arc<Credentials>,
    /// The identities.
    pub identities: Arc<Identities>,
    /// The upstream client.
    pub upstream: Arc<Upstream>,
    /// The rate limits.
    pub limiter: Arc<Limiter>,
    /// The endpoints.
    pub catalogue: Arc<Catalogue>,
    /// The store the rules are kept in.
    pub store: Arc<dyn TokenStore>,
    /// The stream metrics.
    pub metrics: StreamMetrics,
    /// `[streams]`.
    pub config: crate::config::Streams,
    /// `server.idle_timeout`.
    pub idle: Duration,
    /// The clock (`meta.sent` of rule answers).
    pub clock: Arc<dyn crate::clock::Clock>,
    /// `[shared]`: one replica holds each App's stream, the others follow it through Redis.
    pub shared: Option<crate::config::Shared>,
}

/// The shared streams and the clients' rules.
#[derive(Debug)]
pub struct Streams {
    hub: Arc<Hub>,
    x: Arc<XApi>,
    rules: rules::Rules,
    metrics: StreamMetrics,
    settings: Settings,
    catalogue: Arc<Catalogue>,
    identities: Arc<Identities>,
    relay: Option<Arc<relay::Relay>>,
    /// The two rules endpoints, looked up once.
    rules_endpoints: [Option<EndpointId>; 2],
}

/// What a request to a stream or rules endpoint is, for [`Streams`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A streaming endpoint: the consumer joins the App's channel.
    Stream,
    /// `GET` or `POST /2/tweets/search/stream/rules`: the client's own rules.
    Rules,
}

impl Streams {
    /// The streams, with no channel open yet.
    pub fn new(parts: Parts) -> Result<Self, String> {
        let relay = match &parts.shared {
            Some(shared) => {
                let mut id = [0u8; 4];
                getrandom::getrandom(&mut id).map_err(|e| format!("randomness: {e}"))?;
                let replica = format!(
                    "{}-{:02x}{:02x}{:02x}{:02x}",
                    std::process::id(),
                    id[0],
                    id[1],
                    id[2],
                    id[3]
                );
                Some(Arc::new(relay::Relay::new(shared, replica)?))
            }
            None => None,
        };
        let x = Arc::new(XApi {
            credentials: parts.credentials,
            identities: Arc::clone(&parts.identities),
            upstream: parts.upstream,
            limiter: parts.limiter,
            catalogue: Arc::clone(&parts.catalogue),
            idle: parts.idle,
        });
        Ok(Self {
            hub: Arc::new(Hub::default()),
            rules: rules::Rules::new(
                Arc::clone(&x),
                parts.store,
                Arc::clone(&parts.identities),
                parts.config.max_rules,
                parts.clock,
                relay.clone(),
            ),
            x,
            metrics: parts.metrics,
            settings: Settings {
                buffer: parts.config.consumer_buffer_bytes,
                linger: parts.config.linger,
                max_consumers: parts.config.max_consumers,
            },
            rules_endpoints: [Method::GET, Method::POST]
                .map(|m| parts.catalogue.lookup(&m, rules::RULES_PATH)),
            catalogue: parts.catalogue,
            identities: parts.identities,
            relay,
        })
    }

    /// Ends every consumer's stream and closes every connection to X (shutdown: consumers
    /// reconnect, to another replica if there is one).
    pub fn shutdown(&self) {
        let channels: Vec<Arc<Channel>> = self.hub.lock().drain().map(|(_, c)| c).collect();
        for channel in channels {
            channel.stop();
        }
    }

    /// With `[shared]`: follows the other replicas' rules changes (their clients' rules
    /// route this replica's messages too).
    pub fn follow_rules_changes(self: &Arc<Self>) {
        let Some(relay) = self.relay.clone() else {
            return;
        };
        let streams = Arc::downgrade(self);
        tokio::spawn(async move {
            let channel = relay.rules_channel();
            let mut failing = false;
            // Bounded only by the process: a lost subscription is made again after a pause.
            loop {
                match relay.subscribe(&channel).await {
                    Ok(mut messages) => {
                        failing = false;
                        while let Some(msg) = std::future::poll_fn(|cx| {
                            futures_core::Stream::poll_next(Pin::new(&mut messages), cx)
                        })
                        .await
                        {
                            let Some(streams) = streams.upgrade() else {
                                return;
                            };
                            let app = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                            if let Some(id) = streams.identities.find(&app) {
                                streams.rules.reload(id).await;
                            }
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "not following the other replicas' stream rules changes (logged once until it works): a replica reads the rules again at each rule request and consumer; retrying every 5 s");
                    }
                    Err(_) => {}
                }
                if streams.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }

    /// Whether `endpoint` is one [`Streams`] answers, and how.
    pub fn kind(&self, endpoint: Option<EndpointId>) -> Option<Kind> {
        let id = endpoint?;
        if self.rules_endpoints.contains(&Some(id)) {
            Some(Kind::Rules)
        } else if self.catalogue.get(id)?.stream {
            Some(Kind::Stream)
        } else {
            None
        }
    }

    /// The clients' rules.
    pub fn rules(&self) -> &rules::Rules {
        &self.rules
    }

    /// Reconciles the stored rules of every App that has some with X's, in the background
    /// (CONTRACT section 12 rule 2); a rule request or a consumer waits for its App's. An App
    /// without stored rules is reconciled at its first rule request or consumer: a proxy that
    /// serves no streams never asks X about rules.
    pub fn reconcile_in_background(self: &Arc<Self>) {
        let apps: Vec<IdentityId> = self
            .identities
            .iter()
            .filter(|(id, i)| i.app == *id)
            .map(|(id, _)| id)
            .collect();
        let streams = Arc::downgrade(self);
        tokio::spawn(async move {
            for app in apps {
                let Some(streams) = streams.upgrade() else {
                    return;
                };
                if !streams.rules.has_stored(app).await {
                    continue;
                }
                if let Err(e) = streams.rules.book(app).await {
                    tracing::warn!(app = %streams.identities.get(app).name, error = %e, "stream rules not reconciled with X at start; the first rule request or consumer retries");
                }
            }
        });
    }

    /// A consumer of `client` joins `app`'s stream on `endpoint` (`target`: the path and
    /// query it asked for, used when it opens the connection). `messages` counts what it is
    /// delivered.
    pub async fn consume(
        &self,
        client: &Arc<str>,
        app: IdentityId,
        endpoint: EndpointId,
        target: &str,
        messages: Arc<AtomicU64>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let name = self
            .catalogue
            .get(endpoint)
            .map_or("other", |e| e.name.as_str());
        let routes = if name == FILTERED {
            if !self.rules.has_rules(app, client).await? {
                return Ok(no_rules(client));
            }
            Some(self.rules.routes(app))
        } else {
            None
        };
        let app_name = Arc::clone(&self.identities.get(app).name);
        let (channel, (id, queue)) = {
            let mut channels = self.hub.lock();
            let partition = target
                .split_once('?')
                .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("partition=")))
                .map(str::to_owned);
            // The lease and feed of a partition are its own.
            let shared_as = match &partition {
                Some(p) => format!("{name} partition {p}"),
                None => name.to_owned(),
            };
            let channel = channels
                .entry((app, endpoint, partition))
                .or_insert_with(|| {
                    let x: Box<dyn Source> = Box::new(XStream {
                        x: Arc::clone(&self.x),
                        app,
                        target: target.to_owned(),
                    });
                    let source: Box<dyn Source> = match &self.relay {
                        Some(relay) => Box::new(relay::SharedSource::new(
                            Arc::clone(relay),
                            x,
                            &app_name,
                            &shared_as,
                        )),
                        None => x,
                    };
                    let channel = Channel::new(
                        Arc::clone(&app_name),
                        Arc::from(name),
                        routes,
                        source,
                        self.settings,
                        self.metrics.handles(&app_name, name),
                    );
                    let closer: Weak<dyn Closer> = Arc::downgrade(&self.hub) as Weak<dyn Closer>;
                    channel.start(closer);
                    channel
                });
            let joined = channel
                .join(client)
                .map_err(|crowded| ProxyError::TooManyConsumers {
                    app: app_name.to_string(),
                    endpoint: name.to_owned(),
                    connected: crowded.0,
                })?;
            (Arc::clone(channel), joined)
        };
        let leave = {
            let channel = Arc::clone(&channel);
            Box::new(move || channel.leave(id))
        };
        let body = queue::ConsumerBody::new(queue, messages, leave);
        match channel.settled().await {
            Phase::Refused(refusal) => {
                drop(body);
                let mut resp = Response::new(ProxyBody::full(refusal.body.clone()));
                *resp.status_mut() = refusal.status;
                *resp.headers_mut() = refusal.headers.clone();
                Ok(resp)
            }
            Phase::Connecting | Phase::Serving | Phase::Closed => {
                let mut resp = Response::new(ProxyBody::boxed(body));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Ok(resp)
            }
        }
    }
}

/// X's 409 for a stream with no rules, for a client that has none (its rules are all that
/// it can see).
fn no_rules(client: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "title": "ConnectionException",
        "detail": format!("This stream has no rules of client {client}: add one with POST /2/tweets/search/stream/rules."),
        "connection_issue": "NoRules",
        "type": "https://api.x.com/2/problems/streaming-connection",
    });
    let mut resp = Response::new(ProxyBody::full(body.to_string()));
    *resp.status_mut() = StatusCode::CONFLICT;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

#[cfg(test)]
mod tests;
