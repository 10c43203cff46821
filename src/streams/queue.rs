//! One consumer's queue: what the stream's reader has given it and its connection has not
//! yet taken, bounded in bytes (`consumer_buffer_bytes`), and the response body that drains it.
//!
//! The reader never waits on a queue: a push that would pass the bound fails, and the reader
//! cuts that consumer off ([`Queue::cut`] frees what it held at once, whether or not its
//! connection is still being written to).

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame};

use crate::body::BoxError;

/// A consumer cut off for falling `consumer_buffer_bytes` behind.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the consumer fell {0} bytes behind the stream and was disconnected")]
pub struct TooSlow(pub usize);

#[derive(Debug, Default)]
struct Inner {
    items: VecDeque<Bytes>,
    bytes: usize,
    waker: Option<Waker>,
    /// No more pushes: the stream ended for this consumer; `Some(n)` when it was cut for
    /// being `n` bytes behind.
    closed: Option<Option<usize>>,
}

/// A bounded queue of stream lines for one consumer.
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    max: usize,
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It would pass the bound.
    Full,
    /// The consumer is gone or cut.
    Closed,
}

impl Queue {
    /// A queue of at most `max` bytes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `line`, unless that would pass the bound.
    pub fn push(&self, line: Bytes) -> Result<(), Refused> {
        let mut q = self.lock();
        if q.closed.is_some() {
            return Err(Refused::Closed);
        }
        if q.bytes + line.len() > self.max {
            return Err(Refused::Full);
        }
        q.bytes += line.len();
        q.items.push_back(line);
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// Ends the consumer's stream after what is queued.
    pub fn close(&self) {
        let mut q = self.lock();
        q.closed.get_or_insert(None);
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    /// Cuts the consumer off now: what it held is freed, and its body fails.
    pub fn cut(&self) {
        let mut q = self.lock();
        let behind = q.bytes;
        q.items.clear();
        q.bytes = 0;
        q.closed = Some(Some(behind));
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.lock().bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The response body of a stream consumer: the lines of its queue, in order. `leave` runs
/// when it is dropped (the consumer's connection ended), and `messages` counts what it
/// delivered (keep-alives not counted) for the access record.
pub struct ConsumerBody {
    queue: Arc<Queue>,
    messages: Arc<AtomicU64>,
    leave: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// When the last frame went out.
    last: Option<tokio::time::Instant>,
    /// Set while waiting for [`COALESCE`] to pass since `last`.
    flush: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// A consumer's lines are written at most this often: the first after a quiet spell at once,
/// the next ones together when this has passed (one write instead of one per message, which
/// is most of the CPU a delivery costs).
pub const COALESCE: std::time::Duration = std::time::Duration::from_millis(20);
/// Queued bytes past which lines go out at once, coalescing or not.
const COALESCE_MAX: usize = 256 * 1024;

impl std::fmt::Debug for ConsumerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBody")
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl ConsumerBody {
    /// The body draining `queue`; `leave` runs when it is dropped.
    pub fn new(
        queue: Arc<Queue>,
        messages: Arc<AtomicU64>,
        leave: Box<dyn FnOnce() + Send + Sync>,
    ) -> Self {
        Self {
            queue,
            messages,
            leave: Some(leave),
            last: None,
            flush: None,
        }
    }
}

impl Drop for ConsumerBody {
    fn drop(&mut self) {
        if let Some(leave) = self.leave.take() {
            leave();
        }
    }
}

impl Body for ConsumerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mut q = this.queue.lock();
        if !q.items.is_empty() {
            let recent = this.last.filter(|last| {
                last.elapsed() < COALESCE && q.bytes < COALESCE_MAX && q.closed.is_none()
            });
            if let Some(last) = recent {
                drop(q);
                let flush = this
                    .flush
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(last + COALESCE)));
                if flush.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                q = this.queue.lock();
            }
            this.flush = None;
            this.last = Some(tokio::time::Instant::now());
            let mut lines = 0;
            let frame = if q.items.len() == 1 {
                let line = q.items.pop_front().unwrap_or_default();
                lines += u64::from(!super::line::is_keepalive(&line));
                line
            } else {
                let mut out = bytes::BytesMut::with_capacity(q.bytes);
                for line in q.items.drain(..) {
                    lines += u64::from(!super::line::is_keepalive(&line));
                    out.extend_from_slice(&line);
                }
                out.freeze()
            };
            q.bytes = 0;
            this.messages.fetch_add(lines, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        match q.closed {
            Some(None) => Poll::Ready(None),
            Some(Some(behind)) => Poll::Ready(Some(Err(Box::new(TooSlow(behind))))),
            None => {
                q.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}
