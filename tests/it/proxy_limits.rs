//! CONTRACT section 5 (rate limits) and the pre-check of section 4, over real sockets
//! against FakeX. Windows are short (`"2/2s"`) or long enough never to roll during a test;
//! time-based arithmetic is tested with a manual clock in `src/limits/tests.rs`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::support::fake_x::{FakeX, Reply};
use crate::support::http::{Answer, get, request, send};
use crate::support::proxy::{NARROW_KEY, Proxy, TestClient, TestConfig};

async fn setup(cfg: impl FnOnce(TestConfig) -> TestConfig) -> (FakeX, Proxy) {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&cfg(TestConfig::new(&fake.base_url())).toml()).await;
    (fake, proxy)
}

fn now() -> u64 {
    xgate::clock::Clock::unix_seconds(&xgate::clock::SystemClock)
}

fn problem(a: &Answer) -> serde_json::Value {
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    serde_json::from_slice(&a.body).unwrap()
}

fn num(a: &Answer, name: &str) -> u64 {
    a.header(name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

/// Checks every header of rule 3 on a local 429 and returns its reset.
fn assert_local_429(a: &Answer, limit: u64) -> u64 {
    assert_eq!(a.status, 429, "{}", a.text());
    assert_eq!(a.kind(), Some("rate-limited"));
    assert_eq!(a.header("x-xgate-limited"), Some("local"));
    assert_eq!(num(a, "x-rate-limit-limit"), limit);
    assert_eq!(num(a, "x-rate-limit-remaining"), 0);
    let reset = num(a, "x-rate-limit-reset");
    let retry = num(a, "retry-after");
    assert!(retry >= 1);
    // retry-after is the time until the reset, give or take the second boundaries.
    assert!(
        reset.abs_diff(now() + retry) <= 2,
        "reset {reset}, retry-after {retry}"
    );
    let p = problem(a);
    assert_eq!(p["type"], "urn:xgate:problem:rate-limited");
    assert_eq!(p["status"], 429);
    reset
}

/// `GET /2/tweets/:id` (written `{id}`): 3 an hour per App, 2 per user.
fn one_per_hour(c: TestConfig) -> TestConfig {
    c.limit_override("GET /2/tweets/{id}", &["3/1h"], &["2/1h"])
}

/// Rule 1 and rule 3: a burst forwards the limit; the rest get a complete local 429.
#[tokio::test]
async fn rule_1_a_burst_forwards_at_most_the_limit() {
    let (fake, proxy) = setup(one_per_hour).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(get(proxy.addr, "/2/tweets/20", Some("main")).await);
    }
    assert_eq!(
        statuses
            .iter()
            .map(|a| a.status.as_u16())
            .collect::<Vec<_>>(),
        [200, 200, 200, 429, 429]
    );
    assert_eq!(fake.requests().len(), 3);
    let reset = assert_local_429(&statuses[4], 3);
    assert!(reset.abs_diff(now() + 3600) <= 2, "reset {reset}");
    let detail = problem(&statuses[4])["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with("identity main: GET /2/tweets/:id limit 3/1h reached; resets in "),
        "{detail}"
    );
    // A user has its own buckets, and another tweet id is the same endpoint.
    for id in [1, 2] {
        assert_eq!(
            get(proxy.addr, &format!("/2/tweets/{id}"), Some("alice"))
                .await
                .status,
            200
        );
    }
    assert_local_429(&get(proxy.addr, "/2/tweets/3", Some("alice")).await, 2);
    assert_eq!(fake.requests().len(), 5);
}

/// A race of 64 concurrent requests on a bucket of 10 forwards exactly 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_requests_on_a_bucket_of_ten_forward_ten() {
    let (fake, proxy) = setup(|c| c.limit_override("GET /2/users/:id", &["10/1h"], &[])).await;
    let addr = proxy.addr;
    let tasks: Vec<_> = (0..64)
        .map(|i| tokio::spawn(async move { get(addr, &format!("/2/users/{i}"), None).await }))
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        match t.await.unwrap().status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("status {other}"),
        }
    }
    assert_eq!((ok, limited), (10, 54));
    assert_eq!(fake.requests().len(), 10);
}

/// Rule 2: X's remaining and reset bound what goes out; the same reset never raises it.
#[tokio::test]
async fn rule_2_x_reported_remaining_and_reset_bound_what_goes_out() {
    let (fake, proxy) = setup(|c| c).await;
    let reset = now() + 3600;
    fake.script(
        "/2/users/",
        Reply::json(200, r#"{"data":{"id":"1"}}"#)
            .header("x-rate-limit-limit", "900")
            .header("x-rate-limit-remaining", "1")
            .header("x-rate-limit-reset", &reset.to_string()),
    );
    assert_eq!(get(proxy.addr, "/2/users/1", None).await.status, 200);
    // One left: it goes; its answer says 1 again for the same reset, which must not raise
    // what remains.
    assert_eq!(get(proxy.addr, "/2/users/2", None).await.status, 200);
    let a = get(proxy.addr, "/2/users/3", None).await;
    assert_eq!(assert_local_429(&a, 900), reset);
    assert_eq!(fake.requests().len(), 2);
    // Other endpoints are not affected.
    assert_eq!(get(proxy.addr, "/2/tweets/1", None).await.status, 200);
}

#[tokio::test]
async fn rule_2_zero_remaining_answers_locally_until_the_reset() {
    let (fake, proxy) = setup(|c| c).await;
    let reset = now() + 2;
    fake.script(
        "/2/users/me",
        Reply::json(200, r#"{"data":{"id":"1"}}"#)
            .header("x-rate-limit-limit", "75")
            .header("x-rate-limit-remaining", "0")
            .header("x-rate-limit-reset", &reset.to_string()),
    );
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("alice")).await.status,
        200
    );
    let a = get(proxy.addr, "/2/users/me", Some("alice")).await;
    assert_eq!(assert_local_429(&a, 75), reset);
    assert_eq!(fake.requests().len(), 1);
    // Come back when told to: the window is X's, and it has ended by then (retry-after is
    // rounded up).
    fake.script("/2/users/me", Reply::json(200, r#"{"data":{"id":"1"}}"#));
    tokio::time::sleep(Duration::from_secs(num(&a, "retry-after"))).await;
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("alice")).await.status,
        200
    );
    assert_eq!(fake.requests().len(), 2);
}

#[tokio::test]
async fn rule_2_24_hour_headers_limit_the_user_and_every_user_of_the_app() {
    let (fake, proxy) = setup(|c| c).await;
    let later = (now() + 3600).to_string();
    fake.script(
        "/2/tweets",
        Reply::json(201, r#"{"data":{"id":"1"}}"#)
            .header("x-rate-limit-limit", "100")
            .header("x-rate-limit-remaining", "99")
            .header("x-rate-limit-reset", &later)
            .header("x-app-limit-24hour-limit", "10000")
            .header("x-app-limit-24hour-remaining", "0")
            .header("x-app-limit-24hour-reset", &later),
    );
    let post = |id: &str| {
        request("POST", "/2/tweets")
            .header("x-xgate-key", crate::support::proxy::KEY)
            .header("x-xgate-identity", id)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(br#"{"text":"hi"}"#)))
            .unwrap()
    };
    assert_eq!(send(proxy.addr, post("alice")).await.status, 201);
    // X says the App's 24-hour window is spent: the next user-context request waits.
    let a = send(proxy.addr, post("alice")).await;
    assert_local_429(&a, 10000);
    assert_eq!(fake.requests().len(), 1);
}

/// Rule 3: an upstream 429 passes through untouched; a usage-capped one also blocks the App
/// and its users for the cooldown.
#[tokio::test]
async fn rule_3_upstream_429s_pass_through_and_usage_capped_cools_the_app_down() {
    let (fake, proxy) = setup(|c| c.limits("usage_cap_cooldown", "10m")).await;
    let plain = r#"{"title":"Too Many Requests","detail":"Too Many Requests","type":"about:blank","status":429}"#;
    fake.script(
        "/2/tweets/search/recent",
        Reply::json(429, plain).header("x-rate-limit-remaining", "7"),
    );
    for _ in 0..2 {
        let a = get(proxy.addr, "/2/tweets/search/recent?query=x", None).await;
        assert_eq!(a.status, 429);
        assert_eq!(a.kind(), None);
        assert_eq!(a.header("x-xgate-limited"), None);
        assert_eq!(a.text(), plain);
    }
    assert_eq!(fake.requests().len(), 2);

    let capped = r#"{"title":"UsageCapExceeded","period":"Monthly","scope":"Product","detail":"Usage cap exceeded: Monthly product cap","type":"https://api.twitter.com/2/problems/usage-capped"}"#;
    fake.script("/2/tweets/search/recent", Reply::json(429, capped));
    let a = get(proxy.addr, "/2/tweets/search/recent?query=y", None).await;
    assert_eq!((a.status.as_u16(), a.text().as_str()), (429, capped));
    assert_eq!(a.kind(), None);
    for (path, identity) in [
        ("/2/tweets/search/recent?query=z", "main"),
        ("/2/users/me", "alice"),
        ("/2/nothing/known", "main"),
    ] {
        let a = get(proxy.addr, path, Some(identity)).await;
        assert_eq!(a.status, 429, "{path}");
        assert_eq!(a.kind(), Some("usage-capped"));
        assert_eq!(a.header("x-xgate-limited"), Some("local"));
        let retry = num(&a, "retry-after");
        assert!((598..=600).contains(&retry), "{retry}");
        assert_eq!(problem(&a)["type"], "urn:xgate:problem:usage-capped");
    }
    assert_eq!(fake.requests().len(), 3);
}

/// Rule 4: `wait` holds a request until its bucket has room, within `max_wait`.
#[tokio::test]
async fn rule_4_wait_holds_a_request_until_the_window_rolls() {
    let (fake, proxy) = setup(|c| {
        c.limits("on_exhausted", "wait")
            .limits("max_wait", "5s")
            .limit_override("GET /2/tweets/:id", &["2/2s"], &[])
            .limit_override("GET /2/users/:id", &["1/1h"], &[])
    })
    .await;
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/2/tweets/1", None).await.status, 200);
    }
    assert_eq!(fake.requests().len(), 3);
    // Room only in an hour, more than max_wait: answered at once.
    assert_eq!(get(proxy.addr, "/2/users/1", None).await.status, 200);
    // (That it is answered at once, not after a wait, is `limits::tests`'s paused-time test.)
    let a = get(proxy.addr, "/2/users/1", None).await;
    assert_local_429(&a, 1);
}

/// Rule 5: paths the catalogue does not know are forwarded with no bucket.
#[tokio::test]
async fn rule_5_unknown_endpoints_have_no_local_bucket() {
    let (fake, proxy) = setup(one_per_hour).await;
    for i in 0..20 {
        let a = get(proxy.addr, &format!("/2/not/in/the/catalogue/{i}"), None).await;
        assert_eq!(a.status, 200);
    }
    assert_eq!(fake.requests().len(), 20);
}

/// Section 7: a request that is not sent upstream uses up no bucket.
#[tokio::test]
async fn requests_not_sent_upstream_use_up_nothing() {
    let (fake, proxy) = setup(|c| c.limit_override("GET /2/tweets/:id", &["1/1h"], &[])).await;
    // App `bare` has no Bearer token: 401 after the rate limits, so its reservation is
    // given back each time.
    for _ in 0..3 {
        let a = get(proxy.addr, "/2/tweets/1", Some("bare")).await;
        assert_eq!(a.kind(), Some("credentials-missing"));
    }
    // 413 comes before the rate limits.
    let big = request("GET", "/2/tweets/1")
        .header("x-xgate-key", crate::support::proxy::KEY)
        .header("content-length", "10000000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(proxy.addr, big).await.status, 413);
    assert_eq!(get(proxy.addr, "/2/tweets/1", None).await.status, 200);
    assert_eq!(get(proxy.addr, "/2/tweets/1", None).await.status, 429);
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn a_client_rate_is_its_own_share_on_top_of_xs_buckets() {
    let (fake, proxy) = setup(|c| c.narrow_rate("2/1h")).await;
    let narrow = || {
        request("GET", "/2/tweets/1")
            .header("x-xgate-key", NARROW_KEY)
            .header("x-xgate-identity", "main")
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(send(proxy.addr, narrow()).await.status, 200);
    assert_eq!(send(proxy.addr, narrow()).await.status, 200);
    let a = send(proxy.addr, narrow()).await;
    assert_local_429(&a, 2);
    let detail = problem(&a)["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.starts_with("client narrow: GET /2/tweets/:id limit 2/1h"),
        "{detail}"
    );
    // The backend client, on the same identity, is not held back by narrow's share.
    assert_eq!(
        get(proxy.addr, "/2/tweets/1", Some("main")).await.status,
        200
    );
    assert_eq!(fake.requests().len(), 3);
}

/// Section 4's pre-check: refused without contacting upstream, naming what is needed.
#[tokio::test]
async fn the_auth_pre_check_refuses_without_contacting_upstream() {
    let (fake, proxy) = setup(|c| c).await;
    let a = get(proxy.addr, "/2/users/me", Some("main")).await;
    assert_eq!(
        (a.status.as_u16(), a.kind()),
        (403, Some("auth-type-unsupported"))
    );
    assert_eq!(
        problem(&a)["detail"],
        "identity main (app-only Bearer): GET /2/users/me needs OAuth 2.0 user context or OAuth 1.0a user context"
    );
    // Bookmarks take OAuth 2.0 only.
    let a = send(
        proxy.addr,
        request("POST", "/2/users/1/bookmarks")
            .header("x-xgate-key", crate::support::proxy::KEY)
            .header("x-xgate-identity", "alice")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(a.kind(), Some("auth-type-unsupported"));
    assert!(
        problem(&a)["detail"]
            .as_str()
            .unwrap()
            .contains("needs OAuth 2.0 user context")
    );
    // App-only endpoints refuse user context.
    let a = get(proxy.addr, "/2/tweets/search/all?query=x", Some("alice")).await;
    assert_eq!(a.kind(), Some("auth-type-unsupported"));
    // An OAuth 2.0 user without a stored token gets 401 first (section 7's order).
    let a = get(proxy.addr, "/2/dm_events", Some("bob")).await;
    assert_eq!(a.kind(), Some("credentials-missing"));
    assert!(fake.requests().is_empty());
    // The allowed combinations go through.
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("alice")).await.status,
        200
    );
    assert_eq!(
        get(proxy.addr, "/2/tweets/search/all?query=x", Some("main"))
            .await
            .status,
        200
    );
}

/// Section 7: the rate limits (429) come before the credentials (401).
#[tokio::test]
async fn rate_limits_are_answered_before_credentials() {
    let key = "xgk_test-third-key";
    let (fake, proxy) = setup(|c| {
        c.client(TestClient {
            name: "third",
            key: Some(key),
            identities: &["bare"],
            default_identity: Some("bare"),
            rate: Some("1/1h"),
        })
    })
    .await;
    let third = || {
        request("GET", "/2/tweets/1")
            .header("x-xgate-key", key)
            .body(Full::default())
            .unwrap()
    };
    // `bare` has no Bearer token: the first request passes the limits and gets 401; the
    // client's share is spent, so the second gets 429 before its credentials are looked at.
    assert_eq!(
        send(proxy.addr, third()).await.kind(),
        Some("credentials-missing")
    );
    assert_local_429(&send(proxy.addr, third()).await, 1);
    assert!(fake.requests().is_empty());
}
