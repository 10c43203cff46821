//! Captures everything the in-process proxies log, for tests that read the logs.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();

#[derive(Clone, Copy)]
struct Writer(&'static Mutex<Vec<u8>>);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the capturing subscriber (once per test binary), at debug level for xgate.
pub fn init() {
    LOGS.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let writer = Writer(buf);
        let _ignored = tracing_subscriber::fmt()
            .with_writer(move || writer)
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
        buf
    });
}

/// Everything logged so far by every proxy in this process.
pub fn text() -> String {
    LOGS.get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap()).into_owned())
        .unwrap_or_default()
}

/// The first captured line that satisfies `pred`, waiting at most 10 s for it: a record
/// written by a proxy's worker thread may land just after the client has its answer.
pub async fn wait_for_line(pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = text();
        if let Some(line) = text.lines().find(|l| pred(l)) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no such line within 10 s in:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
