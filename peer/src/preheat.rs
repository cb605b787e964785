//! `POST /customs/v1/preheat` on the peer's mTLS endpoint: the gateway
//! orders this node to pull an admitted image into its own store now (from
//! the swarm, every piece checked), so a later pull by containerd is local.
//! Only a caller whose certificate carries the gateway role may order it.

use crate::server::PeerMirror;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use customs_mirror::warm::{PlatformFilter, warm};
use customs_protocol::{ImageName, Reference};
use customs_tls::{PeerCertificate, Role, has_role};
use serde::Deserialize;
use std::sync::Arc;

/// What the gateway asks for.
#[derive(Debug, Deserialize)]
pub struct PreheatOrder {
    /// The image's registry host.
    pub registry: String,
    /// Its repository.
    pub repository: String,
    /// The manifest digest the gateway admitted.
    pub digest: String,
    /// `os/arch[/variant]`, or every platform.
    #[serde(default)]
    pub platform: Option<String>,
    /// A tag the gateway resolved to `digest` for this preheat: resolved
    /// here too (through the gateway), so this node answers it from its own
    /// tag cache when the gateway or the upstream is gone later.
    #[serde(default)]
    pub tag: Option<String>,
}

/// The route, for the mTLS router.
pub fn router(mirror: Arc<PeerMirror>) -> Router {
    Router::new()
        .route("/customs/v1/preheat", axum::routing::post(preheat))
        .with_state(mirror)
}

async fn preheat(
    State(mirror): State<Arc<PeerMirror>>,
    cert: Option<Extension<PeerCertificate>>,
    Json(order): Json<PreheatOrder>,
) -> Response {
    if !cert.is_some_and(|Extension(c)| has_role(&c.0, Role::Gateway)) {
        tracing::warn!("preheat refused: caller is not a gateway");
        return (StatusCode::FORBIDDEN, "only a gateway orders a preheat").into_response();
    }
    let parsed = (|| -> Result<(ImageName, Reference), String> {
        let image = ImageName {
            registry: order.registry.parse().map_err(|e| format!("{e}"))?,
            repository: order.repository.parse().map_err(|e| format!("{e}"))?,
        };
        let digest = order.digest.parse().map_err(|e| format!("{e}"))?;
        Ok((image, Reference::Digest(digest)))
    })();
    let (image, reference) = match parsed {
        Ok(x) => x,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let filter = order
        .platform
        .clone()
        .map_or(PlatformFilter::All, PlatformFilter::Only);
    tracing::info!(%image, digest = %order.digest, platform = ?order.platform, "preheat ordered");
    match warm(&mirror, &image, &reference, &filter).await {
        Ok(report) => {
            tracing::info!(%image, blobs = report.blobs, bytes = report.bytes, "preheat done");
            if let Some(tag) = order.tag.as_deref().and_then(|t| t.parse().ok()) {
                // The tag cache holds what the gateway answers; a mismatch
                // is only reported.
                match mirror.manifest(&image, &Reference::Tag(tag)).await {
                    Ok(m) if m.digest.to_string() == order.digest => {
                        tracing::info!(%image, digest = %order.digest, "preheat warmed the tag");
                    }
                    Ok(m) => {
                        tracing::warn!(%image, ordered = %order.digest, gateway = %m.digest, "the tag resolves to another digest than the preheat's");
                    }
                    Err(e) => {
                        tracing::warn!(%image, error = %e, "the preheated tag could not be resolved")
                    }
                }
            }
            Json(report).into_response()
        }
        Err(e) => {
            tracing::warn!(%image, error = %e, "preheat failed");
            (StatusCode::BAD_GATEWAY, e.to_string()).into_response()
        }
    }
}
