//! `customs peer`.

use anyhow::Context;
use clap::Args;
use customs_peer::{Peer, PeerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// `customs peer` flags; each overrides the config file.
#[derive(Args)]
pub struct PeerArgs {
    /// YAML config file.
    #[arg(long, env = "CUSTOMS_PEER_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway URL: its mTLS endpoint (https://) in swarm mode, else its
    /// OCI endpoint. Repeat for a fleet: tried in order while one cannot be
    /// reached; the live fleet is then learned from whichever answers.
    #[arg(long, env = "CUSTOMS_GATEWAY", value_delimiter = ',')]
    gateway: Vec<String>,
    /// The scheduler URL (https://host:port): enables the swarm.
    #[arg(long, env = "CUSTOMS_SCHEDULER")]
    scheduler: Option<String>,
    /// containerd-facing OCI endpoint.
    #[arg(long, default_value = "127.0.0.1:5070")]
    listen: SocketAddr,
    /// Piece server (mTLS) for other peers; port 0 picks one.
    #[arg(long)]
    upload_listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long, env = "CUSTOMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Cap on what this peer sends to other peers, bytes/s (never limits
    /// delivery to its own containerd).
    #[arg(long)]
    upload_limit: Option<u64>,
    /// Pieces uploaded to other peers at once (default 1).
    #[arg(long, env = "CUSTOMS_UPLOAD_SLOTS")]
    upload_slots: Option<usize>,
    /// Piece requests that may wait for a free upload slot; beyond them
    /// requesters are answered "busy" and ask another parent (default 1).
    #[arg(long, env = "CUSTOMS_UPLOAD_QUEUE")]
    upload_queue: Option<usize>,
    /// Registry meant by requests without `ns` (match the gateway's upstream).
    #[arg(long)]
    default_registry: Option<String>,
    /// Store size limit in bytes.
    #[arg(long)]
    max_cache_bytes: Option<u64>,
    /// Peer id (the certificate must name `<id>.node.customs.internal`).
    #[arg(long)]
    peer_id: Option<String>,
    /// Trusted gateway public key (PEM); repeat for rotation.
    #[arg(long = "gateway-key")]
    gateway_keys: Vec<PathBuf>,
    /// Locality: zone (overrides --topology-labels).
    #[arg(long, env = "CUSTOMS_ZONE")]
    zone: Option<String>,
    /// Locality: rack (overrides --topology-labels).
    #[arg(long, env = "CUSTOMS_RACK")]
    rack: Option<String>,
    /// Kubernetes labels file (downward API `key="value"` lines): the zone
    /// from `topology.kubernetes.io/zone`, the rack from
    /// `topology.customs.dev/rack` or `topology.kubernetes.io/rack`.
    #[arg(long, env = "CUSTOMS_TOPOLOGY_LABELS")]
    topology_labels: Option<PathBuf>,
    /// How long a gateway admission is reused before this node asks the
    /// gateway again (e.g. `20s`; admissions of an older policy revision are
    /// never reused).
    #[arg(long, env = "CUSTOMS_ADMISSION_TTL", value_parser = humantime::parse_duration)]
    admission_ttl: Option<std::time::Duration>,
    /// Fail static: while the gateway is unreachable, keep serving what was
    /// admitted under the newest revision for at most this long after its
    /// last confirmation (e.g. `10m`), then refuse.
    #[arg(long, env = "CUSTOMS_ADMISSION_STALE_MAX", value_parser = humantime::parse_duration)]
    admission_stale_max: Option<std::time::Duration>,
    #[command(flatten)]
    tls: super::flags::TlsFlags,
    #[command(flatten)]
    process: crate::shutdown::ProcessFlags,
}

impl PeerArgs {
    /// Trace export as `customs-peer`.
    pub fn otlp(&self) -> Option<crate::telemetry::OtlpTarget> {
        self.process.otlp("customs-peer", self.peer_id.as_deref())
    }
}

impl PeerArgs {
    /// Defaults < the file < `CUSTOMS_PEER__*` < flags (see
    /// [`crate::layered`]).
    pub fn config(&self) -> anyhow::Result<PeerConfig> {
        crate::layered::load(self.config.as_deref(), "CUSTOMS_PEER__", self.overlay()?)
    }

    /// The keys the given flags set.
    fn overlay(&self) -> anyhow::Result<crate::layered::Overlay> {
        let human =
            |d: Option<std::time::Duration>| d.map(|d| humantime::format_duration(d).to_string());
        let mut o = crate::layered::Overlay::default();
        if let Some((first, more)) = self.gateway.split_first() {
            o.set("gateway.url", Some(first))?;
            o.set("gateway.fallback", Some(more))?;
        }
        o.set(
            "gateway.keys",
            (!self.gateway_keys.is_empty()).then_some(&self.gateway_keys),
        )?;
        o.set("data_dir", self.data_dir.as_ref())?;
        o.set("peer_id", self.peer_id.as_ref())?;
        o.set("default_registry", self.default_registry.as_ref())?;
        o.set("store.max_cache_bytes", self.max_cache_bytes)?;
        o.set("swarm.scheduler", self.scheduler.as_ref())?;
        o.set("swarm.upload_limit", self.upload_limit)?;
        o.set("swarm.upload_slots", self.upload_slots)?;
        o.set("swarm.upload_queue", self.upload_queue)?;
        let labels = match &self.topology_labels {
            Some(path) => {
                let t = customs_swarm::topology::Topology::from_file(path)?;
                tracing::info!(zone = %t.zone, rack = %t.rack, labels = %path.display(), "locality from topology labels");
                Some(t)
            }
            None => None,
        };
        o.set(
            "swarm.zone",
            self.zone
                .clone()
                .or_else(|| labels.as_ref().map(|t| t.zone.clone())),
        )?;
        o.set(
            "swarm.rack",
            self.rack
                .clone()
                .or_else(|| labels.as_ref().map(|t| t.rack.clone())),
        )?;
        self.tls.overlay(&mut o)?;
        o.set("policy.admission_ttl", human(self.admission_ttl))?;
        o.set(
            "policy.admission_stale_max",
            human(self.admission_stale_max),
        )?;
        Ok(o)
    }
}

pub async fn run(args: PeerArgs) -> anyhow::Result<()> {
    let mut cfg = args.config()?;
    if args.process.print_config {
        return crate::layered::print(&cfg);
    }
    let upload = match args.upload_listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?;
            if cfg.swarm.upload_addr.is_none() {
                cfg.swarm.upload_addr = Some(l.local_addr()?.to_string());
            }
            Some(l)
        }
        None => None,
    };
    let peer = Peer::build(&cfg)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let sup = args.process.supervisor();
    tracing::info!(peer = %args.listen, upload = ?cfg.swarm.upload_addr, "customs peer ready");
    peer.serve(listener, upload, sup.clone()).await?;
    sup.drained().await;
    tracing::info!("customs peer stopped");
    Ok(())
}
