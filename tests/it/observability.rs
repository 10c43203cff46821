//! CONTRACT section 8 (metrics on the admin listener), the access log, and the deployment
//! examples under `deploy/`: a live scrape after traffic, promtool on it, the dashboard's
//! queries against it, and the YAML files parsed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use crate::support::fake_x::{FakeX, Reply};
use crate::support::http::{get, request, send};
use crate::support::proxy::{KEY, Proxy, TestConfig, config};
use crate::support::{logs, scratch};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

async fn scrape(admin: SocketAddr) -> String {
    let a = send(
        admin,
        request("GET", "/metrics").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(
        a.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        a.header("content-type")
    );
    a.text()
}

/// Metric names declared by `# TYPE` lines, with their types.
fn types(text: &str) -> BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

/// Runs `promtool check metrics` on `text` where promtool is installed (CI installs it and
/// sets XGATE_REQUIRE_PROMTOOL=1, so there it cannot be skipped).
fn promtool_check_metrics(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("XGATE_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here but cannot run: {e}"
            );
            eprintln!("SKIPPED promtool check metrics: promtool is not installed ({e})");
            return;
        }
    };
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A proxy whose App may look up one user an hour, so a second lookup is a local 429.
async fn one_user_lookup_an_hour(fake: &FakeX) -> Proxy {
    Proxy::start(
        &TestConfig::new(&fake.base_url())
            .limit_override("GET /2/users/:id", &["1/1h"], &[])
            .top(
                "budgets",
                toml::Value::Array(vec![toml::Value::Table(crate::support::proxy::table([
                    ("name", "backend-daily".into()),
                    ("client", "backend".into()),
                    ("limit", "100/1d".into()),
                ]))]),
            )
            .toml(),
    )
    .await
}

/// A scrape once the cost of the requests made so far is settled (as their bodies end, just
/// after the client has read them): bounded.
async fn scrape_settled(admin: SocketAddr) -> String {
    for _ in 0..200 {
        let text = scrape(admin).await;
        if text.contains("xgate_cost_usd_total{")
            && text.contains("xgate_billable_resources_total{")
        {
            return text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no cost was metered")
}

#[tokio::test]
async fn a_live_scrape_after_traffic_has_every_metric_with_its_type_and_labels() {
    let fake = FakeX::start().await;
    fake.script(
        "/2/tweets/search/recent",
        Reply::json(429, r#"{"title":"Too Many Requests","type":"about:blank"}"#),
    );
    let proxy = one_user_lookup_an_hour(&fake).await;
    assert_eq!(get(proxy.addr, "/2/tweets/20", None).await.status, 200);
    assert_eq!(get(proxy.addr, "/2/users/1", None).await.status, 200);
    assert_eq!(get(proxy.addr, "/2/users/2", None).await.status, 429);
    assert_eq!(
        get(proxy.addr, "/2/tweets/search/recent?query=x", None)
            .await
            .status,
        429
    );
    let no_key = send(
        proxy.addr,
        request("GET", "/2/tweets/1").body(Full::default()).unwrap(),
    )
    .await;
    assert_eq!(no_key.status, 401);
    assert_eq!(get(proxy.addr, "/nowhere", None).await.status, 404);

    let text = scrape_settled(proxy.admin).await;
    let want_types = [
        ("xgate_requests_total", "counter"),
        ("xgate_request_duration_seconds", "histogram"),
        ("xgate_upstream_duration_seconds", "histogram"),
        ("xgate_rate_limited_total", "counter"),
        ("xgate_rate_limit_remaining", "gauge"),
        ("xgate_token_refreshes_total", "counter"),
        ("xgate_upstream_errors_total", "counter"),
        ("xgate_inflight_requests", "gauge"),
        ("xgate_build_info", "gauge"),
        ("xgate_cost_usd_total", "counter"),
        ("xgate_billable_resources_total", "counter"),
        ("xgate_budget_remaining_usd", "gauge"),
        ("xgate_budget_limit_usd", "gauge"),
    ];
    let got = types(&text);
    for (name, kind) in want_types {
        assert!(
            got.contains(&(name.to_owned(), kind.to_owned())),
            "no {kind} {name} in\n{text}"
        );
    }
    for line in [
        r#"xgate_requests_total{client="backend",endpoint="GET /2/tweets/:id",identity="main",status="200"} 1"#,
        r#"xgate_requests_total{client="backend",endpoint="GET /2/users/:id",identity="main",status="429"} 1"#,
        r#"xgate_requests_total{client="-",endpoint="-",identity="-",status="401"} 1"#,
        r#"xgate_requests_total{client="backend",endpoint="-",identity="main",status="404"} 1"#,
        r#"xgate_rate_limited_total{endpoint="GET /2/users/:id",identity="main",source="local"} 1"#,
        r#"xgate_rate_limited_total{endpoint="GET /2/tweets/search/recent",identity="main",source="upstream"} 1"#,
        r#"xgate_rate_limit_remaining{endpoint="GET /2/tweets/:id",identity="main"} 899"#,
        r#"xgate_upstream_duration_seconds_count{endpoint="GET /2/tweets/:id"} 1"#,
        r#"xgate_request_duration_seconds_count{endpoint="GET /2/users/:id"} 2"#,
        r#"xgate_token_refreshes_total{identity="bob",outcome="ok"} 0"#,
        r#"xgate_upstream_errors_total{kind="tls"} 0"#,
        "xgate_inflight_requests 0",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    assert!(text.contains(&format!(
        r#"xgate_build_info{{version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    )));
    assert!(!text.contains(KEY), "the scrape shows a client key");
    promtool_check_metrics(&text);
}

/// Requests for 10,000 distinct tweet ids: one endpoint label, never a raw path.
#[tokio::test]
async fn ten_thousand_tweet_ids_make_one_endpoint_label() {
    let fake = FakeX::start().await;
    // X's figure (and FakeX's reported 899 remaining) would stop this burst at 900.
    let proxy = Proxy::start(
        &TestConfig::new(&fake.base_url())
            .limit_override("GET /2/tweets/:id", &["20000/15m"], &[])
            .toml(),
    )
    .await;
    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..10_000u64 {
        let req = request(
            "GET",
            &format!("/2/tweets/{}", 1_460_323_737_035_677_698 + i),
        )
        .header("x-xgate-key", KEY)
        .body(Full::<Bytes>::default())
        .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let text = scrape(proxy.admin).await;
    let endpoints: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("xgate_"))
        .filter_map(|l| l.split("endpoint=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(endpoints, BTreeSet::from(["GET /2/tweets/:id"]));
    assert!(text.contains(
        r#"xgate_requests_total{client="backend",endpoint="GET /2/tweets/:id",identity="main",status="200"} 10000"#
    ));
}

/// Every metric the Grafana dashboard queries exists in xgate's output.
#[tokio::test]
async fn the_dashboard_queries_only_metrics_xgate_exports() {
    let fake = FakeX::start().await;
    let proxy = one_user_lookup_an_hour(&fake).await;
    // Traffic that touches every panel: an answer with X's rate-limit headers, a local 429.
    assert_eq!(get(proxy.addr, "/2/tweets/20", None).await.status, 200);
    assert_eq!(get(proxy.addr, "/2/users/1", None).await.status, 200);
    assert_eq!(get(proxy.addr, "/2/users/1", None).await.status, 429);
    let exported: BTreeSet<String> = types(&scrape_settled(proxy.admin).await)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo("deploy/grafana/xgate.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12);
    let mut queried = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("xgate_") {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    queried.insert(base.to_owned());
                }
            }
        }
    }
    for name in &queried {
        assert!(
            exported.contains(name),
            "the dashboard queries {name}, which xgate does not export"
        );
    }
    for needed in [
        "xgate_requests_total",
        "xgate_request_duration_seconds",
        "xgate_rate_limited_total",
        "xgate_rate_limit_remaining",
        "xgate_token_refreshes_total",
        "xgate_inflight_requests",
        "xgate_cost_usd_total",
        "xgate_budget_remaining_usd",
        "xgate_billable_resources_total",
    ] {
        assert!(queried.contains(needed), "no panel shows {needed}");
    }
}

fn yaml_documents(path: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

/// The examples parse, and the configs they carry are valid xgate configs.
#[test]
fn the_deployment_examples_parse_and_carry_valid_configs() {
    let compose = &yaml_documents("deploy/docker-compose.yml")[0];
    let services = compose["services"].as_mapping().unwrap();
    for s in ["xgate", "app", "prometheus"] {
        assert!(services.contains_key(s), "compose has no {s} service");
    }
    assert_eq!(
        compose["services"]["app"]["network_mode"].as_str(),
        Some("service:xgate")
    );
    let prom = &yaml_documents("deploy/prometheus.yml")[0];
    assert_eq!(
        prom["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(),
        Some("xgate:9090")
    );
    let docs = yaml_documents("deploy/kubernetes/sidecar.yaml");
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment"]);
    let pod = &docs[1]["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some("9090")
    );
    let xgate = pod["spec"]["containers"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str() == Some("xgate"))
        .unwrap();
    assert_eq!(
        xgate["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        xgate["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );

    // The replicas example: three xgates behind a balancer, Redis and PostgreSQL.
    let replicas = &yaml_documents("deploy/replicas/docker-compose.yml")[0];
    for s in ["xgate", "lb", "redis", "postgres", "prometheus"] {
        assert!(
            replicas["services"].as_mapping().unwrap().contains_key(s),
            "the replicas example has no {s} service"
        );
    }
    assert_eq!(
        replicas["services"]["xgate"]["deploy"]["replicas"].as_u64(),
        Some(3)
    );
    let shared = yaml_documents("deploy/kubernetes/sidecars-shared.yaml");
    let kinds: Vec<&str> = shared.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "Deployment"]);
    assert_eq!(shared[1]["spec"]["replicas"].as_u64(), Some(3));

    // Every proxy.toml example validates, with its secret files present; the shared ones
    // configure both engines.
    let sidecar_toml = docs[0]["data"]["proxy.toml"].as_str().unwrap().to_owned();
    let compose_toml = std::fs::read_to_string(repo("deploy/proxy.toml")).unwrap();
    let replicas_toml = std::fs::read_to_string(repo("deploy/replicas/proxy.toml")).unwrap();
    let shared_toml = shared[0]["data"]["proxy.toml"].as_str().unwrap().to_owned();
    for (name, toml, secrets_dir, engines) in [
        ("sidecar", sidecar_toml, "/run/secrets/xgate/", false),
        ("compose", compose_toml, "/run/secrets/", false),
        ("replicas", replicas_toml, "/run/secrets/", true),
        ("sidecars-shared", shared_toml, "/run/secrets/xgate/", true),
    ] {
        let dir = scratch(name);
        for s in ["x_api_key", "x_api_secret", "x_bearer_token", "x_client_id"] {
            std::fs::write(dir.join(s), "value\n").unwrap();
        }
        std::fs::write(dir.join("redis_url"), "redis://:pw@redis:6379\n").unwrap();
        std::fs::write(
            dir.join("store_url"),
            "postgres://xgate:pw@postgres/xgate\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("store_key"),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        )
        .unwrap();
        let toml = toml.replace(secrets_dir, &format!("{}/", dir.display()));
        let config =
            xgate::config::Config::from_toml_str(&toml, &dir, &std::collections::BTreeMap::new())
                .unwrap_or_else(|e| panic!("{name} proxy.toml: {e}"));
        assert_eq!(config.admin.listen.port(), 9090);
        assert_eq!(config.shared.is_some(), engines, "{name}");
        assert_eq!(
            matches!(
                config.store.location,
                xgate::config::StoreLocation::Postgres(_)
            ),
            engines,
            "{name}"
        );
    }
}

/// A GET as the `backend` client with `x-request-id: id`.
async fn get_with_id(addr: SocketAddr, path: &str, id: &str) -> crate::support::http::Answer {
    send(
        addr,
        request("GET", path)
            .header("x-xgate-key", KEY)
            .header("x-request-id", id)
            .body(Full::default())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn access_records_carry_the_request_id_endpoint_and_bytes() {
    let fake = FakeX::start().await;
    let proxy = Proxy::start(&config(&fake.base_url())).await;
    let id = "req-7f3a.b:c@d_e";
    let first = get_with_id(proxy.addr, "/2/tweets/20?secret_query=1", id).await;
    assert_eq!(first.header("x-request-id"), Some(id));
    // Malformed, too long, or shaped like a client key: replaced by a fresh id.
    let mut fresh = BTreeSet::new();
    let wrapped = format!("trace.{KEY}");
    let bare = "l2YidnhkdGXn5dz42W666gcxiVI8Y25kY10JnjcQAzs";
    for bad in ["has space", &"x".repeat(129), KEY, &wrapped, bare] {
        let a = get_with_id(proxy.addr, "/2/tweets/21", bad).await;
        let got = a.header("x-request-id").unwrap().to_owned();
        assert_ne!(got, bad);
        assert_eq!(got.len(), 32);
        fresh.insert(got);
    }
    assert_eq!(fresh.len(), 5);
    // Local answers carry one too.
    let a = get(proxy.addr, "/nowhere", None).await;
    assert_eq!(a.header("x-request-id").map(str::len), Some(32));

    let line = logs::wait_for_line(|l| l.contains(&format!("request_id={id}"))).await;
    for field in [
        "client=\"backend\"",
        "identity=\"main\"",
        "endpoint=\"GET /2/tweets/:id\"",
        "method=GET",
        "path=/2/tweets/20 ",
        "status=200",
        "upstream_status=200",
        "duration_ms=",
        "upstream_ms=",
        // One Post, the first of the day for the App (CONTRACT section 11 rule 6).
        "cost_usd=0.005000",
    ] {
        assert!(line.contains(field), "no {field} in {line}");
    }
    assert!(
        line.contains(&format!("bytes={}", first.body.len())),
        "{line}"
    );
    assert!(
        !line.contains("secret_query"),
        "the query was logged: {line}"
    );
    assert!(!logs::text().contains(KEY), "a client key reached the log");
}

/// `--log-format json`: one JSON object per line from the real binary, access records
/// included.
#[tokio::test]
async fn json_logs_from_the_binary_are_one_object_per_line() {
    let fake = FakeX::start().await;
    let dir = scratch("jsonlog");
    std::fs::write(dir.join("proxy.toml"), config(&fake.base_url())).unwrap();
    let served = crate::support::binary::serve(&dir, &["--log-format", "json"], &[]).await;
    let (mut child, addr, mut rx) = (served.child, served.addr, served.stderr);
    let mut lines: Vec<serde_json::Value> = served
        .startup
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let a = get_with_id(addr, "/2/tweets/20", "json-1").await;
    assert_eq!(a.status, 200);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // Everything queued was written before exit.
    for line in crate::support::binary::remaining_lines(&mut rx).await {
        lines.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    let record = lines
        .iter()
        .find(|v| v["request_id"] == "json-1")
        .unwrap_or_else(|| panic!("no access record in {lines:?}"));
    assert_eq!(record["endpoint"], "GET /2/tweets/:id");
    assert_eq!(record["status"], 200);
    assert_eq!(record["client"], "backend");
    assert!(record["duration_ms"].is_number());
    assert!(lines.iter().any(|v| v["message"] == "stopped"));
}
