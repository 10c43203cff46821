//! CONTRACT section 10 rules 1, 2 and 5 against a real Redis: three replicas (in-process, one
//! configuration) admit together what one process would, share what X reported and the
//! usage-cap cooldown, and survive Redis going away (`on_failure = "local"` and `"refuse"`).
//! Each test has a key prefix of its own, so tests running side by side share nothing.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::support::engines::{self, OwnRedis};
use crate::support::fake_x::{FakeX, Reply};
use crate::support::http::{Answer, get, metric, request, send};
use crate::support::proxy::{NARROW_KEY, Proxy, TestConfig};

/// Three replicas of `cfg` on `fake`, sharing the Redis at `url` under `prefix`.
async fn replicas(
    fake: &FakeX,
    url: &str,
    prefix: &str,
    cfg: impl Fn(TestConfig) -> TestConfig,
) -> Vec<Proxy> {
    let toml = cfg(TestConfig::new(&fake.base_url()).shared(url, prefix)).toml();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(Proxy::start(&toml).await);
    }
    proxies
}

/// One test's world: the fake X API and three replicas of one configuration sharing a Redis
/// under a key prefix of the test's own. Bind `fake` (`fake: _fake`) even when unused: the
/// replicas forward to it only while it lives.
struct World {
    url: String,
    fake: FakeX,
    prefix: String,
    proxies: Vec<Proxy>,
}

/// A [`World`] on the machine's Redis (`None`: skipped, see `support::engines`).
async fn world(cfg: impl Fn(TestConfig) -> TestConfig) -> Option<World> {
    let url = engines::redis_url().await?;
    Some(world_on(&url, cfg).await)
}

/// A [`World`] on the Redis at `url`.
async fn world_on(url: &str, cfg: impl Fn(TestConfig) -> TestConfig) -> World {
    let fake = FakeX::start().await;
    let prefix = engines::unique("xgate-test:");
    let proxies = replicas(&fake, url, &prefix, cfg).await;
    World {
        url: url.to_owned(),
        fake,
        prefix,
        proxies,
    }
}

/// FakeX's answer with `x-rate-limit-*`: limit 900, `remaining`, reset at `reset` (Unix s).
fn x_answer(remaining: &str, reset: &str) -> Reply {
    Reply::json(200, r#"{"data":{"id":"1"}}"#)
        .header("x-rate-limit-limit", "900")
        .header("x-rate-limit-remaining", remaining)
        .header("x-rate-limit-reset", reset)
}

/// Unix seconds `ahead` from now.
fn in_seconds(ahead: u64) -> String {
    (xgate::clock::Clock::unix_seconds(&xgate::clock::SystemClock) + ahead).to_string()
}

/// `n` requests made by `make`, all at once, spread over `proxies` in turn; their statuses.
async fn burst<F, Fut>(proxies: &[Proxy], n: usize, make: F) -> Vec<u16>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let tasks: Vec<_> = (0..n)
        .map(|i| tokio::spawn(make(proxies[i % proxies.len()].addr)))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status.as_u16());
    }
    statuses
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

/// `request`'s answer, which must come within `limit`: no request may hang on a Redis that is
/// gone or does not answer.
async fn within(limit: Duration, request: impl std::future::Future<Output = Answer>) -> Answer {
    tokio::time::timeout(limit, request)
        .await
        .unwrap_or_else(|_| panic!("a request hung for {limit:?} on a Redis that does not answer"))
}

/// Waits (at most 15 s: the probe's backoff reaches 5 s) until `proxy` reports Redis up again.
async fn wait_until_redis_is_up(proxy: &Proxy) {
    for _ in 0..150 {
        if metric(&metrics(proxy).await, r#"xgate_shared_up{backend="redis"}"#) == 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Redis never came back");
}

/// Today's UTC date, as the cost keys name it.
fn today() -> String {
    let now = xgate::clock::Clock::unix_seconds(&xgate::clock::SystemClock);
    xgate::clock::date_of_days(i64::try_from(now / 86_400).unwrap())
}

/// `GET /metrics` of a replica.
async fn metrics(proxy: &Proxy) -> String {
    get(proxy.admin, "/metrics", None).await.text()
}

/// Rule 1, an App window: 30 requests at once over three replicas, bucket of 10: exactly 10
/// reach X, and the rest get the local 429.
#[tokio::test]
async fn an_app_window_admits_exactly_its_limit_across_three_replicas() {
    let Some(World { fake, proxies, .. }) =
        world(|c| c.limit_override("GET /2/tweets/:id", &["10/1h"], &[])).await
    else {
        return;
    };
    let statuses = burst(&proxies, 30, |addr| async move {
        get(addr, "/2/tweets/20", Some("main")).await
    })
    .await;
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");
    assert_eq!(fake.requests_to("/2/tweets/20").len(), 10);
}

/// Rule 1, a user window: alice's own bucket of 5, over three replicas.
#[tokio::test]
async fn a_user_window_admits_exactly_its_limit_across_three_replicas() {
    let Some(World { fake, proxies, .. }) =
        world(|c| c.limit_override("GET /2/tweets/:id", &["100/1h"], &["5/1h"])).await
    else {
        return;
    };
    let statuses = burst(&proxies, 24, |addr| async move {
        get(addr, "/2/tweets/21", Some("alice")).await
    })
    .await;
    assert_eq!(count(&statuses, 200), 5, "{statuses:?}");
    assert_eq!(fake.requests_to("/2/tweets/21").len(), 5);
    // The App's own window is untouched by alice's requests (no 24-hour window here).
    let statuses = burst(&proxies, 3, |addr| async move {
        get(addr, "/2/tweets/21", Some("main")).await
    })
    .await;
    assert_eq!(count(&statuses, 200), 3, "{statuses:?}");
}

/// Rule 1, the App's 24-hour window, which counts all its users together: alice and the App
/// itself draw from one bucket of 6 wherever their requests land.
#[tokio::test]
async fn the_apps_day_window_is_shared_by_its_users_across_replicas() {
    let Some(World { fake, proxies, .. }) =
        world(|c| c.limit_override("GET /2/tweets/:id", &["6/24h"], &["100/15m"])).await
    else {
        return;
    };
    let statuses = burst(&proxies, 20, |addr| async move {
        let who = if addr.port() % 2 == 0 {
            "alice"
        } else {
            "main"
        };
        get(addr, "/2/tweets/22", Some(who)).await
    })
    .await;
    assert_eq!(count(&statuses, 200), 6, "{statuses:?}");
    assert_eq!(fake.requests_to("/2/tweets/22").len(), 6);
    let alice = get(proxies[0].addr, "/2/tweets/22", Some("alice")).await;
    assert_eq!(alice.status, 429);
    assert_eq!(alice.header("x-rate-limit-limit"), Some("6"));
}

/// Rule 1, a client's own share (`rate`, GCRA): the narrow client's 4 per minute hold across
/// replicas, and requests the share refuses use up nothing of the App's window.
#[tokio::test]
async fn a_client_share_holds_across_three_replicas() {
    let Some(World { fake, proxies, .. }) = world(|c| {
        c.narrow_rate("4/1m")
            .limit_override("GET /2/tweets/:id", &["10/1h"], &[])
    })
    .await
    else {
        return;
    };
    let narrow = |addr: SocketAddr| async move {
        let req = request("GET", "/2/tweets/23")
            .header("x-xgate-key", NARROW_KEY)
            .header("x-xgate-identity", "main")
            .body(Full::<Bytes>::default())
            .unwrap();
        send(addr, req).await
    };
    let statuses = burst(&proxies, 15, narrow).await;
    assert_eq!(count(&statuses, 200), 4, "{statuses:?}");
    // The App's window of 10 lost only the 4 that went upstream.
    let statuses = burst(&proxies, 10, |addr| async move {
        get(addr, "/2/tweets/23", Some("main")).await
    })
    .await;
    assert_eq!(count(&statuses, 200), 6, "{statuses:?}");
    assert_eq!(fake.requests_to("/2/tweets/23").len(), 10);
}

/// Rule 1: what X reported to one replica (remaining 0 until its reset) holds for the others,
/// which answer 429 locally with X's reset.
#[tokio::test]
async fn what_x_reported_to_one_replica_holds_for_the_others() {
    let Some(World { fake, proxies, .. }) = world(|c| c).await else {
        return;
    };
    let reset = in_seconds(600);
    fake.script("/2/users/by/username/", x_answer("0", &reset));
    let first = get(proxies[0].addr, "/2/users/by/username/x", Some("main")).await;
    assert_eq!(first.status, 200);
    for p in &proxies[1..] {
        let a = get(p.addr, "/2/users/by/username/x", Some("main")).await;
        assert_eq!(a.status, 429, "{}", a.text());
        assert_eq!(a.header("x-xgate-limited"), Some("local"));
        assert_eq!(a.header("x-rate-limit-reset"), Some(reset.as_str()));
    }
    assert_eq!(fake.requests_to("/2/users/by/username/x").len(), 1);
}

/// Rule 1: the usage-cap cooldown one replica started holds for all, for the App and its
/// users.
#[tokio::test]
async fn the_usage_cap_cooldown_started_by_one_replica_holds_for_all() {
    let Some(World {
        url,
        fake,
        prefix,
        proxies,
    }) = world(|c| c).await
    else {
        return;
    };
    let capped = r#"{"title":"UsageCapExceeded","detail":"Usage cap exceeded: Monthly product cap","type":"https://api.twitter.com/2/problems/usage-capped"}"#;
    fake.script("/2/tweets/24", Reply::json(429, capped));
    let first = get(proxies[0].addr, "/2/tweets/24", Some("main")).await;
    assert_eq!(first.status, 429);
    assert_eq!(
        first.header("x-xgate-limited"),
        None,
        "X's own 429 passes through"
    );
    // The cooldown reaches Redis on its own task: wait for it (bounded), by its key.
    let key = format!("{prefix}{{main}}:cap");
    let mut stored = false;
    for _ in 0..200 {
        if engines::redis_pttl(&url, &key).await > 0 {
            stored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stored, "the cooldown never reached Redis");
    for (p, who) in proxies[1..].iter().zip(["main", "alice"]) {
        let a = get(p.addr, "/2/tweets/25", Some(who)).await;
        assert_eq!(a.status, 429, "{}", a.text());
        assert_eq!(a.kind(), Some("usage-capped"));
        assert_eq!(a.header("x-xgate-limited"), Some("local"));
    }
    assert!(fake.requests_to("/2/tweets/25").is_empty());
}

/// The key layout of the README: every key under the prefix, with the App's hash tag, and
/// every key expires.
#[tokio::test]
async fn keys_follow_the_layout_and_all_expire() {
    let Some(World {
        fake: _fake,
        url,
        prefix,
        proxies,
        ..
    }) = world(|c| {
        c.narrow_rate("100/1m")
            .limit_override("GET /2/tweets/:id", &["10/1h"], &["5/15m"])
    })
    .await
    else {
        return;
    };
    assert_eq!(
        get(proxies[0].addr, "/2/tweets/26", Some("alice"))
            .await
            .status,
        200
    );
    let req = request("GET", "/2/tweets/26")
        .header("x-xgate-key", NARROW_KEY)
        .header("x-xgate-identity", "main")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(send(proxies[1].addr, req).await.status, 200);
    // The ids' set is written as the answers' bodies end, just after the client read them.
    let mut keys = Vec::new();
    for _ in 0..200 {
        keys = engines::redis_keys(&url, &prefix).await;
        if keys.iter().any(|k| k.contains("{budgets}:seen:")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        keys,
        [
            // The answers' ids, deduplicated for the App and the UTC day (CONTRACT section 11).
            format!("{prefix}{{budgets}}:seen:main:{}", today()),
            format!("{prefix}{{main}}:alice:GET /2/tweets/:id:900000"),
            format!("{prefix}{{main}}:main:GET /2/tweets/:id:3600000"),
            format!("{prefix}{{main}}:share:narrow"),
        ]
    );
    for key in &keys {
        let ttl = engines::redis_pttl(&url, key).await;
        assert!(ttl > 0, "{key} has no expiry ({ttl})");
    }
}

/// Section 10's aim: one round trip per admitted request, and none for a request refused by a
/// bucket this replica already knows is empty (the flood case).
#[tokio::test]
async fn one_round_trip_to_admit_none_to_refuse_a_known_empty_bucket() {
    let Some(World {
        fake: _fake,
        proxies,
        ..
    }) = world(|c| c.limit_override("GET /2/tweets/:id", &["3/1h"], &[])).await
    else {
        return;
    };
    let p = &proxies[0];
    let reserves = r#"xgate_shared_duration_seconds_count{backend="redis",op="reserve"}"#;
    let before = metric(&metrics(p).await, reserves);
    for _ in 0..3 {
        assert_eq!(get(p.addr, "/2/tweets/27", Some("main")).await.status, 200);
    }
    let admitted = metric(&metrics(p).await, reserves);
    assert_eq!(admitted - before, 3.0);
    // The first refusal asks Redis; the next twenty are answered from what it said.
    for _ in 0..21 {
        assert_eq!(get(p.addr, "/2/tweets/27", Some("main")).await.status, 429);
    }
    assert_eq!(metric(&metrics(p).await, reserves) - admitted, 1.0);
}

/// Rule 2, `on_failure = "local"`: Redis killed mid-run, the replicas keep serving from their
/// own buckets (one warning per outage, `xgate_shared_up` 0) and use Redis again once it is
/// back.
#[tokio::test]
async fn local_keeps_serving_while_redis_is_down_and_recovers() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let World {
        fake: _fake,
        prefix,
        proxies,
        ..
    } = world_on(&redis.url(), |c| {
        c.section("shared", "timeout", "200ms").limit_override(
            "GET /2/tweets/:id",
            &["1000/1h"],
            &[],
        )
    })
    .await;
    let p = &proxies[0];
    assert_eq!(get(p.addr, "/2/tweets/28", Some("main")).await.status, 200);
    assert_eq!(
        metric(&metrics(p).await, r#"xgate_shared_up{backend="redis"}"#),
        1.0
    );
    redis.kill();
    for _ in 0..5 {
        let a = within(
            Duration::from_secs(5),
            get(p.addr, "/2/tweets/28", Some("main")),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let text = metrics(p).await;
    assert_eq!(metric(&text, r#"xgate_shared_up{backend="redis"}"#), 0.0);
    // The first call to fail may be a reserve or a batch of completions; after it, no
    // request tries Redis until the probe brings it back.
    let failed: f64 = text
        .lines()
        .filter(|l| l.starts_with(r#"xgate_shared_errors_total{backend="redis""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failed >= 1.0, "{text}");
    assert_eq!(get(p.admin, "/readyz", None).await.status, 200);
    redis.restart().await;
    // The probe brings Redis back by itself (backoff ≤ 5 s): wait for it, bounded.
    wait_until_redis_is_up(p).await;
    assert_eq!(get(p.addr, "/2/tweets/28", Some("main")).await.status, 200);
    assert!(
        !engines::redis_keys(&redis.url(), &prefix).await.is_empty(),
        "requests after the outage use Redis again"
    );
}

/// Rule 2, `on_failure = "refuse"`: with Redis gone, a request that needs a bucket gets 503
/// `shared-state-unavailable` within `timeout`, never a hang.
#[tokio::test]
async fn refuse_answers_503_within_the_timeout_when_redis_is_down() {
    let Some(mut redis) = OwnRedis::start().await else {
        return;
    };
    let World { fake, proxies, .. } = world_on(&redis.url(), |c| {
        c.section("shared", "timeout", "200ms")
            .section("shared", "on_failure", "refuse")
    })
    .await;
    assert_eq!(
        get(proxies[0].addr, "/2/tweets/29", Some("main"))
            .await
            .status,
        200
    );
    redis.kill();
    for p in &proxies {
        for _ in 0..3 {
            let a = within(
                Duration::from_secs(2),
                get(p.addr, "/2/tweets/29", Some("main")),
            )
            .await;
            assert_eq!(a.status, 503, "{}", a.text());
            assert_eq!(a.kind(), Some("shared-state-unavailable"));
        }
    }
    assert_eq!(fake.requests_to("/2/tweets/29").len(), 1);
}

/// Rule 2: a Redis that stops answering without closing its connections (SIGSTOP) is a
/// failure after `timeout`, not a hang; the replica goes local, warns once, and comes back.
#[tokio::test]
async fn a_redis_slower_than_the_timeout_is_an_outage_not_a_hang() {
    let Some(redis) = OwnRedis::start().await else {
        return;
    };
    let World {
        fake: _fake,
        proxies,
        ..
    } = world_on(&redis.url(), |c| c.section("shared", "timeout", "150ms")).await;
    let p = &proxies[0];
    assert_eq!(get(p.addr, "/2/tweets/30", Some("main")).await.status, 200);
    redis.freeze();
    for _ in 0..4 {
        let a = within(
            Duration::from_secs(3),
            get(p.addr, "/2/tweets/30", Some("main")),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let at = format!("at={}", redis.url());
    let warnings = |text: &str| {
        text.lines()
            .filter(|l| l.contains("shared state unreachable") && l.contains(&at))
            .count()
    };
    // One warning per replica that met the outage (only this one did), not one per request.
    assert_eq!(warnings(&crate::support::logs::text()), 1);
    redis.thaw();
    wait_until_redis_is_up(p).await;
    assert!(
        crate::support::logs::text()
            .lines()
            .any(|l| l.contains("shared state reachable again") && l.contains(&at))
    );
}

/// The scripts are loaded once and called by SHA; a Redis that lost them (`SCRIPT FLUSH`, a
/// restart, a failover) gets them again on `NOSCRIPT`, and no request notices.
#[tokio::test]
async fn scripts_flushed_from_redis_are_loaded_again() {
    let Some(World {
        fake: _fake,
        url,
        proxies,
        ..
    }) = world(|c| c.limit_override("GET /2/tweets/:id", &["4/1h"], &[])).await
    else {
        return;
    };
    assert_eq!(
        get(proxies[0].addr, "/2/tweets/31", Some("main"))
            .await
            .status,
        200
    );
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let statuses = burst(&proxies, 6, |addr| async move {
        get(addr, "/2/tweets/31", Some("main")).await
    })
    .await;
    assert_eq!(count(&statuses, 200), 3, "{statuses:?}");
    let text = metrics(&proxies[0]).await;
    assert_eq!(metric(&text, r#"xgate_shared_up{backend="redis"}"#), 1.0);
}

/// A password in the URL works, and neither it nor the URL's user part reaches a log line or
/// a metric.
#[tokio::test]
async fn a_password_in_the_url_works_and_is_never_logged() {
    let Some(redis) = OwnRedis::with_password("redis-pw-sekrit").await else {
        return;
    };
    let url = format!("redis://:redis-pw-sekrit@127.0.0.1:{}", redis.port);
    let World {
        fake,
        prefix,
        proxies,
        ..
    } = world_on(&url, |c| {
        c.limit_override("GET /2/tweets/:id", &["2/1h"], &[])
    })
    .await;
    let statuses = burst(&proxies, 4, |addr| async move {
        get(addr, "/2/tweets/32", Some("main")).await
    })
    .await;
    assert_eq!(count(&statuses, 200), 2, "{statuses:?}");
    let buckets: Vec<String> = engines::redis_keys(&url, &prefix)
        .await
        .into_iter()
        .filter(|k| !k.contains("{budgets}"))
        .collect();
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    let text = metrics(&proxies[0]).await;
    assert!(!text.contains("sekrit"));
    assert!(!crate::support::logs::text().contains("sekrit"));
    // A wrong password is an outage (local buckets), with no password in the warning.
    let wrong = format!("redis://:wrong-sekrit@127.0.0.1:{}", redis.port);
    let p = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .shared(&wrong, &prefix)
            .toml(),
    )
    .await;
    assert_eq!(get(p.addr, "/2/tweets/33", Some("main")).await.status, 200);
    assert_eq!(
        metric(&metrics(&p).await, r#"xgate_shared_up{backend="redis"}"#),
        0.0
    );
    assert!(!crate::support::logs::text().contains("sekrit"));
}

/// `rediss://`: TLS with rustls, the server's certificate verified (here against the test CA,
/// given to the binary as its trust store).
#[tokio::test]
async fn rediss_connects_over_verified_tls() {
    let ca = crate::support::tls::TestCa::new();
    let dir = crate::support::scratch("rediss");
    let (cert, key) = ca.issue_pem(&["localhost"]);
    std::fs::write(dir.join("redis.crt"), cert).unwrap();
    std::fs::write(dir.join("redis.key"), key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let Some(redis) = OwnRedis::with_tls(&dir.join("redis.crt"), &dir.join("redis.key")).await
    else {
        return;
    };
    let fake = FakeX::start().await;
    let check = |url: String| {
        let toml = TestConfig::new(&fake.base_url())
            .shared(&url, "xgate-test:")
            .toml();
        std::fs::write(dir.join("proxy.toml"), toml).unwrap();
        let env: Vec<_> = crate::support::proxy::env().into_iter().collect();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, *v)).collect();
        let ca = dir.join("ca.pem").display().to_string();
        env.push(("SSL_CERT_FILE", Box::leak(ca.into_boxed_str())));
        crate::support::xgate(&dir, &["check", "--config", "proxy.toml"], &env)
    };
    let ok = check(format!("rediss://localhost:{}", redis.port));
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("reachable ("), "{ok:?}");
    // The same server as plain redis:// is not Redis to talk to: unreachable, exit 2.
    let plain = check(format!("redis://localhost:{}", redis.port));
    assert_eq!(plain.code, 2, "{plain:?}");
}

/// Section 5 rule 2 across replicas: a later answer with the same reset never raises what
/// remains, wherever it lands.
#[tokio::test]
async fn a_later_answer_with_the_same_reset_never_raises_what_remains() {
    let Some(World { fake, proxies, .. }) = world(|c| c).await else {
        return;
    };
    let reset = in_seconds(600);
    let answer = |remaining: &str| x_answer(remaining, &reset);
    fake.script("/2/users/by/username/", answer("2"));
    let path = "/2/users/by/username/y";
    assert_eq!(get(proxies[0].addr, path, Some("main")).await.status, 200);
    // X now says 50 remain in the same window: ignored, two are left.
    fake.script("/2/users/by/username/", answer("50"));
    assert_eq!(get(proxies[1].addr, path, Some("main")).await.status, 200);
    assert_eq!(get(proxies[2].addr, path, Some("main")).await.status, 200);
    let a = get(proxies[0].addr, path, Some("main")).await;
    assert_eq!(a.status, 429, "{}", a.text());
    assert_eq!(a.header("x-rate-limit-reset"), Some(reset.as_str()));
    assert_eq!(fake.requests_to(path).len(), 3);
}

/// Section 5 rule 2 across replicas: a later answer with the same reset and fewer remaining
/// lowers the bucket for every replica at once (the report that matters is applied before the
/// answer goes on, not with a later batch).
#[tokio::test]
async fn a_later_answer_with_fewer_remaining_lowers_the_bucket_for_all() {
    let Some(World { fake, proxies, .. }) = world(|c| c).await else {
        return;
    };
    let reset = in_seconds(600);
    let answer = |remaining: &str| x_answer(remaining, &reset);
    let path = "/2/users/by/username/z";
    fake.script("/2/users/by/username/", answer("10"));
    assert_eq!(get(proxies[0].addr, path, Some("main")).await.status, 200);
    // X counted more than xgate did (another client of the App): one left.
    fake.script("/2/users/by/username/", answer("1"));
    assert_eq!(get(proxies[1].addr, path, Some("main")).await.status, 200);
    assert_eq!(get(proxies[2].addr, path, Some("main")).await.status, 200);
    let a = get(proxies[0].addr, path, Some("main")).await;
    assert_eq!(a.status, 429, "{}", a.text());
    assert_eq!(fake.requests_to(path).len(), 3);
}

/// A budget of 0.05 USD a day for the `narrow` client: ten one-Post lookups.
fn narrow_daily_budget(c: TestConfig) -> TestConfig {
    c.top(
        "budgets",
        toml::Value::Array(vec![toml::Value::Table(crate::support::proxy::table([
            ("name", "narrow-daily".into()),
            ("client", "narrow".into()),
            ("limit", "0.05/1d".into()),
        ]))]),
    )
}

/// `GET /2/tweets/ID` by the `narrow` client as `main`.
async fn narrow_lookup(addr: SocketAddr, id: usize) -> Answer {
    let req = request("GET", &format!("/2/tweets/{id}"))
        .header("x-xgate-key", NARROW_KEY)
        .header("x-xgate-identity", "main")
        .body(Full::<Bytes>::default())
        .unwrap();
    send(addr, req).await
}

/// CONTRACT section 11 with `[shared]`: one budget for every replica (a burst over three
/// forwards exactly what it can pay), and a resource one replica metered costs nothing when
/// another returns it the same day.
#[tokio::test]
async fn replicas_draw_from_one_budget_and_deduplicate_together() {
    let Some(World { fake, proxies, .. }) = world(narrow_daily_budget).await else {
        return;
    };
    for i in 0..30 {
        fake.script(
            &format!("/2/tweets/{}", 300 + i),
            Reply::json(200, &format!(r#"{{"data":{{"id":"{}"}}}}"#, 300 + i))
                .delay(Duration::from_millis(300)),
        );
    }
    let next = std::sync::atomic::AtomicUsize::new(300);
    let statuses = burst(&proxies, 30, |addr| {
        let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        narrow_lookup(addr, id)
    })
    .await;
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");
    assert_eq!(fake.requests().len(), 10);

    // Deduplication across replicas: replica 0 meters ten Posts, replica 1 returns the same
    // ten and five more: five are new.
    let page = |from: u32, n: u32| {
        let items: Vec<String> = (from..from + n)
            .map(|i| format!(r#"{{"id":"{i}","text":"x"}}"#))
            .collect();
        format!(r#"{{"data":[{}]}}"#, items.join(","))
    };
    fake.script("/2/tweets/search/recent", Reply::json(200, &page(10, 10)));
    get(
        proxies[0].addr,
        "/2/tweets/search/recent?query=a",
        Some("main"),
    )
    .await;
    fake.script("/2/tweets/search/recent", Reply::json(200, &page(10, 15)));
    get(
        proxies[1].addr,
        "/2/tweets/search/recent?query=a",
        Some("main"),
    )
    .await;
    let line = r#"xgate_billable_resources_total{dedup="new",endpoint="GET /2/tweets/search/recent",identity="main"} "#;
    let mut new = 0.0;
    for _ in 0..200 {
        new = metric(&metrics(&proxies[1]).await, line);
        if new > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(new, 5.0);
}

/// A budget whose key Redis lost (a restart with nothing on disk, an eviction) starts again
/// from the last figure the replica saw, not from nothing: it still refuses what the period
/// has already spent.
#[tokio::test]
async fn a_budget_redis_lost_starts_again_from_the_last_figure_seen() {
    let Some(World {
        url,
        fake,
        prefix,
        proxies,
    }) = world(narrow_daily_budget).await
    else {
        return;
    };
    // Six Posts, one request at a time through replica 0: 0.03 of 0.05 spent.
    for id in 600..606 {
        fake.script(
            &format!("/2/tweets/{id}"),
            Reply::json(200, &format!(r#"{{"data":{{"id":"{id}"}}}}"#)),
        );
        assert_eq!(narrow_lookup(proxies[0].addr, id).await.status, 200);
    }
    let line = r#"xgate_budget_remaining_usd{budget="narrow-daily"} "#;
    let mut left = 0.0;
    for _ in 0..200 {
        left = metric(&metrics(&proxies[0]).await, line);
        if (left - 0.02).abs() < 1e-9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((left - 0.02).abs() < 1e-9, "{left}");
    // Redis loses the budget.
    let budget = engines::redis_keys(&url, &prefix)
        .await
        .into_iter()
        .find(|k| k.contains("{budgets}:budget:narrow-daily:"))
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _deleted: i64 = redis::cmd("DEL")
        .arg(&budget)
        .query_async(&mut conn)
        .await
        .unwrap();
    // Five more: four fit in what is left, the fifth is refused.
    let mut statuses = Vec::new();
    for id in 606..611 {
        fake.script(
            &format!("/2/tweets/{id}"),
            Reply::json(200, &format!(r#"{{"data":{{"id":"{id}"}}}}"#)),
        );
        statuses.push(narrow_lookup(proxies[0].addr, id).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
}
