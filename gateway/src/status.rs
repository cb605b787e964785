//! Operator-facing status and metrics on the gateway's OCI listener.
//!
//! `/metrics` here is the same registry the API listener serves.

use crate::metrics::Metrics;
use axum::Router;
use axum::routing::get;
use customs_mirror::rate::RateLimiter;
use customs_tls::RefusedConnections;
use std::sync::Arc;

/// `/customs/v1/status` (JSON) and `/metrics` (Prometheus text).
pub fn routes(
    limiter: Arc<RateLimiter>,
    refused: Arc<RefusedConnections>,
    metrics: Arc<Metrics>,
) -> Router {
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
        .route("/metrics", get(move || async move { metrics.render() }))
}
