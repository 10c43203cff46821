//! CONTRACT section 10 rules 3 and 4 against a real PostgreSQL: the token store in a database
//! (schema created at start, `login`, `bearer` and `check` against it, a wrong key), and
//! section 6's refresh rules across replicas — one refresh among all of them, the pair
//! re-read under the lock, a replica killed (`kill -9`) while it holds the lock or right after
//! its refresh, and the rotated pair picked up by the others through LISTEN/NOTIFY. Each test
//! has a database of its own.

use std::path::Path;
use std::time::Duration;

use xgate::config::EngineUrl;
use xgate::secret::SecretString;
use xgate::store::postgres::PostgresStore;
use xgate::store::{StoredToken, TokenKind, TokenStore};

use crate::proxy_oauth2::{
    KEY_B64, SCOPES, WRONG_B64, bearers, binary_config_with_store, browser_login, free_port,
    get_anon, now, pin_login, run, serve,
};
use crate::support::engines::Database;
use crate::support::fake_x::{FakeX, ISSUED_BEARER};
use crate::support::http::get;
use crate::support::proxy::{Proxy, TestConfig, table};
use crate::support::scratch;

fn engine_url(db: &Database) -> EngineUrl {
    EngineUrl {
        url: SecretString::from(db.url.as_str()),
        shown: db.name.clone(),
    }
}

/// The store in `db` (created and migrated), opened as a replica would.
async fn open(db: &Database, key: Option<&xgate::secret::StoreKey>) -> PostgresStore {
    PostgresStore::open(&engine_url(db), key, &xgate::shared::not_observed(), true)
        .await
        .unwrap()
}

/// Puts an OAuth 2.0 pair for bob into `db`.
async fn store_bob(db: &Database, access: &str, refresh: &str, expires_at: u64) {
    let store = open(db, None).await;
    store
        .save(
            "bob",
            &StoredToken::Oauth2 {
                access_token: access.to_owned(),
                refresh_token: Some(refresh.to_owned()),
                expires_at: Some(expires_at),
                scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
        .await
        .unwrap();
}

async fn stored_bob(db: &Database) -> (String, Option<String>) {
    match open(db, None)
        .await
        .load("bob", TokenKind::Oauth2)
        .await
        .unwrap()
    {
        Some(StoredToken::Oauth2 {
            ref access_token,
            ref refresh_token,
            ..
        }) => (access_token.clone(), refresh_token.clone()),
        other => panic!("no OAuth 2.0 token stored for bob: {other:?}"),
    }
}

/// `[store] url = ...` (and `encryption_key`).
fn store_table(db: &Database, key: Option<&str>) -> toml::Table {
    let mut t = table([("url", db.url.as_str().into())]);
    if let Some(key) = key {
        t.insert("encryption_key".into(), key.into());
    }
    t
}

/// `proxy.toml` for the binary in a fresh directory, with its store in `db`.
fn binary_dir(name: &str, fake: &FakeX, db: &Database, key: Option<&str>) -> std::path::PathBuf {
    let dir = scratch(name);
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config_with_store(&fake.base_url(), free_port(), store_table(db, key), false),
    )
    .unwrap();
    dir
}

async fn tables(db: &Database) -> Vec<String> {
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE tablename LIKE 'xgate_%' ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Rule 3: an empty database gets its schema at the first command that writes (and
/// `check`, which changes nothing, creates none); `bearer` stores into it; a second start
/// finds it migrated.
#[tokio::test]
async fn an_empty_database_is_migrated_and_bearer_stores_into_it() {
    let Some(db) = Database::create().await else {
        return;
    };
    let fake = FakeX::start().await;
    let dir = binary_dir("pg-bearer", &fake, &db, None);
    let check = run(&dir, &["check", "--config", "proxy.toml"]).await;
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check
            .stdout
            .contains(&format!("store: postgres://127.0.0.1:5432/{}", db.name)),
        "{check:?}"
    );
    assert!(
        check.stdout.contains("postgres (token store)") && check.stdout.contains("reachable"),
        "{check:?}"
    );
    assert!(tables(&db).await.is_empty(), "check created tables");

    let bearer = run(&dir, &["bearer", "--app", "solo", "--config", "proxy.toml"]).await;
    assert_eq!(bearer.code, 0, "{bearer:?}");
    assert_eq!(bearer.stdout.trim(), "stored Bearer token for solo");
    assert_eq!(
        tables(&db).await,
        [
            "xgate_meta",
            "xgate_spend",
            "xgate_stream_rules",
            "xgate_tokens"
        ]
    );
    let client = db.client().await;
    let version: Vec<u8> = client
        .query_one(
            "SELECT value FROM xgate_meta WHERE key = 'schema_version'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, b"3");
    // Opening it again (a second replica starting) migrates nothing and reads the record.
    let store = open(&db, None).await;
    assert!(matches!(
        store.load("solo", TokenKind::Bearer).await.unwrap(),
        Some(StoredToken::Bearer { ref token }) if token == ISSUED_BEARER
    ));
    // The proxy serves the App with it.
    let toml = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    let proxy = Proxy::start_in(&toml, &dir).await;
    let a = crate::proxy_oauth2::get_anon_path(proxy.addr, "/2/tweets/1", "solo").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        bearers(&fake, "/2/tweets/1"),
        [format!("Bearer {ISSUED_BEARER}")]
    );
}

/// Rule 3: `xgate login` stores into PostgreSQL, and the proxy uses the pair.
#[tokio::test]
async fn login_stores_into_postgres_and_the_proxy_uses_it() {
    let Some(db) = Database::create().await else {
        return;
    };
    let fake = FakeX::start().await;
    let dir = scratch("pg-login");
    let port = free_port();
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config_with_store(&fake.base_url(), port, store_table(&db, None), false),
    )
    .unwrap();
    let (_url, status, rest) = browser_login(&dir, port, &fake).await;
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert_eq!(
        rest.first().map(String::as_str),
        Some("stored token for bob")
    );
    assert_eq!(
        stored_bob(&db).await,
        ("at-1".to_owned(), Some("rt-1".to_owned()))
    );
    let toml = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    let proxy = Proxy::start_in(&toml, &dir).await;
    let a = get_anon(proxy.addr, "bob").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(bearers(&fake, "/2/users/me"), ["Bearer at-1"]);
}

/// Rule 3: `xgate login --oauth1` stores an OAuth 1.0a pair into PostgreSQL, and the proxy
/// signs with it.
#[tokio::test]
async fn oauth1_login_stores_into_postgres_and_the_proxy_signs_with_it() {
    let Some(db) = Database::create().await else {
        return;
    };
    let fake = FakeX::start().await;
    let dir = binary_dir("pg-login-oauth1", &fake, &db, None);
    let (code, stdout, stderr) = pin_login(&dir).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("stored token for carol"), "{stdout}");
    assert!(matches!(
        open(&db, None)
            .await
            .load("carol", TokenKind::Oauth1)
            .await
            .unwrap(),
        Some(StoredToken::Oauth1 { .. })
    ));
    let toml = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    let proxy = Proxy::start_in(&toml, &dir).await;
    let a = crate::proxy_oauth2::get_anon_path(proxy.addr, "/2/users/me", "carol").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(matches!(
        fake.requests_to("/2/users/me")[0].auth,
        crate::support::fake_x::Auth::Oauth1 { valid: true, .. }
    ));
}

/// Rule 3: a wrong `store.encryption_key` is a clear error (exit 2), never garbage.
#[tokio::test]
async fn a_wrong_encryption_key_is_refused_with_exit_2() {
    let Some(db) = Database::create().await else {
        return;
    };
    let fake = FakeX::start().await;
    let dir = binary_dir("pg-key", &fake, &db, Some(KEY_B64));
    let bearer = run(&dir, &["bearer", "--app", "solo", "--config", "proxy.toml"]).await;
    assert_eq!(bearer.code, 0, "{bearer:?}");
    // Sealed at rest: the token is not in the database in the clear.
    let client = db.client().await;
    let data: Vec<u8> = client
        .query_one("SELECT data FROM xgate_tokens WHERE identity = 'solo'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!String::from_utf8_lossy(&data).contains(ISSUED_BEARER));
    let wrong = binary_dir("pg-key-wrong", &fake, &db, Some(WRONG_B64));
    for args in [
        &["check", "--config", "proxy.toml"][..],
        &["serve", "--config", "proxy.toml"],
    ] {
        let r = run(&wrong, args).await;
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("wrong key"), "{args:?}: {r:?}");
    }
    let none = binary_dir("pg-key-none", &fake, &db, None);
    let r = run(&none, &["check", "--config", "proxy.toml"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("set store.encryption_key"), "{r:?}");
}

/// Rule 4: `check` reports a configured engine that does not answer, exits 2, and never
/// prints the URL's password.
#[tokio::test]
async fn check_reports_unreachable_engines_with_exit_2_and_no_password() {
    let fake = FakeX::start().await;
    let dir = scratch("pg-unreachable");
    let dead = free_port();
    let mut store = table([(
        "url",
        format!("postgres://xgate:pg-sekrit@127.0.0.1:{dead}/xgate").into(),
    )]);
    store.insert("encryption_key".into(), KEY_B64.into());
    let mut toml: toml::Table = toml::from_str(&binary_config_with_store(
        &fake.base_url(),
        free_port(),
        store,
        false,
    ))
    .unwrap();
    toml.insert(
        "shared".into(),
        toml::Value::Table(table([
            (
                "redis_url",
                format!("redis://default:redis-sekrit@127.0.0.1:{dead}").into(),
            ),
            ("timeout", "300ms".into()),
        ])),
    );
    std::fs::write(dir.join("proxy.toml"), toml::to_string(&toml).unwrap()).unwrap();
    let r = run(&dir, &["check", "--config", "proxy.toml"]).await;
    assert_eq!(r.code, 2, "{r:?}");
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(!all.contains("sekrit"), "a password was printed: {all}");
    assert!(
        r.stdout.contains(&format!(
            "redis (shared buckets)   redis://127.0.0.1:{dead}  UNREACHABLE"
        )),
        "{all}"
    );
    assert!(
        r.stdout.contains(&format!(
            "postgres (token store)   postgres://127.0.0.1:{dead}/xgate  UNREACHABLE"
        )),
        "{all}"
    );
}

/// Section 6 across replicas: three replicas, sixty requests at once on an expired token,
/// exactly one refresh at X; every request goes with the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_sixty_requests_on_an_expired_token_make_one_refresh() {
    let Some(db) = Database::create().await else {
        return;
    };
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    // A slow token endpoint, so every replica asks while the refresh is in flight.
    fake.oauth_trouble(0, Duration::from_millis(300));
    store_bob(&db, "at-old", "rt-old", now() - 10).await;
    let toml = TestConfig::new(&fake.base_url())
        .section("store", "url", db.url.as_str())
        .toml();
    let replicas = in_process(&toml, 3).await;
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let addr = replicas[i % 3].addr;
            tokio::spawn(async move { get(addr, "/2/users/me", Some("bob")).await })
        })
        .collect();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(
        fake.oauth_calls().0,
        1,
        "more than one refresh among the replicas"
    );
    assert_eq!(fake.oauth_refresh_reuse(), 0);
    let seen = bearers(&fake, "/2/users/me");
    assert_eq!(seen.len(), 60);
    assert!(seen.iter().all(|b| b == "Bearer at-1"), "{seen:?}");
    assert_eq!(
        stored_bob(&db).await,
        ("at-1".to_owned(), Some("rt-1".to_owned()))
    );
}

/// A pair another process stored (a new login, another replica's refresh) reaches every
/// replica through LISTEN/NOTIFY: they stop sending the old access token without refreshing.
#[tokio::test]
async fn a_pair_stored_elsewhere_reaches_every_replica_without_a_refresh() {
    let Some(db) = Database::create().await else {
        return;
    };
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    fake.oauth_issue("at-new", "rt-new");
    store_bob(&db, "at-old", "rt-old", now() + 7200).await;
    let toml = TestConfig::new(&fake.base_url())
        .section("store", "url", db.url.as_str())
        .toml();
    let replicas = in_process(&toml, 3).await;
    for r in &replicas {
        assert_eq!(get(r.addr, "/2/users/me", Some("bob")).await.status, 200);
    }
    assert!(
        bearers(&fake, "/2/users/me")
            .iter()
            .all(|b| b == "Bearer at-old")
    );
    store_bob(&db, "at-new", "rt-new", now() + 7200).await;
    for (i, r) in replicas.iter().enumerate() {
        let mut adopted = false;
        for _ in 0..200 {
            let before = bearers(&fake, "/2/users/me").len();
            assert_eq!(get(r.addr, "/2/users/me", Some("bob")).await.status, 200);
            if bearers(&fake, "/2/users/me")
                .get(before)
                .map(String::as_str)
                == Some("Bearer at-new")
            {
                adopted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(adopted, "replica {i} kept the old access token");
    }
    assert_eq!(
        fake.oauth_calls().0,
        0,
        "a replica refreshed instead of adopting"
    );
}

/// Starts `n` replicas of `toml` in this process.
async fn in_process(toml: &str, n: usize) -> Vec<Proxy> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Proxy::start(toml).await);
    }
    out
}

/// Starts `n` binaries serving from `dir`.
async fn binaries(dir: &Path, n: usize) -> Vec<(std::process::Child, std::net::SocketAddr)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (child, addr, _stderr) = serve(dir).await;
        out.push((child, addr));
    }
    out
}

fn kill(child: &mut std::process::Child) {
    child.kill().unwrap();
    let _status = child.wait();
}

/// Three binaries on `db` with bob's token expired and X's refresh taking `delay`, and the
/// first replica's request started: it holds the refresh lock once this returns (X has seen
/// its refresh call).
async fn refresh_in_flight(
    db: &Database,
    name: &str,
    delay: Duration,
) -> (
    FakeX,
    std::path::PathBuf,
    Vec<(std::process::Child, std::net::SocketAddr)>,
    tokio::task::JoinHandle<crate::support::http::Answer>,
) {
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    fake.oauth_trouble(0, delay);
    store_bob(db, "at-old", "rt-old", now() - 10).await;
    let dir = binary_dir(name, &fake, db, None);
    let replicas = binaries(&dir, 3).await;
    let holder = replicas[0].1;
    let first = tokio::spawn(async move { get_anon(holder, "bob").await });
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.oauth_calls().0 == 1)
            .await,
        "the refresh never reached X"
    );
    (fake, dir, replicas, first)
}

/// The replica holding the refresh lock is killed (`kill -9`) while X is answering it: the
/// lock goes with its connection, another replica refreshes (the pair re-read under the lock),
/// no refresh token is ever sent twice, and bob works after every replica restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_holding_the_refresh_lock_loses_nothing() {
    let Some(db) = Database::create().await else {
        return;
    };
    // The first replica starts the refresh and holds the lock while X takes its time.
    let (fake, dir, mut replicas, first) =
        refresh_in_flight(&db, "pg-kill-holder", Duration::from_millis(1500)).await;
    let waiters: Vec<_> = replicas[1..]
        .iter()
        .map(|&(_, addr)| tokio::spawn(async move { get_anon(addr, "bob").await }))
        .collect();
    kill(&mut replicas[0].0);
    first.abort();
    for w in waiters {
        let a = w.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(
        fake.oauth_refresh_reuse(),
        0,
        "a refresh token was sent twice"
    );
    // The killed replica's call never completed at X (its connection went with it), so one
    // more refresh was needed, and only one.
    assert_eq!(fake.oauth_calls().0, 2);
    let (access, _) = stored_bob(&db).await;
    assert_eq!(access, "at-1");
    for (child, _) in &mut replicas[1..] {
        kill(child);
    }
    // Every replica restarts: bob still works, with the stored pair, no refresh.
    let mut restarted = binaries(&dir, 3).await;
    for &(_, addr) in &restarted {
        let a = get_anon(addr, "bob").await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(fake.oauth_calls().0, 2);
    assert!(
        bearers(&fake, "/2/users/me")
            .iter()
            .all(|b| b == "Bearer at-1")
    );
    for (child, _) in &mut restarted {
        kill(child);
    }
}

/// The replica that refreshed is killed right after: the others, waiting on the lock or
/// not, use the pair it committed; no second refresh, no reuse, and bob works after every
/// replica restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_right_after_its_refresh_loses_nothing() {
    let Some(db) = Database::create().await else {
        return;
    };
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    store_bob(&db, "at-old", "rt-old", now() - 10).await;
    let dir = binary_dir("pg-kill-after", &fake, &db, None);
    let mut replicas = binaries(&dir, 3).await;
    let a = get_anon(replicas[0].1, "bob").await;
    assert_eq!(a.status, 200, "{}", a.text());
    kill(&mut replicas[0].0);
    for &(_, addr) in &replicas[1..] {
        let a = get_anon(addr, "bob").await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(fake.oauth_calls().0, 1);
    assert_eq!(fake.oauth_refresh_reuse(), 0);
    for (child, _) in &mut replicas[1..] {
        kill(child);
    }
    let mut restarted = binaries(&dir, 3).await;
    for &(_, addr) in &restarted {
        assert_eq!(get_anon(addr, "bob").await.status, 200);
    }
    assert_eq!(fake.oauth_calls().0, 1);
    assert!(
        bearers(&fake, "/2/users/me")
            .iter()
            .all(|b| b == "Bearer at-1")
    );
    for (child, _) in &mut restarted {
        kill(child);
    }
}

/// Rule 3: TLS to PostgreSQL with rustls when the URL asks for it: with `sslmode=require` the
/// server's certificate is verified (against `sslrootcert`, here the machine's self-signed
/// `localhost` certificate that its PostgreSQL serves), every connection of the store is
/// encrypted, and a server the roots do not vouch for is refused.
#[tokio::test]
async fn sslmode_require_connects_over_verified_tls() {
    let Some(db) = Database::create().await else {
        return;
    };
    let cert = Path::new("/etc/ssl/certs/ssl-cert-snakeoil.pem");
    let client = db.client().await;
    let ssl: String = client.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    if ssl != "on" || !cert.exists() {
        eprintln!(
            "skipped: this PostgreSQL serves no TLS with {}",
            cert.display()
        );
        return;
    }
    let local = db.url.replace("@127.0.0.1:", "@localhost:");
    let open_at = |url: String| async move {
        let url = EngineUrl {
            url: SecretString::from(url.as_str()),
            shown: "test".to_owned(),
        };
        PostgresStore::open(&url, None, &xgate::shared::not_observed(), true).await
    };
    let store = open_at(format!(
        "{local}?sslmode=require&sslrootcert={}",
        cert.display()
    ))
    .await
    .unwrap();
    store
        .save("solo", &StoredToken::Bearer { token: "t".into() })
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = $1 AND a.application_name = 'xgate'",
            &[&db.name],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "the store holds no connection");
    assert!(
        rows.iter().all(|r| r.get::<_, bool>(0)),
        "a connection is not encrypted"
    );
    // The same server, verified against the Mozilla roots instead: refused.
    let e = open_at(format!("{local}?sslmode=require"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("TLS") || e.to_string().contains("certificate"),
        "{e}"
    );
}

/// A replica killed while it waits for another replica's refresh of the same identity: the
/// refresh goes on, the last replica adopts its pair, one refresh in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_while_it_waits_for_the_lock_changes_nothing() {
    let Some(db) = Database::create().await else {
        return;
    };
    // The first replica starts the refresh and holds the lock while X takes its time.
    let (fake, _dir, mut replicas, first) =
        refresh_in_flight(&db, "pg-kill-waiter", Duration::from_millis(1000)).await;
    // Two replicas now wait on the lock; one of them dies waiting.
    let doomed = replicas[1].1;
    let _lost = tokio::spawn(async move { get_anon(doomed, "bob").await });
    let last = replicas[2].1;
    let waiter = tokio::spawn(async move { get_anon(last, "bob").await });
    // Both are waiting in PostgreSQL for the holder's lock before one is killed.
    let client = db.client().await;
    let mut waiting = 0;
    for _ in 0..500 {
        waiting = client
            .query_one(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                 WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = $1",
                &[&db.name],
            )
            .await
            .unwrap()
            .get::<_, i64>(0);
        if waiting == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(waiting, 2, "the two replicas never waited on the lock");
    kill(&mut replicas[1].0);
    for t in [first, waiter] {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(fake.oauth_calls().0, 1);
    assert_eq!(fake.oauth_refresh_reuse(), 0);
    assert!(
        bearers(&fake, "/2/users/me")
            .iter()
            .all(|b| b == "Bearer at-1")
    );
    for i in [0, 2] {
        kill(&mut replicas[i].0);
    }
}

/// CONTRACT section 11 rule 4 on PostgreSQL: spend rows add up per day, client, identity and
/// endpoint (as several replicas write them), and are read back by day range.
#[tokio::test]
async fn spend_rows_add_up_in_the_shared_store() {
    let Some(db) = Database::create().await else {
        return;
    };
    let store = open(&db, None).await;
    let row = |day: &str, client: &str, micros: u64| xgate::store::SpendRow {
        day: day.to_owned(),
        client: client.to_owned(),
        identity: "main".to_owned(),
        endpoint: "GET /2/tweets/:id".to_owned(),
        requests: 1,
        resources: 2,
        repeats: 1,
        posts: 1,
        micros,
    };
    // Two replicas' flushes of the same day and key, and other keys.
    store
        .add_spend(&[
            row("2026-12-01", "backend", 5_000),
            row("2026-12-02", "backend", 7),
        ])
        .await
        .unwrap();
    store
        .add_spend(&[
            row("2026-12-01", "backend", 10_000),
            row("2026-12-01", "other", 1),
        ])
        .await
        .unwrap();
    let rows = store.spend("2026-12-01", "2026-12-01").await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let backend = rows.iter().find(|r| r.client == "backend").unwrap();
    assert_eq!(
        (
            backend.requests,
            backend.resources,
            backend.repeats,
            backend.posts,
            backend.micros
        ),
        (2, 4, 2, 2, 15_000)
    );
    assert_eq!(
        store.spend("2026-12-02", "2026-12-31").await.unwrap().len(),
        1
    );
    assert!(
        store
            .spend("2026-11-01", "2026-11-30")
            .await
            .unwrap()
            .is_empty()
    );
    store.save_meta("x_user_id:alice", "42").await.unwrap();
    assert_eq!(
        store.load_meta("x_user_id:alice").await.unwrap().as_deref(),
        Some("42")
    );
}
