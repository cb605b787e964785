#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! End-to-end tests of the verifying pull-through mirror: a real
//! `docker-registry` upstream, images pushed by `skopeo`, pulls by `skopeo`
//! and containerd's `ctr` through the real `customs` binary.

mod support;

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use support::containerd::Containerd;
use support::proxy::Proxy;
use support::*;

const MIB: u64 = 1024 * 1024;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    registry: Registry,
    app_digest: String,
    multi_digest: String,
}

/// A registry with `team/app:v1` (1 MiB + 64 MiB layers) and `team/multi:v1`
/// (an index over amd64 and arm64).
fn fixture(big: bool) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let registry = Registry::start(&dir.join("registry"));
    let layout = dir.join("layout");
    let sizes: &[u64] = if big {
        &[MIB, 64 * MIB]
    } else {
        &[MIB, 20_000]
    };
    let app_digest = make_image(&layout, "v1", sizes, &[], 1);
    let multi_digest = make_image(&layout, "multi", &[300_000], &["amd64", "arm64"], 2);
    push(&layout, "v1", registry.addr, "team/app");
    let multi_layout = dir.join("layout-multi");
    let _ = make_image(&multi_layout, "v1", &[300_000], &["amd64", "arm64"], 2);
    push(&multi_layout, "v1", registry.addr, "team/multi");
    Fixture {
        _tmp: tmp,
        dir,
        registry,
        app_digest,
        multi_digest,
    }
}

#[test]
fn skopeo_pulls_single_and_multi_arch_images_with_matching_digests() {
    let f = fixture(true);
    let customs = Customs::up(&f.dir.join("gw"), &f.registry.url(), &[]);
    let pushed = layout_blobs(&f.dir.join("layout"));

    // Single-arch by tag, then by digest.
    let out = f.dir.join("pull-app");
    let (ok, err) = skopeo_pull(&format!("{}/team/app:v1", customs.addr), &out);
    assert!(ok, "skopeo pull failed: {err}\n{}", customs.log_text());
    assert_eq!(layout_tag_digest(&out, "pulled"), f.app_digest);
    for b in layout_blobs(&out) {
        assert!(pushed.contains(&b), "pulled blob {b} was never pushed");
        assert_eq!(sha256_file(&out.join("blobs/sha256").join(&b[7..])), b);
    }
    let out = f.dir.join("pull-app-digest");
    let (ok, err) = skopeo_pull(&format!("{}/team/app@{}", customs.addr, f.app_digest), &out);
    assert!(ok, "pull by digest failed: {err}");

    // Multi-arch index: every platform's manifest and layers come through.
    let out = f.dir.join("pull-multi");
    let (ok, err) = skopeo_pull(&format!("{}/team/multi:v1", customs.addr), &out);
    assert!(ok, "multi-arch pull failed: {err}\n{}", customs.log_text());
    assert_eq!(layout_tag_digest(&out, "pulled"), f.multi_digest);
    let multi_pushed = layout_blobs(&f.dir.join("layout-multi"));
    assert_eq!(layout_blobs(&out), multi_pushed);

    // Every admission was recorded as an audit event.
    let audit = std::fs::read_to_string(f.dir.join("gw/audit/audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains(&f.multi_digest) && l.contains("\"allow\"")),
        "{audit}"
    );
    // Decisions (not the log's signed checkpoints) all say no policy is configured.
    let decisions: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("\"kind\":\"decision\""))
        .collect();
    assert!(!decisions.is_empty(), "{audit}");
    assert!(
        decisions.iter().all(|l| l.contains("no policy configured")),
        "{audit}"
    );
}

#[test]
fn containerd_pulls_through_the_peer_with_generated_hosts_toml() {
    let f = fixture(false);
    let gw = Customs::up(&f.dir.join("gw"), &f.registry.url(), &[]);
    let peer = Customs::peer(&f.dir.join("peer"), &gw.url(), &f.registry.addr.to_string());
    let hosts = f.dir.join("hosts");
    run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_customs"))
            .args([
                "containerd-config",
                "--mirror",
                &peer.url(),
                "--gateway",
                &gw.url(),
                "--registry",
            ])
            .arg(f.registry.addr.to_string())
            .arg("--out")
            .arg(&hosts),
    );
    let toml = std::fs::read_to_string(hosts.join(f.registry.addr.to_string()).join("hosts.toml"))
        .unwrap();
    assert!(
        toml.contains(&format!("server = \"{}\"", gw.url())),
        "{toml}"
    );

    let ctrd = Containerd::start(&f.dir.join("containerd"));
    for (repo, digest) in [("team/app", &f.app_digest), ("team/multi", &f.multi_digest)] {
        let reference = format!("{}/{repo}:v1", f.registry.addr);
        let (ok, text) = ctrd.pull("e2e", &hosts, &reference);
        assert!(
            ok,
            "ctr pull {reference} failed: {text}\npeer log:\n{}",
            peer.log_text()
        );
        assert_eq!(
            ctrd.image_digest("e2e", &reference).as_deref(),
            Some(digest.as_str())
        );
    }
    // The bytes went through the peer: it stored the layers itself.
    let count = || {
        std::fs::read_dir(f.dir.join("peer/store/blobs/sha256"))
            .unwrap()
            .count()
    };
    for _ in 0..100 {
        if count() >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let peer_blobs = count();
    assert!(peer_blobs >= 4, "the peer stored only {peer_blobs} blobs");
    // The gateway saw the real registry in ns, never the peer's address.
    let audit = std::fs::read_to_string(f.dir.join("gw/audit/audit.jsonl")).unwrap();
    assert!(
        audit.contains(&format!("{}/team/app", f.registry.addr)),
        "{audit}"
    );
}

#[test]
fn eight_concurrent_cold_pulls_fetch_each_blob_once() {
    let f = fixture(false);
    let proxy = Proxy::start(&f.registry.url());
    let customs = Customs::up(&f.dir.join("gw"), &proxy.url(), &[]);
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let src = format!("{}/team/app:v1", customs.addr);
            let out = f.dir.join(format!("pull-{i}"));
            std::thread::spawn(move || {
                let r = skopeo_pull(&src, &out);
                (r, out)
            })
        })
        .collect();
    for h in handles {
        let ((ok, err), out) = h.join().unwrap();
        assert!(ok, "pull failed: {err}");
        assert_eq!(layout_tag_digest(&out, "pulled"), f.app_digest);
    }
    let counts = proxy.blob_counts();
    assert_eq!(counts.len(), 3, "config + 2 layers expected: {counts:?}");
    for (digest, n) in counts {
        assert_eq!(n, 1, "upstream served {digest} {n} times");
    }
    // The concurrent cold requests shared one admission decision.
    let audit = std::fs::read_to_string(f.dir.join("gw/audit/audit.jsonl")).unwrap();
    let decisions = audit
        .lines()
        .filter(|l| l.contains("\"kind\":\"decision\"") && l.contains(&f.app_digest))
        .count();
    assert_eq!(decisions, 1, "{audit}");
}

fn raw_request(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_api_edge_cases() {
    let f = tokio::task::spawn_blocking(|| fixture(false))
        .await
        .unwrap();
    let customs = Customs::up(&f.dir.join("gw"), &f.registry.url(), &[]);
    let base = customs.url();
    let http = reqwest::Client::new();

    // HEAD by tag: digest, type and length without a body.
    let r = http
        .head(format!("{base}/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], f.app_digest.as_str());
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest = http
        .get(format!("{base}/v2/team/app/manifests/{}", f.app_digest))
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    let manifest: serde_json::Value = manifest.json().await.unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let layer_size = manifest["layers"][0]["size"].as_u64().unwrap();

    // HEAD and ranged GET of a blob.
    let r = http
        .head(format!("{base}/v2/team/app/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        layer_size.to_string().as_str()
    );
    let full = http
        .get(format!("{base}/v2/team/app/blobs/{layer}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let r = http
        .get(format!("{base}/v2/team/app/blobs/{layer}"))
        .header("Range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-{}/{layer_size}", layer_size - 1).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), full.slice(1000..));
    let r = http
        .get(format!("{base}/v2/team/app/blobs/{layer}"))
        .header("Range", format!("bytes={layer_size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);

    // Unknown tag and digest: 404 with OCI error bodies.
    let r = http
        .get(format!("{base}/v2/team/app/manifests/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let unknown = format!("sha256:{}", "0".repeat(64));
    let r = http
        .get(format!("{base}/v2/team/app/manifests/{unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A blob no admitted manifest of this repository references is refused,
    // even one that is stored for another repository.
    let r = http
        .get(format!("{base}/v2/team/app/blobs/{unknown}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
    let r = http
        .get(format!("{base}/v2/team/other/blobs/{layer}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "a blob admitted for team/app leaked into team/other"
    );

    // Hostile names never reach the store or the upstream.
    let long = "a".repeat(300);
    for path in [
        "/v2/../etc/passwd/manifests/v1".to_string(),
        "/v2/team/../../etc/manifests/v1".into(),
        "/v2/Team/App/manifests/v1".into(),
        format!("/v2/{long}/manifests/v1"),
        "/v2/team/app/manifests/..%2f..%2fetc".into(),
        "/v2/team/app/blobs/sha256:..%2f..%2fetc%2fpasswd".into(),
    ] {
        let (status, resp) = tokio::task::spawn_blocking({
            let addr = customs.addr;
            move || raw_request(addr, "GET", &path)
        })
        .await
        .unwrap();
        assert!(status == 400 || status == 404, "{status}: {resp}");
        assert!(
            resp.contains("NAME_INVALID") || resp.contains("NOT_FOUND") || status == 404,
            "{resp}"
        );
    }
    let (status, resp) = tokio::task::spawn_blocking({
        let addr = customs.addr;
        move || raw_request(addr, "GET", "/v2/Team/App/manifests/v1")
    })
    .await
    .unwrap();
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("NAME_INVALID"), "{resp}");
    // Pushes are refused.
    let r = http
        .put(format!("{base}/v2/team/app/manifests/v2"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Unknown registries (ns) are refused, not fetched.
    let r = http
        .get(format!("{base}/v2/team/app/manifests/v1?ns=evil.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[test]
fn upstream_serving_wrong_bytes_is_caught_and_nothing_is_stored() {
    let f = fixture(false);
    let proxy = Proxy::start(&f.registry.url());
    proxy.state.corrupt_blobs.store(true, Ordering::SeqCst);
    let customs = Customs::up(&f.dir.join("gw"), &proxy.url(), &[]);
    let (ok, err) = skopeo_pull(&format!("{}/team/app:v1", customs.addr), &f.dir.join("bad"));
    assert!(!ok, "a corrupted blob was accepted");
    assert!(!err.is_empty());
    // Only manifests are stored: no blob of the image made it to disk.
    let pushed = layout_blobs(&f.dir.join("layout"));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(f.dir.join("layout/blobs/sha256").join(&f.app_digest[7..])).unwrap(),
    )
    .unwrap();
    let mut blobs = vec![manifest["config"]["digest"].as_str().unwrap().to_owned()];
    blobs.extend(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    for b in &blobs {
        assert!(pushed.contains(b));
        assert!(
            !f.dir.join("gw/store/blobs/sha256").join(&b[7..]).exists(),
            "{b} was stored (hash {})\n{:?}",
            sha256_file(&f.dir.join("gw/store/blobs/sha256").join(&b[7..])),
            proxy.blob_counts()
        );
    }
    assert_eq!(
        std::fs::read_dir(f.dir.join("gw/store/tmp"))
            .unwrap()
            .count(),
        0
    );
    // The upstream is fixed: the next pull succeeds.
    proxy.state.corrupt_blobs.store(false, Ordering::SeqCst);
    let out = f.dir.join("good");
    let (ok, err) = skopeo_pull(&format!("{}/team/app:v1", customs.addr), &out);
    assert!(ok, "{err}");
    assert_eq!(layout_tag_digest(&out, "pulled"), f.app_digest);
}

#[test]
fn warm_image_still_pulls_when_the_upstream_is_down() {
    let mut f = fixture(false);
    // A zero tag TTL forces the stale-window path once the upstream is gone.
    let customs = Customs::up(
        &f.dir.join("gw"),
        &f.registry.url(),
        &["--tag-ttl-secs", "0"],
    );
    let (ok, err) = skopeo_pull(
        &format!("{}/team/app:v1", customs.addr),
        &f.dir.join("warm"),
    );
    assert!(ok, "{err}");
    f.registry.stop();
    let out = f.dir.join("offline");
    let (ok, err) = skopeo_pull(&format!("{}/team/app:v1", customs.addr), &out);
    assert!(
        ok,
        "offline pull by tag failed: {err}\n{}",
        customs.log_text()
    );
    assert_eq!(layout_tag_digest(&out, "pulled"), f.app_digest);
    let (ok, err) = skopeo_pull(
        &format!("{}/team/app@{}", customs.addr, f.app_digest),
        &f.dir.join("offline-digest"),
    );
    assert!(ok, "offline pull by digest failed: {err}");
    // A never-seen image fails with a clear error, not a hang or an allow.
    let (ok, _) = skopeo_pull(
        &format!("{}/team/multi:v1", customs.addr),
        &f.dir.join("never"),
    );
    assert!(!ok);
}

#[test]
fn sigterm_stops_customs_up_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut customs = Customs::up(&tmp.path().join("gw"), "http://127.0.0.1:9", &[]);
    assert!(
        customs.log_text().contains("customs ready") || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            customs.log_text().contains("customs ready")
        }
    );
    let status = customs.proc.terminate();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        customs.log_text()
    );
    assert!(customs.log_text().contains("customs stopped"));
}

#[test]
fn upstream_basic_auth_from_docker_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start_with_auth(&dir.join("registry"), "puller", "s3cret-pw");
    let digest = make_image(&dir.join("layout"), "v1", &[50_000], &[], 3);
    push_as(
        &dir.join("layout"),
        "v1",
        registry.addr,
        "private/app",
        Some("puller:s3cret-pw"),
    );

    // Without credentials the gateway cannot fetch, and says why.
    let anon = Customs::up(&dir.join("anon"), &registry.url(), &[]);
    let (ok, err) = skopeo_pull(
        &format!("{}/private/app:v1", anon.addr),
        &dir.join("anon-pull"),
    );
    assert!(!ok, "pulled a private image without credentials");
    assert!(
        err.to_lowercase().contains("unauthorized") || err.contains("401") || err.contains("502"),
        "{err}"
    );

    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"cHVsbGVyOnMzY3JldC1wdw=="}}}}}}"#,
            registry.addr
        ),
    )
    .unwrap();
    let customs = Customs::up(
        &dir.join("gw"),
        &registry.url(),
        &["--docker-config", config.to_str().unwrap()],
    );
    let out = dir.join("pull");
    let (ok, err) = skopeo_pull(&format!("{}/private/app:v1", customs.addr), &out);
    assert!(
        ok,
        "authenticated pull failed: {err}\n{}",
        customs.log_text()
    );
    assert_eq!(layout_tag_digest(&out, "pulled"), digest);
    // The password never shows up in logs.
    assert!(!customs.log_text().contains("s3cret-pw"));
}

/// `customs node-init` routing `registry` through `peer`, then `gateway`.
fn node_init(
    certs: &std::path::Path,
    peer: &Customs,
    gateway: &Customs,
    registry: &str,
    config: &std::path::Path,
) -> std::process::Output {
    run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_customs"))
            .arg("node-init")
            .arg("--certs-dir")
            .arg(certs)
            .args(["--peer", &peer.url(), "--gateway", &gateway.url()])
            .args(["--registry", registry])
            .arg("--containerd-config")
            .arg(config),
    )
}

#[test]
fn node_init_routes_containerd_through_the_peer_and_uninstall_restores_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start_with_access_log(&dir.join("registry"));
    let digest = make_image(&dir.join("layout"), "v1", &[300_000, 20_000], &[], 21);
    push(&dir.join("layout"), "v1", registry.addr, "team/ni");
    let gw = Customs::up(&dir.join("gw"), &registry.url(), &[]);
    let peer = Customs::peer(&dir.join("peer"), &gw.url(), &registry.addr.to_string());
    let reg = registry.addr.to_string();
    // The node as the operator left it: a hosts.toml of their own for the
    // registry, and containerd 1.7's default config (config_path empty).
    let certs = dir.join("certs.d");
    std::fs::create_dir_all(certs.join(&reg)).unwrap();
    let theirs = "server = \"http://127.0.0.1:9\"\n";
    std::fs::write(certs.join(&reg).join("hosts.toml"), theirs).unwrap();
    let config = dir.join("config.toml");
    let config_text =
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"\"\n";
    std::fs::write(&config, config_text).unwrap();
    let out = node_init(&certs, &peer, &gw, &reg, &config);
    let said = String::from_utf8_lossy(&out.stdout);
    // The exact fix, and the config left alone.
    let fix = format!(
        "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{}\"\n",
        certs.display()
    );
    assert!(said.contains(&fix), "{said}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), config_text);
    assert!(certs.join("_default/hosts.toml").exists());

    // containerd pulls through the peer: the upstream served each blob once,
    // to the gateway, and nothing to containerd.
    let ctrd = Containerd::start(&dir.join("containerd"));
    let reference = format!("{reg}/team/ni:v1");
    let (ok, text) = ctrd.pull("ni", &certs, &reference);
    assert!(
        ok,
        "ctr pull failed: {text}\npeer log:\n{}",
        peer.log_text()
    );
    assert_eq!(
        ctrd.image_digest("ni", &reference).as_deref(),
        Some(digest.as_str())
    );
    let gets = registry.blob_gets();
    assert!(
        !gets.is_empty() && gets.values().all(|n| *n == 1),
        "{gets:?}"
    );

    // Uninstall: the operator's file is back, node-init's are gone.
    run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_customs"))
            .arg("node-init")
            .arg("--certs-dir")
            .arg(&certs)
            .arg("--uninstall"),
    );
    assert_eq!(
        std::fs::read_to_string(certs.join(&reg).join("hosts.toml")).unwrap(),
        theirs
    );
    assert!(!certs.join("_default").exists());
}

/// `scripts/build-image --binary CUSTOMS --out OUT [--push TARGET]`:
/// the image digest it printed.
fn build_image(out: &std::path::Path, push: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(repo_root().join("scripts/build-image"));
    cmd.arg("--binary")
        .arg(env!("CARGO_BIN_EXE_customs"))
        .arg("--out")
        .arg(out);
    if let Some(p) = push {
        cmd.args(["--push", p]);
    }
    let o = run_ok(&mut cmd);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("image ")?.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no digest in {text}"))
        .to_owned()
}

#[test]
fn the_image_is_reproducible_pulled_through_customs_and_runs_under_containerd() {
    require("umoci");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    let target = format!("{reg}/customs/customs:test");
    // The same binary gives the same image, byte for byte.
    let first = build_image(&dir.join("img-1"), Some(&target));
    assert_eq!(build_image(&dir.join("img-2"), None), first);
    // Pulled through a gateway and a peer by containerd, run with runc.
    let gw = Customs::up(&dir.join("gw"), &registry.url(), &[]);
    let peer = Customs::peer(&dir.join("peer"), &gw.url(), &reg);
    let certs = dir.join("certs.d");
    node_init(&certs, &peer, &gw, &reg, &dir.join("no-config.toml"));
    let ctrd = Containerd::start(&dir.join("containerd"));
    let (ok, text) = ctrd.pull("img", &certs, &target);
    assert!(ok, "ctr pull failed: {text}");
    assert_eq!(
        ctrd.image_digest("img", &target).as_deref(),
        Some(first.as_str())
    );
    let (ok, out) = ctrd.run("img", &target, "customs-version", &["customs", "--version"]);
    assert!(ok, "ctr run failed: {out}");
    assert!(
        out.contains(&format!("customs {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    // It runs as the non-root user by default.
    let o = run_ok(
        std::process::Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:latest", dir.join("img-1").display())),
    );
    let config: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(config["config"]["User"], "65532:65532", "{config}");
}
