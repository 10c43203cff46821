use std::sync::atomic::Ordering;

use http::{HeaderMap, HeaderValue, Method};

use super::memory::{MemoryBackend, MemoryHeld};
use super::*;
use crate::clock::ManualClock;
use crate::config::{EndpointPattern, Override};

const T0: u64 = 1_700_000_000;

fn rate(s: &str) -> Rate {
    Rate::parse(s).unwrap()
}

use crate::identity::test_identities as identities;

struct Ids {
    main: IdentityId,
    other: IdentityId,
    alice: IdentityId,
    carol: IdentityId,
    bob: IdentityId,
}

fn ids(t: &Identities) -> Ids {
    let id = |n| t.find(n).unwrap();
    Ids {
        main: id("main"),
        other: id("other"),
        alice: id("alice"),
        carol: id("carol"),
        bob: id("bob"),
    }
}

fn override_(endpoint: &str, app: &[&str], user: &[&str]) -> Override {
    Override {
        endpoint: EndpointPattern::parse(endpoint).unwrap(),
        app: app.iter().map(|s| rate(s)).collect(),
        user: user.iter().map(|s| rate(s)).collect(),
    }
}

fn limits(overrides: Vec<Override>) -> Limits {
    Limits {
        on_exhausted: OnExhausted::Reject,
        max_wait: Duration::ZERO,
        usage_cap_cooldown: Duration::from_secs(300),
        overrides,
    }
}

/// The in-memory backend driven synchronously, as the limiter drives it, with a manual clock.
struct L {
    backend: MemoryBackend,
    catalogue: Arc<Catalogue>,
    identities: Identities,
    clock: Arc<ManualClock>,
}

/// A reservation that counts as sent (dropping it completes it), unless released.
struct A<'a>(MemoryHeld<'a>, &'a L);

impl A<'_> {
    fn learn(&self, headers: &HeaderMap) -> Option<u32> {
        let reports = Reports::from_headers(headers);
        self.0.learn_now(&reports, self.1.now_ms());
        reports.primary.map(|r| r.remaining)
    }

    fn release(mut self) {
        self.0.set_sent(false);
    }
}

impl std::fmt::Debug for A<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl L {
    fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    fn now_ms(&self) -> u64 {
        unix_ms(&*self.clock)
    }

    fn admit(&self, id: IdentityId, e: Option<EndpointId>) -> Result<A<'_>, Refused> {
        let draw = Draw {
            identity: id,
            endpoint: e,
            client: None,
        };
        self.backend
            .reserve_now(draw, self.now_ms())
            .map(|mut held| {
                held.set_sent(true);
                A(held, self)
            })
    }

    fn usage_capped(&self, id: IdentityId) {
        let app = self.identities.get(id).app;
        self.backend
            .usage_capped(app, self.now_ms(), Duration::from_secs(300));
    }
}

fn limiter(overrides: &[Override]) -> (L, Arc<ManualClock>) {
    let clock = ManualClock::at(T0);
    let catalogue = Arc::new(Catalogue::new(overrides).unwrap());
    let identities = identities();
    let l = L {
        backend: MemoryBackend::new(Arc::clone(&catalogue), &identities),
        catalogue,
        identities,
        clock: Arc::clone(&clock),
    };
    (l, clock)
}

fn ep(l: &L, method: &Method, path: &str) -> EndpointId {
    l.catalogue()
        .lookup(method, path)
        .unwrap_or_else(|| panic!("{method} {path} is not in the catalogue"))
}

/// Admits `n` requests and returns how many went through (each completed at once).
fn burst(l: &L, id: IdentityId, e: EndpointId, n: usize) -> usize {
    (0..n).filter(|_| l.admit(id, Some(e)).is_ok()).count()
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn window_refusal(r: Result<A<'_>, Refused>) -> Refusal {
    match r {
        Err(Refused::Window(r)) => r,
        Err(other) => panic!("refused for another reason: {other:?}"),
        Ok(admission) => {
            drop(admission);
            panic!("admitted")
        }
    }
}

// === buckets (CONTRACT section 5) ===

/// Rule 1: from a cold start, a burst on a bucket of L forwards at most L.
#[test]
fn rule_1_a_cold_burst_admits_the_limit() {
    let (l, clock) = limiter(&[]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    assert_eq!(burst(&l, i.main, e, 500), 450);
    // Users have their own buckets (900/15m each), not the App's.
    assert_eq!(burst(&l, i.alice, e, 1000), 900);
    assert_eq!(burst(&l, i.carol, e, 1000), 900);
    // The window ends 15 minutes after its first request.
    let r = window_refusal(l.admit(i.main, Some(e)));
    assert_eq!(r.reset_ms, T0 * 1000 + 900_000);
    assert_eq!(r.limit, 450);
    clock.advance(Duration::from_secs(900));
    assert_eq!(burst(&l, i.main, e, 500), 450);
}

#[test]
fn other_endpoints_have_no_bucket() {
    let (l, _) = limiter(&[]);
    let i = ids(&l.identities);
    assert_eq!(
        (0..10_000)
            .filter(|_| l.admit(i.main, None).is_ok())
            .count(),
        10_000
    );
}

#[test]
fn several_windows_all_apply_and_a_refusal_uses_up_none() {
    // search/all: 1/1s + 300/15m per App.
    let (l, clock) = limiter(&[]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/search/all");
    assert!(l.admit(i.main, Some(e)).is_ok());
    let r = window_refusal(l.admit(i.main, Some(e)));
    assert_eq!((r.limit, r.window), (1, Duration::from_secs(1)));
    assert_eq!(r.reset_ms, T0 * 1000 + 1_000);
    // The 1/s refusals did not draw from the 15-minute window: after 299 more seconds it
    // has admitted exactly 300.
    let mut admitted = 1;
    for _ in 0..299 {
        clock.advance(Duration::from_secs(1));
        for _ in 0..5 {
            admitted += usize::from(l.admit(i.main, Some(e)).is_ok());
        }
    }
    assert_eq!(admitted, 300);
    clock.advance(Duration::from_secs(1));
    let r = window_refusal(l.admit(i.main, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (300, T0 * 1000 + 900_000));
}

#[test]
fn the_refusal_names_the_bucket_that_allows_a_request_last() {
    let (l, _) = limiter(&[override_("GET /2/tweets/:id", &["1/1s", "1/15m"], &[])]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    assert!(l.admit(i.main, Some(e)).is_ok());
    let r = window_refusal(l.admit(i.main, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (1, T0 * 1000 + 900_000));
}

#[test]
fn user_context_draws_from_the_apps_24_hour_window_but_not_its_15_minute_one() {
    // POST /2/tweets: 10,000/24h per App, 100/15m per user.
    let (l, _) = limiter(&[override_("POST /2/tweets", &["3/24h", "1/15m"], &["2/15m"])]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::POST, "/2/tweets");
    assert_eq!(burst(&l, i.alice, e, 10), 2);
    // carol has her own 2/15m, but the App's day window (3) counts alice's too; the App's
    // 1/15m never limits users.
    assert_eq!(burst(&l, i.carol, e, 10), 1);
    let r = window_refusal(l.admit(i.carol, Some(e)));
    assert_eq!((r.limit, r.window), (3, DAY_WINDOW));
    // The other App is not affected.
    assert_eq!(burst(&l, i.other, e, 10), 1);
}

#[test]
fn a_user_request_refused_by_the_apps_day_window_gives_back_its_own_reservation() {
    let (l, _) = limiter(&[override_("POST /2/tweets", &["1/24h"], &["10/15m"])]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::POST, "/2/tweets");
    assert_eq!(burst(&l, i.alice, e, 50), 1);
    // 49 requests were refused by the App's day window after reserving in alice's own
    // window; each gave it back.
    let own = &l.backend.buckets(i.alice, e).unwrap().windows[0];
    assert_eq!(own.snapshot().1, 9);
    assert_eq!(own.snapshot().3, 0);
}

#[test]
fn released_admissions_use_up_nothing_and_dropped_ones_count() {
    let (l, _) = limiter(&[override_("GET /2/tweets/:id", &["2/15m"], &[])]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    for _ in 0..10 {
        l.admit(i.main, Some(e)).unwrap().release();
    }
    let a = l.admit(i.main, Some(e)).unwrap();
    let b = l.admit(i.main, Some(e)).unwrap();
    assert!(l.admit(i.main, Some(e)).is_err());
    drop(a);
    drop(b);
    assert!(l.admit(i.main, Some(e)).is_err());
}

/// Rule 2: X's remaining and reset set the window; requests in flight count; an answer
/// never raises what remains in the same window.
#[test]
fn rule_2_learning_from_x_rate_limit_headers() {
    let (l, clock) = limiter(&[]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let reset = T0 + 120;
    let mine = l.admit(i.main, Some(e)).unwrap();
    let other = l.admit(i.main, Some(e)).unwrap();
    let seen = mine.learn(&headers(&[
        ("x-rate-limit-limit", "450".into()),
        ("x-rate-limit-remaining", "3".into()),
        ("x-rate-limit-reset", reset.to_string()),
    ]));
    assert_eq!(seen, Some(3));
    drop(mine);
    // 3 left after mine, one other in flight: 2 more go out before the reset.
    assert_eq!(burst(&l, i.main, e, 10), 2);
    let r = window_refusal(l.admit(i.main, Some(e)));
    assert_eq!(r.reset_ms, reset * 1000);
    // The other's answer, same reset, more remaining: does not raise it.
    other.learn(&headers(&[
        ("x-rate-limit-remaining", "100".into()),
        ("x-rate-limit-reset", reset.to_string()),
    ]));
    drop(other);
    assert!(l.admit(i.main, Some(e)).is_err());
    clock.advance(Duration::from_secs(120));
    assert_eq!(burst(&l, i.main, e, 500), 450);
}

#[test]
fn rule_2_zero_remaining_refuses_until_the_reset_and_x_limit_replaces_the_figure() {
    let (l, clock) = limiter(&[]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let a = l.admit(i.alice, Some(e)).unwrap();
    a.learn(&headers(&[
        ("x-rate-limit-limit", "5".into()),
        ("x-rate-limit-remaining", "0".into()),
        ("x-rate-limit-reset", (T0 + 30).to_string()),
    ]));
    drop(a);
    let r = window_refusal(l.admit(i.alice, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (5, (T0 + 30) * 1000));
    clock.advance(Duration::from_secs(30));
    // The next window is X's figure, 5, not the catalogue's 900.
    assert_eq!(burst(&l, i.alice, e, 100), 5);
}

#[test]
fn an_override_wins_over_what_x_reports() {
    let (l, clock) = limiter(&[override_("GET /2/tweets/:id", &["3/15m"], &[])]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let a = l.admit(i.main, Some(e)).unwrap();
    a.learn(&headers(&[
        ("x-rate-limit-limit", "450".into()),
        ("x-rate-limit-remaining", "0".into()),
        ("x-rate-limit-reset", (T0 + 4_000_000).to_string()),
    ]));
    drop(a);
    // The override's own window of 15 minutes and its count hold.
    assert_eq!(burst(&l, i.main, e, 10), 2);
    let r = window_refusal(l.admit(i.main, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (3, (T0 + 900) * 1000));
    clock.advance(Duration::from_secs(900));
    assert_eq!(burst(&l, i.main, e, 10), 3);
}

#[test]
fn rule_2_24_hour_headers_update_the_user_and_app_day_buckets_and_create_missing_ones() {
    // GET /2/tweets/:id has no 24-hour figure: the headers create both day buckets.
    let (l, clock) = limiter(&[]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let a = l.admit(i.alice, Some(e)).unwrap();
    a.learn(&headers(&[
        ("x-user-limit-24hour-limit", "100".into()),
        ("x-user-limit-24hour-remaining", "1".into()),
        ("x-user-limit-24hour-reset", (T0 + 3_600).to_string()),
        ("x-app-limit-24hour-limit", "1000".into()),
        ("x-app-limit-24hour-remaining", "2".into()),
        ("x-app-limit-24hour-reset", (T0 + 7_200).to_string()),
    ]));
    drop(a);
    assert_eq!(burst(&l, i.alice, e, 10), 1);
    let r = window_refusal(l.admit(i.alice, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (100, (T0 + 3_600) * 1000));
    // The App's day bucket had 2 left, one went to alice: carol gets the other one.
    assert_eq!(burst(&l, i.carol, e, 10), 1);
    let r = window_refusal(l.admit(i.carol, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (1000, (T0 + 7_200) * 1000));
    // App-only requests count against the App's day bucket too.
    assert!(l.admit(i.main, Some(e)).is_err());
    clock.advance(Duration::from_secs(7_200));
    assert!(l.admit(i.main, Some(e)).is_ok());
}

#[test]
fn headers_on_other_endpoints_or_without_numbers_change_nothing() {
    let (l, _) = limiter(&[]);
    let i = ids(&l.identities);
    let a = l.admit(i.main, None).unwrap();
    assert_eq!(
        a.learn(&headers(&[
            ("x-rate-limit-remaining", "0".into()),
            ("x-rate-limit-reset", (T0 + 60).to_string()),
        ])),
        Some(0)
    );
    assert!(l.admit(i.main, None).is_ok());
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let a = l.admit(i.main, Some(e)).unwrap();
    a.learn(&headers(&[
        ("x-rate-limit-remaining", "zero".into()),
        ("x-rate-limit-reset", (T0 + 60).to_string()),
    ]));
    drop(a);
    assert_eq!(burst(&l, i.main, e, 500), 449);
}

/// Rule 3: usage-capped blocks the App and all its users for the cooldown.
#[test]
fn rule_3_usage_capped_cools_down_the_app_and_its_users() {
    let (l, clock) = limiter(&[]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    l.usage_capped(i.alice);
    for id in [i.main, i.alice, i.carol, i.bob] {
        match l.admit(id, Some(e)) {
            Err(Refused::UsageCapped { until_ms }) => assert_eq!(until_ms, (T0 + 300) * 1000),
            other => panic!("{id:?}: {other:?}"),
        }
    }
    assert!(l.admit(i.main, None).is_err());
    assert!(l.admit(i.other, Some(e)).is_ok());
    clock.advance(Duration::from_secs(300));
    assert!(l.admit(i.main, Some(e)).is_ok());
}

#[test]
fn usage_capped_bodies_are_recognised() {
    assert!(is_usage_capped(
        br#"{"title":"UsageCapExceeded","period":"Monthly","scope":"Product","detail":"Usage cap exceeded: Monthly product cap","type":"https://api.twitter.com/2/problems/usage-capped"}"#
    ));
    assert!(is_usage_capped(
        br#"{"type":"https://api.x.com/2/problems/usage-capped"}"#
    ));
    assert!(!is_usage_capped(
        br#"{"title":"Too Many Requests","detail":"Too Many Requests","type":"about:blank","status":429}"#
    ));
    assert!(!is_usage_capped(
        br#"{"errors":[{"code":88,"message":"Rate limit exceeded"}]}"#
    ));
    assert!(!is_usage_capped(b"not json"));
}

#[test]
fn sixty_four_threads_on_a_bucket_of_ten_admit_exactly_ten() {
    let (l, _) = limiter(&[override_("GET /2/tweets/:id", &["10/15m"], &[])]);
    let i = ids(&l.identities);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let barrier = std::sync::Barrier::new(64);
    let admitted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..64 {
            s.spawn(|| {
                barrier.wait();
                if l.admit(i.main, Some(e)).is_ok() {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 10);
}

#[test]
fn client_rate_is_a_burst_then_a_steady_share() {
    // The share reads the injected clock: time moves only when the test moves it.
    let clock = ManualClock::at(T0);
    let share = ClientRate::new(rate("3/1h"), Arc::clone(&clock) as Arc<dyn Clock>);
    for _ in 0..3 {
        share.check().unwrap();
    }
    // One cell per 20 minutes.
    assert_eq!(share.check().unwrap_err(), Duration::from_secs(20 * 60));
    clock.advance(Duration::from_secs(19 * 60));
    assert_eq!(share.check().unwrap_err(), Duration::from_secs(60));
    clock.advance(Duration::from_secs(60));
    share.check().unwrap();
    assert!(share.check().is_err());
}

// === the limiter: reservations that give themselves back, the wait policy ===

fn real_limiter(overrides: &[Override], limits: &Limits, clock: Arc<dyn Clock>) -> Limiter {
    let catalogue = Arc::new(Catalogue::new(overrides).unwrap());
    Limiter::in_memory(catalogue, Arc::new(identities()), limits, clock)
}

fn draw(identity: IdentityId, endpoint: EndpointId) -> Draw<'static> {
    Draw {
        identity,
        endpoint: Some(endpoint),
        client: None,
    }
}

#[tokio::test]
async fn an_admission_dropped_unsent_gives_itself_back_and_a_sent_one_counts() {
    let overrides = vec![override_("GET /2/tweets/:id", &["2/15m"], &[])];
    let l = real_limiter(&overrides, &limits(overrides.clone()), ManualClock::at(T0));
    let t = identities();
    let main = t.find("main").unwrap();
    let e = Catalogue::new(&[])
        .unwrap()
        .lookup(&Method::GET, "/2/tweets/1")
        .unwrap();
    // Any number of admissions dropped before `sent` use up nothing.
    for _ in 0..10 {
        drop(l.admit(draw(main, e)).await.unwrap());
    }
    // A sent one counts; one sent but whose connection to X never formed is given back.
    let mut a = l.admit(draw(main, e)).await.unwrap();
    a.sent();
    let mut b = l.admit(draw(main, e)).await.unwrap();
    b.sent();
    b.never_reached();
    drop((a, b));
    let mut c = l.admit(draw(main, e)).await.unwrap();
    c.sent();
    drop(c);
    let err = l.admit(draw(main, e)).await.unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::RateLimited);
}

#[tokio::test]
async fn a_client_share_refusal_gives_back_the_buckets_and_names_the_client() {
    let overrides = vec![override_("GET /2/tweets/:id", &["5/15m"], &[])];
    let clock = ManualClock::at(T0);
    let l = real_limiter(
        &overrides,
        &limits(overrides.clone()),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    let t = identities();
    let main = t.find("main").unwrap();
    let e = Catalogue::new(&[])
        .unwrap()
        .lookup(&Method::GET, "/2/tweets/1")
        .unwrap();
    let share = l.client_rate(rate("1/1m"));
    let with_share = Draw {
        client: Some(("backend", &share)),
        ..draw(main, e)
    };
    let mut a = l.admit(with_share).await.unwrap();
    a.sent();
    drop(a);
    let err = l.admit(with_share).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "client backend: GET /2/tweets/:id limit 1/1m reached; resets in 60 s"
    );
    // The refused request took nothing from the App's bucket: 4 of 5 are left.
    let mut admitted = 0;
    while let Ok(mut a) = l.admit(draw(main, e)).await {
        a.sent();
        admitted += 1;
        assert!(admitted <= 5, "the bucket never ran out");
    }
    assert_eq!(admitted, 4);
}

/// `on_exhausted = "wait"` holds a request until its bucket has room, when that is within
/// `max_wait`, and refuses at once otherwise. Paused time: the wait takes no real time, and
/// the limiter's clock ([`crate::clock::TokioClock`]) moves with tokio's.
#[tokio::test(start_paused = true)]
async fn the_wait_policy_holds_a_request_within_max_wait_and_no_longer() {
    let overrides = vec![override_("GET /2/tweets/:id", &["1/10s"], &[])];
    let wait = |max_wait| Limits {
        on_exhausted: OnExhausted::Wait,
        max_wait,
        ..limits(overrides.clone())
    };
    let t = identities();
    let main = t.find("main").unwrap();
    let e = Catalogue::new(&[])
        .unwrap()
        .lookup(&Method::GET, "/2/tweets/1")
        .unwrap();

    let l = real_limiter(
        &overrides,
        &wait(Duration::from_secs(15)),
        crate::clock::TokioClock::at(T0),
    );
    let start = tokio::time::Instant::now();
    l.admit(draw(main, e)).await.unwrap().sent();
    let mut second = l.admit(draw(main, e)).await.unwrap();
    second.sent();
    assert_eq!(start.elapsed(), Duration::from_secs(10));

    let l = real_limiter(
        &overrides,
        &wait(Duration::from_secs(5)),
        crate::clock::TokioClock::at(T0),
    );
    let start = tokio::time::Instant::now();
    l.admit(draw(main, e)).await.unwrap().sent();
    let err = l.admit(draw(main, e)).await.unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::RateLimited);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once: 10 s is past max_wait"
    );
}

/// The nine lookups `Reports::from_headers` replaced: the definition it must agree with.
fn reference_reports(headers: &HeaderMap) -> Reports {
    let window = |prefix: &str| {
        let num = |field: &str| -> Option<u64> {
            headers
                .get(format!("{prefix}{field}"))?
                .to_str()
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let (remaining, reset) = (num("remaining")?, num("reset")?);
        Some(Report {
            limit: num("limit").map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
            reset_ms: reset.saturating_mul(1000),
        })
    };
    Reports {
        primary: window("x-rate-limit-"),
        user_day: window("x-user-limit-24hour-"),
        app_day: window("x-app-limit-24hour-"),
    }
}

proptest::proptest! {
    /// Any headers, X's nine among others, repeated, with numbers, spaces, words, bytes that
    /// are not UTF-8 and numbers past `u32`: the one-pass reader agrees with the lookups.
    #[test]
    fn reports_agree_with_one_lookup_per_header(
        entries in proptest::collection::vec((0usize..12, 0usize..8), 0..24),
    ) {
        const NAMES: [&str; 12] = [
            "x-rate-limit-limit", "x-rate-limit-remaining", "x-rate-limit-reset",
            "x-user-limit-24hour-limit", "x-user-limit-24hour-remaining",
            "x-user-limit-24hour-reset", "x-app-limit-24hour-limit",
            "x-app-limit-24hour-remaining", "x-app-limit-24hour-reset",
            "x-rate-limit-resets", "x-access-level", "content-type",
        ];
        const VALUES: [&[u8]; 8] = [
            b"0", b"15", b" 900 ", b"1733270400", b"99999999999", b"soon", b"", b"\xff1",
        ];
        let mut headers = HeaderMap::new();
        for (n, v) in entries {
            headers.append(
                http::HeaderName::from_static(NAMES[n]),
                HeaderValue::from_bytes(VALUES[v]).unwrap(),
            );
        }
        proptest::prop_assert_eq!(Reports::from_headers(&headers), reference_reports(&headers));
    }
}
