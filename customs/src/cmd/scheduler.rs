//! `customs scheduler`.

use crate::shutdown;
use anyhow::Context;
use clap::Args;
use customs_protocol::piece_manifest::TrustedGatewayKeys;
use customs_scheduler::SchedulerService;
use customs_store::audit::AuditLog;
use customs_tls::{TlsIdentity, TlsPaths};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// `customs scheduler` flags. TLS files and the gateway key default to what
/// `customs up` / `customs certs` create under `--pki-dir`.
#[derive(Args)]
pub struct SchedulerArgs {
    /// Address to serve gRPC (mTLS) on.
    #[arg(
        long,
        env = "CUSTOMS_SCHEDULER_LISTEN",
        default_value = "127.0.0.1:5060"
    )]
    listen: SocketAddr,
    /// Folder with ca.pem, scheduler.pem and scheduler.key.
    #[arg(long, default_value = "customs-data/pki")]
    pki_dir: PathBuf,
    /// Trusted gateway public keys (PEM); repeat for rotation
    /// [default: customs-data/gateway-key.pub].
    #[arg(long = "gateway-key")]
    gateway_keys: Vec<PathBuf>,
    /// mTLS CA file [default: PKI_DIR/ca.pem].
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// mTLS certificate [default: PKI_DIR/scheduler.pem].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// mTLS key [default: PKI_DIR/scheduler.key].
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Audit log for bad-piece reports (JSON lines).
    #[arg(long)]
    audit_log: Option<PathBuf>,
}

/// Loads trusted gateway public keys from PEM files.
pub fn trusted_keys(paths: &[PathBuf]) -> anyhow::Result<TrustedGatewayKeys> {
    let pems: Vec<String> = paths
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    Ok(TrustedGatewayKeys::from_pems(
        pems.iter().map(String::as_str),
    )?)
}

pub async fn run(args: SchedulerArgs) -> anyhow::Result<()> {
    let defaults = TlsPaths::in_dir(&args.pki_dir, "scheduler");
    let identity = TlsIdentity::load(&TlsPaths {
        ca: args.tls_ca.unwrap_or(defaults.ca),
        cert: args.tls_cert.unwrap_or(defaults.cert),
        key: args.tls_key.unwrap_or(defaults.key),
    })
    .context(
        "loading the scheduler's TLS files (create them with `customs certs` or `customs up`)",
    )?;
    let gateway_keys = if args.gateway_keys.is_empty() {
        vec![PathBuf::from("customs-data/gateway-key.pub")]
    } else {
        args.gateway_keys
    };
    let audit = args.audit_log.as_deref().map(AuditLog::open).transpose()?;
    let closing = audit.clone();
    let service = Arc::new(SchedulerService::new(
        trusted_keys(&gateway_keys)?,
        audit,
        customs_scheduler::service::BAD_PIECE_AGGREGATE_INTERVAL,
    ));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let token = CancellationToken::new();
    shutdown::on_signal(token.clone());
    tracing::info!(scheduler = %args.listen, "customs scheduler ready");
    let aggregate = tokio::spawn(service.clone().aggregate_loop(token.clone()));
    let served = customs_scheduler::serve(listener, &identity, service, token.clone()).await;
    // The last bad-piece counts are written, then the log is checkpointed,
    // before the process exits.
    token.cancel();
    let _ = aggregate.await;
    served?;
    if let Some(audit) = closing {
        audit.close().await?;
    }
    Ok(())
}
