//! `customs scheduler`.

use crate::shutdown;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

/// `customs scheduler` flags.
#[derive(Args)]
pub struct SchedulerArgs {
    /// Address to serve on.
    #[arg(
        long,
        env = "CUSTOMS_SCHEDULER_LISTEN",
        default_value = "127.0.0.1:5060"
    )]
    listen: SocketAddr,
}

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let token = CancellationToken::new();
    shutdown::on_signal(token.clone());
    tracing::info!(scheduler = %args.listen, "customs scheduler ready");
    customs_scheduler::serve(listener, token).await?;
    Ok(())
}
