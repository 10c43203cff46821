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
fn hex_digit_upper(nibble: u8) -> char {
    char::from(if nibble < 10 {
        b'0' + nibble
    } else {
        b'A' + nibble - 10
    })
}

#[inline]
fn push_pct(out: &mut String, b: u8) {
    out.push('%');
    out.push(hex_digit_upper(b >> 4));
    out.push(hex_digit_upper(b & 0x0f));
}

#[inline]
fn push_byte_encoded(out: &mut String, b: u8) {
    if is_unreserved(b) {
        out.push(char::from(b));
    } else {
        push_pct(out, b);
    }
}

/// Appends the RFC 5849 section 3.6 encoding of `bytes` to `out`.
pub fn percent_encode_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        push_byte_encoded(out, b);
    }
}

/// The RFC 5849 section 3.6 encoding of `s`'s UTF-8 bytes (a space is `%20`, `~` stays).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 2);
    percent_encode_into(&mut out, s.as_bytes());
    out
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
    out: &mut String,
    raw: &[u8],
    part: &'static str,
) -> Result<(), Oauth1Error> {
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' => {
                out.push_str("%20");
                i += 1;
            }
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(hex_value);
                let lo = raw.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(Oauth1Error::InvalidPercentEncoding(part));
                };
                push_byte_encoded(out, (hi << 4) | lo);
                i += 3;
            }
            _ => {
                push_byte_encoded(out, b);
                i += 1;
            }
        }
    }
    Ok(())
}

/// Decodes one form-encoded component to bytes (`+` is a space). Used by tests and by callers
/// that need the decoded value rather than its signature encoding.
pub fn form_decode(raw: &str) -> Result<Vec<u8>, Oauth1Error> {
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(Oauth1Error::InvalidPercentEncoding("value"));
                };
                out.push((hi << 4) | lo);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

// === parameters ===

/// The signature's parameters, each name and value already in RFC 5849 encoding, kept as
/// ranges into one arena string so that collecting them costs two allocations in all.
#[derive(Debug, Default)]
pub struct Params {
    arena: String,
    /// (encoded name, encoded value) ranges into `arena`.
    items: Vec<(Range<usize>, Range<usize>)>,
}

impl Params {
    /// An empty set with room for `n` parameters.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            arena: String::with_capacity(n * 24),
            items: Vec::with_capacity(n),
        }
    }

    /// Adds a parameter given by its decoded name and value.
    pub fn push_decoded(&mut self, name: &str, value: &str) {
        let start = self.arena.len();
        percent_encode_into(&mut self.arena, name.as_bytes());
        let mid = self.arena.len();
        percent_encode_into(&mut self.arena, value.as_bytes());
        self.items.push((start..mid, mid..self.arena.len()));
    }

    /// Adds every pair of a form-encoded string (a query string or an
    /// `application/x-www-form-urlencoded` body). A pair without `=` has an empty value;
    /// empty pairs (`a=1&&b=2`) carry nothing and are skipped, as servers do.
    pub fn push_form_encoded(&mut self, raw: &[u8], part: &'static str) -> Result<(), Oauth1Error> {
        for pair in raw.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (
                    pair.get(..eq).unwrap_or_default(),
                    pair.get(eq + 1..).unwrap_or_default(),
                ),
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

    fn text(&self, r: &Range<usize>) -> &str {
        self.arena.get(r.clone()).unwrap_or_default()
    }

    /// Sorts by encoded name, then encoded value (byte order), as RFC 5849 section 3.4.1.3.2.
    fn sort(&mut self) {
        let arena = &self.arena;
        let text = |r: &Range<usize>| arena.get(r.clone()).unwrap_or_default();
        self.items
            .sort_unstable_by(|(an, av), (bn, bv)| match text(an).cmp(text(bn)) {
                Ordering::Equal => text(av).cmp(text(bv)),
                o => o,
            });
    }

    /// The normalised parameter string (`a=1&b=2`), sorted.
    pub fn normalized(mut self) -> String {
        self.sort();
        let mut out = String::with_capacity(self.arena.len() + 2 * self.items.len());
        for (i, (n, v)) in self.items.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(self.text(n));
            out.push('=');
            out.push_str(self.text(v));
        }
        out
    }
}

// === base string ===

/// Appends `enc(scheme://host[:port]/path)` to `out`: scheme and host lower-cased, a default
/// port dropped, the path exactly as sent, no query (RFC 5849 section 3.4.1.2).
fn push_base_uri_encoded(out: &mut String, uri: &http::Uri) -> Result<(), Oauth1Error> {
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(Oauth1Error::NotAbsolute(uri.to_string()));
    };
    let mut base = String::with_capacity(scheme.len() + host.len() + uri.path().len() + 10);
    base.push_str(scheme);
    base.make_ascii_lowercase();
    base.push_str("://");
    let host_start = base.len();
    base.push_str(host);
    if let Some(h) = base.get_mut(host_start..) {
        h.make_ascii_lowercase();
    }
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    if let Some(port) = uri.port_u16().filter(|&p| Some(p) != default_port) {
        base.push(':');
        base.push_str(&port.to_string());
    }
    let path = uri.path();
    base.push_str(if path.is_empty() { "/" } else { path });
    percent_encode_into(out, base.as_bytes());
    Ok(())
}

/// The signature base string `METHOD&enc(base URI)&enc(parameter string)`.
///
/// `params` must already hold the `oauth_*` protocol parameters (without `oauth_signature`);
/// the query string of `uri` and the form body, if any, are added here.
pub fn base_string(
    method: &str,
    uri: &http::Uri,
    form_body: Option<&[u8]>,
    mut params: Params,
) -> Result<String, Oauth1Error> {
    if let Some(q) = uri.query() {
        params.push_form_encoded(q.as_bytes(), "query")?;
    }
    if let Some(body) = form_body {
        params.push_form_encoded(body, "form body")?;
    }
    params.sort();

    let mut out = String::with_capacity(64 + params.arena.len() * 5 / 4 + params.items.len() * 6);
    out.push_str(method);
    out.make_ascii_uppercase();
    out.push('&');
    push_base_uri_encoded(&mut out, uri)?;
    out.push('&');
    for (i, (n, v)) in params.items.iter().enumerate() {
        if i > 0 {
            out.push_str("%26");
        }
        // Names and values are already encoded: encoding them again only turns `%` into `%25`.
        percent_encode_into(&mut out, params.text(n).as_bytes());
        out.push_str("%3D");
        percent_encode_into(&mut out, params.text(v).as_bytes());
    }
    Ok(out)
}

// === keys and signatures ===

/// One identity's OAuth 1.0a credentials, with the HMAC key schedule done once.
#[derive(Clone)]
pub struct Oauth1Key {
    consumer_key: SecretString,
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
        consumer_key: SecretString,
        consumer_secret: &SecretString,
        token: Option<(SecretString, &SecretString)>,
    ) -> Self {
        let mut key = zeroize::Zeroizing::new(String::with_capacity(96));
        percent_encode_into(&mut key, consumer_secret.expose().as_bytes());
        key.push('&');
        let token = token.map(|(token, secret)| {
            percent_encode_into(&mut key, secret.expose().as_bytes());
            token
        });
        #[expect(
            clippy::expect_used,
            reason = "HMAC accepts keys of any length; runs at startup, not per request"
        )]
        let mac = <HmacSha1 as Mac>::new_from_slice(key.as_bytes())
            .expect("HMAC-SHA1 accepts keys of any length");
        Self {
            consumer_key,
            token,
            mac,
        }
    }

    /// Base64 of HMAC-SHA1 over `base_string`.
    pub fn signature(&self, base_string: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(base_string.as_bytes());
        BASE64.encode(mac.finalize().into_bytes())
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
    // Protocol parameters in name order, which is the order of the header too.
    let mut oauth: Vec<(&str, &str)> = Vec::with_capacity(8 + req.extra.len());
    oauth.push(("oauth_consumer_key", key.consumer_key.expose()));
    oauth.push(("oauth_nonce", req.nonce));
    oauth.push(("oauth_signature_method", "HMAC-SHA1"));
    oauth.push(("oauth_timestamp", &timestamp));
    if let Some(token) = &key.token {
        oauth.push(("oauth_token", token.expose()));
    }
    oauth.push(("oauth_version", "1.0"));
    oauth.extend_from_slice(req.extra);

    let mut params = Params::with_capacity(oauth.len() + 8);
    for (name, value) in &oauth {
        params.push_decoded(name, value);
    }
    let base = base_string(method, uri, form_body, params)?;
    let signature = key.signature(&base);
    oauth.push(("oauth_signature", &signature));
    oauth.sort_unstable_by(|a, b| a.0.cmp(b.0));

    let mut header = String::with_capacity(256);
    header.push_str("OAuth ");
    for (i, (name, value)) in oauth.iter().enumerate() {
        if i > 0 {
            header.push_str(", ");
        }
        percent_encode_into(&mut header, name.as_bytes());
        header.push_str("=\"");
        percent_encode_into(&mut header, value.as_bytes());
        header.push('"');
    }
    Ok(header)
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
