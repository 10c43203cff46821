//! The rate-limit decision: matching a path to its endpoint, and reserving its buckets.
//!
//! `cargo bench --bench limits`; figures and their reading are in BENCHMARKS.md. The buckets
//! are set far above what a run can use, so every admission succeeds and the measured path is
//! the one a forwarded request takes (reserve, then complete when the admission drops).

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "benchmark setup: a panic aborts the run"
)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::Method;
use xgate::clock::SystemClock;
use xgate::config::{EndpointPattern, Limits, OnExhausted, Override, Rate};
use xgate::endpoints::Catalogue;
use xgate::identity::{Identities, IdentityId, IdentityKind, IdentitySpec};
use xgate::limits::{Admission, Draw, Limiter};

/// Polls a future that the in-memory backend has already decided (it never waits).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(out) => out,
        std::task::Poll::Pending => panic!("the in-memory backend never waits"),
    }
}

/// One admitted request that went upstream: reserved, sent, completed when dropped.
fn admit(l: &Limiter, identity: IdentityId, endpoint: Option<usize>) -> Admission<'_> {
    let draw = Draw {
        identity,
        endpoint,
        client: None,
    };
    let mut a = ready(l.admit(draw)).unwrap();
    a.sent();
    a
}

fn limiter() -> (Limiter, IdentityId, IdentityId) {
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
    let identities = Arc::new(
        Identities::new([
            IdentitySpec::app("main"),
            IdentitySpec::user("alice", IdentityKind::Oauth1User, "main", &[]),
        ])
        .unwrap(),
    );
    let (app, user) = (
        identities.find("main").unwrap(),
        identities.find("alice").unwrap(),
    );
    let limits = Limits {
        on_exhausted: OnExhausted::Reject,
        max_wait: Duration::ZERO,
        usage_cap_cooldown: Duration::from_secs(300),
        overrides,
    };
    let l = Limiter::in_memory(
        Arc::new(Catalogue::new(&limits.overrides).unwrap()),
        identities,
        &limits,
        Arc::new(SystemClock),
    );
    (l, app, user)
}

fn bench(c: &mut Criterion) {
    let (l, app, user) = limiter();
    let cat = Catalogue::new(&[]).unwrap();
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
        b.iter(|| drop(black_box(admit(&l, app, Some(tweet)))));
    });
    g.bench_function("admit/3_buckets", |b| {
        b.iter(|| drop(black_box(admit(&l, user, Some(post)))));
    });
    g.bench_function("decision/match_and_1_bucket", |b| {
        b.iter(|| {
            let e = cat.lookup(
                black_box(&Method::GET),
                black_box("/2/tweets/1460323737035677698"),
            );
            drop(black_box(admit(&l, app, e)));
        });
    });
    g.bench_function("decision/match_and_3_buckets", |b| {
        b.iter(|| {
            let e = cat.lookup(black_box(&Method::POST), black_box("/2/tweets"));
            drop(black_box(admit(&l, user, e)));
        });
    });

    // The same buckets, with a second thread admitting on them all the while.
    for (name, id, endpoint) in [
        ("admit_contended/1_bucket", app, tweet),
        ("admit_contended/3_buckets", user, post),
    ] {
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    drop(black_box(admit(&l, id, Some(endpoint))));
                }
            });
            g.bench_function(name, |b| {
                b.iter(|| drop(black_box(admit(&l, id, Some(endpoint)))));
            });
            stop.store(true, Ordering::Relaxed);
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
