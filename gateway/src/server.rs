//! Wiring: store, upstreams, admission, the OCI routes and the seed.

use crate::admission::GatewayAdmission;
use crate::audit_export::{Exporter, Format, Sink};
use crate::config::{ConfigError, GatewayConfig};
use crate::credentials::{Credentials, CredentialsError};
use crate::fleet_source::{BlobOwners, FleetSource};
use crate::metrics::Metrics;
use crate::policy_source::{Loaded, PolicySource, deny_all, load, reload_loop};
use crate::preheat::{Preheater, Scope};
use crate::registry_client::Timeouts;
use crate::seed::Seed;
use crate::upstream::{UpstreamError, UpstreamSettings, Upstreams, registry_identity};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use customs_mirror::http::{RegistryResolver, oci_error, router};
use customs_mirror::rate::RateLimiter;
use customs_mirror::{Mirror, MirrorConfig, UnboundBlobs};
use customs_protocol::piece_manifest::{FetchId, GatewayKey};
use customs_protocol::{Digest, ImageName, RegistryHost};
use customs_store::audit::{AuditError, AuditLog};
use customs_store::{BlobStore, StoreConfig, StoreError};
use customs_swarm::piece_server::{self, PieceProvider};
use customs_tls::{ListenerLimits, RefusedConnections, Role, TlsIdentity, TlsPaths};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

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
    /// TLS material unusable.
    #[error(transparent)]
    Tls(#[from] customs_tls::TlsError),
    /// The signing key is unusable.
    #[error("gateway signing key {path}: {detail}")]
    Key {
        /// Which file.
        path: String,
        /// Why.
        detail: String,
    },
    /// The scheduler endpoint is unusable.
    #[error("scheduler: {0}")]
    Scheduler(#[from] tonic::transport::Error),
    /// Serving failed.
    #[error("gateway server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Where and how the operator API is served.
struct ApiSettings {
    addr: std::net::SocketAddr,
    token: String,
    webhook_scope: Scope,
}

/// The mirror type the gateway runs.
pub type GatewayMirror = Mirror<FleetSource, GatewayAdmission>;

/// A configured gateway, ready to serve.
pub struct Gateway {
    mirror: Arc<GatewayMirror>,
    admission: Arc<GatewayAdmission>,
    policy_source: Option<(PolicySource, Duration)>,
    metrics: Arc<Metrics>,
    upstreams: Arc<Upstreams>,
    export: GatewayConfig,
    api: Option<ApiSettings>,
    aggregate_every: Duration,
    default_registry: RegistryHost,
    limiter: Arc<RateLimiter>,
    swarm: Option<(Arc<Seed>, Arc<TlsIdentity>)>,
    /// The OCI endpoint's HTTPS config (`listen_tls_cert`), else plain HTTP.
    oci_tls: Option<Arc<rustls::ServerConfig>>,
    /// Refused connections on every listener (failed or timed-out TLS
    /// handshakes, connections over the cap).
    pub refused: Arc<RefusedConnections>,
    /// The fleet's Redis and this gateway's id in it (`fleet_redis`).
    fleet: Option<(
        Arc<customs_fleet::LazyFleet>,
        Option<customs_fleet::MemberId>,
    )>,
    /// The live gateways of the fleet, refreshed while serving, when blobs
    /// are routed to their owners.
    gateway_view: Option<Arc<customs_fleet::MemberView>>,
}

/// Loads the signing key, creating it (and its `.pub`) when missing. The
/// key is written 0600 (missing directories 0700); an existing key file
/// that group or others can access is refused, naming the `chmod` that
/// fixes it: whoever reads it can sign piece manifests and audit
/// checkpoints. The `.pub` is public (default mode).
pub fn load_or_create_key(path: &std::path::Path) -> Result<GatewayKey, GatewayError> {
    let err = |detail: String| GatewayError::Key {
        path: path.display().to_string(),
        detail,
    };
    if path.exists() {
        let pem = customs_tls::read_private(path).map_err(|e| err(e.to_string()))?;
        let pem = String::from_utf8(pem).map_err(|e| err(e.to_string()))?;
        return GatewayKey::from_pem(&pem).map_err(|e| err(e.to_string()));
    }
    let key = GatewayKey::generate().map_err(|e| err(e.to_string()))?;
    let pem = key.to_pem().map_err(|e| err(e.to_string()))?;
    customs_tls::write_private(path, pem.as_bytes()).map_err(|e| err(e.to_string()))?;
    std::fs::write(
        path.with_extension("pub"),
        key.public_pem().map_err(|e| err(e.to_string()))?,
    )
    .map_err(|e| err(e.to_string()))?;
    tracing::info!(key_id = key.id(), path = %path.display(), "created a gateway signing key");
    Ok(key)
}

impl Gateway {
    /// Builds the gateway from validated configuration.
    pub fn build(cfg: &GatewayConfig) -> Result<Self, GatewayError> {
        // Tokens given as files are read once, here (validated first).
        let cfg = &cfg.with_token_files()?;
        let mut entries = Vec::new();
        let default_registry = match &cfg.upstream.url {
            Some(url) => {
                let id = registry_identity(url)?;
                entries.push((id.clone(), url.clone()));
                id
            }
            None => {
                let (host, _) = cfg
                    .upstream
                    .registries
                    .iter()
                    .next()
                    .ok_or_else(|| ConfigError::Invalid("no upstream".into()))?;
                host.parse()
                    .map_err(|e| ConfigError::Invalid(format!("registry {host:?}: {e}")))?
            }
        };
        for (host, url) in &cfg.upstream.registries {
            let id: RegistryHost = host
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("registry {host:?}: {e}")))?;
            entries.push((id, url.clone()));
        }
        let creds = match &cfg.upstream.docker_config {
            Some(p) => Credentials::load(p)?,
            None => Credentials::default(),
        };
        let extra_ca_pem = match &cfg.upstream.extra_ca {
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
                timeouts: Timeouts::from_config(cfg),
            },
        )?;
        let store = BlobStore::open(StoreConfig {
            root: cfg.data_dir.join("store"),
            max_bytes: cfg.store.max_cache_bytes.unwrap_or(u64::MAX),
        })?;
        store.set_source_idle_timeout(Timeouts::from_config(cfg).store_backstop());
        // The gateway key signs piece manifests and the audit log's
        // checkpoints; it is created on first start.
        let key_path = cfg
            .swarm
            .signing_key
            .clone()
            .unwrap_or_else(|| cfg.data_dir.join("gateway-key.pem"));
        let audit_key = Arc::new(load_or_create_key(&key_path)?);
        let audit =
            AuditLog::open_with_key(&cfg.data_dir.join("audit/audit.jsonl"), Some(audit_key))?;
        let upstreams = Arc::new(upstreams);
        let limiter = RateLimiter::new(cfg.swarm.upload_limit);
        let refused: Arc<RefusedConnections> = Arc::default();
        let metrics = Metrics::new(
            limiter.clone(),
            refused.clone(),
            upstreams.clone(),
            cfg.fleet.id.as_deref().unwrap_or("gateway"),
            &cfg.fleet.zone,
        );
        let policy_source = cfg.policy_source();
        let admission = match &policy_source {
            None => GatewayAdmission::allow_all(audit),
            Some(source) => {
                let set = match load(source) {
                    Loaded::Good(set) => set,
                    Loaded::Refused { revision, errors } => {
                        tracing::error!(source = %source, revision = ?revision, errors = %errors,
                            "policy source refused: denying everything until a revision validates");
                        deny_all()
                    }
                };
                GatewayAdmission::with_policy(audit, set, upstreams.clone())
            }
        };
        let admission = Arc::new(admission.with_metrics(metrics.clone()));
        let fleet_id: Option<customs_fleet::MemberId> = match &cfg.fleet.id {
            Some(id) => Some(
                id.parse()
                    .map_err(|e: customs_fleet::member::BadMemberId| {
                        ConfigError::Invalid(format!("gateway_id: {e}"))
                    })?,
            ),
            None => None,
        };
        let swarm = match (
            &cfg.swarm.scheduler,
            &cfg.tls.ca,
            &cfg.tls.cert,
            &cfg.tls.key,
        ) {
            (Some(url), Some(ca), Some(cert), Some(key)) => {
                let identity = Arc::new(TlsIdentity::load(&TlsPaths {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                })?);
                let signing = load_or_create_key(
                    &cfg.swarm
                        .signing_key
                        .clone()
                        .unwrap_or_else(|| cfg.data_dir.join("gateway-key.pem")),
                )?;
                let schedulers = customs_swarm::members::Schedulers::new(
                    Some(url),
                    identity.tonic_client_for(Role::Scheduler),
                )
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
                // In a fleet each gateway seeds under its member id, so the
                // schedulers tell its seed from the others'.
                let seed = Seed::new(
                    signing,
                    cfg.fleet
                        .redis
                        .as_ref()
                        .and(fleet_id.as_ref())
                        .map(|id| id.to_string()),
                    Arc::new(schedulers),
                    cfg.swarm.upload_addr.clone().unwrap_or_default(),
                    cfg.swarm.upload_limit,
                )
                .in_zone(&cfg.fleet.zone);
                Some((Arc::new(seed), identity))
            }
            _ => None,
        };
        // In a fleet with peer endpoints, blobs are routed to their owners,
        // who must prove they are the member asked for: the id is the node
        // name in this gateway's certificate.
        let (source, gateway_view) = match (&cfg.fleet.redis, &swarm) {
            (Some(_), Some((_, identity))) => {
                let id = fleet_id.clone().ok_or_else(|| {
                    ConfigError::Invalid(
                        "fleet_redis with a peer endpoint needs gateway_id: the node name in this gateway's certificate (<id>.node.customs.internal)".into(),
                    )
                })?;
                if !identity.holds(Role::Gateway, id.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "gateway_id {id}: the gateway certificate does not name {id}.node.customs.internal (other gateways would refuse it)"
                    ))
                    .into());
                }
                let view = customs_fleet::MemberView::new(customs_fleet::MemberRole::Gateway);
                let owners = BlobOwners::new(
                    id,
                    cfg.fleet.zone.clone(),
                    view.clone(),
                    identity.clone(),
                    Timeouts::from_config(cfg),
                );
                (
                    FleetSource::routed(upstreams.clone(), Arc::new(owners)),
                    Some(view),
                )
            }
            _ => (FleetSource::direct(upstreams.clone()), None),
        };
        let mirror = Mirror::new(
            store,
            Arc::new(source),
            admission.clone(),
            MirrorConfig {
                tag_ttl: cfg.upstream.tag_ttl,
                stale_window: cfg.upstream.stale_window,
                unbound_blobs: UnboundBlobs::Refuse,
                ..MirrorConfig::default()
            },
        );
        let oci_tls = match (&cfg.tls.listen_cert, &cfg.tls.listen_key) {
            (Some(cert), Some(key)) => Some(customs_tls::serving_config(cert, key)?),
            _ => None,
        };
        Ok(Gateway {
            mirror: Arc::new(mirror),
            admission,
            policy_source: policy_source.map(|s| (s, cfg.policy.poll.max(Duration::from_secs(1)))),
            metrics,
            upstreams: upstreams.clone(),
            export: cfg.clone(),
            aggregate_every: cfg.audit.aggregate.max(Duration::from_secs(1)),
            api: match (&cfg.api.listen, &cfg.api.token) {
                (Some(addr), Some(token)) => Some(ApiSettings {
                    addr: *addr,
                    token: token.expose().to_owned(),
                    webhook_scope: cfg.api.webhook_scope.scope(),
                }),
                (Some(_), None) => {
                    return Err(ConfigError::Invalid(
                        "api.listen needs api.token (jobs and webhooks are authenticated)".into(),
                    )
                    .into());
                }
                _ => None,
            },
            default_registry,
            limiter,
            swarm,
            oci_tls,
            refused,
            fleet: cfg.fleet.redis.as_ref().map(|url| {
                (
                    Arc::new(customs_fleet::LazyFleet::new(
                        url.clone(),
                        cfg.fleet.redis_ca.clone(),
                    )),
                    fleet_id,
                )
            }),
            gateway_view,
        })
    }

    /// The configured audit exporters, one per sink and audit log.
    fn exporters(&self) -> Result<Vec<Exporter>, GatewayError> {
        let cfg = &self.export;
        let mut sinks = Vec::new();
        let format = cfg.audit.format;
        // CEF is a syslog format; the other sinks carry JSON.
        let json_format = if format == Format::Cef {
            Format::Json
        } else {
            format
        };
        if let Some(t) = &cfg.audit.syslog {
            let sink = Sink::syslog(t).map_err(|e| ConfigError::Invalid(e.to_string()))?;
            sinks.push((sink, format));
        }
        if let (Some(url), Some(token)) = (&cfg.audit.hec, &cfg.audit.hec_token) {
            sinks.push((
                Sink::Hec {
                    url: url.clone(),
                    token: token.expose().to_owned(),
                },
                json_format,
            ));
        }
        if let Some(url) = &cfg.audit.http {
            sinks.push((Sink::Http(url.clone()), json_format));
        }
        if let Some(p) = &cfg.audit.file {
            sinks.push((Sink::File(p.clone()), json_format));
        }
        let tls = match &cfg.audit.syslog_ca {
            Some(p) => {
                let pem = std::fs::read(p).map_err(|e| {
                    ConfigError::Invalid(format!("audit_syslog_ca {}: {e}", p.display()))
                })?;
                Some(customs_tls::client_config_trusting(&pem)?)
            }
            None => None,
        };
        let mut out = Vec::new();
        for log in ["audit.jsonl", "scheduler.jsonl"] {
            for (sink, format) in &sinks {
                out.push(Exporter::new(
                    &cfg.data_dir.join("audit").join(log),
                    sink.clone(),
                    *format,
                    tls.clone(),
                ));
            }
        }
        Ok(out)
    }

    /// The mirror (for gc and tests).
    pub fn mirror(&self) -> &Arc<GatewayMirror> {
        &self.mirror
    }

    /// The registry requests without `ns` mean.
    pub fn default_registry(&self) -> &RegistryHost {
        &self.default_registry
    }

    /// Bytes the gateway has sent to peers and clients.
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        &self.limiter
    }

    /// Serves the OCI pull API on `listener` and, with a scheduler
    /// configured, the mTLS endpoint for peers (OCI API, tasks, pieces) on
    /// `upload`, until `sup` shuts down; then drains connections up to its
    /// deadline, writes the final audit checkpoint and lets the exporters
    /// deliver it (see [`customs_runtime::Supervisor`]).
    pub async fn serve(
        self,
        listener: TcpListener,
        upload: Option<TcpListener>,
        sup: customs_runtime::Supervisor,
    ) -> Result<(), GatewayError> {
        let shutdown = sup.shutdown_token();
        let limits = ListenerLimits::default().with_drain(sup.drain());
        let resolver = RegistryResolver {
            default: self.default_registry.clone(),
        };
        let mut fleet_views: Option<crate::fleet_source::FleetViews> = None;
        let fleet = match &self.fleet {
            Some((fleet, id)) => {
                let me = match id {
                    Some(id) => id.clone(),
                    None => {
                        customs_fleet::member::default_id("gateway", listener.local_addr()?.port())
                            .map_err(|e| ConfigError::Invalid(format!("gateway id: {e}")))?
                    }
                };
                let mut endpoints = std::collections::BTreeMap::new();
                let scheme = if self.oci_tls.is_some() {
                    "https"
                } else {
                    "http"
                };
                endpoints.insert(
                    "oci".to_owned(),
                    format!("{scheme}://{}", listener.local_addr()?),
                );
                if let Some(api) = &self.api {
                    endpoints.insert("api".to_owned(), format!("http://{}", api.addr));
                }
                if let Some(u) = &upload {
                    endpoints.insert(
                        crate::fleet_source::UPLOAD_ENDPOINT.to_owned(),
                        // The advertised address (as peers are told), else
                        // where it listens.
                        format!(
                            "https://{}",
                            match &self.export.swarm.upload_addr {
                                Some(a) => a.clone(),
                                None => u.local_addr()?.to_string(),
                            }
                        ),
                    );
                }
                let member = customs_fleet::Member {
                    id: me.clone(),
                    role: customs_fleet::MemberRole::Gateway,
                    endpoints,
                    zone: self.export.fleet.zone.clone(),
                    expires_at: 0,
                };
                tracing::info!(fleet = %fleet.url(), member = %me, "gateway joining the fleet");
                customs_fleet::spawn_heartbeat(
                    fleet.clone(),
                    member,
                    customs_fleet::member::MEMBER_TTL,
                    shutdown.clone(),
                );
                let gateways = self.gateway_view.clone().unwrap_or_else(|| {
                    customs_fleet::MemberView::new(customs_fleet::MemberRole::Gateway)
                });
                gateways.spawn_refresh(fleet.clone(), shutdown.clone());
                let schedulers =
                    customs_fleet::MemberView::new(customs_fleet::MemberRole::Scheduler);
                schedulers.spawn_refresh(fleet.clone(), shutdown.clone());
                fleet_views = Some(crate::fleet_source::FleetViews {
                    gateways,
                    schedulers,
                });
                Some((fleet.clone(), me))
            }
            None => None,
        };
        let poll = self.policy_source.as_ref().map(|(_, every)| *every);
        let app = with_revision_headers(
            router(
                self.mirror.clone(),
                resolver.clone(),
                Some(self.limiter.clone()),
            ),
            self.admission.clone(),
            poll,
        )
        .merge(crate::status::routes(
            self.limiter.clone(),
            self.refused.clone(),
            self.metrics.clone(),
            self.admission.clone(),
            self.upstreams.clone(),
            self.mirror.source().owners().cloned(),
        ));
        if let Some(api) = &self.api {
            let peers_http = match &self.swarm {
                Some((_, identity)) => Some(
                    reqwest::Client::builder()
                        .use_preconfigured_tls(identity.client_config_for(Role::Peer)?)
                        .connect_timeout(Duration::from_secs(10))
                        .build()
                        .map_err(|e| ConfigError::Invalid(format!("peer client: {e}")))?,
                ),
                None => None,
            };
            let mut preheater = Preheater::new(
                self.mirror.clone(),
                self.swarm.as_ref().map(|(s, _)| s.clone()),
                peers_http,
                resolver.clone(),
                self.admission.audit().clone(),
                self.metrics.clone(),
            );
            if let Some((fleet, me)) = &fleet {
                preheater = preheater.with_shared_jobs(crate::preheat::SharedJobs {
                    fleet: fleet.clone(),
                    me: me.clone(),
                });
            }
            let preheater = Arc::new(preheater);
            let app = crate::api::router(
                api.token.clone(),
                preheater,
                self.metrics.clone(),
                api.webhook_scope,
            );
            let listener = TcpListener::bind(api.addr).await?;
            tracing::info!(addr = %listener.local_addr()?, "operator API serving (preheat jobs, Harbor webhook, /metrics)");
            let (token, abort) = (shutdown.clone(), sup.abort_token());
            sup.spawn("operator API", async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .into_future();
                tokio::select! {
                    r = served => if let Err(e) = r {
                        tracing::error!(error = %e, "operator API stopped");
                    },
                    _ = abort.cancelled() => {}
                }
            });
        }
        // Exporters run until the final checkpoint is written (or the drain
        // deadline passed), then deliver what is left and stop.
        let export_stop = sup.abort_token().child_token();
        for exporter in self.exporters()? {
            self.metrics.watch_export(exporter.progress());
            sup.spawn("audit export", exporter.run(export_stop.clone()));
        }
        // Awaited before the final checkpoint: its last counts belong in it.
        let aggregate = tokio::spawn(self.admission.clone().aggregate_loop(
            self.refused.clone(),
            self.aggregate_every,
            shutdown.clone(),
        ));
        if let Some((source, interval)) = self.policy_source.clone() {
            sup.spawn(
                "policy reload",
                reload_loop(source, self.admission.clone(), interval, shutdown.clone()),
            );
        }
        let audit = self.admission.audit().clone();
        tracing::info!(addr = %listener.local_addr()?, default_registry = %self.default_registry,
            https = self.oci_tls.is_some(), "gateway serving the OCI pull API");
        let app = customs_runtime::trace_context::traced(app);
        let oci_tls = self.oci_tls.clone();
        let oci_refused = self.refused.clone();
        let oci_shutdown = shutdown.clone();
        let oci = async move {
            match oci_tls {
                Some(cfg) => {
                    customs_tls::serve_tls_with(
                        listener,
                        cfg,
                        app,
                        oci_refused,
                        limits,
                        oci_shutdown,
                    )
                    .await
                }
                None => {
                    customs_tls::serve_http(listener, app, oci_refused, limits, oci_shutdown).await
                }
            }
        };
        match (self.swarm, upload) {
            (Some((seed, identity)), Some(upload)) => {
                tracing::info!(addr = %upload.local_addr()?, key_id = seed.key_id(), "gateway serving peers over mTLS");
                let provider = PieceProvider {
                    store: self.mirror.store().clone(),
                    partials: Some(seed.clone() as Arc<dyn piece_server::PartialPieces>),
                    limiter: self.limiter.clone(),
                    slots: Arc::new(tokio::sync::Semaphore::new(piece_server::SEED_UPLOAD_SLOTS)),
                    queue: piece_server::UploadQueue::new(piece_server::SEED_UPLOAD_QUEUE),
                    geometry: Default::default(),
                };
                let tasks = axum::Router::new()
                    .route("/customs/v1/tasks", axum::routing::get(get_task))
                    .with_state(Arc::new(TaskState {
                        mirror: self.mirror.clone(),
                        seed: seed.clone(),
                        resolver: resolver.clone(),
                    }));
                let views = fleet_views.clone();
                let fleet_doc = axum::Router::new().route(
                    "/customs/v1/fleet",
                    axum::routing::get(move || {
                        let views = views.clone();
                        async move {
                            match views {
                                Some(v) => axum::Json(v.doc()).into_response(),
                                None => (
                                    axum::http::StatusCode::NOT_FOUND,
                                    "this gateway is not in a fleet\n",
                                )
                                    .into_response(),
                            }
                        }
                    }),
                );
                if let Some(views) = fleet_views.clone() {
                    sup.spawn(
                        "fleet view feed",
                        views.feed(seed.schedulers().clone(), shutdown.clone()),
                    );
                }
                let peer_app = with_revision_headers(
                    router(self.mirror.clone(), resolver, Some(self.limiter.clone())),
                    self.admission.clone(),
                    poll,
                )
                .merge(tasks)
                .merge(fleet_doc)
                .merge(piece_server::router(provider));
                let limiter = self.limiter.clone();
                sup.spawn(
                    "seed announce",
                    seed.announce_loop(
                        self.mirror.store().clone(),
                        move || limiter.active() as u32,
                        shutdown.clone(),
                    ),
                );
                let peers = customs_tls::serve_tls_with(
                    upload,
                    identity.server_config()?,
                    customs_runtime::trace_context::traced(peer_app),
                    self.refused.clone(),
                    limits,
                    shutdown.clone(),
                );
                let (a, b) = tokio::join!(oci, peers);
                a?;
                b?;
            }
            _ => oci.await?,
        }
        // Upstream fetches under way finish and are recorded, within the
        // drain deadline.
        sup.within_drain("upstream fetches", self.mirror.store().fetches_done())
            .await;
        // Shut down: a signed checkpoint covers every event of this run, so
        // the next start has nothing to record as recovered-unsigned.
        let _ = aggregate.await;
        audit.close().await?;
        export_stop.cancel();
        Ok(())
    }
}

/// Adds the policy revision (and the policy poll period) to every response
/// of an OCI router, so nodes learn a new revision from any answer and from
/// their revision poll.
fn with_revision_headers(
    app: axum::Router,
    admission: Arc<GatewayAdmission>,
    poll: Option<Duration>,
) -> axum::Router {
    use customs_mirror::Admission;
    app.layer(axum::middleware::map_response(
        move |mut r: axum::response::Response| {
            let admission = admission.clone();
            async move {
                let h = r.headers_mut();
                if let Ok(v) = http::HeaderValue::from_str(&admission.revision()) {
                    h.insert(customs_protocol::headers::POLICY_REVISION, v);
                }
                let time = admission.policy_revision_time();
                if time > 0 {
                    h.insert(
                        customs_protocol::headers::POLICY_REVISION_TIME,
                        http::HeaderValue::from(time),
                    );
                }
                if let Some(p) = poll {
                    h.insert(
                        customs_protocol::headers::POLICY_POLL_MS,
                        http::HeaderValue::from(p.as_millis() as u64),
                    );
                }
                r
            }
        },
    ))
}

struct TaskState {
    mirror: Arc<GatewayMirror>,
    seed: Arc<Seed>,
    resolver: RegistryResolver,
}

/// `GET /customs/v1/tasks?ns=&repo=&digest=[&provisional=1][&fetch=ID]`:
/// the signed piece manifest for a blob bound to an admitted manifest of
/// that repository (peers only: this route exists on the mTLS endpoint
/// alone). With `provisional=1`, a cold blob is answered at once with a
/// provisional statement of its upstream fetch; with `fetch`, only about
/// that fetch (404 once it failed). See [`Seed::ensure_task`].
async fn get_task(
    State(st): State<Arc<TaskState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // Peers that take provisional statements say so (older ones get the
    // final manifest only); one holding a provisional statement names its
    // fetch.
    let provisional = q.get("provisional").is_some_and(|v| v == "1");
    let fetch: Option<FetchId> = match q.get("fetch").map(|f| f.parse()).transpose() {
        Ok(f) => f,
        Err(e) => {
            return (axum::http::StatusCode::BAD_REQUEST, format!("fetch: {e}\n")).into_response();
        }
    };
    let result = async {
        let registry = st.resolver.resolve(q.get("ns").map(String::as_str))?;
        let repository = q
            .get("repo")
            .map(String::as_str)
            .unwrap_or_default()
            .parse()?;
        let digest: Digest = q
            .get("digest")
            .map(String::as_str)
            .unwrap_or_default()
            .parse()
            .map_err(customs_protocol::NameError::from)?;
        let image = ImageName {
            registry,
            repository,
        };
        let provisional = provisional && st.mirror.source().states_fetches_of(&image, &digest);
        st.seed
            .ensure_task(&st.mirror, &image, &digest, fetch.as_ref(), provisional)
            .await
    }
    .await;
    match result {
        Ok(signed) => axum::Json(signed).into_response(),
        Err(e) => oci_error(e, None),
    }
}
