//! Operator-facing status and metrics on the gateway's OCI listener.
//!
//! The metrics text is written by hand for the two counters that exist so
//! far; the full Prometheus registry (prometheus-client) arrives with the
//! metrics issue.

use axum::Router;
use axum::routing::get;
use customs_mirror::rate::RateLimiter;
use customs_tls::RefusedConnections;
use std::sync::Arc;

/// `/customs/v1/status` (JSON) and `/metrics` (Prometheus text).
pub fn routes(limiter: Arc<RateLimiter>, refused: Arc<RefusedConnections>) -> Router {
    let (l2, r2) = (limiter.clone(), refused.clone());
    Router::new()
        .route(
            "/customs/v1/status",
            get(move || async move {
                axum::Json(serde_json::json!({
                    "served_bytes": limiter.served(),
                    "active_transfers": limiter.active(),
                    "upload_limit": limiter.rate(),
                    "refused_connections": refused.get(),
                }))
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                format!(
                    "# TYPE customs_served_bytes counter\ncustoms_served_bytes_total{{node=\"gateway\"}} {}\n\
                     # TYPE customs_refused_connections counter\ncustoms_refused_connections_total{{node=\"gateway\"}} {}\n",
                    l2.served(),
                    r2.get()
                )
            }),
        )
}
