//! Config parsing and validation: defaults, every rule of CONTRACT section 2, and reporting
//! every problem with its key path.

use super::*;
use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

fn env() -> BTreeMap<&'static str, &'static str> {
    BTreeMap::from([
        ("X_API_KEY", "ck-value"),
        ("X_API_SECRET", "cs-value"),
        ("X_BEARER_TOKEN", "bearer-value"),
        ("X_CLIENT_ID", "client-id-value"),
        ("X_CLIENT_SECRET", "client-secret-value"),
        ("ALICE_ACCESS_TOKEN", "alice-token-value"),
        ("ALICE_ACCESS_TOKEN_SECRET", "alice-secret-value"),
        (
            "XGATE_STORE_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        ),
        ("EMPTY", ""),
    ])
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, Path::new("/etc/xgate"), &env())
}

fn problems(text: &str) -> Vec<String> {
    parse(text)
        .unwrap_err()
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn has(problems: &[String], needle: &str) -> bool {
    problems.iter().any(|p| p.contains(needle))
}

/// A scratch directory under the system temp dir, unique per test.
fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "xgate-config-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const FULL: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 1000
max_header_bytes = 16384
max_connections = 10
workers = 3
header_read_timeout = "1s"
keepalive_timeout = "2s"
tls_handshake_timeout = "3s"
http2_max_concurrent_streams = 7
request_timeout = "4s"
idle_timeout = "5s"
shutdown_grace = "0s"

[admin]
listen = "127.0.0.1:9090"

[upstream]
base_url = "http://127.0.0.1:18081/"
connect_timeout = "500ms"
pool_idle_timeout = "6s"
pool_max_idle_per_host = 0
allowed_prefixes = ["/2/", "/oauth2/"]

[store]
path = "data/xgate.db"
encryption_key = { env = "XGATE_STORE_KEY" }

[apps.main]
consumer_key = { env = "X_API_KEY" }
consumer_secret = { env = "X_API_SECRET" }
bearer_token = { env = "X_BEARER_TOKEN" }
oauth2_client_id = { env = "X_CLIENT_ID" }
oauth2_client_secret = { env = "X_CLIENT_SECRET" }
oauth2_redirect_uri = "http://127.0.0.1:8765/callback"

[users.alice]
app = "main"
auth = "oauth1"
token = { env = "ALICE_ACCESS_TOKEN" }
token_secret = { env = "ALICE_ACCESS_TOKEN_SECRET" }

[users.bob]
app = "main"
auth = "oauth2"
scopes = ["tweet.read", "users.read", "offline.access"]

[[clients]]
name = "backend"
key_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
identities = ["main", "alice", "bob"]
default_identity = "main"
rate = "50/1s"

[[clients]]
name = "sidecar"
anonymous = true
identities = ["main"]

[limits]
on_exhausted = "wait"
max_wait = "2s"
usage_cap_cooldown = "1m"

[[limits.override]]
endpoint = "GET /2/tweets/search/recent"
app = "450/15m"
user = ["1/1s", "180/15m"]

[[limits.override]]
endpoint = "get /2/users/{id}/tweets"
user = "5/15m"
"#;

#[test]
fn full_config_becomes_typed_values() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.server.max_body_bytes, 1000);
    assert_eq!(c.server.max_header_bytes, 16384);
    assert_eq!(c.server.workers, 3);
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(1));
    assert_eq!(c.server.shutdown_grace, Duration::ZERO);
    assert_eq!(c.server.http2_max_concurrent_streams, 7);
    assert_eq!(c.upstream.base_url.to_string(), "http://127.0.0.1:18081/");
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(500));
    assert_eq!(c.upstream.pool_max_idle_per_host, 0);
    assert!(
        matches!(&c.store.location, StoreLocation::File(p) if p == Path::new("/etc/xgate/data/xgate.db"))
    );
    assert_eq!(c.store.encryption_key.as_ref().unwrap().expose()[31], 31);
    let main = &c.apps["main"];
    assert_eq!(main.consumer.as_ref().unwrap().secret.expose(), "cs-value");
    assert!(main.oauth2.as_ref().unwrap().client_secret.is_some());
    assert!(matches!(
        c.users["alice"].auth,
        UserAuth::Oauth1 { token: Some(_) }
    ));
    assert!(matches!(&c.users["bob"].auth, UserAuth::Oauth2 { scopes } if scopes.len() == 3));
    assert!(matches!(c.identity("alice"), Some(Identity::User(_))));
    assert!(matches!(c.identity("main"), Some(Identity::App(_))));
    assert!(c.identity("nobody").is_none());
    assert_eq!(c.clients.len(), 2);
    assert_eq!(
        c.clients[0].auth,
        ClientAuth::KeySha256(crate::client_key::sha256("abc"))
    );
    assert_eq!(c.clients[0].rate.unwrap().to_string(), "50/1s");
    assert_eq!(c.clients[1].auth, ClientAuth::Anonymous);
    assert_eq!(c.limits.on_exhausted, OnExhausted::Wait);
    assert_eq!(c.limits.overrides[0].user.len(), 2);
    let o = &c.limits.overrides[1];
    assert_eq!(o.endpoint.to_string(), "GET /2/users/:id/tweets");
    assert_eq!(o.endpoint.shape, "/2/users/{}/tweets");
    assert!(o.app.is_empty());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn defaults_match_the_contract() {
    let c = parse("[apps.main]\nbearer_token = { env = \"X_BEARER_TOKEN\" }\n").unwrap();
    let s = &c.server;
    assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(s.max_body_bytes, 5_242_880);
    assert_eq!(s.max_header_bytes, 65_536);
    assert_eq!(s.max_connections, 10_000);
    // Not in the contract (an xgate addition): one worker per CPU this process may use.
    assert_eq!(
        s.workers,
        std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .min(256)
    );
    assert_eq!(s.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.keepalive_timeout, Duration::from_secs(60));
    assert_eq!(s.tls_handshake_timeout, Duration::from_secs(10));
    assert_eq!(s.http2_max_concurrent_streams, 256);
    assert_eq!(s.request_timeout, Duration::from_secs(30));
    assert_eq!(s.idle_timeout, Duration::from_secs(90));
    assert_eq!(s.shutdown_grace, Duration::from_secs(20));
    assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.upstream.base_url, "https://api.x.com");
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.upstream.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(c.upstream.pool_max_idle_per_host, 256);
    assert_eq!(c.upstream.allowed_prefixes, ["/2/"]);
    assert!(
        matches!(&c.store.location, StoreLocation::File(p) if p == Path::new("/etc/xgate/xgate.db"))
    );
    assert_eq!(c.limits.on_exhausted, OnExhausted::Reject);
    assert_eq!(c.limits.max_wait, Duration::ZERO);
    assert_eq!(c.limits.usage_cap_cooldown, Duration::from_secs(300));
    let app = &c.apps["main"];
    assert_eq!(app.oauth2_authorize_url, "https://x.com/i/oauth2/authorize");
    assert_eq!(
        app.oauth1_authorize_url,
        "https://api.x.com/oauth/authorize"
    );
    assert_eq!(app.oauth2_redirect_uri, "http://127.0.0.1:8765/callback");
    // No clients is valid, but worth a warning.
    assert!(c.warnings.iter().any(|w| w.path == "clients"));
}

#[test]
fn unknown_keys_are_all_reported_with_their_paths() {
    let p = problems(
        r#"
[server]
listen = "127.0.0.1:8080"
max_body_byte = 1
[apps.main]
bearer_token = "x"
consumer_scret = "y"
[[clients]]
name = "a"
anonymous = true
identities = ["main"]
colour = "blue"
[surprise]
"#,
    );
    assert!(
        p.contains(&"server.max_body_byte: unknown key".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"apps.main.consumer_scret: unknown key".to_owned()),
        "{p:?}"
    );
    assert!(
        p.contains(&"clients.0.colour: unknown key".to_owned()),
        "{p:?}"
    );
    assert!(p.contains(&"surprise: unknown key".to_owned()), "{p:?}");
}

#[test]
fn many_mistakes_are_all_reported_with_key_paths() {
    let p = problems(
        r#"
[server]
listen = "localhost"
max_header_bytes = 100
request_timeout = "30 seconds"
idle_timeout = "0s"
[admin]
listen = "127.0.0.1:8080"
[upstream]
base_url = "ftp://api.x.com"
allowed_prefixes = ["2/"]
[store]
encryption_key = "c2hvcnQ="
[apps.main]
consumer_secret = { env = "X_API_SECRET_MISSING" }
[apps.other]
bearer_token = { env = "EMPTY" }
[users.main]
app = "main"
auth = "oauth1"
[users.carol]
app = "nope"
auth = "oauth3"
[users.dave]
app = "main"
auth = "oauth2"
token = "t"
[[clients]]
name = "a"
key_sha256 = "ABC"
identities = ["ghost"]
default_identity = "main"
rate = "fast"
[[clients]]
name = "a"
anonymous = true
identities = []
[[clients]]
name = "b"
anonymous = true
identities = ["main"]
[[clients]]
name = "c"
identities = ["main"]
[limits]
on_exhausted = "queue"
[[limits.override]]
endpoint = "FETCH /2/tweets"
app = "0/15m"
[[limits.override]]
endpoint = "GET /2/tweets/:id"
"#,
    );
    for (path, needle) in [
        ("server.listen", "invalid socket address \"localhost\""),
        ("server.max_header_bytes", "at least 8192"),
        ("server.request_timeout", "invalid duration"),
        ("server.idle_timeout", "longer than 0"),
        ("admin.listen", "needs its own port"),
        ("upstream.base_url", "absolute http:// or https://"),
        ("upstream.allowed_prefixes[0]", "must start with \"/\""),
        ("store.encryption_key", "exactly 32 bytes, got 5 bytes"),
        (
            "apps.main.consumer_secret",
            "environment variable X_API_SECRET_MISSING is not set",
        ),
        (
            "apps.other.bearer_token",
            "environment variable EMPTY is empty",
        ),
        ("users.main", "already used by apps.main"),
        ("users.main.auth", "oauth1 needs apps.main.consumer_key"),
        ("users.carol.app", "no App named \"nope\""),
        ("users.carol.auth", "unknown value \"oauth3\""),
        ("users.dave.auth", "oauth2 needs apps.main.oauth2_client_id"),
        ("users.dave.token", "token store"),
        ("users.dave.scopes", "missing"),
        ("clients[0].key_sha256", "64 lower-case hex"),
        ("clients[0].identities", "no identity named \"ghost\""),
        (
            "clients[0].default_identity",
            "not one of this client's identities",
        ),
        ("clients[0].rate", "invalid rate \"fast\""),
        ("clients[1].name", "already the name of clients[0]"),
        ("clients[1].identities", "at least one identity"),
        ("clients[2].anonymous", "only one anonymous client"),
        ("clients[3]", "needs key_sha256"),
        ("limits.on_exhausted", "unknown value \"queue\""),
        ("limits.override[0].endpoint", "method must be"),
        ("limits.override[0].app", "at least 1"),
        ("limits.override[1]", "needs app, user or both"),
    ] {
        let line = format!("{path}: ");
        assert!(
            p.iter().any(|l| l.starts_with(&line) && l.contains(needle)),
            "no problem `{path}: ...{needle}...` in\n{}",
            p.join("\n")
        );
    }
}

#[test]
fn type_errors_name_the_key_and_line() {
    let p = problems("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = \"big\"\n");
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("server.max_body_bytes: "), "{p:?}");
    assert!(p[0].contains("(line 3)"), "{p:?}");
    let p = problems("[[clients]]\nname = \"a\"\n[[clients]]\nname = 5\n");
    assert!(p[0].starts_with("clients[1].name: "), "{p:?}");
    let p = problems("[server\n");
    assert!(p[0].contains("line 1"), "{p:?}");
}

#[test]
fn secrets_from_env_file_and_literal() {
    let dir = scratch();
    let mut f = std::fs::File::create(dir.join("bearer")).unwrap();
    f.write_all(b"file-bearer\r\n\n").unwrap();
    std::fs::write(dir.join("blank"), "\n").unwrap();
    let c = Config::from_toml_str(
        r#"
[apps.a]
bearer_token = { file = "bearer" }
[apps.b]
bearer_token = "literal-bearer"
"#,
        &dir,
        &env(),
    )
    .unwrap();
    assert_eq!(
        c.apps["a"].bearer_token.as_ref().unwrap().expose(),
        "file-bearer"
    );
    assert_eq!(
        c.apps["b"].bearer_token.as_ref().unwrap().expose(),
        "literal-bearer"
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.path == "apps.b.bearer_token" && w.message.contains("literally"))
    );
    assert!(!c.warnings.iter().any(|w| w.path == "apps.a.bearer_token"));

    let e = Config::from_toml_str(
        r#"
[apps.a]
bearer_token = { file = "blank" }
[apps.b]
bearer_token = { file = "missing" }
[apps.c]
bearer_token = { env = "X", file = "y" }
"#,
        &dir,
        &env(),
    )
    .unwrap_err();
    let p: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
    // `{ env, file }` is a shape error: it stops parsing before the per-file checks.
    assert!(has(&p, "exactly one of `env` or `file`"), "{p:?}");

    let e = Config::from_toml_str(
        "[apps.a]\nbearer_token = { file = \"blank\" }\n[apps.b]\nbearer_token = { file = \"missing\" }\n",
        &dir,
        &env(),
    )
    .unwrap_err();
    let p: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
    assert!(
        has(&p, "apps.a.bearer_token: secret file") && has(&p, "is empty"),
        "{p:?}"
    );
    assert!(
        has(&p, "apps.b.bearer_token: cannot read secret file"),
        "{p:?}"
    );
}

#[test]
fn problems_and_debug_never_contain_secret_values() {
    let c = parse(FULL).unwrap();
    let dbg = format!("{c:?}");
    for (_, v) in env() {
        if !v.is_empty() {
            assert!(!dbg.contains(v), "Debug of Config shows {v}");
        }
    }
    // A literal secret in an invalid config is never echoed back.
    let p = problems(
        "[apps.a]\nconsumer_key = \"literal-ck-value\"\n[users.u]\napp = \"a\"\nauth = \"oauth1\"\n",
    );
    assert!(!p.iter().any(|l| l.contains("literal-ck-value")), "{p:?}");
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = scratch();
    std::fs::write(dir.join("ca.pem"), "pem").unwrap();
    let c = Config::from_toml_str(
        "[upstream]\nca_file = \"ca.pem\"\n[store]\npath = \"/var/lib/xgate/x.db\"\n",
        &dir,
        &env(),
    )
    .unwrap();
    assert_eq!(
        c.upstream.ca_file.as_deref(),
        Some(dir.join("ca.pem").as_path())
    );
    assert!(
        matches!(&c.store.location, StoreLocation::File(p) if p == Path::new("/var/lib/xgate/x.db"))
    );
    let p = problems("[server]\ntls = { cert = \"nope.pem\" }\n");
    assert!(
        has(&p, "server.tls.cert: cannot read /etc/xgate/nope.pem"),
        "{p:?}"
    );
    assert!(has(&p, "server.tls.key: missing"), "{p:?}");
}

#[test]
fn warnings_for_working_but_risky_setups() {
    let c = parse(
        r#"
[server]
listen = "0.0.0.0:8080"
[apps.main]
consumer_key = { env = "X_API_KEY" }
consumer_secret = { env = "X_API_SECRET" }
oauth2_client_id = { env = "X_CLIENT_ID" }
[users.alice]
app = "main"
auth = "oauth1"
[users.bob]
app = "main"
auth = "oauth2"
scopes = ["tweet.read", "tweet.fly"]
[[clients]]
name = "any"
anonymous = true
identities = ["main"]
"#,
    )
    .unwrap();
    let w: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert!(
        has(
            &w,
            "clients[0]: anonymous client on non-loopback listener 0.0.0.0:8080"
        ),
        "{w:?}"
    );
    assert!(has(&w, "users.alice: no token/token_secret"), "{w:?}");
    assert!(has(&w, "\"tweet.fly\" is not a scope X documents"), "{w:?}");
    assert!(has(&w, "no offline.access"), "{w:?}");
}

#[test]
fn endpoint_patterns_compare_by_shape() {
    let a = EndpointPattern::parse("GET /2/tweets/:id").unwrap();
    let b = EndpointPattern::parse("get /2/tweets/{tweet_id}").unwrap();
    assert_eq!(a.shape, b.shape);
    assert_eq!(b.to_string(), "GET /2/tweets/:tweet_id");
    let p = problems(
        "[[limits.override]]\nendpoint = \"GET /2/tweets/:id\"\napp = \"1/1s\"\n[[limits.override]]\nendpoint = \"GET /2/tweets/{x}\"\nuser = [\"1/1s\", \"2/1s\"]\n",
    );
    assert!(
        has(
            &p,
            "limits.override[1].endpoint: GET /2/tweets/:x is the same endpoint as limits.override[0]"
        ),
        "{p:?}"
    );
    assert!(
        has(
            &p,
            "limits.override[1].user: two rates with the same window"
        ),
        "{p:?}"
    );
    for bad in [
        "/2/tweets",
        "GET 2/tweets",
        "GET /2/tweets?x=1",
        "GET /2/:/x",
    ] {
        assert!(EndpointPattern::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_repository_example_is_valid_with_its_one_variable() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.toml");
    let only_bearer = BTreeMap::from([("X_BEARER_TOKEN", "t")]);
    let c = Config::load(&path, &only_bearer).unwrap();
    assert!(c.apps.contains_key("main"));
    assert_eq!(c.clients[0].auth, ClientAuth::Anonymous);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // And without it, the one problem is named.
    let e = Config::load(&path, &BTreeMap::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "apps.main.bearer_token: environment variable X_BEARER_TOKEN is not set"
    );
}

#[test]
fn workers_must_be_between_one_and_the_limit() {
    for (value, needle) in [
        ("0", "server.workers: must be at least 1, got 0"),
        ("257", "server.workers: must be at most 256, got 257"),
        ("\"two\"", "server.workers"),
    ] {
        let p = problems(&format!(
            "[server]\nworkers = {value}\n[apps.main]\nbearer_token = {{ env = \"X_BEARER_TOKEN\" }}\n"
        ));
        assert!(has(&p, needle), "{value}: {p:?}");
    }
}

// === [shared] and store.url (CONTRACT section 10) ===

const APP: &str = r#"
[apps.main]
bearer_token = { env = "X_BEARER_TOKEN" }
[[clients]]
name = "a"
anonymous = true
identities = ["main"]
"#;

#[test]
fn shared_and_a_postgres_store_parse_with_their_defaults() {
    let c = parse(&format!(
        r#"{APP}
[shared]
redis_url = "rediss://cache.internal:6380/2"
[store]
url = "postgresql://xgate@db.internal/xgate?sslmode=require"
"#
    ))
    .unwrap();
    let shared = c.shared.unwrap();
    assert_eq!(shared.redis.shown, "rediss://cache.internal:6380/2");
    assert_eq!(shared.key_prefix, "xgate:");
    assert_eq!(shared.on_failure, OnFailure::Local);
    assert_eq!(shared.timeout, Duration::from_millis(250));
    match &c.store.location {
        StoreLocation::Postgres(url) => {
            assert_eq!(url.shown, "postgresql://db.internal/xgate");
        }
        StoreLocation::File(p) => panic!("a file store: {p:?}"),
    }
    // A URL without a password is no secret worth a warning; one with a password is.
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    let c = parse(&format!(
        "{APP}\n[shared]\nredis_url = \"redis://u:pw-value@127.0.0.1:6379\"\non_failure = \"refuse\"\ntimeout = \"1s\""
    ))
    .unwrap();
    assert_eq!(c.warnings.len(), 1);
    assert_eq!(c.warnings[0].path, "shared.redis_url");
    let shared = c.shared.unwrap();
    assert_eq!(shared.redis.shown, "redis://127.0.0.1:6379");
    assert_eq!(shared.on_failure, OnFailure::Refuse);
    assert_eq!(shared.timeout, Duration::from_secs(1));
    assert!(parse(APP).unwrap().shared.is_none());
}

#[test]
fn shared_and_store_url_problems_are_named_without_the_url() {
    let p = problems(&format!(
        r#"{APP}
[shared]
key_prefix = "xgate:{{a}}:"
on_failure = "panic"
timeout = "0s"
[store]
path = "x.db"
url = "postgres://u:pw-value@db/x"
"#
    ));
    for (path, needle) in [
        ("shared.redis_url", "is required in [shared]"),
        ("shared.key_prefix", "must not contain { or }"),
        ("shared.on_failure", "unknown value \"panic\""),
        ("shared.timeout", "longer than 0"),
        ("store.url", "exclusive"),
    ] {
        assert!(
            p.iter().any(|l| l.starts_with(path) && l.contains(needle)),
            "{path}: {needle} not in {p:?}"
        );
    }
    let p = problems(&format!(
        "{APP}\n[shared]\nredis_url = \"http://u:pw-value@cache:6379\"\n[store]\nurl = \"mysql://u:pw-value@db/x\""
    ));
    assert!(
        has(
            &p,
            "shared.redis_url: is not a URL of the form redis://, rediss://"
        ),
        "{p:?}"
    );
    assert!(
        has(
            &p,
            "store.url: is not a URL of the form postgres://, postgresql://"
        ),
        "{p:?}"
    );
    assert!(!p.iter().any(|l| l.contains("pw-value")), "{p:?}");
    // The engines' own parsers refuse a bad option without echoing the URL.
    let p = problems(&format!(
        "{APP}\n[shared]\nredis_url = \"redis://u:pw-value@cache:notaport\"\n[store]\nurl = \"postgres://u:pw-value@db/x?sslmode=bogus\""
    ));
    assert!(
        has(
            &p,
            "shared.redis_url: redis://cache:notaport: not a Redis URL"
        ),
        "{p:?}"
    );
    assert!(
        has(&p, "store.url: postgres://db/x: not a PostgreSQL URL"),
        "{p:?}"
    );
    assert!(!p.iter().any(|l| l.contains("pw-value")), "{p:?}");
}

#[test]
fn shown_urls_drop_user_password_and_query() {
    for (url, shown) in [
        ("redis://127.0.0.1:6379", Some("redis://127.0.0.1:6379")),
        ("redis://:pw@h:1/0", Some("redis://h:1/0")),
        ("rediss://user:p@ss@h/", Some("rediss://h/")),
        (
            "postgres://u:pw@db:5432/x?sslmode=require",
            Some("postgres://db:5432/x"),
        ),
        ("postgres://u:pw@/x", None),
        ("redis:/h", None),
    ] {
        assert_eq!(
            validate::shown_url(url, &["redis", "rediss", "postgres"]).as_deref(),
            shown,
            "{url}"
        );
    }
    assert!(validate::has_password("redis://:pw@h"));
    assert!(validate::has_password("postgres://u:pw@h/x"));
    assert!(!validate::has_password("postgres://u@h/x"));
    assert!(!validate::has_password("redis://h:6379/0?x=a:b@c"));
}

#[test]
fn a_postgres_urls_sslrootcert_is_taken_out_and_must_be_readable() {
    assert_eq!(
        postgres_url_parts("postgres://u@h/db?sslmode=require&sslrootcert=%2Fetc%2Fca%20x.pem"),
        (
            "postgres://u@h/db?sslmode=require".to_owned(),
            Some(PathBuf::from("/etc/ca x.pem"))
        )
    );
    assert_eq!(
        postgres_url_parts("postgres://u@h/db?sslrootcert=/ca.pem"),
        (
            "postgres://u@h/db".to_owned(),
            Some(PathBuf::from("/ca.pem"))
        )
    );
    assert_eq!(
        postgres_url_parts("postgres://u@h/db"),
        ("postgres://u@h/db".to_owned(), None)
    );
    let p = problems(&format!(
        "{APP}\n[store]\nurl = \"postgres://u@db/x?sslmode=require&sslrootcert=/nonexistent/ca.pem\""
    ));
    assert!(
        has(
            &p,
            "store.url: postgres://db/x: sslrootcert /nonexistent/ca.pem"
        ),
        "{p:?}"
    );
    let c = parse(&format!(
        "{APP}\n[store]\nurl = \"postgres://u@db/x?sslmode=require&sslrootcert=/etc/hostname\""
    ));
    assert!(c.is_ok(), "{c:?}");
}

#[test]
fn a_syntax_error_never_echoes_the_line_it_is_on() {
    for text in [
        "#junk with sk-secret-value \u{1} = 1\n",
        "sk-secret-value and more = = 1\n",
        "[sk secret value]\nx = \n",
        "[apps.main]\nbearer_token = \"sk-secret-value\" trailing\n",
    ] {
        let p = problems(text);
        assert!(!p.is_empty(), "{text:?}");
        assert!(!p.iter().any(|l| l.contains("secret")), "{text:?}: {p:?}");
    }
    // A plain key path is still named.
    let p = problems("[server]\nmax_body_bytes = = 1\n");
    assert!(has(&p, "server.max_body_bytes"), "{p:?}");
}

const COSTS_BASE: &str = r#"
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
"#;

#[test]
fn costs_and_budgets_become_typed_values() {
    let c = parse(&format!(
        r#"{COSTS_BASE}
[costs]
owned_reads = ["alice"]
dedup_max_ids = 1000
[[costs.override]]
endpoint = "GET /2/tweets/search/recent"
per_resource = 0.004
[[costs.override]]
endpoint = "POST /2/tweets"
per_request = 0.02
[[budgets]]
name = "daily"
client = "backend"
limit = "25.00/1d"
[[budgets]]
name = "monthly"
app = "main"
limit = "500/1mo"
"#
    ))
    .unwrap();
    assert_eq!(c.costs.owned_reads, ["alice"]);
    assert_eq!(c.costs.dedup_max_ids, 1000);
    assert_eq!(c.costs.overrides[0].unit, PriceUnit::PerResource);
    assert_eq!(c.costs.overrides[0].micros, 4_000);
    assert_eq!(c.costs.overrides[1].unit, PriceUnit::PerRequest);
    assert_eq!(c.costs.overrides[1].micros, 20_000);
    assert_eq!(
        c.budgets,
        [
            Budget {
                name: "daily".into(),
                scope: BudgetScope::Client("backend".into()),
                limit_micros: 25_000_000,
                period: Period::Day,
            },
            Budget {
                name: "monthly".into(),
                scope: BudgetScope::App("main".into()),
                limit_micros: 500_000_000,
                period: Period::Month,
            },
        ]
    );
    let defaults = parse(COSTS_BASE).unwrap();
    assert_eq!(defaults.costs.dedup_max_ids, super::DEDUP_MAX_IDS);
    assert!(defaults.budgets.is_empty());
}

#[test]
fn costs_and_budget_mistakes_are_all_reported() {
    let p = problems(&format!(
        r#"{COSTS_BASE}
[costs]
owned_reads = ["main", "ghost"]
[[costs.override]]
endpoint = "GET /2/tweets/:id"
[[costs.override]]
endpoint = "GET /2/users/:id"
per_resource = -1.0
[[budgets]]
name = "a"
client = "nobody"
limit = "10/1w"
[[budgets]]
name = "a"
client = "backend"
identity = "main"
limit = "1/1d"
[[budgets]]
name = "b"
identity = "ghost"
limit = "0/1d"
[[budgets]]
name = "c"
app = "alice"
limit = "1.2345678/1mo"
"#
    ));
    for needle in [
        r#"costs.owned_reads[0]: "main" is not a user identity"#,
        r#"costs.owned_reads[1]: "ghost" is not a user identity"#,
        "costs.override[0]: needs exactly one of per_resource or per_request",
        "costs.override[1].per_resource: must be between 0 and",
        "budgets[0].client: no [[clients]] is named \"nobody\"",
        r#"budgets[0].limit: invalid "10/1w""#,
        "budgets[1].name: \"a\" is also budgets[0]'s name",
        "budgets[1]: needs exactly one of client, identity or app",
        "budgets[2].identity: no identity is named \"ghost\"",
        "budgets[2].limit: must be more than 0 USD",
        "budgets[3].app: no [apps.alice]",
        r#"budgets[3].limit: invalid amount "1.2345678""#,
    ] {
        assert!(has(&p, needle), "missing {needle:?} in {p:#?}");
    }
}

#[test]
fn streams_become_typed_values_with_their_defaults() {
    let c = parse(&format!(
        r#"{COSTS_BASE}
[streams]
max_consumers = 50
consumer_buffer_bytes = 1048576
linger = "5s"
max_rules = 25
"#
    ))
    .unwrap();
    assert_eq!(c.streams.max_consumers, 50);
    assert_eq!(c.streams.consumer_buffer_bytes, 1 << 20);
    assert_eq!(c.streams.linger, std::time::Duration::from_secs(5));
    assert_eq!(c.streams.max_rules, 25);
    let d = parse(COSTS_BASE).unwrap().streams;
    assert_eq!(
        (
            d.max_consumers,
            d.consumer_buffer_bytes,
            d.linger,
            d.max_rules
        ),
        (1000, 4 << 20, std::time::Duration::from_secs(30), 1000)
    );
}

#[test]
fn stream_mistakes_are_all_reported() {
    let p = problems(&format!(
        r#"{COSTS_BASE}
[streams]
max_consumers = 0
consumer_buffer_bytes = 1024
linger = "soon"
max_rules = 0
fan_out = true
"#
    ));
    for needle in [
        "streams.max_consumers: must be at least 1, got 0",
        "streams.consumer_buffer_bytes: must be at least 65536, got 1024",
        "streams.linger:",
        "streams.max_rules: must be at least 1, got 0",
        "streams.fan_out",
    ] {
        assert!(has(&p, needle), "missing {needle:?} in {p:#?}");
    }
}
