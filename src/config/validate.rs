//! Validation: the raw structs of [`super::raw`] become a typed [`Config`].
//!
//! Owns every rule of CONTRACT section 2 and the defaults. It never stops at the first
//! problem: an invalid value is reported and replaced by its default so that the rest of the
//! file is still checked. Messages name the key path and never contain a secret value.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;

use super::raw::{self, RawApp, RawClient, RawOverride, RawSecret, RawUser};
use super::units::{Rate, parse_duration};
use super::{
    Admin, App, Client, ClientAuth, Config, ConfigError, ConsumerKeys, EndpointPattern, EngineUrl,
    Env, Limits, MAX_RATES_PER_FIGURE, Oauth2Client, OnExhausted, OnFailure, Override, Problem,
    Server, Shared, Store, StoreLocation, Streams, TlsFiles, Upstream, User, UserAuth,
};
use crate::secret::{SecretString, StoreKey};

/// hyper refuses an HTTP/1 read buffer smaller than this.
const MIN_HEADER_BYTES: u64 = 8192;

/// The most `server.workers` a config may ask for.
const MAX_WORKERS: usize = 256;

/// X's OAuth 2.0 scopes (reference section 2.5, plus `users.email`).
const KNOWN_SCOPES: &[&str] = &[
    "tweet.read",
    "tweet.write",
    "tweet.moderate.write",
    "users.read",
    "users.email",
    "follows.read",
    "follows.write",
    "offline.access",
    "space.read",
    "mute.read",
    "mute.write",
    "like.read",
    "like.write",
    "list.read",
    "list.write",
    "block.read",
    "block.write",
    "bookmark.read",
    "bookmark.write",
    "dm.read",
    "dm.write",
    "media.write",
    "broadcast.read",
    "broadcast.write",
    "timeline.read",
];

struct Validator<'a> {
    base_dir: &'a Path,
    env: &'a dyn Env,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
}

pub(super) fn validate(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
    let mut v = Validator {
        base_dir,
        env,
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let Some(raw) = raw::parse(text, &mut v.problems) else {
        return Err(ConfigError {
            problems: v.problems,
        });
    };
    let server = v.server(raw.server);
    let admin = v.admin(raw.admin, &server);
    let upstream = v.upstream(raw.upstream);
    let store = v.store(raw.store);
    let shared = raw.shared.map(|s| v.shared(s));
    let apps: BTreeMap<String, App> = raw
        .apps
        .into_iter()
        .map(|(name, app)| {
            let app = v.app(&name, app);
            (name, app)
        })
        .collect();
    let users: BTreeMap<String, User> = raw
        .users
        .into_iter()
        .filter_map(|(name, user)| {
            let user = v.user(&name, user, &apps)?;
            Some((name, user))
        })
        .collect();
    let clients = v.clients(raw.clients, &apps, &users, &server);
    let limits = v.limits(raw.limits);
    let costs = v.costs(raw.costs, &users);
    let budgets = v.budgets(raw.budgets, &apps, &users, &clients);
    let streams = v.streams(raw.streams);

    if !v.problems.is_empty() {
        return Err(ConfigError {
            problems: v.problems,
        });
    }
    Ok(Config {
        source: None,
        server,
        admin,
        upstream,
        store,
        shared,
        apps,
        users,
        clients,
        limits,
        costs,
        budgets,
        streams,
        warnings: v.warnings,
    })
}

mod costs;

impl Validator<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem::new(path, message));
    }

    // === leaf values ===

    fn duration(
        &mut self,
        path: &str,
        value: Option<String>,
        default: Duration,
        allow_zero: bool,
    ) -> Duration {
        let Some(s) = value else { return default };
        match parse_duration(&s) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.problem(path, "must be longer than 0");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.problem(path, e);
                default
            }
        }
    }

    fn count<T: TryFrom<u64> + Copy>(
        &mut self,
        path: &str,
        value: Option<u64>,
        default: T,
        min: u64,
    ) -> T {
        let Some(n) = value else { return default };
        if n < min {
            self.problem(path, format!("must be at least {min}, got {n}"));
            return default;
        }
        T::try_from(n).unwrap_or_else(|_| {
            self.problem(path, format!("{n} is too large"));
            default
        })
    }

    /// `server.workers`: 1 to [`MAX_WORKERS`], by default the CPUs this process may use
    /// (its affinity and cgroup quota included).
    fn workers(&mut self, value: Option<u64>) -> usize {
        let default = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(MAX_WORKERS);
        let n: usize = self.count("server.workers", value, default, 1);
        if n > MAX_WORKERS {
            self.problem(
                "server.workers",
                format!("must be at most {MAX_WORKERS}, got {n}"),
            );
            return default;
        }
        n
    }

    fn addr(&mut self, path: &str, value: Option<String>, default: SocketAddr) -> SocketAddr {
        let Some(s) = value else { return default };
        s.parse().unwrap_or_else(|_| {
            self.problem(
                path,
                format!(r#"invalid socket address "{s}": expected IP:port such as "127.0.0.1:8080" or "[::1]:8080""#),
            );
            default
        })
    }

    /// An absolute `http`/`https` URL.
    fn url(&mut self, path: &str, value: Option<String>, default: &'static str) -> http::Uri {
        let fallback = http::Uri::from_static(default);
        let Some(s) = value else { return fallback };
        match s.parse::<http::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => u,
            _ => {
                self.problem(
                    path,
                    format!(r#"invalid URL "{s}": expected an absolute http:// or https:// URL"#),
                );
                fallback
            }
        }
    }

    /// A path relative to the config file; with `must_exist`, it must be a readable file.
    fn file(&mut self, path: &str, value: &str, must_exist: bool) -> PathBuf {
        let p = self.base_dir.join(value);
        if must_exist {
            if let Err(e) = std::fs::File::open(&p) {
                self.problem(path, format!("cannot read {}: {e}", p.display()));
            }
        }
        p
    }

    fn secret(&mut self, path: &str, value: Option<RawSecret>) -> Option<SecretString> {
        let value = match value? {
            RawSecret::Literal(s) => {
                self.warn(
                    path,
                    r#"secret written literally in the config file; prefer { env = "NAME" } or { file = "path" }"#,
                );
                s
            }
            RawSecret::Env(name) if name.is_empty() => {
                self.problem(path, "empty environment variable name");
                return None;
            }
            RawSecret::Env(name) => match self.env.var(&name) {
                Some(v) => {
                    if v.is_empty() {
                        self.problem(path, format!("environment variable {name} is empty"));
                        return None;
                    }
                    v
                }
                None => {
                    self.problem(path, format!("environment variable {name} is not set"));
                    return None;
                }
            },
            RawSecret::File(file) => {
                let p = self.base_dir.join(&file);
                match std::fs::read_to_string(&p) {
                    Ok(mut text) => {
                        let trimmed = text.trim_end_matches(['\n', '\r']).len();
                        text.truncate(trimmed);
                        if text.is_empty() {
                            self.problem(path, format!("secret file {} is empty", p.display()));
                            return None;
                        }
                        text
                    }
                    Err(e) => {
                        self.problem(
                            path,
                            format!("cannot read secret file {}: {e}", p.display()),
                        );
                        return None;
                    }
                }
            }
        };
        if value.is_empty() {
            self.problem(path, "secret is empty");
            return None;
        }
        Some(SecretString::new(value))
    }

    fn name(&mut self, path: &str, name: &str) {
        if !is_valid_name(name) {
            self.problem(
                path,
                format!(r#"invalid name "{name}": use 1 to 64 of A-Z a-z 0-9 _ . - starting with a letter or digit"#),
            );
        }
    }

    // === sections ===

    fn server(&mut self, raw: raw::RawServer) -> Server {
        let listen = self.addr(
            "server.listen",
            raw.listen,
            SocketAddr::from(([127, 0, 0, 1], 8080)),
        );
        let tls = raw.tls.and_then(|tls| {
            let cert = tls.cert.map(|c| self.file("server.tls.cert", &c, true));
            let key = tls.key.map(|k| self.file("server.tls.key", &k, true));
            match (cert, key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (c, k) => {
                    if c.is_none() {
                        self.problem("server.tls.cert", "missing: the certificate chain (PEM)");
                    }
                    if k.is_none() {
                        self.problem("server.tls.key", "missing: the private key (PEM)");
                    }
                    None
                }
            }
        });
        let max_header_bytes = self.count(
            "server.max_header_bytes",
            raw.max_header_bytes,
            65_536,
            MIN_HEADER_BYTES,
        );
        let max_header_bytes = if max_header_bytes > u64::from(u32::MAX) as usize {
            self.problem("server.max_header_bytes", "must fit in 32 bits");
            65_536
        } else {
            max_header_bytes
        };
        Server {
            listen,
            tls,
            max_body_bytes: self.count("server.max_body_bytes", raw.max_body_bytes, 5_242_880, 1),
            max_header_bytes,
            max_connections: self.count("server.max_connections", raw.max_connections, 10_000, 1),
            workers: self.workers(raw.workers),
            header_read_timeout: self.duration(
                "server.header_read_timeout",
                raw.header_read_timeout,
                Duration::from_secs(10),
                false,
            ),
            keepalive_timeout: self.duration(
                "server.keepalive_timeout",
                raw.keepalive_timeout,
                Duration::from_secs(60),
                false,
            ),
            tls_handshake_timeout: self.duration(
                "server.tls_handshake_timeout",
                raw.tls_handshake_timeout,
                Duration::from_secs(10),
                false,
            ),
            http2_max_concurrent_streams: self.count(
                "server.http2_max_concurrent_streams",
                raw.http2_max_concurrent_streams,
                256,
                1,
            ),
            request_timeout: self.duration(
                "server.request_timeout",
                raw.request_timeout,
                Duration::from_secs(30),
                false,
            ),
            idle_timeout: self.duration(
                "server.idle_timeout",
                raw.idle_timeout,
                Duration::from_secs(90),
                false,
            ),
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                raw.shutdown_grace,
                Duration::from_secs(20),
                true,
            ),
        }
    }

    fn admin(&mut self, raw: raw::RawAdmin, server: &Server) -> Admin {
        let listen = self.addr(
            "admin.listen",
            raw.listen,
            SocketAddr::from(([127, 0, 0, 1], 9090)),
        );
        if listen == server.listen && listen.port() != 0 {
            self.problem(
                "admin.listen",
                format!("{listen} is also server.listen: the admin listener needs its own port"),
            );
        }
        Admin { listen }
    }

    fn upstream(&mut self, raw: raw::RawUpstream) -> Upstream {
        let mut base_url = self.url("upstream.base_url", raw.base_url, "https://api.x.com");
        if base_url
            .authority()
            .is_some_and(|a| a.as_str().contains('@'))
        {
            self.problem(
                "upstream.base_url",
                "must not contain user information (user:password@)",
            );
        }
        if !matches!(base_url.path(), "" | "/") || base_url.query().is_some() {
            self.problem(
                "upstream.base_url",
                format!(r#""{base_url}" has a path or query: give only scheme://host[:port], such as "https://api.x.com""#),
            );
        }
        // Keep scheme://authority only, so joining a request's path is a plain concatenation.
        if let (Some(scheme), Some(authority)) = (base_url.scheme_str(), base_url.authority()) {
            if let Ok(u) = format!("{scheme}://{authority}").parse() {
                base_url = u;
            }
        }
        let ca_file = raw.ca_file.map(|f| self.file("upstream.ca_file", &f, true));
        let allowed_prefixes = raw
            .allowed_prefixes
            .unwrap_or_else(|| vec!["/2/".to_owned()]);
        if allowed_prefixes.is_empty() {
            self.problem(
                "upstream.allowed_prefixes",
                r#"must list at least one prefix, such as "/2/""#,
            );
        }
        for (i, p) in allowed_prefixes.iter().enumerate() {
            if !p.starts_with('/') {
                self.problem(
                    format!("upstream.allowed_prefixes[{i}]"),
                    format!(r#""{p}" must start with "/""#),
                );
            }
        }
        Upstream {
            base_url,
            ca_file,
            connect_timeout: self.duration(
                "upstream.connect_timeout",
                raw.connect_timeout,
                Duration::from_secs(5),
                false,
            ),
            pool_idle_timeout: self.duration(
                "upstream.pool_idle_timeout",
                raw.pool_idle_timeout,
                Duration::from_secs(90),
                false,
            ),
            pool_max_idle_per_host: self.count(
                "upstream.pool_max_idle_per_host",
                raw.pool_max_idle_per_host,
                256,
                0,
            ),
            allowed_prefixes,
        }
    }

    /// A shared engine's URL (a secret): one of `schemes`, parsed by the engine's own client.
    /// Written literally it draws the usual warning only when it holds a password.
    fn engine_url(
        &mut self,
        path: &str,
        value: RawSecret,
        schemes: &[&str],
        parse: impl Fn(&str) -> Result<(), String>,
    ) -> Option<EngineUrl> {
        let literal_without_password = match &value {
            RawSecret::Literal(s) => !has_password(s),
            RawSecret::Env(_) | RawSecret::File(_) => false,
        };
        let url = if literal_without_password {
            match value {
                RawSecret::Literal(s) if !s.is_empty() => SecretString::new(s),
                _ => {
                    self.problem(path, "secret is empty");
                    return None;
                }
            }
        } else {
            self.secret(path, Some(value))?
        };
        let Some(shown) = shown_url(url.expose(), schemes) else {
            self.problem(
                path,
                format!(
                    "is not a URL of the form {}://host[:port][/...]",
                    schemes.join("://, ")
                ),
            );
            return None;
        };
        if let Err(e) = parse(url.expose()) {
            // The engine's own parser; its message names no part of the URL.
            self.problem(path, format!("{shown}: {e}"));
            return None;
        }
        Some(EngineUrl { url, shown })
    }

    fn shared(&mut self, raw: raw::RawShared) -> Shared {
        let redis = match raw.redis_url {
            Some(value) => self.engine_url("shared.redis_url", value, &["redis", "rediss"], |u| {
                redis::Client::open(u)
                    .map(drop)
                    .map_err(|e| format!("not a Redis URL ({:?})", e.kind()))
            }),
            None => {
                self.problem("shared.redis_url", "is required in [shared]");
                None
            }
        };
        let key_prefix = raw.key_prefix.unwrap_or_else(|| "xgate:".to_owned());
        if key_prefix.contains(['{', '}']) {
            self.problem(
                "shared.key_prefix",
                "must not contain { or }: xgate puts a hash tag per App after it",
            );
        }
        let on_failure = match raw.on_failure.as_deref() {
            None | Some("local") => OnFailure::Local,
            Some("refuse") => OnFailure::Refuse,
            Some(other) => {
                self.problem(
                    "shared.on_failure",
                    format!(r#"unknown value "{other}": expected "local" or "refuse""#),
                );
                OnFailure::Local
            }
        };
        let timeout = self.duration(
            "shared.timeout",
            raw.timeout,
            Duration::from_millis(250),
            false,
        );
        Shared {
            redis: redis.unwrap_or_else(|| EngineUrl {
                url: SecretString::from(""),
                shown: String::new(),
            }),
            key_prefix,
            on_failure,
            timeout,
        }
    }

    fn streams(&mut self, raw: raw::RawStreams) -> Streams {
        let d = Streams::default();
        Streams {
            max_consumers: self.count(
                "streams.max_consumers",
                raw.max_consumers,
                d.max_consumers,
                1,
            ),
            consumer_buffer_bytes: self.count(
                "streams.consumer_buffer_bytes",
                raw.consumer_buffer_bytes,
                d.consumer_buffer_bytes,
                // One message of X's at its largest fits.
                64 * 1024,
            ),
            linger: self.duration("streams.linger", raw.linger, d.linger, true),
            max_rules: self.count("streams.max_rules", raw.max_rules, d.max_rules, 1),
        }
    }

    fn store(&mut self, raw: raw::RawStore) -> Store {
        let location = match (raw.path, raw.url) {
            (Some(_), Some(_)) => {
                self.problem(
                    "store.url",
                    "store.path and store.url are exclusive: give one",
                );
                StoreLocation::File(PathBuf::new())
            }
            (_, Some(url)) => self
                .engine_url("store.url", url, &["postgres", "postgresql"], |u| {
                    let (url, root) = super::postgres_url_parts(u);
                    if let Some(root) = root {
                        std::fs::File::open(&root)
                            .map_err(|e| format!("sslrootcert {}: {e}", root.display()))?;
                    }
                    url.parse::<tokio_postgres::Config>()
                        .map(drop)
                        .map_err(|e| format!("not a PostgreSQL URL ({e})"))
                })
                .map_or(StoreLocation::File(PathBuf::new()), StoreLocation::Postgres),
            (path, None) => StoreLocation::File(self.file(
                "store.path",
                path.as_deref().unwrap_or("xgate.db"),
                false,
            )),
        };
        let encryption_key = self.secret("store.encryption_key", raw.encryption_key).and_then(|s| {
            let text = s.expose().trim();
            let Ok(bytes) = base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .map(zeroize::Zeroizing::new)
            else {
                self.problem("store.encryption_key", "is not valid base64 (make one with `openssl rand -base64 32`)");
                return None;
            };
            match <[u8; 32]>::try_from(bytes.as_slice()) {
                Ok(key) => Some(StoreKey::new(key)),
                Err(_) => {
                    self.problem(
                        "store.encryption_key",
                        format!(
                            "must be base64 of exactly 32 bytes, got {} bytes (make one with `openssl rand -base64 32`)",
                            bytes.len()
                        ),
                    );
                    None
                }
            }
        });
        Store {
            location,
            encryption_key,
        }
    }

    fn app(&mut self, name: &str, raw: RawApp) -> App {
        let at = |key: &str| format!("apps.{name}.{key}");
        self.name(&format!("apps.{name}"), name);
        let key = self.secret(&at("consumer_key"), raw.consumer_key);
        let secret = self.secret(&at("consumer_secret"), raw.consumer_secret);
        let consumer = match (key, secret) {
            (Some(key), Some(secret)) => Some(ConsumerKeys { key, secret }),
            (Some(_), None)
                if !self
                    .problems
                    .iter()
                    .any(|p| p.path == at("consumer_secret")) =>
            {
                self.problem(
                    at("consumer_secret"),
                    "missing: consumer_key is set, its secret is needed too",
                );
                None
            }
            (None, Some(_)) if !self.problems.iter().any(|p| p.path == at("consumer_key")) => {
                self.problem(
                    at("consumer_key"),
                    "missing: consumer_secret is set, its key is needed too",
                );
                None
            }
            _ => None,
        };
        let bearer_token = self.secret(&at("bearer_token"), raw.bearer_token);
        let client_id = self.secret(&at("oauth2_client_id"), raw.oauth2_client_id);
        let client_secret = self.secret(&at("oauth2_client_secret"), raw.oauth2_client_secret);
        let oauth2 = match (client_id, client_secret) {
            (Some(client_id), client_secret) => Some(Oauth2Client {
                client_id,
                client_secret,
            }),
            (None, Some(_)) => {
                self.problem(at("oauth2_client_secret"), "set without oauth2_client_id");
                None
            }
            (None, None) => None,
        };
        if bearer_token.is_none()
            && consumer.is_none()
            && !self
                .problems
                .iter()
                .any(|p| p.path.starts_with(&format!("apps.{name}.")))
        {
            self.warn(
                format!("apps.{name}"),
                "no bearer_token and no consumer_key/consumer_secret: app-only requests as this App cannot be authorised",
            );
        }
        App {
            name: name.to_owned(),
            consumer,
            bearer_token,
            oauth2,
            oauth2_redirect_uri: self.url(
                &at("oauth2_redirect_uri"),
                raw.oauth2_redirect_uri,
                "http://127.0.0.1:8765/callback",
            ),
            oauth2_authorize_url: self.url(
                &at("oauth2_authorize_url"),
                raw.oauth2_authorize_url,
                "https://x.com/i/oauth2/authorize",
            ),
            oauth1_authorize_url: self.url(
                &at("oauth1_authorize_url"),
                raw.oauth1_authorize_url,
                "https://api.x.com/oauth/authorize",
            ),
        }
    }

    fn user(&mut self, name: &str, raw: RawUser, apps: &BTreeMap<String, App>) -> Option<User> {
        let at = |key: &str| format!("users.{name}.{key}");
        self.name(&format!("users.{name}"), name);
        if apps.contains_key(name) {
            self.problem(
                format!("users.{name}"),
                format!("the name is already used by apps.{name}: identity names are unique across [apps] and [users]"),
            );
        }
        let app = match raw.app {
            None => {
                self.problem(
                    at("app"),
                    "missing: the name of the App this user acts through",
                );
                None
            }
            Some(a) => match apps.get(&a) {
                Some(app) => Some(app),
                None => {
                    self.problem(at("app"), format!(r#"no App named "{a}" in [apps]"#));
                    None
                }
            },
        };
        let token = self.secret(&at("token"), raw.token);
        let token_secret = self.secret(&at("token_secret"), raw.token_secret);
        let auth = match raw.auth.as_deref() {
            Some("oauth1") => {
                if let Some(app) = app {
                    if app.consumer.is_none() {
                        self.problem(
                            at("auth"),
                            format!(
                                "oauth1 needs apps.{0}.consumer_key and apps.{0}.consumer_secret",
                                app.name
                            ),
                        );
                    }
                }
                if raw.scopes.is_some() {
                    self.problem(at("scopes"), r#"only for auth = "oauth2""#);
                }
                let token = match (token, token_secret) {
                    (Some(t), Some(s)) => Some((t, s)),
                    (None, None) => {
                        self.warn(
                            format!("users.{name}"),
                            format!("no token/token_secret: requests as {name} get 401 credentials-missing until they are set (or stored by `xgate login --identity {name} --oauth1`)"),
                        );
                        None
                    }
                    (t, _) => {
                        let missing = if t.is_none() { "token" } else { "token_secret" };
                        if !self.problems.iter().any(|p| p.path == at(missing)) {
                            self.problem(
                                at(missing),
                                "missing: token and token_secret go together",
                            );
                        }
                        None
                    }
                };
                UserAuth::Oauth1 { token }
            }
            Some("oauth2") => {
                if let Some(app) = app {
                    if app.oauth2.is_none() {
                        self.problem(
                            at("auth"),
                            format!("oauth2 needs apps.{}.oauth2_client_id", app.name),
                        );
                    }
                }
                if token.is_some() || token_secret.is_some() {
                    let key = if token.is_some() {
                        "token"
                    } else {
                        "token_secret"
                    };
                    self.problem(
                        at(key),
                        "oauth2 tokens live in the token store (`xgate login`), not in proxy.toml",
                    );
                }
                let scopes = raw.scopes.unwrap_or_default();
                if scopes.is_empty() {
                    self.problem(
                        at("scopes"),
                        r#"missing: the OAuth 2.0 scopes to request, e.g. ["tweet.read", "users.read", "offline.access"]"#,
                    );
                }
                for s in scopes
                    .iter()
                    .filter(|s| !KNOWN_SCOPES.contains(&s.as_str()))
                {
                    self.warn(at("scopes"), format!(r#""{s}" is not a scope X documents"#));
                }
                if !scopes.is_empty() && !scopes.iter().any(|s| s == "offline.access") {
                    self.warn(
                        at("scopes"),
                        "no offline.access: X issues no refresh token, so the user must log in again every 2 hours",
                    );
                }
                UserAuth::Oauth2 { scopes }
            }
            Some(other) => {
                self.problem(
                    at("auth"),
                    format!(r#"unknown value "{other}": expected "oauth1" or "oauth2""#),
                );
                return None;
            }
            None => {
                self.problem(at("auth"), r#"missing: "oauth1" or "oauth2""#);
                return None;
            }
        };
        Some(User {
            name: name.to_owned(),
            app: app?.name.clone(),
            auth,
        })
    }

    fn clients(
        &mut self,
        raw: Vec<RawClient>,
        apps: &BTreeMap<String, App>,
        users: &BTreeMap<String, User>,
        server: &Server,
    ) -> Vec<Client> {
        if raw.is_empty() {
            self.warn(
                "clients",
                "no [[clients]]: every request will be refused with 401",
            );
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut hashes: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        let mut anonymous: Option<usize> = None;
        let mut out = Vec::with_capacity(raw.len());
        for (i, c) in raw.into_iter().enumerate() {
            let at = |key: &str| format!("clients[{i}].{key}");
            let name = match c.name {
                Some(n) => {
                    self.name(&at("name"), &n);
                    if let Some(j) = names.insert(n.clone(), i) {
                        self.problem(
                            at("name"),
                            format!(r#""{n}" is already the name of clients[{j}]"#),
                        );
                    }
                    n
                }
                None => {
                    self.problem(
                        at("name"),
                        "missing: the client's name, used in logs and metrics",
                    );
                    String::new()
                }
            };
            let auth = match (c.key_sha256, c.anonymous.unwrap_or(false)) {
                (Some(_), true) => {
                    self.problem(
                        format!("clients[{i}]"),
                        "has both key_sha256 and anonymous = true: choose one",
                    );
                    None
                }
                (Some(hex), false) => match parse_sha256_hex(&hex) {
                    Some(hash) => {
                        if let Some(j) = hashes.insert(hash, i) {
                            self.problem(at("key_sha256"), format!("the same key as clients[{j}]"));
                        }
                        Some(ClientAuth::KeySha256(hash))
                    }
                    None => {
                        self.problem(
                            at("key_sha256"),
                            "must be 64 lower-case hex characters: the SHA-256 of the client key (see `xgate key new`)",
                        );
                        None
                    }
                },
                (None, true) => {
                    if let Some(j) = anonymous.replace(i) {
                        self.problem(
                            at("anonymous"),
                            format!(
                                "only one anonymous client is allowed, and clients[{j}] is one"
                            ),
                        );
                    }
                    if !server.listen.ip().is_loopback() {
                        self.warn(
                            format!("clients[{i}]"),
                            format!("anonymous client on non-loopback listener {}: anyone who can reach it acts as its identities", server.listen),
                        );
                    }
                    Some(ClientAuth::Anonymous)
                }
                (None, false) => {
                    self.problem(
                        format!("clients[{i}]"),
                        "needs key_sha256 (make a key with `xgate key new`) or anonymous = true",
                    );
                    None
                }
            };
            let mut identities = c.identities.unwrap_or_default();
            if identities.is_empty() {
                self.problem(
                    at("identities"),
                    "must name at least one identity from [apps] or [users]",
                );
            }
            let mut seen = BTreeSet::new();
            identities.retain(|id| seen.insert(id.clone()));
            for id in &identities {
                if !apps.contains_key(id) && !users.contains_key(id) {
                    self.problem(
                        at("identities"),
                        format!(r#"no identity named "{id}" in [apps] or [users]"#),
                    );
                }
            }
            if let Some(d) = &c.default_identity {
                if !identities.contains(d) {
                    self.problem(
                        at("default_identity"),
                        format!(r#""{d}" is not one of this client's identities"#),
                    );
                }
            }
            let rate = c.rate.and_then(|r| {
                Rate::parse(&r)
                    .map_err(|e| self.problem(at("rate"), e))
                    .ok()
            });
            if let Some(auth) = auth {
                out.push(Client {
                    name,
                    auth,
                    identities,
                    default_identity: c.default_identity,
                    rate,
                });
            }
        }
        out
    }

    fn limits(&mut self, raw: raw::RawLimits) -> Limits {
        let on_exhausted = match raw.on_exhausted.as_deref() {
            None | Some("reject") => OnExhausted::Reject,
            Some("wait") => OnExhausted::Wait,
            Some(other) => {
                self.problem(
                    "limits.on_exhausted",
                    format!(r#"unknown value "{other}": expected "reject" or "wait""#),
                );
                OnExhausted::Reject
            }
        };
        let max_wait = self.duration("limits.max_wait", raw.max_wait, Duration::ZERO, true);
        if on_exhausted == OnExhausted::Wait && max_wait.is_zero() {
            self.warn(
                "limits.max_wait",
                r#"is 0s, so on_exhausted = "wait" never waits"#,
            );
        }
        let usage_cap_cooldown = self.duration(
            "limits.usage_cap_cooldown",
            raw.usage_cap_cooldown,
            Duration::from_secs(300),
            true,
        );
        let mut overrides: Vec<Override> = Vec::new();
        for (i, o) in raw.overrides.into_iter().enumerate() {
            if let Some(o) = self.override_(i, o) {
                let earlier = overrides.iter().map(|p| &p.endpoint);
                if self.unique_endpoint("limits.override", i, &o.endpoint, earlier) {
                    overrides.push(o);
                }
            }
        }
        Limits {
            on_exhausted,
            max_wait,
            usage_cap_cooldown,
            overrides,
        }
    }

    /// An override's `endpoint` at `path`, parsed; `example` shows the shape when missing.
    fn endpoint(
        &mut self,
        path: String,
        value: Option<String>,
        example: &str,
    ) -> Option<EndpointPattern> {
        let Some(e) = value else {
            self.problem(path, format!(r#"missing: e.g. "{example}""#));
            return None;
        };
        EndpointPattern::parse(&e)
            .map_err(|m| self.problem(path, m))
            .ok()
    }

    /// Whether `endpoint`, of `table[i]`, names no endpoint an earlier entry names (by method
    /// and shape); reported when it does.
    fn unique_endpoint<'e>(
        &mut self,
        table: &str,
        i: usize,
        endpoint: &EndpointPattern,
        mut earlier: impl Iterator<Item = &'e EndpointPattern>,
    ) -> bool {
        let same = earlier.position(|p| p.method == endpoint.method && p.shape == endpoint.shape);
        if let Some(j) = same {
            self.problem(
                format!("{table}[{i}].endpoint"),
                format!("{endpoint} is the same endpoint as {table}[{j}]"),
            );
        }
        same.is_none()
    }

    fn override_(&mut self, i: usize, raw: RawOverride) -> Option<Override> {
        let at = |key: &str| format!("limits.override[{i}].{key}");
        let endpoint = self.endpoint(at("endpoint"), raw.endpoint, "GET /2/tweets/:id");
        let mut rates = |key: &str, value: Option<raw::OneOrMany>| -> Vec<Rate> {
            let list = value.map(|v| v.0).unwrap_or_default();
            let mut out: Vec<Rate> = Vec::with_capacity(list.len());
            for s in list {
                match Rate::parse(&s) {
                    Ok(_) if out.len() == MAX_RATES_PER_FIGURE => {
                        self.problem(
                            at(key),
                            format!("at most {MAX_RATES_PER_FIGURE} rates per endpoint"),
                        );
                    }
                    Ok(r) if out.iter().any(|o| o.window == r.window) => {
                        self.problem(at(key), format!("two rates with the same window ({r})"));
                    }
                    Ok(r) => out.push(r),
                    Err(e) => self.problem(at(key), e),
                }
            }
            out
        };
        let had_app = raw.app.is_some();
        let had_user = raw.user.is_some();
        let app = rates("app", raw.app);
        let user = rates("user", raw.user);
        if !had_app && !had_user {
            self.problem(format!("limits.override[{i}]"), "needs app, user or both");
        }
        Some(Override {
            endpoint: endpoint?,
            app,
            user,
        })
    }
}

impl EndpointPattern {
    /// Parses `"GET /2/tweets/:id"` or `"GET /2/tweets/{id}"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (method, path) = s.trim().split_once(' ').ok_or_else(|| {
            format!(r#"invalid endpoint "{s}": expected "METHOD /path", e.g. "GET /2/tweets/:id""#)
        })?;
        let method = method.to_ascii_uppercase();
        if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "DELETE" | "PATCH") {
            return Err(format!(
                r#"invalid endpoint "{s}": method must be GET, POST, PUT, DELETE or PATCH"#
            ));
        }
        let path = path.trim();
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(format!(
                r#"invalid endpoint "{s}": the path must start with "/" and have no query"#
            ));
        }
        let mut docs = String::with_capacity(path.len());
        let mut shape = String::with_capacity(path.len());
        for seg in path.split('/').skip(1) {
            docs.push('/');
            shape.push('/');
            let param = seg
                .strip_prefix(':')
                .or_else(|| seg.strip_prefix('{').and_then(|r| r.strip_suffix('}')));
            match param {
                Some("") => {
                    return Err(format!(
                        r#"invalid endpoint "{s}": a parameter needs a name"#
                    ));
                }
                Some(name) => {
                    docs.push(':');
                    docs.push_str(name);
                    shape.push_str("{}");
                }
                None => {
                    docs.push_str(seg);
                    shape.push_str(seg);
                }
            }
        }
        Ok(Self {
            method,
            path: docs,
            shape,
        })
    }
}

/// Whether a URL's user-info part holds a password (`user:password@`).
pub(super) fn has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority
        .rsplit_once('@')
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

/// `scheme://host[:port][/path]` of `url` without its user-info and query, when its scheme is
/// one of `schemes` and it has a host.
pub(super) fn shown_url(url: &str, schemes: &[&str]) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    let path = tail.split(['?', '#']).next().unwrap_or("");
    Some(format!("{scheme}://{host}{path}"))
}

/// Identity and client names end up in logs and metric labels, so they stay plain: 1 to 64 of
/// `A-Z a-z 0-9 _ . -`, starting with a letter or digit.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// 64 lower-case hex characters → 32 bytes.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
