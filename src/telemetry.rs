//! Logging: a tracing subscriber writing to stderr, as text or JSON.
//!
//! Owns log setup for the binary (CONTRACT section 1: `--log-format text|json`, level from
//! `XGATE_LOG` or `RUST_LOG`, default `info`). Nothing here formats request data; what is
//! logged is decided where events are emitted, and secrets are never among the fields.

use std::str::FromStr;

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

/// Installs the global subscriber. Call once, at startup.
pub fn init(format: LogFormat, filter: Targets) {
    let registry = tracing_subscriber::registry().with(filter);
    let writer = std::io::stderr;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
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
