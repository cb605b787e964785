//! Serving an axum router over mTLS.
//!
//! Hand-written accept loop because axum's `serve` speaks plain TCP only;
//! axum-server would add a second TLS stack configuration path.

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The verified client certificate of an mTLS connection, as a request
/// extension.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub rustls::pki_types::CertificateDer<'static>);

/// Counts TLS handshakes refused (no or untrusted client certificate).
#[derive(Debug, Default)]
pub struct RefusedConnections(AtomicU64);

impl RefusedConnections {
    /// How many were refused so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Serves `app` on `listener` with `config` (which requires client
/// certificates) until `shutdown`. Connections whose handshake fails are
/// dropped and counted.
pub async fn serve_mtls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    refused: Arc<RefusedConnections>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let refused = refused.clone();
        let token = shutdown.clone();
        tracker.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    let n = refused.0.fetch_add(1, Ordering::Relaxed) + 1;
                    // Aggregated: only the first and every 100th refusal is logged.
                    if n == 1 || n.is_multiple_of(100) {
                        tracing::warn!(%remote, refused_total = n, error = %e, "refused connection without a valid client certificate");
                    }
                    return;
                }
            };
            // Handlers that authorise by role read the client certificate
            // from the request (e.g. only a gateway may order a preheat).
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCertificate(c.clone().into_owned()));
            let app = match cert {
                Some(c) => app.layer(axum::Extension(c)),
                None => app,
            };
            let svc = TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                _ = conn => {}
                _ = token.cancelled() => {}
            }
        });
    }
    tracker.close();
    Ok(())
}
