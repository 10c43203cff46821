//! The SDK compatibility suite (issue "SDKs"): X's Python and TypeScript SDKs, tweepy and
//! twitter-api-v2, each driven through xgate against FakeX. `tests/sdk/run.sh` installs the
//! pinned SDKs and runs it; `cargo test` does not.
//!
//! For each SDK it starts FakeX (the fake X API of the Rust tests, the same code) and two
//! in-process xgates in front of it (`on_exhausted = "reject"` and `"wait"`), then runs the
//! SDK's runner (`tests/sdk/python/run.py`, `tests/sdk/node/run.mjs`) once per scenario. A
//! runner prints one JSON line of what the SDK gave it; this program checks that line and what
//! FakeX saw (the query as X decodes it, the credential as X verifies it, the JSON body, a
//! stream abandoned upstream once the SDK closed it), prints an SDK × scenario table, and
//! exits 1 on any miss.
//!
//! Usage: `cargo run --example sdk_suite -- --python PY --node NODE [--sdk NAME]...
//! [--scenario NAME]... [--verbose]` (`--verbose` prints what each SDK gave).

#![expect(clippy::print_stdout, reason = "the table is the suite's output")]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

// The Rust tests' FakeX, included as it is: test code, with the tests' exemptions. (At the
// crate root: FakeX finds the test CA as `super::tls`.)
#[expect(
    dead_code,
    unused_imports,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "test code, included as it is"
)]
#[path = "../tests/it/support/fake_x/mod.rs"]
mod fake_x;
#[expect(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test code, included as it is"
)]
#[path = "../tests/it/support/tls.rs"]
mod tls;

use fake_x::{Auth, FakeX, Recorded, Reply};

/// The suite's client key (client `sdk`: identities `main` and `alice`).
const KEY: &str = "xgk_sdk-suite-key-0123456789";
/// Client `narrow`: identity `main` only.
const NARROW_KEY: &str = "xgk_sdk-suite-narrow-0123456789";
/// A search query with everything that tends to break encoders and signers.
const HARD_QUERY: &str = "C++ !*'~ 100% \"exact phrase\" #rustlang from:XDevelopers 🚀 (a OR b)";
/// The post the suite creates and deletes.
const POST_ID: &str = "1445880548472328192";
const USER_ID: &str = "2244994945";

const SCENARIOS: [&str; 13] = [
    "search_app",
    "search_oauth1",
    "lookup",
    "post",
    "delete",
    "paginate",
    "x_429",
    "local_429",
    "wait",
    "forbidden",
    "not_found",
    "stream_filtered",
    "stream_sample",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lang {
    Python,
    Node,
}

/// An SDK: its name in the table, its runner, and its name for the runner.
#[derive(Debug, Clone, Copy)]
struct Sdk {
    name: &'static str,
    lang: Lang,
    runner_name: &'static str,
    /// Where the SDK shows xgate's `detail`: in its error's message (`shown`), or only on
    /// the response it carries (`detail`: X's Python SDK raises requests' `HTTPError`).
    detail_in: &'static str,
}

const SDKS: [Sdk; 4] = [
    Sdk {
        name: "xdk-python",
        lang: Lang::Python,
        runner_name: "xdk",
        detail_in: "detail",
    },
    Sdk {
        name: "tweepy",
        lang: Lang::Python,
        runner_name: "tweepy",
        detail_in: "shown",
    },
    Sdk {
        name: "xdk-typescript",
        lang: Lang::Node,
        runner_name: "xdk",
        detail_in: "shown",
    },
    Sdk {
        name: "twitter-api-v2",
        lang: Lang::Node,
        runner_name: "twitter-api-v2",
        detail_in: "shown",
    },
];

#[derive(Debug)]
struct Options {
    python: PathBuf,
    node: PathBuf,
    sdks: Vec<String>,
    scenarios: Vec<String>,
    /// Print every runner's JSON line.
    verbose: bool,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        python: PathBuf::from("python3"),
        node: PathBuf::from("node"),
        sdks: Vec::new(),
        scenarios: Vec::new(),
        verbose: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--python" => o.python = PathBuf::from(value()?),
            "--node" => o.node = PathBuf::from(value()?),
            "--sdk" => o.sdks.push(value()?),
            "--scenario" => o.scenarios.push(value()?),
            "--verbose" => o.verbose = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sdk_suite: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sdk_suite: no runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(suite(&opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sdk_suite: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs every selected SDK through every selected scenario; `Ok(true)` when all passed.
async fn suite(opts: &Options) -> Result<bool, String> {
    let sdks: Vec<Sdk> = SDKS
        .into_iter()
        .filter(|s| opts.sdks.is_empty() || opts.sdks.iter().any(|n| n == s.name))
        .collect();
    let scenarios: Vec<&str> = SCENARIOS
        .into_iter()
        .filter(|s| opts.scenarios.is_empty() || opts.scenarios.iter().any(|n| n == s))
        .collect();
    let mut rows = Vec::new();
    for sdk in sdks {
        rows.push((sdk, run_sdk(sdk, &scenarios, opts).await?));
    }
    print_table(&scenarios, &rows);
    Ok(rows
        .iter()
        .all(|(_, results)| results.iter().all(|(_, r)| r.is_ok())))
}

/// Each scenario of one SDK, and how it went.
type Results<'s> = Vec<(&'s str, Result<(), String>)>;

fn print_table(scenarios: &[&str], rows: &[(Sdk, Results<'_>)]) {
    let mut table = String::from("| SDK |");
    for s in scenarios {
        table.push_str(&format!(" {s} |"));
    }
    table.push_str("\n| --- |");
    table.push_str(&" :---: |".repeat(scenarios.len()));
    table.push('\n');
    for (sdk, results) in rows {
        table.push_str(&format!("| {} |", sdk.name));
        for (_, r) in results {
            table.push_str(if r.is_ok() { " ok |" } else { " **MISS** |" });
        }
        table.push('\n');
    }
    println!("{table}");
    for (sdk, results) in rows {
        for (scenario, r) in results {
            if let Err(why) = r {
                println!("MISS {} {scenario}: {why}", sdk.name);
            }
        }
    }
}

/// One SDK through the scenarios, against a fresh FakeX and fresh xgates (X's 429 teaches a
/// bucket, and the local limits are used up).
async fn run_sdk<'s>(
    sdk: Sdk,
    scenarios: &[&'s str],
    opts: &Options,
) -> Result<Results<'s>, String> {
    let fake = FakeX::start().await;
    let reset = script(&fake);
    let scratch = std::env::temp_dir().join(format!("xgate-sdk-suite-{}", std::process::id()));
    let reject = Xgate::start(&fake.base_url(), "reject", &scratch.join("reject")).await?;
    let wait = Xgate::start(&fake.base_url(), "wait", &scratch.join("wait")).await?;
    let mut results = Vec::new();
    for &scenario in scenarios {
        let url = if scenario == "wait" {
            &wait.url
        } else {
            &reject.url
        };
        let (key, identity) = match scenario {
            "forbidden" => (NARROW_KEY, "alice"),
            "search_oauth1" | "post" | "delete" => (KEY, "alice"),
            _ => (KEY, "main"),
        };
        let before = fake.requests().len();
        let out = run_runner(sdk, scenario, url, key, identity, opts).await;
        let sent: Vec<Recorded> = fake.requests().split_off(before);
        if opts.verbose {
            match &out {
                Ok(v) => println!("{} {scenario}: {v}", sdk.name),
                Err(e) => println!("{} {scenario}: {e}", sdk.name),
            }
        }
        let result = match out {
            Ok(out) => check(sdk, scenario, &out, &sent, &fake, reset).await,
            Err(e) => Err(e),
        };
        results.push((scenario, result));
    }
    reject.stop().await;
    wait.stop().await;
    let _ignored = std::fs::remove_dir_all(&scratch);
    Ok(results)
}

/// Runs one scenario's runner and parses its JSON line (at most 60 s).
async fn run_runner(
    sdk: Sdk,
    scenario: &str,
    url: &str,
    key: &str,
    identity: &str,
    opts: &Options,
) -> Result<Value, String> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (program, script) = match sdk.lang {
        Lang::Python => (&opts.python, here.join("tests/sdk/python/run.py")),
        Lang::Node => (&opts.node, here.join("tests/sdk/node/run.mjs")),
    };
    let child = std::process::Command::new(program)
        .arg(&script)
        .args([sdk.runner_name, scenario])
        .env("XGATE_URL", url)
        .env("XGATE_KEY", key)
        .env("XGATE_IDENTITY", identity)
        .env("HARD_QUERY", HARD_QUERY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let pid = child.id();
    let waited = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await;
    let output = match waited {
        Ok(Ok(Ok(output))) => output,
        Ok(Ok(Err(e))) => return Err(format!("the runner failed: {e}")),
        Ok(Err(e)) => return Err(format!("the runner's wait failed: {e}")),
        Err(_elapsed) => {
            let _killed = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            return Err("the runner did not finish within 60 s".to_owned());
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| {
        format!(
            "no JSON line from the runner ({e}); stdout: {stdout}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A tweet line of a stream.
fn stream_line(id: &str) -> String {
    format!(
        "{{\"data\":{{\"id\":\"{id}\",\"text\":\"streamed {id}\",\"edit_history_tweet_ids\":[\"{id}\"]}},\"matching_rules\":[{{\"id\":\"{rule}\",\"tag\":\"xgate:suite\"}}]}}\r\n",
        rule = fake_x::live::rule_id(1)
    )
}

fn page(ids: &[&str], next: Option<&str>) -> String {
    let data: Vec<Value> = ids
        .iter()
        .map(|id| serde_json::json!({"id": id, "text": format!("post {id}"), "edit_history_tweet_ids": [id]}))
        .collect();
    let mut meta = serde_json::json!({
        "result_count": ids.len(),
        "newest_id": ids.first(),
        "oldest_id": ids.last(),
    });
    if let (Some(next), Some(m)) = (next, meta.as_object_mut()) {
        m.insert("next_token".to_owned(), next.into());
    }
    serde_json::json!({"data": data, "meta": meta}).to_string()
}

fn with_limits(reply: Reply) -> Reply {
    reply
        .header("x-rate-limit-limit", "450")
        .header("x-rate-limit-remaining", "449")
        .header("x-rate-limit-reset", "4102444800")
}

/// What FakeX answers; returns the reset of its 429.
fn script(fake: &FakeX) -> u64 {
    use http::Method;
    let search = "/2/tweets/search/recent";
    fake.route(
        Some(Method::GET),
        search,
        None,
        with_limits(Reply::json(200, &page(&["1", "2"], Some("p2")))),
    );
    fake.route(
        Some(Method::GET),
        search,
        Some("_token=p2"),
        with_limits(Reply::json(200, &page(&["3", "4"], Some("p3")))),
    );
    fake.route(
        Some(Method::GET),
        search,
        Some("_token=p3"),
        with_limits(Reply::json(200, &page(&["5"], None))),
    );
    fake.route(
        Some(Method::GET),
        "/2/tweets/20",
        None,
        with_limits(Reply::json(
            200,
            r#"{"data":{"id":"20","text":"hello","edit_history_tweet_ids":["20"]}}"#,
        )),
    );
    fake.route(
        Some(Method::POST),
        "/2/tweets",
        None,
        with_limits(Reply::json(
            201,
            &format!(
                r#"{{"data":{{"id":"{POST_ID}","text":"hello from an SDK","edit_history_tweet_ids":["{POST_ID}"]}}}}"#
            ),
        )),
    );
    fake.route(
        Some(Method::DELETE),
        &format!("/2/tweets/{POST_ID}"),
        None,
        with_limits(Reply::json(200, r#"{"data":{"deleted":true}}"#)),
    );
    let user =
        format!(r#"{{"data":{{"id":"{USER_ID}","name":"Developers","username":"XDevelopers"}}}}"#);
    fake.route(
        Some(Method::GET),
        &format!("/2/users/{USER_ID}"),
        None,
        with_limits(Reply::json(200, &user)),
    );
    let reset = unix_now() + 900;
    fake.route(
        Some(Method::GET),
        "/2/users/by/username/busy",
        None,
        Reply::json(
            429,
            r#"{"title":"Too Many Requests","detail":"Too Many Requests","type":"about:blank","status":429}"#,
        )
        .header("x-rate-limit-limit", "900")
        .header("x-rate-limit-remaining", "0")
        .header("x-rate-limit-reset", &reset.to_string()),
    );
    // The rules are X's own (FakeX keeps them); the stream is scripted, its posts matching
    // the first rule FakeX creates: the one the SDK adds through xgate.
    fake.live().serve("/2/tweets/search/stream/rules");
    for stream in ["/2/tweets/search/stream", "/2/tweets/sample/stream"] {
        fake.route(
            Some(Method::GET),
            stream,
            None,
            Reply::stream(
                &stream_line("100"),
                &stream_line("101"),
                Duration::from_millis(300),
                200,
                "",
            ),
        );
    }
    reset
}

fn unix_now() -> u64 {
    xgate::clock::Clock::unix_seconds(&xgate::clock::SystemClock)
}

/// The query parameter `name` of a recorded request, decoded as X decodes it.
fn query_param(r: &Recorded, name: &str) -> Option<String> {
    let query = r.target.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (String::from_utf8_lossy(&fake_x::dec(k)) == name)
            .then(|| String::from_utf8_lossy(&fake_x::dec(v)).into_owned())
    })
}

fn to(sent: &[Recorded], method: &str, prefix: &str) -> Vec<Recorded> {
    sent.iter()
        .filter(|r| r.method.as_str() == method && r.target.starts_with(prefix))
        .cloned()
        .collect()
}

/// `v.name`, or null.
fn field<'v>(v: &'v Value, name: &str) -> &'v Value {
    v.get(name).unwrap_or(&Value::Null)
}

/// The one request of `sent`.
fn only(sent: &[Recorded]) -> Result<&Recorded, String> {
    match sent {
        [one] => Ok(one),
        other => Err(format!("{} such requests reached X", other.len())),
    }
}

fn expect(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(why()) }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `v` as a string, numbers included.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The scenario passed: what the SDK gave (`out`) and what reached X (`sent`) are right.
async fn check(
    sdk: Sdk,
    scenario: &str,
    out: &Value,
    sent: &[Recorded],
    fake: &FakeX,
    reset: u64,
) -> Result<(), String> {
    let valid_bearer = |r: &Recorded| r.auth == Auth::Bearer { valid: true };
    let valid_oauth1 = |r: &Recorded| matches!(r.auth, Auth::Oauth1 { valid: true, .. });
    let unexpected = || format!("the SDK gave {out}");
    match scenario {
        "search_app" | "search_oauth1" => {
            expect(strings(field(out, "ids")) == ["1", "2"], unexpected)?;
            let searches = to(sent, "GET", "/2/tweets/search/recent");
            let r = only(&searches)?;
            let query = query_param(r, "query");
            expect(query.as_deref() == Some(HARD_QUERY), || {
                format!("X decoded the query as {query:?}")
            })?;
            let signed = if scenario == "search_app" {
                valid_bearer(r)
            } else {
                valid_oauth1(r)
            };
            expect(signed, || format!("X saw the credential as {:?}", r.auth))
        }
        "paginate" => {
            expect(
                field(out, "pages") == 3 && strings(field(out, "ids")) == ["1", "2", "3", "4", "5"],
                unexpected,
            )?;
            let searches = to(sent, "GET", "/2/tweets/search/recent");
            expect(
                searches.len() == 3 && searches.iter().all(valid_bearer),
                || format!("{} pages reached X", searches.len()),
            )
        }
        "lookup" => {
            expect(
                text(field(out, "id")) == "20" && field(out, "text") == "hello",
                unexpected,
            )?;
            let r = to(sent, "GET", "/2/tweets/20");
            let r = only(&r)?;
            expect(valid_bearer(r), || format!("X saw {:?}", r.auth))
        }
        "post" => {
            expect(text(field(out, "id")) == POST_ID, unexpected)?;
            let r = to(sent, "POST", "/2/tweets");
            let r = only(&r)?;
            expect(valid_oauth1(r), || format!("X saw {:?}", r.auth))?;
            let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            expect(field(&body, "text") == "hello from an SDK", || {
                format!("X got the body {body}")
            })
        }
        "delete" => {
            expect(field(out, "deleted") == true, unexpected)?;
            let r = to(sent, "DELETE", &format!("/2/tweets/{POST_ID}"));
            let r = only(&r)?;
            expect(valid_oauth1(r), || format!("X saw {:?}", r.auth))
        }
        "x_429" => {
            expect(text(field(out, "status")) == "429", unexpected)?;
            expect(text(field(out, "reset")) == reset.to_string(), || {
                format!(
                    "the SDK read the reset as {} (X sent {reset})",
                    field(out, "reset")
                )
            })?;
            expect(
                to(sent, "GET", "/2/users/by/username/busy").len() == 1,
                || "X did not get the request once".to_owned(),
            )
        }
        "local_429" => {
            expect(text(field(out, "status")) == "429", unexpected)?;
            let read: u64 = text(field(out, "reset")).parse().unwrap_or(0);
            expect(read > unix_now(), || {
                format!("the SDK read the reset as {}", field(out, "reset"))
            })?;
            let r = to(sent, "GET", &format!("/2/users/{USER_ID}"));
            expect(r.len() == 1, || {
                format!(
                    "{} requests reached X; the second should have been refused locally",
                    r.len()
                )
            })
        }
        "wait" => {
            expect(field(out, "ok") == 2, unexpected)?;
            let r = to(sent, "GET", &format!("/2/users/{USER_ID}"));
            expect(r.len() == 2, || format!("{} requests reached X", r.len()))
        }
        "forbidden" | "not_found" => {
            let (status, detail) = if scenario == "forbidden" {
                ("403", "identity not allowed")
            } else {
                ("404", "path is not under an allowed prefix")
            };
            expect(text(field(out, "status")) == status, unexpected)?;
            expect(text(field(out, sdk.detail_in)).contains(detail), || {
                format!(
                    "the SDK's {} does not show xgate's detail: {out}",
                    sdk.detail_in
                )
            })?;
            expect(sent.is_empty(), || "the request reached X".to_owned())
        }
        "stream_filtered" | "stream_sample" => {
            let path = if scenario == "stream_filtered" {
                "/2/tweets/search/stream"
            } else {
                "/2/tweets/sample/stream"
            };
            expect(
                strings(field(out, "ids")) == ["100", "101", "101"],
                unexpected,
            )?;
            if scenario == "stream_filtered" {
                // The SDK's rule methods, through xgate: the client's own rule, its own tag.
                let want = serde_json::json!([{"value": "from:XDevelopers", "tag": "suite"}]);
                expect(field(out, "rules") == &want, || {
                    format!("the SDK listed the rules {}", field(out, "rules"))
                })?;
                let at_x = fake.live().rules();
                expect(
                    at_x.len() == 1
                        && at_x
                            .first()
                            .and_then(|r| r.tag.as_deref())
                            .is_some_and(|t| t.starts_with("xgate:")),
                    || format!("X holds {at_x:?}"),
                )?;
            }
            // X sends a post every 300 ms for a minute: the SDK had its posts while the stream
            // went on (not at its end), as they were sent (the third at least two ticks after
            // the first, whatever a loaded machine does to a single gap).
            let gaps: Vec<u64> = field(out, "gaps_ms")
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            expect(gaps.len() == 2 && gaps.iter().sum::<u64>() >= 400, || {
                format!("the posts arrived {gaps:?} ms apart (X sent one every 300 ms)")
            })?;
            let r: Vec<Recorded> = to(sent, "GET", path)
                .into_iter()
                .filter(|r| r.target.split('?').next() == Some(path))
                .collect();
            let r = only(&r)?;
            expect(valid_bearer(r), || format!("X saw {:?}", r.auth))?;
            let target = r.target.clone();
            expect(!fake.stream_done(&target), || {
                "X's stream had ended before the SDK was done with it".to_owned()
            })?;
            let closed = fake
                .wait_until(Duration::from_secs(10), |f| f.was_cancelled(&target))
                .await;
            expect(closed, || {
                "X's stream was still open 10 s after the SDK closed it".to_owned()
            })
        }
        other => Err(format!("no check for scenario {other}")),
    }
}

/// An in-process xgate in front of FakeX.
struct Xgate {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), xgate::server::StartError>>,
}

impl Xgate {
    async fn start(upstream: &str, on_exhausted: &str, dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let sha = |key: &str| xgate::client_key::to_hex(&xgate::client_key::sha256(key));
        // reject: the second GET /2/users/:id in 15 minutes is xgate's 429; wait: it is held
        // until the 2 s window turns.
        let window = if on_exhausted == "wait" {
            "1/2s"
        } else {
            "1/15m"
        };
        let toml = format!(
            r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
base_url = "{upstream}"
allowed_prefixes = ["/2/tweets", "/2/users"]
[store]
path = "xgate.db"
[apps.main]
bearer_token = {{ env = "X_BEARER_TOKEN" }}
consumer_key = {{ env = "X_API_KEY" }}
consumer_secret = {{ env = "X_API_SECRET" }}
[users.alice]
app = "main"
auth = "oauth1"
token = {{ env = "ALICE_TOKEN" }}
token_secret = {{ env = "ALICE_SECRET" }}
[[clients]]
name = "sdk"
key_sha256 = "{key}"
identities = ["main", "alice"]
default_identity = "main"
[[clients]]
name = "narrow"
key_sha256 = "{narrow}"
identities = ["main"]
default_identity = "main"
[streams]
linger = "0s"
[limits]
on_exhausted = "{on_exhausted}"
max_wait = "5s"
[[limits.override]]
endpoint = "GET /2/users/:id"
app = "{window}"
user = "{window}"
"#,
            key = sha(KEY),
            narrow = sha(NARROW_KEY),
        );
        let env = BTreeMap::from([
            ("X_BEARER_TOKEN", fake_x::BEARER),
            ("X_API_KEY", fake_x::CONSUMER_KEY),
            ("X_API_SECRET", fake_x::CONSUMER_SECRET),
            ("ALICE_TOKEN", fake_x::ALICE_TOKEN),
            ("ALICE_SECRET", fake_x::ALICE_SECRET),
        ]);
        let config = xgate::config::Config::from_toml_str(&toml, dir, &env)
            .map_err(|e| format!("the suite's config: {e}"))?;
        let bind = || async {
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("bind: {e}"))
        };
        let (proxy, admin) = (bind().await?, bind().await?);
        let addr: SocketAddr = proxy.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(xgate::server::run(
            xgate::server::Listeners { proxy, admin },
            config,
            async move {
                let _ignored = stopped.await;
            },
        ));
        Ok(Self {
            url: format!("http://{addr}"),
            stop,
            task,
        })
    }

    async fn stop(self) {
        let _ignored = self.stop.send(());
        let _ended = self.task.await;
    }
}
