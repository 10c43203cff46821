//! An open-loop HTTP/1.1 load generator that speaks enough of wrk's command line for
//! `shared/bench/compare.sh` to run it in wrk's place (`WRK=target/release/examples/openloop`):
//! each of `-c N` keep-alive connections sends requests on a fixed schedule, `OPENLOOP_RATE`
//! requests per second per connection (default 500), whatever the server does, and prints
//! wrk-report.lua's `RESULT` line.
//!
//! Latency is measured from the moment a request was due, not from when it was sent, when it
//! went out late because the previous answer on its connection came late (what wrk's closed
//! loop hides: coordinated omission); otherwise from when it was sent, so the client's own
//! wake-up latency is not charged to the server.
//!
//! Usage: `openloop [-t N (ignored)] -c CONNS -d 10s [--timeout 5s] [-H 'Name: value']...
//! [-s script (ignored)] URL` (`scripts/bench-latency.sh` runs it through compare.sh).

#![expect(
    clippy::print_stdout,
    reason = "the RESULT line is the program's output"
)]
#![expect(
    clippy::disallowed_methods,
    reason = "std's clock: the schedule's ticker threads sleep on it, outside tokio"
)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

struct Options {
    conns: usize,
    duration: Duration,
    timeout: Duration,
    rate: f64,
    headers: Vec<(HeaderName, HeaderValue)>,
    uri: Uri,
}

fn seconds(v: &str) -> Result<Duration, String> {
    let n = v.strip_suffix('s').unwrap_or(v);
    n.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("not a duration in seconds: {v:?}"))
}

fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut conns, mut duration, mut timeout) =
        (1, Duration::from_secs(10), Duration::from_secs(5));
    let mut headers = Vec::new();
    let mut uri = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "-t" | "-s" => drop(value()?),
            "-c" => conns = value()?.parse().map_err(|e| format!("-c: {e}"))?,
            "-d" => duration = seconds(&value()?)?,
            "--timeout" => timeout = seconds(&value()?)?,
            "-H" => {
                let h = value()?;
                let (name, v) = h
                    .split_once(':')
                    .ok_or_else(|| format!("-H {h:?}: no colon"))?;
                let name =
                    HeaderName::try_from(name.trim()).map_err(|e| format!("-H {h:?}: {e}"))?;
                let v = HeaderValue::try_from(v.trim()).map_err(|e| format!("-H {h:?}: {e}"))?;
                headers.push((name, v));
            }
            a if a.starts_with("-t") || a.starts_with("-c") || a.starts_with("-d") => {
                // wrk's glued forms: -t1 -c32 -d10s
                let (flag, v) = a.split_at(2);
                match flag {
                    "-c" => conns = v.parse().map_err(|e| format!("-c: {e}"))?,
                    "-d" => duration = seconds(v)?,
                    _ => {}
                }
            }
            a if a.starts_with('-') => return Err(format!("unknown option {a}")),
            a => uri = Some(a.parse::<Uri>().map_err(|e| format!("{a}: {e}"))?),
        }
    }
    let rate = match std::env::var("OPENLOOP_RATE") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r > 0.0)
            .ok_or_else(|| format!("OPENLOOP_RATE={v:?} is not a positive rate"))?,
        Err(_) => 500.0,
    };
    let uri = uri.ok_or("no URL")?;
    if conns == 0 {
        return Err("-c must be at least 1".into());
    }
    Ok(Options {
        conns,
        duration,
        timeout,
        rate,
        headers,
        uri,
    })
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    non2xx: u64,
    sockerr: u64,
}

/// Sends each due time of one connection's schedule, request `i` at `start + (i + phase) /
/// rate`, when it comes. A thread of its own that sleeps with `std::thread::sleep` (tens of
/// microseconds late at most): tokio's timer wheel has a 1 ms grain, and on a busy VM woke
/// 1–2 ms late, later than the interval between two requests.
fn ticker(
    o: &Options,
    start: Instant,
    phase: f64,
) -> tokio::sync::mpsc::UnboundedReceiver<Instant> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / o.rate);
    let end = start + o.duration;
    let first = start + interval.mul_f64(phase);
    std::thread::spawn(move || {
        let mut due = first;
        while due < end {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if tx.send(due).is_err() {
                return;
            }
            due += interval;
        }
    });
    rx
}

/// One connection: a request for each due time [`ticker`] sends.
async fn connection(o: &Options, start: Instant, phase: f64) -> Tally {
    let mut tally = Tally::default();
    let authority = o
        .uri
        .authority()
        .map(ToString::to_string)
        .unwrap_or_default();
    let path = o
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut dues = ticker(o, start, phase);
    let mut sender = None;
    // The previous answer's arrival: a request due before it was held back by the server.
    let mut previous_done = start;
    while let Some(due) = dues.recv().await {
        let sent = Instant::now();
        let from = if previous_done > due { due } else { sent };
        if sender.is_none() {
            sender = match TcpStream::connect(&authority).await {
                Ok(stream) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        eprintln!("openloop: TCP_NODELAY: {e}");
                    }
                    match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                        Ok((s, conn)) => {
                            tokio::spawn(conn);
                            Some(s)
                        }
                        Err(_) => None,
                    }
                }
                Err(_) => None,
            };
        }
        let Some(s) = sender.as_mut() else {
            tally.sockerr += 1;
            previous_done = Instant::now();
            continue;
        };
        let mut request =
            Request::get(path.as_str()).header(http::header::HOST, authority.as_str());
        for (name, value) in &o.headers {
            request = request.header(name, value);
        }
        let Ok(request) = request.body(Empty::<Bytes>::new()) else {
            tally.sockerr += 1;
            break;
        };
        let answer = tokio::time::timeout(o.timeout, async {
            let response = s.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        })
        .await;
        previous_done = Instant::now();
        match answer {
            Ok(Ok(status)) => {
                if !status.is_success() {
                    tally.non2xx += 1;
                }
                let us = previous_done.duration_since(from).as_micros();
                tally
                    .latencies_us
                    .push(u64::try_from(us).unwrap_or(u64::MAX));
            }
            _ => {
                tally.sockerr += 1;
                sender = None;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or(0)
}

async fn run(o: Options) -> String {
    let o = std::sync::Arc::new(o);
    let start = Instant::now() + Duration::from_millis(20);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..o.conns {
        let o = std::sync::Arc::clone(&o);
        let phase = k as f64 / o.conns as f64;
        tasks.spawn(async move { connection(&o, start, phase).await });
    }
    let mut all = Tally::default();
    while let Some(t) = tasks.join_next().await {
        match t {
            Ok(t) => {
                all.latencies_us.extend(t.latencies_us);
                all.non2xx += t.non2xx;
                all.sockerr += t.sockerr;
            }
            Err(_) => all.sockerr += 1,
        }
    }
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    let mut l = all.latencies_us;
    l.sort_unstable();
    let mean = if l.is_empty() {
        0.0
    } else {
        l.iter().sum::<u64>() as f64 / l.len() as f64
    };
    format!(
        "RESULT rps={:.1} p50_us={} p90_us={} p99_us={} mean_us={mean:.0} reqs={} non2xx={} sockerr={}",
        l.len() as f64 / elapsed,
        percentile(&l, 50.0),
        percentile(&l, 90.0),
        percentile(&l, 99.0),
        l.len(),
        all.non2xx,
        all.sockerr,
    )
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("openloop: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("openloop: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", runtime.block_on(run(o)));
    ExitCode::SUCCESS
}
