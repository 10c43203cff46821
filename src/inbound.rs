//! Rules on the request line (CONTRACT section 3): method, path, percent-encoding, prefixes.
//!
//! Owns the checks that need nothing but the request target. The target's authority and the
//! `Host` header are never looked at: only the path and query are used, and they go upstream
//! byte for byte. These are pure functions; `proxy` calls them in the contract's order.

use http::{Method, Version};

use http::uri::PathAndQuery;
use http::{HeaderMap, header};

use crate::error::{BadRequest, ProxyError};

/// Framing rules a parser leaves to the server: an HTTP/1.1 request has exactly one `Host`
/// (RFC 9112 §3.2: 400), and a `Transfer-Encoding` other than `chunked` alone is a coding
/// xgate does not implement (RFC 9112 §6.1: 501) — never dropped silently.
pub fn check_framing(version: Version, headers: &HeaderMap) -> Result<(), ProxyError> {
    if version == Version::HTTP_11 {
        let hosts = headers.get_all(header::HOST).iter().count();
        if hosts != 1 {
            return Err(BadRequest::Host(hosts).into());
        }
    }
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    let only_chunked = match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(first), None) => first.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    };
    if !only_chunked {
        let written: Vec<&str> = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .map(|v| v.to_str().unwrap_or("(not text)"))
            .collect();
        return Err(ProxyError::TransferCoding(written.join(", ")));
    }
    Ok(())
}

/// `CONNECT` and `TRACE` never leave the proxy (405).
pub fn check_method(method: &Method) -> Result<(), ProxyError> {
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed(method.clone()));
    }
    Ok(())
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

/// Whether every `%` in `s` starts a `%XX` escape.
fn valid_percent_encoding(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(&h), Some(&l)) if is_hex(h) && is_hex(l) => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

/// Whether a path segment is `.` or `..`, also when written with `%2E`.
fn is_dot_segment(seg: &str) -> bool {
    let mut dots = 0;
    let mut rest = seg.as_bytes();
    while !rest.is_empty() {
        match rest {
            [b'.', tail @ ..] | [b'%', b'2', b'e' | b'E', tail @ ..] => rest = tail,
            _ => return false,
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// Whether `path` holds `%2F` or `%5C` (either case).
fn has_encoded_slash(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| matches!(w, [b'%', b'2', b'f' | b'F'] | [b'%', b'5', b'c' | b'C']))
}

/// The path and query rules that answer 400: valid percent-encoding, no dot segments, no
/// empty segment, no slash or backslash written encoded, no raw backslash.
pub fn check_target(path: &str, query: Option<&str>) -> Result<(), ProxyError> {
    if !path.starts_with('/') {
        return Err(BadRequest::NotAPath.into());
    }
    if !valid_percent_encoding(path) {
        return Err(BadRequest::PercentEncoding("path").into());
    }
    if query.is_some_and(|q| !valid_percent_encoding(q)) {
        return Err(BadRequest::PercentEncoding("query").into());
    }
    if path.split('/').any(is_dot_segment) {
        return Err(BadRequest::DotSegment.into());
    }
    if path.contains("//") {
        return Err(BadRequest::EmptySegment.into());
    }
    if path.contains('\\') {
        return Err(BadRequest::Backslash.into());
    }
    if has_encoded_slash(path) {
        return Err(BadRequest::EncodedSlash.into());
    }
    Ok(())
}

/// X's OAuth 2.0 token endpoints: never forwarded (404 pointing to `xgate login`).
pub fn check_not_token_endpoint(path: &str) -> Result<(), ProxyError> {
    if path == "/2/oauth2" || path.starts_with("/2/oauth2/") {
        return Err(ProxyError::TokenEndpoint);
    }
    Ok(())
}

/// Whether `path` lies under one of `prefixes` (404 otherwise).
pub fn check_prefix(path: &str, prefixes: &[String]) -> Result<(), ProxyError> {
    if prefixes.iter().any(|p| path.starts_with(p.as_str())) {
        Ok(())
    } else {
        Err(ProxyError::PathNotAllowed)
    }
}

/// The path and query that go upstream: the request target's authority and `Host` are
/// ignored; the path must be well-formed (400) and under an allowed prefix (404).
pub fn target(uri: &http::Uri, prefixes: &[String]) -> Result<PathAndQuery, ProxyError> {
    let path_and_query = uri.path_and_query().cloned().ok_or(BadRequest::NotAPath)?;
    check_target(path_and_query.path(), path_and_query.query())?;
    check_prefix(path_and_query.path(), prefixes)?;
    check_not_token_endpoint(path_and_query.path())?;
    Ok(path_and_query)
}

/// A declared `Content-Length` over `max_body_bytes` (413); a streamed body is cut at the
/// same limit as it goes upstream.
pub fn check_declared_size(headers: &HeaderMap, max_body_bytes: u64) -> Result<(), ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > max_body_bytes => Err(ProxyError::BodyTooLarge {
            limit: max_body_bytes,
        }),
        Some(_) | None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        assert!(check_method(&Method::GET).is_ok());
        assert!(check_method(&Method::from_bytes(b"PROPFIND").unwrap()).is_ok());
        for m in [Method::CONNECT, Method::TRACE] {
            assert!(matches!(
                check_method(&m),
                Err(ProxyError::MethodNotAllowed(_))
            ));
        }
    }

    #[test]
    fn targets() {
        for ok in [
            "/2/tweets",
            "/2/tweets/",
            "/2/a%20b",
            "/2/..x/y",
            "/2/.well-known",
            "/2/a.b",
        ] {
            assert!(check_target(ok, Some("q=%E2%98%83&x=1+2")).is_ok(), "{ok}");
        }
        for bad in [
            "/2/../x",
            "/2/./x",
            "/2/%2e%2E/x",
            "/2/%2E",
            "/2/..",
            "/.",
            "/2/x%zz",
            "/2/x%4",
            "2/x",
            "//2/tweets",
            "/2//tweets",
            "/2/tweets%2F1",
            "/2/tweets%2f1",
            "/2/a%5Cb",
            "/2/a%5cb",
            "/2/a\\b",
        ] {
            assert!(
                matches!(check_target(bad, None), Err(ProxyError::BadRequest(_))),
                "{bad}"
            );
        }
        assert!(check_target("/2/x", Some("q=%")).is_err());
        assert!(check_target("/2/x", Some("q=%G1")).is_err());
    }

    #[test]
    fn framing() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        let one_host = headers(&[("host", "x")]);
        assert!(check_framing(Version::HTTP_11, &one_host).is_ok());
        assert!(check_framing(Version::HTTP_10, &HeaderMap::new()).is_ok());
        assert!(check_framing(Version::HTTP_2, &HeaderMap::new()).is_ok());
        for bad in [headers(&[]), headers(&[("host", "x"), ("host", "y")])] {
            assert!(matches!(
                check_framing(Version::HTTP_11, &bad),
                Err(ProxyError::BadRequest(BadRequest::Host(_)))
            ));
        }
        for ok in ["chunked", "Chunked", " chunked "] {
            let h = headers(&[("host", "x"), ("transfer-encoding", ok)]);
            assert!(check_framing(Version::HTTP_11, &h).is_ok(), "{ok}");
        }
        for bad in ["gzip, chunked", "gzip", "chunked, chunked", "identity"] {
            let h = headers(&[("host", "x"), ("transfer-encoding", bad)]);
            assert!(
                matches!(
                    check_framing(Version::HTTP_11, &h),
                    Err(ProxyError::TransferCoding(_))
                ),
                "{bad}"
            );
        }
        let split = headers(&[
            ("host", "x"),
            ("transfer-encoding", "gzip"),
            ("transfer-encoding", "chunked"),
        ]);
        assert!(check_framing(Version::HTTP_11, &split).is_err());
    }

    #[test]
    fn token_endpoints_are_never_forwarded() {
        for path in ["/2/oauth2/token", "/2/oauth2", "/2/oauth2/revoke"] {
            assert!(
                matches!(
                    check_not_token_endpoint(path),
                    Err(ProxyError::TokenEndpoint)
                ),
                "{path}"
            );
        }
        for path in ["/2/oauth2x", "/2/tweets/oauth2/token", "/oauth2/token"] {
            assert!(check_not_token_endpoint(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn prefixes() {
        let p = vec!["/2/".to_owned()];
        assert!(check_prefix("/2/tweets", &p).is_ok());
        assert!(matches!(
            check_prefix("/1.1/statuses", &p),
            Err(ProxyError::PathNotAllowed)
        ));
        assert!(check_prefix("/2", &p).is_err());
    }
}
