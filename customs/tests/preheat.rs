#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Preheat end to end: Harbor's exact requests (the Dragonfly provider's
//! job calls and push webhooks, recorded in testdata/harbor/) replayed
//! against a standalone gateway (`--api-listen --api-token`), scheduler and
//! peers on mTLS, with a real `docker-registry` upstream. The upstream and
//! the gateway are then stopped and every targeted peer still serves the
//! image from its own disk.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

const TOKEN: &str = "harbor-s3cret";

use support::api_call as call;

fn fixture(name: &str, vars: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo_root().join("testdata/harbor").join(name)).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("{{{{{k}}}}}"), v);
    }
    assert!(
        !text.contains("{{"),
        "unfilled placeholder in {name}: {text}"
    );
    text
}

/// Polls a job until it leaves PENDING; checks the shape Harbor decodes.
fn wait_job(api: SocketAddr, id: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = call(api, "GET", &format!("/oapi/v1/jobs/{id}"), Some(TOKEN), "");
        assert_eq!(status, 200, "{body}");
        let job: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(job["id"].as_u64(), Some(id), "integer id: {job}");
        for t in ["created_at", "updated_at"] {
            let s = job[t].as_str().unwrap();
            assert!(
                s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T',
                "{t} is RFC 3339: {s}"
            );
        }
        let state = job["state"].as_str().unwrap().to_owned();
        assert!(
            ["PENDING", "SUCCESS", "FAILURE"].contains(&state.as_str()),
            "only the three states Harbor knows: {state}"
        );
        if state != "PENDING" {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} still pending: {job}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The standalone fleet plus the gateway's operator API.
struct WithApi {
    fleet: Standalone,
    api: SocketAddr,
}

/// Gateway (with the operator API), scheduler and `n` peers, all on mTLS.
fn standalone(dir: &Path, registry: &Registry, policy: Option<&Path>, n: usize) -> WithApi {
    let api = format!("127.0.0.1:{}", free_port());
    let mut extra = strings(&["--api-listen", &api, "--api-token", TOKEN]);
    if let Some(pol) = policy {
        extra.extend(strings(&["--policy", pol.to_str().unwrap()]));
    }
    let fleet = Standalone::start(dir, registry, n, &extra, &[]);
    wait_for_port(api.parse().unwrap(), Duration::from_secs(30));
    // Peers announce every 2 s; give the scheduler one round.
    std::thread::sleep(Duration::from_millis(2500));
    WithApi {
        fleet,
        api: api.parse().unwrap(),
    }
}

#[test]
fn harbor_provider_and_webhooks_preheat_every_peer_which_then_serve_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    let app = make_image(&dir.join("app"), "v1", &[3 * 1024 * 1024, 200_000], &[], 31);
    push(&dir.join("app"), "v1", registry.addr, "library/app");
    let web = make_image(&dir.join("web"), "v2", &[1024 * 1024], &[], 32);
    push(&dir.join("web"), "v2", registry.addr, "library/web");
    let WithApi { mut fleet, api } = standalone(dir, &registry, None, 3);

    // Unauthenticated: health and metrics only.
    assert_eq!(call(api, "GET", "/healthy", None, "").0, 200);
    let create = fixture(
        "provider-create-job.json",
        &[
            ("REGISTRY", &reg),
            ("REPO", "library/app"),
            ("TAG", "v1"),
            ("TOKEN", "upstream-token"),
        ],
    );
    assert_eq!(call(api, "POST", "/oapi/v1/jobs", None, &create).0, 401);
    assert_eq!(
        call(api, "POST", "/oapi/v1/jobs", Some("wrong"), &create).0,
        401
    );
    assert_eq!(call(api, "GET", "/oapi/v1/jobs/1", None, "").0, 401);

    // Harbor's provider: create, then poll until SUCCESS.
    let (status, body) = call(api, "POST", "/oapi/v1/jobs", Some(TOKEN), &create);
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .expect("integer id");
    let job = wait_job(api, id);
    assert_eq!(job["state"], "SUCCESS", "{job}");
    let states = job["result"]["job_states"].as_array().unwrap();
    assert_eq!(states.len(), 4, "the gateway and all three peers: {job}");

    // Harbor's push webhooks, both formats; a delete is acknowledged and ignored.
    let vars = [
        ("REGISTRY", reg.as_str()),
        ("REPO", "library/web"),
        ("REPO_NAME", "web"),
        ("NAMESPACE", "library"),
        ("TAG", "v2"),
        ("DIGEST", web.as_str()),
    ];
    let hook = fixture("webhook-default-push.json", &vars);
    assert_eq!(call(api, "POST", "/webhooks/harbor", None, &hook).0, 401);
    let (status, body) = call(api, "POST", "/webhooks/harbor", Some(TOKEN), &hook);
    assert_eq!(status, 200, "{body}");
    let ids: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hook_job = wait_job(api, ids["jobs"][0].as_u64().unwrap());
    assert_eq!(hook_job["state"], "SUCCESS", "{hook_job}");
    let ce = fixture("webhook-cloudevents-push.json", &vars);
    let (status, body) = call(api, "POST", "/webhooks/harbor", Some(TOKEN), &ce);
    assert_eq!(status, 200, "{body}");
    let ids: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        wait_job(api, ids["jobs"][0].as_u64().unwrap())["state"],
        "SUCCESS"
    );
    let del = fixture("webhook-default-delete.json", &vars);
    let (status, body) = call(api, "POST", "/webhooks/harbor", Some(TOKEN), &del);
    assert_eq!(status, 200);
    assert!(body.contains("ignored"), "{body}");

    // Malformed requests are refused with a reason, never a panic.
    for bad in [
        "{",
        r#"{"type":"preheat","args":{"type":"image","url":"http://x/v2/../etc/manifests/v1"}}"#,
        r#"{"type":"preheat","args":{"type":"file","url":"http://x/file"}}"#,
        r#"{"type":"sync_peers","args":{}}"#,
    ] {
        let (status, body) = call(api, "POST", "/oapi/v1/jobs", Some(TOKEN), bad);
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Metrics (no token) count the gateway's served bytes and the jobs.
    let (status, metrics) = call(api, "GET", "/metrics", None, "");
    assert_eq!(status, 200);
    // Every metric names the node and its role; a gateway outside a fleet
    // is still node="gateway".
    let gw = [("node", "gateway"), ("role", "gateway")];
    assert!(
        metric_value(&metrics, "customs_served_bytes_total", &gw).is_some(),
        "{metrics}"
    );
    assert_eq!(
        metric_value(
            &metrics,
            "customs_preheat_jobs_total",
            &[("state", "success"), ("node", "gateway")]
        ),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        metric_value(&metrics, "customs_upstream_bytes_total", &gw).is_some(),
        "{metrics}"
    );
    assert!(metrics.contains("customs_decisions_total"), "{metrics}");
    // Each peer's metrics say where its verified bytes came from.
    for peer in &fleet.peer_addrs {
        let (status, m) = call(peer.parse().unwrap(), "GET", "/metrics", None, "");
        assert_eq!(status, 200);
        let received: f64 = m
            .lines()
            .filter(|l| l.starts_with("customs_received_bytes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(received > 0.0, "{peer}: {m}");
        assert!(
            metric_value(&m, "customs_received_bytes_total", &[("role", "peer")]).is_some(),
            "{peer}: {m}"
        );
        assert!(m.contains("customs_bad_pieces_total"), "{m}");
    }

    // `customs status` reads the gateway and the peers.
    let gw_url = format!("http://{}", fleet.gateway_addr);
    let mut status_cmd = std::process::Command::new(env!("CARGO_BIN_EXE_customs"));
    status_cmd.args(["status", "--gateway", &gw_url]);
    for p in &fleet.peer_addrs {
        status_cmd.args(["--peer", &format!("http://{p}")]);
    }
    let out = status_cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("fetched upstream") && text.contains("peer peer-3"),
        "{text}"
    );

    // Upstream gone: the webhook named the tag beside the digest, so every
    // node resolves `library/web:v2` to the pushed digest without it.
    registry.stop();
    for (i, peer) in fleet.peer_addrs.iter().enumerate() {
        let out = dir.join(format!("by-tag-{i}"));
        let (ok, err) = skopeo_pull(&format!("{peer}/library/web:v2"), &out);
        assert!(ok, "peer {peer} resolves the preheated tag offline: {err}");
        assert_eq!(layout_tag_digest(&out, "pulled"), web);
    }
    // Upstream and gateway gone: every peer serves both images from disk.
    let _ = fleet.gateway.child.kill();
    let _ = fleet.gateway.child.wait();
    for (i, peer) in fleet.peer_addrs.iter().enumerate() {
        for (repo, digest) in [("library/app", &app), ("library/web", &web)] {
            let out = dir.join(format!("pulled-{i}-{}", repo.replace('/', "-")));
            let (ok, err) = skopeo_pull(&format!("{peer}/{repo}@{digest}"), &out);
            assert!(ok, "peer {peer} must hold {repo}@{digest}: {err}");
            assert_eq!(
                layout_blobs(&out),
                layout_blobs(&dir.join(if repo.ends_with("app") { "app" } else { "web" }))
            );
        }
    }
}

#[test]
fn a_denied_image_fails_its_preheat_with_the_policy_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    make_image(&dir.join("app"), "v1", &[100_000], &[], 33);
    push(&dir.join("app"), "v1", registry.addr, "library/app");
    let policy = dir.join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        policy.join("deny.yaml"),
        format!(
            r#"apiVersion: customs.dev/v1alpha1
kind: ImagePolicy
metadata: {{name: signed-only}}
spec:
  images: ["{reg}/**"]
  mode: enforce
  authorities:
    - name: release
      keyless:
        identities:
          - {{issuer: "https://token.actions.githubusercontent.com", subject: "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"}}
  signatures: {{authorities: [release]}}
"#
        ),
    )
    .unwrap();
    // Kept alive (dropping it stops the processes).
    let WithApi { fleet: _fleet, api } = standalone(dir, &registry, Some(&policy), 1);
    let create = fixture(
        "provider-create-job.json",
        &[
            ("REGISTRY", &reg),
            ("REPO", "library/app"),
            ("TAG", "v1"),
            ("TOKEN", "t"),
        ],
    );
    let (status, body) = call(api, "POST", "/oapi/v1/jobs", Some(TOKEN), &create);
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
        .as_u64()
        .unwrap();
    let job = wait_job(api, id);
    assert_eq!(job["state"], "FAILURE", "{job}");
    let errors: Vec<&str> = job["result"]["job_states"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["error"].as_str())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("signed-only") && e.contains("signatures")),
        "the policy's reason reaches Harbor: {job}"
    );
    let audit = std::fs::read_to_string(dir.join("gw/audit/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"kind\":\"preheat\"") && audit.contains("FAILURE"),
        "{audit}"
    );
}

/// `customs audit verify` on the gateway's own data directory: clean after
/// real decisions and preheats; non-zero after an event is edited.
#[test]
fn audit_verify_checks_the_gateways_signed_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    make_image(&dir.join("app"), "v1", &[50_000], &[], 34);
    push(&dir.join("app"), "v1", registry.addr, "library/app");
    let mut gw = Customs::up(
        &dir.join("gw"),
        &registry.url(),
        &["--audit-aggregate-secs", "1"],
    );
    let (ok, err) = skopeo_pull(&format!("{}/library/app:v1", gw.addr), &dir.join("out"));
    assert!(ok, "{err}");
    // A second pull is answered from the decision cache: counted, not logged
    // one by one; the count arrives in an aggregate event.
    let (ok, err) = skopeo_pull(&format!("{}/library/app:v1", gw.addr), &dir.join("out2"));
    assert!(ok, "{err}");
    std::thread::sleep(Duration::from_millis(2500));
    let text = std::fs::read_to_string(dir.join("gw/audit/audit.jsonl")).unwrap();
    let decisions = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"decision\""))
        .count();
    assert_eq!(decisions, 1, "one fresh decision: {text}");
    let aggregate = text
        .lines()
        .find(|l| l.contains("\"kind\":\"aggregate\""))
        .unwrap_or_else(|| panic!("no aggregate event: {text}"));
    assert!(
        aggregate.contains("library/app") && aggregate.contains("\"verdict\":\"allow\""),
        "{aggregate}"
    );
    gw.proc.terminate();
    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_customs"))
            .args(["audit", "verify", "--data-dir"])
            .arg(dir.join("gw"))
            .output()
            .unwrap()
    };
    let out = verify();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("audit.jsonl") && text.contains("signed checkpoints"),
        "{text}"
    );
    let log = dir.join("gw/audit/audit.jsonl");
    let edited = std::fs::read_to_string(&log).unwrap().replacen(
        "\"verdict\":\"allow\"",
        "\"verdict\":\"deny\"",
        1,
    );
    std::fs::write(&log, edited).unwrap();
    let out = verify();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));
}
