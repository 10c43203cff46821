//! The real engines the shared-state tests run against: the machine's Redis and PostgreSQL
//! (CONTRACT section 10), a Redis of a test's own to kill, and a fresh database per test.
//!
//! Where the machine's engines are: `XGATE_TEST_REDIS_URL` (default
//! `redis://127.0.0.1:6379`) and `XGATE_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, which may create databases). When one does
//! not answer, its tests are skipped with a line on stderr — unless `XGATE_REQUIRE_SHARED=1`
//! (`.ci/run` sets it), which makes that a failure.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Whether the shared-state tests may not skip (`XGATE_REQUIRE_SHARED=1`, set by `.ci/run`).
pub fn required() -> bool {
    std::env::var("XGATE_REQUIRE_SHARED").is_ok_and(|v| v == "1")
}

/// Skips (or, when required, fails) a test whose engine does not answer.
fn unavailable<T>(engine: &str, url: &str, why: &str) -> Option<T> {
    assert!(
        !required(),
        "{engine} at {url} does not answer ({why}) and XGATE_REQUIRE_SHARED=1: start it (see .ci/run)"
    );
    eprintln!(
        "skipped: {engine} at {url} does not answer ({why}); set XGATE_REQUIRE_SHARED=1 to fail instead"
    );
    None
}

/// A name no other test of this run (or a run beside it) uses.
pub fn unique(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{what}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// One `PING` to `url` within 2 s.
pub async fn redis_answers(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let ping = async {
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no answer within 2 s".to_owned()),
    }
}

/// The machine's Redis, if it answers (see the module's rules for when it does not).
pub async fn redis_url() -> Option<String> {
    let url = std::env::var("XGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    match redis_answers(&url).await {
        Ok(()) => Some(url),
        Err(e) => unavailable("Redis", &url, &e),
    }
}

/// Every key under `prefix`, for assertions on the key layout.
pub async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    keys
}

/// The remaining time to live of `key`, in ms (-1: none, -2: no such key).
pub async fn redis_pttl(url: &str, key: &str) -> i64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// `redis-cli --tls --insecure PING` on `port`.
fn tls_answers(port: u16) -> Result<(), String> {
    let out = Command::new("redis-cli")
        .args([
            "--tls",
            "--insecure",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "PING",
        ])
        .output()
        .map_err(|e| format!("cannot run redis-cli: {e}"))?;
    if String::from_utf8_lossy(&out.stdout).trim() == "PONG" {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Redis of a test's own (`redis-server` on a free port, nothing on disk), to kill and
/// start again on the same port.
pub struct OwnRedis {
    pub port: u16,
    /// Extra `redis-server` arguments (a password, TLS).
    args: Vec<String>,
    /// The URL its readiness is checked with.
    check_url: String,
    child: Option<Child>,
}

impl OwnRedis {
    /// Starts one and waits (bounded) until it answers; `None` when `redis-server` is not
    /// installed and the engines are not required.
    pub async fn start() -> Option<Self> {
        let port = free_port();
        Self::start_with(port, Vec::new(), format!("redis://127.0.0.1:{port}")).await
    }

    /// One that wants `password` from the `default` user.
    pub async fn with_password(password: &str) -> Option<Self> {
        let port = free_port();
        let args = vec!["--requirepass".to_owned(), password.to_owned()];
        Self::start_with(port, args, format!("redis://:{password}@127.0.0.1:{port}")).await
    }

    /// One that speaks only TLS, with `cert` and `key` (PEM files).
    pub async fn with_tls(cert: &std::path::Path, key: &std::path::Path) -> Option<Self> {
        let port = free_port();
        let path = |p: &std::path::Path| p.display().to_string();
        let args = vec![
            "--tls-port".to_owned(),
            port.to_string(),
            "--tls-cert-file".to_owned(),
            path(cert),
            "--tls-key-file".to_owned(),
            path(key),
            "--tls-auth-clients".to_owned(),
            "no".to_owned(),
        ];
        // Readiness through redis-cli without verification; xgate's own connection verifies.
        let mut redis = Self {
            port,
            args,
            check_url: String::new(),
            child: None,
        };
        if let Err(e) = redis.spawn(true).await {
            return unavailable("redis-server", "a TLS port of its own", &e);
        }
        Some(redis)
    }

    async fn start_with(port: u16, args: Vec<String>, check_url: String) -> Option<Self> {
        let mut redis = Self {
            port,
            args,
            check_url,
            child: None,
        };
        if let Err(e) = redis.spawn(false).await {
            return unavailable("redis-server", "a port of its own", &e);
        }
        Some(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self, tls: bool) -> Result<(), String> {
        let port = if tls { 0 } else { self.port };
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let mut last = String::new();
        for _ in 0..200 {
            let answered = if tls {
                tls_answers(self.port)
            } else {
                redis_answers(&self.check_url).await
            };
            match answered {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("redis-server did not answer within 5 s: {last}"))
    }

    /// Stops it answering without closing its connections (SIGSTOP): a Redis slower than any
    /// timeout.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Lets a frozen one go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([&format!("-{name}"), &child.id().to_string()])
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ignored = child.kill();
            let _ignored = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.spawn(false).await.unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
    }
}

/// A database of a test's own on the machine's PostgreSQL, dropped at the end.
pub struct Database {
    admin_url: String,
    pub name: String,
    pub url: String,
}

/// `url` with its database replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{db}")
}

async fn admin_client(url: &str) -> Result<tokio_postgres::Client, String> {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, conn) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_elapsed| "no answer within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

impl Database {
    /// A fresh, empty database; `None` when PostgreSQL does not answer and is not required.
    pub async fn create() -> Option<Self> {
        let admin_url = std::env::var("XGATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let client = match admin_client(&admin_url).await {
            Ok(c) => c,
            Err(e) => return unavailable("PostgreSQL", &admin_url, &e),
        };
        let name = unique("xgate_test_");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        Some(Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        })
    }

    /// A client on the test's database, for assertions.
    pub async fn client(&self) -> tokio_postgres::Client {
        admin_client(&self.url).await.unwrap()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Best effort, on a thread of its own (a drop cannot wait on the test's runtime).
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let _ignored = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(client) = admin_client(&admin_url).await {
                    let _ignored = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}
