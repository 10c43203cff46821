//! Known answers from `shared/reference/x-api-v2.md` section 3, regression cases whose expected
//! values were computed with Python's `urllib.parse.quote(safe='-._~')` + `hmac` (an independent
//! implementation), and property tests.

use super::*;
use crate::clock::{FixedNonce, ManualClock};
use proptest::prelude::*;

const CK: &str = "xvz1evFS4wEEPTGEFPHBog";
const CS: &str = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";
const TOKEN: &str = "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb";
const TS: &str = "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE";
const NONCE: &str = "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg";
const TIMESTAMP: u64 = 1_318_622_958;
const X_BODY: &[u8] =
    b"status=Hello%20Ladies%20%2b%20Gentlemen%2c%20a%20signed%20OAuth%20request%21";

fn x_key() -> Oauth1Key {
    Oauth1Key::new(
        &CK.into(),
        &CS.into(),
        Some((&TOKEN.into(), &SecretString::from(TS))),
    )
}

fn uri(s: &str) -> http::Uri {
    s.parse().unwrap()
}

fn x_params() -> RequestParams<'static> {
    RequestParams {
        timestamp: TIMESTAMP,
        nonce: NONCE,
        extra: &[],
    }
}

const X_OAUTH_PARAMS: &[(&str, &str)] = &[
    ("oauth_consumer_key", CK),
    ("oauth_nonce", NONCE),
    ("oauth_signature_method", "HMAC-SHA1"),
    ("oauth_timestamp", "1318622958"),
    ("oauth_token", TOKEN),
    ("oauth_version", "1.0"),
];

fn signature_in(header: &str) -> &str {
    let start = header.find("oauth_signature=\"").unwrap() + "oauth_signature=\"".len();
    let len = header[start..].find('"').unwrap();
    &header[start..start + len]
}

// === X's "Creating a signature" (reference 3.1) ===

#[test]
fn x_example_base_string_api_x_com() {
    let base = base_string(
        "POST",
        &uri("https://api.x.com/1.1/statuses/update.json?include_entities=true"),
        Some(X_BODY),
        X_OAUTH_PARAMS,
    )
    .unwrap();
    assert_eq!(
        base,
        "POST&https%3A%2F%2Fapi.x.com%2F1.1%2Fstatuses%2Fupdate.json&include_entities%3Dtrue%26oauth_consumer_key%3Dxvz1evFS4wEEPTGEFPHBog%26oauth_nonce%3DkYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D1318622958%26oauth_token%3D370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb%26oauth_version%3D1.0%26status%3DHello%2520Ladies%2520%252B%2520Gentlemen%252C%2520a%2520signed%2520OAuth%2520request%2521"
    );
    assert_eq!(x_key().signature(&base), "Ls93hJiZbQ3akF3HF3x1Bz8/zU4=");
}

#[test]
fn x_example_header_api_x_com() {
    let header = authorization_header(
        &x_key(),
        "POST",
        &uri("https://api.x.com/1.1/statuses/update.json?include_entities=true"),
        Some(X_BODY),
        x_params(),
    )
    .unwrap();
    assert_eq!(
        header,
        "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", oauth_signature=\"Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D\", oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"1318622958\", oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", oauth_version=\"1.0\""
    );
}

#[test]
fn x_example_api_twitter_com() {
    let header = authorization_header(
        &x_key(),
        "POST",
        &uri("https://api.twitter.com/1.1/statuses/update.json?include_entities=true"),
        Some(X_BODY),
        x_params(),
    )
    .unwrap();
    // hCtSmYh+iHYCEqBWrE7C7hYmtUk= percent-encoded in the header.
    assert_eq!(signature_in(&header), "hCtSmYh%2BiHYCEqBWrE7C7hYmtUk%3D");
}

#[test]
fn x_example_signer_uses_injected_clock_and_nonce() {
    let signer = Oauth1Signer::new(
        ManualClock::at(TIMESTAMP - 60),
        FixedNonce(NONCE.to_owned()),
    );
    let header = signer
        .sign(
            &x_key(),
            "post",
            &uri("https://API.X.COM:443/1.1/statuses/update.json?include_entities=true"),
            Some(X_BODY),
            60,
        )
        .unwrap();
    assert_eq!(signature_in(&header), "Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D");
}

// === RFC 5849 section 3.4.1 (reference 3.3) ===

const RFC_PARAMS: &[(&str, &str)] = &[
    ("oauth_consumer_key", "9djdj82h48djs9d2"),
    ("oauth_token", "kkk9d7dh3k39sjv7"),
    ("oauth_signature_method", "HMAC-SHA1"),
    ("oauth_timestamp", "137131201"),
    ("oauth_nonce", "7d8f3e4a"),
];

#[test]
fn rfc5849_normalized_parameters() {
    // The base string's third part is the normalised parameter string, encoded once more.
    let base = base_string(
        "GET",
        &uri("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b"),
        Some(b"c2&a3=2+q"),
        RFC_PARAMS,
    )
    .unwrap();
    let normalized = form_decode(base.split('&').nth(2).unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(normalized).unwrap(),
        "a2=r%20b&a3=2%20q&a3=a&b5=%3D%253D&c%40=&c2=&oauth_consumer_key=9djdj82h48djs9d2&oauth_nonce=7d8f3e4a&oauth_signature_method=HMAC-SHA1&oauth_timestamp=137131201&oauth_token=kkk9d7dh3k39sjv7"
    );
}

#[test]
fn rfc5849_base_string_and_signature() {
    let base = base_string(
        "POST",
        &uri("http://example.com/request?b5=%3D%253D&a3=a&c%40=&a2=r%20b"),
        Some(b"c2&a3=2+q"),
        RFC_PARAMS,
    )
    .unwrap();
    assert_eq!(
        base,
        "POST&http%3A%2F%2Fexample.com%2Frequest&a2%3Dr%2520b%26a3%3D2%2520q%26a3%3Da%26b5%3D%253D%25253D%26c%2540%3D%26c2%3D%26oauth_consumer_key%3D9djdj82h48djs9d2%26oauth_nonce%3D7d8f3e4a%26oauth_signature_method%3DHMAC-SHA1%26oauth_timestamp%3D137131201%26oauth_token%3Dkkk9d7dh3k39sjv7"
    );
    let key = Oauth1Key::new(
        &"9djdj82h48djs9d2".into(),
        &"j49sk3j29djd".into(),
        Some((&"kkk9d7dh3k39sjv7".into(), &"dh893hdasih9".into())),
    );
    assert_eq!(key.signature(&base), "r6/TJjbCOr97/+UU0NsvSne7s5g=");
}

#[test]
fn rfc5849_base_string_uri() {
    let base_uri = |u: &str| {
        let b = base_string("GET", &uri(u), None, &[]).unwrap();
        b.split('&').nth(1).unwrap().to_owned()
    };
    assert_eq!(
        base_uri("http://EXAMPLE.COM:80/r%20v/X?id=123"),
        "http%3A%2F%2Fexample.com%2Fr%2520v%2FX"
    );
    assert_eq!(
        base_uri("https://www.example.net:8080/?q=1"),
        "https%3A%2F%2Fwww.example.net%3A8080%2F"
    );
    assert_eq!(base_uri("HTTPS://api.x.com"), "https%3A%2F%2Fapi.x.com%2F");
}

#[test]
fn request_token_key_has_trailing_ampersand() {
    // No token secret yet: the key is `enc(consumer_secret)&`.
    let key = Oauth1Key::new(&"ck".into(), &"a b".into(), None);
    let mut mac = <HmacSha1 as Mac>::new_from_slice(b"a%20b&").unwrap();
    mac.update(b"base");
    assert_eq!(
        key.signature("base"),
        BASE64.encode(mac.finalize().into_bytes())
    );
    let header = authorization_header(
        &key,
        "POST",
        &uri("https://api.x.com/oauth/request_token"),
        None,
        RequestParams {
            timestamp: 1,
            nonce: "n",
            extra: &[("oauth_callback", "oob")],
        },
    )
    .unwrap();
    assert!(header.starts_with("OAuth oauth_callback=\"oob\", oauth_consumer_key=\"ck\""));
    assert!(!header.contains("oauth_token"), "{header}");
}

#[test]
fn request_token_header_signs_the_callback_and_no_token() {
    let key = Oauth1Key::new(&CK.into(), &CS.into(), None);
    let u = uri("https://api.x.com/oauth/request_token?x_auth_access_type=write");
    let callback = "http://127.0.0.1:8080/cb?state=a b";
    let params = RequestParams {
        timestamp: TIMESTAMP,
        nonce: "a nonce/with+odd=bytes",
        extra: &[("oauth_callback", callback), ("oauth_verifier", "v")],
    };
    let header = authorization_header(&key, "POST", &u, None, params).unwrap();
    let protocol = [
        ("oauth_callback", callback),
        ("oauth_consumer_key", CK),
        ("oauth_nonce", "a nonce/with+odd=bytes"),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "1318622958"),
        ("oauth_verifier", "v"),
        ("oauth_version", "1.0"),
    ];
    let base = base_string("POST", &u, None, &protocol).unwrap();
    assert_eq!(signature_in(&header), percent_encode(&key.signature(&base)));
    assert!(
        header.starts_with(
            "OAuth oauth_callback=\"http%3A%2F%2F127.0.0.1%3A8080%2Fcb%3Fstate%3Da%20b\", oauth_consumer_key="
        ),
        "{header}"
    );
    assert!(
        header.contains("oauth_nonce=\"a%20nonce%2Fwith%2Bodd%3Dbytes\""),
        "{header}"
    );
    assert!(
        header.ends_with("oauth_verifier=\"v\", oauth_version=\"1.0\""),
        "{header}"
    );
    assert!(!header.contains("oauth_token"), "{header}");
}

// === percent-encoding (reference 2.2) ===

#[test]
fn percent_encoding_examples() {
    for (input, want) in [
        ("Ladies + Gentlemen", "Ladies%20%2B%20Gentlemen"),
        ("An encoded string!", "An%20encoded%20string%21"),
        ("Dogs, Cats & Mice", "Dogs%2C%20Cats%20%26%20Mice"),
        ("☃", "%E2%98%83"),
        ("!*'()", "%21%2A%27%28%29"),
        ("-._~", "-._~"),
        ("a/b?c=d", "a%2Fb%3Fc%3Dd"),
    ] {
        assert_eq!(percent_encode(input), want, "{input}");
    }
}

// === regressions (expected values from Python, see module doc) ===

fn signed(method: &str, url: &str, body: Option<&[u8]>) -> (String, String) {
    let u = uri(url);
    let base = base_string(method, &u, body, X_OAUTH_PARAMS).unwrap();
    let header = authorization_header(&x_key(), method, &u, body, x_params()).unwrap();
    (base, header)
}

#[test]
fn plus_in_query_means_space() {
    let (base, header) = signed(
        "GET",
        "https://api.x.com/2/tweets/search/recent?query=from%3AXDevelopers+-is%3Aretweet&max_results=10",
        None,
    );
    assert!(
        base.ends_with("query%3Dfrom%253AXDevelopers%2520-is%253Aretweet"),
        "{base}"
    );
    assert_eq!(
        signature_in(&header),
        percent_encode("ksFmE/0s6LC0TkyxthJ59NJlRX8=")
    );
}

#[test]
fn spaces_sub_delims_and_tilde() {
    let (base, header) = signed(
        "GET",
        "https://api.x.com/2/tweets/search/recent?query=a%20b!*'()&tilde=~x",
        None,
    );
    assert!(
        base.ends_with("query%3Da%2520b%2521%252A%2527%2528%2529%26tilde%3D~x"),
        "{base}"
    );
    assert_eq!(
        signature_in(&header),
        percent_encode("C/BCZPHb410/WRnDh7JWMEz9geM=")
    );
}

#[test]
fn unicode_values() {
    let (base, header) = signed(
        "GET",
        "https://api.x.com/2/users/by?usernames=%E2%98%83&q=caf%C3%A9+na%C3%AFve",
        None,
    );
    assert!(
        base.contains("q%3Dcaf%25C3%25A9%2520na%25C3%25AFve"),
        "{base}"
    );
    assert_eq!(
        signature_in(&header),
        percent_encode("+bPRLJTHszRyguold/pylPJVIA4=")
    );
}

#[test]
fn repeated_keys_and_empty_values() {
    let (base, header) = signed(
        "GET",
        "https://api.x.com/2/tweets?ids=2&ids=10&ids=1&empty=&bare&z=",
        None,
    );
    assert!(
        base.starts_with(
            "GET&https%3A%2F%2Fapi.x.com%2F2%2Ftweets&bare%3D%26empty%3D%26ids%3D1%26ids%3D10%26ids%3D2%26"
        ),
        "{base}"
    );
    assert!(base.ends_with("%26z%3D"), "{base}");
    assert_eq!(
        signature_in(&header),
        percent_encode("HWVjl32GaPn1tCYTcHBkdKKjoow=")
    );
}

#[test]
fn form_body_parameters_are_signed() {
    let (_, header) = signed(
        "POST",
        "https://api.x.com/1.1/statuses/update.json?include_entities=true",
        Some(b"status=Hello+world%21&media_ids=1%2C2"),
    );
    assert_eq!(
        signature_in(&header),
        percent_encode("gU4vUhWOorSxDtg3WwnUEc0qESw=")
    );
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    for bad in [
        "https://api.x.com/2/t?q=%zz",
        "https://api.x.com/2/t?q=%4",
        "https://api.x.com/2/t?q=%",
    ] {
        assert_eq!(
            base_string("GET", &uri(bad), None, &[]),
            Err(Oauth1Error::InvalidPercentEncoding("query")),
            "{bad}"
        );
    }
    assert_eq!(
        base_string("POST", &uri("https://api.x.com/2/t"), Some(b"a=%G0"), &[]),
        Err(Oauth1Error::InvalidPercentEncoding("form body"))
    );
    assert!(matches!(
        base_string("GET", &uri("/2/tweets"), None, &[]),
        Err(Oauth1Error::NotAbsolute(_))
    ));
}

#[test]
fn debug_never_shows_credentials() {
    let dbg = format!("{:?}", x_key());
    assert!(!dbg.contains(CK) && !dbg.contains(TOKEN), "{dbg}");
}

// === properties ===

/// RFC 5849 section 3.6, written as plainly as possible.
fn reference_encode(s: &str) -> String {
    reference_encode_bytes(s.as_bytes())
}

fn reference_encode_bytes(s: &[u8]) -> String {
    s.iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// RFC 5849 section 3.4.1's base string, written as plainly as possible: every parameter
/// decoded, encoded, sorted as text, joined, and the whole encoded again.
fn reference_base_string(base_uri: &str, query: &str, protocol: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| reference_encode_bytes(&form_decode(s).unwrap());
            (decode(n), decode(v))
        })
        .chain(
            protocol
                .iter()
                .map(|(n, v)| (reference_encode(n), reference_encode(v))),
        )
        .collect();
    pairs.sort();
    let joined: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v}")).collect();
    format!(
        "GET&{}&{}",
        reference_encode(base_uri),
        reference_encode(&joined.join("&"))
    )
}

proptest! {
    #[test]
    fn header_signature_matches_the_plain_definition(
        pairs in proptest::collection::vec((any::<String>(), any::<String>(), any::<bool>()), 0..12),
    ) {
        // Each pair percent-encoded, spaces written as `+` in some of them, as clients do.
        let query: Vec<String> = pairs
            .iter()
            .map(|(k, v, plus)| {
                let (k, v) = (percent_encode(k), percent_encode(v));
                if *plus {
                    format!("{}={}", k.replace("%20", "+"), v.replace("%20", "+"))
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        let query = query.join("&");
        let u = uri(&format!("https://api.x.com/2/tweets?{query}"));
        let header = authorization_header(&x_key(), "GET", &u, None, x_params()).unwrap();
        let want = x_key().signature(&reference_base_string("https://api.x.com/2/tweets", &query, X_OAUTH_PARAMS));
        prop_assert_eq!(signature_in(&header), percent_encode(&want));
        prop_assert_eq!(
            base_string("GET", &u, None, X_OAUTH_PARAMS).unwrap(),
            reference_base_string("https://api.x.com/2/tweets", &query, X_OAUTH_PARAMS)
        );
    }

    #[test]
    fn encoder_matches_rfc_definition(s in any::<String>()) {
        prop_assert_eq!(percent_encode(&s), reference_encode(&s));
    }

    #[test]
    fn form_component_roundtrips(s in any::<String>()) {
        // Encoding then form-decoding gives the original bytes back.
        prop_assert_eq!(form_decode(&percent_encode(&s)).unwrap(), s.as_bytes());
    }

    #[test]
    fn parameter_order_never_changes_the_signature(
        pairs in proptest::collection::vec(("[a-z_.~!*'() +%0-9]{0,6}", any::<String>()), 0..10),
        seed in any::<u64>(),
    ) {
        let encode_pair = |(k, v): &(String, String)| format!("{}={}", percent_encode(k), percent_encode(v));
        let forward: Vec<String> = pairs.iter().map(encode_pair).collect();
        let mut shuffled = forward.clone();
        // A deterministic shuffle driven by the seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let sign = |query: &[String]| {
            let u = uri(&format!("https://api.x.com/2/tweets?{}", query.join("&")));
            authorization_header(&x_key(), "GET", &u, None, x_params()).unwrap()
        };
        prop_assert_eq!(sign(&forward), sign(&shuffled));
    }
}

#[test]
fn signer_nonces_are_fresh() {
    let signer = Oauth1Signer::new(ManualClock::at(TIMESTAMP), crate::clock::RandomNonce);
    let u = uri("https://api.x.com/2/tweets?ids=1");
    let a = signer.sign(&x_key(), "GET", &u, None, 0).unwrap();
    let b = signer.sign(&x_key(), "GET", &u, None, 0).unwrap();
    assert_ne!(a, b);
}
