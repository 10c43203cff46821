//! What the shared-state engines have in common (CONTRACT section 10): which engine, how an
//! operation on it is observed, and whether it is up.
//!
//! Owns [`Engine`], the [`Observer`] seam through which the Redis buckets and the PostgreSQL
//! store report each operation (the metrics implement it; commands that do not serve pass
//! [`not_observed`]), and [`Health`]: one engine's up/down state, so that an outage is logged
//! once when it starts and once when it ends, and requests stop waiting on an engine known to
//! be down.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A shared-state engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The buckets (`[shared] redis_url`).
    Redis,
    /// The token store (`store.url`).
    Postgres,
}

impl Engine {
    /// The `backend` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

/// Sees every operation on a shared engine: `xgate_shared_duration_seconds`,
/// `xgate_shared_errors_total` and `xgate_shared_up`.
pub trait Observer: Send + Sync + fmt::Debug {
    /// `op` on `engine` took `took`; `ok` is whether it succeeded.
    fn op(&self, engine: Engine, op: &'static str, took: Duration, ok: bool);
    /// `engine` is reachable (`true`) or not.
    fn up(&self, engine: Engine, up: bool);
}

/// The observer of commands that do not serve (no metrics to keep).
#[derive(Debug)]
pub struct NotObserved;

impl Observer for NotObserved {
    fn op(&self, _: Engine, _: &'static str, _: Duration, _: bool) {}
    fn up(&self, _: Engine, _: bool) {}
}

/// [`NotObserved`], ready to share.
pub fn not_observed() -> Arc<dyn Observer> {
    Arc::new(NotObserved)
}

/// An operation on a shared engine failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What failed (never a URL or a secret).
    pub message: String,
    /// Whether this failure started an outage (the engine was up until now).
    pub outage_started: bool,
}

/// One engine's health as this process last saw it.
#[derive(Debug)]
pub struct Health {
    engine: Engine,
    /// Where it is, without user or password (`redis://host:port`).
    shown: String,
    up: AtomicBool,
    observer: Arc<dyn Observer>,
}

impl Health {
    /// An engine believed up until an operation fails.
    pub fn new(engine: Engine, shown: String, observer: Arc<dyn Observer>) -> Self {
        observer.up(engine, true);
        Self {
            engine,
            shown,
            up: AtomicBool::new(true),
            observer,
        }
    }

    /// Whether the last operation succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// An operation failed because of `why`: the outage starts (logged once) if it had not.
    /// Returns whether this call started it.
    pub fn failed(&self, why: &dyn fmt::Display, consequence: &str) -> bool {
        let started = self.up.swap(false, Ordering::Relaxed);
        if started {
            self.observer.up(self.engine, false);
            tracing::warn!(
                backend = self.engine.as_str(),
                at = %self.shown,
                error = %why,
                "shared state unreachable: {consequence}"
            );
        }
        started
    }

    /// An operation succeeded: an outage, if there was one, is over (logged once).
    pub fn succeeded(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.observer.up(self.engine, true);
            tracing::warn!(
                backend = self.engine.as_str(),
                at = %self.shown,
                "shared state reachable again"
            );
        }
    }

    /// Runs `op`, named `name`, within `limit`: observed (its duration, whether it failed) and
    /// counted against this health. A failure is its message, and whether it started an
    /// outage (`consequence` says, in the outage's one warning, what it means for requests).
    pub async fn run<T, F>(
        &self,
        name: &'static str,
        limit: Duration,
        op: F,
        consequence: &str,
    ) -> Result<T, Failure>
    where
        F: Future<Output = Result<T, String>>,
    {
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout(limit, op).await {
            Ok(r) => r,
            Err(_elapsed) => Err(format!("no answer within {limit:?}")),
        };
        self.observer
            .op(self.engine, name, started.elapsed(), result.is_ok());
        result
            .inspect(|_| self.succeeded())
            .map_err(|message| Failure {
                outage_started: self.failed(&message, consequence),
                message,
            })
    }

    /// Where the engine is, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The observer operations are reported to.
    pub fn observer(&self) -> &dyn Observer {
        &*self.observer
    }

    /// Which engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }
}
