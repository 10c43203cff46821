//! The endpoint matcher on any method and path: no panic, and a match is an endpoint of that
//! method (GET for HEAD) whose template has the path's shape (same segments, `:param`
//! matching any one non-empty segment).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xgate::endpoints::Catalogue;

fn catalogue() -> &'static Catalogue {
    static C: OnceLock<Catalogue> = OnceLock::new();
    C.get_or_init(|| Catalogue::new(&[]).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (method, path) = s.split_once(' ').unwrap_or(("GET", s));
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Some(id) = catalogue().lookup(&method, path) else {
        return;
    };
    let endpoint = catalogue().get(id).unwrap();
    let (m, template) = endpoint.name.split_once(' ').unwrap();
    // HEAD counts as the GET it mirrors.
    let want_method = if method == http::Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    assert_eq!(m, want_method, "{}", endpoint.name);
    let want: Vec<&str> = template.split('/').collect();
    let got: Vec<&str> = path.split('/').collect();
    assert_eq!(want.len(), got.len(), "{path} matched {}", endpoint.name);
    for (w, g) in want.iter().zip(&got) {
        assert!(
            w.starts_with(':') && !g.is_empty() || w == g,
            "{path} matched {}",
            endpoint.name
        );
    }
});
