//! Runs xgate in-process on 127.0.0.1:0 through its library entry point, `server::run`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use xgate::config::Config;
use xgate::server::{Listeners, StartError};

use super::fake_x::{ALICE_SECRET, ALICE_TOKEN, BEARER, CONSUMER_KEY, CONSUMER_SECRET};

/// The client key of the `backend` client in [`config`].
pub const KEY: &str = "xgk_test-backend-key";
/// The client key of the `narrow` client (identity `main` only).
pub const NARROW_KEY: &str = "xgk_test-narrow-key";

pub fn env() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("X_BEARER_TOKEN", BEARER),
        ("X_API_KEY", CONSUMER_KEY),
        ("X_API_SECRET", CONSUMER_SECRET),
        ("ALICE_TOKEN", ALICE_TOKEN),
        ("ALICE_SECRET", ALICE_SECRET),
        ("X_CLIENT_ID", "fake-client-id"),
    ])
}

fn sha(key: &str) -> String {
    xgate::client_key::to_hex(&xgate::client_key::sha256(key))
}

/// A `toml` table of `pairs`.
pub fn table<const N: usize>(pairs: [(&str, toml::Value); N]) -> toml::Table {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// `{ env = "NAME" }`: a secret read from the environment ([`env`]).
fn from_env(name: &str) -> toml::Value {
    toml::Value::Table(table([("env", name.into())]))
}

fn strings(items: &[&str]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| (*s).into()).collect())
}

/// One `[[clients]]` entry.
#[derive(Debug, Clone)]
pub struct TestClient {
    /// Its name.
    pub name: &'static str,
    /// Its key (`None`: an anonymous client).
    pub key: Option<&'static str>,
    /// The identities it may use.
    pub identities: &'static [&'static str],
    /// Its default identity.
    pub default_identity: Option<&'static str>,
    /// Its own share (`rate`).
    pub rate: Option<&'static str>,
}

impl TestClient {
    fn to_table(&self) -> toml::Table {
        let mut t = table([("name", self.name.into())]);
        match self.key {
            Some(key) => t.insert("key_sha256".into(), sha(key).into()),
            None => t.insert("anonymous".into(), true.into()),
        };
        t.insert("identities".into(), strings(self.identities));
        if let Some(d) = self.default_identity {
            t.insert("default_identity".into(), d.into());
        }
        if let Some(r) = self.rate {
            t.insert("rate".into(), r.into());
        }
        t
    }
}

/// The standard test config as typed values: App `main` (Bearer, consumer keys), OAuth 1.0a
/// user `alice`, OAuth 2.0 user `bob` (no stored token), App `bare` (no credentials), clients
/// `backend` (all identities, default main) and `narrow` (main only). The builder methods
/// add to it; [`TestConfig::toml`] renders it with the `toml` crate.
#[derive(Debug, Clone)]
pub struct TestConfig {
    upstream_url: String,
    server: toml::Table,
    upstream: toml::Table,
    clients: Vec<TestClient>,
    limits: toml::Table,
    overrides: Vec<toml::Table>,
    /// Other top-level sections (`[shared]`, `[store]`).
    sections: toml::Table,
}

impl TestConfig {
    /// The standard config, forwarding to `upstream`.
    pub fn new(upstream: &str) -> Self {
        Self {
            upstream_url: upstream.to_owned(),
            server: toml::Table::new(),
            upstream: toml::Table::new(),
            clients: vec![
                TestClient {
                    name: "backend",
                    key: Some(KEY),
                    identities: &["main", "alice", "bob", "bare"],
                    default_identity: Some("main"),
                    rate: None,
                },
                TestClient {
                    name: "narrow",
                    key: Some(NARROW_KEY),
                    identities: &["main"],
                    default_identity: None,
                    rate: None,
                },
            ],
            limits: toml::Table::new(),
            overrides: Vec::new(),
            sections: toml::Table::new(),
        }
    }

    /// Sets `[name] key` of a section the other builders do not cover (`shared`, `store`).
    pub fn section(mut self, name: &str, key: &str, value: impl Into<toml::Value>) -> Self {
        let section = self
            .sections
            .entry(name.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = section {
            t.insert(key.to_owned(), value.into());
        }
        self
    }

    /// Sets the top-level `key` (an array of tables such as `[[budgets]]`).
    pub fn top(mut self, key: &str, value: toml::Value) -> Self {
        self.sections.insert(key.to_owned(), value);
        self
    }

    /// `[shared]` on the Redis at `url`, keys under `prefix`.
    pub fn shared(self, url: &str, prefix: &str) -> Self {
        self.section("shared", "redis_url", url)
            .section("shared", "key_prefix", prefix)
    }

    /// Sets `[server] key`.
    pub fn server(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.server.insert(key.to_owned(), value.into());
        self
    }

    /// Sets `[upstream] key`.
    pub fn upstream(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.upstream.insert(key.to_owned(), value.into());
        self
    }

    /// Sets `[limits] key`.
    pub fn limits(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.limits.insert(key.to_owned(), value.into());
        self
    }

    /// Adds a `[[limits.override]]` (`app` or `user` empty: not set).
    pub fn limit_override(mut self, endpoint: &str, app: &[&str], user: &[&str]) -> Self {
        let mut t = table([("endpoint", endpoint.into())]);
        if !app.is_empty() {
            t.insert("app".into(), strings(app));
        }
        if !user.is_empty() {
            t.insert("user".into(), strings(user));
        }
        self.overrides.push(t);
        self
    }

    /// Adds a client.
    pub fn client(mut self, client: TestClient) -> Self {
        self.clients.push(client);
        self
    }

    /// Gives the `narrow` client its own share.
    pub fn narrow_rate(mut self, rate: &'static str) -> Self {
        if let Some(c) = self.clients.iter_mut().find(|c| c.name == "narrow") {
            c.rate = Some(rate);
        }
        self
    }

    /// The config as `proxy.toml` text.
    pub fn toml(&self) -> String {
        let mut server = table([("listen", "127.0.0.1:0".into())]);
        server.extend(self.server.clone());
        let mut upstream = table([("base_url", self.upstream_url.as_str().into())]);
        upstream.extend(self.upstream.clone());
        let apps = table([
            (
                "main",
                toml::Value::Table(table([
                    ("bearer_token", from_env("X_BEARER_TOKEN")),
                    ("consumer_key", from_env("X_API_KEY")),
                    ("consumer_secret", from_env("X_API_SECRET")),
                    ("oauth2_client_id", from_env("X_CLIENT_ID")),
                ])),
            ),
            (
                "bare",
                toml::Value::Table(table([("oauth2_client_id", from_env("X_CLIENT_ID"))])),
            ),
        ]);
        let users = table([
            (
                "alice",
                toml::Value::Table(table([
                    ("app", "main".into()),
                    ("auth", "oauth1".into()),
                    ("token", from_env("ALICE_TOKEN")),
                    ("token_secret", from_env("ALICE_SECRET")),
                ])),
            ),
            (
                "bob",
                toml::Value::Table(table([
                    ("app", "main".into()),
                    ("auth", "oauth2".into()),
                    (
                        "scopes",
                        strings(&["tweet.read", "users.read", "offline.access"]),
                    ),
                ])),
            ),
        ]);
        let mut doc = table([
            ("server", toml::Value::Table(server)),
            (
                "admin",
                toml::Value::Table(table([("listen", "127.0.0.1:0".into())])),
            ),
            ("upstream", toml::Value::Table(upstream)),
            ("apps", toml::Value::Table(apps)),
            ("users", toml::Value::Table(users)),
            (
                "clients",
                toml::Value::Array(
                    self.clients
                        .iter()
                        .map(|c| toml::Value::Table(c.to_table()))
                        .collect(),
                ),
            ),
        ]);
        let mut limits = self.limits.clone();
        if !self.overrides.is_empty() {
            limits.insert(
                "override".into(),
                toml::Value::Array(
                    self.overrides
                        .iter()
                        .cloned()
                        .map(toml::Value::Table)
                        .collect(),
                ),
            );
        }
        if !limits.is_empty() {
            doc.insert("limits".into(), toml::Value::Table(limits));
        }
        doc.extend(self.sections.clone());
        toml::to_string(&doc).unwrap()
    }
}

/// The standard test config, as `proxy.toml` text.
pub fn config(upstream: &str) -> String {
    TestConfig::new(upstream).toml()
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), StartError>>>,
}

impl Proxy {
    /// Starts a proxy whose relative paths (the token store) are in a directory of its own,
    /// so proxies of tests running side by side never share a store.
    pub async fn start(toml: &str) -> Self {
        Self::start_in(toml, &super::scratch("proxy")).await
    }

    pub async fn start_in(toml: &str, dir: &Path) -> Self {
        super::logs::init();
        let config = Config::from_toml_str(toml, dir, &env()).unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy.local_addr().unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(xgate::server::run(
            Listeners { proxy, admin },
            config,
            async move {
                let _ignored = rx.await;
            },
        ));
        Self {
            addr,
            admin: admin_addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts the shutdown (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ignored = tx.send(());
        }
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(mut self) -> Result<(), StartError> {
        self.begin_shutdown();
        self.task.take().unwrap().await.unwrap()
    }

    /// Waits for `run` to return (after `begin_shutdown`).
    pub async fn join(mut self) -> Result<(), StartError> {
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
