//! Prometheus metrics (CONTRACT section 8), in a registry owned by the running proxy.
//!
//! Owns every metric of the contract and their label sets. The registry belongs to one
//! [`Metrics`] (one per running proxy, so tests can run several in a process), and the admin
//! listener renders it at `/metrics`. Labels are bounded: endpoint templates from the
//! catalogue (`other` for paths it does not know, `-` for requests answered before the
//! endpoint was matched), configured client and identity names (`-` when not known), status
//! codes, and the fixed `source`, `outcome` and `kind` values. No label or value is ever a
//! secret, a token or a client key.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus::{
    CounterVec, Encoder as _, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::endpoints::{Catalogue, EndpointId};
use crate::error::UpstreamFailure;
use crate::identity::{Identities, IdentityKind};
use crate::shared::{Engine, Observer};

/// Buckets for a proxy whose own overhead is well under a millisecond and whose upstream
/// answers in tens to hundreds of milliseconds (seconds).
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets for one operation on a shared engine: loopback round trips take tens of
/// microseconds, a timeout hundreds of milliseconds (seconds).
const SHARED_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// `source` of `xgate_rate_limited_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitSource {
    /// Answered by xgate.
    Local,
    /// X's own 429.
    Upstream,
    /// X's 429 `usage-capped`.
    UsageCapped,
}

impl LimitSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Upstream => "upstream",
            Self::UsageCapped => "usage-capped",
        }
    }
}

/// `outcome` of `xgate_token_refreshes_total`.
pub const REFRESH_OUTCOMES: [&str; 3] = ["ok", "rejected", "error"];

/// `kind` of `xgate_upstream_errors_total`.
pub const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "timeout", "reset", "tls"];

/// Every metric of the contract.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    /// Children of the two histograms per endpoint (`[catalogue endpoints..., other, -]`),
    /// resolved once: the hot path then skips the label lookup.
    by_endpoint: Box<[(OnceLock<Histogram>, OnceLock<Histogram>)]>,
    rate_limited: IntCounterVec,
    remaining: IntGaugeVec,
    token_refreshes: IntCounterVec,
    upstream_errors: IntCounterVec,
    inflight: IntGauge,
    shared_up: IntGaugeVec,
    shared_errors: IntCounterVec,
    shared_duration: HistogramVec,
    costs: CostMetrics,
    streams: StreamMetrics,
}

/// The stream metrics of CONTRACT section 12 rule 6 (handles: cloning shares the metrics).
#[derive(Debug, Clone)]
pub struct StreamMetrics {
    consumers: IntGaugeVec,
    upstream_up: IntGaugeVec,
    reconnects: IntCounterVec,
    messages: IntCounterVec,
    dropped: IntCounterVec,
}

/// One App and streaming endpoint's stream metrics, resolved once.
#[derive(Debug, Clone)]
pub struct StreamHandles {
    /// `xgate_stream_consumers`.
    pub consumers: IntGauge,
    /// `xgate_stream_upstream_up`.
    pub upstream_up: IntGauge,
    metrics: StreamMetrics,
    app: Arc<str>,
    endpoint: Arc<str>,
}

impl StreamMetrics {
    /// The stream metrics, not yet registered anywhere.
    pub fn new() -> Result<Self, MetricsError> {
        Ok(Self {
            consumers: IntGaugeVec::new(
                Opts::new(
                    "xgate_stream_consumers",
                    "Consumers connected to a shared stream, by App and endpoint.",
                ),
                &["app", "endpoint"],
            )?,
            upstream_up: IntGaugeVec::new(
                Opts::new(
                    "xgate_stream_upstream_up",
                    "1 while the App's connection to X's stream is up (held by this replica or, with [shared], relayed from the one that holds it).",
                ),
                &["app", "endpoint"],
            )?,
            reconnects: counter(
                "xgate_stream_reconnects_total",
                "Connections to X's stream opened again, by the cause of the previous end.",
                &["app", "endpoint", "cause"],
            )?,
            messages: counter(
                "xgate_stream_messages_total",
                "Stream messages delivered to consumers, by client and endpoint.",
                &["client", "endpoint"],
            )?,
            dropped: counter(
                "xgate_stream_consumers_dropped_total",
                "Consumers disconnected by xgate, by reason (slow: consumer_buffer_bytes behind).",
                &["app", "endpoint", "reason"],
            )?,
        })
    }

    /// The handles of `app`'s stream `endpoint` (its gauges appear at once, at 0).
    pub fn handles(&self, app: &str, endpoint: &str) -> StreamHandles {
        StreamHandles {
            consumers: self.consumers.with_label_values(&[app, endpoint]),
            upstream_up: self.upstream_up.with_label_values(&[app, endpoint]),
            metrics: self.clone(),
            app: Arc::from(app),
            endpoint: Arc::from(endpoint),
        }
    }
}

impl StreamHandles {
    /// The upstream connection was (re)opened after `cause`.
    pub fn reconnect(&self, cause: &str) {
        self.metrics
            .reconnects
            .with_label_values(&[&self.app, &self.endpoint, cause])
            .inc();
    }

    /// A consumer was disconnected for `reason`.
    pub fn dropped(&self, reason: &str) {
        self.metrics
            .dropped
            .with_label_values(&[&self.app, &self.endpoint, reason])
            .inc();
    }

    /// `xgate_stream_messages_total` of `client` on this endpoint, as a handle.
    pub fn messages(&self, client: &str) -> IntCounter {
        self.metrics
            .messages
            .with_label_values(&[client, &self.endpoint])
    }
}

/// The cost metrics of CONTRACT section 11 rule 6 (handles: cloning shares the metrics).
#[derive(Debug, Clone)]
pub struct CostMetrics {
    cost: CounterVec,
    resources: IntCounterVec,
    remaining: GaugeVec,
    limit: GaugeVec,
}

/// One (client, identity, endpoint)'s cost metrics, resolved once: counting through them
/// hashes no labels.
#[derive(Debug, Clone)]
pub struct CostHandles {
    cost: prometheus::Counter,
    new: prometheus::IntCounter,
    repeat: prometheus::IntCounter,
}

impl CostHandles {
    /// `micros` of cost, `new` new resources and `repeat` repeats.
    pub fn count(&self, micros: u64, new: u64, repeat: u64) {
        if micros > 0 {
            self.cost.inc_by(micros as f64 / 1e6);
        }
        if new > 0 {
            self.new.inc_by(new);
        }
        if repeat > 0 {
            self.repeat.inc_by(repeat);
        }
    }
}

impl CostMetrics {
    /// The handles of `client` as `identity` on `endpoint` (the cost series appears at once,
    /// at 0).
    pub fn handles(&self, client: &str, identity: &str, endpoint: &str) -> CostHandles {
        CostHandles {
            cost: self.cost.with_label_values(&[client, identity, endpoint]),
            new: self
                .resources
                .with_label_values(&[identity, endpoint, "new"]),
            repeat: self
                .resources
                .with_label_values(&[identity, endpoint, "repeat"]),
        }
    }

    /// `budget`'s limit per period (set once at start).
    pub fn budget_limit(&self, budget: &str, micros: u64) {
        self.limit
            .with_label_values(&[budget])
            .set(micros as f64 / 1e6);
    }

    /// What `budget` may still spend this period.
    pub fn budget_remaining(&self, budget: &str, micros: u64) {
        self.remaining
            .with_label_values(&[budget])
            .set(micros as f64 / 1e6);
    }
}

/// A metric could not be registered (a programming error: names are fixed).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

fn counter(name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, MetricsError> {
    Ok(IntCounterVec::new(Opts::new(name, help), labels)?)
}

fn histogram(name: &str, help: &str) -> Result<HistogramVec, MetricsError> {
    Ok(HistogramVec::new(
        HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
        &["endpoint"],
    )?)
}

impl Metrics {
    /// Registers every metric; counters whose label values are known up front (refresh
    /// outcomes of OAuth 2.0 users, upstream error kinds) start at 0 so they are scraped
    /// before the first event.
    pub fn new(catalogue: &Catalogue, identities: &Identities) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let requests = counter(
            "xgate_requests_total",
            "Proxy requests answered, by client, identity, endpoint and status.",
            &["client", "identity", "endpoint", "status"],
        )?;
        let request_duration = histogram(
            "xgate_request_duration_seconds",
            "Time from a request's arrival to its response headers.",
        )?;
        let upstream_duration = histogram(
            "xgate_upstream_duration_seconds",
            "Time from sending a request upstream to upstream's response headers.",
        )?;
        let rate_limited = counter(
            "xgate_rate_limited_total",
            "429 answers: local (xgate's buckets), upstream (X's), usage-capped (X's cap).",
            &["identity", "endpoint", "source"],
        )?;
        let remaining = IntGaugeVec::new(
            Opts::new(
                "xgate_rate_limit_remaining",
                "Requests left in the endpoint's window, as X last reported (x-rate-limit-remaining).",
            ),
            &["identity", "endpoint"],
        )?;
        let token_refreshes = counter(
            "xgate_token_refreshes_total",
            "OAuth 2.0 token refreshes, by outcome.",
            &["identity", "outcome"],
        )?;
        let upstream_errors = counter(
            "xgate_upstream_errors_total",
            "Upstream exchanges that failed, by kind.",
            &["kind"],
        )?;
        let inflight = IntGauge::new(
            "xgate_inflight_requests",
            "Proxy requests in flight (streams included until they end).",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("xgate_build_info", "Always 1; the version is a label."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let shared_up = IntGaugeVec::new(
            Opts::new(
                "xgate_shared_up",
                "Whether a configured shared-state engine answered its last operation (1) or not (0).",
            ),
            &["backend"],
        )?;
        let shared_errors = counter(
            "xgate_shared_errors_total",
            "Operations on a shared-state engine that failed or timed out, by backend and op.",
            &["backend", "op"],
        )?;
        let shared_duration = HistogramVec::new(
            HistogramOpts::new(
                "xgate_shared_duration_seconds",
                "Time of one operation on a shared-state engine (one round trip), by backend and op.",
            )
            .buckets(SHARED_BUCKETS.to_vec()),
            &["backend", "op"],
        )?;
        let costs = CostMetrics {
            cost: CounterVec::new(
                Opts::new(
                    "xgate_cost_usd_total",
                    "Metered cost of X's answers (USD; an estimate of X's bill), by client, identity and endpoint.",
                ),
                &["client", "identity", "endpoint"],
            )?,
            resources: counter(
                "xgate_billable_resources_total",
                "Billable resources in X's answers: new today for the App, or a repeat (cost 0).",
                &["identity", "endpoint", "dedup"],
            )?,
            remaining: GaugeVec::new(
                Opts::new(
                    "xgate_budget_remaining_usd",
                    "What a budget may still spend in its period (USD), reservations in flight deducted.",
                ),
                &["budget"],
            )?,
            limit: GaugeVec::new(
                Opts::new(
                    "xgate_budget_limit_usd",
                    "A budget's limit per period (USD), as configured: for alerts on the share spent.",
                ),
                &["budget"],
            )?,
        };
        let streams = StreamMetrics::new()?;
        registry.register(Box::new(streams.consumers.clone()))?;
        registry.register(Box::new(streams.upstream_up.clone()))?;
        registry.register(Box::new(streams.reconnects.clone()))?;
        registry.register(Box::new(streams.messages.clone()))?;
        registry.register(Box::new(streams.dropped.clone()))?;
        registry.register(Box::new(costs.cost.clone()))?;
        registry.register(Box::new(costs.resources.clone()))?;
        registry.register(Box::new(costs.remaining.clone()))?;
        registry.register(Box::new(costs.limit.clone()))?;
        for (_, identity) in identities.iter() {
            if identity.kind == IdentityKind::Oauth2User {
                for outcome in REFRESH_OUTCOMES {
                    token_refreshes.with_label_values(&[&*identity.name, outcome]);
                }
            }
        }
        for kind in UPSTREAM_ERROR_KINDS {
            upstream_errors.with_label_values(&[kind]);
        }
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(remaining.clone()))?;
        registry.register(Box::new(token_refreshes.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(shared_up.clone()))?;
        registry.register(Box::new(shared_errors.clone()))?;
        registry.register(Box::new(shared_duration.clone()))?;
        let by_endpoint = (0..catalogue.endpoints().len() + 2)
            .map(|_| (OnceLock::new(), OnceLock::new()))
            .collect();
        Ok(Self {
            registry,
            requests,
            request_duration,
            upstream_duration,
            by_endpoint,
            rate_limited,
            remaining,
            token_refreshes,
            upstream_errors,
            inflight,
            shared_up,
            shared_errors,
            shared_duration,
            costs,
            streams,
        })
    }

    /// The stream metrics.
    pub fn streams(&self) -> StreamMetrics {
        self.streams.clone()
    }

    /// The cost metrics.
    pub fn costs(&self) -> CostMetrics {
        self.costs.clone()
    }

    /// `/metrics`: the Prometheus text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for these metric types.
        let _never_fails = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// A request got its response head (or its client left first: 499).
    pub fn request(
        &self,
        client: &str,
        identity: &str,
        endpoint: EndpointLabel<'_>,
        status: u16,
        to_head: Duration,
    ) {
        let code = http::StatusCode::from_u16(status).ok();
        let code = code.as_ref().map_or("000", http::StatusCode::as_str);
        self.requests
            .with_label_values(&[client, identity, endpoint.name, code])
            .inc();
        self.histogram(endpoint, false)
            .observe(to_head.as_secs_f64());
    }

    /// Upstream answered with its head after `took`.
    pub fn upstream(&self, endpoint: EndpointLabel<'_>, took: Duration) {
        self.histogram(endpoint, true).observe(took.as_secs_f64());
    }

    fn histogram(&self, endpoint: EndpointLabel<'_>, upstream: bool) -> Histogram {
        let vec = if upstream {
            &self.upstream_duration
        } else {
            &self.request_duration
        };
        let make = || vec.with_label_values(&[endpoint.name]);
        match self.by_endpoint.get(endpoint.index) {
            Some((req, up)) => {
                let slot = if upstream { up } else { req };
                slot.get_or_init(make).clone()
            }
            None => make(),
        }
    }

    /// A 429 was answered (locally) or passed on (from X).
    pub fn rate_limited(&self, identity: &str, endpoint: &str, source: LimitSource) {
        self.rate_limited
            .with_label_values(&[identity, endpoint, source.as_str()])
            .inc();
    }

    /// X reported `remaining` for the identity's primary window of `endpoint`.
    pub fn remaining(&self, identity: &str, endpoint: &str, remaining: u32) {
        self.remaining
            .with_label_values(&[identity, endpoint])
            .set(i64::from(remaining));
    }

    /// An OAuth 2.0 refresh finished with `outcome` (one of [`REFRESH_OUTCOMES`]).
    pub fn token_refresh(&self, identity: &str, outcome: &str) {
        self.token_refreshes
            .with_label_values(&[identity, outcome])
            .inc();
    }

    /// An upstream exchange failed.
    pub fn upstream_error(&self, failure: UpstreamFailure) {
        self.upstream_errors
            .with_label_values(&[failure.as_str()])
            .inc();
    }

    /// The in-flight gauge, raised until the returned guard drops.
    pub fn begin(&self) -> InflightMetric {
        self.inflight.inc();
        InflightMetric(self.inflight.clone())
    }
}

/// Lowers `xgate_inflight_requests` when dropped.
#[derive(Debug)]
pub struct InflightMetric(IntGauge);

impl Drop for InflightMetric {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An endpoint label and where its histograms are cached.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLabel<'a> {
    /// The label value.
    pub name: &'a str,
    index: usize,
}

impl<'a> EndpointLabel<'a> {
    /// The label of a request answered before its endpoint was matched.
    pub const UNMATCHED: EndpointLabel<'static> = EndpointLabel {
        name: "-",
        index: usize::MAX,
    };

    /// The label of catalogue endpoint `id`, or `other` (`None`).
    pub fn of(catalogue: &'a Catalogue, id: Option<EndpointId>) -> Self {
        let other = catalogue.endpoints().len();
        match id.and_then(|i| catalogue.get(i).map(|e| (i, e))) {
            Some((index, e)) => Self {
                name: &e.name,
                index,
            },
            None => Self {
                name: "other",
                index: other,
            },
        }
    }
}

impl Observer for Metrics {
    fn op(&self, engine: Engine, op: &'static str, took: Duration, ok: bool) {
        let labels = [engine.as_str(), op];
        self.shared_duration
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
        if !ok {
            self.shared_errors.with_label_values(&labels).inc();
        }
    }

    fn up(&self, engine: Engine, up: bool) {
        self.shared_up
            .with_label_values(&[engine.as_str()])
            .set(i64::from(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_contract_metric_renders_with_its_labels() {
        let config = Config::from_toml_str(
            r#"
[apps.main]
bearer_token = "t"
oauth2_client_id = "c"
[users.bob]
app = "main"
auth = "oauth2"
scopes = ["tweet.read"]
[[clients]]
name = "c"
anonymous = true
identities = ["main"]
"#,
            std::path::Path::new("."),
            &std::collections::BTreeMap::new(),
        )
        .unwrap();
        let identities = Identities::from_config(&config).unwrap();
        let catalogue = Catalogue::new(&[]).unwrap();
        let m = Metrics::new(&catalogue, &identities).unwrap();
        let tweet = catalogue.lookup(&http::Method::GET, "/2/tweets/1").unwrap();
        let label = EndpointLabel::of(&catalogue, Some(tweet));
        m.request("c", "main", label, 200, Duration::from_millis(3));
        m.request("-", "-", EndpointLabel::UNMATCHED, 401, Duration::ZERO);
        m.upstream(label, Duration::from_millis(2));
        m.rate_limited("main", label.name, LimitSource::Local);
        m.remaining("main", label.name, 42);
        m.upstream_error(UpstreamFailure::Connect);
        let g = m.begin();
        let text = String::from_utf8(m.render()).unwrap();
        for want in [
            "# TYPE xgate_requests_total counter",
            r#"xgate_requests_total{client="c",endpoint="GET /2/tweets/:id",identity="main",status="200"} 1"#,
            r#"xgate_requests_total{client="-",endpoint="-",identity="-",status="401"} 1"#,
            "# TYPE xgate_request_duration_seconds histogram",
            r#"xgate_request_duration_seconds_bucket{endpoint="GET /2/tweets/:id",le="0.005"} 1"#,
            "# TYPE xgate_upstream_duration_seconds histogram",
            r#"xgate_rate_limited_total{endpoint="GET /2/tweets/:id",identity="main",source="local"} 1"#,
            r#"xgate_rate_limit_remaining{endpoint="GET /2/tweets/:id",identity="main"} 42"#,
            r#"xgate_token_refreshes_total{identity="bob",outcome="rejected"} 0"#,
            r#"xgate_upstream_errors_total{kind="connect"} 1"#,
            r#"xgate_upstream_errors_total{kind="timeout"} 0"#,
            "xgate_inflight_requests 1",
            &format!(
                r#"xgate_build_info{{version="{}"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(text.contains(want), "missing {want}\n{text}");
        }
        drop(g);
        assert!(
            String::from_utf8(m.render())
                .unwrap()
                .contains("xgate_inflight_requests 0")
        );
    }
}
