//! Rules on the request line (CONTRACT section 3): method, path, percent-encoding, prefixes.
//!
//! Owns the checks that need nothing but the request target. The target's authority and the
//! `Host` header are never looked at: only the path and query are used, and they go upstream
//! byte for byte. These are pure functions; `proxy` calls them in the contract's order.

use http::Method;

use crate::error::ProxyError;

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

/// The path and query rules that answer 400: valid percent-encoding, no dot segments.
pub fn check_target(path: &str, query: Option<&str>) -> Result<(), ProxyError> {
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequest(
            "the request target must be a path starting with /".to_owned(),
        ));
    }
    if !valid_percent_encoding(path) {
        return Err(ProxyError::BadRequest(
            "invalid percent-encoding in the path".to_owned(),
        ));
    }
    if query.is_some_and(|q| !valid_percent_encoding(q)) {
        return Err(ProxyError::BadRequest(
            "invalid percent-encoding in the query".to_owned(),
        ));
    }
    if path.split('/').any(is_dot_segment) {
        return Err(ProxyError::BadRequest(
            "`.` and `..` path segments are not allowed".to_owned(),
        ));
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
