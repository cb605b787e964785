//! Pull benchmark: direct from a bandwidth-capped upstream vs. cold and warm
//! through Customs, in the same run.
//!
//! A real `docker-registry` sits behind a userspace rate limiter (the
//! upstream link); `skopeo copy` pulls the image (a) directly, (b) through a
//! fresh `customs up` (cold: every blob fetched from upstream while being
//! streamed), (c) again (warm: served from the gateway's disk).
//!
//! Knobs (environment): `CUSTOMS_BENCH_SIZE_MIB` image size (default 256,
//! in 4 layers), `CUSTOMS_BENCH_RATE_MBPS` upstream cap in MB/s (default 50).
//! Run: `cargo bench -p customs --bench pull`.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::Ordering;
use std::time::Instant;
use support::proxy::Proxy;
use support::*;

fn timed_pull(src: &str, dest: &std::path::Path) -> f64 {
    let t = Instant::now();
    let (ok, err) = skopeo_pull(src, dest);
    assert!(ok, "pull of {src} failed: {err}");
    t.elapsed().as_secs_f64()
}

fn main() {
    let size_mib = env_u64("CUSTOMS_BENCH_SIZE_MIB", 256);
    let rate_mbps = env_u64("CUSTOMS_BENCH_RATE_MBPS", 50);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut registry = Registry::start(&dir.join("registry"));
    let layer = size_mib * 1024 * 1024 / 4;
    let digest = make_image(
        &dir.join("layout"),
        "v1",
        &[layer, layer, layer, layer],
        &[],
        7,
    );
    push(&dir.join("layout"), "v1", registry.addr, "bench/app");
    let proxy = Proxy::start(&registry.url());
    proxy
        .state
        .rate
        .store(rate_mbps * 1_000_000, Ordering::SeqCst);

    println!(
        "pull benchmark: image {size_mib} MiB (4 layers), upstream capped at {rate_mbps} MB/s, digest {digest}"
    );
    let direct = timed_pull(&format!("{}/bench/app:v1", proxy.addr), &dir.join("direct"));
    let upstream_after_direct = proxy.state.bytes_out.load(Ordering::SeqCst);

    let customs = Customs::up(&dir.join("gw"), &proxy.url(), &[]);
    let cold = timed_pull(&format!("{}/bench/app:v1", customs.addr), &dir.join("cold"));
    let upstream_cold = proxy.state.bytes_out.load(Ordering::SeqCst) - upstream_after_direct;
    registry.stop();
    let warm = timed_pull(&format!("{}/bench/app:v1", customs.addr), &dir.join("warm"));

    let s = (size_mib * 1024 * 1024) as f64;
    println!(
        "{:<34} {:>9} {:>11} {:>9}",
        "path", "seconds", "MB/s", "vs direct"
    );
    for (name, t) in [
        ("direct from upstream (baseline)", direct),
        ("through Customs, cold", cold),
        ("through Customs, warm (upstream down)", warm),
    ] {
        println!(
            "{name:<34} {t:>9.2} {:>11.1} {:>8.2}x",
            s / t / 1e6,
            t / direct
        );
    }
    println!(
        "upstream bytes for the cold pull: {:.3} x image size",
        upstream_cold as f64 / s
    );
    let target = 1.15;
    println!(
        "cold/direct = {:.3} (target <= {target}): {}",
        cold / direct,
        if cold / direct <= target {
            "OK"
        } else {
            "MISSED"
        }
    );
}
