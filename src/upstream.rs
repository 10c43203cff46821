//! The connection to X: pooled connections over rustls (CONTRACT section 3, "Timing").
//!
//! Owns the connector (HTTP/1.1, or HTTP/2 when ALPN picks it; webpki roots plus
//! `upstream.ca_file`), a pool of connections per worker ([`pool`]), the upstream URL of a
//! request, `request_timeout` (until the response head) and the classification of failures
//! into 502 `upstream-unavailable` (connect, TLS, reset) and 504 `upstream-timeout`. A request
//! body that crosses `max_body_bytes` while streaming surfaces here and becomes 413.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::body::{UpstreamBody, find_body_too_large, find_client_body_failure};
use crate::config;
use crate::error::{BadRequest, ProxyError, UpstreamFailure};

mod pool;

use pool::{Pool, SendError};

/// The pooled connections and where they go.
#[derive(Debug, Clone)]
pub struct Upstream {
    pool: Arc<Pool>,
    /// What a pool of its own is built from ([`Upstream::with_own_pool`]).
    connector: HttpsConnector<HttpConnector>,
    /// `Host` for HTTP/1.1: the authority, without the scheme's default port.
    host: HeaderValue,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    scheme: Scheme,
    authority: Authority,
    request_timeout: Duration,
}

/// The upstream client could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamSetupError(String);

/// The TLS client configuration: rustls on ring, webpki roots plus `extra_ca` (PEM).
pub fn tls_client_config(
    extra_ca: Option<&std::path::Path>,
) -> Result<rustls::ClientConfig, UpstreamSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| UpstreamSetupError(format!("upstream.ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(UpstreamSetupError(format!(
                "upstream.ca_file {}: no PEM certificate in it",
                path.display()
            )));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| {
                UpstreamSetupError(format!("upstream.ca_file {}: {e}", path.display()))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamSetupError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Upstream {
    /// The client for `upstream`, with `server.request_timeout`.
    pub fn new(
        upstream: &config::Upstream,
        request_timeout: Duration,
    ) -> Result<Self, UpstreamSetupError> {
        let tls = tls_client_config(upstream.ca_file.as_deref())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(upstream.connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let (Some(scheme), Some(authority)) = (
            upstream.base_url.scheme().cloned(),
            upstream.base_url.authority().cloned(),
        ) else {
            return Err(UpstreamSetupError(format!(
                "upstream.base_url {} is not absolute",
                upstream.base_url
            )));
        };
        let host = host_header(&scheme, &authority)?;
        let pool = Arc::new(Pool::new(
            connector.clone(),
            authority.clone(),
            host.clone(),
            upstream.pool_idle_timeout,
            upstream.pool_max_idle_per_host,
        ));
        Ok(Self {
            pool,
            connector,
            host,
            pool_idle_timeout: upstream.pool_idle_timeout,
            pool_max_idle_per_host: upstream.pool_max_idle_per_host,
            scheme,
            authority,
            request_timeout,
        })
    }

    /// The same upstream with a connection pool of its own (one per worker thread); the TLS
    /// configuration and roots are shared, not loaded again.
    pub fn with_own_pool(&self) -> Self {
        Self {
            pool: Arc::new(Pool::new(
                self.connector.clone(),
                self.authority.clone(),
                self.host.clone(),
                self.pool_idle_timeout,
                self.pool_max_idle_per_host,
            )),
            ..self.clone()
        }
    }

    /// `scheme://authority` of `upstream.base_url`.
    pub fn base(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// The upstream URL for a client's path and query, byte for byte.
    pub fn uri(&self, path_and_query: PathAndQuery) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ProxyError::from(BadRequest::Target(e)))
    }

    /// Sends `req` and waits for the response head, at most `request_timeout`.
    pub async fn send(&self, req: Request<UpstreamBody>) -> Result<Response<Incoming>, ProxyError> {
        if req.uri().authority().map(Authority::as_str) != Some(self.authority.as_str()) {
            return Err(foreign_host());
        }
        match tokio::time::timeout(self.request_timeout, self.pool.send(req)).await {
            Err(_elapsed) => Err(ProxyError::UpstreamTimeout(self.request_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Every request is built from `upstream.base_url`; one for another host must not go on a
/// connection to it (nor to that host with X's credentials). Cold: out of the request's code.
#[cold]
fn foreign_host() -> ProxyError {
    ProxyError::UpstreamUnavailable {
        failure: UpstreamFailure::Connect,
        detail: "a request for another host than upstream.base_url".to_owned(),
    }
}

/// The `Host` value for `authority`: without the port when it is `scheme`'s default.
fn host_header(scheme: &Scheme, authority: &Authority) -> Result<HeaderValue, UpstreamSetupError> {
    let default_port = match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    let host = match authority.port_u16() {
        Some(port) if Some(port) != default_port => authority.as_str(),
        _ => authority.host(),
    };
    HeaderValue::from_str(host)
        .map_err(|e| UpstreamSetupError(format!("upstream.base_url host {host}: {e}")))
}

/// Maps a failed exchange to the contract's answer.
fn classify(e: &SendError) -> ProxyError {
    let (failure, err): (UpstreamFailure, &(dyn StdError + 'static)) = match e {
        SendError::Connect(e) => {
            let failure = if chain_has_tls_error(e.as_ref()) {
                UpstreamFailure::Tls
            } else {
                UpstreamFailure::Connect
            };
            (failure, e.as_ref())
        }
        SendError::Handshake(e) => (UpstreamFailure::Connect, e),
        SendError::Exchange(e) => {
            if let Some(too_large) = find_body_too_large(e) {
                return ProxyError::BodyTooLarge {
                    limit: too_large.limit,
                };
            }
            if let Some(failed) = find_client_body_failure(e) {
                // The client broke its own body while it streamed upstream: a 400, not
                // upstream's failure (and no upstream error is counted).
                return ProxyError::BadRequest(BadRequest::Body(describe(failed).into()));
            }
            (UpstreamFailure::Reset, e)
        }
    };
    ProxyError::UpstreamUnavailable {
        failure,
        detail: describe(err),
    }
}

/// The innermost message of the chain: no URL (it could carry a query), no headers.
fn describe(e: &(dyn StdError + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        last = s.to_string();
        cur = s.source();
    }
    last
}

/// Whether a rustls error is anywhere in the chain. `io::Error`s (hyper-rustls nests two)
/// hide their inner error from `source()`, so they are opened with `get_ref()`.
fn chain_has_tls_error(e: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<rustls::Error>() {
            return true;
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base_url: &str) -> Upstream {
        let config = config::Upstream {
            base_url: base_url.parse().unwrap(),
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            allowed_prefixes: vec!["/2/".to_owned()],
        };
        Upstream::new(&config, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn host_is_the_authority_without_a_default_port() {
        let host = |url: &str| upstream(url).host.to_str().unwrap().to_owned();
        assert_eq!(host("https://api.x.com"), "api.x.com");
        assert_eq!(host("https://api.x.com:443"), "api.x.com");
        assert_eq!(host("http://127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host("https://127.0.0.1:8443"), "127.0.0.1:8443");
        assert_eq!(host("http://localhost:18081"), "localhost:18081");
    }

    /// A request for another host than `upstream.base_url` is refused before any connection
    /// is made (nothing listens on port 9: a connection attempt would fail differently).
    #[tokio::test]
    async fn a_request_for_another_host_is_not_sent() {
        let up = upstream("http://127.0.0.1:9");
        let mut req = Request::new(UpstreamBody::Full(None));
        *req.uri_mut() = "http://127.0.0.2:9/2/users/me".parse().unwrap();
        match up.send(req).await {
            Err(ProxyError::UpstreamUnavailable {
                failure: UpstreamFailure::Connect,
                detail,
            }) => assert!(detail.contains("another host"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
}
