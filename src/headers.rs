//! Header hygiene in both directions (CONTRACT section 3).
//!
//! Owns which headers cross the proxy. Toward upstream: the client's `Authorization`, every
//! `X-Xgate-*`, every `Proxy-*`, `Host`, `Expect` (answered here) and the hop-by-hop headers
//! (RFC 9110 section 7.6.1: `Connection` and the names it lists, `Keep-Alive`, `TE`,
//! `Trailer`, `Transfer-Encoding`, `Upgrade`) are removed. Toward the client: the hop-by-hop
//! headers are removed. Everything else passes unchanged, `Accept-Encoding` and
//! `Content-Encoding` included (bodies are never decompressed).

use http::HeaderMap;
use http::header::{self, HeaderName};

/// Hop-by-hop headers besides `Connection` itself.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
];

/// `Client key`/identity headers the proxy reads.
pub const XGATE_KEY: HeaderName = HeaderName::from_static("x-xgate-key");
/// The identity a request asks for.
pub const XGATE_IDENTITY: HeaderName = HeaderName::from_static("x-xgate-identity");
/// A request's id: the client's when well-formed, else made here; returned on the response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        // Names listed in every Connection header are hop-by-hop too (RFC 9110 7.6.1: the
        // field may be sent more than once, and the lists combine).
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Cleans a client's request headers for upstream.
pub fn clean_request(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    // `X-Xgate-*` and `Proxy-*` by prefix; collected first, only when present.
    let prefixed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let s = k.as_str();
            s.starts_with("x-xgate-") || s.starts_with("proxy-")
        })
        .cloned()
        .collect();
    for name in prefixed {
        headers.remove(name);
    }
}

/// Cleans upstream's response headers for the client.
pub fn clean_response(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    headers.remove("proxy-connection");
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn request_headers() {
        let mut h = map(&[
            ("authorization", "Bearer xgk_secret"),
            ("x-xgate-key", "xgk_secret"),
            ("X-Xgate-Identity", "alice"),
            ("x-xgate-other", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "evil.example"),
            ("expect", "100-continue"),
            ("accept-encoding", "gzip"),
            ("content-type", "application/json"),
            ("x-request-id", "abc"),
        ]);
        clean_request(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept-encoding", "content-type", "x-request-id"]);
    }

    /// Regression (review of the shape issue): a second `Connection` header's names were
    /// forwarded, because only the first was read.
    #[test]
    fn every_connection_header_names_hop_by_hop_headers() {
        let mut h = map(&[
            ("connection", "x-first-hop"),
            ("connection", "x-second-hop, x-third-hop"),
            ("x-first-hop", "1"),
            ("x-second-hop", "2"),
            ("x-third-hop", "3"),
            ("x-end-to-end", "4"),
        ]);
        clean_request(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-end-to-end"]);
        let mut h = map(&[
            ("connection", "close"),
            ("connection", "x-upstream-hop"),
            ("x-upstream-hop", "1"),
            ("x-rate-limit-remaining", "10"),
        ]);
        clean_response(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-rate-limit-remaining"]);
    }

    #[test]
    fn response_headers() {
        let mut h = map(&[
            ("connection", "close"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-encoding", "gzip"),
            ("x-rate-limit-remaining", "10"),
        ]);
        clean_response(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-encoding", "x-rate-limit-remaining"]);
    }
}
