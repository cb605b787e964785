//! Policy decision latency, cold and warm.
//!
//! The slsa-verifier container vector (keyless SLSA v0.2 provenance:
//! Fulcio chain, Rekor SET, DSSE, SLSA rules) is pushed to a real
//! `docker-registry` under K repositories; `customs up --policy` decides.
//! Printed, in one run:
//! - the policy engine alone over the vector's OCI layout (verification
//!   cost without any network);
//! - a cold decision through the gateway: `HEAD manifests/<digest>` of a
//!   repository never decided (evidence fetched from the registry, verified);
//! - a warm decision: the same HEAD again (decision cache, no registry
//!   round trip);
//! - the baseline: the same HEAD straight to the registry (one round trip).
//!
//! Knob: `CUSTOMS_BENCH_REPOS` (10). Run: `cargo bench -p customs --bench decision`.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use customs_policy::layout::Layout;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// One HTTP/1.1 connection kept alive, so each sample is one request.
struct Conn {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(s),
            addr,
        }
    }

    /// HEAD `path`; returns (status, seconds).
    fn head(&mut self, path: &str) -> (u16, f64) {
        let t = Instant::now();
        let req = format!(
            "HEAD {path} HTTP/1.1\r\nHost: {}\r\nAccept: {ACCEPT}\r\n\r\n",
            self.addr
        );
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        let mut status = 0;
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if status == 0 {
                status = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        (status, t.elapsed().as_secs_f64())
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1000.0)
}

fn write_policy(dir: &std::path::Path, registry: &str) {
    let doc = slsa_vector_policy(
        dir,
        &[
            format!("{registry}/bench/**"),
            "ghcr.io/slsa-framework/**".to_owned(),
        ],
        "github.com/slsa-framework/example-package",
    );
    std::fs::write(dir.join("slsa.yaml"), doc).unwrap();
}

fn main() {
    let repos = env_u64("CUSTOMS_BENCH_REPOS", 10) as usize;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    for i in 0..repos {
        push_slsa_vector(dir, registry.addr, &format!("bench/app{i}"));
    }
    let policy = dir.join("policy");
    write_policy(&policy, &reg);
    let digest = slsa_vector_digest();

    // The engine alone, over the layout on disk.
    let set =
        customs_policy::compile(&customs_policy::Snapshot::from_dir(&policy).unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let layout = Layout::open(&slsa_vector_dir().join("layout")).unwrap();
    let image: customs_protocol::ImageRef =
        format!("ghcr.io/slsa-framework/example-package@{digest}")
            .parse()
            .unwrap();
    let d: customs_protocol::Digest = digest.parse().unwrap();
    let mut engine = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let (decision, _) = rt.block_on(set.decide(&layout, &image.name, &d));
        engine.push(t.elapsed().as_secs_f64());
        assert!(decision.allowed, "{:?}", decision.reasons());
    }

    let gw = Customs::up(
        &dir.join("gw"),
        &registry.url(),
        &["--policy", policy.to_str().unwrap()],
    );
    let mut conn = Conn::open(gw.addr);
    let mut cold = Vec::new();
    for i in 0..repos {
        let (status, s) = conn.head(&format!("/v2/bench/app{i}/manifests/{digest}"));
        assert_eq!(status, 200, "{}", gw.log_text());
        cold.push(s);
    }
    let mut warm = Vec::new();
    for _ in 0..50 {
        for i in 0..repos {
            let (status, s) = conn.head(&format!("/v2/bench/app{i}/manifests/{digest}"));
            assert_eq!(status, 200);
            warm.push(s);
        }
    }
    let mut upstream = Conn::open(registry.addr);
    let mut direct = Vec::new();
    for _ in 0..50 {
        for i in 0..repos {
            let (status, s) = upstream.head(&format!("/v2/bench/app{i}/manifests/{digest}"));
            assert_eq!(status, 200);
            direct.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(10));
    println!("decision latency: slsa-verifier container vector, {repos} repositories");
    println!("{:<52} {:>12} {:>12}", "", "p50", "p99");
    for (name, v) in [
        (
            "policy engine alone (layout on disk, keyless verify)",
            &mut engine,
        ),
        (
            "cold decision via gateway HEAD (evidence from registry)",
            &mut cold,
        ),
        ("warm decision via gateway HEAD (cached)", &mut warm),
        ("baseline: HEAD straight to the registry", &mut direct),
    ] {
        let p50 = percentile(v, 0.5);
        let p99 = percentile(v, 0.99);
        println!("{name:<52} {:>12} {:>12}", ms(p50), ms(p99));
    }
    let warm50 = percentile(&mut warm, 0.5);
    let cold50 = percentile(&mut cold, 0.5);
    let direct50 = percentile(&mut direct, 0.5);
    println!(
        "warm/cold: {:.1}x faster; warm vs one registry round trip: {:.2}x; target warm < 1 ms: {}",
        cold50 / warm50,
        direct50 / warm50,
        if warm50 < 0.001 { "OK" } else { "MISSED" }
    );
}
