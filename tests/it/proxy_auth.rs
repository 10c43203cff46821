//! CONTRACT section 4 (outbound credentials), checked by FakeX's own OAuth 1.0a verifier.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::support::fake_x::{
    ALICE_SECRET, ALICE_TOKEN, Auth, BEARER, CONSUMER_KEY, CONSUMER_SECRET, FakeX, Reply,
};
use crate::support::http::{get, request, send};
use crate::support::logs;
use crate::support::proxy::{KEY, Proxy, config};

async fn setup() -> (FakeX, Proxy) {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
    (fake, proxy)
}

fn oauth_params(auth: &Auth) -> &std::collections::BTreeMap<String, String> {
    match auth {
        Auth::Oauth1 {
            valid: true,
            params,
        } => params,
        other => panic!("not a valid OAuth 1.0a request: {other:?}"),
    }
}

#[tokio::test]
async fn app_identity_gets_the_bearer_token_verbatim() {
    let (fake, proxy) = setup().await;
    assert_eq!(
        get(proxy.addr, "/2/tweets/20", Some("main")).await.status,
        200
    );
    let r = &fake.requests()[0];
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
}

#[tokio::test]
async fn tricky_queries_are_signed_correctly() {
    let (fake, proxy) = setup().await;
    for target in [
        "/2/tweets/search/recent?query=from%3AXDevelopers+-is%3Aretweet&max_results=10",
        "/2/tweets/search/recent?query=a%20b!*'()&tilde=~x",
        "/2/users/by?usernames=%E2%98%83&q=caf%C3%A9+na%C3%AFve",
        "/2/tweets?ids=2&ids=10&ids=1&empty=&bare&z=",
        "/2/users/me",
    ] {
        let a = get(proxy.addr, target, Some("alice")).await;
        assert_eq!(a.status, 200, "{target}: {}", a.text());
    }
    let mut nonces = std::collections::BTreeSet::new();
    for r in fake.requests() {
        let p = oauth_params(&r.auth);
        assert_eq!(p["oauth_consumer_key"], CONSUMER_KEY);
        assert_eq!(p["oauth_token"], ALICE_TOKEN);
        assert_eq!(p["oauth_version"], "1.0");
        assert_eq!(p["oauth_signature_method"], "HMAC-SHA1");
        assert_eq!(p["oauth_nonce"].len(), 32);
        nonces.insert(p["oauth_nonce"].clone());
        let ts: u64 = p["oauth_timestamp"].parse().unwrap();
        let now = xgate::clock::Clock::unix_seconds(&xgate::clock::SystemClock);
        assert!(ts.abs_diff(now) < 60, "timestamp {ts} vs now {now}");
    }
    assert_eq!(nonces.len(), 5, "a nonce was reused");
}

#[tokio::test]
async fn form_bodies_are_signed_and_json_bodies_are_not() {
    let (fake, proxy) = setup().await;
    let form = "status=Hello+Ladies+%2B+Gentlemen%2C+a+signed+OAuth+request%21&x=%E2%98%83";
    let a = send(
        proxy.addr,
        request("POST", "/2/statuses/update?include_entities=true")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "alice")
            .header(
                "content-type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            )
            .body(Full::new(Bytes::from(form)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = &fake.requests()[0];
    assert_eq!(r.method, http::Method::POST);
    assert_eq!(
        &r.body[..],
        form.as_bytes(),
        "the form body must pass unchanged"
    );
    // FakeX verified the signature with the body parameters included; prove they mattered.
    let header = r.header("authorization").unwrap();
    let url = format!(
        "http://{}/2/statuses/update?include_entities=true",
        fake.addr
    );
    assert!(
        crate::support::fake_x::verify_oauth1(
            "POST",
            &url,
            header,
            Some(form.as_bytes()),
            CONSUMER_SECRET,
            ALICE_SECRET
        )
        .is_ok()
    );
    assert!(
        crate::support::fake_x::verify_oauth1(
            "POST",
            &url,
            header,
            None,
            CONSUMER_SECRET,
            ALICE_SECRET
        )
        .is_err()
    );

    let json = r#"{"text":"hello a=b&c=d"}"#;
    let a = send(
        proxy.addr,
        request("POST", "/2/tweets")
            .header("x-xgate-key", KEY)
            .header("x-xgate-identity", "alice")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    let r = &fake.requests()[1];
    assert_eq!(&r.body[..], json.as_bytes());
    oauth_params(&r.auth); // valid without the body in the base string
}

#[tokio::test]
async fn timestamps_follow_upstream_clock_when_skewed() {
    let (fake, proxy) = setup().await;
    let now = xgate::clock::Clock::unix_seconds(&xgate::clock::SystemClock);
    let ahead = std::time::UNIX_EPOCH + Duration::from_secs(now + 3600);
    fake.script(
        "/2/skew",
        Reply::json(200, "{}").header("date", &httpdate::fmt_http_date(ahead)),
    );
    assert_eq!(get(proxy.addr, "/2/skew", Some("alice")).await.status, 200);
    assert_eq!(
        get(proxy.addr, "/2/users/me", Some("alice")).await.status,
        200
    );
    let r = fake.requests_to("/2/users/me");
    let ts: u64 = oauth_params(&r[0].auth)["oauth_timestamp"].parse().unwrap();
    assert!(
        ts.abs_diff(now + 3600) < 60,
        "timestamp {ts} did not follow upstream (now {now})"
    );
    assert!(
        logs::text().contains("upstream's clock differs"),
        "the offset was not logged"
    );
}

#[tokio::test]
async fn oauth2_user_without_token_and_app_without_bearer_get_401() {
    let (fake, proxy) = setup().await;
    let a = get(proxy.addr, "/2/users/me", Some("bob")).await;
    assert_eq!(
        (a.status.as_u16(), a.kind()),
        (401, Some("credentials-missing"))
    );
    let a = get(proxy.addr, "/2/tweets/1", Some("bare")).await;
    assert_eq!(
        (a.status.as_u16(), a.kind()),
        (401, Some("credentials-missing"))
    );
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn logs_never_contain_secrets_tokens_or_client_keys() {
    let (fake, proxy) = setup().await;
    // Each request carries an id of this test's own, so the test reads the logs only once
    // every one of its access records is there (a worker thread may write a record just
    // after the client has its answer; other tests' records prove nothing).
    let ids: Vec<String> = (0..21).map(|i| format!("secrets-in-logs-{i}")).collect();
    for (i, request_id) in ids.iter().take(20).enumerate() {
        let identity = ["main", "alice", "bob", "bare"][i % 4];
        let _ignored = send(
            proxy.addr,
            request("GET", &format!("/2/tweets/{i}?x=1"))
                .header("x-xgate-key", KEY)
                .header("x-xgate-identity", identity)
                .header("x-request-id", request_id)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    }
    // A wrong key too: it must not be echoed in logs either.
    let _ignored = send(
        proxy.addr,
        request("GET", "/2/tweets/1")
            .header("x-xgate-key", "xgk_wrong-key-value")
            .header("x-request-id", &ids[20])
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(fake.requests().len() >= 10);
    for request_id in &ids {
        let needle = format!("request_id={request_id} ");
        logs::wait_for_line(|l| l.contains(&needle)).await;
    }
    let text = logs::text();
    for secret in [
        BEARER,
        CONSUMER_SECRET,
        ALICE_SECRET,
        ALICE_TOKEN,
        KEY,
        "xgk_wrong-key-value",
        "oauth_signature",
    ] {
        assert!(!text.contains(secret), "logs contain {secret}");
    }
}
