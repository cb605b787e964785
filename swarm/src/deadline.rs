//! Deadlines on piece transfers, at both ends.
//!
//! A piece transfer that stops moving must fail soon, whichever side stalls
//! it: a parent that accepts a request and then sends nothing (or trickles),
//! or a requester that asks for a piece and never reads it, which would
//! otherwise hold one of its parent's few upload slots for as long as it
//! liked. Every length-based bound is sized from the piece length at
//! [`PIECE_MIN_RATE`], so a large piece at a low upload limit still
//! completes; only the gaps between chunks have fixed bounds.
//!
//! - Requester ([`FetchDeadlines`], [`idle_timeout`]): response headers
//!   within `first_byte`, no gap between body chunks longer than `idle`,
//!   the whole piece within `total`.
//! - Server ([`watched`]): the upload slot is released, and the body ends
//!   with an error, as soon as the requester leaves a chunk unread for
//!   [`SERVE_IDLE`] or the piece takes longer than [`serve_deadline`]. Time
//!   spent inside the body (the upload rate limiter pacing it, the disk) is
//!   not the requester's: only the time between handing a chunk downstream
//!   and being asked for the next one counts as "not reading".

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The slowest rate a piece transfer is allowed to run at: 64 KiB/s. A
/// node's upload limit divided by its upload slots must stay above it (the
/// smallest piece, 256 KiB, then takes at most 4 s, the largest, 64 MiB,
/// 17 min); anything slower is treated as a stalled parent.
pub const PIECE_MIN_RATE: u64 = 64 * 1024;

/// Added to every length-based deadline: connection and TLS set-up and a
/// scheduling hiccup on a loaded node (10 s).
pub const PIECE_SLACK: Duration = Duration::from_secs(10);

/// Requester: the longest silence between two chunks of a piece body. A
/// sender paces its body in 64 KiB slices (the rate limiter's largest); at
/// [`PIECE_MIN_RATE`] one arrives every second, so 10 s without a byte is
/// ten missed slices: the parent has stalled.
pub const PIECE_IDLE: Duration = Duration::from_secs(10);

/// Server: the longest a requester may leave a chunk unread (5 s). Socket
/// and TLS buffers absorb hundreds of KiB before the server stops being
/// asked for more, so a requester reading at [`PIECE_MIN_RATE`] makes room
/// for the next 64 KiB slice within about a second; five seconds without
/// room means it stopped reading, and its slot goes to someone who reads.
pub const SERVE_IDLE: Duration = Duration::from_secs(5);

/// How long `len` bytes take at [`PIECE_MIN_RATE`].
fn at_min_rate(len: u64) -> Duration {
    Duration::from_secs_f64(len as f64 / PIECE_MIN_RATE as f64)
}

/// The requester's deadlines for one piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchDeadlines {
    /// Until the response headers arrive. A request may wait in the
    /// parent's bounded queue (two requests per slot) behind up to two
    /// pieces, each at the minimum rate.
    pub first_byte: Duration,
    /// The longest gap between two body chunks ([`PIECE_IDLE`]).
    pub idle: Duration,
    /// The whole transfer: the wait above plus the piece itself.
    pub total: Duration,
}

impl FetchDeadlines {
    /// Deadlines for a piece of `len` bytes.
    pub fn for_piece(len: u64) -> Self {
        let one = at_min_rate(len);
        FetchDeadlines {
            first_byte: PIECE_SLACK + one * 2,
            idle: PIECE_IDLE,
            total: PIECE_SLACK + one * 3,
        }
    }
}

/// How long the server lets one piece of `len` bytes take, from the moment
/// it holds an upload slot.
pub fn serve_deadline(len: u64) -> Duration {
    PIECE_SLACK + at_min_rate(len)
}

/// Ends `body` with a `TimedOut` error when no chunk arrives for `idle`.
pub fn idle_timeout<S>(
    body: S,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin + Send,
{
    futures_util::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(item)) => Some((item, Some(body))),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("parent sent nothing for {} s", idle.as_secs()),
                )),
                None,
            )),
        }
    })
}

/// What the watchdog and the body share.
struct Watch<P> {
    /// The upload slot, until the body ends or the watchdog takes it.
    held: Option<P>,
    /// When the last chunk was handed downstream and not yet followed by
    /// a request for the next (`None` while the body itself is working).
    yielded_at: Option<Instant>,
    /// Why the watchdog ended the transfer.
    expired: Option<String>,
    /// The body's task, woken when the watchdog ends the transfer.
    waker: Option<Waker>,
    /// The watchdog sleeps until the total deadline (no chunk was waiting
    /// when it looked) and must be told when one is handed downstream.
    watchdog_unaware: bool,
}

/// A served body under a watchdog; see [`watched`].
pub struct Watched<P> {
    inner: customs_store::inflight::ByteStream,
    watch: Arc<Mutex<Watch<P>>>,
    wake_watchdog: Arc<tokio::sync::Notify>,
    done: CancellationToken,
    ended: bool,
}

/// Serves `body` while holding `held` (an upload slot), and gives `held` up
/// the moment the transfer ends, fails, or stalls: when the consumer has
/// not asked for the next chunk for `idle` since it got the last one, or
/// when the whole body took longer than `total`. A stalled body then ends
/// with a `TimedOut` error the next time it is polled (if ever); the slot
/// does not wait for that.
pub fn watched<P: Send + 'static>(
    body: customs_store::inflight::ByteStream,
    held: P,
    total: Duration,
    idle: Duration,
) -> Watched<P> {
    let watch = Arc::new(Mutex::new(Watch {
        held: Some(held),
        yielded_at: None,
        expired: None,
        waker: None,
        watchdog_unaware: false,
    }));
    let done = CancellationToken::new();
    let wake_watchdog = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    let w = watch.clone();
    let d = done.clone();
    let notified = wake_watchdog.clone();
    customs_runtime::spawn(async move {
        let end = started + total;
        loop {
            let wake_at = {
                let mut st = w.lock().unwrap_or_else(|e| e.into_inner());
                if st.held.is_none() {
                    return;
                }
                st.watchdog_unaware = st.yielded_at.is_none();
                st.yielded_at.map_or(end, |t| (t + idle).min(end))
            };
            tokio::select! {
                _ = d.cancelled() => return,
                _ = notified.notified() => continue,
                _ = tokio::time::sleep_until(wake_at) => {}
            }
            let now = Instant::now();
            let mut st = w.lock().unwrap_or_else(|e| e.into_inner());
            let why = if st.yielded_at.is_some_and(|t| now >= t + idle) {
                format!("requester read nothing for {} s", idle.as_secs())
            } else if now >= end {
                format!("piece not sent within {} s", total.as_secs())
            } else {
                continue;
            };
            tracing::info!(reason = %why, "upload stalled: slot released");
            st.expired = Some(why);
            let held = st.held.take();
            if let Some(waker) = st.waker.take() {
                waker.wake();
            }
            drop(st);
            drop(held);
            return;
        }
    });
    Watched {
        inner: body,
        watch,
        wake_watchdog,
        done,
        ended: false,
    }
}

impl<P> Watched<P> {
    fn finish(&mut self) {
        self.ended = true;
        self.done.cancel();
        let held = self
            .watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .take();
        drop(held);
    }
}

impl<P> Stream for Watched<P> {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        {
            let mut st = this.watch.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = st.expired.take() {
                drop(st);
                this.finish();
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    why,
                ))));
            }
            // Asked for more: from here until the next chunk is ready, the
            // time is the body's (pacing, disk), not the requester's.
            st.yielded_at = None;
            st.waker = Some(cx.waker().clone());
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(b))) => {
                let mut st = this.watch.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(why) = st.expired.take() {
                    drop(st);
                    this.finish();
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        why,
                    ))));
                }
                st.yielded_at = Some(Instant::now());
                if std::mem::take(&mut st.watchdog_unaware) {
                    // Stored as a permit if the watchdog is not waiting
                    // yet: it then re-reads the state at once.
                    this.wake_watchdog.notify_one();
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<P> Drop for Watched<P> {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use customs_store::inflight::ByteStream;

    fn chunks(n: usize, size: usize) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            (0..n).map(move |_| Ok(Bytes::from(vec![7u8; size]))),
        ))
    }

    #[test]
    fn deadlines_grow_with_the_piece() {
        let small = FetchDeadlines::for_piece(256 * 1024);
        assert_eq!(small.first_byte, Duration::from_secs(18));
        assert_eq!(small.total, Duration::from_secs(22));
        assert_eq!(small.idle, PIECE_IDLE);
        let big = FetchDeadlines::for_piece(64 << 20);
        assert!(big.total > Duration::from_secs(3000));
        assert_eq!(serve_deadline(256 * 1024), Duration::from_secs(14));
    }

    #[tokio::test(start_paused = true)]
    async fn a_requester_that_stops_reading_loses_its_slot() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let mut body = watched(
            chunks(100, 1024),
            permit,
            Duration::from_secs(600),
            SERVE_IDLE,
        );
        // The hostile requester reads one chunk, then never asks again.
        body.next().await.unwrap().unwrap();
        tokio::time::sleep(SERVE_IDLE - Duration::from_millis(100)).await;
        assert_eq!(slots.available_permits(), 0, "released too early");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            slots.available_permits(),
            1,
            "the slot is released while the body is still alive"
        );
        let err = body.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(body.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_is_not_counted_as_not_reading() {
        // 1 MiB paced at 64 KiB/s takes 16 s: far longer than SERVE_IDLE,
        // yet the requester asks for every chunk at once.
        let limiter = customs_mirror::rate::RateLimiter::new(PIECE_MIN_RATE);
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        let len = 1 << 20;
        let mut body = watched(
            limiter.limit(chunks(4, len / 4)),
            permit,
            serve_deadline(len as u64),
            SERVE_IDLE,
        );
        let start = Instant::now();
        let mut got = 0;
        while let Some(c) = body.next().await {
            got += c.unwrap().len();
        }
        assert_eq!(got, len);
        assert!(start.elapsed() >= Duration::from_secs(15));
        assert_eq!(slots.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_piece_that_takes_too_long_is_cut_off() {
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let permit = slots.clone().try_acquire_owned().unwrap();
        // A body that produces one chunk every 4 s: the requester reads
        // promptly, but the whole piece would take 400 s.
        let slow: ByteStream = Box::pin(futures_util::stream::unfold(0, |i| async move {
            tokio::time::sleep(Duration::from_secs(4)).await;
            (i < 100).then(|| (Ok(Bytes::from_static(b"x")), i + 1))
        }));
        let mut body = watched(slow, permit, Duration::from_secs(30), SERVE_IDLE);
        let start = Instant::now();
        let err = loop {
            match body.next().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("ended without an error"),
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert!(start.elapsed() <= Duration::from_secs(31));
        assert_eq!(slots.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_parent_fails_the_fetch() {
        let stalled = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let mut s = Box::pin(idle_timeout(stalled, PIECE_IDLE));
        let start = Instant::now();
        let err = s.next().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took >= PIECE_IDLE && took < PIECE_IDLE + Duration::from_secs(1));
        assert!(s.next().await.is_none());
        // A body that keeps sending is untouched.
        let mut ok = Box::pin(idle_timeout(chunks(3, 10), PIECE_IDLE));
        let mut n = 0;
        while let Some(c) = ok.next().await {
            n += c.unwrap().len();
        }
        assert_eq!(n, 30);
    }
}
