//! `customs bench`: benchmarks that need no cluster. `fleet-sim` runs the
//! discrete-event fleet simulation (the real scheduler state and download
//! planner on simulated links) and prints its figures against S/B.

use clap::{Args, Subcommand};
use customs_sim::{SimConfig, SimReport, simulate};

/// `customs bench ...`.
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Simulate a rollout to N nodes on the real scheduler and planner code.
    FleetSim(FleetSimArgs),
    /// Load the real scheduler process (gRPC over mTLS on loopback).
    SchedulerLoad(super::bench_load::SchedulerLoadArgs),
}

/// `customs bench fleet-sim`.
#[derive(Args)]
pub struct FleetSimArgs {
    /// Peers in the rollout (the gateway's seed is extra).
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// Blob size: bytes, or with a KiB/MiB/GiB suffix.
    #[arg(long, default_value = "1GiB", value_parser = parse_size)]
    size: u64,
    /// Upload cap of every node (and the seed), bytes/s (KB/MB/GB or
    /// KiB/MiB/GiB suffixes allowed).
    #[arg(long, default_value = "100MB", value_parser = parse_size)]
    upload_limit: u64,
    /// Upload cap of the seed (each zone's gateway), bytes/s; default: the
    /// nodes' cap, as the swarm bench has it. A real gateway takes no cap
    /// by default (`customs gateway --upload-limit 0`): its NIC is the cap.
    #[arg(long, value_parser = parse_size)]
    seed_upload_limit: Option<u64>,
    /// Availability zones to spread peers over.
    #[arg(long, default_value_t = 0)]
    zones: u32,
    /// Racks per zone.
    #[arg(long, default_value_t = 0)]
    racks: u32,
    /// Fraction of peers leaving mid-download (0.05 or 5%).
    #[arg(long, default_value = "0", value_parser = parse_fraction)]
    churn: f64,
    /// Random seed: the same seed repeats the run exactly.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Round trip of one request, milliseconds.
    #[arg(long, default_value_t = 0.5)]
    rtt_ms: f64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown unit {other:?} (B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("size out of range: {s:?}"))
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.parse::<f64>(),
    }
    .map_err(|_| format!("not a fraction: {s:?}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not between 0 and 1 (or 0% and 100%)"))
    }
}

/// Runs the chosen benchmark.
pub async fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::FleetSim(a) => fleet_sim(a),
        BenchCommand::SchedulerLoad(a) => super::bench_load::scheduler_load(a).await,
    }
}

fn fleet_sim(a: FleetSimArgs) -> anyhow::Result<()> {
    let mut cfg = SimConfig::new(a.nodes, a.size, a.upload_limit as f64);
    cfg.seed_upload_limit = a.seed_upload_limit.unwrap_or(a.upload_limit) as f64;
    cfg.zones = a.zones;
    cfg.racks = a.racks;
    cfg.churn = a.churn;
    cfg.seed = a.seed;
    cfg.rtt = std::time::Duration::from_secs_f64(a.rtt_ms.max(0.0) / 1e3);
    let r = simulate(&cfg)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_table(&r);
    }
    Ok(())
}

/// The human-readable form of a run.
pub fn print_table(r: &SimReport) {
    println!(
        "fleet-sim: N={} S={} B={} B/s seed cap={} B/s piece={} zones={} racks={} churn={} seed={}",
        r.nodes,
        r.size,
        r.upload_limit,
        r.seed_upload_limit,
        r.piece_length,
        r.zones,
        r.racks,
        r.churn,
        r.seed
    );
    println!(
        "completion: p50 {:.2} s = {:.3}·S/B, p99 {:.2} s = {:.3}·S/B, max {:.2} s = {:.3}·S/B (S/B = {:.2} s)",
        r.p50_secs, r.p50_ratio, r.p99_secs, r.p99_ratio, r.max_secs, r.max_ratio, r.ideal_secs
    );
    println!(
        "peers: {} completed, {} left mid-download, {} incomplete",
        r.completed, r.churned, r.incomplete
    );
    println!(
        "bytes: upstream {:.2}·S, seed {:.2}·S, cross-zone {:.2}·S per zone (most)",
        r.upstream_copies, r.seed_copies, r.cross_zone_copies_per_zone
    );
    println!(
        "scheduler: {} calls, {:.2} CPU-s ({:.1} µs/call, {:.2} ms/node), peak {} bytes = {:.0} bytes per peer-task",
        r.scheduler_calls,
        r.scheduler_cpu_secs,
        r.scheduler_cpu_us_per_call,
        r.scheduler_cpu_ms_per_node,
        r.scheduler_peak_bytes,
        r.scheduler_bytes_per_peer_task
    );
    println!("simulation: {} events in {:.1} s", r.events, r.wall_secs);
}
