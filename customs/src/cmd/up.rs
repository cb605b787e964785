//! `customs up`: gateway and scheduler in one process on embedded storage,
//! plus an optional local fleet of peer processes for trying the swarm.

use super::gateway::GatewayFlags;
use anyhow::Context;
use clap::Args;
use customs_gateway::Gateway;
use customs_scheduler::SchedulerService;
use customs_store::audit::AuditLog;
use customs_tls::{Role, TlsIdentity, TlsPaths, write_dev_pki};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

/// `customs up` flags.
#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub(super) gateway: GatewayFlags,
    /// The scheduler's gRPC (mTLS) address (the first scheduler's in a fleet).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(super) scheduler_listen: SocketAddr,
    /// Start N peer processes on loopback; peer i serves containerd on the
    /// port of --listen plus i.
    #[arg(long, default_value_t = 0)]
    pub(super) peers: u16,
    /// Start G gateway processes (a local fleet; needs --fleet-redis).
    /// Gateway 1 serves containerd on --listen, the others on ephemeral
    /// loopback ports; all are written to DATA_DIR/fleet.json.
    #[arg(long, default_value_t = 1, requires = "fleet_redis")]
    pub(super) gateways: u16,
    /// Start S scheduler processes (a local fleet; needs --fleet-redis).
    #[arg(long, default_value_t = 1, requires = "fleet_redis")]
    pub(super) schedulers: u16,
    /// Spread the local fleet over Z zones (`zone-1` … `zone-Z`): gateway i
    /// is in zone ((i-1) mod Z)+1 and each peer in its gateway's zone
    /// (needs --fleet-redis; 0: no zones).
    #[arg(long, default_value_t = 0, requires = "fleet_redis")]
    pub(super) zones: u16,
    #[command(flatten)]
    pub(super) process: crate::shutdown::ProcessFlags,
}

impl UpArgs {
    /// A fleet of separate processes on Redis rather than one process.
    fn fleet_mode(&self) -> bool {
        self.gateway.fleet.fleet_redis.is_some()
    }
}

pub(super) struct Fleet {
    pub(super) children: Vec<tokio::process::Child>,
    /// `customs up`'s drain deadline and trace collector, passed on.
    pub(super) process: crate::shutdown::ProcessFlags,
}

impl Fleet {
    /// `cmd` with this fleet's drain deadline and trace collector.
    pub(super) fn command<'a>(
        &self,
        cmd: &'a mut tokio::process::Command,
    ) -> &'a mut tokio::process::Command {
        self.process.pass_on(cmd)
    }

    /// SIGTERMs every child and waits for it to drain and exit (killing it
    /// a few seconds past its drain deadline).
    pub(super) async fn stop(mut self) {
        for c in &self.children {
            if let Some(pid) = c.id() {
                let _ = tokio::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        for c in &mut self.children {
            if tokio::time::timeout(
                self.process.drain() + std::time::Duration::from_secs(5),
                c.wait(),
            )
            .await
            .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn peer_command(
    i: u16,
    listen: SocketAddr,
    upload: SocketAddr,
    data_dir: &Path,
    pki: &Path,
    gateway_url: &str,
    scheduler_url: &str,
    key_pubs: &[PathBuf],
    default_registry: &str,
    upload_limit: Option<u64>,
) -> anyhow::Result<tokio::process::Command> {
    let name = format!("peer-{i}");
    let dir = data_dir.join(&name);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(data_dir.join(format!("{name}.log")))?;
    let tls = TlsPaths::in_dir(pki, &name);
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.arg("peer")
        .arg("--gateway")
        .arg(gateway_url)
        .arg("--scheduler")
        .arg(scheduler_url)
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--upload-listen")
        .arg(upload.to_string())
        .arg("--data-dir")
        .arg(&dir)
        .arg("--peer-id")
        .arg(&name)
        .args(
            key_pubs
                .iter()
                .flat_map(|k| [std::ffi::OsStr::new("--gateway-key"), k.as_os_str()]),
        )
        .arg("--tls-ca")
        .arg(&tls.ca)
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .arg("--default-registry")
        .arg(default_registry)
        .stdout(log.try_clone()?)
        .stderr(log)
        // The peer exits when this pipe closes: if `customs up` dies, even
        // by SIGKILL, its fleet does not outlive it.
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .kill_on_drop(true);
    if let Some(l) = upload_limit {
        cmd.arg("--upload-limit").arg(l.to_string());
    }
    Ok(cmd)
}

/// Issues the development certificates `names` lacks under `pki`.
/// Missing certificates are issued; so are ones an older version wrote
/// (valid for localhost, no node identity), which peers would now refuse.
/// A key that exists but is exposed is refused, never silently replaced:
/// reissuing would hide that it may have leaked.
pub(super) fn ensure_dev_pki(pki: &Path, names: &[(String, Role)]) -> anyhow::Result<()> {
    let mut missing: Vec<(&str, Role)> = Vec::new();
    for (n, r) in names {
        match TlsIdentity::load(&TlsPaths::in_dir(pki, n)) {
            Ok(id) if id.is_dev_cert_for(n, *r) => {}
            Err(
                e @ customs_tls::TlsError::Secret(customs_tls::SecretFileError::Exposed { .. }),
            ) => {
                return Err(e).context("loading the development PKI");
            }
            _ => missing.push((n.as_str(), *r)),
        }
    }
    write_dev_pki(pki, &missing).context("creating the development PKI")
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut cfg = args.gateway.config()?;
    if args.process.print_config {
        return crate::layered::print(&cfg);
    }
    if args.gateway.data_dir.is_none() && args.gateway.config.is_none() {
        cfg.data_dir = PathBuf::from("customs-data");
    }
    // A development PKI and signing key under the data dir, created once;
    // the data dir (keys, audit logs) is private to this user.
    customs_tls::private_dir(&cfg.data_dir)?;
    let pki = cfg.data_dir.join("pki");
    if args.fleet_mode() {
        return super::up_fleet::run(&args, cfg, &pki).await;
    }
    let mut names: Vec<(String, Role)> = vec![
        ("gateway".into(), Role::Gateway),
        ("scheduler".into(), Role::Scheduler),
    ];
    names.extend((1..=args.peers).map(|i| (format!("peer-{i}"), Role::Peer)));
    ensure_dev_pki(&pki, &names)?;
    let key_path = cfg
        .swarm
        .signing_key
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("gateway-key.pem"));
    let key = customs_gateway::server::load_or_create_key(&key_path)?;
    let key_pub = key_path.with_extension("pub");
    std::fs::write(&key_pub, key.public_pem()?)?;

    let sched_listener = tokio::net::TcpListener::bind(args.scheduler_listen)
        .await
        .with_context(|| format!("binding {}", args.scheduler_listen))?;
    let sched_addr = sched_listener.local_addr()?;
    let scheduler_url = format!("https://{sched_addr}");
    let upload_listener = tokio::net::TcpListener::bind(
        args.gateway
            .upload_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await
    .context("binding the gateway's peer endpoint")?;
    let upload_addr = upload_listener.local_addr()?;
    let gw_tls = TlsPaths::in_dir(&pki, "gateway");
    cfg.swarm.scheduler = Some(scheduler_url.clone());
    cfg.swarm.upload_addr = Some(upload_addr.to_string());
    cfg.swarm.signing_key = Some(key_path.clone());
    cfg.tls.ca = Some(gw_tls.ca.clone());
    cfg.tls.cert = Some(gw_tls.cert.clone());
    cfg.tls.key = Some(gw_tls.key.clone());
    cfg.validate()?;
    let gw = Gateway::build(&cfg)?;
    let default_registry = gw.default_registry().to_string();
    let gw_listener = tokio::net::TcpListener::bind(args.gateway.listen)
        .await
        .with_context(|| format!("binding {}", args.gateway.listen))?;

    let sched_identity = TlsIdentity::load(&TlsPaths::in_dir(&pki, "scheduler"))?;
    let keys = super::scheduler::trusted_keys(std::slice::from_ref(&key_pub))?;
    let audit = AuditLog::open_with_key(
        &cfg.data_dir.join("audit/scheduler.jsonl"),
        Some(Arc::new(customs_gateway::server::load_or_create_key(
            &key_path,
        )?)),
    )?;
    let sched_audit = audit.clone();
    let service = Arc::new(SchedulerService::new(
        keys,
        Some(audit),
        customs_scheduler::service::BAD_PIECE_AGGREGATE_INTERVAL,
    ));

    let sup = args.process.supervisor();
    let token = sup.shutdown_token();
    let gw_sup = sup.clone();
    let mut gw_task = tokio::spawn(async move {
        gw.serve(gw_listener, Some(upload_listener), gw_sup)
            .await
            .map_err(anyhow::Error::from)
    });
    let aggregate = tokio::spawn(service.clone().aggregate_loop(token.clone()));
    let (sched_token, drain) = (token.clone(), sup.drain());
    let mut sched_task = tokio::spawn(async move {
        customs_scheduler::serve(sched_listener, &sched_identity, service, sched_token, drain)
            .await
            .map_err(anyhow::Error::from)
    });

    let mut fleet = Fleet {
        children: Vec::new(),
        process: args.process.clone(),
    };
    let gateway_url = format!("https://{upload_addr}");
    for i in 1..=args.peers {
        let listen = SocketAddr::new(args.gateway.listen.ip(), args.gateway.listen.port() + i);
        // Piece servers sit on --listen + N + i: fixed, so a random port can
        // never land on a later peer's containerd-facing port.
        let upload = SocketAddr::new(
            args.gateway.listen.ip(),
            args.gateway.listen.port() + args.peers + i,
        );
        let mut cmd = peer_command(
            i,
            listen,
            upload,
            &cfg.data_dir,
            &pki,
            &gateway_url,
            &scheduler_url,
            std::slice::from_ref(&key_pub),
            &default_registry,
            args.gateway.upload_limit,
        )?;
        let child = fleet.command(&mut cmd).spawn()?;
        fleet.children.push(child);
    }
    tracing::info!(
        gateway = %args.gateway.listen, peers_endpoint = %upload_addr, scheduler = %sched_addr,
        peers = args.peers, data_dir = %cfg.data_dir.display(), key_id = key.id(),
        "customs ready"
    );
    // Supervise: when one part stops, stop the rest and report the first error.
    let (first, rest) = tokio::select! {
        r = &mut gw_task => (r, sched_task),
        r = &mut sched_task => (r, gw_task),
    };
    sup.begin_shutdown();
    fleet.stop().await;
    let _ = aggregate.await;
    let grace = sup.drain() + std::time::Duration::from_secs(5);
    if tokio::time::timeout(grace, rest).await.is_err() {
        tracing::warn!(
            secs = grace.as_secs(),
            "components did not stop within the drain deadline"
        );
    }
    // The gateway closes its own log; the scheduler's gets its final
    // signed checkpoint here.
    sched_audit.close().await?;
    sup.drained().await;
    first.context("component task failed")??;
    tracing::info!("customs stopped");
    Ok(())
}
