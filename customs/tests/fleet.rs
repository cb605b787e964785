#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Two gateways on one real `redis-server`: a preheat job created through
//! one is polled to SUCCESS through the other and outlives both gateways'
//! restarts; a record the gateways never wrote is refused; with Redis gone
//! job creation fails with a clear error while pulls keep working.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use support::*;

const TOKEN: &str = "fleet-s3cret";

/// One operator API request with the token; returns (status, body).
fn call(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    api_call(addr, method, path, Some(TOKEN), body)
}

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis_server(port: u16) -> RedisServer {
    require("redis-server");
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
    );
    RedisServer(child)
}

struct Gw {
    proc: Proc,
    oci: SocketAddr,
    api: SocketAddr,
}

fn gateway(dir: &Path, name: &str, registry: &Registry, redis: u16, oci: u16, api: u16) -> Gw {
    let (oci, api): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{oci}").parse().unwrap(),
        format!("127.0.0.1:{api}").parse().unwrap(),
    );
    let args = strings(&[
        "gateway",
        "--data-dir",
        dir.join(name).to_str().unwrap(),
        "--listen",
        &oci.to_string(),
        "--upstream",
        &registry.url(),
        "--api-listen",
        &api.to_string(),
        "--api-token",
        TOKEN,
        "--fleet-redis",
        &format!("redis://127.0.0.1:{redis}"),
        "--gateway-id",
        name,
        "--policy",
        dir.join("policy").to_str().unwrap(),
    ]);
    let proc = spawn_customs(dir, name, &args);
    wait_for_port(api, Duration::from_secs(30));
    wait_for_port(oci, Duration::from_secs(30));
    Gw { proc, oci, api }
}

fn wait_state(api: SocketAddr, id: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = call(api, "GET", &format!("/oapi/v1/jobs/{id}"), "");
        assert_eq!(status, 200, "{body}");
        let job: serde_json::Value = serde_json::from_str(&body).unwrap();
        if job["state"] != "PENDING" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} still pending: {job}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_job_created_on_one_gateway_is_seen_through_another_and_survives_restarts() {
    require("skopeo");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    make_image(&dir.join("app"), "v1", &[300_000], &[], 41);
    push(&dir.join("app"), "v1", registry.addr, "library/app");
    // Both gateways enforce one policy: `library/denied` must be signed
    // (it is not); everything else is admitted.
    push(&dir.join("app"), "v1", registry.addr, "library/denied");
    let keys = dir.join("keys");
    sign_py(&["keygen", "--out", keys.to_str().unwrap()]);
    std::fs::create_dir_all(dir.join("policy/keys")).unwrap();
    std::fs::copy(keys.join("cosign.pub"), dir.join("policy/keys/release.pub")).unwrap();
    std::fs::write(
        dir.join("policy/policy.yaml"),
        format!(
            "apiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: denied}}\nspec:\n  images: [\"{0}/library/denied\"]\n  mode: enforce\n  authorities:\n    - name: release-key\n      key: {{path: keys/release.pub}}\n  signatures: {{authorities: [release-key]}}\n---\napiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: rest}}\nspec:\n  images: [\"**\"]\n  exclude: [\"{0}/library/denied\"]\n  mode: audit\n",
            registry.addr
        ),
    )
    .unwrap();
    let redis_port = free_port();
    let redis = redis_server(redis_port);
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let mut a = gateway(dir, "gw-a", &registry, redis_port, ports[0], ports[1]);
    let mut b = gateway(dir, "gw-b", &registry, redis_port, ports[2], ports[3]);

    let create = format!(
        r#"{{"type":"preheat","args":{{"type":"image","url":"http://{}/v2/library/app/manifests/v1","scope":"single_seed_peer","headers":{{"Authorization":"Bearer upstream-token"}}}}}}"#,
        registry.addr
    );
    let (status, body) = call(a.api, "POST", "/oapi/v1/jobs", &create);
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap();
    let job = wait_state(b.api, id);
    assert_eq!(
        job["state"], "SUCCESS",
        "polled through the other gateway: {job}"
    );
    assert!(
        !job.to_string().contains("upstream-token"),
        "credentials never stored: {job}"
    );
    // A second job through B gets another fleet-wide id.
    let (_, body) = call(b.api, "POST", "/oapi/v1/jobs", &create);
    let id2 = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap();
    assert_ne!(id, id2);
    assert_eq!(wait_state(a.api, id2)["state"], "SUCCESS");

    // Both gateways restarted: the jobs are still there.
    a.proc.terminate();
    b.proc.terminate();
    let a = gateway(dir, "gw-a", &registry, redis_port, ports[0], ports[1]);
    let b = gateway(dir, "gw-b", &registry, redis_port, ports[2], ports[3]);
    for (gw, job) in [(&a, id), (&b, id), (&a, id2)] {
        assert_eq!(wait_state(gw.api, job)["state"], "SUCCESS");
    }

    // A record no gateway wrote is refused with a reason, not served.
    let out = Command::new("redis-cli")
        .args([
            "-p",
            &redis_port.to_string(),
            "SET",
            "customs:preheat:job:999",
            "{\"id\":1",
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(out.success());
    let (status, body) = call(b.api, "GET", "/oapi/v1/jobs/999", "");
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("malformed"), "{body}");

    // Redis gone: creating a job fails with the reason; pulls still work.
    drop(redis);
    let (status, body) = call(a.api, "POST", "/oapi/v1/jobs", &create);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("fleet store"), "{body}");
    let (ok, err) = skopeo_pull(&format!("{}/library/app:v1", a.oci), &dir.join("pulled"));
    assert!(ok, "pull with Redis down: {err}");
    // Nothing policy denies is admitted with Redis down, on either gateway.
    for gw in [a.oci, b.oci] {
        let (ok, err) = skopeo_pull(
            &format!("{gw}/library/denied:v1"),
            &dir.join(format!("denied-{}", gw.port())),
        );
        assert!(!ok, "an unsigned image was admitted with Redis down");
        assert!(err.contains("denied") || err.contains("DENIED"), "{err}");
    }
}

/// `customs up --fleet-redis … --gateways G --schedulers S --peers N`,
/// once `DATA_DIR/fleet.json` exists.
struct LocalFleet {
    _up: Proc,
    file: serde_json::Value,
}

impl LocalFleet {
    fn start(
        dir: &Path,
        registry: &Registry,
        redis: u16,
        shape: (u16, u16, u16),
        extra: &[&str],
    ) -> LocalFleet {
        let (g, s, n) = shape;
        let data = dir.join("fleet");
        let mut args = strings(&[
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", free_base(n)),
            "--upstream",
            &registry.url(),
            "--fleet-redis",
            &format!("redis://127.0.0.1:{redis}"),
            "--gateways",
            &g.to_string(),
            "--schedulers",
            &s.to_string(),
            "--peers",
            &n.to_string(),
        ]);
        args.extend(strings(extra));
        let up = spawn_customs(dir, "up", &args);
        let path = data.join("fleet.json");
        let deadline = Instant::now() + Duration::from_secs(90);
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "no fleet.json: {}",
                std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        LocalFleet { _up: up, file }
    }

    fn list(&self, what: &str) -> Vec<serde_json::Value> {
        self.file[what].as_array().unwrap().clone()
    }

    /// The peers' containerd-facing `host:port`s.
    fn peer_hosts(&self) -> Vec<String> {
        self.list("peers")
            .iter()
            .map(|p| {
                p["oci"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("http://")
                    .to_owned()
            })
            .collect()
    }
}

/// A registry (with its access log) holding `library/app:v1` of `layers`,
/// a redis-server, and a local fleet of `shape` on them.
struct FleetWithImage {
    registry: Registry,
    /// Blob GETs the push itself made (subtracted from the counts).
    pushed: std::collections::BTreeMap<String, usize>,
    redis_port: u16,
    _redis: RedisServer,
    fleet: LocalFleet,
}

impl FleetWithImage {
    fn start(
        dir: &Path,
        layers: &[u64],
        seed: u64,
        shape: (u16, u16, u16),
        extra: &[&str],
    ) -> Self {
        require("skopeo");
        let registry = Registry::start_with_access_log(&dir.join("registry"));
        make_image(&dir.join("app"), "v1", layers, &[], seed);
        push(&dir.join("app"), "v1", registry.addr, "library/app");
        let pushed = registry.blob_gets();
        let redis_port = free_port();
        let redis = redis_server(redis_port);
        let fleet = LocalFleet::start(dir, &registry, redis_port, shape, extra);
        FleetWithImage {
            registry,
            pushed,
            redis_port,
            _redis: redis,
            fleet,
        }
    }

    /// Upstream GETs of each blob since the push.
    fn upstream_fetches(&self) -> Vec<(String, usize)> {
        self.registry
            .blob_gets()
            .into_iter()
            .map(|(d, n)| {
                let before = self.pushed.get(&d).copied().unwrap_or(0);
                (d, n - before)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// Pulls `image` through every peer at once; returns each pull's outcome.
fn pull_everywhere(fleet: &LocalFleet, image: &str, out: &Path) -> Vec<(bool, String)> {
    let pulls: Vec<_> = fleet
        .peer_hosts()
        .into_iter()
        .enumerate()
        .map(|(i, host)| {
            let src = format!("{host}/{image}");
            let dest = out.join(format!("pull-{i}"));
            std::thread::spawn(move || skopeo_pull(&src, &dest))
        })
        .collect();
    pulls.into_iter().map(|p| p.join().unwrap()).collect()
}

#[test]
fn a_fleet_of_two_gateways_and_two_schedulers_fetches_each_blob_from_the_upstream_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Two zones, a gateway in each: a blob enters each zone once.
    let setup = FleetWithImage::start(
        dir,
        &[3_000_000, 1_500_000, 700_000],
        43,
        (2, 2, 6),
        &["--zones", "2"],
    );
    let fleet = &setup.fleet;
    // The file lists every member with a live pid and its endpoints.
    assert_eq!(fleet.list("gateways").len(), 2, "{}", fleet.file);
    let zones = |kind: &str| -> Vec<String> {
        fleet
            .list(kind)
            .iter()
            .map(|m| m["zone"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(zones("gateways"), ["zone-1", "zone-2"], "{}", fleet.file);
    assert_eq!(
        zones("peers"),
        ["zone-1", "zone-2", "zone-1", "zone-2", "zone-1", "zone-2"]
    );
    assert_eq!(fleet.list("schedulers").len(), 2);
    assert_eq!(fleet.list("peers").len(), 6);
    for kind in ["gateways", "schedulers", "peers"] {
        for m in fleet.list(kind) {
            let pid = m["pid"].as_u64().unwrap();
            assert!(Path::new(&format!("/proc/{pid}")).exists(), "{kind}: {m}");
        }
    }
    for gw in fleet.list("gateways") {
        let oci = gw["oci"].as_str().unwrap();
        assert!(
            oci.starts_with("http://127.0.0.1:") && !oci.ends_with('/'),
            "{gw}"
        );
    }

    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    for (ok, err) in pull_everywhere(fleet, "library/app:v1", &out) {
        assert!(ok, "pull through a peer: {err}");
    }
    // Every pull got the image's layers, byte for byte (skopeo checked
    // each digest); the upstream sent each blob once for the whole fleet.
    let pushed_blobs = layout_blobs(&dir.join("app"));
    for i in 0..6 {
        assert_eq!(layout_blobs(&out.join(format!("pull-{i}"))), pushed_blobs);
    }
    let fetched = setup.upstream_fetches();
    assert!(
        fetched.len() >= 4,
        "config and three layers fetched: {fetched:?}"
    );
    for (digest, n) in &fetched {
        assert_eq!(
            *n, 1,
            "{digest} fetched {n} times from the upstream: {fetched:?}"
        );
    }
    // Cross-zone bytes: each gateway's fetches from the other zone's,
    // at most one copy of the image per zone; no peer takes a byte from
    // the other zone (its zone has a gateway of its own).
    let image_bytes: u64 = std::fs::read_dir(dir.join("app/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let mut between_gateways = 0;
    for gw in fleet.list("gateways") {
        let status = http_get_json(&format!(
            "{}/customs/v1/status",
            gw["oci"].as_str().unwrap()
        ));
        let from_fleet = status["fleet"]["fleet_bytes"]
            .as_u64()
            .unwrap_or_else(|| panic!("{status}"));
        assert!(
            from_fleet <= image_bytes,
            "{} took {from_fleet} B from the other zone (image {image_bytes} B)",
            gw["id"]
        );
        between_gateways += from_fleet;
    }
    assert!(
        between_gateways > 0,
        "each zone's gateway fetched the blobs it does not own from the other"
    );
    for host in fleet.peer_hosts() {
        let s = http_get_json(&format!("http://{host}/customs/v1/status"));
        assert_eq!(s["cross_zone_bytes"], 0, "{host}: {s}");
    }
}

/// The largest blob of an OCI layout (its biggest layer).
fn largest_blob(layout: &Path) -> String {
    let mut best = (0, String::new());
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let len = e.metadata().unwrap().len();
        if len > best.0 {
            best = (len, format!("sha256:{}", e.file_name().to_string_lossy()));
        }
    }
    best.1
}

fn sigkill(pid: u64) {
    let ok = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {pid}");
}

#[test]
fn pulls_complete_when_a_scheduler_and_then_the_owning_gateway_die_mid_transfer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Gateways send at most 8 MiB/s each: the big layer takes seconds to
    // leave its owner, long enough to kill it in the middle.
    let setup = FleetWithImage::start(
        dir,
        &[16 << 20, 600_000],
        44,
        (2, 2, 6),
        &["--upload-limit", "8388608"],
    );
    let fleet = &setup.fleet;
    let big = largest_blob(&dir.join("app"));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let pulls = {
        let hosts = fleet.peer_hosts();
        let out = out.clone();
        std::thread::spawn(move || {
            let pulls: Vec<_> = hosts
                .into_iter()
                .enumerate()
                .map(|(i, host)| {
                    let src = format!("{host}/library/app:v1");
                    let dest = out.join(format!("pull-{i}"));
                    std::thread::spawn(move || skopeo_pull(&src, &dest))
                })
                .collect();
            pulls
                .into_iter()
                .map(|p| p.join().unwrap())
                .collect::<Vec<_>>()
        })
    };
    // The big layer's owner is the gateway that fetches it from the upstream.
    let gateways = fleet.list("gateways");
    let data = dir.join("fleet");
    let deadline = Instant::now() + Duration::from_secs(30);
    let owner = loop {
        let found = gateways.iter().find(|g| {
            let log =
                std::fs::read_to_string(data.join(format!("{}.log", g["id"].as_str().unwrap())))
                    .unwrap_or_default();
            log.lines()
                .any(|l| l.contains("fetching blob from upstream") && l.contains(&big))
        });
        if let Some(g) = found {
            break g.clone();
        }
        assert!(Instant::now() < deadline, "no gateway fetched {big}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // A pull straight through the other gateway makes it fetch the big
    // layer from the owner (at the owner's 8 MiB/s): the kill lands in the
    // middle of that transfer.
    let survivor = gateways
        .iter()
        .find(|g| g["id"] != owner["id"])
        .unwrap()
        .clone();
    let survivor_log = data.join(format!("{}.log", survivor["id"].as_str().unwrap()));
    let direct = {
        let src = format!(
            "{}/library/app:v1",
            survivor["oci"]
                .as_str()
                .unwrap()
                .trim_start_matches("http://")
        );
        let dest = out.join("direct");
        std::thread::spawn(move || skopeo_pull(&src, &dest))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&survivor_log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("from its owner in the fleet") && l.contains(&big))
    {
        assert!(
            Instant::now() < deadline,
            "the survivor never asked the owner for {big}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    sigkill(fleet.list("schedulers")[0]["pid"].as_u64().unwrap());
    std::thread::sleep(Duration::from_millis(300));
    sigkill(owner["pid"].as_u64().unwrap());

    let pushed_blobs = layout_blobs(&dir.join("app"));
    for (i, (ok, err)) in pulls.join().unwrap().into_iter().enumerate() {
        assert!(ok, "pull {i} after the kills: {err}");
        assert_eq!(layout_blobs(&out.join(format!("pull-{i}"))), pushed_blobs);
    }
    // The kill came mid-transfer: the survivor resumed the big layer at
    // the byte it had reached (from the upstream, now that it ranks first).
    let (ok, err) = direct.join().unwrap();
    assert!(ok, "pull through the surviving gateway: {err}");
    let log = std::fs::read_to_string(&survivor_log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("resuming with the next") && l.contains(&big)),
        "the owner died before or after the transfer, not during it"
    );
    // At most one extra upstream fetch of any blob (the survivor taking
    // over a transfer the owner broke off).
    for (digest, n) in setup.upstream_fetches() {
        assert!(n <= 2, "{digest} fetched {n} times from the upstream");
    }
}

/// Runs `redis-cli -p PORT ARGS…`, asserting it succeeded.
fn redis_cli(port: u16, args: &[&str]) {
    let ok = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "redis-cli {args:?}");
}

#[test]
fn forged_fleet_members_in_redis_are_never_trusted() {
    require("redis-cli");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let setup = FleetWithImage::start(dir, &[2_000_000, 900_000, 400_000], 45, (2, 1, 2), &[]);
    let (fleet, redis_port) = (&setup.fleet, setup.redis_port);
    let gateways = fleet.list("gateways");
    // Whoever owns Redis lists gateways that do not exist, at the addresses
    // of real ones (a real gateway certificate, the wrong name), and a
    // scheduler at a gateway's address (the wrong role).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forge = |role: &str, id: &str, endpoint: (&str, &str)| {
        let record = serde_json::json!({
            "id": id, "role": role,
            "endpoints": { endpoint.0: endpoint.1 },
            "expires_at": now + 60,
        });
        redis_cli(
            redis_port,
            &[
                "ZADD",
                &format!("customs:members:{role}"),
                &(now + 9).to_string(),
                id,
            ],
        );
        redis_cli(
            redis_port,
            &[
                "HSET",
                &format!("customs:member-info:{role}"),
                id,
                &record.to_string(),
            ],
        );
    };
    for (i, id) in ["gateway-7", "gateway-8", "gateway-9", "zz-evil"]
        .iter()
        .enumerate()
    {
        let real = gateways[i % 2]["upload"].as_str().unwrap();
        forge("gateway", id, ("upload", real));
    }
    let gw_addr = gateways[0]["upload"]
        .as_str()
        .unwrap()
        .trim_start_matches("https://")
        .to_owned();
    forge("scheduler", "scheduler-evil", ("grpc", &gw_addr));
    // Both gateways have seen the forged members before any pull.
    std::thread::sleep(Duration::from_millis(2500));

    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    for (ok, err) in pull_everywhere(fleet, "library/app:v1", &out) {
        assert!(ok, "pull with a hostile Redis: {err}");
    }
    let pushed_blobs = layout_blobs(&dir.join("app"));
    for i in 0..2 {
        assert_eq!(layout_blobs(&out.join(format!("pull-{i}"))), pushed_blobs);
    }
    // The forged gateways were asked and refused (their certificates name
    // other members); no blob came twice from the upstream.
    let logs: String = gateways
        .iter()
        .map(|g| {
            std::fs::read_to_string(
                dir.join("fleet")
                    .join(format!("{}.log", g["id"].as_str().unwrap())),
            )
            .unwrap()
        })
        .collect();
    assert!(
        logs.contains("does not name the node it was asked as"),
        "no forged member was ever refused"
    );
    for (digest, n) in setup.upstream_fetches() {
        assert!(n <= 1, "{digest} fetched {n} times from the upstream");
    }
}
