//! CONTRACT section 6 (OAuth 2.0 user tokens), the token store, `xgate login` and
//! `xgate bearer`, against FakeX's token endpoints (rotating single-use refresh tokens).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use xgate::store::{SqliteStore, StoredToken, TokenKind};

use crate::support::fake_x::{FakeX, ISSUED_BEARER, PIN, REQUEST_TOKEN, Reply};
use crate::support::http::{Answer, get, request, send};
use crate::support::proxy::{Proxy, config, table};
use crate::support::{scratch, xgate};

pub(crate) const SCOPES: [&str; 3] = ["tweet.read", "users.read", "offline.access"];

pub(crate) fn now() -> u64 {
    xgate::clock::Clock::unix_seconds(&xgate::clock::SystemClock)
}

/// Puts an OAuth 2.0 pair for bob into the store of `dir` (`xgate.db`, the default path).
fn store_bob(dir: &Path, access: &str, refresh: Option<&str>, expires_at: u64, scopes: &[&str]) {
    let store = SqliteStore::open(&dir.join("xgate.db"), None).unwrap();
    store
        .save_blocking(
            "bob",
            &StoredToken::Oauth2 {
                access_token: access.to_owned(),
                refresh_token: refresh.map(str::to_owned),
                expires_at: Some(expires_at),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
        .unwrap();
}

fn stored_bob(dir: &Path) -> (String, Option<String>) {
    let store = SqliteStore::open(&dir.join("xgate.db"), None).unwrap();
    match store.load_blocking("bob", TokenKind::Oauth2).unwrap() {
        Some(StoredToken::Oauth2 {
            ref access_token,
            ref refresh_token,
            ..
        }) => (access_token.clone(), refresh_token.clone()),
        other => panic!("no OAuth 2.0 token stored for bob: {other:?}"),
    }
}

/// Waits (at most 10 s, polling the store) until bob's stored access token is `access`: a
/// background refresh writes it from its own task.
async fn wait_for_stored(dir: &Path, access: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stored_bob(dir).0 != access && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `Authorization` values upstream saw on `path`, in order.
pub(crate) fn bearers(fake: &FakeX, path: &str) -> Vec<String> {
    fake.requests_to(path)
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect()
}

async fn start(fake: &FakeX, dir: &Path) -> Proxy {
    Proxy::start_in(&config(&fake.base_url()), dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_requests_on_an_expired_token_make_one_refresh_and_all_succeed() {
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    // A slow token endpoint, so every request arrives while the refresh is in flight.
    fake.oauth_trouble(0, Duration::from_millis(300));
    let dir = scratch("oauth-fifty");
    store_bob(&dir, "at-old", Some("rt-old"), now() - 10, &SCOPES);
    let proxy = start(&fake, &dir).await;
    let addr = proxy.addr;
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { get(addr, "/2/users/me", Some("bob")).await }))
        .collect();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    assert_eq!(fake.oauth_calls().0, 1, "more than one refresh");
    let seen = bearers(&fake, "/2/users/me");
    assert_eq!(seen.len(), 50);
    assert!(seen.iter().all(|b| b == "Bearer at-1"), "{seen:?}");
    // The rotated pair is in the store; the public client sent its id in the body.
    assert_eq!(
        stored_bob(&dir),
        ("at-1".to_owned(), Some("rt-1".to_owned()))
    );
    assert_eq!(
        fake.oauth_client_auth().as_deref(),
        Some("body:fake-client-id")
    );
}

#[tokio::test]
async fn a_token_close_to_expiry_is_refreshed_in_the_background() {
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    let dir = scratch("oauth-ahead");
    store_bob(&dir, "at-old", Some("rt-old"), now() + 30, &SCOPES);
    let proxy = start(&fake, &dir).await;
    // The request does not wait: it goes with the current token.
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("bob")).await.status,
        200
    );
    assert_eq!(bearers(&fake, "/2/users/me"), ["Bearer at-old"]);
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.oauth_calls().0 == 1)
            .await
    );
    // Wait for the new pair to be stored, then it is used.
    wait_for_stored(&dir, "at-1").await;
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("bob")).await.status,
        200
    );
    assert_eq!(bearers(&fake, "/2/users/me")[1], "Bearer at-1");
    assert_eq!(fake.oauth_calls().0, 1);
}

#[tokio::test]
async fn an_upstream_401_refreshes_once_and_replays_the_request() {
    let fake = FakeX::start().await;
    // X no longer accepts the stored access token, although it has not expired.
    fake.oauth_issue("at-revoked", "rt-old");
    fake.oauth_revoke("at-revoked");
    let dir = scratch("oauth-401");
    store_bob(&dir, "at-revoked", Some("rt-old"), now() + 3600, &SCOPES);
    let proxy = start(&fake, &dir).await;
    let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        bearers(&fake, "/2/users/me"),
        ["Bearer at-revoked", "Bearer at-1"]
    );
    assert_eq!(fake.oauth_calls().0, 1);
    // A body that was streamed cannot be replayed: X's 401 is returned.
    fake.oauth_revoke("at-1");
    let a = send(
        proxy.addr,
        request("POST", "/2/custom/upload")
            .header("x-xgate-key", crate::support::proxy::KEY)
            .header("x-xgate-identity", "bob")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"text":"hi"}"#)))
            .unwrap(),
    )
    .await;
    assert_eq!((a.status.as_u16(), a.kind()), (401, None));
    assert_eq!(fake.requests_to("/2/custom/upload").len(), 1);
    // ... but the pair is refreshed for the requests that follow.
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.oauth_calls().0 == 2)
            .await
    );
}

#[tokio::test]
async fn a_refused_refresh_token_answers_401_token_refresh_failed() {
    let fake = FakeX::start().await;
    // rt-dead was never issued (or already used): invalid_grant.
    let dir = scratch("oauth-rejected");
    store_bob(&dir, "at-old", Some("rt-dead"), now() - 10, &SCOPES);
    let proxy = start(&fake, &dir).await;
    let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
    assert_eq!(
        (a.status.as_u16(), a.kind()),
        (401, Some("token-refresh-failed"))
    );
    assert!(
        a.text().contains("xgate login --identity bob"),
        "{}",
        a.text()
    );
    assert!(fake.requests_to("/2/users/me").is_empty());
    // The dead refresh token is not sent to X again...
    let again = get(proxy.addr, "/2/users/me", Some("bob")).await;
    assert_eq!(again.kind(), Some("token-refresh-failed"));
    assert_eq!(fake.oauth_calls().0, 1);
    // ... but a new login stored meanwhile (by `xgate login` in another process) is adopted.
    fake.oauth_issue("at-new", "rt-new");
    store_bob(&dir, "at-new", Some("rt-new"), now() + 3600, &SCOPES);
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("bob")).await.status,
        200
    );
    assert_eq!(bearers(&fake, "/2/users/me"), ["Bearer at-new"]);
    assert_eq!(fake.oauth_calls().0, 1);
}

#[tokio::test]
async fn passing_refresh_failures_are_retried_then_answered_502() {
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    fake.oauth_trouble(2, Duration::ZERO);
    let dir = scratch("oauth-retry");
    store_bob(&dir, "at-old", Some("rt-old"), now() - 10, &SCOPES);
    let proxy = start(&fake, &dir).await;
    // Two 503s, then success: the request waits through the retries.
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("bob")).await.status,
        200
    );
    assert_eq!(fake.oauth_calls().0, 3);

    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    fake.oauth_trouble(100, Duration::ZERO);
    let dir = scratch("oauth-down");
    store_bob(&dir, "at-old", Some("rt-old"), now() - 10, &SCOPES);
    let proxy = start(&fake, &dir).await;
    let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
    assert_eq!(
        (a.status.as_u16(), a.kind()),
        (502, Some("upstream-unavailable"))
    );
    assert!(a.text().contains("token refresh"), "{}", a.text());
}

#[tokio::test]
async fn the_scope_pre_check_uses_the_scopes_x_granted() {
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    let dir = scratch("oauth-scopes");
    // proxy.toml asks for more, but X granted only these.
    store_bob(
        &dir,
        "at-old",
        Some("rt-old"),
        now() + 3600,
        &["tweet.read", "users.read"],
    );
    let proxy = start(&fake, &dir).await;
    let a = get(proxy.addr, "/2/dm_events", Some("bob")).await;
    assert_eq!((a.status.as_u16(), a.kind()), (403, Some("scope-missing")));
    assert!(
        a.text().contains("needs scope dm.read") && a.text().contains("tweet.read users.read"),
        "{}",
        a.text()
    );
    assert!(fake.requests().is_empty());
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("bob")).await.status,
        200
    );
}

// === the binary: login, bearer, crashes, encryption ===

/// A config for the binary, as typed values: App `main` with OAuth 2.0 client (`secret` makes
/// it confidential) and redirect URI on `port`, user `bob`, App `solo` (consumer keys only),
/// OAuth 1.0a user `carol` (no pair), the store `xgate.db` (encrypted with `encryption_key`).
fn binary_config(upstream: &str, port: u16, encryption_key: Option<&str>, secret: bool) -> String {
    let mut store = table([("path", "xgate.db".into())]);
    if let Some(key) = encryption_key {
        store.insert("encryption_key".into(), key.into());
    }
    binary_config_with_store(upstream, port, store, secret)
}

/// [`binary_config`] with `[store]` as given (a PostgreSQL `url`, say).
pub(crate) fn binary_config_with_store(
    upstream: &str,
    port: u16,
    store: toml::Table,
    secret: bool,
) -> String {
    use toml::Value;
    let env = |name: &str| Value::Table(table([("env", name.into())]));
    let strings = |items: &[&str]| Value::Array(items.iter().map(|s| (*s).into()).collect());
    let mut main = table([
        ("bearer_token", env("X_BEARER_TOKEN")),
        ("consumer_key", env("X_API_KEY")),
        ("consumer_secret", env("X_API_SECRET")),
        ("oauth2_client_id", "fake-client-id".into()),
        (
            "oauth2_redirect_uri",
            format!("http://127.0.0.1:{port}/callback").into(),
        ),
        (
            "oauth2_authorize_url",
            "https://x.example/i/oauth2/authorize".into(),
        ),
    ]);
    if secret {
        main.insert("oauth2_client_secret".into(), "fake-client-secret".into());
    }
    let solo = table([
        ("consumer_key", env("X_API_KEY")),
        ("consumer_secret", env("X_API_SECRET")),
    ]);
    let bob = table([
        ("app", "main".into()),
        ("auth", "oauth2".into()),
        (
            "scopes",
            strings(&["tweet.read", "users.read", "offline.access"]),
        ),
    ]);
    let carol = table([("app", "main".into()), ("auth", "oauth1".into())]);
    let client = table([
        ("name", "backend".into()),
        ("anonymous", true.into()),
        ("identities", strings(&["main", "bob", "solo", "carol"])),
        ("default_identity", "main".into()),
    ]);
    let doc = table([
        (
            "server",
            Value::Table(table([("listen", "127.0.0.1:0".into())])),
        ),
        (
            "admin",
            Value::Table(table([("listen", "127.0.0.1:0".into())])),
        ),
        (
            "upstream",
            Value::Table(table([("base_url", upstream.into())])),
        ),
        ("store", Value::Table(store)),
        (
            "apps",
            Value::Table(table([
                ("main", Value::Table(main)),
                ("solo", Value::Table(solo)),
            ])),
        ),
        (
            "users",
            Value::Table(table([
                ("bob", Value::Table(bob)),
                ("carol", Value::Table(carol)),
            ])),
        ),
        ("clients", Value::Array(vec![Value::Table(client)])),
    ]);
    toml::to_string(&doc).unwrap()
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &Path, args: &[&str], stdin: Stdio) -> Child {
    crate::support::binary::spawn(dir, args, stdin, &[])
}

pub(crate) fn query_param(url: &str, key: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k == key).then(|| String::from_utf8_lossy(&crate::support::fake_x::dec(v)).into_owned())
    })
}

/// `xgate login --identity bob` in `dir` (its redirect URI on `port`), with a test client
/// playing the browser that X redirects to the callback with a code FakeX accepts for the
/// printed challenge. The authorize URL, the exit status and what login printed after it.
pub(crate) async fn browser_login(
    dir: &Path,
    port: u16,
    fake: &FakeX,
) -> (String, std::process::ExitStatus, Vec<String>) {
    let mut child = spawn(dir, &["login", "--identity", "bob"], Stdio::null());
    let mut out = crate::support::binary::lines(child.stdout.take().unwrap());
    let url = crate::support::binary::next_line(&mut out).await;
    let state = query_param(&url, "state").unwrap();
    let challenge = query_param(&url, "code_challenge").unwrap();
    fake.oauth_expect_code("the-code", &challenge);
    // The browser follows X's redirect to the callback.
    let callback: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let a = send(
        callback,
        request("GET", &format!("/callback?state={state}&code=the-code"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    let rest = crate::support::binary::remaining_lines(&mut out).await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    (url, status, rest)
}

/// The whole login: the authorize URL, a test client playing the browser, the code exchange
/// with PKCE (FakeX checks the verifier), the stored pair used by the proxy afterwards.
#[tokio::test]
async fn login_with_a_browser_stores_a_pair_the_proxy_then_uses() {
    let fake = FakeX::start().await;
    let dir = scratch("login");
    let port = free_port();
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config(&fake.base_url(), port, None, true),
    )
    .unwrap();
    let (url, status, rest) = browser_login(&dir, port, &fake).await;
    assert!(
        url.starts_with("https://x.example/i/oauth2/authorize?"),
        "{url}"
    );
    for (k, v) in [
        ("response_type", "code"),
        ("client_id", "fake-client-id"),
        ("code_challenge_method", "S256"),
        ("redirect_uri", &format!("http://127.0.0.1:{port}/callback")),
        ("scope", "tweet.read users.read offline.access"),
    ] {
        assert_eq!(query_param(&url, k).as_deref(), Some(v), "{k} in {url}");
    }
    assert_eq!(status.code(), Some(0), "{rest:?}");
    assert_eq!(
        rest,
        [
            "stored token for bob",
            "scopes: tweet.read users.read offline.access"
        ]
    );
    // A confidential client authenticates with HTTP Basic.
    assert_eq!(
        fake.oauth_client_auth().as_deref(),
        Some("basic:fake-client-id:fake-client-secret")
    );
    assert_eq!(
        stored_bob(&dir),
        ("at-1".to_owned(), Some("rt-1".to_owned()))
    );
    let toml = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    let proxy = Proxy::start_in(&toml, &dir).await;
    let a = get_anon(proxy.addr, "bob").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(bearers(&fake, "/2/users/me"), ["Bearer at-1"]);
}

fn login_no_listen(dir: &Path, redirected: impl Fn(&str) -> String) -> (i32, String, String) {
    let mut child = spawn(
        dir,
        &["login", "--identity", "bob", "--no-listen"],
        Stdio::piped(),
    );
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    stdout.read_line(&mut url).unwrap();
    let state = query_param(url.trim(), "state").unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, redirected(&state).as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    (
        out.status.code().unwrap_or(-1),
        rest + &String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn login_refuses_a_denied_authorisation_a_state_mismatch_and_an_expired_code() {
    let fake = FakeX::start().await;
    let dir = scratch("login-bad");
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config(&fake.base_url(), free_port(), None, false),
    )
    .unwrap();
    let d = dir.clone();
    let denied = tokio::task::spawn_blocking(move || {
        login_no_listen(&d, |state| {
            format!("http://127.0.0.1/callback?error=access_denied&state={state}\n")
        })
    })
    .await
    .unwrap();
    assert_eq!(denied.0, 1);
    assert!(denied.2.contains("denied"), "{denied:?}");
    let d = dir.clone();
    let forged = tokio::task::spawn_blocking(move || {
        login_no_listen(&d, |_| {
            "http://127.0.0.1/callback?code=c&state=forged\n".to_owned()
        })
    })
    .await
    .unwrap();
    assert_eq!(forged.0, 1);
    assert!(forged.2.contains("state does not match"), "{forged:?}");
    // A code X does not know (expired after 30 s, or used): invalid_grant.
    let d = dir.clone();
    let expired = tokio::task::spawn_blocking(move || {
        login_no_listen(&d, |state| {
            format!("http://127.0.0.1/callback?code=stale&state={state}\n")
        })
    })
    .await
    .unwrap();
    assert_eq!(expired.0, 1);
    assert!(expired.2.contains("invalid_grant"), "{expired:?}");
    // Nothing was stored.
    let store = SqliteStore::open(&dir.join("xgate.db"), None).unwrap();
    assert!(
        store
            .load_blocking("bob", TokenKind::Oauth2)
            .unwrap()
            .is_none()
    );
}

/// Starts `xgate serve` in `dir` and returns it with its proxy address.
pub(crate) async fn serve(
    dir: &Path,
) -> (
    Child,
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let s = crate::support::binary::serve(dir, &[], &[]).await;
    (s.child, s.addr, s.stderr)
}

/// SIGKILL right after a refresh, then a restart: the rotated pair was kept.
#[tokio::test]
async fn a_crash_right_after_a_refresh_keeps_the_rotated_token() {
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    let dir = scratch("oauth-kill");
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config(&fake.base_url(), free_port(), None, false),
    )
    .unwrap();
    store_bob(&dir, "at-old", Some("rt-old"), now() - 10, &SCOPES);
    let (mut child, addr, _err) = serve(&dir).await;
    assert_eq!(get_anon(addr, "bob").await.status, 200);
    child.kill().unwrap();
    let _status = child.wait();
    // rt-old is dead at X now; only the stored rt-1 / at-1 can work.
    let (mut child, addr, _err) = serve(&dir).await;
    let a = get_anon(addr, "bob").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        bearers(&fake, "/2/users/me"),
        ["Bearer at-1", "Bearer at-1"]
    );
    assert_eq!(fake.oauth_calls().0, 1);
    child.kill().unwrap();
    let _status = child.wait();
}

pub(crate) async fn get_anon(addr: SocketAddr, identity: &str) -> Answer {
    send(
        addr,
        request("GET", "/2/users/me")
            .header("x-xgate-identity", identity)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

pub(crate) const KEY_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub(crate) const WRONG_B64: &str = "HxwdHhscGxoZGBcWFRQTEhEQDw4NDAsKCQgHBgUEAwI=";

#[tokio::test]
async fn with_encryption_no_token_is_in_plain_text_and_a_wrong_key_is_refused() {
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    let dir = scratch("oauth-crypt");
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config(&fake.base_url(), free_port(), Some(KEY_B64), false),
    )
    .unwrap();
    {
        let key = xgate::secret::StoreKey::new(std::array::from_fn(|i| u8::try_from(i).unwrap()));
        let store = SqliteStore::open(&dir.join("xgate.db"), Some(&key)).unwrap();
        store
            .save_blocking(
                "bob",
                &StoredToken::Oauth2 {
                    access_token: "at-old".into(),
                    refresh_token: Some("rt-old".into()),
                    expires_at: Some(now() - 10),
                    scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                },
            )
            .unwrap();
    }
    let (mut child, addr, _err) = serve(&dir).await;
    assert_eq!(get_anon(addr, "bob").await.status, 200);
    child.kill().unwrap();
    let _status = child.wait();
    let mut bytes = Vec::new();
    for f in ["xgate.db", "xgate.db-wal"] {
        if let Ok(b) = std::fs::read(dir.join(f)) {
            bytes.extend(b);
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    for token in ["at-old", "rt-old", "at-1", "rt-1"] {
        assert!(
            !text.contains(token),
            "{token} is in the store in plain text"
        );
    }
    // The wrong key: refused at startup with exit status 2, the store untouched.
    let toml = binary_config(&fake.base_url(), free_port(), Some(WRONG_B64), false);
    std::fs::write(dir.join("proxy.toml"), toml).unwrap();
    let run = xgate(
        &dir,
        &["serve"],
        &crate::support::proxy::env().into_iter().collect::<Vec<_>>(),
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("wrong key"), "{}", run.stderr);
}

#[tokio::test]
async fn bearer_obtains_stores_and_invalidates_the_apps_token() {
    let fake = FakeX::start().await;
    let dir = scratch("bearer");
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config(&fake.base_url(), free_port(), None, false),
    )
    .unwrap();
    let run = run(&dir, &["bearer", "--app", "solo"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), "stored Bearer token for solo");
    assert!(!run.stdout.contains(ISSUED_BEARER) && !run.stderr.contains(ISSUED_BEARER));
    assert_eq!(fake.oauth_calls().2, 1);
    // The proxy uses it for the App that has no bearer_token in proxy.toml.
    let toml = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    let proxy = Proxy::start_in(&toml, &dir).await;
    let a = get_anon_path(proxy.addr, "/2/tweets/1", "solo").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        bearers(&fake, "/2/tweets/1"),
        [format!("Bearer {ISSUED_BEARER}")]
    );
    drop(proxy);
    let run = self::run(&dir, &["bearer", "--app", "solo", "--invalidate"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(fake.invalidated(), [ISSUED_BEARER]);
    let store = SqliteStore::open(&dir.join("xgate.db"), None).unwrap();
    assert!(
        store
            .load_blocking("solo", TokenKind::Bearer)
            .unwrap()
            .is_none()
    );
    // An App without consumer keys cannot.
    let run = self::run(&dir, &["bearer", "--app", "nope"]).await;
    assert_eq!(run.code, 2, "{run:?}");
}

/// Runs the binary off the runtime's thread: FakeX answers on that thread meanwhile.
pub(crate) async fn run(dir: &Path, args: &[&str]) -> crate::support::Run {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<_> = crate::support::proxy::env().into_iter().collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        xgate(&dir, &args, &env)
    })
    .await
    .unwrap()
}

pub(crate) async fn get_anon_path(addr: SocketAddr, path: &str, identity: &str) -> Answer {
    send(
        addr,
        request("GET", path)
            .header("x-xgate-identity", identity)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// `xgate login --identity carol --oauth1` in `dir`, FakeX's PIN typed at its prompt: the exit
/// status, stdout (the authorize URL, then what it printed) and stderr.
pub(crate) async fn pin_login(dir: &Path) -> (i32, String, String) {
    let d = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut child = spawn(
            &d,
            &["login", "--identity", "carol", "--oauth1"],
            Stdio::piped(),
        );
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut url = String::new();
        stdout.read_line(&mut url).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, format!("{PIN}\n").as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        (
            out.status.code().unwrap_or(-1),
            url + &rest,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `xgate login --oauth1`: request token, authorize URL, PIN on stdin, access token stored;
/// the proxy then signs carol's requests with it.
#[tokio::test]
async fn oauth1_pin_login_stores_a_pair_the_proxy_signs_with() {
    let fake = FakeX::start().await;
    let dir = scratch("login-oauth1");
    let toml = binary_config(&fake.base_url(), free_port(), None, false);
    std::fs::write(dir.join("proxy.toml"), &toml).unwrap();
    // Before: carol has no pair.
    let proxy = Proxy::start_in(&toml, &dir).await;
    assert_eq!(
        get_anon_path(proxy.addr, "/2/users/me", "carol")
            .await
            .kind(),
        Some("credentials-missing")
    );
    drop(proxy);
    let (code, stdout, stderr) = pin_login(&dir).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(format!("https://api.x.com/oauth/authorize?oauth_token={REQUEST_TOKEN}").as_str())
    );
    assert_eq!(lines.next(), Some("stored token for carol (@alice)"));
    assert!(stderr.contains("enter the PIN"), "{stderr}");
    // After: the stored pair signs carol's requests (FakeX verifies the signature).
    let proxy = Proxy::start_in(&toml, &dir).await;
    let a = get_anon_path(proxy.addr, "/2/users/me", "carol").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert!(matches!(
        fake.requests_to("/2/users/me")[0].auth,
        crate::support::fake_x::Auth::Oauth1 { valid: true, .. }
    ));
}

/// `xgate check` reads the store (never creating or changing it) for its OAuth 2.0 warning,
/// and refuses a wrong key.
#[tokio::test]
async fn check_reads_the_store_for_stored_tokens_and_refuses_a_wrong_key() {
    let dir = scratch("check-store");
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config("http://127.0.0.1:9", free_port(), None, false),
    )
    .unwrap();
    let before = run(&dir, &["check"]).await;
    assert_eq!(before.code, 0, "{before:?}");
    assert!(
        before
            .stderr
            .contains("users.bob: no stored OAuth 2.0 token yet"),
        "{before:?}"
    );
    assert!(!dir.join("xgate.db").exists(), "check created the store");
    store_bob(&dir, "at-1", Some("rt-1"), now() + 3600, &SCOPES);
    let after = run(&dir, &["check"]).await;
    assert_eq!(after.code, 0, "{after:?}");
    assert!(
        !after.stderr.contains("no stored OAuth 2.0 token"),
        "{after:?}"
    );
    assert!(!after.stdout.contains("at-1") && !after.stderr.contains("rt-1"));
    // An encrypted store, checked with the wrong key: exit 2, naming the key.
    let dir = scratch("check-crypt");
    std::fs::write(
        dir.join("proxy.toml"),
        binary_config("http://127.0.0.1:9", free_port(), Some(WRONG_B64), false),
    )
    .unwrap();
    let key = xgate::secret::StoreKey::new(std::array::from_fn(|i| u8::try_from(i).unwrap()));
    drop(SqliteStore::open(&dir.join("xgate.db"), Some(&key)).unwrap());
    let wrong = run(&dir, &["check"]).await;
    assert_eq!(wrong.code, 2, "{wrong:?}");
    assert!(
        wrong.stderr.contains("store.encryption_key") && wrong.stderr.contains("wrong key"),
        "{wrong:?}"
    );
}

/// The refresh runs detached: a client that gives up while it is in flight does not cancel
/// it, and the rotated pair is stored and used by the next request without a second refresh.
#[tokio::test]
async fn a_client_that_leaves_during_a_refresh_does_not_cancel_it() {
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    fake.oauth_trouble(0, Duration::from_millis(500));
    let dir = scratch("oauth-detached");
    store_bob(&dir, "at-old", Some("rt-old"), now() - 10, &SCOPES);
    let proxy = start(&fake, &dir).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        get(proxy.addr, "/2/users/me", Some("bob")),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the request should still be waiting for the refresh"
    );
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.oauth_calls().0 == 1)
            .await
    );
    wait_for_stored(&dir, "at-1").await;
    assert_eq!(
        stored_bob(&dir),
        ("at-1".to_owned(), Some("rt-1".to_owned()))
    );
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("bob")).await.status,
        200
    );
    assert_eq!(bearers(&fake, "/2/users/me"), ["Bearer at-1"]);
    assert_eq!(fake.oauth_calls().0, 1);
}

/// CONTRACT section 11 rule 1, Owned Reads learnt at login: `xgate login` keeps the user's X
/// id (from the OAuth 1.0a answer; for OAuth 2.0 by one `GET /2/users/me` with the new token,
/// for an identity in `costs.owned_reads` only), and the proxy then prices that identity's own
/// lists at Owned Reads from its first request.
#[tokio::test]
async fn login_learns_the_user_id_that_owned_reads_need() {
    let fake = FakeX::start().await;
    let dir = scratch("login-owned");
    let port = free_port();
    let toml = binary_config(&fake.base_url(), port, None, true)
        + "\n[costs]\nowned_reads = [\"bob\", \"carol\"]\n";
    std::fs::write(dir.join("proxy.toml"), &toml).unwrap();
    let (_url, status, rest) = browser_login(&dir, port, &fake).await;
    assert_eq!(status.code(), Some(0), "{rest:?}");
    // FakeX's /2/users/me answers id 20, asked with the new access token.
    assert_eq!(
        rest.last().map(String::as_str),
        Some("X user id of bob: 20 (for Owned Reads)"),
        "{rest:?}"
    );
    assert_eq!(bearers(&fake, "/2/users/me"), ["Bearer at-1"]);
    let (code, stdout, stderr) = pin_login(&dir).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("X user id of carol: 111 (for Owned Reads)"),
        "{stdout}"
    );

    let proxy = Proxy::start_in(&toml, &dir).await;
    let page = |from: u32| {
        let items: Vec<String> = (from..from + 10)
            .map(|i| format!(r#"{{"id":"{i}"}}"#))
            .collect();
        format!(r#"{{"data":[{}]}}"#, items.join(","))
    };
    let cost = |identity: &str| {
        format!(
            r#"xgate_cost_usd_total{{client="backend",endpoint="GET /2/users/:id/tweets",identity="{identity}"}} "#
        )
    };
    for (identity, own_id, first) in [("bob", "20", 100), ("carol", "111", 200)] {
        fake.script(
            &format!("/2/users/{own_id}/tweets"),
            Reply::json(200, &page(first)),
        );
        let a = get_anon_path(proxy.addr, &format!("/2/users/{own_id}/tweets"), identity).await;
        assert_eq!(a.status, 200, "{}", a.text());
        // Ten Posts of its own list at 0.001 USD: 0.01 (at the usual price it would be 0.05).
        let mut seen = 0.0;
        for _ in 0..200 {
            let text = get(proxy.admin, "/metrics", None).await.text();
            seen = crate::support::http::metric(&text, &cost(identity));
            if seen > 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!((seen - 0.01).abs() < 1e-9, "{identity}: {seen}");
    }
}
