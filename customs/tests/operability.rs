//! Operating Customs: graceful shutdown of every component on SIGTERM
//! (in-flight transfers drain up to `--drain-secs`, the final audit
//! checkpoint is written, the exit status is 0).
#![allow(clippy::unwrap_used)]

mod support;

use sha2::Digest as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// The biggest blob of an OCI layout (its one layer): (digest, size).
fn biggest_blob(layout: &Path) -> (String, u64) {
    layout_blobs(layout)
        .into_iter()
        .map(|d| {
            let size = std::fs::metadata(
                layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap()
            .len();
            (d, size)
        })
        .max_by_key(|(_, s)| *s)
        .unwrap()
}

fn sigterm(pid: u32) {
    run_ok(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]));
}

/// Waits for `proc` to exit (at most `limit`); its status and how long it took.
fn wait_exit(proc: &mut Proc, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            return (s, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "{} still running {limit:?} after SIGTERM",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True once connecting to `addr` is refused (within `limit`).
fn refuses_connections(addr: SocketAddr, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The `kind` of the last line of an audit log.
fn last_kind(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["kind"].as_str().unwrap().to_owned()
}

fn audit_verifies(data: &Path, key: Option<&Path>) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_customs"));
    cmd.args(["audit", "verify", "--data-dir"]).arg(data);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Reads a response body to the end: (sha256 of what arrived, bytes, whether
/// it ended cleanly).
async fn read_body(mut resp: reqwest::Response, mut got: Vec<u8>) -> (String, u64, bool) {
    let mut h = sha2::Sha256::new();
    h.update(&got);
    let mut n = got.len() as u64;
    got.clear();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                n += c.len() as u64;
                h.update(&c);
            }
            Ok(None) => return (format!("sha256:{}", hex::encode(h.finalize())), n, true),
            Err(_) => return (format!("sha256:{}", hex::encode(h.finalize())), n, false),
        }
    }
}

/// Resolves `repo:v1` at `base` as a runtime would (blobs are served only
/// for an admitted manifest), starts the download of blob `digest` and
/// returns once its first bytes are in.
async fn start_download(
    base: &str,
    repo: &str,
    digest: &str,
    ns: &str,
) -> (reqwest::Response, Vec<u8>) {
    let http = reqwest::Client::new();
    let m = http
        .get(format!("{base}/v2/{repo}/manifests/v1{ns}"))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert!(m.status().is_success(), "manifest: {}", m.status());
    let url = format!("{base}/v2/{repo}/blobs/{digest}{ns}");
    let mut resp = http.get(&url).send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let first = resp.chunk().await.unwrap().unwrap().to_vec();
    (resp, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_gateway_transfer_then_checkpoints_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    // 3 MB at 1 MB/s: the transfer is in flight for about 3 s.
    make_image(&dir.join("app"), "v1", &[3_000_000], &[], 7);
    push(&dir.join("app"), "v1", registry.addr, "drain/app");
    let (digest, size) = biggest_blob(&dir.join("app"));
    let data = dir.join("gw");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut gw = Customs::spawn(
        &strings(&[
            "gateway",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &addr.to_string(),
            "--upstream",
            &registry.url(),
            "--upload-limit",
            "1000000",
            "--drain-secs",
            "20",
        ]),
        addr,
        &data,
    );
    let (resp, first) = start_download(&format!("http://{addr}"), "drain/app", &digest, "").await;
    let began = Instant::now();
    sigterm(gw.proc.child.id());
    // No new connection is accepted once draining began...
    assert!(
        refuses_connections(addr, Duration::from_secs(3)),
        "the gateway still accepted connections while draining"
    );
    // ...but the one in flight is served to the end, whole and verified.
    let (got, n, clean) = read_body(resp, first).await;
    assert!(clean, "the transfer was cut after {n} of {size} bytes");
    assert_eq!((got.as_str(), n), (digest.as_str(), size));
    let (status, _) = wait_exit(&mut gw.proc, Duration::from_secs(20));
    assert!(status.success(), "exit {status}: {}", gw.log_text());
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "exited before the transfer could have drained"
    );
    assert_eq!(last_kind(&data.join("audit/audit.jsonl")), "checkpoint");
    let (ok, out) = audit_verifies(&data, None);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_longer_than_drain_secs_is_cut_at_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    // 8 MB at 1 MB/s: far longer than the 1 s drain.
    make_image(&dir.join("app"), "v1", &[8_000_000], &[], 8);
    push(&dir.join("app"), "v1", registry.addr, "drain/big");
    let (digest, size) = biggest_blob(&dir.join("app"));
    let data = dir.join("gw");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut gw = Customs::spawn(
        &strings(&[
            "gateway",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &addr.to_string(),
            "--upstream",
            &registry.url(),
            "--upload-limit",
            "1000000",
            "--drain-secs",
            "1",
        ]),
        addr,
        &data,
    );
    let (resp, first) = start_download(&format!("http://{addr}"), "drain/big", &digest, "").await;
    sigterm(gw.proc.child.id());
    let (status, took) = wait_exit(&mut gw.proc, Duration::from_secs(8));
    assert!(status.success(), "exit {status}: {}", gw.log_text());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with --drain-secs 1"
    );
    let (_, n, clean) = read_body(resp, first).await;
    assert!(
        !clean && n < size,
        "a cut transfer read as whole ({n} of {size})"
    );
    assert_eq!(last_kind(&data.join("audit/audit.jsonl")), "checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_drains_on_sigterm_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    make_image(&dir.join("app"), "v1", &[3_000_000], &[], 9);
    push(&dir.join("app"), "v1", registry.addr, "drain/swarm");
    let (digest, size) = biggest_blob(&dir.join("app"));
    let drain = strings(&["--drain-secs", "20"]);
    let mut fleet = Standalone::start(
        dir,
        &registry,
        1,
        &[strings(&["--upload-limit", "1000000"]), drain.clone()].concat(),
        &drain,
    );
    // A node's peer is replaced (a DaemonSet rollout) while containerd pulls
    // through it: the pull completes, the peer exits 0.
    let peer_addr: SocketAddr = fleet.peer_addrs[0].parse().unwrap();
    let (resp, first) = start_download(
        &format!("http://{peer_addr}"),
        "drain/swarm",
        &digest,
        &format!("?ns={}", registry.addr),
    )
    .await;
    sigterm(fleet.peers[0].child.id());
    assert!(
        refuses_connections(peer_addr, Duration::from_secs(3)),
        "the peer still accepted connections while draining"
    );
    let (got, n, clean) = read_body(resp, first).await;
    assert!(clean, "the peer cut its transfer after {n} of {size} bytes");
    assert_eq!((got.as_str(), n), (digest.as_str(), size));
    let (status, _) = wait_exit(&mut fleet.peers[0], Duration::from_secs(20));
    assert!(status.success(), "peer exit {status}");
    // The scheduler and the gateway, with nothing in flight, stop at once.
    for p in [&mut fleet.scheduler, &mut fleet.gateway] {
        sigterm(p.child.id());
        let (status, took) = wait_exit(p, Duration::from_secs(20));
        assert!(status.success(), "{} exit {status}", p.name);
        assert!(took < Duration::from_secs(5), "{} took {took:?}", p.name);
    }
    assert_eq!(last_kind(&dir.join("gw/audit/audit.jsonl")), "checkpoint");
    let (ok, out) = audit_verifies(&dir.join("gw"), Some(&dir.join("gw/key.pub")));
    assert!(ok, "{out}");
}
