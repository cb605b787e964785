//! `customs scheduler`.

use anyhow::Context;
use clap::Args;
use customs_protocol::piece_manifest::TrustedGatewayKeys;
use customs_scheduler::SchedulerService;
use customs_store::audit::AuditLog;
use customs_tls::{TlsIdentity, TlsPaths};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// The fleet's Redis (as `customs gateway --fleet-redis`): the
    /// scheduler heartbeats its membership there.
    #[arg(long, env = "CUSTOMS_FLEET_REDIS", hide_env_values = true)]
    fleet_redis: Option<customs_fleet::FleetUrl>,
    /// PEM CAs trusted for a rediss:// --fleet-redis.
    #[arg(long, env = "CUSTOMS_FLEET_REDIS_CA", requires = "fleet_redis")]
    fleet_redis_ca: Option<PathBuf>,
    /// This scheduler's id in the fleet (default: host name and --listen
    /// port).
    #[arg(long, env = "CUSTOMS_SCHEDULER_ID")]
    scheduler_id: Option<String>,
    #[command(flatten)]
    process: crate::shutdown::ProcessFlags,
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

impl SchedulerArgs {
    /// Trace export as `customs-scheduler`.
    pub fn otlp(&self) -> Option<crate::telemetry::OtlpTarget> {
        self.process
            .otlp("customs-scheduler", self.scheduler_id.as_deref())
    }
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
    let sup = args.process.supervisor();
    let token = sup.shutdown_token();
    tracing::info!(scheduler = %args.listen, "customs scheduler ready");
    let aggregate = tokio::spawn(service.clone().aggregate_loop(token.clone()));
    let heartbeat = match &args.fleet_redis {
        Some(url) => {
            let id: customs_fleet::MemberId = match &args.scheduler_id {
                Some(id) => id.parse()?,
                None => {
                    customs_fleet::member::default_id("scheduler", listener.local_addr()?.port())?
                }
            };
            tracing::info!(fleet = %url, member = %id, "scheduler joining the fleet");
            let fleet = Arc::new(customs_fleet::LazyFleet::new(
                url.clone(),
                args.fleet_redis_ca.clone(),
            ));
            Some(customs_fleet::spawn_heartbeat(
                fleet,
                customs_fleet::Member {
                    id,
                    role: customs_fleet::MemberRole::Scheduler,
                    endpoints: [("grpc".to_owned(), listener.local_addr()?.to_string())].into(),
                    zone: String::new(),
                    expires_at: 0,
                },
                customs_fleet::member::MEMBER_TTL,
                token.clone(),
            ))
        }
        None => None,
    };
    let served =
        customs_scheduler::serve(listener, &identity, service, token.clone(), sup.drain()).await;
    // The last bad-piece counts are written, then the log is checkpointed,
    // before the process exits.
    sup.begin_shutdown();
    let _ = aggregate.await;
    if let Some(h) = heartbeat {
        let _ = h.await;
    }
    served?;
    if let Some(audit) = closing {
        audit.close().await?;
    }
    sup.drained().await;
    tracing::info!("customs scheduler stopped");
    Ok(())
}
