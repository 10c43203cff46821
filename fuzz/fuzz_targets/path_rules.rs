//! The path and query rules (CONTRACT section 3) on any request target: no panic, and what
//! they accept is what a reference written here from the contract accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xgate::inbound::{check_not_token_endpoint, check_target};

fn valid_escapes(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            match (b.get(i + 1), b.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

fn reference_ok(path: &str, query: Option<&str>) -> bool {
    let decoded_dots = |seg: &str| seg.replace("%2e", ".").replace("%2E", ".");
    path.starts_with('/')
        && valid_escapes(path)
        && query.is_none_or(valid_escapes)
        && !path
            .split('/')
            .any(|s| matches!(decoded_dots(s).as_str(), "." | ".."))
        && !path.contains("//")
        && !path.contains('\\')
        && !path.to_ascii_lowercase().contains("%2f")
        && !path.to_ascii_lowercase().contains("%5c")
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match s.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (s, None),
    };
    assert_eq!(
        check_target(path, query).is_ok(),
        reference_ok(path, query),
        "{path:?} {query:?}"
    );
    let _ = check_not_token_endpoint(path);
});
