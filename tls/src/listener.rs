//! Bounded listeners: every connection holds one of a fixed number of
//! slots, and a TLS handshake that does not finish in time is dropped.
//!
//! Without these, 300 idle TCP connections held 300 descriptors (and 300
//! tasks) for minutes, and enough of them exhaust the process's descriptor
//! limit, which stops every listener of the process, not only the attacked
//! one.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Time a client gets to complete the TLS handshake after connecting. An
/// honest handshake on a fleet network takes a few round trips (well under
/// a second, even across zones); 10 s leaves room for a loaded node, and
/// bounds how long a connection that sends nothing holds a slot.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent connections one listener holds; more are closed at once and
/// counted. 4096 is far above what a node needs (a peer talks to a handful
/// of parents and children, the gateway and scheduler to one long-lived
/// connection per peer of a 2,000-node fleet), and far below the usual
/// descriptor limits (a process's soft limit is 1024 to 1M; the packaged
/// units set 65536), so one listener can never take every descriptor.
pub const MAX_CONNECTIONS: usize = 4096;

/// Time an HTTP/1 connection may take to send a request's headers,
/// counted from the end of the previous response (so it also closes idle
/// keep-alive connections). Clients reuse a connection within seconds;
/// 30 s is hyper's default and keeps pooled connections useful.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a write to a client may stay blocked (the client reads
/// nothing, so its receive window stays shut) before the connection is
/// closed. A client that stops reading a response (a `/v2` blob, a piece,
/// a gRPC stream) otherwise holds its connection slot, its task and the
/// blob's pin for as long as it likes. Any progress resets it; an honest
/// client pulling at any useful rate reads far more often than once a
/// minute. Writes paced by the upload limiter are not blocked writes (the
/// limiter sleeps before writing), so pacing never trips it.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause after a failed `accept` (e.g. out of descriptors): retrying at
/// once would spin on the same error.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// A listener's bounds. [`Default`] gives the named constants; tests use
/// short values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerLimits {
    /// See [`TLS_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// See [`MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// See [`HTTP_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// See [`WRITE_STALL_TIMEOUT`].
    pub write_stall_timeout: Duration,
    /// How long open connections may finish what is in flight once
    /// shutdown began ([`customs_runtime::DEFAULT_DRAIN`] by default,
    /// `--drain-secs`); new connections are refused from the moment it
    /// begins.
    pub drain: Duration,
}

impl ListenerLimits {
    /// These limits with `drain` as the drain deadline.
    pub fn with_drain(self, drain: Duration) -> Self {
        ListenerLimits { drain, ..self }
    }
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HTTP_HEADER_READ_TIMEOUT,
            write_stall_timeout: WRITE_STALL_TIMEOUT,
            drain: customs_runtime::DEFAULT_DRAIN,
        }
    }
}

/// Counts connections a listener refused: failed TLS handshakes (no or an
/// untrusted client certificate), handshakes that timed out, and
/// connections over the cap. Exported as metrics and aggregated into audit
/// events, never logged one by one.
#[derive(Debug, Default)]
pub struct RefusedConnections {
    handshake: AtomicU64,
    timed_out: AtomicU64,
    over_cap: AtomicU64,
}

impl RefusedConnections {
    /// How many were refused so far, for any reason.
    pub fn get(&self) -> u64 {
        self.handshake_failed() + self.timed_out() + self.over_cap()
    }

    /// Handshakes that failed (no or an untrusted certificate, bad TLS).
    pub fn handshake_failed(&self) -> u64 {
        self.handshake.load(Ordering::Relaxed)
    }

    /// Handshakes not finished within the handshake timeout.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Connections closed at once because the listener was at its cap.
    pub fn over_cap(&self) -> u64 {
        self.over_cap.load(Ordering::Relaxed)
    }

    pub(crate) fn count(&self, what: Refusal, remote: SocketAddr, detail: &str) {
        let counter = match what {
            Refusal::Handshake => &self.handshake,
            Refusal::TimedOut => &self.timed_out,
            Refusal::OverCap => &self.over_cap,
        };
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        // Aggregated: only the first and every 100th of a kind is logged.
        if n == 1 || n.is_multiple_of(100) {
            tracing::warn!(%remote, reason = what.as_str(), total = n, detail, "refused connection");
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refusal {
    Handshake,
    TimedOut,
    OverCap,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Handshake => "tls handshake failed",
            Refusal::TimedOut => "tls handshake timed out",
            Refusal::OverCap => "connection cap reached",
        }
    }
}

/// A connection holding one of its listener's slots; the slot is freed when
/// the connection is dropped, wherever that happens (tonic keeps the
/// connection in its own task). A write that stays blocked for the
/// listener's write stall timeout fails with `TimedOut`, so the server
/// drops the connection (see [`WRITE_STALL_TIMEOUT`]).
#[derive(Debug)]
pub struct Capped<S> {
    io: S,
    _slot: OwnedSemaphorePermit,
    stall_limit: Duration,
    /// Armed while a write is blocked; fires at the stall limit.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Capped<S> {
    /// The underlying connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Passes a write's result through, timing how long it stays blocked:
    /// progress disarms the timer; a write blocked past the limit fails.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.stall_limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {} s (write stall timeout)",
                    limit.as_secs_f32()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write(cx, buf);
        me.watch_write(cx, r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_flush(cx);
        me.watch_write(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        me.watch_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// tonic reads the client certificate from `TlsConnectInfo<TcpConnectInfo>`:
/// a capped TCP stream reports the TCP stream's info.
impl tonic::transport::server::Connected for Capped<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(&self.io)
    }
}

/// Accepts connections on `listener` until `shutdown`, giving each a slot
/// (or closing it at once and counting it when none is free) and handing it
/// to `handle` in its own task. After `shutdown` the listener is closed at
/// once (new connections are refused) and this returns when every
/// connection task has ended or `limits.drain` after shutdown, whichever
/// comes first: a connection task still running then is left to process
/// exit, so shutdown never hangs on one.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    limits: ListenerLimits,
    refused: Arc<RefusedConnections>,
    shutdown: CancellationToken,
    handle: F,
) where
    F: Fn(Capped<TcpStream>, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Dropping the stream closes it now: an excess connection costs
            // one accept, never a descriptor held or a task.
            drop(tcp);
            refused.count(Refusal::OverCap, remote, "");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tracker.spawn(handle(
            Capped {
                io: tcp,
                _slot: slot,
                stall_limit: limits.write_stall_timeout,
                stalled: None,
            },
            remote,
        ));
    }
    drop(listener);
    tracker.close();
    // One bound for the whole drain, counted from shutdown: a handshake
    // still running then is dropped when it ends (see `serve_tls_with`).
    if tokio::time::timeout(limits.drain, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.len(),
            "connections still open past the drain deadline"
        );
    }
}

/// Performs the TLS handshake of `tcp` within `limits.handshake_timeout`;
/// a failure or a timeout is counted and the connection dropped.
pub(crate) async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: Capped<TcpStream>,
    remote: SocketAddr,
    limits: ListenerLimits,
    refused: &RefusedConnections,
) -> Option<tokio_rustls::server::TlsStream<Capped<TcpStream>>> {
    match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            refused.count(Refusal::Handshake, remote, &e.to_string());
            None
        }
        Err(_) => {
            refused.count(Refusal::TimedOut, remote, "");
            None
        }
    }
}

/// Handshaken TLS connections accepted on `listener` with `config`, for
/// tonic's `serve_with_incoming_shutdown`: each holds a slot of the
/// listener's cap and got `limits.handshake_timeout` to finish its
/// handshake; failures are counted in `refused` and never reach the stream.
/// The stream ends at `shutdown`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ListenerLimits,
    refused: Arc<RefusedConnections>,
    shutdown: CancellationToken,
) -> impl futures_util::Stream<
    Item = Result<tokio_rustls::server::TlsStream<Capped<TcpStream>>, std::io::Error>,
> + Send
+ 'static {
    // Handshaken connections wait here for tonic to take them; the bound
    // only matters if tonic stopped accepting, and the cap bounds it anyway.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    customs_runtime::spawn(accept_loop(
        listener,
        limits,
        refused.clone(),
        shutdown,
        move |tcp, remote| {
            let acceptor = acceptor.clone();
            let refused = refused.clone();
            let tx = tx.clone();
            async move {
                if let Some(tls) = handshake(&acceptor, tcp, remote, limits, &refused).await {
                    let _ = tx.send(Ok(tls)).await;
                }
            }
        },
    ));
    ReceiverStream(rx)
}

/// An mpsc receiver as a stream (tokio-stream's wrapper, without the crate).
struct ReceiverStream<T>(tokio::sync::mpsc::Receiver<T>);

impl<T> futures_util::Stream for ReceiverStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
