//! The node as a policy enforcement point (findings 1, 2 and 4): a warm
//! peer asked for cached content under another repository, registry or tag;
//! a policy revision that revokes an image, seen at the peer and the
//! gateway for manifests and blobs; the gateway unreachable (fail static,
//! then refusal); a manifest declaring a truncated size for a stored layer.

use crate::support::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// A plain HTTP/1.1 GET on loopback: (status, reason phrase, body).
fn get(addr: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(resp.len());
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.get(split + 4..).unwrap_or_default().to_vec();
    (status, status_line, body)
}

/// Asserts an OCI `DENIED` answer whose message contains `why`.
fn assert_denied(what: &str, (status, line, body): (u16, String, Vec<u8>), why: &str) {
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 403, "{what}: {line} {body}");
    assert!(body.contains("DENIED"), "{what}: {body}");
    assert!(body.contains(why), "{what}: wanted {why:?} in {body}");
}

/// An ImagePolicy set: `audit` (allows, recorded) for the listed
/// repositories, `enforce` with a required signature (denies: nothing is
/// signed) for the others named.
fn write_policy(dir: &Path, reg: &str, audit: &[&str], enforce: &[&str]) {
    let mut docs = Vec::new();
    for (mode, repos) in [("audit", audit), ("enforce", enforce)] {
        for repo in repos {
            docs.push(format!(
                "apiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: {}-{mode}}}\nspec:\n  images: [\"{reg}/{repo}\"]\n  mode: {mode}\n  authorities:\n    - name: k\n      key: {{path: keys/cosign.pub}}\n  signatures: {{authorities: [k]}}\n",
                repo.replace('/', "-")
            ));
        }
    }
    // Written whole, then renamed: the poller never reads half a revision.
    let tmp = dir.join(".policy.yaml.tmp");
    std::fs::write(&tmp, docs.join("---\n")).unwrap();
    std::fs::rename(tmp, dir.join("policy.yaml")).unwrap();
}

/// A policy directory with a key, admitting (audit mode) `audit`.
fn policy_dir(dir: &Path, reg: &str, audit: &[&str]) -> std::path::PathBuf {
    let p = dir.join("policy");
    std::fs::create_dir_all(&p).unwrap();
    sign_py(&["keygen", "--out", p.join("keys").to_str().unwrap()]);
    write_policy(&p, reg, audit, &[]);
    p
}

/// The first layer digest of an image manifest served at `addr`.
fn first_layer(addr: &str, repo: &str, digest: &str) -> (String, u64) {
    let (status, line, body) = get(addr, &format!("/v2/{repo}/manifests/{digest}"));
    assert_eq!(status, 200, "{line}");
    let m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let l = &m["layers"][0];
    (
        l["digest"].as_str().unwrap().to_owned(),
        l["size"].as_u64().unwrap(),
    )
}

fn peer_refusals(peer: SocketAddr, reason: &str) -> u64 {
    let text = http_get_text(&format!("http://{peer}/metrics"));
    text.lines()
        .find(|l| l.starts_with("customs_peer_refusals_total") && l.contains(reason))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Finding 1 and 2: after `allowed/app` was pulled through a peer, the same
/// digest is refused under another repository, another registry and by a
/// denied tag; then a revision that revokes `allowed/app` reaches the peer
/// and the gateway within two poll intervals for manifests and blobs, while
/// `allowed/other`, which shares the layer, stays available.
#[test]
fn a_warm_peer_enforces_admission_and_revocation_reaches_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    let layout = dir.join("layout");
    let digest = make_image(&layout, "v1", &[300_000], &[], 7);
    for repo in ["allowed/app", "allowed/other", "denied/app"] {
        push(&layout, "v1", registry.addr, repo);
    }
    let policy = policy_dir(dir, &reg, &["allowed/app", "allowed/other"]);
    let poll = Duration::from_secs(1);
    let fleet = Fleet::up(
        &dir.join("customs"),
        &registry.url(),
        1,
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--policy-poll-secs",
            "1",
        ],
    );
    let peer = fleet.peers[0];
    let peer_s = peer.to_string();
    let gw = fleet.gateway.addr.to_string();
    for repo in ["allowed/app", "allowed/other"] {
        let (ok, err) = skopeo_pull(
            &format!("{peer}/{repo}:v1"),
            &dir.join(repo.replace('/', "-")),
        );
        assert!(
            ok,
            "{repo} through the peer: {err}\n{}",
            fleet.gateway.log_text()
        );
    }
    let (layer, _) = first_layer(&peer_s, "allowed/app", &digest);

    // The same digest, cached on the peer, under a denied repository...
    assert_denied(
        "peer: denied/app by digest",
        get(&peer_s, &format!("/v2/denied/app/manifests/{digest}")),
        "no policy",
    );
    let (ok, err) = skopeo_pull(&format!("{peer}/denied/app@{digest}"), &dir.join("d1"));
    assert!(!ok, "a full pull of denied/app by digest must fail");
    assert!(err.to_lowercase().contains("denied"), "{err}");
    // ...its layer under the denied repository...
    let (status, line, _) = get(&peer_s, &format!("/v2/denied/app/blobs/{layer}"));
    assert!(
        status == 403 || status == 404,
        "peer served a denied repository's layer: {line}"
    );
    // ...by tag...
    assert_denied(
        "peer: denied/app:v1",
        get(&peer_s, "/v2/denied/app/manifests/v1"),
        "no policy",
    );
    // ...and under a registry the gateway does not serve.
    assert_denied(
        "peer: unconfigured ns",
        get(
            &peer_s,
            &format!("/v2/allowed/app/manifests/{digest}?ns=evil.example"),
        ),
        // Refused by the registry check or by the policy, naming it.
        "evil.example",
    );
    assert!(peer_refusals(peer, "denied") >= 3, "refusals are counted");
    let audit = std::fs::read_to_string(dir.join("customs/audit/audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"decision\"") && l.contains("denied/app")),
        "the denial is an audit event"
    );

    // Revocation: allowed/app is now enforced (and unsigned), allowed/other stays.
    write_policy(&policy, &reg, &["allowed/other"], &["allowed/app"]);
    let start = Instant::now();
    let bound = 2 * poll + Duration::from_millis(1500);
    let mut seen = [false; 4];
    while seen.iter().any(|s| !s) {
        assert!(
            start.elapsed() < bound,
            "revocation not seen everywhere within {bound:?}: [peer manifest, peer blob, gateway manifest, gateway blob] = {seen:?}"
        );
        let checks = [
            (&peer_s, format!("/v2/allowed/app/manifests/{digest}")),
            (&peer_s, format!("/v2/allowed/app/blobs/{layer}")),
            (&gw, format!("/v2/allowed/app/manifests/{digest}")),
            (&gw, format!("/v2/allowed/app/blobs/{layer}")),
        ];
        for (i, (addr, path)) in checks.iter().enumerate() {
            if !seen[i] {
                seen[i] = get(addr, path).0 == 403;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "revocation seen at peer and gateway after {:?} (poll interval {poll:?})",
        start.elapsed()
    );
    assert_denied(
        "peer: revoked tag",
        get(&peer_s, "/v2/allowed/app/manifests/v1"),
        "signature",
    );
    // The shared layer stays available to the image still admitted.
    for addr in [&peer_s, &gw] {
        let (status, line, _) = get(addr, &format!("/v2/allowed/other/blobs/{layer}"));
        assert_eq!(status, 200, "{addr}: shared layer of allowed/other: {line}");
    }
    let (ok, err) = skopeo_pull(&format!("{peer}/allowed/app:v1"), &dir.join("revoked"));
    assert!(
        !ok && err.contains("denied") && err.contains("no signature"),
        "skopeo names the denial: {err}"
    );
}

/// Finding 2 (fail static): with the gateway down, a peer keeps serving
/// what was admitted under the newest revision for at most
/// `--admission-stale-max`, never anything else, then refuses.
#[test]
fn an_unreachable_gateway_fails_static_then_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    let layout = dir.join("layout");
    let digest = make_image(&layout, "v1", &[200_000], &[], 11);
    push(&layout, "v1", registry.addr, "allowed/app");
    push(&layout, "v1", registry.addr, "denied/app");
    let policy = policy_dir(dir, &reg, &["allowed/app"]);
    let stale_max = Duration::from_secs(4);
    let mut fleet = Standalone::start(
        dir,
        &registry,
        1,
        &strings(&[
            "--policy",
            policy.to_str().unwrap(),
            "--policy-poll-secs",
            "1",
        ]),
        &strings(&["--admission-ttl", "1s", "--admission-stale-max", "4s"]),
    );
    let peer = fleet.peer_addrs[0].clone();
    let (ok, err) = skopeo_pull(&format!("{peer}/allowed/app:v1"), &dir.join("p1"));
    assert!(ok, "{err}");
    let (status, line, _) = get(&peer, &format!("/v2/allowed/app/manifests/{digest}"));
    assert_eq!(status, 200, "{line}");
    let confirmed = Instant::now();
    fleet.gateway.terminate();
    // Past the TTL (the peer must ask again and cannot): fail static.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(confirmed.elapsed() < stale_max);
    let (status, line, _) = get(&peer, &format!("/v2/allowed/app/manifests/{digest}"));
    assert_eq!(status, 200, "fail static within the window: {line}");
    let (layer, _) = first_layer(&peer, "allowed/app", &digest);
    let (status, line, _) = get(&peer, &format!("/v2/allowed/app/blobs/{layer}"));
    assert_eq!(status, 200, "admitted layer within the window: {line}");
    // Never a repository that was not admitted, though the bytes are on disk.
    let (status, line, _) = get(&peer, &format!("/v2/denied/app/manifests/{digest}"));
    assert_eq!(status, 403, "not admitted, gateway down: {line}");
    // Past the window: refused, with the reason.
    while confirmed.elapsed() < stale_max + Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_denied(
        "peer past the fail-static window",
        get(&peer, &format!("/v2/allowed/app/manifests/{digest}")),
        "not confirmed",
    );
    let (ok, err) = skopeo_pull(&format!("{peer}/allowed/app@{digest}"), &dir.join("p2"));
    assert!(
        !ok && err.contains("not confirmed"),
        "skopeo names the reason: {err}"
    );
}

/// Finding 4: a manifest pushed to an admitted repository declares a
/// smaller size for a layer the gateway already stores. No piece manifest is
/// signed for that size, the request fails with the reason, and an honest
/// swarm pull of the real image still completes.
#[test]
fn a_truncated_size_for_a_stored_layer_is_refused_and_does_not_stick() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let layout = dir.join("layout");
    let digest = make_image(&layout, "v1", &[1_500_000], &[], 5);
    push(&layout, "v1", registry.addr, "team/app");
    push(&layout, "v1", registry.addr, "team/evil");
    let fleet = Fleet::up(&dir.join("customs"), &registry.url(), 2, &[]);
    let gw = fleet.gateway.addr.to_string();
    // The gateway stores the real layer (a direct pull).
    let (ok, err) = skopeo_pull(&format!("{gw}/team/app:v1"), &dir.join("direct"));
    assert!(ok, "{err}");
    let (layer, size) = first_layer(&gw, "team/app", &digest);
    // The attacker's manifest: the same layer, half its size.
    let (_, _, body) = get(
        &registry.addr.to_string(),
        &format!("/v2/team/app/manifests/{digest}"),
    );
    let mut m: serde_json::Value = serde_json::from_slice(&body).unwrap();
    m["layers"][0]["size"] = (size / 2).into();
    let evil = serde_json::to_vec(&m).unwrap();
    let mut s = std::net::TcpStream::connect(registry.addr).unwrap();
    write!(
        s,
        "PUT /v2/team/evil/manifests/v2 HTTP/1.1\r\nHost: {}\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        registry.addr,
        evil.len()
    )
    .unwrap();
    s.write_all(&evil).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 201"),
        "registry took the manifest: {resp}"
    );
    // Through a peer: the evil manifest is admitted (audit mode) but its
    // layer is refused at once, naming the size disagreement.
    let peer1 = fleet.peers[0].to_string();
    let (status, line, _) = get(&peer1, "/v2/team/evil/manifests/v2");
    assert_eq!(status, 200, "{line}");
    let start = Instant::now();
    let (status, line, body) = get(&peer1, &format!("/v2/team/evil/blobs/{layer}"));
    assert_ne!(status, 200, "a truncated layer was served: {line}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "the refusal must not hang"
    );
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("declares"), "reason names the size: {body}");
    // The honest image still swarms to another peer, complete.
    let start = Instant::now();
    let (ok, err) = skopeo_pull(&format!("{}/team/app:v1", fleet.peers[1]), &dir.join("p2"));
    assert!(ok, "honest pull after the attack: {err}");
    assert!(start.elapsed() < Duration::from_secs(60));
    let pulled = dir
        .join("p2/blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    assert_eq!(std::fs::metadata(pulled).unwrap().len(), size);
}
