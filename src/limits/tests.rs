use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use http::{HeaderValue, Method};
use sha2::Digest as _;

use super::*;
use crate::auth::Credential;
use crate::clock::ManualClock;
use crate::config::{EndpointPattern, Override};

const T0: u64 = 1_700_000_000;

fn rate(s: &str) -> Rate {
    Rate::parse(s).unwrap()
}

fn identity(name: &str, kind: IdentityKind, app: IdentityId, scopes: &[&str]) -> Identity {
    Identity {
        name: Arc::from(name),
        kind,
        credential: Credential::Missing {
            hint: String::new(),
        },
        app,
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// App `main` (0), OAuth 1.0a users `alice` (1) and `carol` (2) of it, OAuth 2.0 user `bob`
/// (3), and a second App `other` (4).
fn identities() -> Vec<Identity> {
    vec![
        identity("main", IdentityKind::App, 0, &[]),
        identity("alice", IdentityKind::Oauth1User, 0, &[]),
        identity("carol", IdentityKind::Oauth1User, 0, &[]),
        identity(
            "bob",
            IdentityKind::Oauth2User,
            0,
            &["tweet.read", "users.read"],
        ),
        identity("other", IdentityKind::App, 4, &[]),
    ]
}

const MAIN: IdentityId = 0;
const ALICE: IdentityId = 1;
const CAROL: IdentityId = 2;
const BOB: IdentityId = 3;
const OTHER: IdentityId = 4;

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

fn limiter(overrides: Vec<Override>) -> (Limiter, Arc<ManualClock>) {
    let clock = ManualClock::at(T0);
    let catalogue = Catalogue::new(&overrides).unwrap();
    let l = Limiter::new(
        catalogue,
        &identities(),
        &limits(overrides),
        Arc::clone(&clock) as Arc<dyn Clock>,
    );
    (l, clock)
}

fn ep(l: &Limiter, method: &Method, path: &str) -> EndpointId {
    l.catalogue()
        .lookup(method, path)
        .unwrap_or_else(|| panic!("{method} {path} is not in the catalogue"))
}

fn name(l: &Limiter, method: &Method, path: &str) -> String {
    l.catalogue().get(ep(l, method, path)).unwrap().name.clone()
}

/// Admits `n` requests and returns how many went through (each completed at once).
fn burst(l: &Limiter, id: IdentityId, e: EndpointId, n: usize) -> usize {
    (0..n).filter(|_| l.admit(id, Some(e)).is_ok()).count()
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn window_refusal(r: Result<Admission<'_>, Refused>) -> Refusal {
    match r {
        Err(Refused::Window(r)) => r,
        Err(other) => panic!("refused for another reason: {other:?}"),
        Ok(admission) => {
            drop(admission);
            panic!("admitted")
        }
    }
}

// === the catalogue ===

#[test]
fn every_spec_operation_and_the_three_extras_are_in_the_catalogue() {
    let rows = Catalogue::rows();
    assert_eq!(rows.iter().filter(|r| r.in_spec).count(), 178);
    assert_eq!(rows.iter().filter(|r| !r.in_spec).count(), 3);
    let c = Catalogue::new(&[]).unwrap();
    // Every row can be reached through the router with a concrete path.
    for (id, e) in c.endpoints().iter().enumerate() {
        let (method, path) = e.name.split_once(' ').unwrap();
        let concrete: String = path
            .split('/')
            .map(|s| if s.starts_with(':') { "123" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let m: Method = method.parse().unwrap();
        assert_eq!(c.lookup(&m, &concrete), Some(id), "{}", e.name);
    }
}

#[test]
fn matching_names_endpoints_in_docs_style_and_unknown_paths_are_other() {
    let (l, _) = limiter(vec![]);
    assert_eq!(
        name(&l, &Method::GET, "/2/tweets/1460323737035677698"),
        "GET /2/tweets/:id"
    );
    assert_eq!(
        name(&l, &Method::GET, "/2/tweets/search/recent"),
        "GET /2/tweets/search/recent"
    );
    assert_eq!(
        name(&l, &Method::DELETE, "/2/users/1/following/2"),
        "DELETE /2/users/:source_user_id/following/:target_user_id"
    );
    assert_eq!(
        name(&l, &Method::GET, "/2/users/by/username/jack/tweets"),
        "GET /2/users/by/username/:username/tweets"
    );
    let c = l.catalogue();
    assert_eq!(c.lookup(&Method::GET, "/2/nothing/here"), None);
    assert_eq!(c.lookup(&Method::GET, "/2/tweets/1/"), None);
    assert_eq!(c.lookup(&Method::PATCH, "/2/tweets/1"), None);
    assert_eq!(
        c.lookup(&Method::HEAD, "/2/tweets/1"),
        c.lookup(&Method::GET, "/2/tweets/1")
    );
    assert_eq!(c.lookup(&Method::OPTIONS, "/2/tweets/1"), None);
}

#[test]
fn ten_thousand_tweet_ids_are_one_endpoint() {
    let (l, _) = limiter(vec![]);
    let ids: BTreeSet<EndpointId> = (0..10_000u64)
        .map(|i| {
            ep(
                &l,
                &Method::GET,
                &format!("/2/tweets/{}", 1_460_323_737_035_677_698 + i),
            )
        })
        .collect();
    assert_eq!(ids.len(), 1);
}

/// The fact sheet's figures for a sample of rows (x-api-v2.md section 4.5).
#[test]
fn sample_rows_match_the_fact_sheet() {
    let c = Catalogue::new(&[]).unwrap();
    let find = |n: &str| {
        c.endpoints()
            .iter()
            .find(|e| e.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    let show = |f: &catalogue::Figure| {
        f.rates
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let cases = [
        ("GET /2/tweets/:id", "450/15m", "900/15m"),
        ("GET /2/tweets", "3500/15m", "5000/15m"),
        ("POST /2/tweets", "10000/24h", "100/15m"),
        ("GET /2/tweets/search/all", "1/1s + 300/15m", "1/1s"),
        ("GET /2/tweets/search/recent", "450/15m", "300/15m"),
        ("POST /2/users/:id/likes", "", "50/15m + 1000/24h"),
        (
            "DELETE /2/dm_events/:event_id",
            "4000/24h",
            "300/15m + 1500/24h",
        ),
        (
            "GET /2/users/personalized_trends",
            "200/24h + 200/15m",
            "100/24h + 10/15m",
        ),
        (
            "GET /2/spaces/by/creator_ids",
            "300/15m + 1/1s",
            "300/15m + 1/1s",
        ),
        ("GET /2/users/me", "", "75/15m"),
        ("GET /2/tweets/search/stream", "50/15m", ""),
        (
            "GET /2/users/by/username/:username/mentions",
            "450/15m",
            "180/15m",
        ),
        ("GET /2/users/:id/following/spaces", "300/15m", "300/15m"),
        ("GET /2/broadcasts", "", ""),
    ];
    for (n, app, user) in cases {
        let e = find(n);
        assert_eq!(
            (show(&e.app).as_str(), show(&e.user).as_str()),
            (app, user),
            "{n}"
        );
    }
    let me = find("GET /2/users/me");
    assert!(!me.auth.app() && me.auth.oauth2_user() && me.auth.oauth1_user());
    assert_eq!(me.scopes, ["tweet.read", "users.read"]);
    assert!(find("GET /2/tweets/search/stream").stream);
    assert!(!find("GET /2/tweets/search/recent").stream);
    assert!(find("GET /2/openapi.json").auth.none());
}

fn reference_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference")
}

/// The committed table against X's OpenAPI document: same SHA-256, and every operation with
/// the same auth kinds, scopes and stream flag. CI has `../shared` beside its clone.
#[test]
fn the_table_agrees_with_the_spec() {
    let path = reference_dir().join("x-openapi.json");
    let Ok(bytes) = std::fs::read(&path) else {
        eprintln!(
            "SKIPPED the_table_agrees_with_the_spec: {} is not here (it is in CI, beside the clone)",
            path.display()
        );
        return;
    };
    let (version, sha) = Catalogue::spec();
    let actual = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_eq!(
        actual, sha,
        "x-openapi.json changed since the catalogue was generated (version {version}): run `python3 scripts/gen_catalogue.py`"
    );
    let spec: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut want = BTreeMap::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if !["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                continue;
            }
            let mut auth = 0u8;
            let mut scopes: Vec<String> = Vec::new();
            for req in op["security"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                for (scheme, s) in req.as_object().unwrap() {
                    auth |= match scheme.as_str() {
                        "BearerToken" => catalogue::APP,
                        "OAuth2UserToken" => {
                            scopes = s
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|v| v.as_str().unwrap().to_owned())
                                .collect();
                            scopes.sort();
                            catalogue::O2U
                        }
                        "UserToken" => catalogue::O1U,
                        other => panic!("unknown scheme {other}"),
                    };
                }
            }
            let stream = op["x-twitter-streaming"].as_bool().unwrap_or(false);
            let docs = path.replace('{', ":").replace('}', "");
            want.insert(
                format!("{} {docs}", method.to_uppercase()),
                (auth, scopes, stream),
            );
        }
    }
    let got: BTreeMap<String, (u8, Vec<String>, bool)> = Catalogue::rows()
        .iter()
        .filter(|r| r.in_spec)
        .map(|r| {
            (
                format!("{} {}", r.method, r.path),
                (
                    r.auth,
                    r.scopes.iter().map(|s| (*s).to_owned()).collect(),
                    r.stream,
                ),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn overrides_match_by_shape_and_add_unknown_endpoints() {
    let (l, _) = limiter(vec![
        override_("GET /2/tweets/{tweet}", &["2/2s"], &[]),
        override_("POST /2/custom/:thing", &[], &["5/1m"]),
    ]);
    let c = l.catalogue();
    let e = c.get(ep(&l, &Method::GET, "/2/tweets/1")).unwrap();
    assert_eq!(e.name, "GET /2/tweets/:id");
    assert_eq!(e.app.rates, vec![rate("2/2s")]);
    assert!(e.app.overridden);
    // `user` was not given: the catalogue's figure stays.
    assert_eq!(e.user.rates, vec![rate("900/15m")]);
    assert!(!e.user.overridden);
    let added = c.get(ep(&l, &Method::POST, "/2/custom/x")).unwrap();
    assert_eq!(added.name, "POST /2/custom/:thing");
    assert!(!added.in_spec);
    assert_eq!(added.user.rates, vec![rate("5/1m")]);
}

// === buckets (CONTRACT section 5) ===

/// Rule 1: from a cold start, a burst on a bucket of L forwards at most L.
#[test]
fn rule_1_a_cold_burst_admits_the_limit() {
    let (l, clock) = limiter(vec![]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    assert_eq!(burst(&l, MAIN, e, 500), 450);
    // Users have their own buckets (900/15m each), not the App's.
    assert_eq!(burst(&l, ALICE, e, 1000), 900);
    assert_eq!(burst(&l, CAROL, e, 1000), 900);
    // The window ends 15 minutes after its first request.
    let r = window_refusal(l.admit(MAIN, Some(e)));
    assert_eq!(r.reset_ms, T0 * 1000 + 900_000);
    assert_eq!(r.limit, 450);
    clock.advance(Duration::from_secs(900));
    assert_eq!(burst(&l, MAIN, e, 500), 450);
}

#[test]
fn other_endpoints_have_no_bucket() {
    let (l, _) = limiter(vec![]);
    assert_eq!(
        (0..10_000).filter(|_| l.admit(MAIN, None).is_ok()).count(),
        10_000
    );
}

#[test]
fn several_windows_all_apply_and_a_refusal_uses_up_none() {
    // search/all: 1/1s + 300/15m per App.
    let (l, clock) = limiter(vec![]);
    let e = ep(&l, &Method::GET, "/2/tweets/search/all");
    assert!(l.admit(MAIN, Some(e)).is_ok());
    let r = window_refusal(l.admit(MAIN, Some(e)));
    assert_eq!((r.limit, r.window), (1, Duration::from_secs(1)));
    assert_eq!(r.reset_ms, T0 * 1000 + 1_000);
    // The 1/s refusals did not draw from the 15-minute window: after 299 more seconds it
    // has admitted exactly 300.
    let mut admitted = 1;
    for _ in 0..299 {
        clock.advance(Duration::from_secs(1));
        for _ in 0..5 {
            admitted += usize::from(l.admit(MAIN, Some(e)).is_ok());
        }
    }
    assert_eq!(admitted, 300);
    clock.advance(Duration::from_secs(1));
    let r = window_refusal(l.admit(MAIN, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (300, T0 * 1000 + 900_000));
}

#[test]
fn the_refusal_names_the_bucket_that_allows_a_request_last() {
    let (l, _) = limiter(vec![override_(
        "GET /2/tweets/:id",
        &["1/1s", "1/15m"],
        &[],
    )]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    assert!(l.admit(MAIN, Some(e)).is_ok());
    let r = window_refusal(l.admit(MAIN, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (1, T0 * 1000 + 900_000));
}

#[test]
fn user_context_draws_from_the_apps_24_hour_window_but_not_its_15_minute_one() {
    // POST /2/tweets: 10,000/24h per App, 100/15m per user.
    let (l, _) = limiter(vec![override_(
        "POST /2/tweets",
        &["3/24h", "1/15m"],
        &["2/15m"],
    )]);
    let e = ep(&l, &Method::POST, "/2/tweets");
    assert_eq!(burst(&l, ALICE, e, 10), 2);
    // carol has her own 2/15m, but the App's day window (3) counts alice's too; the App's
    // 1/15m never limits users.
    assert_eq!(burst(&l, CAROL, e, 10), 1);
    let r = window_refusal(l.admit(CAROL, Some(e)));
    assert_eq!((r.limit, r.window), (3, DAY_WINDOW));
    // The other App is not affected.
    assert_eq!(burst(&l, OTHER, e, 10), 1);
}

#[test]
fn a_user_request_refused_by_the_apps_day_window_gives_back_its_own_reservation() {
    let (l, _) = limiter(vec![override_("POST /2/tweets", &["1/24h"], &["10/15m"])]);
    let e = ep(&l, &Method::POST, "/2/tweets");
    assert_eq!(burst(&l, ALICE, e, 50), 1);
    // 49 requests were refused by the App's day window after reserving in alice's own
    // window; each gave it back.
    let own = &l.buckets(ALICE, e).unwrap().windows[0];
    assert_eq!(own.snapshot().1, 9);
    assert_eq!(own.snapshot().3, 0);
}

#[test]
fn released_admissions_use_up_nothing_and_dropped_ones_count() {
    let (l, _) = limiter(vec![override_("GET /2/tweets/:id", &["2/15m"], &[])]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    for _ in 0..10 {
        l.admit(MAIN, Some(e)).unwrap().release();
    }
    let a = l.admit(MAIN, Some(e)).unwrap();
    let b = l.admit(MAIN, Some(e)).unwrap();
    assert!(l.admit(MAIN, Some(e)).is_err());
    drop(a);
    drop(b);
    assert!(l.admit(MAIN, Some(e)).is_err());
}

/// Rule 2: X's remaining and reset set the window; requests in flight count; an answer
/// never raises what remains in the same window.
#[test]
fn rule_2_learning_from_x_rate_limit_headers() {
    let (l, clock) = limiter(vec![]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let reset = T0 + 120;
    let mine = l.admit(MAIN, Some(e)).unwrap();
    let other = l.admit(MAIN, Some(e)).unwrap();
    let seen = mine.learn(&headers(&[
        ("x-rate-limit-limit", "450".into()),
        ("x-rate-limit-remaining", "3".into()),
        ("x-rate-limit-reset", reset.to_string()),
    ]));
    assert_eq!(seen, Some(3));
    drop(mine);
    // 3 left after mine, one other in flight: 2 more go out before the reset.
    assert_eq!(burst(&l, MAIN, e, 10), 2);
    let r = window_refusal(l.admit(MAIN, Some(e)));
    assert_eq!(r.reset_ms, reset * 1000);
    // The other's answer, same reset, more remaining: does not raise it.
    other.learn(&headers(&[
        ("x-rate-limit-remaining", "100".into()),
        ("x-rate-limit-reset", reset.to_string()),
    ]));
    drop(other);
    assert!(l.admit(MAIN, Some(e)).is_err());
    clock.advance(Duration::from_secs(120));
    assert_eq!(burst(&l, MAIN, e, 500), 450);
}

#[test]
fn rule_2_zero_remaining_refuses_until_the_reset_and_x_limit_replaces_the_figure() {
    let (l, clock) = limiter(vec![]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let a = l.admit(ALICE, Some(e)).unwrap();
    a.learn(&headers(&[
        ("x-rate-limit-limit", "5".into()),
        ("x-rate-limit-remaining", "0".into()),
        ("x-rate-limit-reset", (T0 + 30).to_string()),
    ]));
    drop(a);
    let r = window_refusal(l.admit(ALICE, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (5, (T0 + 30) * 1000));
    clock.advance(Duration::from_secs(30));
    // The next window is X's figure, 5, not the catalogue's 900.
    assert_eq!(burst(&l, ALICE, e, 100), 5);
}

#[test]
fn an_override_wins_over_what_x_reports() {
    let (l, clock) = limiter(vec![override_("GET /2/tweets/:id", &["3/15m"], &[])]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let a = l.admit(MAIN, Some(e)).unwrap();
    a.learn(&headers(&[
        ("x-rate-limit-limit", "450".into()),
        ("x-rate-limit-remaining", "0".into()),
        ("x-rate-limit-reset", (T0 + 4_000_000).to_string()),
    ]));
    drop(a);
    // The override's own window of 15 minutes and its count hold.
    assert_eq!(burst(&l, MAIN, e, 10), 2);
    let r = window_refusal(l.admit(MAIN, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (3, (T0 + 900) * 1000));
    clock.advance(Duration::from_secs(900));
    assert_eq!(burst(&l, MAIN, e, 10), 3);
}

#[test]
fn rule_2_24_hour_headers_update_the_user_and_app_day_buckets_and_create_missing_ones() {
    // GET /2/tweets/:id has no 24-hour figure: the headers create both day buckets.
    let (l, clock) = limiter(vec![]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let a = l.admit(ALICE, Some(e)).unwrap();
    a.learn(&headers(&[
        ("x-user-limit-24hour-limit", "100".into()),
        ("x-user-limit-24hour-remaining", "1".into()),
        ("x-user-limit-24hour-reset", (T0 + 3_600).to_string()),
        ("x-app-limit-24hour-limit", "1000".into()),
        ("x-app-limit-24hour-remaining", "2".into()),
        ("x-app-limit-24hour-reset", (T0 + 7_200).to_string()),
    ]));
    drop(a);
    assert_eq!(burst(&l, ALICE, e, 10), 1);
    let r = window_refusal(l.admit(ALICE, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (100, (T0 + 3_600) * 1000));
    // The App's day bucket had 2 left, one went to alice: carol gets the other one.
    assert_eq!(burst(&l, CAROL, e, 10), 1);
    let r = window_refusal(l.admit(CAROL, Some(e)));
    assert_eq!((r.limit, r.reset_ms), (1000, (T0 + 7_200) * 1000));
    // App-only requests count against the App's day bucket too.
    assert!(l.admit(MAIN, Some(e)).is_err());
    clock.advance(Duration::from_secs(7_200));
    assert!(l.admit(MAIN, Some(e)).is_ok());
}

#[test]
fn headers_on_other_endpoints_or_without_numbers_change_nothing() {
    let (l, _) = limiter(vec![]);
    let a = l.admit(MAIN, None).unwrap();
    assert_eq!(
        a.learn(&headers(&[
            ("x-rate-limit-remaining", "0".into()),
            ("x-rate-limit-reset", (T0 + 60).to_string()),
        ])),
        Some(0)
    );
    assert!(l.admit(MAIN, None).is_ok());
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let a = l.admit(MAIN, Some(e)).unwrap();
    a.learn(&headers(&[
        ("x-rate-limit-remaining", "zero".into()),
        ("x-rate-limit-reset", (T0 + 60).to_string()),
    ]));
    drop(a);
    assert_eq!(burst(&l, MAIN, e, 500), 449);
}

/// Rule 3: usage-capped blocks the App and all its users for the cooldown.
#[test]
fn rule_3_usage_capped_cools_down_the_app_and_its_users() {
    let (l, clock) = limiter(vec![]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    l.usage_capped(ALICE);
    for id in [MAIN, ALICE, CAROL, BOB] {
        match l.admit(id, Some(e)) {
            Err(Refused::UsageCapped { until_ms }) => assert_eq!(until_ms, (T0 + 300) * 1000),
            other => panic!("{id}: {other:?}"),
        }
    }
    assert!(l.admit(MAIN, None).is_err());
    assert!(l.admit(OTHER, Some(e)).is_ok());
    clock.advance(Duration::from_secs(300));
    assert!(l.admit(MAIN, Some(e)).is_ok());
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
    let (l, _) = limiter(vec![override_("GET /2/tweets/:id", &["10/15m"], &[])]);
    let e = ep(&l, &Method::GET, "/2/tweets/1");
    let barrier = std::sync::Barrier::new(64);
    let admitted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..64 {
            s.spawn(|| {
                barrier.wait();
                if l.admit(MAIN, Some(e)).is_ok() {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 10);
}

#[test]
fn client_rate_is_a_burst_then_a_steady_share() {
    let share = ClientRate::new(rate("3/1h"));
    for _ in 0..3 {
        share.check().unwrap();
    }
    let wait = share.check().unwrap_err();
    // One cell per 20 minutes.
    assert!(
        wait > Duration::from_secs(19 * 60) && wait <= Duration::from_secs(20 * 60),
        "{wait:?}"
    );
}

// === pre-check (CONTRACT section 4) ===

#[test]
fn precheck_refuses_auth_kinds_the_endpoint_does_not_take() {
    let (l, _) = limiter(vec![]);
    let ids = identities();
    let c = l.catalogue();
    let me = c.get(ep(&l, &Method::GET, "/2/users/me")).unwrap();
    let err = precheck(me, &ids[MAIN], &[]).unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::AuthTypeUnsupported);
    assert_eq!(
        err.to_string(),
        "identity main (app-only Bearer): GET /2/users/me needs OAuth 2.0 user context or OAuth 1.0a user context"
    );
    precheck(me, &ids[ALICE], &[]).unwrap();
    // Only OAuth 2.0 users may bookmark.
    let bookmark = c
        .get(ep(&l, &Method::POST, "/2/users/1/bookmarks"))
        .unwrap();
    let err = precheck(bookmark, &ids[ALICE], &[]).unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::AuthTypeUnsupported);
    // App-only endpoints refuse users.
    let all = c.get(ep(&l, &Method::GET, "/2/tweets/search/all")).unwrap();
    assert!(precheck(all, &ids[ALICE], &[]).is_err());
    precheck(all, &ids[MAIN], &[]).unwrap();
    // No auth at all: nothing to check.
    let spec = c.get(ep(&l, &Method::GET, "/2/openapi.json")).unwrap();
    precheck(spec, &ids[MAIN], &[]).unwrap();
}

#[test]
fn precheck_refuses_missing_oauth2_scopes_and_names_them() {
    let (l, _) = limiter(vec![]);
    let ids = identities();
    let c = l.catalogue();
    let bob = &ids[BOB];
    let tweet = c.get(ep(&l, &Method::GET, "/2/tweets/1")).unwrap();
    precheck(tweet, bob, &bob.scopes).unwrap();
    let dms = c.get(ep(&l, &Method::GET, "/2/dm_events")).unwrap();
    let err = precheck(dms, bob, &bob.scopes).unwrap_err();
    assert_eq!(err.kind(), crate::error::ErrorKind::ScopeMissing);
    assert_eq!(
        err.to_string(),
        "identity bob: GET /2/dm_events needs scope dm.read; the identity has tweet.read users.read"
    );
    // Scopes of OAuth 1.0a users and Apps are not checked.
    precheck(dms, &ids[ALICE], &[]).unwrap();
}
