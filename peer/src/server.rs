//! Wiring: local store, gateway source and the OCI routes.

use crate::config::{PeerConfig, PeerConfigError};
use crate::gateway_source::GatewaySource;
use customs_mirror::http::{RegistryResolver, router};
use customs_mirror::{
    Admission, AdmissionRequest, Decision, Mirror, MirrorConfig, UnboundBlobs, Verdict,
};
use customs_protocol::RegistryHost;
use customs_store::{BlobStore, StoreConfig, StoreError};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the peer could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] PeerConfigError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("peer HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// Serving failed.
    #[error("peer server: {0}")]
    Serve(#[from] std::io::Error),
}

/// The peer's admission: the gateway is the policy gate and only serves
/// manifests it admitted for the requested repository, so a manifest the
/// gateway sent is admitted here for that same repository, and nothing else.
pub struct AdmittedByGateway;

impl Admission for AdmittedByGateway {
    fn revision(&self) -> String {
        "gateway".to_owned()
    }

    async fn admit(&self, _req: AdmissionRequest<'_>) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            mode: "gateway".to_owned(),
            reasons: vec!["admitted by the gateway".to_owned()],
            revision: "gateway".to_owned(),
        }
    }
}

/// A configured peer.
pub struct Peer {
    mirror: Arc<Mirror<GatewaySource, AdmittedByGateway>>,
    default_registry: RegistryHost,
}

impl Peer {
    /// Builds the peer from configuration.
    pub fn build(cfg: &PeerConfig) -> Result<Self, PeerError> {
        cfg.validate()?;
        let gateway = cfg.gateway.as_deref().unwrap_or_default();
        let default_registry = cfg
            .default_registry
            .parse()
            .map_err(|e| PeerConfigError::Invalid(format!("default_registry: {e}")))?;
        let store = BlobStore::open(StoreConfig {
            root: cfg.data_dir.join("store"),
            max_bytes: cfg.max_cache_bytes.unwrap_or(u64::MAX),
        })?;
        let mirror = Mirror::new(
            store,
            Arc::new(GatewaySource::new(gateway)?),
            Arc::new(AdmittedByGateway),
            MirrorConfig {
                unbound_blobs: UnboundBlobs::AskSource,
                ..MirrorConfig::default()
            },
        );
        Ok(Peer {
            mirror: Arc::new(mirror),
            default_registry,
        })
    }

    /// The local store (for gc).
    pub fn store(&self) -> &Arc<BlobStore> {
        self.mirror.store()
    }

    /// Serves containerd's pull API on a bound listener until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), PeerError> {
        let app = router(
            self.mirror.clone(),
            RegistryResolver {
                default: self.default_registry.clone(),
            },
        );
        tracing::info!(addr = %listener.local_addr()?, "peer serving the OCI pull API");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        Ok(())
    }
}
