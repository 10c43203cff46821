//! The rate-limit decision: matching a path to its endpoint, and reserving its buckets.
//!
//! `cargo bench --bench limits`; figures and their reading are in BENCHMARKS.md. The buckets
//! are set far above what a run can use, so every admission succeeds and the measured path is
//! the one a forwarded request takes (reserve, then complete when the admission drops).

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup: a panic aborts the run"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use xgate::auth::{Credential, Identity, IdentityKind};
use xgate::clock::SystemClock;
use xgate::config::{EndpointPattern, Limits, OnExhausted, Override, Rate};
use xgate::limits::{Catalogue, Limiter};

const APP: usize = 0;
const USER: usize = 1;

fn limiter() -> Limiter {
    let big = |w: &str| Rate::parse(&format!("4000000000/{w}")).unwrap();
    let overrides = vec![
        // One bucket: app-only on GET /2/tweets/:id.
        Override {
            endpoint: EndpointPattern::parse("GET /2/tweets/:id").unwrap(),
            app: vec![big("15m")],
            user: vec![],
        },
        // Three buckets: a user's 15-minute and 24-hour windows and the App's 24-hour one.
        Override {
            endpoint: EndpointPattern::parse("POST /2/tweets").unwrap(),
            app: vec![big("24h")],
            user: vec![big("15m"), big("24h")],
        },
    ];
    let identity = |name: &str, kind| Identity {
        name: Arc::from(name),
        kind,
        credential: Credential::Missing {
            hint: String::new(),
        },
        app: APP,
        scopes: Vec::new(),
    };
    let limits = Limits {
        on_exhausted: OnExhausted::Reject,
        max_wait: Duration::ZERO,
        usage_cap_cooldown: Duration::from_secs(300),
        overrides,
    };
    Limiter::new(
        Catalogue::new(&limits.overrides).unwrap(),
        &[
            identity("main", IdentityKind::App),
            identity("alice", IdentityKind::Oauth1User),
        ],
        &limits,
        Arc::new(SystemClock),
    )
}

fn bench(c: &mut Criterion) {
    let l = limiter();
    let cat = l.catalogue();
    let tweet = cat
        .lookup(&Method::GET, "/2/tweets/1460323737035677698")
        .unwrap();
    let post = cat.lookup(&Method::POST, "/2/tweets").unwrap();

    let mut g = c.benchmark_group("limits");
    g.bench_function("match/GET_tweets_id", |b| {
        b.iter(|| {
            cat.lookup(
                black_box(&Method::GET),
                black_box("/2/tweets/1460323737035677698"),
            )
        });
    });
    g.bench_function("match/DELETE_users_following", |b| {
        b.iter(|| {
            cat.lookup(
                black_box(&Method::DELETE),
                black_box("/2/users/2244994945/following/783214"),
            )
        });
    });
    g.bench_function("match/other", |b| {
        b.iter(|| cat.lookup(black_box(&Method::GET), black_box("/2/not/a/known/path")));
    });
    g.bench_function("admit/1_bucket", |b| {
        b.iter(|| drop(black_box(l.admit(APP, Some(tweet)).unwrap())));
    });
    g.bench_function("admit/3_buckets", |b| {
        b.iter(|| drop(black_box(l.admit(USER, Some(post)).unwrap())));
    });
    g.bench_function("decision/match_and_1_bucket", |b| {
        b.iter(|| {
            let e = cat.lookup(
                black_box(&Method::GET),
                black_box("/2/tweets/1460323737035677698"),
            );
            drop(black_box(l.admit(APP, e).unwrap()));
        });
    });
    g.bench_function("decision/match_and_3_buckets", |b| {
        b.iter(|| {
            let e = cat.lookup(black_box(&Method::POST), black_box("/2/tweets"));
            drop(black_box(l.admit(USER, e).unwrap()));
        });
    });

    // The same buckets, with a second thread admitting on them all the while.
    for (name, id, endpoint) in [
        ("admit_contended/1_bucket", APP, tweet),
        ("admit_contended/3_buckets", USER, post),
    ] {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    drop(black_box(l.admit(id, Some(endpoint)).unwrap()));
                }
            });
            g.bench_function(name, |b| {
                b.iter(|| drop(black_box(l.admit(id, Some(endpoint)).unwrap())));
            });
            stop.store(true, Ordering::Relaxed);
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
