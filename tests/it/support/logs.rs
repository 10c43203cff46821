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
