//! Listeners and connections: [`run`] is the entry point of a running proxy.
//!
//! Owns accepting connections (at most `max_connections` at once; further ones wait in the
//! accept queue), the TLS handshake (`tls_handshake_timeout`), hyper-util's auto connection
//! (HTTP/1.1 and HTTP/2 with the `[server]` limits: `max_header_bytes` on both, answered with
//! 431; `header_read_timeout`; `http2_max_concurrent_streams`), closing connections idle for
//! `keepalive_timeout`, the admin listener, and graceful shutdown (CONTRACT section 9):
//! `/readyz` turns 503, the listener stops accepting, connections finish their requests
//! within `shutdown_grace`, then whatever is left (streams) is closed. Connections are
//! served on the worker threads of [`workers`]; accepting, the admin listener and shutdown run
//! on the caller's runtime.

mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Readiness};
use crate::config::{Config, TlsFiles};
use crate::service::{ConnActivity, ConnState};
use crate::stack;
use crate::state::{SetupError, State};
use crate::upstream::Upstream;
use workers::Workers;

/// The two listening sockets, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    /// The proxy listener (`server.listen`).
    pub proxy: TcpListener,
    /// The admin listener (`admin.listen`).
    pub admin: TcpListener,
}

/// The proxy could not start: what failed, with its cause chain.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The shared state could not be built (store, identities, catalogue, upstream client).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `server.listen` or `admin.listen`.
        key: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An inbound TLS file could not be read or used.
    #[error("{key} {path}: {source}", path = .path.display())]
    TlsFile {
        /// `server.tls.cert` or `server.tls.key`.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate chain and key do not make a TLS configuration.
    #[error("server.tls: {0}")]
    Tls(#[source] rustls::Error),
    /// A listener's address could not be read.
    #[error("{key}: {source}")]
    Listener {
        /// `server.listen` or `admin.listen`.
        key: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread or its runtime could not start.
    #[error("worker thread {n}: {source}")]
    Worker {
        /// Which worker.
        n: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// Whether the configuration is at fault (exit status 2), not the system.
    pub fn is_config(&self) -> bool {
        match self {
            Self::Setup(e) => e.is_config(),
            Self::Bind { .. }
            | Self::TlsFile { .. }
            | Self::Tls(_)
            | Self::Listener { .. }
            | Self::Worker { .. } => false,
        }
    }
}

/// Loads the inbound TLS certificate chain and key.
fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, StartError> {
    let file = |key: &'static str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        StartError::TlsFile {
            key,
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
        }
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| file("server.tls.cert", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(file(
            "server.tls.cert",
            &files.cert,
            &"no PEM certificate in it",
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file("server.tls.key", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StartError::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(StartError::Tls)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// HTTP/2 flow-control windows xgate grants a client: what it may send before xgate reads it.
/// xgate reads a request body only as fast as upstream takes it, so the connection window
/// bounds what one client connection can make xgate hold (hyper's default is 1 MiB for
/// both: 10 GiB over `max_connections` idle uploads). 256 KiB per stream still moves an upload
/// at 2.5 MiB/s over a 100 ms round trip, far more than X's endpoints take; HTTP/1.1's bound is
/// the read buffer (`max_header_bytes`). README, "Memory".
const H2_STREAM_WINDOW: u32 = 256 * 1024;
const H2_CONNECTION_WINDOW: u32 = 512 * 1024;

/// hyper-util's connection builder with the `[server]` settings.
fn connection_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let s = &config.server;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(s.max_header_bytes)
        // The connection's own watchdog bounds request heads (from their first byte) and the
        // wait between requests; hyper's would count the wait as part of the next head.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Runs the proxy on `listeners` until `shutdown` completes, then shuts down gracefully.
pub async fn run(
    listeners: Listeners,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let state = Arc::new(State::from_config(&config).await?);
    let tls = config.server.tls.as_ref().map(tls_acceptor).transpose()?;
    let builder = Arc::new(connection_builder(&config));
    let readiness = Arc::new(Readiness::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Workers::start(config.server.workers, state.upstream()).await?;

    let proxy_addr = listeners
        .proxy
        .local_addr()
        .map_err(|source| StartError::Listener {
            key: "server.listen",
            source,
        })?;
    let admin_addr = listeners
        .admin
        .local_addr()
        .map_err(|source| StartError::Listener {
            key: "admin.listen",
            source,
        })?;
    let admin = tokio::spawn(serve_admin(
        listeners.admin,
        admin::Admin {
            readiness: Arc::clone(&readiness),
            metrics: Arc::clone(state.metrics()),
        },
    ));
    tracing::info!(
        "proxy listening on {proxy_addr} ({})",
        if tls.is_some() {
            "https: TLS, HTTP/1.1 and HTTP/2"
        } else {
            "http: HTTP/1.1 and h2c"
        }
    );
    tracing::info!("admin listening on {admin_addr} (/healthz /readyz /metrics)");
    tracing::info!(
        upstream = %config.upstream.base_url,
        apps = config.apps.len(),
        users = config.users.len(),
        clients = config.clients.len(),
        workers = workers.len(),
        "serving"
    );
    readiness.set(true);

    let limit = Arc::new(Semaphore::new(config.server.max_connections));
    let mut conns = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = accept(&listeners.proxy, &limit) => {
                let Some((stream, peer, permit)) = accepted else { continue };
                let Some(worker) = workers.next() else { continue };
                // Registered again with the worker's event loop, below.
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "cannot hand the connection to a worker");
                        continue;
                    }
                };
                let conn = Connection {
                    state: Arc::clone(&state),
                    upstream: Arc::clone(&worker.upstream),
                    builder: Arc::clone(&builder),
                    tls: tls.clone(),
                    handshake_timeout: config.server.tls_handshake_timeout,
                    keepalive: config.server.keepalive_timeout,
                    header_read: config.server.header_read_timeout,
                    stalled: config.server.idle_timeout,
                    stop: stop_rx.clone(),
                };
                conns.spawn_on(
                    async move {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => conn.serve(stream, peer).await,
                            Err(e) => tracing::debug!(%peer, error = %e, "worker cannot take the connection"),
                        }
                        drop(permit);
                    },
                    &worker.handle,
                );
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }

    tracing::info!(
        in_flight_connections = conns.len(),
        grace = ?config.server.shutdown_grace,
        "shutting down: no longer accepting"
    );
    let shutting_down = tokio::time::Instant::now();
    readiness.set(false);
    drop(listeners.proxy);
    // Stream consumers end now (they reconnect, to another replica if there is one), and
    // the App's one connection to X is let go.
    state.streams().shutdown();
    let _receivers_gone = stop_tx.send(true);
    let drained = tokio::time::timeout(config.server.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            closed = conns.len(),
            "shutdown grace period over: closing the remaining connections"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    // A refresh X may already have answered must reach the store before the workers (whose
    // event loops run it) stop: within what is left of the grace period.
    let left = config
        .server
        .shutdown_grace
        .saturating_sub(shutting_down.elapsed());
    if !state.oauth2().finish_refreshes(left).await {
        tracing::warn!(
            "shutdown grace period over with an OAuth 2.0 token refresh still running: its pair may be lost"
        );
    }
    // The last settlements and the last second of spend reach the store (CONTRACT section 11
    // rule 4) before the workers that run them stop.
    let left = config
        .server
        .shutdown_grace
        .saturating_sub(shutting_down.elapsed());
    state.meter().close(left).await;
    workers.stop().await;
    admin.abort();
    tracing::info!("stopped");
    Ok(())
}

/// Waits for a connection slot, then a connection. `None` after a failed accept (logged, with
/// a short pause so a full file table does not spin the loop).
async fn accept(
    listener: &TcpListener,
    limit: &Arc<Semaphore>,
) -> Option<(
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let permit = Arc::clone(limit).acquire_owned().await.ok()?;
    match listener.accept().await {
        Ok((stream, peer)) => {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(%peer, error = %e, "set_nodelay failed");
            }
            Some((stream, peer, permit))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// One accepted connection and what it needs.
struct Connection {
    state: Arc<State>,
    /// The upstream pool of the worker that serves the connection.
    upstream: Arc<Upstream>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    keepalive: Duration,
    header_read: Duration,
    /// `server.idle_timeout`: how long a client may take none of its response's bytes.
    stalled: Duration,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn serve(self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        match self.tls.clone() {
            None => self.serve_io(stream, peer).await,
            Some(acceptor) => {
                match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => self.serve_io(tls, peer).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_elapsed) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            }
        }
    }

    async fn serve_io<I>(mut self, io: I, peer: SocketAddr)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(ConnActivity::default());
        let service = TowerToHyperService::new(stack::proxy_connection(
            &self.state,
            &self.upstream,
            &activity,
        ));
        let io = Watched::new(io, Arc::clone(&activity));
        let conn = self.builder.serve_connection(TokioIo::new(io), service);
        let mut conn = std::pin::pin!(conn);
        let mut draining = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _stopping = self.stop.wait_for(|stop| *stop), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                expired = expiry(&activity, self.header_read, self.keepalive, self.stalled), if !draining => {
                    match expired {
                        Expiry::SlowHead => {
                            tracing::debug!(%peer, "request head not complete within header_read_timeout: dropped");
                            return;
                        }
                        Expiry::Stalled => {
                            tracing::info!(%peer, "the client read nothing of its response for idle_timeout: connection dropped");
                            return;
                        }
                        Expiry::Idle => {
                            conn.as_mut().graceful_shutdown();
                            draining = true;
                        }
                    }
                }
            }
        }
    }
}

/// What ends a connection that does not end by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Nothing in flight for `keepalive_timeout` (or, before its first request, for
    /// `header_read_timeout`): closed gracefully.
    Idle,
    /// A request head that took longer than `header_read_timeout`: dropped unanswered.
    SlowHead,
    /// The client took none of its response's bytes for `idle_timeout` (a stream it stopped
    /// reading without closing it): dropped, which ends the upstream exchange too.
    Stalled,
}

/// Completes when the connection's time is up: a request head is bounded by
/// `header_read` from its first byte, a connection that has sent nothing yet by `header_read`,
/// the wait between requests by `keepalive`, and a client that takes none of its response's
/// bytes by `stalled` (`idle_timeout`). While a request is in flight and its response flows,
/// nothing runs out.
///
/// The watchdog is not told of the connection's changes (that would wake the connection's
/// task twice per request); it checks the state at its deadline, and at the latest
/// `soonest` (the shortest of the three limits) after its last check: a deadline that arises
/// after a check (a head that begins, a connection that becomes idle, a write that begins
/// to wait) is at least `soonest` after it, so it is never missed nor late.
async fn expiry(
    activity: &ConnActivity,
    header_read: Duration,
    keepalive: Duration,
    stalled: Duration,
) -> Expiry {
    let soonest = header_read
        .min(keepalive)
        .min(stalled)
        .max(Duration::from_millis(1));
    let check = tokio::time::sleep(Duration::ZERO);
    let mut check = std::pin::pin!(check);
    loop {
        let deadline = match activity.state() {
            ConnState::Busy {
                write_blocked: None,
            } => None,
            ConnState::Busy {
                write_blocked: Some(since),
            } => Some((since + stalled, Expiry::Stalled)),
            ConnState::ReadingHead(since) => Some((since + header_read, Expiry::SlowHead)),
            ConnState::Idle { since, served } => {
                let limit = if served { keepalive } else { header_read };
                Some((since + limit, Expiry::Idle))
            }
        };
        let now = tokio::time::Instant::now();
        let next = now + soonest;
        match deadline {
            Some((at, expiry)) if now >= at => return expiry,
            Some((at, _)) => check.as_mut().reset(at.min(next)),
            None => check.as_mut().reset(next),
        }
        check.as_mut().await;
    }
}

/// The client connection's IO, telling its [`ConnActivity`] when bytes arrive, so that a
/// request head's time is counted from its first byte. An HTTP/2 connection (its first bytes
/// are the preface, `PRI `) is told only until that is known: its frames flow while no request
/// is in flight.
struct Watched<I> {
    inner: I,
    activity: Arc<ConnActivity>,
    /// The first bytes read, until four are known.
    first: [u8; 4],
    seen: usize,
}

impl<I> Watched<I> {
    fn new(inner: I, activity: Arc<ConnActivity>) -> Self {
        Self {
            inner,
            activity,
            first: [0; 4],
            seen: 0,
        }
    }

    /// A write went through (the client reads) or has to wait (it does not).
    fn wrote(&self, polled: &std::task::Poll<std::io::Result<usize>>) {
        match polled {
            std::task::Poll::Pending => self.activity.write_blocked(),
            std::task::Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(),
            std::task::Poll::Ready(_) => {}
        }
    }

    fn read(&mut self, bytes: &[u8]) {
        for &b in bytes
            .iter()
            .take(self.first.len().saturating_sub(self.seen))
        {
            if let Some(slot) = self.first.get_mut(self.seen) {
                *slot = b;
                self.seen += 1;
            }
        }
        let h2 = self.seen == self.first.len() && self.first == *b"PRI ";
        if !h2 {
            self.activity.bytes_read();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = polled {
            if let Some(new) = buf.filled().get(before..).filter(|n| !n.is_empty()) {
                this.read(new);
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(&polled);
        polled
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serves the admin endpoints until aborted.
async fn serve_admin(listener: TcpListener, admin: admin::Admin) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        let builder = Arc::clone(&builder);
        tokio::spawn(async move {
            let service = service_fn(move |req| admin::handle(admin.clone(), req));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};
    use tokio::time::Instant;

    use super::*;

    /// A connection served over an in-memory stream, with an anonymous client and an upstream
    /// nobody listens on (the requests here are answered locally).
    async fn connection(server: &str) -> (DuplexStream, watch::Sender<bool>) {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [upstream]\nbase_url = \"http://127.0.0.1:9\"\n\
             [apps.main]\nbearer_token = \"t\"\n\
             [[clients]]\nname = \"local\"\nanonymous = true\nidentities = [\"main\"]\ndefault_identity = \"main\"\n"
        );
        let config = Config::from_toml_str(
            &toml,
            std::path::Path::new("."),
            &std::collections::BTreeMap::new(),
        )
        .unwrap();
        let state = Arc::new(State::from_config(&config).await.unwrap());
        let (stop_tx, stop) = watch::channel(false);
        let conn = Connection {
            upstream: Arc::new(state.upstream().with_own_pool()),
            state,
            builder: Arc::new(connection_builder(&config)),
            tls: None,
            handshake_timeout: config.server.tls_handshake_timeout,
            keepalive: config.server.keepalive_timeout,
            header_read: config.server.header_read_timeout,
            stalled: config.server.idle_timeout,
            stop,
        };
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(conn.serve_io(server, "127.0.0.1:1".parse().unwrap()));
        (client, stop_tx)
    }

    /// Reads until the server closes, and how long that took.
    async fn read_to_close(client: &mut DuplexStream) -> (String, Duration) {
        let start = Instant::now();
        let mut out = Vec::new();
        let _closed = client.read_to_end(&mut out).await;
        (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
    }

    /// A local answer (404: outside the allowed prefixes), so nothing goes upstream.
    const REQUEST: &[u8] = b"GET /1.1/statuses HTTP/1.1\r\nHost: x\r\n\r\n";

    /// `keepalive_timeout`: a connection with no request in flight is closed once it has been
    /// idle that long, counted from the end of its last response.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_at_keepalive_timeout() {
        let (mut client, _stop) =
            connection("keepalive_timeout = \"7s\"\nheader_read_timeout = \"30s\"").await;
        client.write_all(REQUEST).await.unwrap();
        let (out, took) = read_to_close(&mut client).await;
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        assert!(
            took >= Duration::from_secs(7) && took < Duration::from_secs(8),
            "closed after {took:?}"
        );
    }

    /// `header_read_timeout`: a client that sends its head slower than that is dropped, and
    /// no answer is made for the half head.
    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_dropped_at_header_read_timeout() {
        let (mut client, _stop) =
            connection("keepalive_timeout = \"60s\"\nheader_read_timeout = \"3s\"").await;
        client
            .write_all(b"GET /1.1/statuses HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (out, took) = read_to_close(&mut client).await;
        assert!(!out.contains("404"), "{out}");
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(4),
            "dropped after {took:?}"
        );
    }

    /// Between requests only `keepalive_timeout` runs: an idle keep-alive connection outlives
    /// `header_read_timeout`.
    #[tokio::test(start_paused = true)]
    async fn a_keepalive_wait_is_not_a_slow_head() {
        let (mut client, _stop) =
            connection("keepalive_timeout = \"60s\"\nheader_read_timeout = \"3s\"").await;
        client.write_all(REQUEST).await.unwrap();
        let (out, took) = read_to_close(&mut client).await;
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
        assert!(
            took >= Duration::from_secs(60) && took < Duration::from_secs(61),
            "closed after {took:?}"
        );
    }

    /// A connection that never sends a byte is closed at `header_read_timeout`, not held for
    /// `keepalive_timeout`.
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_header_read_timeout() {
        let (mut client, _stop) =
            connection("keepalive_timeout = \"60s\"\nheader_read_timeout = \"3s\"").await;
        let (out, took) = read_to_close(&mut client).await;
        assert!(out.is_empty(), "{out}");
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(4),
            "closed after {took:?}"
        );
    }

    /// A slow head after a keep-alive wait is dropped `header_read_timeout` after its first
    /// byte, not when the keep-alive would have run out.
    #[tokio::test(start_paused = true)]
    async fn a_slow_second_head_is_dropped_from_its_first_byte() {
        let (mut client, _stop) =
            connection("keepalive_timeout = \"60s\"\nheader_read_timeout = \"3s\"").await;
        client.write_all(REQUEST).await.unwrap();
        let mut head = [0u8; 12];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 404");
        let mut rest = vec![0u8; 4096];
        let _answer = client.read(&mut rest).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        client
            .write_all(b"GET /1.1/statuses HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let (out, took) = read_to_close(&mut client).await;
        assert!(
            !out.contains("HTTP/1.1"),
            "an answer to the half head: {out}"
        );
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(4),
            "dropped after {took:?}"
        );
    }

    /// Shutdown: a connection told to stop finishes the request it has and then closes,
    /// without waiting for its keep-alive to run out.
    #[tokio::test(start_paused = true)]
    async fn a_stopping_connection_closes_without_waiting_for_keepalive() {
        let (mut client, stop) = connection("keepalive_timeout = \"60s\"").await;
        client.write_all(REQUEST).await.unwrap();
        let mut head = [0u8; 12];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 404");
        stop.send(true).unwrap();
        let (_rest, took) = read_to_close(&mut client).await;
        assert!(took < Duration::from_secs(1), "closed after {took:?}");
    }
}
