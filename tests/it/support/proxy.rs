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

/// The standard test config: App `main` (Bearer, consumer keys), OAuth 1.0a user `alice`,
/// OAuth 2.0 user `bob` (no stored token), App `bare` (no credentials), clients `backend`
/// (all identities, default main) and `narrow` (main only). `extra` is spliced in by section.
pub fn config(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{extra_server}
[admin]
listen = "127.0.0.1:0"
[upstream]
base_url = "{upstream}"
{extra_upstream}
[apps.main]
bearer_token = {{ env = "X_BEARER_TOKEN" }}
consumer_key = {{ env = "X_API_KEY" }}
consumer_secret = {{ env = "X_API_SECRET" }}
oauth2_client_id = {{ env = "X_CLIENT_ID" }}
[apps.bare]
oauth2_client_id = {{ env = "X_CLIENT_ID" }}
[users.alice]
app = "main"
auth = "oauth1"
token = {{ env = "ALICE_TOKEN" }}
token_secret = {{ env = "ALICE_SECRET" }}
[users.bob]
app = "main"
auth = "oauth2"
scopes = ["tweet.read", "users.read", "offline.access"]
[[clients]]
name = "backend"
key_sha256 = "{backend}"
identities = ["main", "alice", "bob", "bare"]
default_identity = "main"
[[clients]]
name = "narrow"
key_sha256 = "{narrow}"
identities = ["main"]
{extra_clients}
{extra_limits}
"#,
        extra_server = section(extra, "server"),
        extra_upstream = section(extra, "upstream"),
        extra_clients = section(extra, "clients"),
        extra_limits = section(extra, "limits"),
        backend = sha(KEY),
        narrow = sha(NARROW_KEY),
    )
}

/// Lines of `extra` after a `#server` / `#upstream` / `#clients` / `#limits` marker line
/// (`#clients` lines continue the last client, `narrow`; `#limits` lines end the file).
fn section(extra: &str, name: &str) -> String {
    let mut out = String::new();
    let mut on = false;
    for line in extra.lines() {
        if let Some(m) = line.trim().strip_prefix('#') {
            on = m == name;
            continue;
        }
        if on {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
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
