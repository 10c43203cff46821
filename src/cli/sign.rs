//! `xgate sign`: the Authorization header xgate would attach, for debugging signatures.

use std::io::Write;

use super::{CliError, SignArgs, io_error};
use crate::auth::oauth1::{self, Oauth1Key, RequestParams};
use crate::clock::{Clock, NonceSource, RandomNonce, SystemClock};
use crate::config::Config;
use crate::identity::{self, Resolved};
use crate::secret::REDACTED;
use crate::store::{self, StoredToken};

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
    if config.identity(&args.identity).is_none() {
        return Err(CliError::Usage(format!(
            "--identity {}: no such identity in [apps] or [users]",
            args.identity
        )));
    }
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
    let resolved = resolve_now(config, &args.identity)?;
    match &resolved {
        Resolved::Bearer { token, .. } if args.reveal => Ok(format!("Bearer {}", token.expose())),
        Resolved::Oauth2 {
            stored: StoredToken::Oauth2 { access_token, .. },
        } if args.reveal => Ok(format!("Bearer {access_token}")),
        Resolved::Bearer { .. } | Resolved::Oauth2 { .. } => Ok(format!("Bearer {REDACTED}")),
        Resolved::Oauth1 {
            consumer,
            token,
            token_secret,
            ..
        } => {
            let key = Oauth1Key::new(&consumer.key, &consumer.secret, Some((token, token_secret)));
            let body = form_body(&args.form)?;
            let nonce = match &args.nonce {
                Some(n) => n.clone(),
                None => nonces.nonce()?,
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
        Resolved::Missing { hint } => Err(CliError::NoCredentials {
            identity: args.identity.clone(),
            hint: hint.clone(),
        }),
    }
}

/// What the proxy would attach for `name` now: proxy.toml's credential, else the store's
/// (read only, never created: `sign` changes nothing).
fn resolve_now(config: &Config, name: &str) -> Result<Resolved, CliError> {
    let runtime = super::runtime()?;
    let store = runtime.block_on(store::open_existing(
        &config.store,
        &crate::shared::not_observed(),
    ))?;
    runtime
        .block_on(identity::resolve(config, name, store.as_deref()))?
        .ok_or_else(|| {
            CliError::Usage(format!(
                "--identity {name}: no such identity in [apps] or [users]"
            ))
        })
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
