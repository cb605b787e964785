//! Upload rate limiting and served-byte accounting.
//!
//! One limiter per node caps everything that node sends over the network
//! (`--upload-limit`); chunks are paced so the aggregate never exceeds the
//! rate, however many transfers run at once.

use bytes::Bytes;
use customs_store::inflight::ByteStream;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Paces bytes to a rate shared by all transfers, and counts them.
#[derive(Debug)]
pub struct RateLimiter {
    /// Bytes per second; 0 = unlimited.
    rate: u64,
    next_free: std::sync::Mutex<Option<Instant>>,
    served: AtomicU64,
    active: AtomicU64,
}

/// Largest chunk paced at once, so one transfer cannot claim a long slot.
const MAX_SLICE: usize = 64 * 1024;

impl RateLimiter {
    /// A limiter at `bytes_per_sec` (0 = unlimited).
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(RateLimiter {
            rate: bytes_per_sec,
            next_free: std::sync::Mutex::new(None),
            served: AtomicU64::new(0),
            active: AtomicU64::new(0),
        })
    }

    /// The configured rate (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Total bytes sent through this limiter.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Transfers in progress.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn acquire(&self, n: usize) {
        self.served.fetch_add(n as u64, Ordering::Relaxed);
        if self.rate == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(n as f64 / self.rate as f64);
        let at = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Never bank more than a short burst of idle time.
            let start = next.map_or(now, |t| t.max(now - Duration::from_millis(20)));
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(at).await;
    }

    /// Wraps a body stream so it is paced and counted.
    pub fn limit(self: &Arc<Self>, body: ByteStream) -> ByteStream {
        let guard = ActiveGuard::new(self.clone());
        if self.rate == 0 {
            // Unlimited: chunks pass whole (each slice would be one more
            // body frame, TLS write and wake-up per 64 KiB), only counted.
            return Box::pin(body.map(move |chunk| {
                if let Ok(b) = &chunk {
                    guard
                        .limiter
                        .served
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                chunk
            }));
        }
        Box::pin(
            body.flat_map(|chunk| {
                let parts: Vec<Result<Bytes, std::io::Error>> = match chunk {
                    Ok(b) => {
                        let mut v = Vec::new();
                        let mut off = 0;
                        while off < b.len() {
                            let end = (off + MAX_SLICE).min(b.len());
                            v.push(Ok(b.slice(off..end)));
                            off = end;
                        }
                        v
                    }
                    Err(e) => vec![Err(e)],
                };
                futures_util::stream::iter(parts)
            })
            .then(move |chunk| {
                let g = guard.limiter.clone();
                async move {
                    if let Ok(b) = &chunk {
                        g.acquire(b.len()).await;
                    }
                    chunk
                }
            }),
        )
    }
}

/// Counts a transfer as active while it lives.
struct ActiveGuard {
    limiter: Arc<RateLimiter>,
}

impl ActiveGuard {
    fn new(limiter: Arc<RateLimiter>) -> Self {
        limiter.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { limiter }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.limiter.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paces_the_aggregate_of_concurrent_transfers() {
        let l = RateLimiter::new(1_000_000);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let body: ByteStream = Box::pin(futures_util::stream::iter(vec![Ok(Bytes::from(
                    vec![0u8; 500_000],
                ))]));
                let mut s = l.limit(body);
                while s.next().await.is_some() {}
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&took), "2 MB at 1 MB/s took {took}s");
        assert_eq!(l.served(), 2_000_000);
        assert_eq!(l.active(), 0);
    }

    #[tokio::test]
    async fn an_unlimited_limiter_passes_chunks_whole_and_counts_them() {
        let l = RateLimiter::new(0);
        let body: ByteStream = Box::pin(futures_util::stream::iter(vec![
            Ok(Bytes::from(vec![1u8; 300_000])),
            Err(std::io::Error::other("cut")),
        ]));
        let mut s = l.limit(body);
        assert_eq!(l.active(), 1);
        assert_eq!(s.next().await.unwrap().unwrap().len(), 300_000);
        assert!(s.next().await.unwrap().is_err(), "errors pass through");
        assert!(s.next().await.is_none());
        drop(s);
        assert_eq!(l.served(), 300_000);
        assert_eq!(l.active(), 0);
    }
}
