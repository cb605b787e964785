//! `customs peer`.

use crate::shutdown;
use anyhow::Context;
use clap::Args;
use customs_peer::{Peer, PeerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// `customs peer` flags; each overrides the config file.
#[derive(Args)]
pub struct PeerArgs {
    /// YAML config file.
    #[arg(long, env = "CUSTOMS_PEER_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway's OCI endpoint URL.
    #[arg(long, env = "CUSTOMS_GATEWAY")]
    gateway: Option<String>,
    /// The scheduler URL (used by the swarm; accepted now so node configs
    /// need no change when it lands).
    #[arg(long, env = "CUSTOMS_SCHEDULER")]
    scheduler: Option<String>,
    /// containerd-facing OCI endpoint.
    #[arg(long, default_value = "127.0.0.1:5070")]
    listen: SocketAddr,
    /// Data directory.
    #[arg(long, env = "CUSTOMS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Registry meant by requests without `ns` (match the gateway's upstream).
    #[arg(long)]
    default_registry: Option<String>,
    /// Store size limit in bytes.
    #[arg(long)]
    max_cache_bytes: Option<u64>,
}

pub async fn run(args: PeerArgs) -> anyhow::Result<()> {
    let mut cfg: PeerConfig = super::load_yaml(args.config.as_deref())?;
    if let Some(g) = args.gateway {
        cfg.gateway = Some(g);
    }
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(r) = args.default_registry {
        cfg.default_registry = r;
    }
    if let Some(n) = args.max_cache_bytes {
        cfg.max_cache_bytes = Some(n);
    }
    if let Some(s) = &args.scheduler {
        tracing::info!(scheduler = %s, "scheduler configured (the swarm is not enabled in this version)");
    }
    let peer = Peer::build(&cfg)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let token = CancellationToken::new();
    shutdown::on_signal(token.clone());
    tracing::info!(peer = %args.listen, "customs peer ready");
    peer.serve(listener, token).await?;
    Ok(())
}
