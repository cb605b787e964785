//! Serving an axum router over TLS (mutual or server-only), bounded.
//!
//! Hand-written accept loop because axum's `serve` speaks plain TCP only;
//! axum-server would add a second TLS stack configuration path. Every
//! listener served here has a connection cap ([`crate::MAX_CONNECTIONS`]),
//! a handshake timeout ([`crate::TLS_HANDSHAKE_TIMEOUT`]) and a header read
//! timeout that also closes idle keep-alive connections
//! ([`crate::HTTP_HEADER_READ_TIMEOUT`]).

use crate::listener::{Capped, ListenerLimits, RefusedConnections, accept_loop, handshake};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The verified client certificate of an mTLS connection, as a request
/// extension.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub rustls::pki_types::CertificateDer<'static>);

/// Serves `app` on `listener` with `config` (which requires client
/// certificates) until `shutdown`, with the default [`ListenerLimits`].
/// Connections whose handshake fails or times out, and connections over the
/// cap, are dropped and counted in `refused`.
pub async fn serve_mtls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    refused: Arc<RefusedConnections>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The same listener: whether clients must present a certificate is
    // the config's business.
    serve_tls(listener, config, app, refused, shutdown).await
}

/// Serves `app` over TLS with `config`, which may or may not require client
/// certificates (e.g. [`crate::serving_config`] for containerd, which has
/// none), with the default [`ListenerLimits`].
pub async fn serve_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    refused: Arc<RefusedConnections>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_tls_with(
        listener,
        config,
        app,
        refused,
        ListenerLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve_tls`] with explicit limits (tests use short ones).
pub async fn serve_tls_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    refused: Arc<RefusedConnections>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let token = shutdown.clone();
    accept_loop(
        listener,
        limits,
        refused.clone(),
        shutdown,
        move |tcp: Capped<TcpStream>, remote| {
            let acceptor = acceptor.clone();
            let app = app.clone();
            let refused = refused.clone();
            let token = token.clone();
            async move {
                let Some(tls) = handshake(&acceptor, tcp, remote, limits, &refused).await else {
                    return;
                };
                // A handshake that finished after shutdown began gets no
                // requests served: the drain is for work already in flight.
                if token.is_cancelled() {
                    return;
                }
                let session = tls.get_ref().1;
                let h2 = session.alpn_protocol() == Some(b"h2");
                // Handlers that authorise by role read the client certificate
                // from the request (e.g. only a gateway may order a preheat).
                let cert = session
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| PeerCertificate(c.clone().into_owned()));
                let app = match cert {
                    Some(c) => app.layer(axum::Extension(c)),
                    None => app,
                };
                serve_connection(tls, app, h2, limits, token).await;
            }
        },
    )
    .await;
    Ok(())
}

/// Serves `app` over plain HTTP/1.1 on `listener` until `shutdown`, with
/// the same connection cap and header read timeout as the TLS listeners
/// (the gateway's `--listen` without `--listen-tls-cert`).
pub async fn serve_http(
    listener: TcpListener,
    app: Router,
    refused: Arc<RefusedConnections>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let token = shutdown.clone();
    accept_loop(listener, limits, refused, shutdown, move |tcp, _remote| {
        serve_connection(tcp, app.clone(), false, limits, token.clone())
    })
    .await;
    Ok(())
}

/// Serves one connection until it ends or `shutdown`. The protocol comes
/// from ALPN, never from sniffing the first bytes (hyper's auto-detection
/// waits for them without a deadline).
async fn serve_connection<IO>(
    io: IO,
    app: Router,
    h2: bool,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(app);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.handshake_timeout);
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.cancelled() => {}
    }
    // Draining: the response in flight finishes (HTTP/1 then closes; HTTP/2
    // sends GOAWAY and finishes its open streams), up to the deadline.
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(limits.drain, conn).await.is_err() {
        tracing::debug!("connection cut at the drain deadline");
    }
}

#[cfg(test)]
mod tests;
