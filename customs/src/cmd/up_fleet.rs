//! `customs up --fleet-redis URL --gateways G --schedulers S --peers N`: a
//! local fleet of separate gateway, scheduler and peer processes on
//! loopback, sharing one Redis, for trying and testing failover.
//!
//! Each member is its own process with its own development certificate
//! (`gateway-i`, `scheduler-i`, `peer-j`, each naming its id) and, for
//! gateways, its own signing key; peers and schedulers trust every
//! gateway's key. Once every member answers, `DATA_DIR/fleet.json` lists
//! them (written atomically); killing any listed pid leaves the rest
//! working, and stopping `customs up` stops them all.

use super::up::{Fleet, UpArgs, ensure_dev_pki, peer_command};
use anyhow::Context;
use customs_gateway::GatewayConfig;
use customs_tls::{Role, TlsPaths};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long every member gets to answer before `customs up` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `DATA_DIR/fleet.json`.
#[derive(Serialize)]
struct FleetFile {
    gateways: Vec<GatewayEntry>,
    schedulers: Vec<SchedulerEntry>,
    peers: Vec<PeerEntry>,
}

#[derive(Serialize)]
struct GatewayEntry {
    id: String,
    pid: u32,
    /// containerd-facing base URL.
    oci: String,
    /// Operator API base URL (with --api-listen).
    #[serde(skip_serializing_if = "Option::is_none")]
    api: Option<String>,
    /// mTLS peer endpoint (`https://host:port`).
    upload: String,
    /// Its zone (with --zones).
    #[serde(skip_serializing_if = "String::is_empty")]
    zone: String,
}

#[derive(Serialize)]
struct SchedulerEntry {
    id: String,
    pid: u32,
    /// `host:port`.
    grpc: String,
}

#[derive(Serialize)]
struct PeerEntry {
    id: String,
    pid: u32,
    oci: String,
    /// Its zone (with --zones).
    #[serde(skip_serializing_if = "String::is_empty")]
    zone: String,
}

/// A loopback port free right now (the child binds it a moment later).
fn free_port(ip: std::net::IpAddr) -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).context("picking a free port")?;
    Ok(l.local_addr()?)
}

fn log_file(data_dir: &Path, name: &str) -> anyhow::Result<(Stdio, Stdio)> {
    let log = std::fs::File::create(data_dir.join(format!("{name}.log")))?;
    Ok((log.try_clone()?.into(), log.into()))
}

/// The fleet's child command: stops when `customs up`'s end of its stdin
/// closes, even when `customs up` is killed outright.
fn child(data_dir: &Path, name: &str, sub: &str) -> anyhow::Result<tokio::process::Command> {
    let (out, err) = log_file(data_dir, name)?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    // The parent already folded its CUSTOMS_<COMPONENT>__* settings into
    // the child's file; inherited, they would outrank that file and undo
    // what is per child (data dir, id, ports).
    for (k, _) in std::env::vars_os() {
        let key = k.to_string_lossy().to_ascii_uppercase();
        if ["CUSTOMS_GATEWAY__", "CUSTOMS_PEER__", "CUSTOMS_SCHEDULER__"]
            .iter()
            .any(|p| key.starts_with(p))
        {
            cmd.env_remove(&k);
        }
    }
    cmd.arg(sub)
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    Ok(cmd)
}

/// Waits until `check` succeeds, the child exits, or the deadline passes.
async fn wait_ready(
    what: &str,
    child: &mut tokio::process::Child,
    check: impl AsyncFn() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if check().await {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{what} exited during start ({status}); see its log in the data dir");
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("{what} did not answer within {}s", READY_TIMEOUT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Runs the fleet until SIGTERM / Ctrl-C.
pub async fn run(args: &UpArgs, cfg: GatewayConfig, pki: &Path) -> anyhow::Result<()> {
    let (g, s, n) = (args.gateways.max(1), args.schedulers.max(1), args.peers);
    let data_dir = cfg.data_dir.clone();
    let fleet_url = args
        .gateway
        .fleet
        .fleet_redis
        .clone()
        .context("a fleet needs --fleet-redis")?;
    let ip = args.gateway.listen.ip();
    let mut names: Vec<(String, Role)> = Vec::new();
    names.extend((1..=g).map(|i| (format!("gateway-{i}"), Role::Gateway)));
    names.extend((1..=s).map(|i| (format!("scheduler-{i}"), Role::Scheduler)));
    names.extend((1..=n).map(|i| (format!("peer-{i}"), Role::Peer)));
    ensure_dev_pki(pki, &names)?;
    // Every gateway signs with its own key; peers and schedulers trust all.
    let mut key_pubs: Vec<PathBuf> = Vec::new();
    for i in 1..=g {
        let dir = data_dir.join(format!("gateway-{i}"));
        customs_tls::private_dir(&dir)?;
        let key_path = dir.join("gateway-key.pem");
        let key = customs_gateway::server::load_or_create_key(&key_path)?;
        let public = key_path.with_extension("pub");
        std::fs::write(&public, key.public_pem()?)?;
        key_pubs.push(public);
    }
    let key_args: Vec<std::ffi::OsString> = key_pubs
        .iter()
        .flat_map(|k| ["--gateway-key".into(), k.clone().into_os_string()])
        .collect();

    let mut fleet = Fleet {
        children: Vec::new(),
        process: args.process.clone(),
    };
    let sup = args.process.supervisor();
    let token = sup.shutdown_token();
    let started = async {
        let mut file = FleetFile {
            gateways: Vec::new(),
            schedulers: Vec::new(),
            peers: Vec::new(),
        };
        let mut scheduler_urls = Vec::new();
        for i in 1..=s {
            let name = format!("scheduler-{i}");
            let listen = if i == 1 && args.scheduler_listen.port() != 0 {
                args.scheduler_listen
            } else {
                free_port(ip)?
            };
            let tls = TlsPaths::in_dir(pki, &name);
            let dir = data_dir.join(&name);
            customs_tls::private_dir(&dir)?;
            let mut cmd = child(&data_dir, &name, "scheduler")?;
            cmd.arg("--listen")
                .arg(listen.to_string())
                .arg("--tls-ca")
                .arg(&tls.ca)
                .arg("--tls-cert")
                .arg(&tls.cert)
                .arg("--tls-key")
                .arg(&tls.key)
                .args(&key_args)
                .arg("--audit-log")
                .arg(dir.join("audit.jsonl"))
                .arg("--scheduler-id")
                .arg(&name)
                .env("CUSTOMS_FLEET_REDIS", fleet_url.expose_for_child());
            let mut c = fleet
                .command(&mut cmd)
                .spawn()
                .with_context(|| format!("starting {name}"))?;
            wait_ready(&name, &mut c, async || {
                tokio::net::TcpStream::connect(listen).await.is_ok()
            })
            .await?;
            file.schedulers.push(SchedulerEntry {
                id: name,
                pid: c.id().unwrap_or_default(),
                grpc: listen.to_string(),
            });
            scheduler_urls.push(format!("https://{listen}"));
            fleet.children.push(c);
        }
        let http = reqwest::Client::new();
        let mut gateway_uploads = Vec::new();
        for i in 1..=g {
            let name = format!("gateway-{i}");
            let listen = if i == 1 {
                args.gateway.listen
            } else {
                free_port(ip)?
            };
            let upload = free_port(ip)?;
            let tls = TlsPaths::in_dir(pki, &name);
            let dir = data_dir.join(&name);
            let mut own = cfg.clone();
            own.data_dir = dir.clone();
            own.swarm.signing_key = Some(dir.join("gateway-key.pem"));
            own.tls.ca = Some(tls.ca.clone());
            own.tls.cert = Some(tls.cert.clone());
            own.tls.key = Some(tls.key.clone());
            own.swarm.scheduler =
                Some(scheduler_urls[usize::from(i - 1) % scheduler_urls.len()].clone());
            own.swarm.upload_addr = Some(upload.to_string());
            own.fleet.id = Some(name.clone());
            own.fleet.zone = zone_of(args.zones, i);
            own.api.listen = match cfg.api.listen {
                Some(a) => Some(SocketAddr::new(
                    a.ip(),
                    a.port()
                        .checked_add(i - 1)
                        .context("--api-listen port + gateways is beyond 65535")?,
                )),
                None => None,
            };
            // Secrets (API and HEC tokens, the fleet URL) go in the child's
            // environment, never into the file (which serializes them
            // redacted); the file is private to this user all the same.
            let api_token = own.api.token.take();
            let hec_token = own.audit.hec_token.take();
            let config_path = dir.join("config.json");
            customs_tls::write_private(&config_path, &serde_json::to_vec_pretty(&own)?)?;
            let mut cmd = child(&data_dir, &name, "gateway")?;
            if let Some(t) = &api_token {
                cmd.env("CUSTOMS_API_TOKEN", t.expose());
            }
            if let Some(t) = &hec_token {
                cmd.env("CUSTOMS_AUDIT_HEC_TOKEN", t.expose());
            }
            cmd.arg("--config")
                .arg(&config_path)
                .arg("--listen")
                .arg(listen.to_string())
                .arg("--upload-listen")
                .arg(upload.to_string())
                .env("CUSTOMS_FLEET_REDIS", fleet_url.expose_for_child());
            let mut c = fleet
                .command(&mut cmd)
                .spawn()
                .with_context(|| format!("starting {name}"))?;
            let scheme = if own.tls.listen_cert.is_some() {
                "https"
            } else {
                "http"
            };
            let oci = format!("{scheme}://{listen}");
            let probe = format!("http://{listen}/v2/");
            wait_ready(&name, &mut c, async || {
                own.tls.listen_cert.is_some()
                    && tokio::net::TcpStream::connect(listen).await.is_ok()
                    || http_ok(&http, &probe).await
            })
            .await?;
            gateway_uploads.push((
                format!("https://{upload}"),
                own.swarm.scheduler.clone().unwrap_or_default(),
            ));
            file.gateways.push(GatewayEntry {
                id: name,
                pid: c.id().unwrap_or_default(),
                oci,
                api: own.api.listen.map(|a| format!("http://{a}")),
                upload: format!("https://{upload}"),
                zone: own.fleet.zone.clone(),
            });
            fleet.children.push(c);
        }
        // Every gateway routes blobs over the whole set before any peer
        // asks: one that has not seen the others yet would fetch from the
        // upstream what another owns.
        let plain = cfg.tls.listen_cert.is_none();
        for (gw, child) in file
            .gateways
            .iter()
            .zip(fleet.children.iter_mut().skip(usize::from(s)))
            .filter(|_| plain)
        {
            let status = format!("{}/customs/v1/status", gw.oci);
            wait_ready(&gw.id, child, async || {
                let seen = async {
                    let v: serde_json::Value = http
                        .get(&status)
                        .timeout(Duration::from_secs(2))
                        .send()
                        .await
                        .ok()?
                        .json()
                        .await
                        .ok()?;
                    Some(v["fleet"]["gateways"].as_array()?.len())
                };
                seen.await == Some(usize::from(g))
            })
            .await?;
        }
        let default_registry = default_registry(&cfg)?;
        let base = args.gateway.listen.port();
        if base.checked_add(2 * n).is_none() {
            anyhow::bail!("--listen port {base} + 2 x {n} peers is beyond 65535");
        }
        for j in 1..=n {
            let name = format!("peer-{j}");
            let listen = SocketAddr::new(ip, base + j);
            let upload = SocketAddr::new(ip, base + n + j);
            // Peers are spread over the gateways; each uses its gateway's
            // scheduler.
            let k = usize::from(j - 1) % gateway_uploads.len();
            let (_, sched) = &gateway_uploads[k];
            // Its own gateway first, then the others: the bootstrap list
            // it fails over along (the live fleet is learned from them).
            let gw: Vec<&str> = gateway_uploads[k..]
                .iter()
                .chain(&gateway_uploads[..k])
                .map(|(u, _)| u.as_str())
                .collect();
            let gw = gw.join(",");
            let zone = zone_of(args.zones, u16::try_from(k + 1)?);
            let mut cmd = peer_command(
                j,
                listen,
                upload,
                &data_dir,
                pki,
                &gw,
                sched,
                &key_pubs,
                &default_registry,
                args.gateway.upload_limit,
            )?;
            if !zone.is_empty() {
                cmd.arg("--zone").arg(&zone);
            }
            let mut c = fleet
                .command(&mut cmd)
                .spawn()
                .with_context(|| format!("starting {name}"))?;
            let probe = format!("http://{listen}/v2/");
            wait_ready(&name, &mut c, async || http_ok(&http, &probe).await).await?;
            file.peers.push(PeerEntry {
                id: name,
                pid: c.id().unwrap_or_default(),
                oci: format!("http://{listen}"),
                zone,
            });
            fleet.children.push(c);
        }
        // Atomically: a reader sees no file or the whole fleet.
        let path = data_dir.join("fleet.json");
        let tmp = data_dir.join("fleet.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&file)?)?;
        std::fs::rename(&tmp, &path)?;
        tracing::info!(gateways = g, schedulers = s, peers = n, file = %path.display(), "customs fleet ready");
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = started => r,
        _ = token.cancelled() => Ok(()),
    };
    if result.is_ok() {
        // Members may die (a failover test kills them): the rest keep
        // running until `customs up` is told to stop.
        token.cancelled().await;
    }
    let _ = std::fs::remove_file(data_dir.join("fleet.json"));
    fleet.stop().await;
    tracing::info!("customs fleet stopped");
    result
}

/// The registry requests without `ns` mean, as the gateways see it.
/// The zone of gateway `i` (from 1) of a local fleet over `zones` zones.
fn zone_of(zones: u16, i: u16) -> String {
    if zones == 0 {
        return String::new();
    }
    format!("zone-{}", (i - 1) % zones + 1)
}

fn default_registry(cfg: &GatewayConfig) -> anyhow::Result<String> {
    Ok(match &cfg.upstream.url {
        Some(url) => customs_gateway::upstream::registry_identity(url)?.to_string(),
        None => cfg
            .upstream
            .registries
            .keys()
            .next()
            .cloned()
            .context("no upstream: set --upstream")?,
    })
}
