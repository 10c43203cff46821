//! Fan-out of one shared stream (issue "streams", item 9): the `xgate` binary (release) in
//! front of FakeX's live filtered stream, N consumers of ten clients reading it over real
//! sockets, X sending a Post every 1/RATE s that matched a rule of every client. Prints, per
//! N: messages X sent, messages delivered per second, xgate's CPU (user + system, from
//! `/proc/PID/stat`) as a share of one core, and CPU per delivered message.
//!
//! Usage: `cargo build --release && cargo run --release --example stream_fanout --
//! [--consumers 1,10,100] [--rate 250] [--seconds 10] [--xgate target/release/xgate]`
//! (`scripts/bench-streams.sh` runs it).

#![expect(clippy::print_stdout, reason = "the figures are the program's output")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

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

use fake_x::FakeX;

const CLIENTS: usize = 10;
const FILTERED: &str = "/2/tweets/search/stream";

fn key(i: usize) -> String {
    format!("xgk_fanout-client-{i:02}-0123456789abcdef")
}

struct Options {
    consumers: Vec<usize>,
    rate: u64,
    seconds: u64,
    xgate: PathBuf,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        consumers: vec![1, 10, 100],
        rate: 250,
        seconds: 10,
        xgate: PathBuf::from("target/release/xgate"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--consumers" => {
                o.consumers = value
                    .split(',')
                    .map(|n| n.parse().map_err(|e| format!("--consumers {n}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--rate" => o.rate = value.parse().map_err(|e| format!("--rate: {e}"))?,
            "--seconds" => o.seconds = value.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--xgate" => o.xgate = PathBuf::from(value),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    // xgate runs in a directory of its own.
    o.xgate = std::fs::canonicalize(&o.xgate).map_err(|e| format!("{}: {e}", o.xgate.display()))?;
    Ok(o)
}

/// The config: App `main`, ten clients (`c00` … `c09`), access log on (as users run it).
fn config(upstream: &str) -> String {
    let sha = |k: &str| xgate::client_key::to_hex(&xgate::client_key::sha256(k));
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nbase_url = \"{upstream}\"\n[store]\npath = \"xgate.db\"\n[apps.main]\nbearer_token = {{ env = \"X_BEARER_TOKEN\" }}\n"
    );
    for i in 0..CLIENTS {
        toml.push_str(&format!(
            "[[clients]]\nname = \"c{i:02}\"\nkey_sha256 = \"{}\"\nidentities = [\"main\"]\ndefault_identity = \"main\"\n",
            sha(&key(i))
        ));
    }
    toml
}

/// `xgate serve` in `dir`: the child and the address it listens on.
fn serve(xgate: &Path, dir: &Path) -> Result<(Child, SocketAddr), String> {
    let mut child = Command::new(xgate)
        .args(["serve", "--config", "proxy.toml"])
        .current_dir(dir)
        .env("X_BEARER_TOKEN", fake_x::BEARER)
        .env("XGATE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", xgate.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut sent = false;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if !sent {
                if let Some(rest) = line.split("proxy listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().map(str::to_owned);
                    let _ignored = tx.send(addr);
                    sent = true;
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .map_err(|_timeout| "xgate did not start within 30 s".to_owned())?
        .ok_or("no address in the startup line")?;
    Ok((child, addr.parse().map_err(|e| format!("{addr}: {e}"))?))
}

/// xgate's CPU time so far (user + system), from `/proc/PID/stat`.
fn cpu(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or("bad stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .ok_or("short stat")?
            .parse::<u64>()
            .map_err(|e| e.to_string())
    };
    // utime and stime are fields 14 and 15 of stat; `fields` starts at field 3.
    let total = ticks(11)? + ticks(12)?;
    let hz: u64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100);
    Ok(Duration::from_micros(total * 1_000_000 / hz))
}

/// Sends `req` to `addr` on a connection of its own; the answer with its body unread.
async fn send(
    addr: SocketAddr,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(|e| e.to_string())
}

async fn post_rule(addr: SocketAddr, client: usize) -> Result<(), String> {
    let body = json!({"add": [{"value": format!("rule of c{client:02}"), "tag": format!("c{client:02}")}]});
    let req = http::Request::post(format!("http://{addr}/2/tweets/search/stream/rules"))
        .header("host", "xgate")
        .header("x-xgate-key", key(client))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let resp = send(addr, req).await?;
    if !resp.status().is_success() {
        return Err(format!("adding a rule: {}", resp.status()));
    }
    Ok(())
}

/// A consumer of `client`: counts the messages (non-empty lines) it reads into `count`.
async fn consume(addr: SocketAddr, client: usize, count: Arc<AtomicU64>) -> Result<(), String> {
    let req = http::Request::get(format!("http://{addr}{FILTERED}"))
        .header("host", "xgate")
        .header("x-xgate-key", key(client))
        .body(Full::<Bytes>::default())
        .map_err(|e| e.to_string())?;
    let resp = send(addr, req).await?;
    if resp.status() != 200 {
        return Err(format!("consumer: {}", resp.status()));
    }
    let mut body = resp.into_body();
    tokio::spawn(async move {
        let mut partial = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for line in data.split_inclusive(|b| *b == b'\n') {
                let complete = line.last() == Some(&b'\n');
                let len = partial + line.len();
                partial = if complete { 0 } else { len };
                if complete && len > 2 {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    Ok(())
}

/// One run with `n` consumers: (sent, delivered, elapsed, xgate CPU).
async fn run(o: &Options, n: usize) -> Result<(u64, u64, Duration, Duration), String> {
    let fake = FakeX::start().await;
    fake.live().serve(FILTERED);
    let dir = std::env::temp_dir().join(format!("xgate-fanout-{}-{n}", std::process::id()));
    let _ignored = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("proxy.toml"), config(&fake.base_url())).map_err(|e| e.to_string())?;
    let (mut child, addr) = serve(&o.xgate, &dir)?;
    let clients = n.min(CLIENTS);
    for c in 0..clients {
        post_rule(addr, c).await?;
    }
    let ids: Vec<String> = (0..clients)
        .map(|c| fake.live().id_of(&format!("rule of c{c:02}")))
        .collect();
    let count = Arc::new(AtomicU64::new(0));
    for i in 0..n {
        consume(addr, i % CLIENTS, Arc::clone(&count)).await?;
    }
    if !fake
        .wait_until(Duration::from_secs(10), |f| f.live().counts().2 == 1)
        .await
    {
        return Err("xgate did not connect to the stream".to_owned());
    }
    // A Post of ~2 KB with its includes, as X sends it, matching a rule of every client.
    let filler = "lorem ipsum dolor sit amet ".repeat(40);
    let rules: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| json!({"id": id, "tag": "xgate:0123456789ab"}))
        .collect();
    let line = |i: u64| {
        json!({
            "data": {"id": format!("{}", 1_800_000_000_000_000_000u64 + i), "text": filler, "author_id": "2244994945",
                     "created_at": "2026-12-02T10:00:00.000Z", "edit_history_tweet_ids": [i.to_string()]},
            "includes": {"users": [{"id": "2244994945", "name": "Developers", "username": "XDevelopers"}]},
            "matching_rules": rules,
        })
        .to_string()
    };
    // Warm-up: a second of messages, not counted.
    let tick = Duration::from_nanos(1_000_000_000 / o.rate.max(1));
    let mut i = 0u64;
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs(1) {
        fake.live().send(&line(i));
        i += 1;
        tokio::time::sleep(tick).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cpu0, delivered0, start) = (
        cpu(child.id())?,
        count.load(Ordering::Relaxed),
        Instant::now(),
    );
    let mut sent = 0u64;
    let mut next = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(o.seconds) {
        fake.live().send(&line(i));
        i += 1;
        sent += 1;
        next += tick;
        tokio::time::sleep_until(next).await;
    }
    // What was sent is delivered (bounded wait), then the figures are read.
    let want = delivered0 + sent * n as u64;
    for _ in 0..500 {
        if count.load(Ordering::Relaxed) >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let cpu1 = cpu(child.id())?;
    let delivered = count.load(Ordering::Relaxed) - delivered0;
    let _killed = child.kill();
    let _reaped = child.wait();
    let _ignored = std::fs::remove_dir_all(&dir);
    Ok((sent, delivered, elapsed, cpu1.saturating_sub(cpu0)))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stream_fanout: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "| consumers | sent | delivered/s | xgate CPU (% of one core) | CPU per delivered message |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for &n in &o.consumers {
        match run(&o, n).await {
            Ok((sent, delivered, elapsed, cpu)) => {
                let per_s = delivered as f64 / elapsed.as_secs_f64();
                let share = cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0;
                let per_msg = cpu.as_secs_f64() * 1e6 / delivered.max(1) as f64;
                println!("| {n} | {sent} | {per_s:.0} | {share:.1} % | {per_msg:.2} µs |");
                if delivered < sent * n as u64 {
                    println!("(delivered {delivered} of {} expected)", sent * n as u64);
                }
            }
            Err(e) => {
                eprintln!("stream_fanout: {n} consumers: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
