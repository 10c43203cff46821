//! Issue "hardening", fault injection on the token store: a disk that is full and files that
//! cannot be written (`support::disk`), while an OAuth 2.0 pair is refreshed. Every case ends
//! in a clean answer, and no pair X delivered is lost: a store that cannot be written is not
//! refreshed into at all (X is never asked, so its refresh token stays live), and a pair X
//! delivered just as the store failed is used from memory and stored once the store allows.

use std::path::Path;
use std::time::Duration;

use crate::proxy_oauth2::now;
use crate::support::disk::{Frozen, SmallDisk};
use crate::support::fake_x::FakeX;
use crate::support::http::{Answer, get, request, send};
use crate::support::proxy::{Proxy, TestConfig};

/// bob's pair `at-old`/`rt-old`, valid until `expires_at`.
pub(crate) fn pair(expires_at: u64) -> xgate::store::StoredToken {
    xgate::store::StoredToken::Oauth2 {
        access_token: "at-old".into(),
        refresh_token: Some("rt-old".into()),
        expires_at: Some(expires_at),
        scopes: crate::proxy_oauth2::SCOPES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    }
}

pub(crate) fn store_pair(dir: &Path, token: &xgate::store::StoredToken) {
    xgate::store::SqliteStore::open(&dir.join("xgate.db"), None)
        .unwrap()
        .save_blocking("bob", token)
        .unwrap();
}

/// bob's access token in the store now.
pub(crate) fn stored_access(dir: &Path) -> Option<String> {
    let store = xgate::store::SqliteStore::open(&dir.join("xgate.db"), None).unwrap();
    match store
        .load_blocking("bob", xgate::store::TokenKind::Oauth2)
        .unwrap()
    {
        Some(xgate::store::StoredToken::Oauth2 {
            ref access_token, ..
        }) => Some(access_token.clone()),
        _ => None,
    }
}

/// A short grace, so the shutdown case does not wait long for a store that never recovers.
fn config(upstream: &str) -> String {
    TestConfig::new(upstream)
        .server("shutdown_grace", "2s")
        .toml()
}

/// Starts a proxy serving from `dir` and waits until it answers `/readyz`: its store is open
/// (a disk filled before that would fail the start instead).
async fn started(toml: &str, dir: &Path) -> Proxy {
    let proxy = Proxy::start_in(toml, dir).await;
    let ready = send(
        proxy.admin,
        request("GET", "/readyz")
            .body(http_body_util::Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(ready.status, 200);
    proxy
}

fn assert_store_refusal(a: &Answer, fault: &str) {
    assert_eq!(a.status, 502, "{fault}: {}", a.text());
    assert_eq!(a.kind(), Some("upstream-unavailable"));
    assert!(
        a.text().contains("token store cannot be written"),
        "{}",
        a.text()
    );
}

/// The disk fills up, then the store's files become impossible to write, each while bob's
/// token has expired: the request is a 502 that names the store, X's token endpoint is never
/// called (its refresh token stays live), and the stored pair is as it was. Once the fault is
/// gone the next request refreshes and the new pair is stored.
#[tokio::test]
async fn a_store_that_cannot_be_written_is_never_refreshed_into() {
    for fault in ["full", "frozen"] {
        // A tmpfs to fill; the frozen files on the disk the tests run on (tmpfs ignores the
        // immutable flag for files already open).
        let (disk, dir) = if fault == "full" {
            let Some(disk) = SmallDisk::mount("store-full", 1024) else {
                return;
            };
            let dir = disk.dir.clone();
            (Some(disk), dir)
        } else {
            (None, crate::support::scratch("store-frozen"))
        };
        let fake = FakeX::start().await;
        fake.oauth_issue("at-old", "rt-old");
        store_pair(&dir, &pair(now() - 10));
        let proxy = started(&config(&fake.base_url()), &dir).await;

        let frozen = match &disk {
            Some(disk) => {
                disk.fill();
                None
            }
            None => match Frozen::freeze(&dir) {
                Some(f) => Some(f),
                None => return,
            },
        };
        let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
        assert_store_refusal(&a, fault);
        assert_eq!(fake.oauth_calls().0, 0, "{fault}: X was asked to refresh");
        assert!(fake.requests_to("/2/users/me").is_empty(), "{fault}");

        drop(frozen);
        if let Some(disk) = &disk {
            disk.free();
        }
        assert_eq!(stored_access(&dir).as_deref(), Some("at-old"), "{fault}");
        let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
        assert_eq!(a.status, 200, "{fault}: {}", a.text());
        assert_eq!(fake.oauth_calls().0, 1, "{fault}");
        assert_eq!(stored_access(&dir).as_deref(), Some("at-1"), "{fault}");
        assert_eq!(fake.oauth_refresh_reuse(), 0, "{fault}");
        drop(proxy);
    }
}

/// A token near expiry is refreshed in the background; with the store full, requests go on
/// with the token they have (200), and X is not asked.
#[tokio::test]
async fn a_full_store_keeps_a_token_near_expiry_in_use() {
    let Some(disk) = SmallDisk::mount("store-full-ahead", 1024) else {
        return;
    };
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    store_pair(&disk.dir, &pair(now() + 30));
    let proxy = started(&config(&fake.base_url()), &disk.dir).await;
    disk.fill();
    for _ in 0..3 {
        let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let sent = fake.requests_to("/2/users/me");
    assert_eq!(sent.len(), 3);
    assert!(
        sent.iter()
            .all(|r| r.header("authorization") == Some("Bearer at-old"))
    );
    assert_eq!(fake.oauth_calls().0, 0);
    disk.free();
    assert_eq!(stored_access(&disk.dir).as_deref(), Some("at-old"));
}

/// The store stops taking writes while X answers the refresh (X takes 500 ms): the request is
/// served with the new pair, which is stored as soon as the store takes writes again; the
/// rotated refresh token is never sent twice.
#[tokio::test]
async fn a_pair_delivered_as_the_store_fails_is_used_and_stored_later() {
    let dir = crate::support::scratch("store-fails-mid-refresh");
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    fake.oauth_trouble(0, Duration::from_millis(500));
    store_pair(&dir, &pair(now() - 10));
    let proxy = started(&config(&fake.base_url()), &dir).await;

    let addr = proxy.addr;
    let request = tokio::spawn(async move { get(addr, "/2/users/me", Some("bob")).await });
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.oauth_calls().0 == 1)
            .await,
        "the refresh never reached X"
    );
    let Some(frozen) = Frozen::freeze(&dir) else {
        return;
    };
    let a = request.await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let sent = fake.requests_to("/2/users/me");
    assert_eq!(
        sent.last().unwrap().header("authorization"),
        Some("Bearer at-1")
    );
    // More requests go on with the new pair from memory, without refreshing again.
    let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(fake.oauth_calls().0, 1);

    drop(frozen);
    // Bounded: the retries back off to 10 s at most.
    let mut stored = None;
    for _ in 0..300 {
        stored = stored_access(&dir);
        if stored.as_deref() == Some("at-1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored.as_deref(),
        Some("at-1"),
        "the delivered pair was never stored"
    );
    assert_eq!(fake.oauth_refresh_reuse(), 0);
    assert_eq!(fake.oauth_calls().0, 1);
}

/// Shutdown while a delivered pair still cannot be stored: the proxy keeps trying within
/// `shutdown_grace`, then exits and says at error level that bob must log in again.
#[tokio::test]
async fn a_shutdown_with_a_pair_still_unstored_says_so() {
    let dir = crate::support::scratch("store-fails-at-shutdown");
    let fake = FakeX::start().await;
    fake.oauth_issue("at-old", "rt-old");
    fake.oauth_trouble(0, Duration::from_millis(500));
    store_pair(&dir, &pair(now() - 10));
    let mut proxy = started(&config(&fake.base_url()), &dir).await;
    let addr = proxy.addr;
    let request = tokio::spawn(async move { get(addr, "/2/users/me", Some("bob")).await });
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.oauth_calls().0 == 1)
            .await
    );
    let Some(frozen) = Frozen::freeze(&dir) else {
        return;
    };
    assert_eq!(request.await.unwrap().status, 200);
    proxy.begin_shutdown();
    proxy.join().await.unwrap();
    crate::support::logs::wait_for_line(|l| {
        l.contains("ERROR") && l.contains("was never stored") && l.contains("--identity bob")
    })
    .await;
    drop(frozen);
    assert_eq!(stored_access(&dir).as_deref(), Some("at-old"));
}

/// A store directory that cannot be written at start: `xgate serve` refuses to start, naming
/// the store, instead of serving users whose refreshes could never be kept.
#[tokio::test]
async fn serve_refuses_a_store_it_cannot_create() {
    use crate::support::binary::{KillOnDrop, lines, remaining_lines, spawn};
    let dir = crate::support::scratch("store-frozen-at-start");
    let fake = FakeX::start().await;
    let store = crate::support::proxy::table([("path", "state/xgate.db".into())]);
    let toml = crate::proxy_oauth2::binary_config_with_store(
        &fake.base_url(),
        crate::proxy_oauth2::free_port(),
        store,
        false,
    );
    std::fs::write(dir.join("proxy.toml"), toml).unwrap();
    std::fs::create_dir(dir.join("state")).unwrap();
    let Some(_frozen) = Frozen::freeze(&dir.join("state")) else {
        return;
    };
    let mut child = KillOnDrop(spawn(
        &dir,
        &["serve", "--config", "proxy.toml"],
        std::process::Stdio::null(),
        &[],
    ));
    let mut stderr = lines(child.0.stderr.take().unwrap());
    let said = remaining_lines(&mut stderr).await.join("\n");
    let exit = child.0.wait().unwrap();
    assert_eq!(exit.code(), Some(1), "{said}");
    assert!(said.contains("state/xgate.db"), "{said}");
}
