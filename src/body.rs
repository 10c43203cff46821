//! Body types: what goes upstream and what comes back.
//!
//! Owns the two body types of the data path, both plain enums (no boxing per request):
//! - [`UpstreamBody`]: the client's body streamed through a byte limit (`max_body_bytes`,
//!   413), or a body already read (an OAuth 1.0a form body, whose parameters are signed);
//! - [`ProxyBody`]: a response made here (problems, admin pages), or upstream's body relayed
//!   frame by frame with an idle timeout (`idle_timeout`) and no total timeout.
//!
//! Trailers are dropped in both directions (CONTRACT section 3). Each [`ProxyBody`] counts the
//! bytes it relays and can carry a [`BodyDone`] told that count when the body is finished or
//! dropped: that is where the access record is written and how a connection knows it is idle.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

/// A boxed error, as hyper's body traits want them.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The client sent more than `max_body_bytes`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body is larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit that was crossed.
    pub limit: u64,
}

/// The client's body could not be read (broken chunked framing, a connection that ended
/// mid-body): the client's fault, never upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body could not be read: {0}")]
pub struct ClientBodyFailed(#[source] pub BoxError);

/// Upstream sent no body bytes for `idle_timeout`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("upstream body idle for {0:?}")]
pub struct BodyIdle(pub Duration);

// === UpstreamBody ===

/// A client's request body of any type, boxed (hyper's `Incoming` on a connection; a
/// `Full` in tests that call the service without a socket).
pub type ClientBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// The body of the request sent upstream.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's body, streamed, at most `limit` bytes.
    Stream {
        /// The client's body.
        inner: ClientBody,
        /// Bytes still allowed.
        remaining: u64,
        /// `max_body_bytes`.
        limit: u64,
    },
    /// A body already read in full (taken on the first poll).
    Full(Option<Bytes>),
}

impl UpstreamBody {
    /// Streams `inner`, failing with [`BodyTooLarge`] past `limit` bytes. An empty body (most
    /// requests) is not boxed.
    pub fn limited<B>(inner: B, limit: u64) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt as _;
        if inner.is_end_stream() {
            return Self::Full(None);
        }
        Self::Stream {
            inner: inner.map_err(Into::into).boxed_unsync(),
            remaining: limit,
            limit,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream {
                inner,
                remaining,
                limit,
            } => loop {
                let Some(frame) = ready!(Pin::new(&mut *inner).poll_frame(cx)) else {
                    return Poll::Ready(None);
                };
                let frame = frame.map_err(|e| Box::new(ClientBodyFailed(e)) as BoxError)?;
                match frame.into_data() {
                    Ok(data) => {
                        let len = data.len() as u64;
                        if len > *remaining {
                            *remaining = 0;
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                                limit: *limit,
                            }))));
                        }
                        *remaining -= len;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // Trailers are dropped; keep reading (the stream ends after them).
                    Err(_trailers) => {}
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(b) => b.is_none(),
            Self::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

// === ProxyBody ===

/// Told once, when a response body is finished or abandoned, how many bytes it relayed and
/// what its [`Tap`] made of it.
pub trait BodyDone: Send + Sync + 'static {
    /// The body is done; `bytes` of data went to the client; `tapped` is its tap's result.
    fn done(self: Box<Self>, bytes: u64, tapped: Option<Tapped>);
}

/// Sees every data chunk of a relayed body as it goes to the client (the metering of the
/// costs issue), and can end the body early.
pub trait Tap: Send + Sync + 'static {
    /// `chunk` is about to go to the client; `false` ends the body after it.
    fn chunk(&mut self, chunk: &[u8]) -> bool;
    /// The body is done (finished, failed or dropped).
    fn finish(self: Box<Self>) -> Tapped;
}

/// What a [`Tap`] made of a body: a figure known now, or one that needs a round trip.
pub enum Tapped {
    /// Known now.
    Now(u64),
    /// Known when this completes.
    Later(Pin<Box<dyn std::future::Future<Output = u64> + Send>>),
}

impl fmt::Debug for Tapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Now(n) => f.debug_tuple("Tapped::Now").field(n).finish(),
            Self::Later(_) => f.write_str("Tapped::Later"),
        }
    }
}

/// The body of a response sent to the client.
pub struct ProxyBody {
    kind: Kind,
    /// Data bytes relayed so far.
    bytes: u64,
    /// Told the byte count when the body is dropped.
    done: Option<Box<dyn BodyDone>>,
    /// Sees the chunks; `None` once it ended the body.
    tap: Option<Box<dyn Tap>>,
    /// The tap asked to end the body after the last chunk.
    ended: bool,
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let tapped = self.tap.take().map(Tap::finish);
        if let Some(done) = self.done.take() {
            done.done(self.bytes, tapped);
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    /// A body made here that streams (a shared stream's consumer).
    Boxed(ClientBody),
    /// Upstream's body, and its first data frame when it was read before the head went out.
    Upstream(Option<Bytes>, IdleTimeout<Incoming>),
}

/// A body relayed frame by frame that fails with [`BodyIdle`] when no frame comes for `idle`
/// (there is no total timeout); trailers are dropped.
pub struct IdleTimeout<B> {
    inner: B,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<B> fmt::Debug for IdleTimeout<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeout")
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

impl<B> IdleTimeout<B> {
    /// `inner`, closed after `idle` without a frame (the first wait starts now).
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let deadline = tokio::time::Instant::now() + this.idle;
                    this.timer.as_mut().reset(deadline);
                    match frame.into_data() {
                        Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        // Trailers are dropped.
                        Err(_trailers) => {}
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    ready!(this.timer.as_mut().poll(cx));
                    return Poll::Ready(Some(Err(Box::new(BodyIdle(this.idle)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Full(b) => f
                .debug_tuple("ProxyBody::Full")
                .field(&b.as_ref().map(Bytes::len))
                .finish(),
            Kind::Upstream(_, body) => f
                .debug_struct("ProxyBody::Upstream")
                .field("idle", &body.idle)
                .finish(),
            Kind::Boxed(_) => f.write_str("ProxyBody::Boxed"),
        }
    }
}

impl ProxyBody {
    /// A complete body made here.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
            bytes: 0,
            done: None,
            tap: None,
            ended: false,
        }
    }

    /// A streaming body made here.
    pub fn boxed<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = BoxError> + Send + 'static,
    {
        use http_body_util::BodyExt as _;
        Self {
            kind: Kind::Boxed(body.boxed_unsync()),
            bytes: 0,
            done: None,
            tap: None,
            ended: false,
        }
    }

    /// Upstream's body, relayed frame by frame; closed after `idle` without a frame.
    pub fn upstream(inner: Incoming, idle: Duration) -> Self {
        Self::upstream_after(None, IdleTimeout::new(inner, idle))
    }

    /// Upstream's body whose first data frame, `first`, was already read from `rest`.
    pub fn upstream_after(first: Option<Bytes>, rest: IdleTimeout<Incoming>) -> Self {
        Self {
            kind: Kind::Upstream(first, rest),
            bytes: 0,
            done: None,
            tap: None,
            ended: false,
        }
    }

    /// Attaches `done`, told the byte count when this body is finished or dropped.
    pub fn on_done(&mut self, done: Box<dyn BodyDone>) {
        self.done = Some(done);
    }

    /// Attaches `tap`, shown every data chunk before it goes out.
    pub fn tap(&mut self, tap: Box<dyn Tap>) {
        self.tap = Some(tap);
    }

    /// Counts `data` and shows it to the tap.
    fn relayed(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if let Some(tap) = self.tap.as_mut() {
            self.ended |= !tap.chunk(data);
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| {
                this.bytes += b.len() as u64;
                Ok(Frame::data(b))
            })),
            Kind::Upstream(first, body) => {
                if let Some(data) = first.take() {
                    this.relayed(&data);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let Some(Ok(Some(data))) =
                    frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
                {
                    this.relayed(data);
                }
                Poll::Ready(frame)
            }
            Kind::Boxed(body) => {
                let frame = ready!(Pin::new(body).poll_frame(cx));
                if let Some(Ok(Some(data))) =
                    frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref))
                {
                    this.relayed(data);
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.ended {
            return true;
        }
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(first, body) => first.is_none() && body.is_end_stream(),
            Kind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(None, body) => body.size_hint(),
            Kind::Boxed(body) => body.size_hint(),
            Kind::Upstream(Some(first), body) => {
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(first.len() as u64));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(first.len() as u64));
                }
                hint
            }
        }
    }
}

// === refused requests ===

/// The most of a refused request's unread body that is read and thrown away.
const DISCARD_MAX_BYTES: u64 = 16 << 20;
/// How long a refused request's unread body is read at most.
const DISCARD_TIME: Duration = Duration::from_secs(10);

/// Reads and throws away the body of a request refused before its body was read, at most
/// `DISCARD_MAX_BYTES` for at most `DISCARD_TIME`, in a task of its own while the answer
/// goes out. A client still sending its body then gets the answer (404, 413, 429, ...) and
/// can keep the connection; had the connection been closed with its bytes unread, the kernel
/// would have reset it and the client would see a broken pipe instead of the answer. A body
/// that is declared larger, or whose client waits for `100 Continue` (which a refusal never
/// sends), is not read: hyper closes the connection after the answer.
pub fn discard_unread<B>(body: B, headers: &http::HeaderMap)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
{
    let expects_continue = headers.contains_key(http::header::EXPECT);
    let declared = body.size_hint().exact();
    if body.is_end_stream() || expects_continue || declared.is_some_and(|n| n > DISCARD_MAX_BYTES) {
        return;
    }
    tokio::spawn(async move {
        let mut body = body;
        let mut read = 0u64;
        let _gave_up = tokio::time::timeout(DISCARD_TIME, async {
            while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
                read += frame
                    .data_ref()
                    .map_or(0, |d| bytes::Buf::remaining(d) as u64);
                if read > DISCARD_MAX_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}

/// The [`ClientBodyFailed`] in `err`'s source chain, if any.
pub fn find_client_body_failure<'e>(
    err: &'e (dyn StdError + 'static),
) -> Option<&'e ClientBodyFailed> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<ClientBodyFailed>() {
            return Some(t);
        }
        cur = e.source();
    }
    None
}

/// Whether `err` (or anything in its source chain) is a [`BodyTooLarge`].
pub fn find_body_too_large(err: &(dyn StdError + 'static)) -> Option<BodyTooLarge> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(t) = e.downcast_ref::<BodyTooLarge>() {
            return Some(*t);
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    /// A body whose chunks a test sends through a channel; it ends when the sender is dropped.
    struct Chunks(mpsc::Receiver<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    /// `idle_timeout`: a body that sends nothing for `idle` is closed then, measured in
    /// paused time (exact, and no real waiting).
    #[tokio::test(start_paused = true)]
    async fn a_body_silent_for_idle_is_closed_at_idle() {
        let idle = Duration::from_secs(90);
        let (tx, rx) = mpsc::channel(1);
        let mut body = IdleTimeout::new(Chunks(rx), idle);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let start = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(start.elapsed(), idle);
        assert!(err.is::<BodyIdle>(), "{err}");
        drop(tx);
    }

    /// There is no total timeout: chunks that keep coming within `idle` (X's keep-alive
    /// newlines) keep the body open however long it lasts.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_sending_is_never_cut() {
        let idle = Duration::from_secs(90);
        let (tx, rx) = mpsc::channel(1);
        let mut body = IdleTimeout::new(Chunks(rx), idle);
        let sender = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                tx.send(Bytes::from_static(b"\r\n")).await.unwrap();
            }
        });
        let start = Instant::now();
        let mut frames = 0;
        while let Some(frame) = body.frame().await {
            frame.unwrap();
            frames += 1;
        }
        assert_eq!(frames, 100);
        assert_eq!(start.elapsed(), Duration::from_secs(2000));
        sender.await.unwrap();
    }
}
