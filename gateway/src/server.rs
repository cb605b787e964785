//! Wiring: store, upstreams, admission and the OCI routes.

use crate::admission::AllowAllAudited;
use crate::config::{ConfigError, GatewayConfig};
use crate::credentials::{Credentials, CredentialsError};
use crate::upstream::{UpstreamError, UpstreamSettings, Upstreams, registry_identity};
use customs_mirror::http::{RegistryResolver, router};
use customs_mirror::{Mirror, MirrorConfig, UnboundBlobs};
use customs_protocol::RegistryHost;
use customs_store::audit::{AuditError, AuditLog};
use customs_store::{BlobStore, StoreConfig, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Why the gateway could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad credentials file.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// Bad upstream.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// Serving failed.
    #[error("gateway server: {0}")]
    Serve(#[from] std::io::Error),
}

/// The mirror type the gateway runs.
pub type GatewayMirror = Mirror<Upstreams, AllowAllAudited>;

/// A configured gateway, ready to serve.
pub struct Gateway {
    mirror: Arc<GatewayMirror>,
    default_registry: RegistryHost,
}

impl Gateway {
    /// Builds the gateway from validated configuration.
    pub fn build(cfg: &GatewayConfig) -> Result<Self, GatewayError> {
        cfg.validate()?;
        let mut entries = Vec::new();
        let default_registry = match &cfg.upstream {
            Some(url) => {
                let id = registry_identity(url)?;
                entries.push((id.clone(), url.clone()));
                id
            }
            None => {
                let (host, _) = cfg
                    .registries
                    .iter()
                    .next()
                    .ok_or_else(|| ConfigError::Invalid("no upstream".into()))?;
                host.parse()
                    .map_err(|e| ConfigError::Invalid(format!("registry {host:?}: {e}")))?
            }
        };
        for (host, url) in &cfg.registries {
            let id: RegistryHost = host
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("registry {host:?}: {e}")))?;
            entries.push((id, url.clone()));
        }
        let creds = match &cfg.docker_config {
            Some(p) => Credentials::load(p)?,
            None => Credentials::default(),
        };
        let extra_ca_pem = match &cfg.extra_ca {
            Some(p) => Some(std::fs::read(p).map_err(|source| UpstreamError::Ca {
                path: p.display().to_string(),
                source,
            })?),
            None => None,
        };
        let upstreams = Upstreams::new(
            &entries,
            &creds,
            &UpstreamSettings {
                extra_ca_pem,
                connect_timeout: None,
            },
        )?;
        let store = BlobStore::open(StoreConfig {
            root: cfg.data_dir.join("store"),
            max_bytes: cfg.max_cache_bytes.unwrap_or(u64::MAX),
        })?;
        let audit = AuditLog::open(&cfg.data_dir.join("audit/audit.jsonl"))?;
        let mirror = Mirror::new(
            store,
            Arc::new(upstreams),
            Arc::new(AllowAllAudited::new(audit)),
            MirrorConfig {
                tag_ttl: Duration::from_secs(cfg.tag_ttl_secs),
                stale_window: Duration::from_secs(cfg.stale_window_secs),
                unbound_blobs: UnboundBlobs::Refuse,
                ..MirrorConfig::default()
            },
        );
        Ok(Gateway {
            mirror: Arc::new(mirror),
            default_registry,
        })
    }

    /// The mirror (for gc and tests).
    pub fn mirror(&self) -> &Arc<GatewayMirror> {
        &self.mirror
    }

    /// The registry requests without `ns` mean.
    pub fn default_registry(&self) -> &RegistryHost {
        &self.default_registry
    }

    /// Serves the OCI pull API on an already bound listener until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), GatewayError> {
        let app = router(
            self.mirror.clone(),
            RegistryResolver {
                default: self.default_registry.clone(),
            },
        );
        tracing::info!(addr = %listener.local_addr()?, default_registry = %self.default_registry, "gateway serving the OCI pull API");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        Ok(())
    }
}
