//! The Customs scheduler: the swarm coordinator.
//!
//! It will track which peers hold which pieces of which admitted blobs and
//! choose parents for peers (see DESIGN.md). Until the swarm lands it only
//! serves its health endpoint, so `customs up` and `customs scheduler` can
//! already be deployed and supervised as the final shape.
#![forbid(unsafe_code)]

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the scheduler on a bound listener until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = Router::new().route("/healthy", get(|| async { "ok" }));
    tracing::info!(addr = %listener.local_addr()?, "scheduler serving (health only until the swarm lands)");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
