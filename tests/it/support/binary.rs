//! Runs the real `xgate` binary: spawning it with the test environment, reading its output
//! line by line, and waiting for `serve` to be listening.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;

/// `xgate ARGS` in `dir` with the test environment (and `extra_env`); stdout and stderr piped.
pub fn spawn(dir: &Path, args: &[&str], stdin: Stdio, extra_env: &[(&str, &str)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_xgate"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(super::proxy::env())
        .envs(extra_env.iter().copied())
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A child that is killed (and reaped) when dropped, so a failing test leaves no `xgate`
/// running.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _reaped = self.0.wait();
    }
}

/// The lines of a child's pipe, as they come (a thread reads it).
pub fn lines(pipe: impl std::io::Read + Send + 'static) -> UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ignored = tx.send(line);
        }
    });
    rx
}

/// The next line, within 20 s.
pub async fn next_line(rx: &mut UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no output within 20 s")
        .expect("the process closed its output")
}

/// Every line still to come, up to the end of the output (the process exited and the reading
/// thread reached end of file), within 20 s.
pub async fn remaining_lines(rx: &mut UnboundedReceiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = rx.recv().await {
            lines.push(line);
        }
    })
    .await
    .expect("the output did not end within 20 s");
    lines
}

/// A running `xgate serve`.
pub struct Served {
    pub child: Child,
    /// Where the proxy listens (from its startup line).
    pub addr: SocketAddr,
    /// Its stderr from here on.
    pub stderr: UnboundedReceiver<String>,
    /// The stderr lines read while waiting for the startup line.
    pub startup: Vec<String>,
}

/// Starts `xgate serve EXTRA_ARGS` in `dir` (proxy.toml there) and waits, on its startup log
/// line rather than a sleep, until the proxy listens.
pub async fn serve(dir: &Path, extra_args: &[&str], extra_env: &[(&str, &str)]) -> Served {
    let mut args = vec!["serve", "--config", "proxy.toml"];
    args.extend_from_slice(extra_args);
    let mut child = spawn(dir, &args, Stdio::null(), extra_env);
    let mut stderr = lines(child.stderr.take().unwrap());
    let mut startup = Vec::new();
    let addr = loop {
        let line = next_line(&mut stderr).await;
        startup.push(line.clone());
        if let Some(rest) = line.split("proxy listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    Served {
        child,
        addr,
        stderr,
        startup,
    }
}
