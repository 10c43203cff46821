//! Every failure the proxy answers itself, and its one mapping to a response (CONTRACT 7).
//!
//! Owns [`ProxyError`] (grouped by origin: the client's request, policy, credentials,
//! upstream), the [`ErrorKind`] table of the contract (kind, status, title), and
//! [`ProxyError::to_response`], the only place that chooses a failure's status code, body and
//! headers. Details shown to clients never contain a secret, a token or a client key.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ProxyBody;

/// The error kinds of CONTRACT section 7, with their status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400.
    BadRequest,
    /// 401: no or unknown client key.
    ClientUnauthenticated,
    /// 401: X refused the refresh token.
    TokenRefreshFailed,
    /// 401: the identity has no usable credentials.
    CredentialsMissing,
    /// 403: identity unknown or not allowed for this client.
    IdentityForbidden,
    /// 403: the endpoint does not accept this identity's kind of auth.
    AuthTypeUnsupported,
    /// 403: the identity's OAuth 2.0 scopes lack one the endpoint needs.
    ScopeMissing,
    /// 404.
    PathNotAllowed,
    /// 405.
    MethodNotAllowed,
    /// 413.
    BodyTooLarge,
    /// 429: a rate-limit bucket is empty.
    RateLimited,
    /// 429: the App's usage cap is spent.
    UsageCapped,
    /// 429: a budget cannot pay the request's worst case (CONTRACT section 11 rule 3).
    BudgetExhausted,
    /// 502.
    UpstreamUnavailable,
    /// 503: the shared rate-limit state cannot be reached (`on_failure = "refuse"`).
    SharedStateUnavailable,
    /// 504.
    UpstreamTimeout,
    /// 500: handling the request panicked (a bug; the rest of the proxy goes on).
    InternalError,
    /// 501: the request uses a transfer coding xgate does not implement (RFC 9112 §6.1).
    NotImplemented,
}

impl ErrorKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [Self; 18] = [
        Self::BadRequest,
        Self::ClientUnauthenticated,
        Self::TokenRefreshFailed,
        Self::CredentialsMissing,
        Self::IdentityForbidden,
        Self::AuthTypeUnsupported,
        Self::ScopeMissing,
        Self::PathNotAllowed,
        Self::MethodNotAllowed,
        Self::BodyTooLarge,
        Self::RateLimited,
        Self::UsageCapped,
        Self::BudgetExhausted,
        Self::UpstreamUnavailable,
        Self::SharedStateUnavailable,
        Self::UpstreamTimeout,
        Self::InternalError,
        Self::NotImplemented,
    ];

    /// The `x-xgate-error` value and the end of the problem `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::ClientUnauthenticated => "client-unauthenticated",
            Self::TokenRefreshFailed => "token-refresh-failed",
            Self::CredentialsMissing => "credentials-missing",
            Self::IdentityForbidden => "identity-forbidden",
            Self::AuthTypeUnsupported => "auth-type-unsupported",
            Self::ScopeMissing => "scope-missing",
            Self::PathNotAllowed => "path-not-allowed",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::BodyTooLarge => "body-too-large",
            Self::RateLimited => "rate-limited",
            Self::UsageCapped => "usage-capped",
            Self::BudgetExhausted => "budget-exhausted",
            Self::UpstreamUnavailable => "upstream-unavailable",
            Self::SharedStateUnavailable => "shared-state-unavailable",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::InternalError => "internal-error",
            Self::NotImplemented => "not-implemented",
        }
    }

    /// The HTTP status of CONTRACT section 7.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::ClientUnauthenticated | Self::TokenRefreshFailed | Self::CredentialsMissing => {
                StatusCode::UNAUTHORIZED
            }
            Self::IdentityForbidden | Self::AuthTypeUnsupported | Self::ScopeMissing => {
                StatusCode::FORBIDDEN
            }
            Self::PathNotAllowed => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited | Self::UsageCapped | Self::BudgetExhausted => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::SharedStateUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NotImplemented => StatusCode::NOT_IMPLEMENTED,
        }
    }

    /// The problem `title`: the status's reason phrase.
    pub fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad Request",
            Self::ClientUnauthenticated | Self::TokenRefreshFailed | Self::CredentialsMissing => {
                "Unauthorized"
            }
            Self::IdentityForbidden | Self::AuthTypeUnsupported | Self::ScopeMissing => "Forbidden",
            Self::PathNotAllowed => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::BodyTooLarge => "Payload Too Large",
            Self::RateLimited | Self::UsageCapped | Self::BudgetExhausted => "Too Many Requests",
            Self::UpstreamUnavailable => "Bad Gateway",
            Self::SharedStateUnavailable => "Service Unavailable",
            Self::UpstreamTimeout => "Gateway Timeout",
            Self::InternalError => "Internal Server Error",
            Self::NotImplemented => "Not Implemented",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an upstream exchange failed (the `kind` label of `xgate_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// TCP connect failed or timed out.
    Connect,
    /// The TLS handshake failed (certificate, protocol).
    Tls,
    /// The connection broke while the request or response was in flight.
    Reset,
    /// No response head within `server.request_timeout`.
    Timeout,
}

impl UpstreamFailure {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Tls => "tls",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
        }
    }
}

/// Why a request cannot be forwarded as sent (400 `bad-request`).
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    /// The target is not origin-form or absolute-form with a path.
    #[error("the request target must be a path starting with /")]
    NotAPath,
    /// Invalid percent-encoding in the path or the query.
    #[error("invalid percent-encoding in the {0}")]
    PercentEncoding(&'static str),
    /// A `.` or `..` segment.
    #[error("`.` and `..` path segments are not allowed")]
    DotSegment,
    /// An empty segment (`//`).
    #[error("empty path segments (`//`) are not allowed")]
    EmptySegment,
    /// A slash or backslash written `%2F` or `%5C`: a server that decodes it before routing
    /// would see another path than the one the prefixes were checked on.
    #[error("encoded slashes and backslashes (`%2F`, `%5C`) are not allowed in the path")]
    EncodedSlash,
    /// A raw backslash.
    #[error("backslashes are not allowed in the path")]
    Backslash,
    /// An HTTP/1.1 request without exactly one `Host` header (RFC 9112 §3.2).
    #[error("an HTTP/1.1 request needs exactly one Host header, this one has {0}")]
    Host(usize),
    /// The client has no default identity and the request names none.
    #[error("no identity: send X-Xgate-Identity (this client has no default_identity)")]
    NoIdentity,
    /// The upstream URL cannot be made from the request's path and query.
    #[error("request target: {0}")]
    Target(#[source] http::Error),
    /// The body could not be read (the client broke its framing or went away).
    #[error("the request body could not be read: {0}")]
    Body(#[source] crate::body::BoxError),
    /// OAuth 1.0a cannot sign the request as sent (e.g. an unparseable form body).
    #[error("the request cannot be signed: {0}")]
    Unsignable(#[source] crate::body::BoxError),
}

/// A failure of the proxy itself while preparing a request: never the client's fault.
#[derive(Debug, thiserror::Error)]
pub enum Internal {
    /// The OS random source failed (no nonce).
    #[error(transparent)]
    Random(#[from] crate::clock::RandomError),
    /// A credential made a header value that HTTP does not allow.
    #[error("a credential is not usable in a header: {0}")]
    Header(#[from] http::header::InvalidHeaderValue),
}

/// A failure the proxy answers itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    // === the client's request ===
    /// A request xgate cannot forward as sent.
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// `CONNECT`, `TRACE`.
    #[error("method {0} is not allowed")]
    MethodNotAllowed(http::Method),
    /// No client key (and no anonymous client), or an unknown one.
    #[error("missing or unknown client key")]
    ClientUnauthenticated,
    /// The identity does not exist or the client may not use it (the same answer for both).
    #[error("identity not allowed")]
    IdentityForbidden,
    /// The path is outside `upstream.allowed_prefixes`.
    #[error("path is not under an allowed prefix")]
    PathNotAllowed,
    /// The path is one of X's OAuth 2.0 token endpoints (`/2/oauth2/`), which xgate never
    /// forwards: it holds the tokens itself.
    #[error(
        "X's OAuth 2.0 token endpoints (/2/oauth2/) are not forwarded: xgate keeps and refreshes the tokens itself; run `xgate login --identity NAME` to store a user's pair"
    )]
    TokenEndpoint,
    /// A `Transfer-Encoding` other than `chunked` (RFC 9112 §6.1: 501).
    #[error(
        "Transfer-Encoding {0:?} is not supported: send the body with Content-Length or chunked alone"
    )]
    TransferCoding(String),
    /// The body is over `server.max_body_bytes`.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// `server.max_body_bytes`.
        limit: u64,
    },

    // === policy: pre-check and rate limits ===
    /// The endpoint does not accept the identity's kind of auth (CONTRACT section 4).
    #[error("identity {identity} ({has}): {endpoint} needs {needs}")]
    AuthTypeUnsupported {
        /// Identity name.
        identity: String,
        /// Endpoint name (`GET /2/users/me`).
        endpoint: String,
        /// The auth kinds the endpoint accepts.
        needs: String,
        /// The identity's kind of auth.
        has: &'static str,
    },
    /// The OAuth 2.0 identity lacks a scope the endpoint needs.
    #[error(
        "identity {identity}: {endpoint} needs scope {}; the identity has {}",
        .missing.join(" "),
        if .has.is_empty() { "none".to_owned() } else { .has.join(" ") }
    )]
    ScopeMissing {
        /// Identity name.
        identity: String,
        /// Endpoint name.
        endpoint: String,
        /// Scopes needed and not granted.
        missing: Vec<String>,
        /// Scopes granted.
        has: Vec<String>,
    },
    /// A local bucket is empty (CONTRACT section 5 rule 3).
    #[error(
        "{who}: {endpoint} limit {} reached; resets in {} s",
        crate::config::figure(*.limit, *.window),
        retry_after_secs(*.reset_ms, *.now_ms)
    )]
    RateLimited {
        /// `identity main` or `client backend`.
        who: String,
        /// Endpoint name, or `other`.
        endpoint: String,
        /// The refusing bucket's limit.
        limit: u32,
        /// Its window.
        window: std::time::Duration,
        /// When it next admits a request (Unix ms).
        reset_ms: u64,
        /// Now, by the limiter's clock (Unix ms).
        now_ms: u64,
    },
    /// A shared stream has `streams.max_consumers` consumers (CONTRACT section 12 rule 5).
    #[error("app {app}: {endpoint} has {connected} consumers, streams.max_consumers")]
    TooManyConsumers {
        /// The App's name.
        app: String,
        /// The stream endpoint.
        endpoint: String,
        /// Consumers connected.
        connected: usize,
    },
    /// X answered `usage-capped` for the identity's App recently.
    #[error(
        "identity {identity}: X answered usage-capped for its App (credits or monthly cap spent); requests go upstream again in {} s",
        retry_after_secs(*.until_ms, *.now_ms)
    )]
    UsageCapped {
        /// Identity name.
        identity: String,
        /// End of the cooldown (Unix ms).
        until_ms: u64,
        /// Now (Unix ms).
        now_ms: u64,
    },

    /// A budget cannot pay the request's worst case (CONTRACT section 11 rule 3).
    #[error(
        "budget {budget}: {} of {} USD spent or reserved this {period}; {endpoint} may cost up to {} USD; resets in {} s",
        crate::config::format_usd(*.used_micros),
        crate::config::format_usd(*.limit_micros),
        crate::config::format_usd(*.worst_micros),
        retry_after_secs(*.reset_ms, *.now_ms)
    )]
    BudgetExhausted {
        /// The budget's name.
        budget: String,
        /// `day` or `month`.
        period: &'static str,
        /// Endpoint name, or `other`.
        endpoint: String,
        /// What the budget has spent and reserved (micro-USD).
        used_micros: u64,
        /// Its limit (micro-USD).
        limit_micros: u64,
        /// The request's worst case (micro-USD).
        worst_micros: u64,
        /// The end of the budget's period (Unix ms).
        reset_ms: u64,
        /// Now (Unix ms).
        now_ms: u64,
    },

    // === credentials ===
    /// The identity has no usable credentials; `hint` tells the operator what to do.
    #[error("identity {identity} has no credentials: {hint}")]
    CredentialsMissing {
        /// Identity name.
        identity: String,
        /// What the operator should do.
        hint: String,
    },

    /// X refused the identity's refresh token: the user must log in again.
    #[error("identity {identity}: {detail}")]
    TokenRefreshFailed {
        /// Identity name.
        identity: String,
        /// What X said and what to do.
        detail: String,
    },

    /// The identity's token needs a refresh and the token store cannot be written, so X was
    /// not asked (502, like any refresh that fails for a passing reason).
    #[error("identity {identity}: {detail}")]
    TokenStoreUnwritable {
        /// Identity name.
        identity: String,
        /// What the store said.
        detail: String,
    },

    // === upstream ===
    /// Upstream could not be reached, or the exchange broke.
    #[error("upstream {}: {detail}", .failure.as_str())]
    UpstreamUnavailable {
        /// What failed.
        failure: UpstreamFailure,
        /// Client-safe description (no URL query, no headers).
        detail: String,
    },
    /// Upstream sent no response head within `server.request_timeout`.
    #[error("upstream sent no response within {0:?}")]
    UpstreamTimeout(std::time::Duration),
    /// The shared rate-limit state could not be reached and `on_failure = "refuse"`.
    #[error("the shared rate-limit state is unavailable")]
    SharedStateUnavailable,

    // === the proxy itself ===
    /// The request could not be prepared for upstream.
    #[error("request could not be prepared for upstream: {0}")]
    Internal(#[from] Internal),
    /// Handling the request panicked (caught by `stack::CatchPanicLayer`).
    #[error("the proxy failed while handling this request (logged); it goes on serving")]
    Panicked,
}

impl ProxyError {
    /// The contract kind; exhaustive on purpose (no wildcard arm).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadRequest(_) => ErrorKind::BadRequest,
            Self::MethodNotAllowed(_) => ErrorKind::MethodNotAllowed,
            Self::ClientUnauthenticated => ErrorKind::ClientUnauthenticated,
            Self::IdentityForbidden => ErrorKind::IdentityForbidden,
            Self::PathNotAllowed | Self::TokenEndpoint => ErrorKind::PathNotAllowed,
            Self::TransferCoding(_) => ErrorKind::NotImplemented,
            Self::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            Self::CredentialsMissing { .. } => ErrorKind::CredentialsMissing,
            Self::TokenRefreshFailed { .. } => ErrorKind::TokenRefreshFailed,
            Self::AuthTypeUnsupported { .. } => ErrorKind::AuthTypeUnsupported,
            Self::ScopeMissing { .. } => ErrorKind::ScopeMissing,
            Self::RateLimited { .. } | Self::TooManyConsumers { .. } => ErrorKind::RateLimited,
            Self::UsageCapped { .. } => ErrorKind::UsageCapped,
            Self::BudgetExhausted { .. } => ErrorKind::BudgetExhausted,
            Self::UpstreamUnavailable { .. }
            | Self::TokenStoreUnwritable { .. }
            | Self::Internal(_) => ErrorKind::UpstreamUnavailable,
            Self::SharedStateUnavailable => ErrorKind::SharedStateUnavailable,
            Self::UpstreamTimeout(_) => ErrorKind::UpstreamTimeout,
            Self::Panicked => ErrorKind::InternalError,
        }
    }

    /// How an upstream exchange failed, for `xgate_upstream_errors_total`; `None` when the
    /// failure is not upstream's (exhaustive on purpose: a new variant must say).
    pub fn upstream_failure(&self) -> Option<UpstreamFailure> {
        match self {
            Self::UpstreamUnavailable { failure, .. } => Some(*failure),
            Self::UpstreamTimeout(_) => Some(UpstreamFailure::Timeout),
            Self::BadRequest(_)
            | Self::MethodNotAllowed(_)
            | Self::ClientUnauthenticated
            | Self::IdentityForbidden
            | Self::PathNotAllowed
            | Self::TokenEndpoint
            | Self::TransferCoding(_)
            | Self::BodyTooLarge { .. }
            | Self::AuthTypeUnsupported { .. }
            | Self::ScopeMissing { .. }
            | Self::RateLimited { .. }
            | Self::TooManyConsumers { .. }
            | Self::UsageCapped { .. }
            | Self::BudgetExhausted { .. }
            | Self::CredentialsMissing { .. }
            | Self::TokenRefreshFailed { .. }
            | Self::TokenStoreUnwritable { .. }
            | Self::SharedStateUnavailable
            | Self::Internal(_)
            | Self::Panicked => None,
        }
    }

    /// The response: status, `application/problem+json` body, `x-xgate-error`.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let kind = self.kind();
        let detail = self.to_string();
        // `message` and `errors` repeat the detail in the shapes X's client libraries read.
        let body = serde_json::json!({
            "type": format!("urn:xgate:problem:{}", kind.as_str()),
            "title": kind.title(),
            "status": kind.status().as_u16(),
            "detail": detail,
            "message": detail,
            "errors": [{ "message": detail }],
        });
        let mut resp = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
        *resp.status_mut() = kind.status();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert("x-xgate-error", HeaderValue::from_static(kind.as_str()));
        match self {
            Self::MethodNotAllowed(_) => {
                // RFC 9110 15.5.6: a 405 lists what is allowed.
                headers.insert(
                    header::ALLOW,
                    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
                );
            }
            Self::RateLimited {
                limit,
                reset_ms,
                now_ms,
                ..
            } => {
                headers.insert("x-rate-limit-limit", HeaderValue::from(*limit));
                headers.insert("x-rate-limit-remaining", HeaderValue::from_static("0"));
                limited_headers(headers, *reset_ms, *now_ms);
            }
            Self::UsageCapped {
                until_ms, now_ms, ..
            } => limited_headers(headers, *until_ms, *now_ms),
            Self::BudgetExhausted {
                reset_ms, now_ms, ..
            } => limited_headers(headers, *reset_ms, *now_ms),
            Self::BadRequest(_)
            | Self::ClientUnauthenticated
            | Self::IdentityForbidden
            | Self::PathNotAllowed
            | Self::TokenEndpoint
            | Self::TransferCoding(_)
            | Self::BodyTooLarge { .. }
            | Self::AuthTypeUnsupported { .. }
            | Self::ScopeMissing { .. }
            | Self::TooManyConsumers { .. }
            | Self::CredentialsMissing { .. }
            | Self::TokenRefreshFailed { .. }
            | Self::TokenStoreUnwritable { .. }
            | Self::UpstreamUnavailable { .. }
            | Self::UpstreamTimeout(_)
            | Self::SharedStateUnavailable
            | Self::Internal(_)
            | Self::Panicked => {}
        }
        resp
    }
}

/// Whole seconds from `now_ms` until `until_ms`, rounded up, at least 1 (`retry-after`).
pub fn retry_after_secs(until_ms: u64, now_ms: u64) -> u64 {
    until_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

/// `x-rate-limit-reset` (Unix seconds, rounded up so a client that waits until then is never
/// early), `retry-after` and `x-xgate-limited: local`.
fn limited_headers(headers: &mut http::HeaderMap, until_ms: u64, now_ms: u64) {
    headers.insert(
        "x-rate-limit-reset",
        HeaderValue::from(until_ms.div_ceil(1000)),
    );
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs(until_ms, now_ms)),
    );
    headers.insert("x-xgate-limited", HeaderValue::from_static("local"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_contract_status() {
        let want = [
            ("bad-request", 400),
            ("client-unauthenticated", 401),
            ("token-refresh-failed", 401),
            ("credentials-missing", 401),
            ("identity-forbidden", 403),
            ("auth-type-unsupported", 403),
            ("scope-missing", 403),
            ("path-not-allowed", 404),
            ("method-not-allowed", 405),
            ("body-too-large", 413),
            ("rate-limited", 429),
            ("usage-capped", 429),
            ("budget-exhausted", 429),
            ("upstream-unavailable", 502),
            ("shared-state-unavailable", 503),
            ("upstream-timeout", 504),
            ("internal-error", 500),
            ("not-implemented", 501),
        ];
        let got: Vec<(&str, u16)> = ErrorKind::ALL
            .iter()
            .map(|k| (k.as_str(), k.status().as_u16()))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn every_error_maps_to_its_kind_and_a_problem_response() {
        let cases = [
            (
                ProxyError::BadRequest(BadRequest::DotSegment),
                ErrorKind::BadRequest,
            ),
            (
                ProxyError::MethodNotAllowed(http::Method::TRACE),
                ErrorKind::MethodNotAllowed,
            ),
            (
                ProxyError::ClientUnauthenticated,
                ErrorKind::ClientUnauthenticated,
            ),
            (ProxyError::IdentityForbidden, ErrorKind::IdentityForbidden),
            (ProxyError::PathNotAllowed, ErrorKind::PathNotAllowed),
            (
                ProxyError::TransferCoding("gzip, chunked".into()),
                ErrorKind::NotImplemented,
            ),
            (
                ProxyError::BodyTooLarge { limit: 1 },
                ErrorKind::BodyTooLarge,
            ),
            (
                ProxyError::CredentialsMissing {
                    identity: "bob".into(),
                    hint: "h".into(),
                },
                ErrorKind::CredentialsMissing,
            ),
            (
                ProxyError::UpstreamUnavailable {
                    failure: UpstreamFailure::Connect,
                    detail: "refused".into(),
                },
                ErrorKind::UpstreamUnavailable,
            ),
            (
                ProxyError::TokenStoreUnwritable {
                    identity: "bob".into(),
                    detail: "database or disk is full".into(),
                },
                ErrorKind::UpstreamUnavailable,
            ),
            (
                ProxyError::UpstreamTimeout(std::time::Duration::from_secs(1)),
                ErrorKind::UpstreamTimeout,
            ),
            (
                ProxyError::Internal(Internal::Random(crate::clock::RandomError::Exhausted)),
                ErrorKind::UpstreamUnavailable,
            ),
            (
                ProxyError::SharedStateUnavailable,
                ErrorKind::SharedStateUnavailable,
            ),
            (ProxyError::Panicked, ErrorKind::InternalError),
            (
                ProxyError::TokenRefreshFailed {
                    identity: "bob".into(),
                    detail: "run xgate login".into(),
                },
                ErrorKind::TokenRefreshFailed,
            ),
            (
                ProxyError::AuthTypeUnsupported {
                    identity: "main".into(),
                    endpoint: "GET /2/users/me".into(),
                    needs: "OAuth 2.0 user context".into(),
                    has: "app-only Bearer",
                },
                ErrorKind::AuthTypeUnsupported,
            ),
            (
                ProxyError::ScopeMissing {
                    identity: "bob".into(),
                    endpoint: "GET /2/dm_events".into(),
                    missing: vec!["dm.read".into()],
                    has: vec![],
                },
                ErrorKind::ScopeMissing,
            ),
            (
                ProxyError::RateLimited {
                    who: "identity main".into(),
                    endpoint: "GET /2/tweets/:id".into(),
                    limit: 450,
                    window: std::time::Duration::from_secs(900),
                    reset_ms: 1_000_312_000,
                    now_ms: 1_000_000_000,
                },
                ErrorKind::RateLimited,
            ),
            (
                ProxyError::UsageCapped {
                    identity: "main".into(),
                    until_ms: 2_000,
                    now_ms: 1_000,
                },
                ErrorKind::UsageCapped,
            ),
            (budget_exhausted(), ErrorKind::BudgetExhausted),
        ];
        let covered: std::collections::HashSet<ErrorKind> =
            cases.iter().map(|(_, kind)| *kind).collect();
        assert_eq!(
            covered.len(),
            ErrorKind::ALL.len(),
            "a kind has no case here"
        );
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err:?}");
            let resp = err.to_response();
            assert_eq!(resp.status(), kind.status());
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            assert_eq!(resp.headers()["x-xgate-error"], kind.as_str());
        }
    }

    #[test]
    fn a_local_429_carries_the_contract_headers_and_detail() {
        let err = ProxyError::RateLimited {
            who: "identity main".into(),
            endpoint: "GET /2/tweets/:id".into(),
            limit: 450,
            window: std::time::Duration::from_secs(900),
            reset_ms: 1_000_311_200,
            now_ms: 1_000_000_000,
        };
        assert_eq!(
            err.to_string(),
            "identity main: GET /2/tweets/:id limit 450/15m reached; resets in 312 s"
        );
        let resp = err.to_response();
        let h = resp.headers();
        assert_eq!(h["x-rate-limit-limit"], "450");
        assert_eq!(h["x-rate-limit-remaining"], "0");
        assert_eq!(h["x-rate-limit-reset"], "1000312");
        assert_eq!(h["retry-after"], "312");
        assert_eq!(h["x-xgate-limited"], "local");
    }

    /// A daily budget of 25 USD with 0.01 left, 400 s before midnight.
    fn budget_exhausted() -> ProxyError {
        ProxyError::BudgetExhausted {
            budget: "backend-daily".into(),
            period: "day",
            endpoint: "GET /2/tweets/search/recent".into(),
            used_micros: 24_990_000,
            limit_micros: 25_000_000,
            worst_micros: 500_000,
            reset_ms: 86_400_000,
            now_ms: 86_000_000,
        }
    }

    #[test]
    fn budget_exhausted_names_the_budget_and_resets_at_the_period_end() {
        let err = budget_exhausted();
        assert_eq!(
            err.to_string(),
            "budget backend-daily: 24.990000 of 25.000000 USD spent or reserved this day; GET /2/tweets/search/recent may cost up to 0.500000 USD; resets in 400 s"
        );
        let resp = err.to_response();
        assert_eq!(resp.status(), 429);
        let h = resp.headers();
        assert_eq!(h["x-xgate-error"], "budget-exhausted");
        assert_eq!(h["retry-after"], "400");
        assert_eq!(h["x-rate-limit-reset"], "86400");
    }

    #[test]
    fn retry_after_is_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(1_000, 1_000), 1);
        assert_eq!(retry_after_secs(1_001, 1_000), 1);
        assert_eq!(retry_after_secs(2_001, 1_000), 2);
        assert_eq!(retry_after_secs(0, 1_000), 1);
    }
}
