//! `proxy.toml` → a validated [`Config`] (CONTRACT section 2).
//!
//! Owns the configuration model. Loading is two-stage (ripgrep's low/high args, STYLE habit 9):
//! [`raw`] parses the file into serde structs, [`validate`] checks the whole graph and resolves
//! every secret into typed values. Every problem is reported, one [`Problem`] each with its key
//! path; a valid config can still carry warnings. Relative paths are resolved against the
//! config file's directory. The environment is injected ([`Env`]) so tests never set variables.

mod raw;
pub mod units;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use units::{Rate, figure, format_duration, format_usd, parse_duration, parse_usd};
pub use validate::{is_valid_name, parse_sha256_hex};

use crate::secret::{SecretString, StoreKey};

/// One problem (or warning) found in the config, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `apps.main.consumer_secret`, `clients[1].rate`.
    pub path: String,
    /// What is wrong, never containing a secret value.
    pub message: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem that made a config invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One entry per problem, in file order as far as possible.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Where `{ env = "NAME" }` secrets are read from.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The file it was read from, when it was read from one.
    pub source: Option<PathBuf>,
    /// `[server]`: the proxy listener.
    pub server: Server,
    /// `[admin]`: the admin listener.
    pub admin: Admin,
    /// `[upstream]`: where requests go.
    pub upstream: Upstream,
    /// `[store]`: the token store.
    pub store: Store,
    /// `[shared]`: the Redis several replicas share their buckets through, when set.
    pub shared: Option<Shared>,
    /// `[apps.*]`, by name.
    pub apps: BTreeMap<String, App>,
    /// `[users.*]`, by name.
    pub users: BTreeMap<String, User>,
    /// `[[clients]]`, in file order.
    pub clients: Vec<Client>,
    /// `[limits]`.
    pub limits: Limits,
    /// `[costs]`.
    pub costs: Costs,
    /// `[[budgets]]`, in file order.
    pub budgets: Vec<Budget>,
    /// `[streams]`.
    pub streams: Streams,
    /// Things that work but deserve the operator's attention (`xgate check` prints them).
    pub warnings: Vec<Problem>,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// Proxy listener address.
    pub listen: SocketAddr,
    /// Inbound TLS, when set.
    pub tls: Option<TlsFiles>,
    /// Larger request bodies get 413.
    pub max_body_bytes: u64,
    /// Larger request heads get 431 (at least 8192, hyper's smallest read buffer).
    pub max_header_bytes: usize,
    /// Further connections wait in the accept queue.
    pub max_connections: usize,
    /// Worker threads serving connections, each with its own runtime and upstream pool
    /// (default: the CPUs this process may use).
    pub workers: usize,
    /// A client that sends its request head slower than this is dropped.
    pub header_read_timeout: Duration,
    /// Idle client connection between requests.
    pub keepalive_timeout: Duration,
    /// Inbound TLS handshake limit.
    pub tls_handshake_timeout: Duration,
    /// HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
    /// Time until upstream's response head.
    pub request_timeout: Duration,
    /// After the head: a body with no bytes for this long is closed.
    pub idle_timeout: Duration,
    /// Time in-flight requests get after SIGTERM.
    pub shutdown_grace: Duration,
}

/// Certificate chain and key files for inbound TLS (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct Admin {
    /// `/metrics`, `/healthz`, `/readyz`.
    pub listen: SocketAddr,
}

/// `[upstream]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `scheme://authority` of the X API (no path, no query).
    pub base_url: http::Uri,
    /// Extra trusted roots (PEM).
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS connect limit.
    pub connect_timeout: Duration,
    /// Pooled connections idle longer are closed.
    pub pool_idle_timeout: Duration,
    /// Pool size per host.
    pub pool_max_idle_per_host: usize,
    /// Only paths under these are forwarded.
    pub allowed_prefixes: Vec<String>,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct Store {
    /// Where the tokens live.
    pub location: StoreLocation,
    /// Encrypts tokens at rest when set.
    pub encryption_key: Option<StoreKey>,
}

/// Where `[store]` keeps tokens: `path` or `url`.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// `store.path`: the embedded SQLite file, created on first use (never by `xgate check`).
    File(PathBuf),
    /// `store.url`: a PostgreSQL database shared by replicas.
    Postgres(EngineUrl),
}

/// The URL of a shared engine (`shared.redis_url`, `store.url`): a secret, since it may hold a
/// password, with the part that is safe to print beside it.
#[derive(Debug, Clone)]
pub struct EngineUrl {
    /// The whole URL, as given.
    pub url: SecretString,
    /// `scheme://host:port/path`, without user, password or query: for logs and `xgate check`.
    pub shown: String,
}

/// A PostgreSQL URL without its `sslrootcert=PATH` parameter (libpq's, which tokio-postgres
/// does not take), and that path: the PEM roots TLS to the database is verified against,
/// instead of the Mozilla roots.
pub fn postgres_url_parts(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some(("sslrootcert", path)) => {
                root = Some(PathBuf::from(percent_decoded(path)));
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, root)
}

/// `%XX` escapes decoded (a path in a URL query); anything malformed is kept as written.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `[shared]`.
#[derive(Debug, Clone)]
pub struct Shared {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub redis: EngineUrl,
    /// Every key xgate writes starts with this.
    pub key_prefix: String,
    /// What a request gets while Redis does not answer.
    pub on_failure: OnFailure,
    /// One Redis operation; past it, it has failed.
    pub timeout: Duration,
}

/// `shared.on_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Each replica falls back to its own in-memory buckets.
    Local,
    /// Requests that need a bucket get 503 `shared-state-unavailable`.
    Refuse,
}

/// `[apps.NAME]`: an X App; as an identity it means app-only Bearer auth.
#[derive(Debug, Clone)]
pub struct App {
    /// The identity name.
    pub name: String,
    /// API key and secret (OAuth 1.0a consumer credentials), when configured.
    pub consumer: Option<ConsumerKeys>,
    /// App-only Bearer token, when configured (else obtained by `xgate bearer`).
    pub bearer_token: Option<SecretString>,
    /// OAuth 2.0 client, needed by `auth = "oauth2"` users.
    pub oauth2: Option<Oauth2Client>,
    /// Where X redirects after an OAuth 2.0 authorisation.
    pub oauth2_redirect_uri: http::Uri,
    /// X's OAuth 2.0 authorize page.
    pub oauth2_authorize_url: http::Uri,
    /// X's OAuth 1.0a authorize page.
    pub oauth1_authorize_url: http::Uri,
}

/// An App's consumer key and secret.
#[derive(Debug, Clone)]
pub struct ConsumerKeys {
    /// `oauth_consumer_key`.
    pub key: SecretString,
    /// Consumer secret (signing key, first half).
    pub secret: SecretString,
}

/// An App's OAuth 2.0 client credentials.
#[derive(Debug, Clone)]
pub struct Oauth2Client {
    /// Client ID.
    pub client_id: SecretString,
    /// Client secret: confidential clients only.
    pub client_secret: Option<SecretString>,
}

/// `[users.NAME]`: a user of an App.
#[derive(Debug, Clone)]
pub struct User {
    /// The identity name.
    pub name: String,
    /// The App it acts through.
    pub app: String,
    /// How its requests are authorised.
    pub auth: UserAuth,
}

/// How a user identity is authorised.
#[derive(Debug, Clone)]
pub enum UserAuth {
    /// OAuth 1.0a; the token pair from proxy.toml, or later from the store.
    Oauth1 {
        /// Access token and token secret, when configured.
        token: Option<(SecretString, SecretString)>,
    },
    /// OAuth 2.0 user tokens from the store.
    Oauth2 {
        /// Scopes requested at login.
        scopes: Vec<String>,
    },
}

/// What an identity name refers to.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// App-only.
    App(&'a App),
    /// User context.
    User(&'a User),
}

/// How a client is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// By its key's SHA-256.
    KeySha256([u8; 32]),
    /// Requests that carry no client key.
    Anonymous,
}

/// `[[clients]]`: who may use the proxy, and as whom.
#[derive(Debug, Clone)]
pub struct Client {
    /// Name in logs and metrics.
    pub name: String,
    /// How it is recognised.
    pub auth: ClientAuth,
    /// Identities it may act as.
    pub identities: Vec<String>,
    /// The identity used when a request names none.
    pub default_identity: Option<String>,
    /// Its own smoothing rate, on top of X's buckets.
    pub rate: Option<Rate>,
}

/// `limits.on_exhausted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    /// Answer 429 at once.
    Reject,
    /// Hold the request up to `max_wait`.
    Wait,
}

/// `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// What to do when a bucket is empty.
    pub on_exhausted: OnExhausted,
    /// How long `wait` may hold a request.
    pub max_wait: Duration,
    /// How long an App stays blocked after a `usage-capped` answer.
    pub usage_cap_cooldown: Duration,
    /// `[[limits.override]]`, in file order.
    pub overrides: Vec<Override>,
}

/// Most rates one `app` or `user` list of an override may hold.
pub const MAX_RATES_PER_FIGURE: usize = 4;

/// `[[limits.override]]`: replaces the built-in figures of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Method and path pattern.
    pub endpoint: EndpointPattern,
    /// Per-App rates (empty: keep the catalogue's).
    pub app: Vec<Rate>,
    /// Per-user rates (empty: keep the catalogue's).
    pub user: Vec<Rate>,
}

/// `METHOD /2/path/:param` (or `{param}`), compared by shape, not parameter names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPattern {
    /// Upper-case method.
    pub method: String,
    /// The path with every parameter segment written `:param` in docs style, as written by
    /// the user otherwise.
    pub path: String,
    /// The path with each parameter segment replaced by `{}`: what matching compares.
    pub shape: String,
}

/// `[streams]` (CONTRACT section 12).
#[derive(Debug, Clone)]
pub struct Streams {
    /// Consumers per App and streaming endpoint; more get 429.
    pub max_consumers: usize,
    /// A consumer this many bytes behind is disconnected.
    pub consumer_buffer_bytes: usize,
    /// The upstream connection is kept this long after its last consumer left.
    pub linger: Duration,
    /// Filtered-stream rules per App at X (X's pay-per-use limit: 1,000).
    pub max_rules: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            max_consumers: 1000,
            consumer_buffer_bytes: 4 << 20,
            linger: Duration::from_secs(30),
            max_rules: 1000,
        }
    }
}

/// `[costs]` (CONTRACT section 11).
#[derive(Debug, Clone, Default)]
pub struct Costs {
    /// User identities that own their App: X's Owned Reads price on their own lists.
    pub owned_reads: Vec<String>,
    /// `[[costs.override]]`, in file order.
    pub overrides: Vec<CostOverride>,
    /// Resource ids remembered per App and UTC day for deduplication; past it, ids are
    /// metered as new.
    pub dedup_max_ids: usize,
}

/// The default of `costs.dedup_max_ids`.
pub const DEDUP_MAX_IDS: usize = 2_000_000;

/// How an override prices its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceUnit {
    /// `per_resource`.
    PerResource,
    /// `per_request`.
    PerRequest,
}

/// `[[costs.override]]`: replaces the built-in price of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CostOverride {
    /// Method and path pattern.
    pub endpoint: EndpointPattern,
    /// Per resource or per request.
    pub unit: PriceUnit,
    /// The price, micro-USD.
    pub micros: u64,
}

/// What a budget covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetScope {
    /// Every request of this client.
    Client(String),
    /// Every request acting as this identity.
    Identity(String),
    /// Every request of this App's identities (the App itself and its users).
    App(String),
}

/// A budget's period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// `/1d`: a UTC day.
    Day,
    /// `/1mo`: a calendar month.
    Month,
}

/// `[[budgets]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Its name, in metrics and problems.
    pub name: String,
    /// What it covers.
    pub scope: BudgetScope,
    /// The most it may spend per period, micro-USD.
    pub limit_micros: u64,
    /// Per UTC day or calendar month.
    pub period: Period,
}

impl fmt::Display for EndpointPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

impl Config {
    /// Reads and validates the file at `path`, resolving secrets from `env`.
    pub fn load(path: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![Problem::new(
                path.display().to_string(),
                format!("cannot read the config file: {e}"),
            )],
        })?;
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut config = Self::from_toml_str(&text, &base_dir, env)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Validates config text; relative paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Self, ConfigError> {
        validate::validate(text, base_dir, env)
    }

    /// Looks up an identity by name.
    pub fn identity(&self, name: &str) -> Option<Identity<'_>> {
        self.apps
            .get(name)
            .map(Identity::App)
            .or_else(|| self.users.get(name).map(Identity::User))
    }
}

#[cfg(test)]
mod tests;
