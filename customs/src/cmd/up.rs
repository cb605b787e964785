//! `customs up`: gateway and scheduler in one process on embedded storage.

use super::gateway::GatewayFlags;
use crate::shutdown;
use anyhow::Context;
use clap::Args;
use customs_gateway::Gateway;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// `customs up` flags.
#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    gateway: GatewayFlags,
    /// The scheduler's address.
    #[arg(long, default_value = "127.0.0.1:0")]
    scheduler_listen: SocketAddr,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut cfg = args.gateway.config()?;
    if args.gateway.data_dir.is_none() && args.gateway.config.is_none() {
        cfg.data_dir = std::path::PathBuf::from("customs-data");
    }
    let gw = Gateway::build(&cfg)?;
    let gw_listener = tokio::net::TcpListener::bind(args.gateway.listen)
        .await
        .with_context(|| format!("binding {}", args.gateway.listen))?;
    let sched_listener = tokio::net::TcpListener::bind(args.scheduler_listen)
        .await
        .with_context(|| format!("binding {}", args.scheduler_listen))?;
    let sched_addr = sched_listener.local_addr()?;
    let token = CancellationToken::new();
    shutdown::on_signal(token.clone());
    let gw_token = token.clone();
    let mut gw_task = tokio::spawn(async move {
        gw.serve(gw_listener, gw_token)
            .await
            .map_err(anyhow::Error::from)
    });
    let sched_token = token.clone();
    let mut sched_task = tokio::spawn(async move {
        customs_scheduler::serve(sched_listener, sched_token)
            .await
            .map_err(anyhow::Error::from)
    });
    tracing::info!(gateway = %args.gateway.listen, scheduler = %sched_addr, data_dir = %cfg.data_dir.display(), "customs ready");
    // Supervise: when one part stops, stop the other and report the first error.
    let (first, rest) = tokio::select! {
        r = &mut gw_task => (r, sched_task),
        r = &mut sched_task => (r, gw_task),
    };
    token.cancel();
    if tokio::time::timeout(std::time::Duration::from_secs(10), rest)
        .await
        .is_err()
    {
        tracing::warn!("components did not stop within 10 s");
    }
    first.context("component task failed")??;
    tracing::info!("customs stopped");
    Ok(())
}
