#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The slsa-verifier container vector (keyless, SLSA v0.2, multi-arch) in a
//! real `docker-registry`, decided by `customs verify`, replayed by
//! `customs policy test`, and enforced through the mirror with policies
//! kept in a Git repository (reloads, a refused revision, containerd's
//! own error output naming the failed rule).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::containerd::Containerd;
use support::*;

const REPO: &str = "slsa-framework/example-package";

fn index_digest() -> String {
    slsa_vector_digest()
}

/// A policy directory admitting the vector when `source_repo` is right,
/// plus a `warn` policy for `team/**` that wants a signature.
fn write_policy(dir: &Path, registry: &str, source_repo: &str) {
    let slsa = slsa_vector_policy(dir, &[format!("{registry}/slsa-framework/**")], source_repo);
    std::fs::write(
        dir.join("slsa.yaml"),
        format!(
            r#"{slsa}---
apiVersion: customs.dev/v1alpha1
kind: ImagePolicy
metadata: {{name: team-warn}}
spec:
  images: ["{registry}/team/**"]
  mode: warn
  authorities:
    - name: release-key
      keyless:
        trustedRoot: trust/trusted_root.json
        identities:
          - {{issuer: "{GH_ISSUER}", subject: "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main"}}
  signatures: {{authorities: [release-key]}}
"#
        ),
    )
    .unwrap();
}

fn customs(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_customs"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn verify_cli_decides_the_slsa_vector_from_a_registry_and_policy_test_replays_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    push_slsa_vector(dir, registry.addr, REPO);
    let reg = registry.addr.to_string();
    let image = format!("{reg}/{REPO}:v1");
    let good = dir.join("good");
    write_policy(&good, &reg, "github.com/slsa-framework/example-package");
    let bad = dir.join("bad");
    write_policy(&bad, &reg, "github.com/acme/other");

    // Allowed: exit 0, JSON names the revision and the evidence used.
    let evidence = good.join("evidence/slsa.json");
    std::fs::create_dir_all(evidence.parent().unwrap()).unwrap();
    let (code, out, err) = customs(&[
        "verify",
        &image,
        "--policy",
        good.to_str().unwrap(),
        "--output",
        "json",
        "--record-evidence",
        evidence.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let d: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["allowed"], true, "{out}");
    assert_eq!(d["digest"], index_digest());
    assert!(d["revision"].as_str().unwrap().starts_with("dir-sha256:"));
    let rule = &d["policies"][0]["rules"][0];
    assert_eq!(rule["rule"], "attestation provenance");
    assert!(
        rule["evidence"][0]["rekorLogIndex"].is_number(),
        "the Rekor entry is recorded: {out}"
    );

    // Denied for another source repository: non-zero, the rule is named.
    let (code, out, err) = customs(&["verify", &image, "--policy", bad.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(out.starts_with("DENIED"), "{out}");
    assert!(
        out.contains("FAIL attestation provenance") && out.contains("github.com/acme/other"),
        "{out}"
    );
    // A tag that does not exist is an error, not a decision.
    let (code, _, err) = customs(&[
        "verify",
        &format!("{reg}/{REPO}:nope"),
        "--policy",
        good.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(!err.is_empty());

    // The recorded evidence replays offline under `customs policy test`.
    let digest = index_digest();
    let tests = |expect_good: &str| {
        format!(
            r#"apiVersion: customs.dev/v1alpha1
kind: ImagePolicyTest
metadata: {{name: slsa-cases}}
spec:
  cases:
    - name: the vector passes
      image: "{reg}/{REPO}@{digest}"
      evidence: evidence/slsa.json
      expect: {expect_good}
    - name: another repository is not covered
      image: "{reg}/elsewhere/app@{digest}"
      evidence: evidence/slsa.json
      expect: deny
      reasonContains: no policy applies
"#
        )
    };
    std::fs::write(good.join("tests.yaml"), tests("allow")).unwrap();
    let (code, out, err) = customs(&["policy", "test", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 cases, 2 passed, 0 failed"), "{out}");
    std::fs::write(good.join("tests.yaml"), tests("deny")).unwrap();
    let (code, out, _) = customs(&["policy", "test", good.to_str().unwrap()]);
    assert_ne!(code, 0, "a wrong expectation fails: {out}");
    assert!(
        out.contains("FAIL") && out.contains("the vector passes"),
        "{out}"
    );
    // Evidence tampered on disk no longer verifies.
    let mut ev: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    ev["digest"] = format!("sha256:{}", "0".repeat(64)).into();
    std::fs::write(&evidence, ev.to_string()).unwrap();
    std::fs::write(good.join("tests.yaml"), tests("allow")).unwrap();
    let (code, out, _) = customs(&["policy", "test", good.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("evidence was recorded for"), "{out}");
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn commit_all(repo: &Path, msg: &str) -> String {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", msg]);
    git(repo, &["rev-parse", "HEAD"])
}

fn wait_for_audit(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "audit log never contained {needle:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn policies_from_git_are_enforced_reloaded_and_refused_and_containerd_sees_the_reason() {
    require("git");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    push_slsa_vector(dir, registry.addr, REPO);
    let reg = registry.addr.to_string();
    let layout = dir.join("team-layout");
    make_image(&layout, "v1", &[40_000], &[], 7);
    push(&layout, "v1", registry.addr, "team/unsigned");

    let repo = dir.join("policy-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write_policy(&repo, &reg, "github.com/slsa-framework/example-package");
    let first = commit_all(&repo, "admit the slsa example");

    let gw = Customs::up(
        &dir.join("gw"),
        &registry.url(),
        &[
            "--policy-git",
            repo.to_str().unwrap(),
            "--policy-ref",
            "main",
            "--policy-poll-secs",
            "1",
        ],
    );
    let audit = dir.join("gw/audit/audit.jsonl");
    // The multi-arch index is admitted by its provenance; skopeo copies
    // every platform (the children are covered by the admitted index).
    let (ok, err) = skopeo_pull(&format!("{}/{REPO}:v1", gw.addr), &dir.join("pulled-1"));
    assert!(ok, "{err}\n{}", gw.log_text());
    // Warn mode: the unsigned image is allowed and flagged.
    let (ok, err) = skopeo_pull(
        &format!("{}/team/unsigned:v1", gw.addr),
        &dir.join("pulled-warn"),
    );
    assert!(ok, "warn mode allows: {err}");
    let text = wait_for_audit(&audit, "WARN policy team-warn");
    assert!(text.contains(&first), "decisions carry the commit: {text}");

    // A broken revision is refused; the last good one stays in force.
    std::fs::write(repo.join("broken.yaml"), "apiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: broken}\nspec:\n  images: [\"**\"]\n  mode: sometimes\n").unwrap();
    let broken = commit_all(&repo, "a typo");
    let text = wait_for_audit(&audit, "policy-refused");
    assert!(
        text.contains(&broken) && text.contains("broken.yaml") && text.contains("line 6"),
        "the refusal names the commit and file:line: {text}"
    );
    let (ok, err) = skopeo_pull(&format!("{}/{REPO}:v1", gw.addr), &dir.join("pulled-2"));
    assert!(ok, "the last good revision still admits: {err}");

    // A revision naming another source repository denies, to containerd
    // too, and ctr's own output carries the failed rule.
    std::fs::remove_file(repo.join("broken.yaml")).unwrap();
    write_policy(&repo, &reg, "github.com/acme/other");
    let strict = commit_all(&repo, "only acme/other");
    wait_for_audit(&audit, &format!("\"revision\":\"{strict}\""));
    let hosts = dir.join("hosts");
    let out = Command::new(env!("CARGO_BIN_EXE_customs"))
        .args([
            "containerd-config",
            "--mirror",
            &gw.url(),
            "--gateway",
            &gw.url(),
        ])
        .args(["--registry", &reg, "--out"])
        .arg(&hosts)
        .output()
        .unwrap();
    assert!(out.status.success());
    let ctrd = Containerd::start(&dir.join("containerd"));
    let (ok, text) = ctrd.pull("policy", &hosts, &format!("{reg}/{REPO}:v1"));
    assert!(!ok, "denied under the new revision: {text}");
    assert!(
        text.contains("DENIED") && text.contains("attestation provenance"),
        "containerd's error names the rule: {text}"
    );
    let log = std::fs::read_to_string(&audit).unwrap();
    let denial = log
        .lines()
        .filter(|l| l.contains("\"verdict\":\"deny\"") && l.contains(&strict))
        .count();
    assert!(denial >= 1, "{log}");
}

/// Commits everything with a fixed commit time (Unix seconds).
fn commit_at(repo: &Path, msg: &str, time: u64) -> String {
    git(repo, &["add", "-A"]);
    let date = format!("@{time} +0000");
    run_ok(
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(["commit", "-q", "-m", msg])
            .env("GIT_COMMITTER_DATE", &date)
            .env("GIT_AUTHOR_DATE", &date),
    );
    git(repo, &["rev-parse", "HEAD"])
}

#[test]
fn a_node_never_takes_an_admission_from_a_gateway_behind_the_newest_revision() {
    require("git");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    let layout = dir.join("team-layout");
    make_image(&layout, "v1", &[40_000], &[], 8);
    push(&layout, "v1", registry.addr, "team/unsigned");
    let repo = dir.join("policy-repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write_policy(&repo, &reg, "github.com/slsa-framework/example-package");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let first = commit_at(&repo, "team images in warn mode", now - 100);
    let gateway = |name: &str, reference: &str| {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let args = strings(&[
            "gateway",
            "--data-dir",
            dir.join(name).to_str().unwrap(),
            "--listen",
            &addr.to_string(),
            "--upstream",
            &registry.url(),
            "--policy-git",
            repo.to_str().unwrap(),
            "--policy-ref",
            reference,
            "--policy-poll-secs",
            "1",
        ]);
        Customs::spawn(&args, addr, &dir.join(name))
    };
    // A follows main; B lags on the first commit (as a gateway that has not
    // pulled yet would).
    let mut a = gateway("gw-a", "main");
    let b = gateway("gw-b", &first);
    let node = dir.join("node");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let peer = Customs::spawn(
        &strings(&[
            "peer",
            "--gateway",
            &a.url(),
            "--gateway",
            &b.url(),
            "--listen",
            &addr.to_string(),
            "--data-dir",
            node.to_str().unwrap(),
            "--default-registry",
            &reg,
            "--admission-ttl",
            "1s",
        ]),
        addr,
        &node,
    );
    let image = format!("{}/team/unsigned:v1", peer.addr);
    let (ok, err) = skopeo_pull(&image, &dir.join("pulled-1"));
    assert!(ok, "warn mode admits: {err}");

    // The revoking commit: A takes it, the node learns it from A.
    let policy = std::fs::read_to_string(repo.join("slsa.yaml")).unwrap();
    std::fs::write(
        repo.join("slsa.yaml"),
        policy.replace("mode: warn", "mode: enforce"),
    )
    .unwrap();
    let strict = commit_at(&repo, "team images must be signed", now);
    wait_for_audit(
        &dir.join("gw-a/audit/audit.jsonl"),
        &format!("\"revision\":\"{strict}\""),
    );
    // Revocation reaches a node within two poll intervals (SECURITY.md):
    // the node's admission from the first pull may be reused until then.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, _) = skopeo_pull(&image, &dir.join("pulled-2"));
    assert!(!ok, "denied under the newest revision");
    // A goes; B, still on the first commit, would admit the image again.
    a.proc.terminate();
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, err) = skopeo_pull(&image, &dir.join("pulled-3"));
    assert!(!ok, "a lagging gateway re-admitted a revoked image");
    assert!(
        err.contains("older policy revision") || err.to_lowercase().contains("denied"),
        "the refusal says why: {err}"
    );
    assert!(
        peer.log_text().contains("older policy revision"),
        "the node saw B lag: {}",
        peer.log_text()
    );
    drop(b);
}
