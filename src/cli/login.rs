//! `xgate login --identity ID`: OAuth 2.0 Authorization Code with PKCE (CONTRACT section 6),
//! and `xgate bearer --app APP`: the App's app-only Bearer token.
//!
//! Login prints the authorize URL alone on one line of stdout, takes the redirect once (a
//! one-shot listener on the `oauth2_redirect_uri` address, or the redirected URL on stdin with
//! `--no-listen`), checks `state`, exchanges the code with the PKCE verifier through the
//! `oauth2` crate over xgate's own upstream client (so `ca_file` and the timeouts apply), and
//! stores the pair and the scopes X granted. `--oauth1` runs X's 3-legged OAuth 1.0a flow with
//! a PIN instead. Nothing here prints a token.

use std::io::{BufRead, Write};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use oauth2::basic::BasicErrorResponseType;
use oauth2::{
    AuthUrl, AuthorizationCode, CsrfToken, PkceCodeChallenge, RedirectUrl, RequestTokenError, Scope,
};

use super::{CliError, io_error};
use crate::auth::oauth1::{
    Oauth1Key, RequestParams, authorization_header, form_decode, percent_encode,
};
use crate::auth::oauth2::{Oauth2App, TokenHttp, oauth2_client, stored_from_response};
use crate::body::UpstreamBody;
use crate::clock::{Clock, NonceSource as _, RandomNonce, SystemClock};
use crate::config::{Config, Identity, UserAuth};
use crate::secret::SecretString;
use crate::store::{self, StoredToken, TokenKind};
use crate::upstream::{Upstream, UpstreamSetupError};

/// How a login or a token exchange with X failed (exit 1). Each says what happened and, where
/// there is one, what to do; none carries a token.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The token endpoint's URL does not parse.
    #[error("the token endpoint URL {url:?} is not valid: {source}")]
    TokenUrl {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The upstream client could not be built.
    #[error(transparent)]
    Upstream(UpstreamSetupError),
    /// The `oauth2` client could not be set up.
    #[error("the OAuth 2.0 client: {0}")]
    Oauth2Client(#[source] oauth2::url::ParseError),
    /// Standard input could not be read.
    #[error("cannot read {what}: {source}")]
    Input {
        /// What was being read.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// X (or the user) refused the authorisation.
    #[error("{}", refused(.error, .why))]
    Refused {
        /// The redirect's `error`.
        error: String,
        /// Its `error_description`.
        why: String,
    },
    /// The redirect's `state` is not this login's.
    #[error(
        "the redirect's state does not match this login (a stale or forged redirect): nothing was stored; run `xgate login` again"
    )]
    StateMismatch,
    /// The redirect carries no code.
    #[error("the redirect carries no code: nothing was stored")]
    NoCode,
    /// X refused the authorization code.
    #[error(
        "X refused the authorization code (invalid_grant: it expires 30 s after the redirect, and works once); run `xgate login --identity {identity}` again"
    )]
    CodeRefused {
        /// The identity logging in.
        identity: String,
    },
    /// X refused the code exchange for another reason.
    #[error("X refused the code exchange: {0}")]
    ExchangeRefused(String),
    /// The code exchange failed before X answered.
    #[error("the code exchange failed: {0}")]
    Exchange(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The redirect listener could not be bound.
    #[error(
        "cannot listen on {address} for the redirect ({source}); use --no-listen and paste the redirected URL"
    )]
    Callback {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The redirect listener stopped.
    #[error("the callback listener stopped")]
    CallbackStopped,
    /// No redirect came in time.
    #[error("no redirect arrived within {} minutes: nothing was stored", .0.as_secs() / 60)]
    NoRedirect(Duration),
    /// The request-token step gave no token.
    #[error(
        "X answered {status} to the request-token step, without a token (check apps.{app}.consumer_key and consumer_secret)"
    )]
    NoRequestToken {
        /// X's status.
        status: StatusCode,
        /// The App.
        app: String,
    },
    /// No PIN was entered.
    #[error("no PIN was entered: nothing was stored")]
    NoPin,
    /// The access-token step gave no token.
    #[error(
        "X answered {status} to the access-token step (a wrong or expired PIN?): nothing was stored"
    )]
    NoAccessToken {
        /// X's status.
        status: StatusCode,
    },
    /// A token step could not be signed.
    #[error("the token request cannot be signed: {0}")]
    Unsignable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A signed header is not a valid header value.
    #[error("the token request's Authorization header: {0}")]
    Header(#[source] http::header::InvalidHeaderValue),
    /// `bearer --invalidate` with nothing stored.
    #[error("no Bearer token is stored for {0}: nothing to invalidate")]
    NothingToInvalidate(String),
    /// X refused the invalidation.
    #[error("X answered {status} to the invalidation: the stored token is kept")]
    InvalidationRefused {
        /// X's status.
        status: StatusCode,
    },
    /// X refused the Bearer token request.
    #[error(
        "X answered {status} to the Bearer token request (check apps.{app}.consumer_key and consumer_secret)"
    )]
    BearerRefused {
        /// X's status.
        status: StatusCode,
        /// The App.
        app: String,
    },
    /// X's answer holds no Bearer token.
    #[error("X's answer holds no bearer token (token_type {token_type:?})")]
    NoBearer {
        /// The `token_type` X sent.
        token_type: String,
    },
    /// A token request failed before X answered.
    #[error("the token request failed: {0}")]
    Request(#[source] crate::error::ProxyError),
    /// X's token answer could not be read.
    #[error("the token answer could not be read: {0}")]
    Answer(#[source] crate::body::BoxError),
}

/// The message for a refused authorisation.
fn refused(error: &str, why: &str) -> String {
    if error == "access_denied" {
        let sep = if why.is_empty() { "" } else { ": " };
        format!("the authorisation was denied ({error}{sep}{why}): nothing was stored")
    } else {
        format!("X answered the authorisation with {error} {why}: nothing was stored")
    }
}

/// How long the callback listener waits for the browser.
const CALLBACK_WAIT: Duration = Duration::from_secs(600);

use super::runtime;

/// The URL of X's token endpoint `path` under `base` (`upstream.base_url`'s scheme and
/// authority): a URL that does not parse is an error naming it, never a request to `/`.
fn token_endpoint(base: &str, path: &str) -> Result<http::Uri, CliError> {
    let url = format!("{base}{path}");
    url.parse()
        .map_err(|source| LoginError::TokenUrl { url, source }.into())
}

fn upstream(config: &Config) -> Result<Upstream, CliError> {
    Ok(
        Upstream::new(&config.upstream, config.server.request_timeout)
            .map_err(LoginError::Upstream)?,
    )
}

/// The App a user acts through (validated configs always have it).
fn app_of<'c>(
    config: &'c Config,
    user: &crate::config::User,
) -> Result<&'c crate::config::App, CliError> {
    config
        .apps
        .get(&user.app)
        .ok_or_else(|| CliError::Usage(format!("users.{}.app: no App {}", user.name, user.app)))
}

/// The parts of a redirect that matter.
#[derive(Debug, Default, PartialEq, Eq)]
struct Redirect {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Reads `code`, `state`, `error` from a redirected URL or its query.
fn parse_redirect(url_or_query: &str) -> Redirect {
    let query = url_or_query
        .split_once('?')
        .map_or(url_or_query, |(_, q)| q);
    let query = query.split('#').next().unwrap_or_default();
    let mut r = Redirect::default();
    let decode = |s: &str| {
        form_decode(s)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    for pair in query.trim().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (Some(k), v) = (decode(k), decode(v)) else {
            continue;
        };
        match k.as_str() {
            "code" => r.code = v,
            "state" => r.state = v,
            "error" => r.error = v,
            "error_description" => r.error_description = v,
            _ => {}
        }
    }
    r
}

/// `xgate login --identity ID` (OAuth 2.0).
pub(super) fn oauth2(
    config: &Config,
    identity: &str,
    no_listen: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let user = match config.identity(identity) {
        Some(Identity::User(u)) => u,
        Some(Identity::App(_)) => {
            return Err(CliError::Usage(format!(
                "--identity {identity}: an App logs in with `xgate bearer --app {identity}`"
            )));
        }
        None => {
            return Err(CliError::Usage(format!(
                "--identity {identity}: no such identity in [users]"
            )));
        }
    };
    let UserAuth::Oauth2 { scopes } = &user.auth else {
        return Err(CliError::Usage(format!(
            "--identity {identity}: users.{identity}.auth is \"oauth1\"; use `xgate login --identity {identity} --oauth1`"
        )));
    };
    let app = app_of(config, user)?;
    let client_cfg = app.oauth2.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "apps.{}.oauth2_client_id is not set: it is needed to log in users with OAuth 2.0",
            app.name
        ))
    })?;
    let creds = Oauth2App {
        client_id: client_cfg.client_id.clone(),
        client_secret: client_cfg.client_secret.clone(),
    };
    let upstream = upstream(config)?;
    let token_url = format!("{}/2/oauth2/token", upstream.base());
    let redirect_uri = app.oauth2_redirect_uri.to_string();
    let client =
        oauth2_client(&creds, &token_url)
            .map_err(LoginError::Oauth2Client)?
            .set_auth_uri(
                AuthUrl::new(app.oauth2_authorize_url.to_string()).map_err(|e| {
                    CliError::Usage(format!("apps.{}.oauth2_authorize_url: {e}", app.name))
                })?,
            )
            .set_redirect_uri(RedirectUrl::new(redirect_uri).map_err(|e| {
                CliError::Usage(format!("apps.{}.oauth2_redirect_uri: {e}", app.name))
            })?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge)
        .url();

    let rt = runtime()?;
    rt.block_on(async {
        let store = store::open(&config.store, &crate::shared::not_observed()).await?;
        // Listen before printing, so a fast browser cannot miss the listener.
        let listener = if no_listen {
            None
        } else {
            Some(bind_callback(&app.oauth2_redirect_uri).await?)
        };
        writeln!(out, "{authorize_url}").map_err(|e| io_error(&e))?;
        out.flush().map_err(|e| io_error(&e))?;
        let redirect = match listener {
            Some(l) => await_callback(l, app.oauth2_redirect_uri.path()).await?,
            None => {
                let mut line = String::new();
                input
                    .read_line(&mut line)
                    .map_err(|source| LoginError::Input {
                        what: "the redirected URL",
                        source,
                    })?;
                parse_redirect(&line)
            }
        };
        if let Some(error) = redirect.error {
            let why = redirect.error_description.unwrap_or_default();
            return Err(LoginError::Refused { error, why }.into());
        }
        if redirect.state.as_deref() != Some(state.secret().as_str()) {
            return Err(LoginError::StateMismatch.into());
        }
        let code = redirect.code.ok_or(LoginError::NoCode)?;
        let resp = client
            .exchange_code(AuthorizationCode::new(code))
            .set_pkce_verifier(verifier)
            .request_async(&TokenHttp(&upstream))
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r)
                    if *r.error() == BasicErrorResponseType::InvalidGrant =>
                {
                    LoginError::CodeRefused {
                        identity: identity.to_owned(),
                    }
                }
                RequestTokenError::ServerResponse(r) => {
                    LoginError::ExchangeRefused(r.error().to_string())
                }
                other => LoginError::Exchange(Box::new(other)),
            })?;
        let now = SystemClock.unix_seconds();
        let stored = stored_from_response(&resp, now, scopes, None);
        let granted = match &stored {
            StoredToken::Oauth2 { scopes, .. } => scopes.join(" "),
            _ => String::new(),
        };
        store
            .save(identity, &stored)
            .await
            .map_err(CliError::Store)?;
        writeln!(out, "stored token for {identity}").map_err(|e| io_error(&e))?;
        writeln!(out, "scopes: {granted}").map_err(|e| io_error(&e))?;
        // Owned Reads needs the user's X id: asked once, now, for the identities that use it
        // (a User read X bills); a failure only delays it to the identity's first
        // `GET /2/users/me` through the proxy.
        if config.costs.owned_reads.iter().any(|o| o == identity) {
            if let StoredToken::Oauth2 { access_token, .. } = &stored {
                match users_me(&upstream, access_token).await {
                    Ok(user_id) => keep_user_id(&*store, identity, &user_id, Some(out)).await?,
                    Err(why) => writeln!(
                        out,
                        "warning: the X user id of {identity} is not known yet ({why}); its first GET /2/users/me through xgate teaches it"
                    )
                    .map_err(|e| io_error(&e))?,
                }
            }
        }
        Ok(())
    })
}

async fn bind_callback(redirect: &http::Uri) -> Result<tokio::net::TcpListener, CliError> {
    let host = redirect.host().unwrap_or("127.0.0.1");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = redirect
        .port_u16()
        .unwrap_or(if redirect.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    tokio::net::TcpListener::bind((host, port))
        .await
        .map_err(|source| {
            LoginError::Callback {
                address: format!("{host}:{port}"),
                source,
            }
            .into()
        })
}

/// Serves the redirect once: the first request to `path` with a code or an error.
async fn await_callback(
    listener: tokio::net::TcpListener,
    path: &str,
) -> Result<Redirect, CliError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Redirect>(1);
    let path = path.to_owned();
    let serve = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let tx = tx.clone();
            let path = path.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    let path = path.clone();
                    async move {
                        let redirect = parse_redirect(req.uri().query().unwrap_or_default());
                        let ours = req.uri().path() == path
                            && (redirect.code.is_some() || redirect.error.is_some());
                        let (status, text) = if ours {
                            let _closed = tx.send(redirect).await;
                            (
                                StatusCode::OK,
                                "xgate received the authorisation. You can close this window.\n",
                            )
                        } else {
                            (StatusCode::NOT_FOUND, "not the xgate login callback\n")
                        };
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(text.as_bytes())));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; charset=utf-8"),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _done = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    tokio::select! {
        () = serve => Err(LoginError::CallbackStopped.into()),
        got = tokio::time::timeout(CALLBACK_WAIT, rx.recv()) => match got {
            Ok(Some(r)) => Ok(r),
            _ => Err(LoginError::NoRedirect(CALLBACK_WAIT).into()),
        },
    }
}

/// `xgate login --identity ID --oauth1`: 3-legged OAuth 1.0a with a PIN (`oauth_callback=oob`).
pub(super) fn oauth1(
    config: &Config,
    identity: &str,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let user = match config.identity(identity) {
        Some(Identity::User(u)) if matches!(u.auth, UserAuth::Oauth1 { .. }) => u,
        Some(_) => {
            return Err(CliError::Usage(format!(
                "--identity {identity}: --oauth1 is for users with auth = \"oauth1\""
            )));
        }
        None => {
            return Err(CliError::Usage(format!(
                "--identity {identity}: no such identity in [users]"
            )));
        }
    };
    let app = app_of(config, user)?;
    let consumer = app.consumer.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "apps.{}: consumer_key and consumer_secret are needed for OAuth 1.0a",
            app.name
        ))
    })?;
    let upstream = upstream(config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store = store::open(&config.store, &crate::shared::not_observed()).await?;
        // 1. A request token for the out-of-band (PIN) flow.
        let key = Oauth1Key::new(&consumer.key, &consumer.secret, None);
        let request = signed_post(
            &upstream,
            "/oauth/request_token",
            &key,
            &[("oauth_callback", "oob")],
        )?;
        let (status, reply) = exchange_form(&upstream, request).await?;
        let (Some(token), Some(secret)) =
            (reply.get("oauth_token"), reply.get("oauth_token_secret"))
        else {
            return Err(LoginError::NoRequestToken {
                status,
                app: app.name.clone(),
            }
            .into());
        };
        // 2. The user authorises in a browser and reads the PIN off the page.
        writeln!(
            out,
            "{}?oauth_token={}",
            app.oauth1_authorize_url,
            percent_encode(token)
        )
        .map_err(|e| io_error(&e))?;
        out.flush().map_err(|e| io_error(&e))?;
        write!(err, "open the URL above, authorise, and enter the PIN: ")
            .map_err(|e| io_error(&e))?;
        err.flush().map_err(|e| io_error(&e))?;
        let mut pin = String::new();
        input
            .read_line(&mut pin)
            .map_err(|source| LoginError::Input {
                what: "the PIN",
                source,
            })?;
        let pin = pin.trim();
        if pin.is_empty() {
            return Err(LoginError::NoPin.into());
        }
        // 3. The access token, signed with the request token.
        let (token, secret) = (
            SecretString::from(token.as_str()),
            SecretString::from(secret.as_str()),
        );
        let key = Oauth1Key::new(&consumer.key, &consumer.secret, Some((&token, &secret)));
        let request = signed_post(
            &upstream,
            "/oauth/access_token",
            &key,
            &[("oauth_verifier", pin)],
        )?;
        let (status, reply) = exchange_form(&upstream, request).await?;
        let (Some(token), Some(token_secret)) =
            (reply.get("oauth_token"), reply.get("oauth_token_secret"))
        else {
            return Err(LoginError::NoAccessToken { status }.into());
        };
        store
            .save(
                identity,
                &StoredToken::Oauth1 {
                    token: token.clone(),
                    token_secret: token_secret.clone(),
                },
            )
            .await
            .map_err(CliError::Store)?;
        let who = reply
            .get("screen_name")
            .map(|n| format!(" (@{n})"))
            .unwrap_or_default();
        writeln!(out, "stored token for {identity}{who}").map_err(|e| io_error(&e))?;
        // X names the user in its answer: kept for Owned Reads (CONTRACT section 11 rule 1),
        // and said when the identity uses them.
        if let Some(user_id) = reply.get("user_id").filter(|id| is_user_id(id)) {
            let owned = config.costs.owned_reads.iter().any(|o| o == identity);
            keep_user_id(&*store, identity, user_id, owned.then_some(out)).await?;
        }
        Ok(())
    })
}

/// Whether `id` looks like an X user id (digits only, as X's are).
fn is_user_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit())
}

/// Keeps `identity`'s X user id in the store's metadata, where the proxy reads it to price
/// the identity's own lists at Owned Reads.
async fn keep_user_id(
    store: &dyn store::TokenStore,
    identity: &str,
    user_id: &str,
    out: Option<&mut dyn Write>,
) -> Result<(), CliError> {
    store
        .save_meta(&crate::costs::user_id_key(identity), user_id)
        .await
        .map_err(CliError::Store)?;
    match out {
        Some(out) => writeln!(out, "X user id of {identity}: {user_id} (for Owned Reads)")
            .map_err(|e| io_error(&e)),
        None => Ok(()),
    }
}

/// `GET /2/users/me` with a new OAuth 2.0 access token: the user's X id, for Owned Reads.
async fn users_me(upstream: &Upstream, access_token: &str) -> Result<String, String> {
    let uri: http::Uri = format!("{}/2/users/me", upstream.base())
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut req = Request::new(UpstreamBody::Full(None));
    *req.uri_mut() = uri;
    let mut auth = http::HeaderValue::try_from(format!("Bearer {access_token}"))
        .map_err(|_invalid| "the access token cannot be sent in a header".to_owned())?;
    auth.set_sensitive(true);
    req.headers_mut().insert(header::AUTHORIZATION, auth);
    let (status, body) = exchange_bytes(upstream, req)
        .await
        .map_err(|e| e.to_string())?;
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    match doc.pointer("/data/id").and_then(serde_json::Value::as_str) {
        Some(id) if status.is_success() && is_user_id(id) => Ok(id.to_owned()),
        _ => Err(format!("X answered {status} without a user id")),
    }
}

/// A POST to `path` with an OAuth 1.0a header carrying `extra` protocol parameters.
fn signed_post(
    upstream: &Upstream,
    path: &str,
    key: &Oauth1Key,
    extra: &[(&str, &str)],
) -> Result<Request<UpstreamBody>, CliError> {
    let uri = token_endpoint(&upstream.base(), path)?;
    let nonce = RandomNonce.nonce().map_err(CliError::Random)?;
    let params = RequestParams {
        timestamp: SystemClock.unix_seconds(),
        nonce: &nonce,
        extra,
    };
    let header = authorization_header(key, "POST", &uri, None, params)
        .map_err(|e| LoginError::Unsignable(Box::new(e)))?;
    let mut value = http::HeaderValue::try_from(header).map_err(LoginError::Header)?;
    value.set_sensitive(true);
    let mut req = Request::new(UpstreamBody::Full(None));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    req.headers_mut().insert(header::AUTHORIZATION, value);
    Ok(req)
}

/// Sends a request whose answer is form-encoded (X's OAuth 1.0a token steps).
async fn exchange_form(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
) -> Result<(StatusCode, std::collections::BTreeMap<String, String>), CliError> {
    let (status, body) = exchange_bytes(upstream, req).await?;
    let text = String::from_utf8_lossy(&body);
    let decode = |s: &str| {
        form_decode(s)
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let map = text
        .trim()
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((decode(k)?, decode(v)?))
        })
        .collect();
    Ok((
        status,
        if status.is_success() {
            map
        } else {
            Default::default()
        },
    ))
}

/// `xgate bearer --app APP [--invalidate]`.
pub(super) fn bearer(
    config: &Config,
    app_name: &str,
    invalidate: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let app = config
        .apps
        .get(app_name)
        .ok_or_else(|| CliError::Usage(format!("--app {app_name}: no such App in [apps]")))?;
    let consumer = app.consumer.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "apps.{app_name}: consumer_key and consumer_secret are needed to obtain a Bearer token"
        ))
    })?;
    // X: each of key and secret RFC 1738-encoded, joined with ':', then Base64.
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        percent_encode(consumer.key.expose()),
        percent_encode(consumer.secret.expose())
    ));
    let mut authorization =
        http::HeaderValue::try_from(format!("Basic {basic}")).map_err(|_invalid| {
            CliError::Usage(format!(
                "apps.{app_name}: the consumer key or secret cannot be sent in a header"
            ))
        })?;
    authorization.set_sensitive(true);
    let upstream = upstream(config)?;
    let rt = runtime()?;
    let post = |path: &str, body: String| -> Result<Request<UpstreamBody>, CliError> {
        let mut req = Request::new(UpstreamBody::Full(Some(Bytes::from(body))));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = token_endpoint(&upstream.base(), path)?;
        let h = req.headers_mut();
        h.insert(header::AUTHORIZATION, authorization.clone());
        h.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-www-form-urlencoded;charset=UTF-8"),
        );
        Ok(req)
    };
    rt.block_on(async {
        let store = store::open(&config.store, &crate::shared::not_observed()).await?;
        if invalidate {
            let stored = store
                .load(app_name, TokenKind::Bearer)
                .await
                .map_err(CliError::Store)?;
            let Some(StoredToken::Bearer { token }) = stored.as_ref() else {
                return Err(LoginError::NothingToInvalidate(app_name.to_owned()).into());
            };
            let body = format!("access_token={}", percent_encode(token));
            let (status, _json) = exchange(&upstream, post("/oauth2/invalidate_token", body)?).await?;
            if !status.is_success() {
                return Err(LoginError::InvalidationRefused { status }.into());
            }
            store
                .delete(app_name, TokenKind::Bearer)
                .await
                .map_err(CliError::Store)?;
            writeln!(out, "invalidated and forgot the Bearer token of {app_name}").map_err(|e| io_error(&e))?;
            return Ok(());
        }
        let (status, json) = exchange(
            &upstream,
            post("/oauth2/token", "grant_type=client_credentials".to_owned())?,
        )
        .await?;
        if !status.is_success() {
            return Err(LoginError::BearerRefused { status, app: app_name.to_owned() }.into());
        }
        let field = |k: &str| json.get(k).and_then(serde_json::Value::as_str);
        let token_type = field("token_type").unwrap_or_default();
        let Some(token) = field("access_token").filter(|_| token_type.eq_ignore_ascii_case("bearer")) else {
            return Err(LoginError::NoBearer { token_type: token_type.to_owned() }.into());
        };
        store
            .save(app_name, &StoredToken::Bearer { token: token.to_owned() })
            .await
            .map_err(CliError::Store)?;
        if app.bearer_token.is_some() {
            writeln!(out, "stored Bearer token for {app_name} (apps.{app_name}.bearer_token is set and takes precedence)")
        } else {
            writeln!(out, "stored Bearer token for {app_name}")
        }
        .map_err(|e| io_error(&e))
    })
}

/// Sends a token-endpoint request and reads its JSON answer.
async fn exchange(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
) -> Result<(StatusCode, serde_json::Value), CliError> {
    let (status, body) = exchange_bytes(upstream, req).await?;
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

async fn exchange_bytes(
    upstream: &Upstream,
    req: Request<UpstreamBody>,
) -> Result<(StatusCode, Bytes), CliError> {
    let resp = upstream.send(req).await.map_err(LoginError::Request)?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(LoginError::Answer)?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (review of the shape issue): an unparseable token-endpoint URL became `/`
    /// (`unwrap_or_default`) and the request went there; now it is an error naming the URL.
    #[test]
    fn an_unparseable_token_endpoint_is_an_error_not_a_request_to_slash() {
        let ok = token_endpoint("https://api.x.com", "/oauth2/token").unwrap();
        assert_eq!(ok.to_string(), "https://api.x.com/oauth2/token");
        let err = token_endpoint("https://api.x.com", "/oauth2/to ken").unwrap_err();
        assert!(
            err.to_string()
                .contains("\"https://api.x.com/oauth2/to ken\" is not valid"),
            "{err}"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn redirects_are_read_from_urls_or_queries() {
        let r = parse_redirect("http://127.0.0.1:8765/callback?state=abc&code=x%2By+z#frag");
        assert_eq!(r.code.as_deref(), Some("x+y z"));
        assert_eq!(r.state.as_deref(), Some("abc"));
        let r = parse_redirect("error=access_denied&state=s\n");
        assert_eq!(r.error.as_deref(), Some("access_denied"));
        assert_eq!(r.state.as_deref(), Some("s"));
        assert_eq!(parse_redirect(""), Redirect::default());
    }

    /// RFC 7636 Appendix B, through the oauth2 crate xgate uses.
    #[test]
    fn pkce_s256_matches_rfc_7636() {
        let verifier =
            oauth2::PkceCodeVerifier::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".to_owned());
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        assert_eq!(
            challenge.as_str(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(challenge.method().as_str(), "S256");
    }
}
