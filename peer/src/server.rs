//! Wiring: local store, the gateway and the swarm as sources, the OCI routes
//! and the piece server.

use crate::admission::{NodeAdmission, Refusals};
use crate::config::{PeerConfig, PeerConfigError};
use crate::gateway_source::GatewaySource;
use crate::revision::RevisionTracker;
use crate::swarm::members::{Gateways, Schedulers};
use crate::swarm::piece_file::PieceFile;
use crate::swarm::piece_server::{self, PieceProvider};
use crate::swarm::{Swarm, SwarmConfig};
use customs_mirror::http::{RegistryResolver, router};
use customs_mirror::rate::RateLimiter;
use customs_mirror::{FetchedManifest, Mirror, MirrorConfig, Source, UnboundBlobs};
use customs_protocol::piece_manifest::TrustedGatewayKeys;
use customs_protocol::{Digest, ImageName, Reference, RegistryHost};
use customs_store::inflight::{AssembledBlob, ByteStream, SourceBody};
use customs_store::{BlobStore, FetchFailure, StoreConfig, StoreError};
use customs_tls::{RefusedConnections, Role, TlsIdentity, TlsPaths};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a swarm peer waits for the gateway to have a cold blob ready
/// (fetched whole, verified, piece manifest signed): a 9 GB layer at 5 MB/s,
/// and far beyond the gateway's own per-read upstream bounds.
pub const COLD_TASK_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

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
    /// TLS material unusable.
    #[error(transparent)]
    Tls(#[from] customs_tls::TlsError),
    /// Trusted gateway keys unusable.
    #[error("gateway keys: {0}")]
    Keys(String),
    /// The scheduler endpoint is unusable.
    #[error("scheduler: {0}")]
    Scheduler(#[from] tonic::transport::Error),
    /// Serving failed.
    #[error("peer server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Manifests from the gateway; blobs from the swarm when it is configured,
/// else whole from the gateway.
pub struct PeerSource {
    gateway: GatewaySource,
    swarm: Option<Arc<Swarm>>,
}

impl Source for PeerSource {
    async fn manifest(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> Result<FetchedManifest, FetchFailure> {
        self.gateway.manifest(image, reference).await
    }

    fn blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static {
        let opened = self.open_blob(image, digest);
        async move {
            Ok(match opened.await? {
                Opened::Pieces(pf) => pf.ordered_stream(),
                Opened::Whole(s) => s,
            })
        }
    }

    /// Swarm downloads hand the store their piece file: every piece was
    /// checked against the gateway-signed manifest, so the store links the
    /// file instead of hashing and writing the blob again.
    fn blob_body(
        &self,
        image: &ImageName,
        digest: &Digest,
        _size: u64,
    ) -> impl std::future::Future<Output = Result<SourceBody, FetchFailure>> + Send + 'static {
        let opened = self.open_blob(image, digest);
        async move {
            Ok(match opened.await? {
                Opened::Pieces(pf) => SourceBody::Assembled(pf as Arc<dyn AssembledBlob>),
                Opened::Whole(s) => SourceBody::Stream(s),
            })
        }
    }

    async fn blob_size(&self, image: &ImageName, digest: &Digest) -> Result<u64, FetchFailure> {
        self.gateway.blob_size(image, digest).await
    }
}

/// A blob as the peer's source opened it.
enum Opened {
    /// The swarm's piece file (verified piece by piece).
    Pieces(Arc<PieceFile>),
    /// The gateway's whole-blob stream (the store hashes it).
    Whole(ByteStream),
}

impl PeerSource {
    /// Opens a blob from the swarm when there is one, else whole from the
    /// gateway. Detached from the request, so it owns what it needs.
    fn open_blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<Opened, FetchFailure>> + Send + 'static {
        let swarm = self.swarm.clone();
        let whole = self.gateway.blob(image, digest);
        let image = image.clone();
        let digest = digest.clone();
        async move {
            match swarm {
                Some(s) => Ok(Opened::Pieces(s.download(&image, &digest).await?)),
                None => Ok(Opened::Whole(whole.await?)),
            }
        }
    }
}

/// The mirror a peer runs.
pub type PeerMirror = Mirror<PeerSource, NodeAdmission>;

/// The swarm side of a peer: the engine, the identity its piece server
/// presents, the upload limiter and the schedulers it learns.
type SwarmParts = (
    Arc<Swarm>,
    Arc<TlsIdentity>,
    Arc<RateLimiter>,
    Arc<Schedulers>,
);

/// A configured peer.
pub struct Peer {
    mirror: Arc<PeerMirror>,
    default_registry: RegistryHost,
    swarm: Option<SwarmParts>,
    /// Refused piece-server connections (no valid client certificate).
    pub refused: Arc<RefusedConnections>,
    upload_slots: usize,
    upload_queue: usize,
    gateway: GatewaySource,
    revisions: Arc<RevisionTracker>,
    refusals: Arc<Refusals>,
    /// The `node` and `zone` labels of its metrics (`node` is the peer id,
    /// or `peer` without one).
    metric_labels: (String, String),
}

impl Peer {
    /// Builds the peer from configuration.
    pub fn build(cfg: &PeerConfig) -> Result<Self, PeerError> {
        cfg.validate()?;
        let gateways = Arc::new(
            Gateways::new(
                cfg.gateway
                    .url
                    .iter()
                    .chain(&cfg.gateway.fallback)
                    .cloned()
                    .collect(),
            )
            .in_zone(&cfg.swarm.zone),
        );
        let default_registry = cfg
            .default_registry
            .parse()
            .map_err(|e| PeerConfigError::Invalid(format!("default_registry: {e}")))?;
        let store = BlobStore::open(StoreConfig {
            root: cfg.data_dir.join("store"),
            max_bytes: cfg.store.max_cache_bytes.unwrap_or(u64::MAX),
        })?;
        if cfg.swarm.scheduler.is_some() {
            // A swarm download opens only once the gateway has fetched,
            // verified and signed the whole cold blob (bounded by the
            // gateway's own upstream timeouts), which for a large layer
            // takes longer than the chunk idle timeout.
            store.set_source_open_timeout(COLD_TASK_WAIT);
        }
        let identity = match (&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key) {
            (Some(ca), Some(cert), Some(key)) => Some(Arc::new(TlsIdentity::load(&TlsPaths {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })?)),
            _ => None,
        };
        // Two clients, each accepting only the role it talks to: the gateway
        // (manifests, tasks) must hold the gateway role; a piece parent is a
        // peer or the gateway's seed. A peer certificate never passes as
        // the gateway, whatever address it answers on.
        let client = |roles: &[Role]| -> Result<reqwest::Client, PeerError> {
            let b = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
            Ok(match &identity {
                Some(id) => b.use_preconfigured_tls(id.client_config_for_any(roles)?),
                None => b,
            }
            .build()?)
        };
        let gateway_http = client(&[Role::Gateway])?;
        let peers_http = client(&[Role::Peer, Role::Gateway])?;
        let limiter = RateLimiter::new(cfg.swarm.upload_limit);
        let swarm = match (&cfg.swarm.scheduler, &identity) {
            (Some(url), Some(id)) => {
                let pems: Vec<String> = cfg
                    .gateway
                    .keys
                    .iter()
                    .map(|p| {
                        std::fs::read_to_string(p)
                            .map_err(|e| PeerError::Keys(format!("{}: {e}", p.display())))
                    })
                    .collect::<Result<_, _>>()?;
                let keys = TrustedGatewayKeys::from_pems(pems.iter().map(String::as_str))
                    .map_err(|e| PeerError::Keys(e.to_string()))?;
                let schedulers = Arc::new(
                    Schedulers::new(Some(url), id.tonic_client_for(Role::Scheduler))
                        .map_err(|e| PeerConfigError::Invalid(e.to_string()))?,
                );
                let peer_id = cfg.peer_id.clone().unwrap_or_default();
                let swarm = Swarm::new(
                    SwarmConfig {
                        peer_id: peer_id.clone(),
                        upload_addr: cfg.swarm.upload_addr.clone().unwrap_or_default(),
                        upload_capacity: cfg.swarm.upload_limit,
                        zone: cfg.swarm.zone.clone(),
                        rack: cfg.swarm.rack.clone(),
                        pieces_dir: cfg.data_dir.join("pieces"),
                    },
                    crate::swarm::members::Members {
                        schedulers: schedulers.clone(),
                        gateways: gateways.clone(),
                    },
                    gateway_http.clone(),
                    peers_http,
                    keys,
                    store.clone(),
                    limiter.clone(),
                );
                Some((swarm, id.clone(), limiter, schedulers))
            }
            _ => None,
        };
        let revisions = RevisionTracker::load(store.clone());
        let gateway_source =
            GatewaySource::over(gateways, gateway_http).with_revisions(revisions.clone());
        let refusals: Arc<Refusals> = Arc::default();
        let source = PeerSource {
            gateway: gateway_source.clone(),
            swarm: swarm.as_ref().map(|(s, ..)| s.clone()),
        };
        let admission =
            NodeAdmission::new(gateway_source.clone(), revisions.clone(), refusals.clone());
        let mirror = Mirror::new(
            store,
            Arc::new(source),
            Arc::new(admission),
            MirrorConfig {
                unbound_blobs: UnboundBlobs::AskSource,
                allow_ttl: Some(cfg.policy.admission_ttl),
                fail_static_max: cfg.policy.admission_stale_max,
                ..MirrorConfig::default()
            },
        );
        Ok(Peer {
            mirror: Arc::new(mirror),
            default_registry,
            swarm,
            refused: Arc::default(),
            upload_slots: cfg.swarm.upload_slots,
            upload_queue: cfg.swarm.upload_queue,
            gateway: gateway_source,
            revisions,
            refusals,
            metric_labels: (
                cfg.peer_id.clone().unwrap_or_else(|| "peer".to_owned()),
                cfg.swarm.zone.clone(),
            ),
        })
    }

    /// The local store (for gc).
    pub fn store(&self) -> &Arc<BlobStore> {
        self.mirror.store()
    }

    /// Serves containerd's pull API on `listener` and, in swarm mode, pieces
    /// over mTLS on `upload`, until `sup` shuts down; then drains open
    /// transfers up to its deadline (see [`customs_runtime::Supervisor`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        upload: Option<TcpListener>,
        sup: customs_runtime::Supervisor,
    ) -> Result<(), PeerError> {
        let shutdown = sup.shutdown_token();
        let limits = customs_tls::ListenerLimits::default().with_drain(sup.drain());
        let store = self.mirror.store().clone();
        let app = router(
            self.mirror.clone(),
            RegistryResolver {
                default: self.default_registry.clone(),
            },
            None,
        );
        let swarm_for_metrics = self.swarm.as_ref().map(|(s, ..)| s.clone());
        let refusals = self.refusals.clone();
        let labels = Arc::new(self.metric_labels.clone());
        let app =
            app.route(
                "/metrics",
                axum::routing::get(move || {
                    let swarm = swarm_for_metrics.clone();
                    let refusals = refusals.clone();
                    let labels = labels.clone();
                    async move {
                        crate::metrics::render(swarm.as_ref(), &refusals, &labels.0, &labels.1)
                    }
                }),
            );
        sup.spawn(
            "policy revision poll",
            poll_revision(
                self.gateway.clone(),
                self.revisions.clone(),
                shutdown.clone(),
            ),
        );
        let swarm_for_status = self.swarm.as_ref().map(|(s, ..)| s.clone());
        let app = app.route(
            "/customs/v1/status",
            axum::routing::get(move || {
                let swarm = swarm_for_status.clone();
                async move {
                    let (received, uploaded) =
                        swarm.as_ref().map(|s| s.traffic()).unwrap_or_default();
                    axum::Json(serde_json::json!({
                        "peer_id": swarm.as_ref().map(|s| s.peer_id().to_owned()),
                        "received_bytes_by_parent": received,
                        "uploaded_bytes": uploaded,
                        "cross_zone_bytes": swarm.as_ref().map_or(0, |s| s.cross_zone_bytes()),
                    }))
                }
            }),
        );
        tracing::info!(addr = %listener.local_addr()?, swarm = self.swarm.is_some(), "peer serving the OCI pull API");
        // Bounded like every other listener: anything on the node can
        // connect here, and running out of descriptors would also stop the
        // piece server in this process.
        let oci = customs_tls::serve_http(
            listener,
            customs_runtime::trace_context::traced(app),
            self.refused.clone(),
            limits,
            shutdown.clone(),
        );
        match (self.swarm, upload) {
            (Some((swarm, identity, limiter, schedulers)), Some(upload)) => {
                sup.spawn(
                    "fleet refresh",
                    learn_fleet(self.gateway.clone(), schedulers, shutdown.clone()),
                );
                tracing::info!(addr = %upload.local_addr()?, "peer serving pieces over mTLS");
                let provider = PieceProvider {
                    store: self.mirror.store().clone(),
                    partials: Some(swarm.clone() as Arc<dyn piece_server::PartialPieces>),
                    limiter,
                    slots: Arc::new(tokio::sync::Semaphore::new(self.upload_slots)),
                    queue: crate::swarm::piece_server::UploadQueue::new(self.upload_queue),
                    geometry: Default::default(),
                };
                let pieces = customs_tls::serve_tls_with(
                    upload,
                    identity.server_config()?,
                    piece_server::router(provider)
                        .merge(crate::preheat::router(self.mirror.clone())),
                    self.refused.clone(),
                    limits,
                    shutdown.clone(),
                );
                sup.spawn("swarm announce", swarm.announce_loop(shutdown.clone()));
                let (a, b) = tokio::join!(oci, pieces);
                a?;
                b?;
            }
            _ => oci.await?,
        }
        // Fetches from the gateway under way finish and are recorded,
        // within the drain deadline.
        sup.within_drain("fetches from the gateway", store.fetches_done())
            .await;
        Ok(())
    }
}

/// Polls the gateway's policy revision (every response also carries it) so
/// a new revision reaches this node within two of the gateway's policy poll
/// intervals, even when nothing is being pulled.
async fn poll_revision(
    gateway: GatewaySource,
    revisions: Arc<RevisionTracker>,
    shutdown: CancellationToken,
) {
    loop {
        if let Err(e) = gateway.poll_revision().await {
            tracing::debug!(error = %e, "gateway revision poll failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(revisions.poll_period()) => {}
        }
    }
}

/// How often a swarm peer asks its gateway for the live fleet.
pub const FLEET_REFRESH: std::time::Duration = std::time::Duration::from_secs(5);

/// Learns the live gateways and schedulers from whichever gateway answers,
/// every [`FLEET_REFRESH`]. A gateway outside a fleet answers 404: the
/// configured gateway and scheduler stay the only ones.
async fn learn_fleet(
    gateway: GatewaySource,
    schedulers: Arc<Schedulers>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(FLEET_REFRESH);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match gateway.fleet().await {
            Ok(doc) => {
                gateway.gateways().learn(&doc);
                schedulers.learn(&doc);
            }
            Err(e) => tracing::debug!(error = %e.message, "fleet not learned"),
        }
    }
}
