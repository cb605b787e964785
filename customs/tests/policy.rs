#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! End to end through the mirror with the policy gate: images signed and
//! attested by an independent signer (testdata/sign.py: python
//! `cryptography` + `securesystemslib`), pushed to a real `docker-registry`,
//! pulled with `skopeo` through `customs up --policy DIR`.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

fn write_policy(dir: &Path, pubkey: &Path, registry: &str) {
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::copy(pubkey, dir.join("keys/release.pub")).unwrap();
    std::fs::write(
        dir.join("release.yaml"),
        format!(
            r#"apiVersion: customs.dev/v1alpha1
kind: ImagePolicy
metadata: {{name: release}}
spec:
  images: ["{registry}/team/**"]
  exclude: ["{registry}/team/audited"]
  mode: enforce
  authorities:
    - name: release-key
      key: {{path: keys/release.pub}}
  signatures: {{authorities: [release-key], threshold: 1}}
  attestations:
    - name: sbom
      predicateType: https://cyclonedx.org/bom
      authorities: [release-key]
      conditions:
        - {{cel: "size(predicate.components) > 0", message: "the SBOM lists components"}}
---
apiVersion: customs.dev/v1alpha1
kind: ImagePolicy
metadata: {{name: audited}}
spec:
  images: ["{registry}/team/audited"]
  mode: audit
  authorities:
    - name: release-key
      key: {{path: keys/release.pub}}
  signatures: {{authorities: [release-key]}}
"#
        ),
    )
    .unwrap();
}

#[test]
fn policy_gate_admits_signed_and_attested_images_and_denies_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    let layout = dir.join("layout");
    let mut digests = Vec::new();
    for (i, repo) in [
        "team/good",
        "team/unsigned",
        "team/nosbom",
        "team/tampered",
        "team/audited",
        "team/stolen",
    ]
    .iter()
    .enumerate()
    {
        let tag = format!("t{i}");
        let d = make_image(&layout, &tag, &[50_000], &[], 10 + i as u64);
        push(&layout, &tag, registry.addr, repo);
        digests.push((repo.to_string(), tag, d));
    }
    let keys = dir.join("keys");
    sign_py(&["keygen", "--out", keys.to_str().unwrap()]);
    let key = keys.join("cosign.key");
    let key = key.to_str().unwrap();
    let sign = |repo: &str, d: &str, extra: &[&str]| {
        let mut a = vec![
            "sign",
            "--registry",
            &reg,
            "--repo",
            repo,
            "--digest",
            d,
            "--key",
            key,
        ];
        a.extend_from_slice(extra);
        sign_py(&a);
    };
    let attest = |repo: &str, d: &str| {
        sign_py(&[
            "attest",
            "--registry",
            &reg,
            "--repo",
            repo,
            "--digest",
            d,
            "--key",
            key,
            "--predicate",
            "cyclonedx",
        ]);
    };
    let (good, nosbom, tampered, stolen) =
        (&digests[0].2, &digests[2].2, &digests[3].2, &digests[5].2);
    sign("team/good", good, &[]);
    attest("team/good", good);
    sign("team/nosbom", nosbom, &[]);
    sign("team/tampered", tampered, &["--tamper", "signature"]);
    attest("team/tampered", tampered);
    // A valid signature for another image, copied beside this one.
    sign("team/stolen", stolen, &["--payload-digest", good]);
    attest("team/stolen", stolen);

    let policy = dir.join("policy");
    write_policy(&policy, &keys.join("cosign.pub"), &reg);
    let customs = Customs::up(
        &dir.join("gw"),
        &registry.url(),
        &["--policy", policy.to_str().unwrap()],
    );
    let pull = |repo: &str, tag: &str| {
        skopeo_pull(
            &format!("{}/{repo}:{tag}", customs.addr),
            &dir.join(format!("out-{}", repo.replace('/', "-"))),
        )
    };
    let (ok, err) = pull("team/good", "t0");
    assert!(
        ok,
        "signed + attested image must pull: {err}\n{}",
        customs.log_text()
    );
    for (repo, tag, want) in [
        ("team/unsigned", "t1", "signatures"),
        ("team/nosbom", "t2", "attestation sbom"),
        ("team/tampered", "t3", "does not verify"),
        ("team/stolen", "t5", "not sha256"),
    ] {
        let (ok, err) = pull(repo, tag);
        assert!(!ok, "{repo} must be denied");
        assert!(
            err.contains("denied") || err.contains("DENIED"),
            "{repo}: {err}"
        );
        let log = customs.log_text();
        assert!(
            err.contains(want) || log.contains(want),
            "{repo}: reason {want:?} not found in\n{err}\n{log}"
        );
    }
    // Audit mode: unsigned, allowed, and the decision records the failure.
    let (ok, err) = pull("team/audited", "t4");
    assert!(ok, "audit mode must allow: {err}");
    let audit = std::fs::read_to_string(dir.join("gw/audit/audit.jsonl")).unwrap();
    assert!(audit.contains("AUDIT policy audited"), "{audit}");
}

#[test]
fn verify_bundle_cli_accepts_the_right_signer_and_refuses_the_wrong_one() {
    let v = repo_root().join("testdata/vectors");
    let run = |bundle: &str, identity: &str, target: &str, root: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_customs"));
        c.arg("verify-bundle")
            .arg("--bundle")
            .arg(v.join(bundle))
            .arg("--certificate-identity")
            .arg(identity)
            .arg("--certificate-oidc-issuer")
            .arg(
                if identity.contains('@') && !identity.starts_with("https") {
                    "https://github.com/login/oauth"
                } else {
                    "https://token.actions.githubusercontent.com"
                },
            );
        if let Some(r) = root {
            c.arg("--trusted-root").arg(v.join(r));
        }
        c.arg(target).status().unwrap().success()
    };
    let bcr = "https://github.com/bazel-contrib/publish-to-bcr/.github/workflows/publish.yaml@refs/tags/v0.0.1";
    let module = v.join("slsa-bcr/MODULE.bazel").display().to_string();
    // Embedded public-good root (no --trusted-root).
    assert!(run(
        "slsa-bcr/MODULE.bazel.intoto.jsonl",
        bcr,
        &module,
        None
    ));
    assert!(!run(
        "slsa-bcr/MODULE-wrong-signer.bazel.intoto.jsonl",
        bcr,
        &module,
        None
    ));
    let digest = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4";
    let root = Some("cosign/trusted_root_pgi.json");
    assert!(run(
        "cosign/oci-attestation.sigstore.json",
        "cody@soyland.com",
        digest,
        root
    ));
    let other = format!("sha256:{}", "1".repeat(64));
    assert!(!run(
        "cosign/oci-attestation.sigstore.json",
        "cody@soyland.com",
        &other,
        root
    ));
}

/// Keyless bundles made offline by sigstore-js (`@sigstore/sign` against
/// `@sigstore/mock`'s Fulcio, Rekor and CT log; testdata/keyless/sign.mjs),
/// checked by our verifier against the trusted root the mock describes.
#[test]
fn sigstore_js_keyless_bundles_verify_and_their_bad_variants_fail() {
    require("node");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("art.txt"), b"hello customs\n").unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    let id = "https://github.com/acme/app/.github/workflows/release.yml@refs/heads/main";
    let issuer = "https://token.actions.githubusercontent.com";
    let spec = serde_json::json!({"seed": "customs-test", "bundles": [
        {"name": "ok", "identity": id, "issuer": issuer, "kind": "message", "artifactFile": "art.txt"},
        {"name": "untrusted", "identity": id, "issuer": issuer, "kind": "message", "artifactFile": "art.txt", "untrustedCA": true},
        {"name": "expired", "identity": id, "issuer": issuer, "kind": "message", "artifactFile": "art.txt", "expired": true},
        {"name": "dsse", "identity": id, "issuer": issuer, "kind": "dsse", "subjectDigest": digest,
         "predicateType": "https://slsa.dev/provenance/v1", "predicate": {"buildDefinition": {"buildType": "t"}}},
    ]});
    std::fs::write(dir.join("spec.json"), spec.to_string()).unwrap();
    run_ok(
        Command::new("node")
            .arg(repo_root().join("testdata/keyless/sign.mjs"))
            .arg("--spec")
            .arg(dir.join("spec.json"))
            .arg("--out")
            .arg(dir.join("out")),
    );
    let verify = |name: &str, identity: &str, target: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_customs"))
            .arg("verify-bundle")
            .arg("--bundle")
            .arg(dir.join(format!("out/{name}.sigstore.json")))
            .args([
                "--certificate-identity",
                identity,
                "--certificate-oidc-issuer",
                issuer,
            ])
            .arg("--trusted-root")
            .arg(dir.join("out/trusted_root.json"))
            .arg(target)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let art = dir.join("art.txt").display().to_string();
    let (ok, err) = verify("ok", id, &art);
    assert!(ok, "{err}");
    let (ok, err) = verify("untrusted", id, &art);
    assert!(!ok && err.contains("chain"), "untrusted CA: {err}");
    let (ok, err) = verify("expired", id, &art);
    assert!(
        !ok && err.contains("Expired"),
        "expired at signing time: {err}"
    );
    let (ok, _) = verify(
        "ok",
        "https://github.com/evil/app/.github/workflows/x.yml@refs/heads/main",
        &art,
    );
    assert!(!ok, "wrong identity");
    let (ok, err) = verify("dsse", id, &digest);
    assert!(ok, "{err}");
    let (ok, _) = verify("dsse", id, &format!("sha256:{}", "cd".repeat(32)));
    assert!(!ok, "DSSE bundle for another subject");
    // A corrupted inclusion promise / proof must fail.
    let path = dir.join("out/ok.sigstore.json");
    let mut b: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let entry = &mut b["verificationMaterial"]["tlogEntries"][0];
    if let Some(p) = entry.get_mut("inclusionProof") {
        p["rootHash"] = serde_json::Value::String(base64_of(&[7u8; 32]));
    }
    if let Some(p) = entry.get_mut("inclusionPromise") {
        p["signedEntryTimestamp"] = serde_json::Value::String(base64_of(&[9u8; 70]));
    }
    std::fs::write(dir.join("out/bad.sigstore.json"), b.to_string()).unwrap();
    let (ok, _) = verify("bad", id, &art);
    assert!(!ok, "a corrupted inclusion proof/SET must fail");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
