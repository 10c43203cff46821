//! Outbound credentials: what xgate attaches to a request before it goes upstream.
//!
//! Owns the credential of each identity while serving ([`Credentials`]: a Bearer header value,
//! an OAuth 1.0a key, OAuth 2.0 pairs in [`oauth2::Oauth2Users`], or missing with a hint for
//! the operator), built from [`crate::identity::resolve`]; attaching it to a request
//! ([`Credentials::authorize`]); and the offset to upstream's clock for OAuth 1.0a timestamps
//! ([`ClockSkew`], CONTRACT section 4). Only this module and `config` read secret values;
//! header values made from them are marked sensitive.

pub mod oauth1;
pub mod oauth2;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use http::{HeaderMap, HeaderValue, header};

use crate::body::{BoxError, UpstreamBody};
use crate::clock::{Clock, RandomNonce};
use crate::error::{BadRequest, Internal, ProxyError};
use crate::identity::{Identities, Identity, IdentityId, Resolved};
use oauth1::{Oauth1Key, Oauth1Signer};

/// How a request as one identity is authorised.
#[derive(Debug)]
pub enum Credential {
    /// `Authorization: Bearer ...`, prepared once and marked sensitive.
    Bearer(HeaderValue),
    /// OAuth 1.0a user context.
    Oauth1(Box<Oauth1Key>),
    /// OAuth 2.0 user context: the token pair lives in [`oauth2::Oauth2Users`].
    Oauth2,
    /// Nothing usable yet; `hint` tells the operator what to do.
    Missing {
        /// What the operator should do.
        hint: String,
    },
}

/// A secret that cannot be a header value (control characters, newlines).
#[derive(Debug, thiserror::Error)]
#[error("{0}: not usable in an HTTP header (control characters or non-ASCII text)")]
pub struct BadCredential(pub String);

/// `Bearer <token>` as a sensitive header value.
pub fn bearer_header(token: &str) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Credential {
    /// What a request as the identity attaches, from what [`crate::identity::resolve`] found.
    pub fn from_resolved(resolved: &Resolved, name: &str) -> Result<Self, BadCredential> {
        Ok(match resolved {
            Resolved::Bearer { token, .. } => Self::Bearer(
                bearer_header(token.expose())
                    .map_err(|_invalid| BadCredential(format!("the Bearer token of {name}")))?,
            ),
            Resolved::Oauth1 {
                consumer,
                token,
                token_secret,
                ..
            } => Self::Oauth1(Box::new(Oauth1Key::new(
                &consumer.key,
                &consumer.secret,
                Some((token, token_secret)),
            ))),
            Resolved::Oauth2 { .. } => Self::Oauth2,
            Resolved::Missing { hint } => Self::Missing { hint: hint.clone() },
        })
    }
}

/// Every identity's credential while serving, by [`IdentityId`].
#[derive(Debug)]
pub struct Credentials {
    list: Vec<Credential>,
    signer: Oauth1Signer<Arc<dyn Clock>, RandomNonce>,
    skew: ClockSkew,
}

impl Credentials {
    /// The credentials of every identity of `identities`, from what [`crate::identity::resolve`] found for
    /// each (`resolved`, in the table's order; `None`: not in proxy.toml); OAuth 1.0a
    /// timestamps read `clock`.
    pub fn new(
        identities: &Identities,
        resolved: &[Option<Resolved>],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, BadCredential> {
        let mut list = Vec::with_capacity(identities.len());
        for ((_, identity), resolved) in identities.iter().zip(resolved) {
            list.push(match resolved {
                Some(resolved) => Credential::from_resolved(resolved, &identity.name)?,
                None => Credential::Missing {
                    hint: format!("{} is not in proxy.toml", identity.name),
                },
            });
        }
        Ok(Self {
            list,
            signer: Oauth1Signer::new(clock, RandomNonce),
            skew: ClockSkew::default(),
        })
    }

    /// The credential of `id`.
    #[expect(
        clippy::indexing_slicing,
        reason = "the list has one entry per identity of the table whose ids index it"
    )]
    pub fn get(&self, id: IdentityId) -> &Credential {
        &self.list[id.index()]
    }

    /// The offset to upstream's clock.
    pub fn skew(&self) -> &ClockSkew {
        &self.skew
    }

    /// Sets `Authorization` on `headers` for a request to `uri` as `identity` (`id`);
    /// `form_body` is the request's `application/x-www-form-urlencoded` body, whose parameters
    /// OAuth 1.0a signs. OAuth 2.0 identities are attached by [`oauth2::Oauth2Users`].
    pub fn authorize(
        &self,
        id: IdentityId,
        identity: &Identity,
        method: &http::Method,
        uri: &http::Uri,
        form_body: Option<&[u8]>,
        headers: &mut HeaderMap,
    ) -> Result<(), ProxyError> {
        let value = match self.get(id) {
            Credential::Bearer(value) => value.clone(),
            Credential::Oauth1(key) => {
                let signed = self
                    .signer
                    .sign(key, method.as_str(), uri, form_body, self.skew.offset())
                    .map_err(|e| match e {
                        oauth1::SignError::Request(e) => {
                            ProxyError::from(BadRequest::Unsignable(Box::new(e)))
                        }
                        oauth1::SignError::Random(e) => ProxyError::from(Internal::Random(e)),
                    })?;
                let mut value = HeaderValue::try_from(signed).map_err(Internal::Header)?;
                value.set_sensitive(true);
                value
            }
            // Attached by the caller from `oauth2::Oauth2Users`, which may refresh first.
            Credential::Oauth2 => return Ok(()),
            Credential::Missing { hint } => {
                return Err(ProxyError::CredentialsMissing {
                    identity: identity.name.to_string(),
                    hint: hint.clone(),
                });
            }
        };
        headers.insert(header::AUTHORIZATION, value);
        Ok(())
    }
}

// === the credentials phase ===

/// A request ready for upstream: credentials attached, and what a 401 replay needs.
#[derive(Debug)]
pub struct Outbound {
    /// The request as it goes upstream.
    pub request: http::Request<UpstreamBody>,
    /// For an OAuth 2.0 identity, the generation of the token pair attached.
    pub generation: Option<u64>,
    /// Method, URI and headers to send again after a 401, when the body was empty.
    pub replay: Option<(http::Method, http::Uri, HeaderMap)>,
}

/// The request as it goes upstream to `uri`: cleaned headers, credentials, and its body. A
/// form body on an OAuth 1.0a identity is read (bounded by `max_body_bytes`, 413) because its
/// parameters are signed; every other body is streamed through the same limit. An OAuth 2.0
/// token is refreshed first when it has expired.
pub async fn outbound<B>(
    credentials: &Credentials,
    oauth2: &Arc<oauth2::Oauth2Users>,
    (id, identity): (IdentityId, &Identity),
    mut parts: http::request::Parts,
    uri: http::Uri,
    body: B,
    max_body_bytes: u64,
) -> Result<Outbound, ProxyError>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let empty_body = body.is_end_stream();
    let form = matches!(credentials.get(id), Credential::Oauth1(_)) && is_form(&parts.headers);
    let (form_body, body) = if form {
        let bytes = read_bounded(body, max_body_bytes).await?;
        (Some(bytes.clone()), UpstreamBody::Full(Some(bytes)))
    } else {
        (None, UpstreamBody::limited(body, max_body_bytes))
    };
    crate::headers::clean_request(&mut parts.headers);
    let mut generation = None;
    if let Credential::Oauth2 = credentials.get(id) {
        let (value, g) = oauth2.authorization(id, &identity.name).await?;
        parts.headers.insert(header::AUTHORIZATION, value);
        generation = Some(g);
    } else {
        credentials.authorize(
            id,
            identity,
            &parts.method,
            &uri,
            form_body.as_deref(),
            &mut parts.headers,
        )?;
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;
    // An OAuth 2.0 request with no body can be replayed once after a 401 (CONTRACT 6).
    let replay = generation.filter(|_| empty_body).map(|_| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });
    Ok(Outbound {
        request: http::Request::from_parts(parts, body),
        generation,
        replay,
    })
}

/// Whether a request's body is `application/x-www-form-urlencoded`.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Reads a whole body, at most `limit` bytes (413 past it).
pub async fn read_bounded<B>(body: B, limit: u64) -> Result<bytes::Bytes, ProxyError>
where
    B: http_body::Body<Data = bytes::Bytes>,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt as _;
    let limit_usize = usize::try_from(limit).unwrap_or(usize::MAX);
    match http_body_util::Limited::new(body, limit_usize)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit })
        }
        Err(e) => Err(BadRequest::Body(e).into()),
    }
}

/// Offset between upstream's clock (its `Date` header) and ours, applied to OAuth 1.0a
/// timestamps when it is over 30 s (X rejects skewed timestamps with error 135).
#[derive(Debug, Default)]
pub struct ClockSkew {
    offset: AtomicI64,
    logged: AtomicBool,
    /// The last `Date` value seen: with one-second resolution, most answers repeat it, and
    /// those are not parsed again.
    last: std::sync::Mutex<Option<HeaderValue>>,
}

/// Differences up to this are normal network and clock jitter.
const SKEW_TOLERANCE_SECS: i64 = 30;

impl ClockSkew {
    /// Seconds to add to the local clock.
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// Learns from an upstream `Date` header value.
    pub fn observe(&self, date: &HeaderValue, clock: &dyn Clock) {
        if let Ok(mut last) = self.last.try_lock() {
            if last.as_ref() == Some(date) {
                return;
            }
            *last = Some(date.clone());
        }
        let Some(upstream) = date
            .to_str()
            .ok()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        else {
            return;
        };
        let diff = i64::try_from(upstream.as_secs()).unwrap_or(i64::MAX)
            - i64::try_from(clock.unix_seconds()).unwrap_or(i64::MAX);
        let offset = if diff.abs() > SKEW_TOLERANCE_SECS {
            diff
        } else {
            0
        };
        let previous = self.offset.swap(offset, Ordering::Relaxed);
        if offset != 0 && previous == 0 && !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                offset_seconds = offset,
                "upstream's clock differs from ours by more than {SKEW_TOLERANCE_SECS} s; OAuth 1.0a timestamps follow upstream's clock"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn form_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_form(&h));
        h.insert(
            header::CONTENT_TYPE,
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8"
                .parse()
                .unwrap(),
        );
        assert!(is_form(&h));
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_form(&h));
    }

    #[test]
    fn skew_applies_only_past_thirty_seconds() {
        let skew = ClockSkew::default();
        let clock = ManualClock::at(1_700_000_000);
        let date = |t: u64| {
            let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t);
            HeaderValue::from_str(&httpdate::fmt_http_date(st)).unwrap()
        };
        skew.observe(&date(1_700_000_020), &*clock);
        assert_eq!(skew.offset(), 0);
        skew.observe(&date(1_700_003_600), &*clock);
        assert_eq!(skew.offset(), 3600);
        skew.observe(&date(1_699_999_900), &*clock);
        assert_eq!(skew.offset(), -100);
        skew.observe(&HeaderValue::from_static("not a date"), &*clock);
        assert_eq!(skew.offset(), -100);
        skew.observe(&date(1_700_000_001), &*clock);
        assert_eq!(skew.offset(), 0);
    }
}
