//! X's token endpoints: OAuth 2.0 code exchange and refresh (single-use, rotating refresh
//! tokens), the App's Bearer token and its invalidation, and 3-legged OAuth 1.0a.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use base64::Engine as _;
use http::HeaderMap;

use super::verify::{dec, enc, verify_oauth1};
use bytes::Bytes;

use super::{
    ALICE_SECRET, ALICE_TOKEN, CONSUMER_KEY, CONSUMER_SECRET, ISSUED_BEARER, PIN, REQUEST_SECRET,
    REQUEST_TOKEN, Reply, ReplyBody, Shared,
};

#[derive(Debug)]
pub(super) struct OauthState {
    /// Authorization code → the PKCE challenge it was issued for.
    pub(super) codes: HashMap<String, String>,
    /// Refresh tokens that work now; each works once (rotation).
    pub(super) live_refresh: HashSet<String>,
    /// Every refresh token ever issued, to tell a reused one from a made-up one.
    pub(super) issued_refresh: HashSet<String>,
    /// Refresh calls that presented a refresh token already used: what rotation-safety forbids.
    pub(super) refresh_reuse: usize,
    /// User access tokens X accepts.
    pub(super) valid_access: HashSet<String>,
    pub(super) refresh_calls: usize,
    pub(super) code_calls: usize,
    pub(super) bearer_calls: usize,
    pub(super) invalidated: Vec<String>,
    pub(super) issued: usize,
    /// The next this many refresh calls answer 503.
    pub(super) fail_next: usize,
    /// Every refresh call waits this long first.
    pub(super) delay: Duration,
    pub(super) expires_in: u64,
    /// How the last token request authenticated the client: `basic:ID` or `body:ID`.
    pub(super) last_client_auth: Option<String>,
}

impl Default for OauthState {
    fn default() -> Self {
        Self {
            codes: HashMap::new(),
            live_refresh: HashSet::new(),
            issued_refresh: HashSet::new(),
            refresh_reuse: 0,
            valid_access: HashSet::new(),
            refresh_calls: 0,
            code_calls: 0,
            bearer_calls: 0,
            invalidated: Vec::new(),
            issued: 0,
            fail_next: 0,
            delay: Duration::ZERO,
            expires_in: 7200,
            last_client_auth: None,
        }
    }
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                String::from_utf8_lossy(&dec(k)).into_owned(),
                String::from_utf8_lossy(&dec(v)).into_owned(),
            )
        })
        .collect()
}

fn oauth_error(status: u16, error: &str) -> Reply {
    Reply::json(
        status,
        &format!(r#"{{"error":"{error}","error_description":"fake"}}"#),
    )
}

/// The client authentication of a token request: HTTP Basic, else `client_id` in the body.
fn client_auth(headers: &HeaderMap, form: &BTreeMap<String, String>) -> Option<String> {
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    match basic {
        Some(pair) => Some(format!("basic:{pair}")),
        None => form.get("client_id").map(|id| format!("body:{id}")),
    }
}

/// X's 3-legged OAuth 1.0a steps, with signatures checked: the request token (consumer keys
/// only, `oauth_callback=oob`), then the access token (signed with the request token, with
/// `oauth_verifier` = [`PIN`]), which is alice's pair so the verifier accepts it afterwards.
pub(super) fn oauth1_token_reply(path: &str, url: &str, headers: &HeaderMap) -> Reply {
    let header = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let form = |status: u16, body: &str| Reply {
        status,
        headers: vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded".into(),
        )],
        body: ReplyBody::Full(Bytes::from(body.to_owned())),
        delay: Duration::ZERO,
    };
    let refused = || form(401, "error=invalid_signature");
    if path == "/oauth/request_token" {
        return match verify_oauth1("POST", url, header, None, CONSUMER_SECRET, "") {
            Ok(p)
                if p.get("oauth_callback").map(String::as_str) == Some("oob")
                    && !p.contains_key("oauth_token") =>
            {
                form(
                    200,
                    &format!(
                        "oauth_token={REQUEST_TOKEN}&oauth_token_secret={}&oauth_callback_confirmed=true",
                        enc(REQUEST_SECRET.as_bytes())
                    ),
                )
            }
            _ => refused(),
        };
    }
    match verify_oauth1("POST", url, header, None, CONSUMER_SECRET, REQUEST_SECRET) {
        Ok(p)
            if p.get("oauth_token").map(String::as_str) == Some(REQUEST_TOKEN)
                && p.get("oauth_verifier").map(String::as_str) == Some(PIN) =>
        {
            form(
                200,
                &format!(
                    "oauth_token={}&oauth_token_secret={}&user_id=111&screen_name=alice",
                    enc(ALICE_TOKEN.as_bytes()),
                    enc(ALICE_SECRET.as_bytes())
                ),
            )
        }
        _ => refused(),
    }
}

/// The token endpoints: OAuth 2.0 code exchange and refresh (rotating refresh tokens), the
/// App's Bearer token, and its invalidation.
pub(super) async fn token_reply(
    sh: &Shared,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let f = form(body);
    let auth = client_auth(headers, &f);
    if path == "/oauth2/token" || path == "/oauth2/invalidate_token" {
        let want = format!(
            "basic:{}:{}",
            enc(CONSUMER_KEY.as_bytes()),
            enc(CONSUMER_SECRET.as_bytes())
        );
        if auth.as_deref() != Some(want.as_str()) {
            return Reply::json(
                403,
                r#"{"errors":[{"code":99,"message":"Unable to verify your credentials"}]}"#,
            );
        }
        let mut o = sh.oauth.lock().unwrap();
        if path == "/oauth2/invalidate_token" {
            let token = f.get("access_token").cloned().unwrap_or_default();
            o.invalidated.push(token.clone());
            return Reply::json(200, &format!(r#"{{"access_token":"{token}"}}"#));
        }
        o.bearer_calls += 1;
        if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return Reply::json(403, r#"{"errors":[{"code":99,"message":"bad grant"}]}"#);
        }
        return Reply::json(
            200,
            &format!(r#"{{"token_type":"bearer","access_token":"{ISSUED_BEARER}"}}"#),
        );
    }
    let delay = {
        let mut o = sh.oauth.lock().unwrap();
        o.last_client_auth = auth;
        if f.get("grant_type").map(String::as_str) == Some("refresh_token") {
            o.refresh_calls += 1;
            sh.changed.notify_waiters();
            o.delay
        } else {
            Duration::ZERO
        }
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut o = sh.oauth.lock().unwrap();
    match f.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            o.code_calls += 1;
            let Some(challenge) = f.get("code").and_then(|c| o.codes.remove(c)) else {
                return oauth_error(400, "invalid_grant");
            };
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            let s256 = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
            if s256 != challenge {
                return oauth_error(400, "invalid_grant");
            }
        }
        Some("refresh_token") => {
            if o.fail_next > 0 {
                o.fail_next -= 1;
                return Reply::json(503, r#"{"title":"Service Unavailable"}"#);
            }
            let rt = f.get("refresh_token").cloned().unwrap_or_default();
            if !o.live_refresh.remove(&rt) {
                if o.issued_refresh.contains(&rt) {
                    o.refresh_reuse += 1;
                }
                return oauth_error(400, "invalid_grant");
            }
        }
        _ => return oauth_error(400, "unsupported_grant_type"),
    }
    o.issued += 1;
    let n = o.issued;
    let (access, refresh) = (format!("at-{n}"), format!("rt-{n}"));
    o.valid_access.insert(access.clone());
    o.live_refresh.insert(refresh.clone());
    o.issued_refresh.insert(refresh.clone());
    Reply::json(
        200,
        &format!(
            r#"{{"token_type":"bearer","expires_in":{},"access_token":"{access}","refresh_token":"{refresh}","scope":"tweet.read users.read offline.access"}}"#,
            o.expires_in
        ),
    )
}
