//! CONTRACT section 11 (costs and budgets) over real sockets against FakeX: reads at each
//! price category, a stream's messages, writes with and without a URL, errors, repeats of
//! the day, Owned Reads, a budget exhausted by a burst, a restart that keeps the day's spend,
//! and `xgate usage` with `--reconcile`. Day boundaries are tested with an injected clock in
//! `src/costs/tests.rs`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::support::fake_x::{FakeX, Reply};
use crate::support::http::{Answer, get, metric, request, send};
use crate::support::proxy::{NARROW_KEY, Proxy, TestConfig, env, table};

fn now() -> u64 {
    xgate::clock::Clock::unix_seconds(&xgate::clock::SystemClock)
}

fn today() -> String {
    xgate::clock::date_of_days(i64::try_from(now() / 86_400).unwrap())
}

/// Seconds from now to the next midnight UTC.
fn to_midnight() -> u64 {
    86_400 - now() % 86_400
}

/// A page of `n` Posts (or users: the shape is the same to the meter) with ids from `first`.
fn page(first: u64, n: u64) -> String {
    let items: Vec<String> = (first..first + n)
        .map(|i| format!(r#"{{"id":"{i}","text":"resource {i}, \"quoted\" [1,2]"}}"#))
        .collect();
    format!(
        r#"{{"data":[{}],"includes":{{"users":[{{"id":"1"}}]}},"meta":{{"result_count":{n}}}}}"#,
        items.join(",")
    )
}

/// `[[budgets]]` entries and `[costs]` keys, added to the standard config.
fn with_costs(c: TestConfig, costs: toml::Table, budgets: &[toml::Table]) -> TestConfig {
    let mut c = c;
    for (k, v) in costs {
        c = c.section("costs", &k, v);
    }
    if budgets.is_empty() {
        return c;
    }
    c.top(
        "budgets",
        toml::Value::Array(budgets.iter().cloned().map(toml::Value::Table).collect()),
    )
}

fn budget(name: &str, scope: &str, who: &str, limit: &str) -> toml::Table {
    table([
        ("name", name.into()),
        (scope, who.into()),
        ("limit", limit.into()),
    ])
}

async fn metrics(proxy: &Proxy) -> String {
    get(proxy.admin, "/metrics", None).await.text()
}

/// Waits (bounded) until the metric line starting with `prefix` reads `want`: a response's
/// cost is settled as its body ends, just after the client has read it.
async fn wait_metric(proxy: &Proxy, prefix: &str, want: f64) {
    let mut last = 0.0;
    for _ in 0..200 {
        last = metric(&metrics(proxy).await, prefix);
        if (last - want).abs() < 1e-9 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{prefix} is {last}, not {want}");
}

fn cost_line(identity: &str, endpoint: &str) -> String {
    format!(
        r#"xgate_cost_usd_total{{client="backend",endpoint="{endpoint}",identity="{identity}"}} "#
    )
}

/// Rule 2, reads: 0, 1, 10 and 100 resources at each read category's price, each resource
/// new (ids never repeat), the `includes` and `meta` of the page billing nothing.
#[tokio::test]
async fn reads_cost_their_resources_at_each_categorys_price() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&TestConfig::new(&fake.base_url()).toml()).await;
    // (target, endpoint, price per resource in micro-USD, an identity the endpoint takes)
    let cases = [
        (
            "/2/tweets/search/recent?query=x",
            "GET /2/tweets/search/recent",
            5_000,
            "alice",
        ),
        (
            "/2/users/by?usernames=a",
            "GET /2/users/by",
            10_000,
            "alice",
        ),
        (
            "/2/users/5/followers",
            "GET /2/users/:id/followers",
            10_000,
            "alice",
        ),
        (
            "/2/tweets/5/liking_users",
            "GET /2/tweets/:id/liking_users",
            1_000,
            "alice",
        ),
        (
            "/2/users/5/owned_lists",
            "GET /2/users/:id/owned_lists",
            5_000,
            "alice",
        ),
        ("/2/dm_events", "GET /2/dm_events", 10_000, "alice"),
        (
            "/2/spaces/search?query=x",
            "GET /2/spaces/search",
            5_000,
            "main",
        ),
        (
            "/2/communities/search?query=x",
            "GET /2/communities/search",
            5_000,
            "alice",
        ),
        (
            "/2/users/5/muting",
            "GET /2/users/:id/muting",
            1_000,
            "alice",
        ),
        (
            "/2/users/5/blocking",
            "GET /2/users/:id/blocking",
            1_000,
            "alice",
        ),
    ];
    let mut next_id = 1_000_000;
    for (target, endpoint, price, identity) in cases {
        let path = target.split('?').next().unwrap();
        let mut spent = 0u64;
        for n in [0, 1, 10, 100] {
            fake.script(path, Reply::json(200, &page(next_id, n)));
            next_id += n;
            let a = get(proxy.addr, target, Some(identity)).await;
            assert_eq!(a.status, 200, "{target}: {}", a.text());
            spent += n * price;
            wait_metric(&proxy, &cost_line(identity, endpoint), spent as f64 / 1e6).await;
        }
    }
    let text = metrics(&proxy).await;
    let new = metric(
        &text,
        r#"xgate_billable_resources_total{dedup="new",endpoint="GET /2/users/:id/blocking",identity="alice"} "#,
    );
    assert_eq!(new, 111.0);
}

/// Rule 2, errors: an answer of 400 or more costs nothing, X's own 429 included, and so does
/// a 200 without `data`.
#[tokio::test]
async fn error_answers_and_answers_without_data_cost_nothing() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&TestConfig::new(&fake.base_url()).toml()).await;
    let line = cost_line("alice", "GET /2/tweets/search/recent");
    for (status, body) in [
        (400, page(1, 10)),
        (429, r#"{"title":"Too Many Requests"}"#.to_owned()),
        (503, page(1, 10)),
        (200, r#"{"errors":[{"detail":"not found"}]}"#.to_owned()),
    ] {
        fake.script("/2/tweets/search/recent", Reply::json(status, &body));
        let a = get(proxy.addr, "/2/tweets/search/recent?query=x", Some("alice")).await;
        assert_eq!(a.status.as_u16(), status);
    }
    // A priced answer after them shows the meter ran: 1 Post.
    fake.script("/2/tweets/search/recent", Reply::json(200, &page(1, 1)));
    get(proxy.addr, "/2/tweets/search/recent?query=x", Some("alice")).await;
    wait_metric(&proxy, &line, 0.005).await;
}

/// Rule 2, deduplication: the same resources again the same UTC day cost nothing, for any
/// identity of the App; they are counted as repeats.
#[tokio::test]
async fn a_resource_already_metered_today_for_the_app_costs_nothing_again() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&TestConfig::new(&fake.base_url()).toml()).await;
    fake.script("/2/tweets/search/recent", Reply::json(200, &page(500, 10)));
    get(proxy.addr, "/2/tweets/search/recent?query=x", Some("alice")).await;
    wait_metric(
        &proxy,
        &cost_line("alice", "GET /2/tweets/search/recent"),
        0.05,
    )
    .await;
    fake.script("/2/tweets/search/recent", Reply::json(200, &page(505, 10)));
    get(proxy.addr, "/2/tweets/search/recent?query=x", Some("main")).await;
    wait_metric(
        &proxy,
        &cost_line("main", "GET /2/tweets/search/recent"),
        0.025,
    )
    .await;
    let repeats = r#"xgate_billable_resources_total{dedup="repeat",endpoint="GET /2/tweets/search/recent",identity="main"} "#;
    assert_eq!(metric(&metrics(&proxy).await, repeats), 5.0);
}

/// Rule 2, streams: each delivered message is billed as it passes, keep-alives nothing.
#[tokio::test]
async fn a_streams_messages_are_billed_as_they_are_delivered() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&TestConfig::new(&fake.base_url()).toml()).await;
    fake.live().serve("/2/tweets/search/stream");
    crate::streams::add(
        proxy.addr,
        crate::support::proxy::KEY,
        serde_json::json!([{"value": "cats"}]),
    )
    .await;
    let cats = fake.live().id_of("cats");
    let mut consumer = crate::streams::Consumer::connect(
        proxy.addr,
        crate::support::proxy::KEY,
        "/2/tweets/search/stream",
    )
    .await
    .unwrap();
    assert!(
        fake.wait_until(Duration::from_secs(10), |f| f.live().counts().2 == 1)
            .await
    );
    for id in 1..=3 {
        fake.live().send(&crate::streams::message(id, &[&cats]));
    }
    for id in 1..=3 {
        assert_eq!(consumer.message().await["data"]["id"], id.to_string());
    }
    wait_metric(
        &proxy,
        &cost_line("main", "GET /2/tweets/search/stream"),
        0.015,
    )
    .await;
}

async fn post_tweet(proxy: &Proxy, text: &str) -> Answer {
    let body = serde_json::json!({ "text": text }).to_string();
    let req = request("POST", "/2/tweets")
        .header("x-xgate-key", crate::support::proxy::KEY)
        .header("x-xgate-identity", "alice")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(proxy.addr, req).await
}

/// Rule 1 and 2, writes: a Post costs Post: Create when X answered 2xx, the URL price when its
/// text holds a URL, nothing when X refused it; the body reaches X as sent.
#[tokio::test]
async fn a_post_costs_its_price_and_the_url_price_with_a_link() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&TestConfig::new(&fake.base_url()).toml()).await;
    let line = cost_line("alice", "POST /2/tweets");
    fake.script(
        "/2/tweets",
        Reply::json(201, r#"{"data":{"id":"77","text":"hello"}}"#),
    );
    assert_eq!(post_tweet(&proxy, "hello").await.status, 201);
    wait_metric(&proxy, &line, 0.015).await;
    assert_eq!(
        post_tweet(&proxy, "read https://example.com/a")
            .await
            .status,
        201
    );
    wait_metric(&proxy, &line, 0.215).await;
    let sent = fake.requests_to("/2/tweets");
    let last: serde_json::Value = serde_json::from_slice(&sent.last().unwrap().body).unwrap();
    assert_eq!(last["text"], "read https://example.com/a");
    fake.script("/2/tweets", Reply::json(403, r#"{"title":"Forbidden"}"#));
    assert_eq!(post_tweet(&proxy, "https://example.com").await.status, 403);
    // Nothing more was billed (a priced read after it shows the meter is caught up).
    fake.script("/2/tweets/9", Reply::json(200, r#"{"data":{"id":"9"}}"#));
    get(proxy.addr, "/2/tweets/9", Some("alice")).await;
    wait_metric(&proxy, &cost_line("alice", "GET /2/tweets/:id"), 0.005).await;
    assert!((metric(&metrics(&proxy).await, &line) - 0.215).abs() < 1e-9);
}

/// Rule 1, Owned Reads: once the identity's `GET /2/users/me` taught xgate its user id, its own
/// lists are metered at the Owned Reads price; another user's at the usual one.
#[tokio::test]
async fn owned_reads_are_priced_for_the_identitys_own_lists() {
    let fake = FakeX::start().await;
    let config = with_costs(
        TestConfig::new(&fake.base_url()),
        table([("owned_reads", toml::Value::Array(vec!["alice".into()]))]),
        &[],
    );
    let proxy = Proxy::start(&config.toml()).await;
    fake.script(
        "/2/users/me",
        Reply::json(200, r#"{"data":{"id":"4242","username":"alice"}}"#),
    );
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("alice")).await.status,
        200
    );
    wait_metric(&proxy, &cost_line("alice", "GET /2/users/me"), 0.01).await;
    fake.script("/2/users/4242/tweets", Reply::json(200, &page(9_000, 10)));
    get(proxy.addr, "/2/users/4242/tweets", Some("alice")).await;
    wait_metric(&proxy, &cost_line("alice", "GET /2/users/:id/tweets"), 0.01).await;
    fake.script("/2/users/99/tweets", Reply::json(200, &page(9_100, 10)));
    get(proxy.addr, "/2/users/99/tweets", Some("alice")).await;
    wait_metric(&proxy, &cost_line("alice", "GET /2/users/:id/tweets"), 0.06).await;
}

/// Rule 3: a burst against a budget of 0.05 USD a day, each request's worst case 0.005 USD
/// (one Post): exactly ten reach X, the rest get 429 budget-exhausted with retry-after and
/// x-rate-limit-reset at midnight UTC.
#[tokio::test]
async fn a_burst_forwards_exactly_what_the_budget_can_pay() {
    let fake = FakeX::start().await;
    let config = with_costs(
        TestConfig::new(&fake.base_url()).limit_override("GET /2/tweets/:id", &["100/1h"], &[]),
        toml::Table::new(),
        &[budget("narrow-daily", "client", "narrow", "0.05/1d")],
    );
    let proxy = Proxy::start(&config.toml()).await;
    for i in 0..30 {
        // Slow answers: every request is in flight before any is settled.
        fake.script(
            &format!("/2/tweets/{}", 100 + i),
            Reply::json(200, &format!(r#"{{"data":{{"id":"{}"}}}}"#, 100 + i))
                .delay(Duration::from_millis(300)),
        );
    }
    let mut tasks = Vec::new();
    for i in 0..30 {
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let req = request("GET", &format!("/2/tweets/{}", 100 + i))
                .header("x-xgate-key", NARROW_KEY)
                .header("x-xgate-identity", "main")
                .body(Full::<Bytes>::default())
                .unwrap();
            send(addr, req).await
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let ok = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(
        ok,
        10,
        "{:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(fake.requests().len(), 10);
    let refused = answers.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(refused.kind(), Some("budget-exhausted"));
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    let reset: u64 = refused
        .header("x-rate-limit-reset")
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry.abs_diff(to_midnight()) <= 2, "retry-after {retry}");
    assert_eq!(reset % 86_400, 0, "reset {reset} is midnight UTC");
    let p: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("budget narrow-daily"),
        "{p}"
    );
    wait_metric(
        &proxy,
        r#"xgate_budget_remaining_usd{budget="narrow-daily"} "#,
        0.0,
    )
    .await;
}

fn write_config(dir: &Path, toml: &str) -> std::path::PathBuf {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

/// `xgate usage ARGS` in this process (on a thread of its own: the command runs its own
/// runtime), reading the config at `config`.
async fn usage(config: &Path, args: &[&str]) -> (Result<(), xgate::cli::CliError>, String) {
    use clap::Parser as _;
    let mut argv: Vec<String> = ["xgate", "usage", "--config", config.to_str().unwrap()]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    tokio::task::spawn_blocking(move || {
        let cli = xgate::cli::Cli::try_parse_from(argv).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let result = xgate::cli::execute(&cli, &env(), &mut out, &mut err);
        (result, String::from_utf8(out).unwrap())
    })
    .await
    .unwrap()
}

/// Rules 4 and 5: the day's spend survives a restart (a budget spent before it stays spent),
/// and `xgate usage` reports it by client, identity or endpoint, in a table or as JSON, with
/// X's own count beside it under `--reconcile`.
#[tokio::test]
async fn spend_survives_a_restart_and_xgate_usage_reports_it() {
    let fake = FakeX::start().await;
    let dir = crate::support::scratch("costs-restart");
    let config = with_costs(
        TestConfig::new(&fake.base_url()),
        toml::Table::new(),
        &[budget("main-daily", "identity", "main", "0.02/1d")],
    )
    .toml();
    let path = write_config(&dir, &config);
    let proxy = Proxy::start_in(&config, &dir).await;
    for i in 0..4 {
        fake.script(
            &format!("/2/tweets/{}", 700 + i),
            Reply::json(200, &format!(r#"{{"data":{{"id":"{}"}}}}"#, 700 + i)),
        );
        assert_eq!(
            get(proxy.addr, &format!("/2/tweets/{}", 700 + i), Some("main"))
                .await
                .status,
            200
        );
    }
    fake.script("/2/tweets/search/recent", Reply::json(200, &page(800, 3)));
    get(proxy.addr, "/2/tweets/search/recent?query=x", Some("alice")).await;
    wait_metric(
        &proxy,
        r#"xgate_budget_remaining_usd{budget="main-daily"} "#,
        0.0,
    )
    .await;
    proxy.stop().await.unwrap();

    let proxy = Proxy::start_in(&config, &dir).await;
    let a = get(proxy.addr, "/2/tweets/704", Some("main")).await;
    assert_eq!(a.status, 429, "{}", a.text());
    assert_eq!(a.kind(), Some("budget-exhausted"));
    // Another identity is not covered by that budget.
    fake.script(
        "/2/tweets/705",
        Reply::json(200, r#"{"data":{"id":"705"}}"#),
    );
    assert_eq!(
        get(proxy.addr, "/2/tweets/705", Some("alice")).await.status,
        200
    );
    wait_metric(&proxy, &cost_line("alice", "GET /2/tweets/:id"), 0.005).await;
    proxy.stop().await.unwrap();

    let (result, table) = usage(&path, &["--by", "identity"]).await;
    result.unwrap();
    let line = |key: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} line in\n{table}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
    };
    // REQUESTS RESOURCES REPEATS POSTS COST_USD
    assert_eq!(line("main"), ["4", "4", "0", "4", "0.020000"], "{table}");
    assert_eq!(line("alice"), ["2", "4", "0", "4", "0.020000"], "{table}");
    assert_eq!(line("total"), ["6", "8", "0", "8", "0.040000"], "{table}");
    assert!(table.contains("estimate"), "{table}");

    let (result, json) = usage(&path, &["--by", "endpoint", "--json"]).await;
    result.unwrap();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["from"], today());
    assert_eq!(doc["total"]["cost_usd"], 0.04);
    let rows = doc["rows"].as_array().unwrap();
    let recent = rows
        .iter()
        .find(|r| r["endpoint"] == "GET /2/tweets/search/recent")
        .unwrap();
    assert_eq!(recent["resources"], 3);
    assert_eq!(recent["cost_usd"], 0.015);

    let usage_body = format!(
        r#"{{"data":{{"daily_project_usage":{{"project_id":"1","usage":[{{"date":"{}T00:00:00.000Z","usage":"10"}}]}},"project_usage":"10","project_cap":"3000000"}}}}"#,
        today()
    );
    fake.script("/2/usage/tweets", Reply::json(200, &usage_body));
    let (result, table) = usage(&path, &["--reconcile", "--app", "main"]).await;
    result.unwrap();
    let day = table
        .lines()
        .find(|l| l.starts_with(&today()))
        .unwrap_or_else(|| panic!("no line for today in\n{table}"));
    assert_eq!(
        day.split_whitespace().collect::<Vec<_>>(),
        [today().as_str(), "10", "8", "-2"],
        "{table}"
    );
    let asked = fake.requests_to("/2/usage/tweets");
    assert_eq!(asked.len(), 1);
    assert!(asked[0].target.contains("days=1"), "{}", asked[0].target);
    assert_eq!(
        asked[0].header("authorization"),
        Some(format!("Bearer {}", crate::support::fake_x::BEARER).as_str())
    );
}

/// `xgate usage` refuses a malformed date, naming it.
#[tokio::test]
async fn usage_names_a_bad_date() {
    let dir = crate::support::scratch("costs-usage-date");
    let path = write_config(&dir, &TestConfig::new("http://127.0.0.1:9").toml());
    let (result, _) = usage(&path, &["--from", "2026-13-01"]).await;
    let e = result.unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("--from 2026-13-01"), "{e}");
}

/// Rule 4: a crash loses at most the last second. The real binary meters three answers; the
/// spend reaches the store within the flush interval, without a shutdown, and `kill -9` then
/// loses none of it.
#[tokio::test]
async fn spend_reaches_the_store_every_second_and_survives_kill_9() {
    let fake = FakeX::start().await;
    let dir = crate::support::scratch("costs-kill");
    let path = write_config(&dir, &TestConfig::new(&fake.base_url()).toml());
    let served = crate::support::binary::serve(&dir, &[], &[]).await;
    let mut child = crate::support::binary::KillOnDrop(served.child);
    for i in 0..3 {
        fake.script(
            "/2/tweets/search/recent",
            Reply::json(200, &page(40_000 + i * 10, 10)),
        );
        let a = get(
            served.addr,
            "/2/tweets/search/recent?query=x",
            Some("alice"),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let total = |json: &str| -> f64 {
        let doc: serde_json::Value = serde_json::from_str(json).unwrap();
        doc["total"]["cost_usd"].as_f64().unwrap()
    };
    let mut stored = 0.0;
    // Bounded: 100 × 50 ms; the flusher writes every second.
    for _ in 0..100 {
        let (result, json) = usage(&path, &["--json"]).await;
        result.unwrap();
        stored = total(&json);
        if (stored - 0.15).abs() < 1e-9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((stored - 0.15).abs() < 1e-9, "stored {stored}");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let (result, json) = usage(&path, &["--json"]).await;
    result.unwrap();
    assert!((total(&json) - 0.15).abs() < 1e-9, "{json}");
}

/// Rule 3: a request a budget refuses uses no rate-limit bucket of section 5. The App may
/// make 12 lookups an hour; 15 by a client whose budget pays for 10 leave 2 for another
/// client, not none.
#[tokio::test]
async fn a_request_a_budget_refuses_uses_no_bucket() {
    let fake = FakeX::start().await;
    let config = with_costs(
        TestConfig::new(&fake.base_url()).limit_override("GET /2/tweets/:id", &["12/1h"], &[]),
        toml::Table::new(),
        &[budget("narrow-daily", "client", "narrow", "0.05/1d")],
    );
    let proxy = Proxy::start(&config.toml()).await;
    let mut statuses = Vec::new();
    for id in 900..915 {
        fake.script(
            &format!("/2/tweets/{id}"),
            Reply::json(200, &format!(r#"{{"data":{{"id":"{id}"}}}}"#)),
        );
        let req = request("GET", &format!("/2/tweets/{id}"))
            .header("x-xgate-key", NARROW_KEY)
            .header("x-xgate-identity", "main")
            .body(Full::<Bytes>::default())
            .unwrap();
        let a = send(proxy.addr, req).await;
        statuses.push((a.status.as_u16(), a.kind().map(str::to_owned)));
    }
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let refused = statuses
        .iter()
        .filter(|(s, k)| *s == 429 && k.as_deref() == Some("budget-exhausted"))
        .count();
    assert_eq!((ok, refused), (10, 5), "{statuses:?}");
    // The backend client (no budget) finds the App's two remaining lookups, then X's limit.
    let after: Vec<u16> = [
        get(proxy.addr, "/2/tweets/1", Some("main")).await,
        get(proxy.addr, "/2/tweets/2", Some("main")).await,
        get(proxy.addr, "/2/tweets/3", Some("main")).await,
    ]
    .iter()
    .map(|a| a.status.as_u16())
    .collect();
    assert_eq!(after, [200, 200, 429]);
    assert_eq!(fake.requests_to("/2/tweets/").len(), 12);
    // Both refuse the next narrow request: the budget answers, as section 7 orders them.
    let req = request("GET", "/2/tweets/999")
        .header("x-xgate-key", NARROW_KEY)
        .header("x-xgate-identity", "main")
        .body(Full::<Bytes>::default())
        .unwrap();
    assert_eq!(send(proxy.addr, req).await.kind(), Some("budget-exhausted"));
}
