//! OAuth 1.0a request signing (HMAC-SHA1), per RFC 5849 and X's "Creating a signature".
//!
//! Owns the percent-encoding of RFC 5849 section 3.6, the collection and normalisation of
//! parameters (query string, `oauth_*` protocol parameters, form body), the signature base
//! string and the `Authorization: OAuth ...` header. Everything here is a pure function of its
//! inputs: the timestamp and the nonce are arguments, and [`Oauth1Signer::sign`] takes them from
//! an injected [`Clock`] and [`NonceSource`]. Nothing here logs.
//!
//! Cost: the parameters are decoded and re-encoded in one pass into a single arena string and
//! sorted as index ranges, and the HMAC key schedule is computed once per identity
//! ([`Oauth1Key`]) and cloned per request. See BENCHMARKS.md.

use std::cmp::Ordering;
use std::fmt;
use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::clock::{Clock, NonceSource, RandomError};
use crate::secret::SecretString;

type HmacSha1 = Hmac<Sha1>;

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Oauth1Error {
    /// The URL to sign has no scheme or host.
    #[error("the URL to sign must be absolute (scheme and host), got {0:?}")]
    NotAbsolute(String),
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the {0}")]
    InvalidPercentEncoding(&'static str),
}

/// Why [`Oauth1Signer::sign`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The request itself is not signable.
    #[error(transparent)]
    Request(#[from] Oauth1Error),
    /// No nonce could be drawn.
    #[error(transparent)]
    Random(#[from] RandomError),
}

// === percent-encoding ===

/// Whether RFC 5849 section 3.6 leaves byte `b` as it is: `A-Z a-z 0-9 - . _ ~`.
#[inline]
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[inline]
fn hex_digit_upper(nibble: u8) -> u8 {
    if nibble < 10 {
        b'0' + nibble
    } else {
        b'A' + nibble - 10
    }
}

#[inline]
fn push_pct(out: &mut Vec<u8>, b: u8) {
    out.extend_from_slice(&[b'%', hex_digit_upper(b >> 4), hex_digit_upper(b & 0x0f)]);
}

/// Appends the RFC 5849 section 3.6 encoding of `bytes` to `out`, copying runs of unreserved
/// bytes in one go.
pub fn percent_encode_bytes_into(out: &mut Vec<u8>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let run = bytes
            .iter()
            .position(|&b| !is_unreserved(b))
            .unwrap_or(bytes.len());
        let (plain, rest) = bytes.split_at(run);
        out.extend_from_slice(plain);
        let Some((&b, rest)) = rest.split_first() else {
            break;
        };
        push_pct(out, b);
        bytes = rest;
    }
}

/// Appends the encoding of text that is already RFC 5849-encoded (only unreserved bytes and
/// `%XX`): encoding it again only turns each `%` into `%25`.
fn push_reencoded(out: &mut Vec<u8>, encoded: &[u8]) {
    let mut parts = encoded.split(|&b| b == b'%');
    if let Some(first) = parts.next() {
        out.extend_from_slice(first);
    }
    for part in parts {
        out.extend_from_slice(b"%25");
        out.extend_from_slice(part);
    }
}

/// Appends the RFC 5849 section 3.6 encoding of `bytes` to a string.
pub fn percent_encode_into(out: &mut String, bytes: &[u8]) {
    let mut buf = Vec::with_capacity(bytes.len() + bytes.len() / 2);
    percent_encode_bytes_into(&mut buf, bytes);
    out.push_str(&ascii_string(buf));
}

/// The RFC 5849 section 3.6 encoding of `s`'s UTF-8 bytes (a space is `%20`, `~` stays).
pub fn percent_encode(s: &str) -> String {
    let mut buf = Vec::with_capacity(s.len() + s.len() / 2);
    percent_encode_bytes_into(&mut buf, s.as_bytes());
    ascii_string(buf)
}

/// Everything this module writes is ASCII, so the conversion never copies; were a non-ASCII
/// byte ever to slip in, it is replaced rather than panicking.
fn ascii_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space, `%XX` a byte,
/// as X's server reads a query) and appends its RFC 5849 encoding to `out`, in one pass.
fn push_form_component_reencoded(
    out: &mut Vec<u8>,
    mut raw: &[u8],
    part: &'static str,
) -> Result<(), Oauth1Error> {
    while !raw.is_empty() {
        let run = raw
            .iter()
            .position(|&b| !is_unreserved(b))
            .unwrap_or(raw.len());
        let (plain, rest) = raw.split_at(run);
        out.extend_from_slice(plain);
        raw = match rest {
            [] => break,
            [b'+', rest @ ..] => {
                out.extend_from_slice(b"%20");
                rest
            }
            [b'%', hi, lo, rest @ ..] => {
                let (Some(hi), Some(lo)) = (hex_value(*hi), hex_value(*lo)) else {
                    return Err(Oauth1Error::InvalidPercentEncoding(part));
                };
                let b = (hi << 4) | lo;
                if is_unreserved(b) {
                    out.push(b);
                } else {
                    push_pct(out, b);
                }
                rest
            }
            [b'%', ..] => return Err(Oauth1Error::InvalidPercentEncoding(part)),
            [b, rest @ ..] => {
                push_pct(out, *b);
                rest
            }
        };
    }
    Ok(())
}

/// Decodes one form-encoded component to bytes (`+` is a space).
pub fn form_decode(raw: &str) -> Result<Vec<u8>, Oauth1Error> {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    loop {
        rest = match rest {
            [] => return Ok(out),
            [b'+', rest @ ..] => {
                out.push(b' ');
                rest
            }
            [b'%', hi, lo, rest @ ..] => {
                let (Some(hi), Some(lo)) = (hex_value(*hi), hex_value(*lo)) else {
                    return Err(Oauth1Error::InvalidPercentEncoding("value"));
                };
                out.push((hi << 4) | lo);
                rest
            }
            [b'%', ..] => return Err(Oauth1Error::InvalidPercentEncoding("value")),
            [b, rest @ ..] => {
                out.push(*b);
                rest
            }
        };
    }
}

// === parameters ===

/// The signature's parameters, each name and value already in RFC 5849 encoding, kept as
/// ranges into one arena so that collecting them costs two allocations in all.
#[derive(Debug, Default)]
pub struct Params {
    arena: Vec<u8>,
    /// (encoded name, encoded value) ranges into `arena`.
    items: Vec<(Range<usize>, Range<usize>)>,
}

impl Params {
    /// An empty set with room for `n` parameters.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            arena: Vec::with_capacity(n * 24),
            items: Vec::with_capacity(n),
        }
    }

    /// Adds a parameter given by its decoded name and value.
    pub fn push_decoded(&mut self, name: &str, value: &str) {
        let start = self.arena.len();
        percent_encode_bytes_into(&mut self.arena, name.as_bytes());
        let mid = self.arena.len();
        percent_encode_bytes_into(&mut self.arena, value.as_bytes());
        self.items.push((start..mid, mid..self.arena.len()));
    }

    /// Adds a parameter whose name and value are already RFC 5849-encoded.
    fn push_encoded(&mut self, name: &[u8], value: &[u8]) {
        let start = self.arena.len();
        self.arena.extend_from_slice(name);
        let mid = self.arena.len();
        self.arena.extend_from_slice(value);
        self.items.push((start..mid, mid..self.arena.len()));
    }

    /// Adds every pair of a form-encoded string (a query string or an
    /// `application/x-www-form-urlencoded` body). A pair without `=` has an empty value;
    /// empty pairs (`a=1&&b=2`) carry nothing and are skipped, as servers do.
    pub fn push_form_encoded(&mut self, raw: &[u8], part: &'static str) -> Result<(), Oauth1Error> {
        for pair in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => {
                    let (name, value) = pair.split_at(eq);
                    (name, value.get(1..).unwrap_or_default())
                }
                None => (pair, &[][..]),
            };
            let start = self.arena.len();
            push_form_component_reencoded(&mut self.arena, name, part)?;
            let mid = self.arena.len();
            push_form_component_reencoded(&mut self.arena, value, part)?;
            self.items.push((start..mid, mid..self.arena.len()));
        }
        Ok(())
    }

    fn bytes(&self, r: &Range<usize>) -> &[u8] {
        self.arena.get(r.clone()).unwrap_or_default()
    }

    /// Sorts by encoded name, then encoded value (byte order), as RFC 5849 section 3.4.1.3.2.
    fn sort(&mut self) {
        let arena = &self.arena;
        let bytes = |r: &Range<usize>| arena.get(r.clone()).unwrap_or_default();
        self.items
            .sort_unstable_by(|(an, av), (bn, bv)| match bytes(an).cmp(bytes(bn)) {
                Ordering::Equal => bytes(av).cmp(bytes(bv)),
                o => o,
            });
    }

    /// The normalised parameter string (`a=1&b=2`), sorted.
    pub fn normalized(mut self) -> String {
        self.sort();
        let mut out = Vec::with_capacity(self.arena.len() + 2 * self.items.len());
        for (i, (n, v)) in self.items.iter().enumerate() {
            if i > 0 {
                out.push(b'&');
            }
            out.extend_from_slice(self.bytes(n));
            out.push(b'=');
            out.extend_from_slice(self.bytes(v));
        }
        ascii_string(out)
    }
}

// === base string ===

/// Appends `enc(scheme://host[:port]/path)` to `out`: scheme and host lower-cased, a default
/// port dropped, the path exactly as sent, no query (RFC 5849 section 3.4.1.2).
fn push_base_uri_encoded(out: &mut Vec<u8>, uri: &http::Uri) -> Result<(), Oauth1Error> {
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(Oauth1Error::NotAbsolute(uri.to_string()));
    };
    let start = out.len();
    out.extend_from_slice(scheme.as_bytes());
    out.extend_from_slice(b"%3A%2F%2F");
    percent_encode_bytes_into(out, host.as_bytes());
    if let Some(lower) = out.get_mut(start..) {
        // Only the scheme and host are in `out` so far; `%XX` escapes stay upper-case.
        let mut in_escape = 0;
        for b in lower {
            if *b == b'%' {
                in_escape = 2;
            } else if in_escape > 0 {
                in_escape -= 1;
            } else {
                b.make_ascii_lowercase();
            }
        }
    }
    let default_port = if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else {
        None
    };
    if let Some(port) = uri.port_u16().filter(|&p| Some(p) != default_port) {
        out.extend_from_slice(b"%3A");
        out.extend_from_slice(port.to_string().as_bytes());
    }
    let path = uri.path();
    percent_encode_bytes_into(
        out,
        if path.is_empty() {
            b"/"
        } else {
            path.as_bytes()
        },
    );
    Ok(())
}

/// The base string's bytes; see [`base_string`].
fn base_string_bytes(
    method: &str,
    uri: &http::Uri,
    form_body: Option<&[u8]>,
    mut params: Params,
) -> Result<Vec<u8>, Oauth1Error> {
    if let Some(q) = uri.query() {
        params.push_form_encoded(q.as_bytes(), "query")?;
    }
    if let Some(body) = form_body {
        params.push_form_encoded(body, "form body")?;
    }
    params.sort();

    // Re-encoding adds two bytes per `%`; the URI may triple. Sized so that it never grows.
    let mut out = Vec::with_capacity(
        32 + 3 * (uri.path().len() + uri.host().map_or(0, str::len))
            + params.arena.len() * 3 / 2
            + params.items.len() * 6,
    );
    out.extend(method.bytes().map(|b| b.to_ascii_uppercase()));
    out.push(b'&');
    push_base_uri_encoded(&mut out, uri)?;
    out.push(b'&');
    for (i, (n, v)) in params.items.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b"%26");
        }
        push_reencoded(&mut out, params.bytes(n));
        out.extend_from_slice(b"%3D");
        push_reencoded(&mut out, params.bytes(v));
    }
    Ok(out)
}

/// The signature base string `METHOD&enc(base URI)&enc(parameter string)`.
///
/// `params` must already hold the `oauth_*` protocol parameters (without `oauth_signature`);
/// the query string of `uri` and the form body, if any, are added here.
pub fn base_string(
    method: &str,
    uri: &http::Uri,
    form_body: Option<&[u8]>,
    params: Params,
) -> Result<String, Oauth1Error> {
    base_string_bytes(method, uri, form_body, params).map(ascii_string)
}

// === keys and signatures ===

/// One identity's OAuth 1.0a credentials, with the HMAC key schedule done once.
#[derive(Clone)]
pub struct Oauth1Key {
    /// `oauth_consumer_key`, RFC 5849-encoded once.
    consumer_key: SecretString,
    /// `oauth_token`, RFC 5849-encoded once.
    token: Option<SecretString>,
    /// HMAC-SHA1 keyed with `enc(consumer_secret)&enc(token_secret)`; cloned per signature.
    mac: HmacSha1,
}

impl fmt::Debug for Oauth1Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oauth1Key").finish_non_exhaustive()
    }
}

impl Oauth1Key {
    /// Keys for a user-context request (`token` = the user's access token) or, with
    /// `token = None`, for the request-token step of the 3-legged flow.
    pub fn new(
        consumer_key: &SecretString,
        consumer_secret: &SecretString,
        token: Option<(&SecretString, &SecretString)>,
    ) -> Self {
        let mut key = zeroize::Zeroizing::new(Vec::with_capacity(96));
        percent_encode_bytes_into(&mut key, consumer_secret.expose().as_bytes());
        key.push(b'&');
        let token = token.map(|(token, secret)| {
            percent_encode_bytes_into(&mut key, secret.expose().as_bytes());
            SecretString::new(percent_encode(token.expose()))
        });
        #[expect(
            clippy::expect_used,
            reason = "HMAC accepts keys of any length; runs at startup, not per request"
        )]
        let mac =
            <HmacSha1 as Mac>::new_from_slice(&key).expect("HMAC-SHA1 accepts keys of any length");
        Self {
            consumer_key: SecretString::new(percent_encode(consumer_key.expose())),
            token,
            mac,
        }
    }

    fn signature_bytes(&self, base_string: &[u8]) -> [u8; 28] {
        let mut mac = self.mac.clone();
        mac.update(base_string);
        let mut out = [0u8; 28];
        // 20 bytes of SHA-1 are always 28 characters of padded base64.
        let _len = BASE64
            .encode_slice(mac.finalize().into_bytes(), &mut out)
            .unwrap_or_default();
        out
    }

    /// Base64 of HMAC-SHA1 over `base_string`.
    pub fn signature(&self, base_string: &str) -> String {
        ascii_string(self.signature_bytes(base_string.as_bytes()).to_vec())
    }
}

/// What varies per request besides the URL: the protocol parameters that are not credentials.
#[derive(Debug, Clone, Copy)]
pub struct RequestParams<'a> {
    /// `oauth_timestamp`, Unix seconds.
    pub timestamp: u64,
    /// `oauth_nonce`.
    pub nonce: &'a str,
    /// Further `oauth_*` parameters: `oauth_callback` (request token), `oauth_verifier`
    /// (access token). Signed and sent in the header.
    pub extra: &'a [(&'a str, &'a str)],
}

/// The `Authorization` header value for `method uri` with an optional form body.
pub fn authorization_header(
    key: &Oauth1Key,
    method: &str,
    uri: &http::Uri,
    form_body: Option<&[u8]>,
    req: RequestParams<'_>,
) -> Result<String, Oauth1Error> {
    let timestamp = req.timestamp.to_string();
    // Every per-request value, encoded once into one buffer; `spans` locate them in it.
    let mut values = Vec::with_capacity(64);
    let mut spans: Vec<(&[u8], Range<usize>)> = Vec::with_capacity(9 + req.extra.len());
    let push_value = |values: &mut Vec<u8>, name: &'static [u8], value: &[u8]| {
        let start = values.len();
        percent_encode_bytes_into(values, value);
        (name, start..values.len())
    };
    spans.push(push_value(
        &mut values,
        b"oauth_nonce",
        req.nonce.as_bytes(),
    ));
    spans.push(push_value(
        &mut values,
        b"oauth_timestamp",
        timestamp.as_bytes(),
    ));
    for (name, value) in req.extra {
        let start = values.len();
        percent_encode_bytes_into(&mut values, value.as_bytes());
        spans.push((name.as_bytes(), start..values.len()));
    }

    let mut params = Params::with_capacity(spans.len() + 16);
    params.push_encoded(b"oauth_consumer_key", key.consumer_key.expose().as_bytes());
    params.push_encoded(b"oauth_signature_method", b"HMAC-SHA1");
    params.push_encoded(b"oauth_version", b"1.0");
    if let Some(token) = &key.token {
        params.push_encoded(b"oauth_token", token.expose().as_bytes());
    }
    for (name, range) in &spans {
        params.push_encoded(name, values.get(range.clone()).unwrap_or_default());
    }
    let base = base_string_bytes(method, uri, form_body, params)?;
    let signature = key.signature_bytes(&base);
    spans.push(push_value(&mut values, b"oauth_signature", &signature));

    // The header lists every protocol parameter once, in name order (as X's examples do).
    let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(spans.len() + 4);
    fields.push((b"oauth_consumer_key", key.consumer_key.expose().as_bytes()));
    fields.push((b"oauth_signature_method", b"HMAC-SHA1"));
    if let Some(token) = &key.token {
        fields.push((b"oauth_token", token.expose().as_bytes()));
    }
    fields.push((b"oauth_version", b"1.0"));
    for (name, range) in &spans {
        fields.push((name, values.get(range.clone()).unwrap_or_default()));
    }
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));

    let mut header = Vec::with_capacity(
        64 + fields
            .iter()
            .map(|(n, v)| n.len() + v.len() + 5)
            .sum::<usize>(),
    );
    header.extend_from_slice(b"OAuth ");
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            header.extend_from_slice(b", ");
        }
        header.extend_from_slice(name);
        header.extend_from_slice(b"=\"");
        header.extend_from_slice(value);
        header.push(b'"');
    }
    Ok(ascii_string(header))
}

/// Signs requests with the injected clock and nonce source.
#[derive(Debug, Clone)]
pub struct Oauth1Signer<C, N> {
    clock: C,
    nonces: N,
}

impl<C: Clock, N: NonceSource> Oauth1Signer<C, N> {
    /// A signer reading `clock` for timestamps and `nonces` for nonces.
    pub fn new(clock: C, nonces: N) -> Self {
        Self { clock, nonces }
    }

    /// Signs with a fresh nonce and the clock's time shifted by `skew_seconds` (the offset to
    /// upstream's clock, CONTRACT section 4).
    pub fn sign(
        &self,
        key: &Oauth1Key,
        method: &str,
        uri: &http::Uri,
        form_body: Option<&[u8]>,
        skew_seconds: i64,
    ) -> Result<String, SignError> {
        let nonce = self.nonces.nonce()?;
        let timestamp = self
            .clock
            .unix_seconds()
            .saturating_add_signed(skew_seconds);
        let req = RequestParams {
            timestamp,
            nonce: &nonce,
            extra: &[],
        };
        Ok(authorization_header(key, method, uri, form_body, req)?)
    }
}

#[cfg(test)]
mod tests;
