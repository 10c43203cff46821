//! The OAuth 1.0a encoder, the signature base string and the signer, against a reference
//! written here from RFC 5849 (sections 3.4.1 and 3.6) and nothing else of xgate's.
#![no_main]

use base64::Engine as _;
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use xgate::auth::oauth1::{
    Oauth1Key, RequestParams, authorization_header, base_string, percent_encode,
};
use xgate::secret::SecretString;

/// RFC 5849 3.6: unreserved characters as they are, every other byte `%XX` upper case.
fn reference_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space); `None` on a bad escape.
fn reference_form_decode(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// 3.4.1.3: every pair of the query and the body, decoded, encoded again, sorted.
fn reference_params(parts: &[&[u8]], oauth: &[(&str, &str)]) -> Option<String> {
    let mut pairs: Vec<(String, String)> = oauth
        .iter()
        .map(|(n, v)| {
            (
                reference_encode(n.as_bytes()),
                reference_encode(v.as_bytes()),
            )
        })
        .collect();
    for raw in parts {
        for pair in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &[][..]),
            };
            pairs.push((
                reference_encode(&reference_form_decode(name)?),
                reference_encode(&reference_form_decode(value)?),
            ));
        }
    }
    pairs.sort();
    Some(
        pairs
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("&"),
    )
}

/// 3.4.1.1: the base string of a POST to `https://api.x.com/2/tweets` with these parameters.
fn reference_base_string(parts: &[&[u8]], oauth: &[(&str, &str)]) -> Option<String> {
    reference_params(parts, oauth).map(|p| {
        format!(
            "POST&{}&{}",
            reference_encode(b"https://api.x.com/2/tweets"),
            reference_encode(p.as_bytes())
        )
    })
}

fuzz_target!(|data: &[u8]| {
    // The encoder, on any bytes that make a string.
    if let Ok(s) = std::str::from_utf8(data) {
        assert_eq!(percent_encode(s), reference_encode(data));
    }
    // The base string: input = query \0 body \0 key material.
    let mut parts = data.splitn(3, |&b| b == 0);
    let query = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let secret = parts.next().unwrap_or_default();
    let Ok(query_str) = std::str::from_utf8(query) else {
        return;
    };
    let Ok(uri) = format!("https://api.x.com/2/tweets?{query_str}").parse::<http::Uri>() else {
        return;
    };
    let oauth = [
        ("oauth_consumer_key", "ck"),
        ("oauth_nonce", "n"),
        ("oauth_timestamp", "1"),
    ];
    let got = base_string("POST", &uri, Some(body), &oauth);
    let wanted_query = uri.query().unwrap_or_default().as_bytes();
    let want = reference_base_string(&[wanted_query, body], &oauth);
    match (got, want) {
        (Ok(got), Some(want)) => assert_eq!(got, want),
        (Err(_), None) => {}
        (got, want) => panic!("xgate {got:?}, reference {want:?}"),
    }
    // The signer: HMAC-SHA1 keyed `enc(consumer secret)&enc(token secret)`, base64.
    let Ok(secret) = std::str::from_utf8(secret) else {
        return;
    };
    let (consumer, token) = secret.split_once('&').unwrap_or((secret, ""));
    let key = Oauth1Key::new(
        &SecretString::from("ck"),
        &SecretString::from(consumer),
        Some((&SecretString::from("t"), &SecretString::from(token))),
    );
    let base = "POST&https%3A%2F%2Fapi.x.com%2F2%2Ftweets&a%3D1";
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(
        format!(
            "{}&{}",
            reference_encode(consumer.as_bytes()),
            reference_encode(token.as_bytes())
        )
        .as_bytes(),
    )
    .unwrap();
    mac.update(base.as_bytes());
    let want = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(key.signature(base), want);

    // The header, whose protocol parameters are merged into the sorted request parameters
    // (a query may name one of them too): its signature is the HMAC of the reference base
    // string.
    let protocol = [
        ("oauth_consumer_key", "ck"),
        ("oauth_nonce", "n"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "1"),
        ("oauth_token", "t"),
        ("oauth_version", "1.0"),
    ];
    let request = RequestParams {
        timestamp: 1,
        nonce: "n",
        extra: &[],
    };
    let header = authorization_header(&key, "POST", &uri, Some(body), request);
    let want = reference_base_string(&[wanted_query, body], &protocol);
    match (header, want) {
        (Ok(header), Some(want)) => {
            let signature = reference_encode(key.signature(&want).as_bytes());
            assert!(
                header.contains(&format!("oauth_signature=\"{signature}\"")),
                "{header} does not hold the signature of {want}"
            );
        }
        (Err(_), None) => {}
        (got, want) => panic!("xgate {got:?}, reference {want:?}"),
    }
});
