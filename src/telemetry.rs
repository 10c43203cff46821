//! Logging: a tracing subscriber writing to stderr, as text or JSON.
//!
//! Owns log setup for the binary (CONTRACT section 1: `--log-format text|json`, level from
//! `XGATE_LOG` or `RUST_LOG`, default `info`). Nothing here formats request data; what is
//! logged is decided where events are emitted, and secrets are never among the fields.
//!
//! Lines are formatted on the thread that logs them and appended to a shared in-memory batch
//! ([`BatchWriter`]); one writer thread writes the batch to stderr every
//! [`FLUSH_INTERVAL`]. A request thread never makes a system call to log, never wakes another
//! thread and never waits for stderr, so a slow log pipe cannot stall the proxy; a busy proxy
//! makes one `write(2)` per batch instead of one per line. When the batch is full (stderr
//! has not kept up for a while), lines are dropped and counted, and the count is logged once
//! the writer catches up. [`LogGuard`] writes what is left when the command ends.

pub mod access;

use std::io::Write;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The level filter: `XGATE_LOG`, else `RUST_LOG`, else `info`. Accepts `debug` or per-target
/// directives such as `xgate=debug,hyper=info`.
pub fn filter_from(xgate_log: Option<&str>, rust_log: Option<&str>) -> Result<Targets, String> {
    let spec = xgate_log
        .filter(|s| !s.trim().is_empty())
        .or(rust_log.filter(|s| !s.trim().is_empty()))
        .unwrap_or("info");
    Targets::from_str(spec).map_err(|e| format!("invalid log filter {spec:?}: {e}"))
}

/// How often the writer thread writes the batch out.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Bytes the batch may hold before new lines are dropped.
const MAX_BATCH_BYTES: usize = 4 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves only bytes behind; keep logging.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Batch {
    pending: Mutex<Vec<u8>>,
    dropped: AtomicU64,
    /// The output, and a spare buffer to swap with `pending` so its capacity is reused.
    out: Mutex<(Box<dyn Write + Send>, Vec<u8>)>,
}

impl Batch {
    /// Writes out everything pending (and the count of dropped lines, if any).
    fn write_out(&self) {
        let mut out = lock(&self.out);
        let (sink, spare) = &mut *out;
        std::mem::swap(&mut *lock(&self.pending), spare);
        let lost = self.dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let _stderr_closed = writeln!(
                spare,
                "xgate: {lost} log lines were dropped because stderr could not keep up"
            );
        }
        if !spare.is_empty() {
            let _stderr_closed = sink.write_all(spare).and_then(|()| sink.flush());
            spare.clear();
        }
    }
}

/// A `MakeWriter` whose writers append each formatted line to the shared batch.
#[derive(Clone)]
pub struct BatchWriter(Arc<Batch>);

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter").finish_non_exhaustive()
    }
}

impl Write for BatchWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // tracing-subscriber's fmt layer writes each event with one `write_all`, so one call
        // is one whole line and lines of different threads never interleave.
        let mut pending = lock(&self.0.pending);
        if pending.len() + buf.len() <= MAX_BATCH_BYTES {
            pending.extend_from_slice(buf);
        } else {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// Writes out the pending log lines when dropped (at the end of the command).
#[derive(Debug)]
pub struct LogGuard(BatchWriter);

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.0.0.write_out();
    }
}

/// Starts the writer thread that owns `out`; lines written to the returned writer reach `out`
/// within [`FLUSH_INTERVAL`], and all of them by the time the guard is dropped.
pub fn batch_writer(out: Box<dyn Write + Send>) -> std::io::Result<(BatchWriter, LogGuard)> {
    let batch = Arc::new(Batch {
        pending: Mutex::new(Vec::with_capacity(64 * 1024)),
        dropped: AtomicU64::new(0),
        out: Mutex::new((out, Vec::with_capacity(64 * 1024))),
    });
    let weak = Arc::downgrade(&batch);
    std::thread::Builder::new()
        .name("xgate-log".to_owned())
        .spawn(move || {
            // Ends when the subscriber and the guard are gone.
            while let Some(batch) = weak.upgrade() {
                batch.write_out();
                drop(batch);
                std::thread::sleep(FLUSH_INTERVAL);
            }
        })?;
    let writer = BatchWriter(batch);
    Ok((writer.clone(), LogGuard(writer)))
}

/// Installs the global subscriber, writing through the log thread. Call once, at startup, and
/// keep the guard until the command ends. `None` if the thread could not be started: logs then
/// go straight to stderr.
pub fn init(format: LogFormat, filter: Targets) -> Option<LogGuard> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match batch_writer(Box::new(std::io::stderr())) {
        Ok((writer, guard)) => {
            access::install(writer.clone(), format);
            install(format, filter, writer, ansi);
            Some(guard)
        }
        Err(_no_thread) => {
            install(format, filter, std::io::stderr, ansi);
            None
        }
    }
}

fn install<W>(format: LogFormat, filter: Targets, writer: W, ansi: bool)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let registry = tracing_subscriber::registry().with(filter);
    // `try_init` fails only if a subscriber is already set (tests); that one keeps working.
    let _already_set = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi)
                    .with_target(false),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(writer)
                    .flatten_event(true),
            )
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A `Write` that appends to a shared buffer.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn batch_writer_delivers_every_line_in_order_by_the_guard() {
        let out = Shared::default();
        let (mut w, guard) = batch_writer(Box::new(out.clone())).unwrap();
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let want: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, want);
    }

    #[test]
    fn a_full_batch_drops_lines_and_reports_how_many() {
        /// Blocks every write until the test lets it go.
        struct Gate(Arc<Mutex<()>>, Shared);
        impl Write for Gate {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _open = self.0.lock().unwrap();
                self.1.write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new(Mutex::new(()));
        let closed = gate.lock().unwrap();
        let out = Shared::default();
        let (mut w, guard) = batch_writer(Box::new(Gate(Arc::clone(&gate), out.clone()))).unwrap();
        // With stderr stuck, the batch holds MAX_BATCH_BYTES and at most one batch more is
        // stuck in the writer thread; twice as many lines again must overflow.
        let line = format!("{}\n", "x".repeat(99));
        let sent = 4 * MAX_BATCH_BYTES / line.len();
        for _ in 0..sent {
            w.write_all(line.as_bytes()).unwrap();
        }
        drop(closed);
        drop(guard);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let kept = text.lines().filter(|l| l.starts_with("xxx")).count();
        assert!(kept < sent, "kept {kept} of {sent}");
        assert!(
            text.contains(&format!("{} log lines were dropped", sent - kept)),
            "{}",
            &text[text.len().saturating_sub(200)..]
        );
    }

    #[test]
    fn filter_precedence_and_errors() {
        assert_eq!(filter_from(None, None).unwrap().to_string(), "info");
        assert_eq!(
            filter_from(Some("debug"), Some("warn"))
                .unwrap()
                .to_string(),
            "debug"
        );
        assert_eq!(filter_from(None, Some("warn")).unwrap().to_string(), "warn");
        assert_eq!(
            filter_from(Some(" "), Some("warn")).unwrap().to_string(),
            "warn"
        );
        assert!(filter_from(Some("xgate=loud"), None).is_err());
    }
}
