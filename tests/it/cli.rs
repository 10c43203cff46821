//! The command line of CONTRACT section 1: `check`, `sign`, `key new`, flags and exit codes.

use std::path::Path;

use crate::support::{scratch, xgate};

const X_CK: &str = "xvz1evFS4wEEPTGEFPHBog";
const X_CS: &str = "kAcSOqF21Fu85e7zjz7ZN2U4ZRhfV3WpwPAoE3Z7kBw";
const X_TOKEN: &str = "370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb";
const X_TS: &str = "LswwdoUaIvS8ltyTt5jkRh4J50vUPVVHtR2YPi5kE";

/// A config whose secrets come from the environment (`SECRETS`), with X's example keys.
const CONFIG: &str = r#"
[store]
path = "state/xgate.db"
[apps.main]
consumer_key = { env = "X_API_KEY" }
consumer_secret = { env = "X_API_SECRET" }
bearer_token = { env = "X_BEARER_TOKEN" }
oauth2_client_id = { env = "X_CLIENT_ID" }
[users.alice]
app = "main"
auth = "oauth1"
token = { env = "ALICE_TOKEN" }
token_secret = { file = "alice_secret" }
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
[[limits.override]]
endpoint = "GET /2/tweets/search/recent"
app = "450/15m"
user = "180/15m"
[[limits.override]]
endpoint = "GET /2/not/{thing}"
app = "5/1m"
"#;

const SECRETS: &[(&str, &str)] = &[
    ("X_API_KEY", X_CK),
    ("X_API_SECRET", X_CS),
    ("X_BEARER_TOKEN", "AAAAbearer%2Fsecret%3D"),
    ("X_CLIENT_ID", "client-id-secret"),
    ("ALICE_TOKEN", X_TOKEN),
];

fn setup() -> std::path::PathBuf {
    let dir = scratch("cli");
    std::fs::write(dir.join("proxy.toml"), CONFIG).unwrap();
    std::fs::write(dir.join("alice_secret"), format!("{X_TS}\n")).unwrap();
    dir
}

fn assert_no_secret(text: &str) {
    for (_, v) in SECRETS {
        assert!(!text.contains(v), "output shows a secret ({v}):\n{text}");
    }
    assert!(
        !text.contains(X_TS),
        "output shows the token secret:\n{text}"
    );
}

#[test]
fn check_prints_a_summary_without_secrets_and_creates_no_store() {
    let dir = setup();
    let run = xgate(&dir, &["check"], SECRETS);
    assert_eq!(run.code, 0, "{run:?}");
    for needle in [
        "proxy  127.0.0.1:8080",
        "admin  127.0.0.1:9090",
        "app   main",
        "user  alice",
        "OAuth 1.0a via app main",
        "user  bob",
        "OAuth 2.0 via app main",
        "backend",
        "identities: main, alice, bob",
        "rate: 50/1s",
        "GET /2/tweets/search/recent",
        "450/15m",
        "endpoint catalogue: 181 endpoints (X API v2.167)",
    ] {
        assert!(
            run.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            run.stdout
        );
    }
    // An override for an endpoint the catalogue lacks adds it, with a warning.
    assert!(
        run.stderr.contains(
            "warning: limits.override[1].endpoint: GET /2/not/:thing is not in the endpoint catalogue"
        ),
        "{}",
        run.stderr
    );
    // bob has no stored token yet: a warning, not an error.
    assert!(
        run.stderr
            .contains("warning: users.bob: no stored OAuth 2.0 token yet"),
        "{}",
        run.stderr
    );
    assert_no_secret(&run.stdout);
    assert_no_secret(&run.stderr);
    assert!(
        !dir.join("state").exists(),
        "check created the store's directory"
    );
    assert!(
        !dir.join("state/xgate.db").exists(),
        "check created the store"
    );
}

#[test]
fn broken_config_reports_every_problem_and_exits_2() {
    let dir = scratch("cli-broken");
    std::fs::write(
        dir.join("proxy.toml"),
        r#"
[server]
listen = "nowhere"
[apps.main]
consumer_secret = { env = "X_API_SECRET" }
[users.alice]
app = "main"
auth = "oauth1"
[[clients]]
name = "backend"
key_sha256 = "not-hex"
identities = ["main", "ghost"]
"#,
    )
    .unwrap();
    let run = xgate(&dir, &["check"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    for prefix in [
        "server.listen: ",
        "apps.main.consumer_secret: environment variable X_API_SECRET is not set",
        "users.alice.auth: ",
        "clients[0].key_sha256: ",
        "clients[0].identities: ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no line {prefix:?} in\n{}",
            run.stderr
        );
    }
    assert_eq!(lines.len(), 5, "one line per problem:\n{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn unknown_key_and_missing_file_exit_2() {
    let dir = scratch("cli-unknown");
    std::fs::write(
        dir.join("proxy.toml"),
        "[server]\nlisten_addr = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let run = xgate(&dir, &["check"], &[]);
    assert_eq!(
        (run.code, run.stderr.trim()),
        (2, "server.listen_addr: unknown key")
    );
    let run = xgate(&dir, &["--config", "absent.toml", "check"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr
            .contains("absent.toml: cannot read the config file"),
        "{}",
        run.stderr
    );
}

#[test]
fn config_flag_before_or_after_the_command_and_from_env() {
    let dir = setup();
    let other = scratch("cli-elsewhere");
    let path = dir.join("proxy.toml");
    let path = path.to_str().unwrap();
    assert_eq!(xgate(&other, &["--config", path, "check"], SECRETS).code, 0);
    assert_eq!(xgate(&other, &["check", "--config", path], SECRETS).code, 0);
    let mut env = SECRETS.to_vec();
    env.push(("XGATE_CONFIG", path));
    assert_eq!(xgate(&other, &["check"], &env).code, 0);
    // Relative paths in the file resolve against its directory, not the working directory:
    // alice's token secret file was found although the command ran elsewhere.
}

/// `xgate sign` for X's "Creating a signature" example, as `alice` with X's keys.
const X_EXAMPLE_SIGN: &[&str] = &[
    "sign",
    "--identity",
    "alice",
    "--nonce",
    "kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg",
    "--timestamp",
    "1318622958",
    "--form",
    "status=Hello Ladies + Gentlemen, a signed OAuth request!",
    "POST",
    "https://api.x.com/1.1/statuses/update.json?include_entities=true",
];

#[test]
fn sign_reproduces_x_example_header() {
    let dir = scratch("cli-sign");
    std::fs::write(
        dir.join("proxy.toml"),
        format!(
            "[apps.main]\nconsumer_key = \"{X_CK}\"\nconsumer_secret = \"{X_CS}\"\n\
             [users.alice]\napp = \"main\"\nauth = \"oauth1\"\ntoken = \"{X_TOKEN}\"\ntoken_secret = \"{X_TS}\"\n"
        ),
    )
    .unwrap();
    let run = xgate(&dir, X_EXAMPLE_SIGN, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        "OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", oauth_nonce=\"kYjzVBB8Y0ZFabxSWbWovY3uYSQ2pTgmZeNu2VS4cg\", oauth_signature=\"Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D\", oauth_signature_method=\"HMAC-SHA1\", oauth_timestamp=\"1318622958\", oauth_token=\"370773112-GmHxMAgYyLbNEtIKZeRNFsMKPR9EyMZeS9weJAEb\", oauth_version=\"1.0\""
    );
    // Literal secrets in the file: a warning on stderr, never the value.
    assert!(
        !run.stderr.contains(X_CS) && !run.stderr.contains(X_TS),
        "{}",
        run.stderr
    );
}

#[test]
fn sign_paths_join_the_upstream_and_nonces_are_fresh() {
    let dir = setup();
    let args = ["sign", "--identity", "alice", "GET", "/2/tweets?ids=20"];
    let a = xgate(&dir, &args, SECRETS);
    let b = xgate(&dir, &args, SECRETS);
    assert_eq!(a.code, 0, "{a:?}");
    assert!(
        a.stdout
            .starts_with("OAuth oauth_consumer_key=\"xvz1evFS4wEEPTGEFPHBog\", oauth_nonce=\"")
    );
    assert_ne!(a.stdout, b.stdout, "two signatures with the same nonce");
    let nonce = a
        .stdout
        .split("oauth_nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(nonce.len(), 32);
    assert!(nonce.bytes().all(|c| c.is_ascii_alphanumeric()));
    assert!(!a.stdout.contains(X_CS) && !a.stdout.contains(X_TS));
}

#[test]
fn sign_redacts_bearer_unless_revealed() {
    let dir = setup();
    let run = xgate(
        &dir,
        &["sign", "--identity", "main", "GET", "/2/tweets/20"],
        SECRETS,
    );
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, "Bearer [redacted]"),
        "{run:?}"
    );
    let run = xgate(
        &dir,
        &[
            "sign",
            "--identity",
            "main",
            "--reveal",
            "GET",
            "/2/tweets/20",
        ],
        SECRETS,
    );
    assert_eq!(run.stdout.trim(), "Bearer AAAAbearer%2Fsecret%3D");
}

/// Regression (review of the shape issue): `sign` worked the credential out from proxy.toml
/// alone, so an App whose Bearer `xgate bearer` stored got an error, and an OAuth 2.0 user was
/// told none was stored without a look. It prints what the proxy would attach (CONTRACT 1).
#[test]
fn sign_uses_the_credentials_in_the_store_as_the_proxy_does() {
    use xgate::store::{SqliteStore, StoredToken};
    let dir = scratch("cli-sign-store");
    std::fs::write(
        dir.join("proxy.toml"),
        format!(
            "[store]\npath = \"xgate.db\"\n\
             [apps.main]\nconsumer_key = \"{X_CK}\"\nconsumer_secret = \"{X_CS}\"\noauth2_client_id = \"cid\"\n\
             [users.alice]\napp = \"main\"\nauth = \"oauth1\"\n\
             [users.bob]\napp = \"main\"\nauth = \"oauth2\"\nscopes = [\"tweet.read\"]\n"
        ),
    )
    .unwrap();
    // Nothing stored yet: each names the command that would store it.
    for (identity, hint) in [
        ("main", "xgate bearer --app main"),
        ("alice", "xgate login --identity alice --oauth1"),
        ("bob", "xgate login --identity bob"),
    ] {
        let run = xgate(
            &dir,
            &["sign", "--identity", identity, "GET", "/2/tweets/20"],
            &[],
        );
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains(hint), "{identity}: {}", run.stderr);
    }
    assert!(!dir.join("xgate.db").exists(), "sign created the store");
    let store = SqliteStore::open(&dir.join("xgate.db"), None).unwrap();
    store
        .save_blocking(
            "main",
            &StoredToken::Bearer {
                token: "stored-app-bearer".into(),
            },
        )
        .unwrap();
    store
        .save_blocking(
            "alice",
            &StoredToken::Oauth1 {
                token: X_TOKEN.into(),
                token_secret: X_TS.into(),
            },
        )
        .unwrap();
    store
        .save_blocking(
            "bob",
            &StoredToken::Oauth2 {
                access_token: "stored-bob-access".into(),
                refresh_token: Some("stored-bob-refresh".into()),
                expires_at: None,
                scopes: vec!["tweet.read".into()],
            },
        )
        .unwrap();
    drop(store);
    for (identity, want) in [("main", "stored-app-bearer"), ("bob", "stored-bob-access")] {
        let run = xgate(
            &dir,
            &["sign", "--identity", identity, "GET", "/2/tweets/20"],
            &[],
        );
        assert_eq!(
            (run.code, run.stdout.trim()),
            (0, "Bearer [redacted]"),
            "{run:?}"
        );
        assert!(!run.stdout.contains(want) && !run.stderr.contains(want));
        let run = xgate(
            &dir,
            &[
                "sign",
                "--identity",
                identity,
                "--reveal",
                "GET",
                "/2/tweets/20",
            ],
            &[],
        );
        assert_eq!(run.stdout.trim(), format!("Bearer {want}"), "{run:?}");
    }
    let run = xgate(&dir, X_EXAMPLE_SIGN, &[]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("oauth_signature=\"Ls93hJiZbQ3akF3HF3x1Bz8%2FzU4%3D\""),
        "{}",
        run.stdout
    );
}

#[test]
fn sign_errors_are_clear() {
    let dir = setup();
    let run = xgate(
        &dir,
        &["sign", "--identity", "nobody", "GET", "/2/tweets"],
        SECRETS,
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("--identity nobody: no such identity"),
        "{}",
        run.stderr
    );
    let run = xgate(
        &dir,
        &["sign", "--identity", "bob", "GET", "/2/tweets"],
        SECRETS,
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("xgate login --identity bob"),
        "{}",
        run.stderr
    );
    let run = xgate(
        &dir,
        &["sign", "--identity", "alice", "GET", "/2/tweets?q=%zz"],
        SECRETS,
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("invalid percent-encoding in the query"),
        "{}",
        run.stderr
    );
    let run = xgate(
        &dir,
        &[
            "sign",
            "--identity",
            "alice",
            "--form",
            "novalue",
            "POST",
            "/2/x",
        ],
        SECRETS,
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("expected NAME=VALUE"), "{}", run.stderr);
}

#[test]
fn key_new_prints_a_key_and_its_snippet() {
    let dir = scratch("cli-key");
    let run = xgate(&dir, &["key", "new", "--name", "backend"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    let key = run.stdout.lines().find(|l| l.starts_with("xgk_")).unwrap();
    assert_eq!(key.len(), 4 + 43);
    let hash = xgate::client_key::to_hex(&xgate::client_key::sha256(key));
    assert!(
        run.stdout.contains(&format!("key_sha256 = \"{hash}\"")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("name = \"backend\""));
    // The snippet, pasted into a config with the identity it names, is valid.
    let snippet = &run.stdout[run.stdout.find("[[clients]]").unwrap()..];
    let config = format!("[apps.main]\nbearer_token = {{ env = \"T\" }}\n{snippet}");
    std::fs::write(dir.join("proxy.toml"), config).unwrap();
    assert_eq!(xgate(&dir, &["check"], &[("T", "t")]).code, 0);
    // Each key is new.
    let again = xgate(&dir, &["key", "new"], &[]);
    assert!(!again.stdout.contains(key));
    assert_eq!(
        xgate(&dir, &["key", "new", "--name", "bad name"], &[]).code,
        2
    );
}

#[test]
fn help_and_usage_errors() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let run = xgate(dir, &["--help"], &[]);
    assert_eq!(run.code, 0);
    for cmd in ["check", "sign", "key", "--config", "--log-format"] {
        assert!(
            run.stdout.contains(cmd),
            "--help lacks {cmd}:\n{}",
            run.stdout
        );
    }
    let run = xgate(dir, &["sign", "--help"], &[]);
    assert!(
        run.stdout.contains("--reveal") && run.stdout.contains("--form"),
        "{}",
        run.stdout
    );
    assert_eq!(xgate(dir, &["frobnicate"], &[]).code, 2);
    assert_eq!(xgate(dir, &["check", "--log-format", "xml"], &[]).code, 2);
    let run = xgate(dir, &["check"], &[("XGATE_LOG", "xgate=loud")]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("invalid log filter"), "{}", run.stderr);
}

/// CONTRACT section 11 rule 1: `check` lists the endpoints X does not price, except those a
/// `[[costs.override]]` prices, with the budgets; a cost override of an unknown endpoint is a
/// configuration error.
#[test]
fn check_lists_unpriced_endpoints_that_no_override_covers() {
    let dir = scratch("cli-costs");
    let base = r#"
[apps.main]
bearer_token = "t"
[[clients]]
name = "backend"
anonymous = true
identities = ["main"]
[[budgets]]
name = "daily"
client = "backend"
limit = "25.00/1d"
[[costs.override]]
endpoint = "GET /2/media/:media_key"
per_resource = 0.004
"#;
    std::fs::write(dir.join("proxy.toml"), base).unwrap();
    let run = xgate(&dir, &["check"], &[]);
    assert_eq!(run.code, 0, "{run:?}");
    for needle in [
        "costs: 96 endpoints priced (X's pay-per-use table; 1 overridden), 85 unpriced",
        "budget daily: client backend, 25.000000 USD per UTC day",
        "    GET /2/compliance/jobs\n",
        "    GET /2/usage/tweets\n",
    ] {
        assert!(
            run.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            run.stdout
        );
    }
    assert!(
        !run.stdout.contains("    GET /2/media/:media_key\n"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("    GET /2/tweets/search/recent\n"),
        "{}",
        run.stdout
    );

    std::fs::write(
        dir.join("proxy.toml"),
        base.replace("GET /2/media/:media_key", "GET /2/nothing/here"),
    )
    .unwrap();
    let run = xgate(&dir, &["check"], &[]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains(
            "costs.override[0].endpoint: GET /2/nothing/here is not an endpoint of the catalogue"
        ),
        "{}",
        run.stderr
    );
}
