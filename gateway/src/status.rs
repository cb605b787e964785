//! Operator-facing status and metrics on the gateway's OCI listener.
//!
//! `/metrics` here is the same registry the API listener serves.

use crate::admission::GatewayAdmission;
use crate::metrics::Metrics;
use crate::upstream::Upstreams;
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
    admission: Arc<GatewayAdmission>,
    upstreams: Arc<Upstreams>,
    owners: Option<Arc<crate::fleet_source::BlobOwners>>,
) -> Router {
    Router::new()
        .route(
            "/customs/v1/status",
            get(move || async move {
                axum::Json(serde_json::json!({
                    "node": "gateway",
                    "served_bytes": limiter.served(),
                    "upstream_bytes": upstreams.fetched_bytes(),
                    "active_transfers": limiter.active(),
                    "upload_limit": limiter.rate(),
                    "refused_connections": refused.get(),
                    "policy_revision": admission.policy_revision(),
                    // In a fleet: the gateways this one routes blobs over
                    // (its view of the fleet) and what they sent it.
                    "fleet": owners.as_ref().map(|o| serde_json::json!({
                        "id": o.me().as_str(),
                        "gateways": o.live_ids(),
                        "fleet_bytes": o.fleet_bytes(),
                    })),
                }))
            }),
        )
        .route("/metrics", get(move || async move { metrics.render() }))
}
