//! OAuth 1.0a request signing (HMAC-SHA1), per RFC 5849 and X's "Creating a signature".
//!
//! Owns the percent-encoding of RFC 5849 section 3.6, the collection and normalisation of
//! parameters (query string, `oauth_*` protocol parameters, form body), the signature base
//! string and the `Authorization: OAuth ...` header. Everything here is a pure function of its
//! inputs: the timestamp and the nonce are arguments, and [`Oauth1Signer::sign`] takes them from
//! an injected [`Clock`] and [`NonceSource`]. Nothing here logs.
//!
//! Cost: the parameters are decoded and written in the base string's form (encoded twice) in
//! one pass into one buffer, sorted as index ranges, and copied into the base string after
//! them in the same buffer; the HMAC key schedule is computed once per identity
//! ([`Oauth1Key`]) and cloned per request. A header costs three allocations, whatever the
//! number of parameters. See BENCHMARKS.md.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::clock::{Clock, NonceSource, RandomError};
use crate::digits::decimal;
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

/// Which bytes RFC 5849 section 3.6 leaves as they are: `A-Z a-z 0-9 - . _ ~`.
#[expect(
    clippy::indexing_slicing,
    reason = "a constant: `b` runs over 0..256, the table's indices"
)]
const UNRESERVED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        b += 1;
    }
    table
};

#[inline]
fn is_unreserved(b: u8) -> bool {
    UNRESERVED.get(usize::from(b)).copied().unwrap_or(false)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// `%XX` for `b`, upper-case hex (`%25XX` when `twice`: the encoding of that encoding).
#[inline]
fn push_pct(out: &mut Vec<u8>, b: u8, twice: bool) {
    let hex = |nibble: u8| HEX_UPPER.get(usize::from(nibble)).copied().unwrap_or(b'0');
    if twice {
        out.extend_from_slice(&[b'%', b'2', b'5', hex(b >> 4), hex(b & 0x0f)]);
    } else {
        out.extend_from_slice(&[b'%', hex(b >> 4), hex(b & 0x0f)]);
    }
}

/// The length of the run of unreserved bytes that `bytes` starts with.
#[inline]
fn unreserved_run(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| !is_unreserved(b))
        .unwrap_or(bytes.len())
}

/// Appends the RFC 5849 section 3.6 encoding of `bytes` to `out` (encoded once more when
/// `twice`, as parameters are in the base string), copying runs of unreserved bytes in one go.
fn push_encoded(out: &mut Vec<u8>, mut bytes: &[u8], twice: bool) {
    while !bytes.is_empty() {
        let (plain, rest) = bytes.split_at(unreserved_run(bytes));
        out.extend_from_slice(plain);
        let Some((&b, rest)) = rest.split_first() else {
            break;
        };
        push_pct(out, b, twice);
        bytes = rest;
    }
}

/// Appends the RFC 5849 section 3.6 encoding of `bytes` to `out`.
pub fn percent_encode_bytes_into(out: &mut Vec<u8>, bytes: &[u8]) {
    push_encoded(out, bytes, false);
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
/// as X's server reads a query) and appends it to `out` encoded twice (the base string's
/// form of a parameter), in one pass.
fn push_form_component(
    out: &mut Vec<u8>,
    mut raw: &[u8],
    part: &'static str,
) -> Result<(), Oauth1Error> {
    while !raw.is_empty() {
        let (plain, rest) = raw.split_at(unreserved_run(raw));
        out.extend_from_slice(plain);
        raw = match rest {
            [] => break,
            [b'+', rest @ ..] => {
                out.extend_from_slice(b"%2520");
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
                    push_pct(out, b, true);
                }
                rest
            }
            [b'%', ..] => return Err(Oauth1Error::InvalidPercentEncoding(part)),
            [b, rest @ ..] => {
                push_pct(out, *b, true);
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

// === the signature base string ===

/// One parameter in [`Base`]'s buffer: its name at `start..mid`, its value at `mid..end`, both
/// encoded twice (as the base string holds them); `key` is the name's first eight bytes,
/// big-endian, zero-padded, the sort's first comparison.
#[derive(Debug, Clone, Copy)]
struct Param {
    key: u64,
    start: usize,
    mid: usize,
    end: usize,
}

impl Param {
    /// Its name and value in `buf`.
    fn in_buf(self, buf: &[u8]) -> Fixed<'_> {
        (
            buf.get(self.start..self.mid).unwrap_or_default(),
            buf.get(self.mid..self.end).unwrap_or_default(),
        )
    }
}

/// A protocol parameter written into the base string as it is: name and value encoded twice.
type Fixed<'a> = (&'a [u8], &'a [u8]);

/// A base string under construction: the request's parameters in one buffer (encoded twice,
/// the form the base string holds), then the base string itself after them in the same buffer.
///
/// Sorting parameters encoded twice gives the order RFC 5849 section 3.4.1.3.2 asks for (by
/// name, then value, of the parameters encoded once): encoding again only turns `%` into
/// `%25`, and `%` sorts before every unreserved byte either way, so the first byte where two
/// names differ is the same byte in both forms. The base string is then the sorted parameters
/// copied in order, merged with the protocol parameters (already sorted), with no second
/// encoding pass.
#[derive(Debug)]
struct Base {
    buf: Vec<u8>,
    params: Vec<Param>,
}

impl Base {
    /// Room for the parameters of `uri` and `form_body`, `more` others, and the base string.
    fn for_request(uri: &http::Uri, form_body: Option<&[u8]>, more: usize) -> Self {
        let form = uri.query().map_or(0, str::len) + form_body.map_or(0, <[u8]>::len);
        // A parameter grows at most 5× (a byte to `%25XX`) in the buffer, and is copied once
        // into the base string; the URI at most 3×; 448 for the protocol parameters.
        let authority = uri.authority().map_or(0, |a| a.as_str().len());
        let capacity = 10 * form + 3 * (uri.path().len() + authority) + 448;
        Self {
            buf: Vec::with_capacity(capacity),
            params: Vec::with_capacity(form / 8 + 2 + more),
        }
    }

    fn push(&mut self, start: usize, mid: usize) {
        let name = self.buf.get(start..mid).unwrap_or_default();
        let mut key = [0u8; 8];
        for (k, b) in key.iter_mut().zip(name) {
            *k = *b;
        }
        self.params.push(Param {
            key: u64::from_be_bytes(key),
            start,
            mid,
            end: self.buf.len(),
        });
    }

    /// Adds a parameter given by its decoded name and value.
    fn param(&mut self, name: &[u8], value: &[u8]) {
        let start = self.buf.len();
        push_encoded(&mut self.buf, name, true);
        let mid = self.buf.len();
        push_encoded(&mut self.buf, value, true);
        self.push(start, mid);
    }

    /// Adds every pair of a form-encoded string (a query string or an
    /// `application/x-www-form-urlencoded` body). A pair without `=` has an empty value;
    /// empty pairs (`a=1&&b=2`) carry nothing and are skipped, as servers do.
    fn form(&mut self, raw: &[u8], part: &'static str) -> Result<(), Oauth1Error> {
        let mut from = 0;
        for end in memchr::memchr_iter(b'&', raw).chain(std::iter::once(raw.len())) {
            let pair = raw.get(from..end).unwrap_or_default();
            from = end + 1;
            if pair.is_empty() {
                continue;
            }
            let (name, value) = match memchr::memchr(b'=', pair) {
                Some(eq) => (
                    pair.get(..eq).unwrap_or_default(),
                    pair.get(eq + 1..).unwrap_or_default(),
                ),
                None => (pair, &[][..]),
            };
            let start = self.buf.len();
            push_form_component(&mut self.buf, name, part)?;
            let mid = self.buf.len();
            push_form_component(&mut self.buf, value, part)?;
            self.push(start, mid);
        }
        Ok(())
    }

    /// Writes `METHOD&enc(base URI)&enc(parameter string)` after the parameters, `protocol`
    /// (sorted by name, then value) merged in, and returns the buffer with where the base
    /// string begins in it.
    fn finish(
        mut self,
        method: &str,
        uri: &http::Uri,
        form_body: Option<&[u8]>,
        protocol: &[Fixed<'_>],
    ) -> Result<(Vec<u8>, usize), Oauth1Error> {
        if let Some(q) = uri.query() {
            self.form(q.as_bytes(), "query")?;
        }
        if let Some(body) = form_body {
            self.form(body, "form body")?;
        }
        let Self {
            mut buf,
            mut params,
        } = self;
        params.sort_unstable_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then_with(|| a.in_buf(&buf).cmp(&b.in_buf(&buf)))
        });
        let start = buf.len();
        buf.extend(method.bytes().map(|b| b.to_ascii_uppercase()));
        buf.push(b'&');
        push_base_uri_encoded(&mut buf, uri)?;
        buf.push(b'&');
        // Before the first parameter the base string ends with its `&`; every `&` after that
        // is encoded (`%26`).
        let separator = |buf: &mut Vec<u8>| {
            if buf.len() > start && !buf.ends_with(b"&") {
                buf.extend_from_slice(b"%26");
            }
        };
        let mut fixed = protocol.iter().peekable();
        for p in &params {
            while let Some((name, value)) = fixed.next_if(|f| **f < p.in_buf(&buf)) {
                separator(&mut buf);
                buf.extend_from_slice(name);
                buf.extend_from_slice(b"%3D");
                buf.extend_from_slice(value);
            }
            separator(&mut buf);
            buf.extend_from_within(p.start..p.mid);
            buf.extend_from_slice(b"%3D");
            buf.extend_from_within(p.mid..p.end);
        }
        for (name, value) in fixed {
            separator(&mut buf);
            buf.extend_from_slice(name);
            buf.extend_from_slice(b"%3D");
            buf.extend_from_slice(value);
        }
        Ok((buf, start))
    }
}

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
        out.extend_from_slice(decimal(&mut [0; 20], u64::from(port)));
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

/// The signature base string `METHOD&enc(base URI)&enc(parameter string)`.
///
/// `protocol` holds the `oauth_*` protocol parameters, decoded (without `oauth_signature`);
/// the query string of `uri` and the form body, if any, are added here.
pub fn base_string(
    method: &str,
    uri: &http::Uri,
    form_body: Option<&[u8]>,
    protocol: &[(&str, &str)],
) -> Result<String, Oauth1Error> {
    let mut base = Base::for_request(uri, form_body, protocol.len());
    for (name, value) in protocol {
        base.param(name.as_bytes(), value.as_bytes());
    }
    let (mut buf, start) = base.finish(method, uri, form_body, &[])?;
    buf.drain(..start);
    Ok(ascii_string(buf))
}

// === keys and signatures ===

/// `value` RFC 5849-encoded once and twice.
fn encoded_once_and_twice(value: &SecretString) -> (SecretString, SecretString) {
    let raw = value.expose().as_bytes();
    let mut twice = Vec::with_capacity(raw.len());
    push_encoded(&mut twice, raw, true);
    (
        SecretString::new(percent_encode(value.expose())),
        SecretString::new(ascii_string(twice)),
    )
}

/// One identity's OAuth 1.0a credentials, with the HMAC key schedule done once.
#[derive(Clone)]
pub struct Oauth1Key {
    /// `oauth_consumer_key`: RFC 5849-encoded once (for the header) and twice (for the base
    /// string).
    consumer_key: (SecretString, SecretString),
    /// `oauth_token`, encoded once and twice.
    token: Option<(SecretString, SecretString)>,
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
            encoded_once_and_twice(token)
        });
        #[expect(
            clippy::expect_used,
            reason = "HMAC accepts keys of any length; runs at startup, not per request"
        )]
        let mac =
            <HmacSha1 as Mac>::new_from_slice(&key).expect("HMAC-SHA1 accepts keys of any length");
        Self {
            consumer_key: encoded_once_and_twice(consumer_key),
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
///
/// Three allocations whatever the number of parameters: one buffer for the parameters and
/// the base string, one list of their places in it, and the header.
pub fn authorization_header(
    key: &Oauth1Key,
    method: &str,
    uri: &http::Uri,
    form_body: Option<&[u8]>,
    req: RequestParams<'_>,
) -> Result<String, Oauth1Error> {
    let mut digits = [0u8; 20];
    let timestamp = decimal(&mut digits, req.timestamp);
    let (consumer_key, consumer_key_twice) = &key.consumer_key;
    let (consumer_key, consumer_key_twice) = (
        consumer_key.expose().as_bytes(),
        consumer_key_twice.expose().as_bytes(),
    );
    let token = key
        .token
        .as_ref()
        .map(|(once, twice)| (once.expose().as_bytes(), twice.expose().as_bytes()));
    // A nonce of letters and digits (what xgate draws) is its own encoding.
    let nonce = req.nonce.as_bytes();
    let nonce_twice = if unreserved_run(nonce) == nonce.len() {
        Cow::Borrowed(nonce)
    } else {
        let mut twice = Vec::with_capacity(5 * nonce.len());
        push_encoded(&mut twice, nonce, true);
        Cow::Owned(twice)
    };

    // The protocol parameters, in name order; the extra ones are sorted with the request's.
    let mut protocol: [Fixed<'_>; 6] = [
        (b"oauth_consumer_key", consumer_key_twice),
        (b"oauth_nonce", &nonce_twice),
        (b"oauth_signature_method", b"HMAC-SHA1"),
        (b"oauth_timestamp", timestamp),
        (b"oauth_token", token.map_or(&[][..], |(_, twice)| twice)),
        (b"oauth_version", b"1.0"),
    ];
    let protocol: &[Fixed<'_>] = if token.is_some() {
        &protocol
    } else {
        // No token (the request-token step): `oauth_token` is left out.
        protocol.swap(4, 5);
        protocol.get(..5).unwrap_or_default()
    };
    let mut base = Base::for_request(uri, form_body, req.extra.len());
    for (name, value) in req.extra {
        base.param(name.as_bytes(), value.as_bytes());
    }
    let (buf, start) = base.finish(method, uri, form_body, protocol)?;
    let signature = key.signature_bytes(buf.get(start..).unwrap_or_default());
    drop(buf);

    // The header lists every protocol parameter once, in name order (as X's examples do):
    // the fixed ones are written in that order, the extra ones merged in.
    let mut header = Vec::with_capacity(
        176 + consumer_key.len()
            + token.map_or(0, |(once, _)| once.len())
            + 3 * nonce.len()
            + req
                .extra
                .iter()
                .map(|(n, v)| n.len() + 3 * v.len() + 6)
                .sum::<usize>(),
    );
    header.extend_from_slice(b"OAuth ");
    let mut extra: Vec<&(&str, &str)> = req.extra.iter().collect();
    extra.sort_unstable_by_key(|(name, _)| *name);
    let mut extra = extra.into_iter().peekable();
    let mut field = |header: &mut Vec<u8>, name: &[u8], value: &[u8], encode: bool| {
        while let Some((n, v)) = extra.next_if(|(n, _)| n.as_bytes() < name) {
            push_field(header, n.as_bytes(), v.as_bytes(), true);
        }
        push_field(header, name, value, encode);
    };
    field(&mut header, b"oauth_consumer_key", consumer_key, false);
    field(&mut header, b"oauth_nonce", nonce, true);
    field(&mut header, b"oauth_signature", &signature, true);
    field(&mut header, b"oauth_signature_method", b"HMAC-SHA1", false);
    field(&mut header, b"oauth_timestamp", timestamp, false);
    if let Some((token, _)) = token {
        field(&mut header, b"oauth_token", token, false);
    }
    field(&mut header, b"oauth_version", b"1.0", false);
    for (n, v) in extra {
        push_field(&mut header, n.as_bytes(), v.as_bytes(), true);
    }
    Ok(ascii_string(header))
}

/// Appends `name="value"` (the value encoded when `encode`), after a `, ` unless first.
fn push_field(header: &mut Vec<u8>, name: &[u8], value: &[u8], encode: bool) {
    if !header.ends_with(b" ") {
        header.extend_from_slice(b", ");
    }
    header.extend_from_slice(name);
    header.extend_from_slice(b"=\"");
    if encode {
        push_encoded(header, value, false);
    } else {
        header.extend_from_slice(value);
    }
    header.push(b'"');
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
