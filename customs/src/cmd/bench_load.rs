//! `customs bench scheduler-load`: the real scheduler process (`customs
//! scheduler`, gRPC over mTLS on loopback) under a load generator that
//! plays peers of a rollout, each with its own node certificate.
//!
//! The request mix is the download loop's: per refresh cycle a peer sends
//! its held-piece report (the whole set, growing by one piece per cycle,
//! as while pieces arrive) and a `GetTask` parent query asking for seed
//! hints; every [`ANNOUNCE_EVERY_CYCLES`] cycles an announcement. That is
//! per peer and second, at the engine's 100 ms refresh: 10 reports, 10
//! `GetTask`s and 0.5 announcements. Here each peer runs its cycles back to
//! back (one request in flight per peer, no pause): the server's capacity
//! is the figure. Requests per second per core divides by the CPU the
//! scheduler process used (from `/proc`), not by the machine's cores, so
//! the load generator's own CPU is not counted.

use anyhow::Context;
use clap::Args;
use customs_protocol::scheduler_proto as pb;
use customs_protocol::scheduler_proto::scheduler_client::SchedulerClient;
use customs_tls::{Role, TlsIdentity, TlsPaths};
use serde::Serialize;
use std::time::{Duration, Instant};

/// A peer announces once per this many refresh cycles (2 s / 100 ms).
pub const ANNOUNCE_EVERY_CYCLES: u64 = 20;
/// USER_HZ: the unit of `/proc/<pid>/stat` CPU times on Linux.
const USER_HZ: f64 = 100.0;

/// `customs bench scheduler-load`.
#[derive(Args)]
pub struct SchedulerLoadArgs {
    /// Simulated peers (connections, one request in flight each).
    #[arg(long, default_value_t = 16)]
    peers: u32,
    /// Peers announced but idle (they are parents in the task's holder
    /// table, as in a large rollout).
    #[arg(long, default_value_t = 1000)]
    idle_peers: u32,
    /// Seconds of measured load (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Pieces of the task (256 = 1 GiB at 4 MiB pieces).
    #[arg(long, default_value_t = 256)]
    pieces: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints.
#[derive(Serialize)]
struct LoadReport {
    peers: u32,
    idle_peers: u32,
    pieces: u32,
    secs: f64,
    requests: u64,
    announces: u64,
    get_tasks: u64,
    reports: u64,
    errors: u64,
    requests_per_sec: f64,
    scheduler_cpu_secs: f64,
    scheduler_cores_used: f64,
    requests_per_sec_per_core: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    announces: u64,
    get_tasks: u64,
    reports: u64,
    errors: u64,
}

fn info(name: &str, k: u32) -> pb::PeerInfo {
    pb::PeerInfo {
        peer_id: name.to_owned(),
        upload_addr: format!("10.{}.{}.{}:4003", k >> 16, (k >> 8) & 255, k & 255),
        upload_capacity: 100_000_000,
        active_uploads: k % 3,
        zone: format!("zone-{}", k % 3),
        rack: format!("rack-{}", k % 16),
        seed: false,
    }
}

fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unreadable /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f[11].parse()?, f[12].parse()?);
    Ok((utime + stime) / USER_HZ)
}

async fn client(
    pki: &std::path::Path,
    name: &str,
    addr: std::net::SocketAddr,
) -> anyhow::Result<SchedulerClient<tonic::transport::Channel>> {
    let id = TlsIdentity::load(&TlsPaths::in_dir(pki, name))?;
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))?
        .tls_config(id.tonic_client_for(Role::Scheduler))?
        .connect()
        .await?;
    Ok(SchedulerClient::new(channel))
}

/// Runs the load test (see the module docs).
pub async fn scheduler_load(a: SchedulerLoadArgs) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let pki = dir.join("pki");
    let names: Vec<String> = (0..a.peers).map(|k| format!("peer-{k}")).collect();
    let idle: Vec<String> = (0..a.idle_peers).map(|k| format!("idle-{k}")).collect();
    let mut certs: Vec<(&str, Role)> =
        vec![("scheduler", Role::Scheduler), ("gateway", Role::Gateway)];
    certs.extend(names.iter().chain(&idle).map(|n| (n.as_str(), Role::Peer)));
    customs_tls::write_dev_pki(&pki, &certs)?;
    let key = customs_protocol::piece_manifest::GatewayKey::generate()?;
    let key_pub = dir.join("gateway-key.pub");
    std::fs::write(&key_pub, key.public_pem()?)?;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let log = std::fs::File::create(dir.join("scheduler.log"))?;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("scheduler")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--pki-dir")
        .arg(&pki)
        .arg("--gateway-key")
        .arg(&key_pub)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting customs scheduler")?;
    let pid = child.id().context("scheduler pid")?;
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if started.elapsed() > Duration::from_secs(30) {
            anyhow::bail!("the scheduler did not listen on {addr} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The gateway registers one final task.
    let blob = customs_protocol::Digest::of(b"scheduler-load blob");
    let piece_length = customs_protocol::piece_manifest::MIN_PIECE_LEN;
    let signed = key.sign(customs_protocol::piece_manifest::PieceManifest {
        blob: blob.clone(),
        size: u64::from(a.pieces) * piece_length,
        piece_length,
        pieces: (0..a.pieces)
            .map(|i| customs_protocol::Digest::of(&i.to_le_bytes()))
            .collect(),
        admission: customs_protocol::piece_manifest::AdmissionRef {
            image: "bench/app".into(),
            manifest_digest: customs_protocol::Digest::of(b"bench manifest"),
            policy_revision: "bench".into(),
        },
        key_id: String::new(),
    })?;
    let mut gw = client(&pki, "gateway", addr).await?;
    gw.register_task(pb::RegisterTaskRequest {
        manifest: Some((&signed).into()),
        seed_id: String::new(),
    })
    .await
    .context("registering the task")?;
    add_idle_holders(&pki, addr, &blob, &idle, a.pieces).await?;

    let mut clients = Vec::new();
    for n in &names {
        clients.push(client(&pki, n, addr).await?);
    }
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(a.secs.max(1));
    let t0 = Instant::now();
    let mut cpu_at_start: Option<(Instant, f64)> = None;
    let mut tasks = tokio::task::JoinSet::new();
    for (k, (mut c, name)) in clients.into_iter().zip(names.clone()).enumerate() {
        let blob = blob.to_string();
        let pieces = a.pieces;
        tasks.spawn(async move {
            let mut t = Tally::default();
            let me = info(&name, k as u32);
            let mut cycle: u64 = 0;
            loop {
                let elapsed = t0.elapsed();
                if elapsed >= warmup + measure {
                    return t;
                }
                let counted = elapsed >= warmup;
                let timed = |r: Result<(), tonic::Status>, at: Instant, t: &mut Tally| {
                    if counted {
                        t.latencies_us
                            .push(at.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                        if r.is_err() {
                            t.errors += 1;
                        }
                    }
                };
                if cycle.is_multiple_of(ANNOUNCE_EVERY_CYCLES) {
                    let at = Instant::now();
                    let r = c
                        .announce_peer(pb::AnnouncePeerRequest {
                            peer: Some(me.clone()),
                        })
                        .await
                        .map(drop);
                    timed(r, at, &mut t);
                    t.announces += u64::from(counted);
                }
                let held = (cycle % u64::from(pieces)) as u32 + 1;
                let at = Instant::now();
                let r = c
                    .report_pieces(pb::ReportPiecesRequest {
                        peer_id: name.clone(),
                        blob_digest: blob.clone(),
                        pieces: (0..held).collect(),
                        fetch_id: String::new(),
                    })
                    .await
                    .map(drop);
                timed(r, at, &mut t);
                t.reports += u64::from(counted);
                let at = Instant::now();
                let r = c
                    .get_task(pb::GetTaskRequest {
                        blob_digest: blob.clone(),
                        peer_id: name.clone(),
                        seed_hints_wanted: 2,
                        omit_manifest: true,
                        accepts_provisional: true,
                        zone: me.zone.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop);
                timed(r, at, &mut t);
                t.get_tasks += u64::from(counted);
                cycle += 1;
            }
        });
    }
    // CPU at the end of the warm-up, and at the end.
    tokio::time::sleep_until((t0 + warmup).into()).await;
    cpu_at_start.get_or_insert((Instant::now(), cpu_secs(pid)?));
    let mut all = Tally::default();
    while let Some(t) = tasks.join_next().await {
        let t = t?;
        all.latencies_us.extend(t.latencies_us);
        all.announces += t.announces;
        all.get_tasks += t.get_tasks;
        all.reports += t.reports;
        all.errors += t.errors;
    }
    let (t_start, c_start) = cpu_at_start.context("no warm-up sample")?;
    let wall = t_start.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid)? - c_start;
    child.kill().await.ok();
    all.latencies_us.sort_unstable();
    let pct = |q: f64| -> f64 {
        let v = &all.latencies_us;
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        f64::from(v[i]) / 1000.0
    };
    let requests = all.latencies_us.len() as u64;
    let r = LoadReport {
        peers: a.peers,
        idle_peers: a.idle_peers,
        pieces: a.pieces,
        secs: wall,
        requests,
        announces: all.announces,
        get_tasks: all.get_tasks,
        reports: all.reports,
        errors: all.errors,
        requests_per_sec: requests as f64 / wall,
        scheduler_cpu_secs: cpu,
        scheduler_cores_used: cpu / wall,
        requests_per_sec_per_core: requests as f64 / cpu.max(1e-9),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
    };
    std::fs::remove_dir_all(&dir).ok();
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "scheduler-load: {} peers in flight, {} idle holders, {} pieces; mix per cycle: 1 ReportPieces (whole held set), 1 GetTask (2 seed hints), 1 AnnouncePeer per {} cycles (at the engine's 100 ms refresh: 10 + 10 + 0.5 per peer per second)",
            r.peers, r.idle_peers, r.pieces, ANNOUNCE_EVERY_CYCLES
        );
        println!(
            "requests: {} in {:.1} s ({} GetTask, {} reports, {} announces, {} errors) = {:.0}/s",
            r.requests, r.secs, r.get_tasks, r.reports, r.announces, r.errors, r.requests_per_sec
        );
        println!(
            "scheduler process: {:.2} CPU-s = {:.2} cores busy: {:.0} requests/s per core",
            r.scheduler_cpu_secs, r.scheduler_cores_used, r.requests_per_sec_per_core
        );
        println!(
            "latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            r.p50_ms, r.p99_ms, r.max_ms
        );
    }
    if r.errors > 0 {
        anyhow::bail!("{} requests failed (see the scheduler's log)", r.errors);
    }
    Ok(())
}

/// A private scratch directory for the run's PKI and logs.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("customs-scheduler-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    customs_tls::private_dir(&dir)?;
    Ok(dir)
}

/// Other peers that announce and report holding every other piece: the
/// holder table a parent query samples from. Each speaks with its own
/// certificate (the scheduler checks every request's identity).
async fn add_idle_holders(
    pki: &std::path::Path,
    addr: std::net::SocketAddr,
    blob: &customs_protocol::Digest,
    names: &[String],
    pieces: u32,
) -> anyhow::Result<()> {
    for (k, name) in names.iter().enumerate() {
        let mut c = client(pki, name, addr).await?;
        c.announce_peer(pb::AnnouncePeerRequest {
            peer: Some(info(name, 100_000 + k as u32)),
        })
        .await?;
        c.report_pieces(pb::ReportPiecesRequest {
            peer_id: name.clone(),
            blob_digest: blob.to_string(),
            pieces: (0..pieces)
                .filter(|p| (p + k as u32).is_multiple_of(2))
                .collect(),
            fetch_id: String::new(),
        })
        .await?;
    }
    Ok(())
}
