//! `xgate sign`: the Authorization header xgate would attach, for debugging signatures.

use std::io::Write;

use super::{CliError, SignArgs, io_error};
use crate::auth::oauth1::{self, Oauth1Key, RequestParams};
use crate::clock::{Clock, NonceSource, RandomNonce, SystemClock};
use crate::config::{Config, Identity, UserAuth};
use crate::secret::REDACTED;

pub(super) fn run(config: &Config, args: &SignArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let header = header(config, args, &SystemClock, &RandomNonce)?;
    writeln!(out, "{header}").map_err(|e| io_error(&e))
}

fn header(
    config: &Config,
    args: &SignArgs,
    clock: &dyn Clock,
    nonces: &dyn NonceSource,
) -> Result<String, CliError> {
    let identity = config.identity(&args.identity).ok_or_else(|| {
        CliError::Usage(format!(
            "--identity {}: no such identity in [apps] or [users]",
            args.identity
        ))
    })?;
    let method = args.method.to_ascii_uppercase();
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(CliError::Usage(format!(
            "METHOD {:?}: expected e.g. GET or POST",
            args.method
        )));
    }
    let url = if args.url.starts_with('/') {
        format!(
            "{}{}",
            config.upstream.base_url.to_string().trim_end_matches('/'),
            args.url
        )
    } else {
        args.url.clone()
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| CliError::Usage(format!("URL {url:?}: {e}")))?;
    if uri.scheme().is_none() || uri.host().is_none() {
        return Err(CliError::Usage(format!(
            "URL {url:?}: give a full URL or a path starting with /"
        )));
    }
    match identity {
        Identity::App(app) => match &app.bearer_token {
            Some(token) if args.reveal => Ok(format!("Bearer {}", token.expose())),
            Some(_) => Ok(format!("Bearer {REDACTED}")),
            None => Err(CliError::Runtime(format!(
                "apps.{0} has no bearer_token: set it in proxy.toml or obtain one with `xgate bearer --app {0}`",
                app.name
            ))),
        },
        Identity::User(user) => match &user.auth {
            UserAuth::Oauth1 { token } => {
                let (token, token_secret) = token.as_ref().ok_or_else(|| {
                    CliError::Runtime(format!(
                        "users.{0} has no token/token_secret: set them in proxy.toml or run `xgate login --identity {0} --oauth1`",
                        user.name
                    ))
                })?;
                let consumer = config
                    .apps
                    .get(&user.app)
                    .and_then(|a| a.consumer.as_ref())
                    .ok_or_else(|| {
                        CliError::Runtime(format!("apps.{} has no consumer key", user.app))
                    })?;
                let key =
                    Oauth1Key::new(&consumer.key, &consumer.secret, Some((token, token_secret)));
                let body = form_body(&args.form)?;
                let nonce = match &args.nonce {
                    Some(n) => n.clone(),
                    None => nonces
                        .nonce()
                        .map_err(|e| CliError::Runtime(e.to_string()))?,
                };
                let timestamp = args.timestamp.unwrap_or_else(|| clock.unix_seconds());
                let req = RequestParams {
                    timestamp,
                    nonce: &nonce,
                    extra: &[],
                };
                oauth1::authorization_header(
                    &key,
                    &method,
                    &uri,
                    body.as_deref().map(str::as_bytes),
                    req,
                )
                .map_err(|e| CliError::Usage(format!("URL {url:?}: {e}")))
            }
            UserAuth::Oauth2 { .. } => Err(CliError::Runtime(format!(
                "users.{0} uses OAuth 2.0 tokens from the token store, and none is stored: run `xgate login --identity {0}`",
                user.name
            ))),
        },
    }
}

/// `--form k=v` pairs as an `application/x-www-form-urlencoded` body.
fn form_body(pairs: &[String]) -> Result<Option<String>, CliError> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut body = String::new();
    for p in pairs {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--form {p:?}: expected NAME=VALUE")))?;
        if !body.is_empty() {
            body.push('&');
        }
        body.push_str(&oauth1::percent_encode(k));
        body.push('=');
        body.push_str(&oauth1::percent_encode(v));
    }
    Ok(Some(body))
}
