//! The metering scanner's throughput (issue "costs", item 9): the bench rig's one-Post answer
//! (334 bytes), a typical search page (10 posts with their fields and expansions, ~6 KB) and a
//! 5 MB page, each fed as the 16 KiB chunks a relayed body arrives in.
//!
//! `cargo bench --bench metering`; figures and their reading are in BENCHMARKS.md.

#![expect(
    clippy::unwrap_used,
    reason = "benchmark setup: a panic aborts the run"
)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use xgate::metering::Scanner;

/// A search page of `posts` posts shaped like X's (fields, entities, metrics, expansions).
fn page(posts: usize) -> Vec<u8> {
    let post = |i: usize| {
        serde_json::json!({
            "id": format!("{}", 1_460_323_737_035_677_698_u64 + i as u64),
            "text": "Introducing a new era for the Twitter Developer Platform! \u{1f4e3} The Twitter API v2 is now the primary API and full of new features https://t.co/rv2hRdFvfx \"quoted\"",
            "edit_history_tweet_ids": [format!("{}", 1_460_323_737_035_677_698_u64 + i as u64)],
            "author_id": "2244994945",
            "created_at": "2021-11-15T19:08:05.000Z",
            "lang": "en",
            "public_metrics": {"retweet_count": 12, "reply_count": 3, "like_count": 140, "quote_count": 1},
            "entities": {"urls": [{"start": 118, "end": 141, "url": "https://t.co/rv2hRdFvfx", "expanded_url": "https://developer.x.com", "display_url": "developer.x.com"}],
                          "hashtags": [{"start": 0, "end": 5, "tag": "api"}]},
        })
    };
    let doc = serde_json::json!({
        "data": (0..posts).map(post).collect::<Vec<_>>(),
        "includes": {"users": [{"id": "2244994945", "name": "Developers", "username": "XDevelopers"}]},
        "meta": {"result_count": posts, "newest_id": "1", "oldest_id": "2", "next_token": "b26v89c19zqg8o3fpzbkk5"},
    });
    serde_json::to_vec(&doc).unwrap()
}

fn scan(body: &[u8]) -> u64 {
    let mut s = Scanner::new();
    for chunk in body.chunks(16 * 1024) {
        s.feed(chunk);
    }
    s.resources()
}

/// The bench rig's answer (`shared/bench/nginx/upstream.conf`): one Post, 334 bytes.
const RIG_POST: &[u8] = br#"{"data":{"id":"1460323737035677698","text":"Introducing a new era for the Twitter Developer Platform! \ud83d\udce3 The Twitter API v2 is now the primary API and full of new features https://t.co/rv2hRdFvfx","edit_history_tweet_ids":["1460323737035677698"],"author_id":"2244994945","created_at":"2021-11-15T19:08:05.000Z","lang":"en"}}"#;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("metering");
    let typical = page(10);
    let big_posts = 5 * 1024 * 1024 * 10 / typical.len();
    let big = page(big_posts);
    let rig = RIG_POST.to_vec();
    for (name, body) in [
        ("the rig's answer, 1 post", &rig),
        ("search page, 10 posts", &typical),
        ("5 MB page", &big),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name} ({} bytes)", body.len()), |b| {
            b.iter(|| scan(black_box(body)));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
