//! The meter with a manual clock and no sockets: prices, worst cases, deduplication by UTC
//! day, budgets across a period's end, reservations under a concurrent burst.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::body::Tap as _;
use crate::clock::ManualClock;

/// 2026-12-01T23:59:00Z.
const LATE: u64 = 1_796_169_540;

const CONFIG: &str = r#"
[apps.main]
bearer_token = "t"
consumer_key = "k"
consumer_secret = "s"
[users.alice]
app = "main"
auth = "oauth1"
token = "a"
token_secret = "b"
[[clients]]
name = "backend"
anonymous = true
identities = ["main", "alice"]
default_identity = "main"
[costs]
owned_reads = ["alice"]
"#;

const BUDGETS: &str = r#"
[[budgets]]
name = "daily"
client = "backend"
limit = "0.05/1d"
[[budgets]]
name = "monthly"
app = "main"
limit = "1/1mo"
"#;

struct World {
    meter: Arc<Meter>,
    clock: Arc<ManualClock>,
    identities: Arc<Identities>,
    catalogue: Arc<Catalogue>,
    metrics: Arc<Metrics>,
}

async fn world(extra: &str) -> World {
    let text = format!("{CONFIG}{extra}");
    let config = Config::from_toml_str(
        &text,
        std::path::Path::new("."),
        &std::collections::BTreeMap::new(),
    )
    .unwrap();
    let identities = Arc::new(Identities::from_config(&config).unwrap());
    let catalogue = Arc::new(
        Catalogue::new(&config.limits.overrides)
            .unwrap()
            .priced(&config.costs.overrides)
            .unwrap(),
    );
    let metrics = Arc::new(Metrics::new(&catalogue, &identities).unwrap());
    let clock = ManualClock::at(LATE);
    let meter = Meter::new(
        &config,
        Arc::clone(&catalogue),
        Arc::clone(&identities),
        &metrics,
        None,
        Arc::clone(&clock) as Arc<dyn Clock>,
    )
    .await
    .unwrap();
    World {
        meter,
        clock,
        identities,
        catalogue,
        metrics,
    }
}

impl World {
    fn endpoint(&self, method: &str, path: &str) -> Option<EndpointId> {
        self.catalogue.lookup(&method.parse().unwrap(), path)
    }

    async fn reserve(
        &self,
        identity: &str,
        method: &str,
        target: &str,
    ) -> Result<Charge, ProxyError> {
        let uri: Uri = target.parse().unwrap();
        let endpoint = self.endpoint(method, uri.path());
        let method: Method = method.parse().unwrap();
        self.meter
            .reserve(
                Arc::from("backend"),
                self.identities.find(identity).unwrap(),
                endpoint,
                (&method, &uri),
                None,
            )
            .await
    }

    /// A request answered `status` with `body`: its settled cost.
    async fn answer(&self, identity: &str, target: &str, status: u16, body: &str) -> u64 {
        let mut charge = self.reserve(identity, "GET", target).await.unwrap();
        if charge.answered(status) {
            // Fed in small pieces: chunk boundaries anywhere.
            for piece in body.as_bytes().chunks(7) {
                assert!(charge.chunk(piece));
            }
        }
        finish_now(charge)
    }

    fn used(&self, budget: usize) -> u64 {
        let rule = &self.meter.rules[budget];
        self.meter
            .local
            .used(budget, period_of(rule.period, self.meter.today()).0)
    }
}

/// The settled cost of a charge whose body ended (the local meter settles at once).
fn finish_now(charge: Charge) -> u64 {
    match Box::new(charge).finish() {
        Tapped::Now(cost) => cost,
        Tapped::Later(_) => panic!("the local meter settles at once"),
    }
}

fn page(ids: std::ops::Range<u32>) -> String {
    let items: Vec<String> = ids
        .map(|i| format!(r#"{{"id":"{i}","text":"post \"{i}\" \u00e9 [not data]"}}"#))
        .collect();
    format!(
        r#"{{"data":[{}],"meta":{{"result_count":1,"data":[1,2]}}}}"#,
        items.join(",")
    )
}

#[tokio::test]
async fn reads_cost_their_resources_times_the_price_and_errors_nothing() {
    let w = world("").await;
    // Posts: Read, 0.005 each.
    assert_eq!(
        w.answer("main", "/2/tweets/search/recent?query=a", 200, &page(0..0))
            .await,
        0
    );
    assert_eq!(
        w.answer(
            "main",
            "/2/tweets/search/recent?query=a",
            200,
            &page(100..101)
        )
        .await,
        5_000
    );
    assert_eq!(
        w.answer(
            "main",
            "/2/tweets/search/recent?query=a",
            200,
            &page(200..210)
        )
        .await,
        50_000
    );
    // User: Read, 0.010 each, one object.
    assert_eq!(
        w.answer(
            "main",
            "/2/users/7",
            200,
            r#"{"data":{"id":"7","name":"x"}}"#
        )
        .await,
        10_000
    );
    // No `data`, an error status, a 200 of errors only: nothing.
    assert_eq!(
        w.answer("main", "/2/users/8", 200, r#"{"errors":[{"id":"1"}]}"#)
            .await,
        0
    );
    assert_eq!(
        w.answer(
            "main",
            "/2/tweets/search/recent?query=a",
            400,
            &page(300..310)
        )
        .await,
        0
    );
    assert_eq!(
        w.answer(
            "main",
            "/2/tweets/search/recent?query=a",
            503,
            &page(300..310)
        )
        .await,
        0
    );
    // Unpriced: nothing.
    assert_eq!(
        w.answer(
            "main",
            "/2/compliance/jobs",
            200,
            r#"{"data":[{"id":"1"}]}"#
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_resource_is_billed_once_per_app_and_utc_day() {
    let w = world("").await;
    let target = "/2/tweets/search/recent?query=a";
    assert_eq!(w.answer("main", target, 200, &page(0..10)).await, 50_000);
    // The same ten, and five new: only the five. Through another identity of the App: the same.
    assert_eq!(w.answer("main", target, 200, &page(0..15)).await, 25_000);
    assert_eq!(w.answer("alice", target, 200, &page(5..15)).await, 0);
    // A user of the same id is another resource.
    assert_eq!(
        w.answer("main", "/2/users/3", 200, r#"{"data":{"id":"3"}}"#)
            .await,
        10_000
    );
    // Past midnight UTC, the same resources cost again.
    w.clock.advance(Duration::from_secs(60));
    assert_eq!(w.answer("main", target, 200, &page(0..10)).await, 50_000);
    let text = String::from_utf8(w.metrics.render()).unwrap();
    assert!(
        text.contains(r#"xgate_billable_resources_total{dedup="repeat",endpoint="GET /2/tweets/search/recent",identity="main"} 10"#),
        "{text}"
    );
}

#[tokio::test]
async fn owned_reads_apply_to_the_identitys_own_lists_once_its_id_is_known() {
    let w = world("").await;
    let alice = w.identities.find("alice").unwrap();
    // Not known yet: the full price.
    assert_eq!(
        w.answer("alice", "/2/users/42/tweets", 200, &page(0..2))
            .await,
        10_000
    );
    assert!(w.meter.needs_user_id(alice));
    // Its GET /2/users/me teaches xgate the id (and costs a User read).
    assert_eq!(
        w.answer(
            "alice",
            "/2/users/me",
            200,
            r#"{"data":{"id":"42","username":"alice"}}"#
        )
        .await,
        10_000
    );
    assert_eq!(w.meter.owned_user_id(alice), Some("42"));
    assert_eq!(
        w.answer("alice", "/2/users/42/tweets", 200, &page(10..12))
            .await,
        2_000
    );
    // Another user's list, or the App's own request: the full price.
    assert_eq!(
        w.answer("alice", "/2/users/43/tweets", 200, &page(20..22))
            .await,
        10_000
    );
    assert_eq!(
        w.answer("main", "/2/users/42/tweets", 200, &page(30..32))
            .await,
        10_000
    );
}

#[tokio::test]
async fn the_worst_case_follows_max_results_the_ids_asked_for_or_the_largest_page() {
    let w = world("").await;
    let worst = |target: &str| {
        let uri: Uri = target.parse().unwrap();
        let e = w.endpoint("GET", uri.path()).unwrap();
        let c = w.catalogue.get(e).unwrap();
        worst_case(&c.price, &uri, c.stream, None)
    };
    assert_eq!(worst("/2/tweets/search/recent?query=a"), 100 * 5_000);
    assert_eq!(
        worst("/2/tweets/search/recent?query=a&max_results=10"),
        10 * 5_000
    );
    assert_eq!(
        worst("/2/tweets/search/all?query=a&max_results=5000"),
        500 * 5_000
    );
    assert_eq!(worst("/2/tweets?ids=1,2,3"), 3 * 5_000);
    assert_eq!(worst("/2/tweets?ids=1%2C2"), 2 * 5_000);
    assert_eq!(worst("/2/users/7"), 10_000);
    assert_eq!(worst("/2/tweets/search/stream"), 5_000);
    let post = w.endpoint("POST", "/2/tweets").unwrap();
    let price = w.catalogue.get(post).unwrap().price;
    let uri: Uri = "/2/tweets".parse().unwrap();
    assert_eq!(worst_case(&price, &uri, false, None), 200_000);
    assert_eq!(worst_case(&price, &uri, false, Some(true)), 200_000);
    assert_eq!(worst_case(&price, &uri, false, Some(false)), 15_000);
}

#[test]
fn a_posts_url_is_found_in_its_text() {
    assert_eq!(
        post_has_url(br#"{"text":"see https://example.com"}"#),
        Some(true)
    );
    assert_eq!(
        post_has_url(br#"{"text":"see WWW.example.com"}"#),
        Some(true)
    );
    assert_eq!(post_has_url(br#"{"text":"no link here"}"#), Some(false));
    assert_eq!(
        post_has_url(br#"{"media":{"media_ids":["1"]}}"#),
        Some(false)
    );
    assert_eq!(post_has_url(b"not json"), None);
}

#[tokio::test]
async fn a_budget_refuses_what_it_cannot_pay_and_resets_at_its_periods_end() {
    let w = world(BUDGETS).await;
    // daily: 0.05 USD; a Post lookup reserves 0.005: ten fit.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(w.reserve("main", "GET", "/2/tweets/1").await.unwrap());
    }
    let Err(e) = w.reserve("main", "GET", "/2/tweets/1").await else {
        panic!("the eleventh was reserved");
    };
    let ProxyError::BudgetExhausted {
        budget,
        reset_ms,
        now_ms,
        ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(budget, "daily");
    // 23:59:00: the period ends at midnight, 60 s away.
    assert_eq!((reset_ms - now_ms) / 1000, 60);
    // Settled: five answered with nothing, five never sent: all given back.
    for (i, mut c) in held.drain(..).enumerate() {
        if i < 5 {
            assert!(c.answered(200));
            assert!(c.chunk(br#"{"errors":[]}"#));
            let _cost = finish_now(c);
        }
    }
    assert_eq!(w.used(0), 0);
    // Spent to the limit: refused until midnight, then room again.
    for i in 0..10 {
        let body = format!(r#"{{"data":{{"id":"{i}"}}}}"#);
        assert_eq!(
            w.answer("main", &format!("/2/tweets/{i}"), 200, &body)
                .await,
            5_000
        );
    }
    assert_eq!(w.used(0), 50_000);
    assert!(w.reserve("main", "GET", "/2/tweets/99").await.is_err());
    w.clock.advance(Duration::from_secs(60));
    assert!(w.reserve("main", "GET", "/2/tweets/99").await.is_ok());
    // The monthly budget goes on into the 2nd with what the 1st spent.
    assert_eq!(w.used(1), 50_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_never_reserves_past_the_limit() {
    let w = Arc::new(world(BUDGETS).await);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let w = Arc::clone(&w);
        tasks.push(tokio::spawn(async move {
            w.reserve("main", "GET", "/2/tweets/1").await
        }));
    }
    let mut granted = Vec::new();
    for t in tasks {
        if let Ok(c) = t.await.unwrap() {
            granted.push(c);
        }
    }
    assert_eq!(granted.len(), 10);
    assert_eq!(w.used(0), 50_000);
}

#[tokio::test]
async fn an_override_replaces_a_price() {
    let w = world(
        r#"
[[costs.override]]
endpoint = "GET /2/tweets/search/recent"
per_resource = 0.002
[[costs.override]]
endpoint = "GET /2/compliance/jobs"
per_request = 0.5
"#,
    )
    .await;
    assert_eq!(
        w.answer("main", "/2/tweets/search/recent?query=a", 200, &page(0..10))
            .await,
        20_000
    );
    assert_eq!(
        w.answer("main", "/2/compliance/jobs", 200, r#"{"data":[]}"#)
            .await,
        500_000
    );
}

#[test]
fn periods_end_at_midnight_and_at_the_first_of_the_month() {
    let dec1 = days_from_civil(2026, 12, 1);
    assert_eq!(
        period_of(Period::Day, dec1 + 5),
        (dec1 + 5, (dec1 as u64 + 6) * 86_400_000)
    );
    let jan1 = days_from_civil(2027, 1, 1);
    assert_eq!(
        period_of(Period::Month, dec1 + 30),
        (dec1, jan1 as u64 * 86_400_000)
    );
    let (feb, mar) = (days_from_civil(2028, 2, 1), days_from_civil(2028, 3, 1));
    assert_eq!(mar - feb, 29);
    assert_eq!(
        period_of(Period::Month, feb + 28).1,
        mar as u64 * 86_400_000
    );
    assert_eq!(date_of_days(dec1), "2026-12-01");
    assert_eq!(crate::clock::days_of_date("2026-12-01"), Some(dec1));
    assert_eq!(crate::clock::days_of_date("2026-02-30"), None);
}

#[test]
fn fingerprints_are_stable_and_tell_kinds_apart() {
    // FNV-1a: the same value in every build and process (replicas compare them in Redis).
    assert_eq!(fingerprint("", ""), 0xaf63_bd4c_8601_b7df);
    assert_ne!(
        fingerprint("Posts: Read", "1"),
        fingerprint("User: Read", "1")
    );
    assert_eq!(
        fingerprint("Posts: Read", "20"),
        fingerprint("Posts: Read", "20")
    );
}

#[tokio::test]
async fn a_stream_is_billed_per_message_and_ended_when_its_budget_is_spent() {
    let w = world(BUDGETS).await;
    // daily: 0.05 USD; each delivered Post 0.005: the tenth spends it.
    let mut charge = w
        .reserve("main", "GET", "/2/tweets/search/stream")
        .await
        .unwrap();
    assert!(charge.answered(200));
    let mut delivered = 0;
    for id in 0..20 {
        let message =
            format!(r#"{{"data":{{"id":"{id}","text":"m"}},"matching_rules":[]}}"#) + "\r\n";
        delivered += 1;
        // Keep-alives between messages bill nothing.
        assert!(charge.chunk(b"\r\n"));
        if !charge.chunk(message.as_bytes()) {
            break;
        }
    }
    assert_eq!(delivered, 10, "the stream went on past its budget");
    assert_eq!(finish_now(charge), 50_000);
    // Everything reserved for the stream was settled or given back.
    assert_eq!(w.used(0), 50_000);
}
