//! `xgate serve`: bind the listeners and run the proxy until SIGTERM or SIGINT.

use super::CliError;
use crate::config::Config;
use crate::server::{self, Listeners, StartError};

pub(super) fn run(config: Config) -> Result<(), CliError> {
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    // This thread accepts connections, serves the admin listener and waits for signals;
    // connections are served on `server.workers` threads of their own (`server::workers`).
    let runtime = super::runtime()?;
    runtime.block_on(async {
        let proxy = bind(config.server.listen, "server.listen").await?;
        let admin = bind(config.admin.listen, "admin.listen").await?;
        Ok(server::run(Listeners { proxy, admin }, config, shutdown_signal()).await?)
    })
}

async fn bind(
    addr: std::net::SocketAddr,
    key: &'static str,
) -> Result<tokio::net::TcpListener, CliError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Start(StartError::Bind { addr, key, source }))
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops xgate");
                let _ignored = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ignored = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}
