//! Worker threads (`server.workers`): each runs a current-thread tokio runtime that serves the
//! connections handed to it, with its own upstream pool.
//!
//! A request is then read, signed, forwarded and answered on one thread: its task, its client
//! connection and its upstream connection share one event loop, so nothing on the request
//! path wakes another thread. On tokio's work-stealing runtime those wake-ups (a futex and an
//! eventfd write per hand-over) cost more CPU per request than all of xgate's own work
//! (BENCHMARKS.md, "Worker threads"). The acceptor hands each connection to the next worker in
//! turn; a connection stays on its worker until it closes.
//!
//! What is shared between workers lives in [`crate::state::State`] behind atomics and short
//! locks: identities, buckets, tokens, metrics.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use super::StartError;
use crate::upstream::Upstream;

/// A running worker thread.
pub(super) struct Worker {
    /// Spawns onto the worker's runtime.
    pub(super) handle: Handle,
    /// The worker's own upstream pool.
    pub(super) upstream: Arc<Upstream>,
    /// Dropping it stops the worker's runtime.
    stop: oneshot::Sender<()>,
    /// Completes when the worker's runtime is gone.
    done: oneshot::Receiver<()>,
}

/// The worker threads, handed connections in turn.
pub(super) struct Workers {
    list: Vec<Worker>,
    next: usize,
}

impl Workers {
    /// Starts `count` threads, each with a pool of its own to `upstream`.
    pub(super) async fn start(count: usize, upstream: &Upstream) -> Result<Self, StartError> {
        let mut list = Vec::with_capacity(count);
        for n in 0..count {
            list.push(start_one(n, upstream.with_own_pool()).await?);
        }
        Ok(Self { list, next: 0 })
    }

    /// How many there are.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The worker for the next connection (round robin).
    pub(super) fn next(&mut self) -> Option<&Worker> {
        let n = self.next;
        self.next = (n + 1) % self.list.len().max(1);
        self.list.get(n)
    }

    /// Stops every worker and waits until their runtimes are gone: tasks still on them are
    /// dropped, blocking work in progress (a token store write) runs to its end.
    pub(super) async fn stop(self) {
        let mut done = Vec::with_capacity(self.list.len());
        for worker in self.list {
            drop(worker.stop);
            done.push(worker.done);
        }
        for d in done {
            let _thread_gone = d.await;
        }
    }
}

/// Starts worker `n`, whose upstream pool is `upstream`, and waits until its runtime is up.
async fn start_one(n: usize, upstream: Upstream) -> Result<Worker, StartError> {
    let upstream = Arc::new(upstream);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("xgate-worker-{n}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _caller_gone = ready_tx.send(Err(e));
                    return;
                }
            };
            if ready_tx.send(Ok(runtime.handle().clone())).is_ok() {
                runtime.block_on(async {
                    let _stopped_or_dropped = stop_rx.await;
                });
            }
            // Dropping the runtime drops its tasks and waits for its blocking threads.
            drop(runtime);
            let _caller_gone = done_tx.send(());
        })
        .map_err(|source| StartError::Worker { n, source })?;
    let handle = ready_rx
        .await
        .map_err(|_closed| StartError::Worker {
            n,
            source: std::io::Error::other("the thread ended at startup"),
        })?
        .map_err(|source| StartError::Worker { n, source })?;
    Ok(Worker {
        handle,
        upstream,
        stop,
        done,
    })
}
