//! Credential checks as X makes them, written independently of xgate's signer: Bearer tokens,
//! and OAuth 1.0a HMAC-SHA1 signatures (RFC 5849) recomputed from the request as received.

use std::collections::{BTreeMap, HashSet};

use base64::Engine as _;
use http::HeaderMap;

use super::{ALICE_SECRET, Auth, BEARER, CONSUMER_SECRET, ISSUED_BEARER};

pub(super) fn check_auth(
    method: &str,
    url: &str,
    headers: &HeaderMap,
    form: Option<&[u8]>,
    user_tokens: &HashSet<String>,
) -> Auth {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Auth::None;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Auth::Bearer {
            valid: token == BEARER || token == ISSUED_BEARER || user_tokens.contains(token),
        };
    }
    if value.starts_with("OAuth ") {
        return match verify_oauth1(method, url, value, form, CONSUMER_SECRET, ALICE_SECRET) {
            Ok(params) => Auth::Oauth1 {
                valid: true,
                params,
            },
            Err(_) => Auth::Oauth1 {
                valid: false,
                params: parse_oauth_header(value),
            },
        };
    }
    Auth::Other
}

/// RFC 3986 unreserved stays, every other byte is %XX (upper case).
pub fn enc(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Form decoding: `+` is a space, `%XX` a byte.
pub fn dec(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn pairs(s: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (dec(k), dec(v)),
            None => (dec(p), Vec::new()),
        })
        .collect()
}

pub fn parse_oauth_header(header: &str) -> BTreeMap<String, String> {
    header
        .trim_start_matches("OAuth ")
        .split(", ")
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let v = v.trim_matches('"');
            Some((
                String::from_utf8(dec(k)).unwrap(),
                String::from_utf8(dec(v)).unwrap(),
            ))
        })
        .collect()
}

/// Checks an OAuth 1.0a header the way X would; returns its parameters when valid.
pub fn verify_oauth1(
    method: &str,
    url: &str,
    header: &str,
    form: Option<&[u8]>,
    consumer_secret: &str,
    token_secret: &str,
) -> Result<BTreeMap<String, String>, String> {
    let params = parse_oauth_header(header);
    let signature = params
        .get("oauth_signature")
        .ok_or("no oauth_signature")?
        .clone();
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut all: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| *k != "oauth_signature" && *k != "realm")
        .map(|(k, v)| (enc(k.as_bytes()), enc(v.as_bytes())))
        .collect();
    for (k, v) in pairs(query) {
        all.push((enc(&k), enc(&v)));
    }
    if let Some(body) = form {
        for (k, v) in pairs(std::str::from_utf8(body).map_err(|e| e.to_string())?) {
            all.push((enc(&k), enc(&v)));
        }
    }
    all.sort();
    let joined: Vec<String> = all.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let base_string = format!(
        "{}&{}&{}",
        method.to_uppercase(),
        enc(base.to_lowercase().as_bytes()),
        enc(joined.join("&").as_bytes())
    );
    use hmac::Mac;
    let key = format!(
        "{}&{}",
        enc(consumer_secret.as_bytes()),
        enc(token_secret.as_bytes())
    );
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(base_string.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if expected == signature {
        Ok(params)
    } else {
        Err(format!("signature mismatch over {base_string}"))
    }
}

#[test]
fn verifier_accepts_x_published_example_and_rejects_tampering() {
    let header = "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", oauth_signature=\"Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D\", oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"1318622958\", oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", oauth_version=\"1.0\"";
    let url = "https://api.x.com/1.1/statuses/update.json?include_entities=true";
    let body = b"status=Hello%20Ladies%20%2b%20Gentlemen%2c%20a%20signed%20OAuth%20request%21";
    let cs = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";
    let ts = "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE";
    assert!(verify_oauth1("POST", url, header, Some(body), cs, ts).is_ok());
    assert!(verify_oauth1("POST", url, header, Some(b"status=Hello"), cs, ts).is_err());
    assert!(verify_oauth1("GET", url, header, Some(body), cs, ts).is_err());
    assert!(verify_oauth1("POST", url, header, Some(body), cs, "wrong").is_err());
}
