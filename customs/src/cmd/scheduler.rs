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

use super::scheduler_config::SchedulerConfig;

/// `customs scheduler` flags. TLS files and the gateway key default to what
/// `customs up` / `customs certs` create under `--pki-dir`.
#[derive(Args)]
pub struct SchedulerArgs {
    /// YAML config file (see the README's "Configuration"); flags override it.
    #[arg(long, env = "CUSTOMS_SCHEDULER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve gRPC (mTLS) on [default: 127.0.0.1:5060].
    #[arg(long, env = "CUSTOMS_SCHEDULER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Folder with ca.pem, scheduler.pem and scheduler.key
    /// [default: customs-data/pki].
    #[arg(long)]
    pki_dir: Option<PathBuf>,
    /// Trusted gateway public keys (PEM); repeat for rotation
    /// [default: customs-data/gateway-key.pub].
    #[arg(long = "gateway-key")]
    gateway_keys: Vec<PathBuf>,
    /// Audit log for bad-piece reports (JSON lines).
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// This scheduler's id in the fleet (default: host name and --listen
    /// port).
    #[arg(long, env = "CUSTOMS_SCHEDULER_ID")]
    scheduler_id: Option<String>,
    #[command(flatten)]
    tls: super::flags::TlsFlags,
    #[command(flatten)]
    fleet: super::flags::FleetFlags,
    #[command(flatten)]
    process: crate::shutdown::ProcessFlags,
}

impl SchedulerArgs {
    /// Defaults < the file < `CUSTOMS_SCHEDULER__*` < flags.
    fn config(&self) -> anyhow::Result<SchedulerConfig> {
        let mut o = crate::layered::Overlay::default();
        o.set("listen", self.listen)?;
        o.set("pki_dir", self.pki_dir.as_ref())?;
        o.set(
            "gateway_keys",
            (!self.gateway_keys.is_empty()).then_some(&self.gateway_keys),
        )?;
        self.tls.overlay(&mut o)?;
        o.set("audit.log", self.audit_log.as_ref())?;
        self.fleet.overlay(&mut o)?;
        o.set("fleet.id", self.scheduler_id.as_ref())?;
        crate::layered::load(self.config.as_deref(), "CUSTOMS_SCHEDULER__", o)
    }
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
    let cfg = args.config()?;
    if args.process.print_config {
        return crate::layered::print(&cfg);
    }
    cfg.validate()?;
    let defaults = TlsPaths::in_dir(&cfg.pki_dir, "scheduler");
    let identity = TlsIdentity::load(&TlsPaths {
        ca: cfg.tls.ca.clone().unwrap_or(defaults.ca),
        cert: cfg.tls.cert.clone().unwrap_or(defaults.cert),
        key: cfg.tls.key.clone().unwrap_or(defaults.key),
    })
    .context(
        "loading the scheduler's TLS files (create them with `customs certs` or `customs up`)",
    )?;
    let audit = cfg.audit.log.as_deref().map(AuditLog::open).transpose()?;
    let closing = audit.clone();
    let service = Arc::new(SchedulerService::new(
        trusted_keys(&cfg.gateway_keys)?,
        audit,
        customs_scheduler::service::BAD_PIECE_AGGREGATE_INTERVAL,
    ));
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let sup = args.process.supervisor();
    let token = sup.shutdown_token();
    tracing::info!(scheduler = %cfg.listen, "customs scheduler ready");
    let aggregate = tokio::spawn(service.clone().aggregate_loop(token.clone()));
    let heartbeat = match &cfg.fleet.redis {
        Some(url) => {
            let id: customs_fleet::MemberId = match &cfg.fleet.id {
                Some(id) => id.parse()?,
                None => {
                    customs_fleet::member::default_id("scheduler", listener.local_addr()?.port())?
                }
            };
            tracing::info!(fleet = %url, member = %id, "scheduler joining the fleet");
            let fleet = Arc::new(customs_fleet::LazyFleet::new(
                url.clone(),
                cfg.fleet.redis_ca.clone(),
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
