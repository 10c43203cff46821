//! OAuth 1.0a signing cost, beside its floor: the bare HMAC-SHA1 over the same base string.
//!
//! `cargo bench --bench signing`; figures and their reading are in BENCHMARKS.md.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup: a panic aborts the run"
)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use xgate::auth::oauth1::{self, Oauth1Key, Oauth1Signer, RequestParams};
use xgate::clock::{RandomNonce, SystemClock};

const RECENT: &str = "https://api.x.com/2/tweets/search/recent?query=from%3AXDevelopers%20-is%3Aretweet&max_results=10&tweet.fields=created_at%2Cauthor_id";
const TWELVE: &str = "https://api.x.com/2/tweets/search/recent?query=from%3AXDevelopers%20-is%3Aretweet&max_results=10&tweet.fields=created_at%2Cauthor_id&expansions=author_id&user.fields=username%2Cverified&media.fields=url&place.fields=country&poll.fields=options&start_time=2026-01-01T00%3A00%3A00Z&end_time=2026-01-02T00%3A00%3A00Z&sort_order=recency&next_token=b26v89c19zqg8o3fo";
const NONCE: &str = "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg";
const CS: &str = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";
const TS: &str = "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE";

fn key() -> Oauth1Key {
    Oauth1Key::new(
        &"xvz1evFS4wEEPTGEFPHBog".into(),
        &CS.into(),
        Some((
            &"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb".into(),
            &TS.into(),
        )),
    )
}

fn params() -> RequestParams<'static> {
    RequestParams {
        timestamp: 1_318_622_958,
        nonce: NONCE,
        extra: &[],
    }
}

/// The base string the full header signs, built once for the bare-HMAC floor.
fn base_string_of(url: &http::Uri) -> String {
    let protocol = [
        ("oauth_consumer_key", "xvz1evFS4wEEPTGEFPHBog"),
        ("oauth_nonce", NONCE),
        ("oauth_signature_method", "HMAC-SHA1"),
        ("oauth_timestamp", "1318622958"),
        (
            "oauth_token",
            "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb",
        ),
        ("oauth_version", "1.0"),
    ];
    oauth1::base_string("GET", url, None, &protocol).unwrap()
}

fn signing(c: &mut Criterion) {
    let key = key();
    let recent: http::Uri = RECENT.parse().unwrap();
    let twelve: http::Uri = TWELVE.parse().unwrap();
    let base = base_string_of(&recent);
    let signing_key = format!("{CS}&{TS}");

    let mut g = c.benchmark_group("oauth1");
    g.bench_function("bare_hmac_sha1/recent", |b| {
        b.iter(|| {
            let mut mac = Hmac::<Sha1>::new_from_slice(black_box(signing_key.as_bytes())).unwrap();
            mac.update(black_box(base.as_bytes()));
            black_box(mac.finalize().into_bytes())
        })
    });
    g.bench_function("base_string/recent", |b| {
        b.iter(|| black_box(base_string_of(black_box(&recent))))
    });
    g.bench_function("header/recent", |b| {
        b.iter(|| {
            oauth1::authorization_header(&key, "GET", black_box(&recent), None, params()).unwrap()
        })
    });
    g.bench_function("header/12_params", |b| {
        b.iter(|| {
            oauth1::authorization_header(&key, "GET", black_box(&twelve), None, params()).unwrap()
        })
    });
    let signer = Oauth1Signer::new(SystemClock, RandomNonce);
    g.bench_function("header_with_random_nonce/recent", |b| {
        b.iter(|| {
            signer
                .sign(&key, "GET", black_box(&recent), None, 0)
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
