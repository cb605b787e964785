//! Swarm fan-out benchmark: N peers pull one image at once, every node's
//! upload capped at B; the same run against the pull-through baseline
//! (N clients on the gateway alone).
//!
//! Prints p50 and max completion time against S/B, upstream bytes / S,
//! gateway bytes / S for both runs. Knobs (environment):
//! `CUSTOMS_BENCH_PEERS` (16), `CUSTOMS_BENCH_SIZE_MIB` (32),
//! `CUSTOMS_BENCH_UPLOAD_LIMIT` bytes/s (8000000), `CUSTOMS_BENCH_WARM` (1:
//! the gateway holds the blob before the clock starts; 0: cold).
//! Run: `cargo bench -p customs --bench swarm`.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use support::proxy::Proxy;
use support::*;

struct RunResult {
    p50: f64,
    max: f64,
    upstream: f64,
    gateway: f64,
    /// When the gateway had sent S bytes (its share of the fan-out done).
    gateway_done: f64,
    /// CPU seconds of the `customs up` process (gateway and scheduler)
    /// during the pulls.
    cpu_up: f64,
    /// CPU seconds of the peer processes during the pulls.
    cpu_peers: f64,
}

fn run(
    dir: &std::path::Path,
    proxy: &Proxy,
    peers: u16,
    swarm: bool,
    limit: u64,
    s: f64,
) -> RunResult {
    let before_up = proxy.state.bytes_out.load(Ordering::SeqCst);
    let fleet = Fleet::up(
        dir,
        &proxy.url(),
        if swarm { peers } else { 0 },
        &["--upload-limit", &limit.to_string()],
    );
    let endpoints: Vec<SocketAddr> = if swarm {
        fleet.peers.clone()
    } else {
        vec![fleet.gateway.addr; peers as usize]
    };
    let ns = proxy.addr.to_string().replace(':', "%3A");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let status_url = format!("{}/customs/v1/status", fleet.gateway.url());
    // Warm (the default): the gateway already holds the blob, as after a
    // preheat or an earlier node's pull; the fan-out alone is measured.
    // CUSTOMS_BENCH_WARM=0 includes the gateway's cold fetch.
    let served_before = if env_u64("CUSTOMS_BENCH_WARM", 1) == 1 {
        rt.block_on(pull_discarding(
            reqwest::Client::new(),
            fleet.gateway.addr,
            ns.clone(),
            "bench/app",
            "v1",
        ));
        http_get_json(&status_url)["served_bytes"]
            .as_u64()
            .unwrap_or(0)
    } else {
        0
    };
    // Samples the gateway's served bytes, to see when its share was out.
    let gateway_done = Arc::new(std::sync::Mutex::new(f64::NAN));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let up_pid = fleet.gateway.proc.child.id();
    let cpu_before = support::procfs::tree_cpu(up_pid);
    let started = Instant::now();
    let sampler = {
        let (done, sampling, url) = (gateway_done.clone(), sampling.clone(), status_url.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::SeqCst) {
                let served = http_get_json(&url)["served_bytes"].as_u64().unwrap_or(0);
                if served.saturating_sub(served_before) as f64 >= s {
                    *done.lock().unwrap() = started.elapsed().as_secs_f64();
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let mut times: Vec<f64> = rt.block_on(async {
        let http = reqwest::Client::new();
        let tasks: Vec<_> = endpoints
            .into_iter()
            .map(|e| {
                tokio::spawn(pull_discarding(
                    http.clone(),
                    e,
                    ns.clone(),
                    "bench/app",
                    "v1",
                ))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    // Every blob is complete on every node: sample before anything exits.
    let (cpu_up, cpu_peers) =
        support::procfs::cpu_between(up_pid, &cpu_before, &support::procfs::tree_cpu(up_pid));
    sampling.store(false, Ordering::SeqCst);
    let _ = sampler.join();
    times.sort_by(f64::total_cmp);
    let gw = http_get_json(&format!("{}/customs/v1/status", fleet.gateway.url()));
    RunResult {
        p50: times[times.len() / 2],
        max: *times.last().unwrap(),
        upstream: (proxy.state.bytes_out.load(Ordering::SeqCst) - before_up) as f64 / s,
        gateway: (gw["served_bytes"].as_u64().unwrap() - served_before) as f64 / s,
        gateway_done: *gateway_done.lock().unwrap(),
        cpu_up,
        cpu_peers,
    }
}

fn main() {
    let peers = env_u64("CUSTOMS_BENCH_PEERS", 16) as u16;
    let size_mib = env_u64("CUSTOMS_BENCH_SIZE_MIB", 32);
    let limit = env_u64("CUSTOMS_BENCH_UPLOAD_LIMIT", 8_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    // CUSTOMS_BENCH_KEEP=1 keeps the logs (DIR/swarm/peer-N.log) for a look.
    let _tmp = if env_u64("CUSTOMS_BENCH_KEEP", 0) == 1 {
        println!("keeping {}", tmp.keep().display());
        None
    } else {
        Some(tmp)
    };
    let dir = dir.as_path();
    let registry = Registry::start(&dir.join("registry"));
    let layer = size_mib * 1024 * 1024;
    make_image(&dir.join("layout"), "v1", &[layer], &[], 9);
    push(&dir.join("layout"), "v1", registry.addr, "bench/app");
    let proxy = Proxy::start(&registry.url());
    let s = layer as f64;
    let sb = s / limit as f64;
    println!("swarm benchmark: N={peers} peers, S={size_mib} MiB, B={limit} B/s, S/B={sb:.2}s");
    let sw = run(&dir.join("swarm"), &proxy, peers, true, limit, s);
    // CUSTOMS_BENCH_SKIP_BASELINE=1 skips the (N·S/B long) baseline while tuning.
    let base = if env_u64("CUSTOMS_BENCH_SKIP_BASELINE", 0) == 1 {
        RunResult {
            p50: f64::NAN,
            max: f64::NAN,
            upstream: f64::NAN,
            gateway: f64::NAN,
            gateway_done: f64::NAN,
            cpu_up: f64::NAN,
            cpu_peers: f64::NAN,
        }
    } else {
        run(&dir.join("baseline"), &proxy, peers, false, limit, s)
    };
    println!(
        "{:<26} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10}",
        "run", "p50 s", "max s", "p50/(S/B)", "max/(S/B)", "upstream/S", "gateway/S"
    );
    for (name, r) in [("swarm (peers)", &sw), ("pull-through (gateway)", &base)] {
        println!(
            "{name:<26} {:>8.2} {:>8.2} {:>9.2} {:>9.2} {:>10.2} {:>10.2}",
            r.p50,
            r.max,
            r.p50 / sb,
            r.max / sb,
            r.upstream,
            r.gateway
        );
    }
    println!(
        "gateway had sent S bytes after {:.2} s (swarm) / {:.2} s (baseline); S/B = {sb:.2} s",
        sw.gateway_done, base.gateway_done
    );
    // Calibration (issue 13): the fleet simulation with this run's N, S
    // and B, beside the real run.
    let sim = customs_sim::simulate(&customs_sim::SimConfig::new(
        u32::from(peers),
        layer,
        limit as f64,
    ))
    .expect("simulation");
    let within = |real: f64, model: f64| {
        if (real - model).abs() <= 0.10 * real {
            "OK"
        } else {
            "MISSED"
        }
    };
    println!(
        "{:<26} {:>8.2} {:>8.2} {:>9.2} {:>9.2}   (same N, S, B; rtt 0.5 ms)",
        "simulation (fleet-sim)", sim.p50_secs, sim.max_secs, sim.p50_ratio, sim.max_ratio
    );
    println!(
        "calibration: simulated/real p50 {:.3}, max {:.3}; within 10%: p50 {}, max {}",
        sim.p50_secs / sw.p50,
        sim.max_secs / sw.max,
        within(sw.p50, sim.p50_secs),
        within(sw.max, sim.max_secs)
    );
    // CPU per GiB delivered to clients (N copies of S), all Customs
    // processes, clients excluded.
    let gib = f64::from(peers) * s / f64::from(1u32 << 30);
    for (name, r) in [("swarm (peers)", &sw), ("pull-through (gateway)", &base)] {
        println!(
            "{name:<26} CPU-s/GiB delivered: {:.2} (gateway+scheduler {:.2}, peers {:.2})",
            (r.cpu_up + r.cpu_peers) / gib,
            r.cpu_up / gib,
            r.cpu_peers / gib
        );
    }
    println!(
        "swarm speed-up over the pull-through baseline (max): {:.1}x",
        base.max / sw.max
    );
    println!(
        "targets (set for N = 16): p50 <= 1.15 S/B: {}, max <= 1.5 S/B: {}, upstream 1.00: {}, >= 8x baseline: {}",
        if sw.p50 / sb <= 1.15 { "OK" } else { "MISSED" },
        if sw.max / sb <= 1.5 { "OK" } else { "MISSED" },
        if (sw.upstream - 1.0).abs() < 0.01 {
            "OK"
        } else {
            "MISSED"
        },
        if base.max / sw.max >= 8.0 {
            "OK"
        } else {
            "MISSED"
        },
    );
}
