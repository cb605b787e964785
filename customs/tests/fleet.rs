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
    let _ = b.oci;
}
