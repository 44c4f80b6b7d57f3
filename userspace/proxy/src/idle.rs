//! Inactivity limits: a connection, tunnel or body that stops moving must not hold a
//! connection permit or an origin slot for ever (`idle_timeout_secs`,
//! `body_idle_timeout_secs`), and a client that stops reading must not hold the memory of
//! the responses it does not take (`client_send_timeout_secs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::upstream::{BoxError, ProxyBody};

/// When something last happened, how many exchanges are in flight, and since when the
/// connection has been unable to send.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// When a write to the client started to wait (milliseconds since `base`, plus one); 0
    /// while writes go through or nothing waits to be written.
    send_blocked_since: AtomicU64,
    /// The response bodies being sent on this connection (see [`WatchedBody`]); HTTP/2
    /// only, where one stream can stall while the connection's socket moves.
    bodies: Mutex<Vec<Weak<Taking>>>,
    watch_streams: bool,
}

/// How the client takes one response body: when the body was last asked for a frame, and
/// whether it was then waiting for its own source (the origin) rather than for the client.
#[derive(Debug)]
struct Taking {
    last_asked_ms: AtomicU64,
    source_pending: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Self::build(false)
    }

    /// For an HTTP/2 client connection: each response body is watched on its own (see
    /// [`Activity::watch_body`]). On HTTP/1.1 the socket says it all: hyper asks for the
    /// next frame only once its write queue drains, so a slow client (a large origin chunk
    /// at a few KB/s) would look stalled while its socket moves.
    pub fn for_streams() -> Arc<Activity> {
        Self::build(true)
    }

    fn build(watch_streams: bool) -> Arc<Activity> {
        Arc::new(Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            send_blocked_since: AtomicU64::new(0),
            bodies: Mutex::new(Vec::new()),
            watch_streams,
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Time since the last activity, or zero while an exchange is in flight.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::Relaxed)),
        )
    }

    /// Marks an exchange in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once nothing happened (and nothing was in flight) for `limit`.
    pub async fn expired(&self, limit: Duration) {
        held_for(limit, || self.idle_for()).await
    }

    /// A write to the client could not go through (its receive window and our socket
    /// buffer are full).
    fn send_blocked(&self) {
        let now = self.now_ms().saturating_add(1);
        let _ =
            self.send_blocked_since
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A write to the client went through, or nothing waits to be written.
    fn send_moved(&self) {
        self.send_blocked_since.store(0, Ordering::Relaxed);
    }

    /// How long the client has been taking nothing: writes to it have waited (its receive
    /// window and our socket buffer are full), or, on HTTP/2, a response body has had a frame
    /// ready that the connection did not ask for (a stream whose window the client keeps
    /// shut while its other streams, and so the socket, move). Zero while everything moves.
    pub fn send_blocked_for(&self) -> Duration {
        let now = self.now_ms();
        let socket = match self.send_blocked_since.load(Ordering::Relaxed) {
            0 => 0,
            since => now.saturating_sub(since - 1),
        };
        let body = self
            .bodies
            .lock()
            .map(|bodies| {
                bodies
                    .iter()
                    .filter_map(Weak::upgrade)
                    .filter(|t| !t.source_pending.load(Ordering::Relaxed))
                    .map(|t| now.saturating_sub(t.last_asked_ms.load(Ordering::Relaxed)))
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        Duration::from_millis(socket.max(body))
    }

    /// Resolves once the client has taken nothing for `limit` (see
    /// [`Activity::send_blocked_for`]).
    pub async fn send_stalled(&self, limit: Duration) {
        held_for(limit, || self.send_blocked_for()).await
    }

    /// A response body to send on this connection: it counts as an exchange in flight until
    /// it is dropped, and as taken by the client only while the client asks for its frames.
    pub fn watch_body(self: &Arc<Self>, inner: ProxyBody, flight: InFlight) -> WatchedBody {
        let taking = self.watch_streams.then(|| {
            let taking = Arc::new(Taking {
                last_asked_ms: AtomicU64::new(self.now_ms()),
                source_pending: AtomicBool::new(false),
            });
            if let Ok(mut bodies) = self.bodies.lock() {
                bodies.retain(|w| w.strong_count() > 0);
                bodies.push(Arc::downgrade(&taking));
            }
            taking
        });
        WatchedBody {
            inner,
            taking,
            flight,
        }
    }
}

/// Resolves once `held()` (how long a condition has held, zero when it does not) reaches
/// `limit`. Checks at most every quarter of `limit`, so the end comes at most a quarter late
/// without a timer per event.
async fn held_for(limit: Duration, held: impl Fn() -> Duration) {
    loop {
        let h = held();
        if h >= limit {
            return;
        }
        let tick = (limit - h).min(limit / 4).max(Duration::from_millis(50));
        tokio::time::sleep(tick).await;
    }
}

/// An exchange in flight (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An IO stream that records its reads and writes in an [`Activity`].
pub struct ActivityIo<T> {
    pub inner: T,
    pub activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A client stream that records in an [`Activity`] whether its writes go through, for
/// `client_send_timeout_secs`. A write or flush that waits marks the connection blocked from
/// that moment; one that moves bytes (or finds nothing left to flush) clears the mark. A
/// connection with nothing to send is never blocked, however long it waits for its origin.
pub struct SendWatch<T> {
    pub inner: T,
    pub activity: Arc<Activity>,
}

impl<T> SendWatch<T> {
    fn note<R>(&self, r: &Poll<std::io::Result<R>>, moved: impl FnOnce(&R) -> bool) {
        match r {
            Poll::Pending => self.activity.send_blocked(),
            Poll::Ready(Ok(v)) if moved(v) => self.activity.send_moved(),
            Poll::Ready(_) => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendWatch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendWatch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&r, |n| *n > 0);
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&r, |n| *n > 0);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&r, |_| true);
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.note(&r, |_| true);
        r
    }
}

/// A response body that tells its connection's [`Activity`] when the client last asked for
/// a frame (see [`Activity::watch_body`]). A frame handed over leaves the client owing the
/// next request for one; a body waiting for its origin owes the client nothing.
pub struct WatchedBody {
    inner: ProxyBody,
    taking: Option<Arc<Taking>>,
    /// The exchange in flight, and so the connection's [`Activity`].
    flight: InFlight,
}

impl Body for WatchedBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(taking) = &this.taking else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        taking
            .last_asked_ms
            .store(this.flight.0.now_ms(), Ordering::Relaxed);
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        taking
            .source_pending
            .store(r.is_pending(), Ordering::Relaxed);
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `copy_bidirectional` that gives up after `idle` without a byte in either direction.
/// Returns false when it ended for inactivity.
pub async fn copy_bidirectional_idle<A, B>(a: A, b: B, idle: Duration) -> bool
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    activity.touch();
    let mut a = ActivityIo {
        inner: a,
        activity: activity.clone(),
    };
    let mut b = ActivityIo {
        inner: b,
        activity: activity.clone(),
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => true,
        _ = activity.expired(idle) => false,
    }
}

/// A body that fails when no frame arrives for `limit` (a stalled upload or download would
/// otherwise hold an origin connection slot for ever).
pub struct IdleBody {
    inner: ProxyBody,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleBody {
    pub fn new(inner: ProxyBody, limit: Duration) -> IdleBody {
        IdleBody {
            inner,
            limit,
            timer: None,
        }
    }
}

/// A body stopped making progress.
#[derive(Debug, thiserror::Error)]
#[error("no body data for {0:?}")]
pub struct BodyStalled(Duration);

impl Body for IdleBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let limit = this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(limit))))),
                    Poll::Pending => Poll::Pending,
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A body that never produces anything.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn stalled_body_fails() {
        let mut b = IdleBody::new(Silent.boxed(), Duration::from_millis(50));
        let r = tokio::time::timeout(Duration::from_secs(2), b.frame()).await;
        assert!(matches!(r, Ok(Some(Err(_)))), "stalled body must fail");
    }

    /// A writer that takes nothing until `open` is set.
    struct Gate {
        open: bool,
    }

    impl AsyncWrite for Gate {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.open {
                Poll::Ready(Ok(buf.len()))
            } else {
                Poll::Pending
            }
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_blocked_send_stalls_until_bytes_move() {
        let a = Activity::new();
        let limit = Duration::from_millis(100);
        let mut w = SendWatch {
            inner: Gate { open: false },
            activity: a.clone(),
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Nothing written yet: waiting for an origin is not a stall.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), a.send_stalled(limit))
                .await
                .is_err()
        );
        assert!(Pin::new(&mut w).poll_write(&mut cx, b"x").is_pending());
        tokio::time::timeout(Duration::from_secs(2), a.send_stalled(limit))
            .await
            .expect("a write that waits stalls the connection");
        w.inner.open = true;
        assert!(Pin::new(&mut w).poll_write(&mut cx, b"x").is_ready());
        assert_eq!(a.send_blocked_for(), Duration::ZERO, "bytes moved");
    }

    /// A body with frames ready that nobody asks for (an HTTP/2 stream whose window the
    /// client keeps shut) stalls its connection; one waiting for its origin does not.
    #[tokio::test]
    async fn a_body_nobody_asks_for_stalls() {
        use http_body_util::Full;
        let limit = Duration::from_millis(100);
        let a = Activity::for_streams();
        let waiting = a.watch_body(Silent.boxed(), a.begin());
        let mut waiting = Box::pin(waiting);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(waiting.as_mut().poll_frame(&mut cx).is_pending());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), a.send_stalled(limit))
                .await
                .is_err(),
            "a body waiting for its origin is no stall"
        );
        let ready = Full::new(Bytes::from_static(b"abc"))
            .map_err(|never| match never {})
            .boxed();
        let ready = a.watch_body(ready, a.begin());
        tokio::time::timeout(Duration::from_secs(2), a.send_stalled(limit))
            .await
            .expect("a ready body nobody asks for stalls");
        drop(ready);
        assert!(a.send_blocked_for() < limit, "a dropped body is forgotten");
    }

    #[tokio::test]
    async fn activity_expires_only_when_idle() {
        let a = Activity::new();
        a.touch();
        let g = a.begin();
        assert!(
            tokio::time::timeout(
                Duration::from_millis(200),
                a.expired(Duration::from_millis(50))
            )
            .await
            .is_err()
        );
        drop(g);
        tokio::time::timeout(
            Duration::from_millis(500),
            a.expired(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    }
}
