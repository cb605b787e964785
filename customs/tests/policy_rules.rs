#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Policy rules end to end with `customs verify` against a real registry,
//! evidence made by the independent Python signer (testdata/sign.py):
//! M-of-N thresholds over ECDSA, Ed25519 and RSA keys, signatures kept in
//! another repository (COSIGN_REPOSITORY), SLSA v1 builder/source/ref
//! rules, SPDX license and vulnerability-scan CEL conditions, in-toto
//! Statement v0.1 — each with the variant that must fail.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

fn verify(image: &str, policy: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_customs"))
        .args(["verify", image, "--policy"])
        .arg(policy)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

const BUILDER: &str = "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v1.10.0";

#[test]
fn thresholds_signature_repositories_slsa_v1_spdx_and_vuln_conditions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let reg = registry.addr.to_string();
    let layout = dir.join("layout");
    let repos = [
        "team/two-keys",
        "team/one-key",
        "team/elsewhere",
        "team/gpl",
        "team/vulnerable",
        "team/badref",
        "team/v01",
        "team/tampered",
    ];
    let mut digest = std::collections::HashMap::new();
    for (i, repo) in repos.iter().enumerate() {
        let tag = format!("t{i}");
        digest.insert(
            *repo,
            make_image(&layout, &tag, &[20_000], &[], 40 + i as u64),
        );
        push(&layout, &tag, registry.addr, repo);
    }
    let keys = dir.join("keys");
    for (name, alg) in [("ec", "ecdsa-p256"), ("ed", "ed25519"), ("rsa", "rsa")] {
        let out = keys.join(name);
        sign_py(&["keygen", "--out", out.to_str().unwrap(), "--alg", alg]);
    }
    let k = |name: &str| keys.join(name).join("cosign.key").display().to_string();
    // One .sig manifest per image, one layer per key (as cosign appends).
    let sign = |repo: &str, names: &[&str], extra: &[&str]| {
        let d = &digest[repo];
        let paths: Vec<String> = names.iter().map(|n| k(n)).collect();
        let mut a = vec!["sign", "--registry", &reg, "--repo", repo, "--digest", d];
        for p in &paths {
            a.push("--key");
            a.push(p);
        }
        a.extend_from_slice(extra);
        sign_py(&a);
    };
    let attest = |repo: &str, extra: &[&str]| {
        let d = &digest[repo];
        let key = k("ec");
        let mut a = vec![
            "attest",
            "--registry",
            &reg,
            "--repo",
            repo,
            "--digest",
            d,
            "--key",
            &key,
        ];
        a.extend_from_slice(extra);
        sign_py(&a);
    };
    let full = [
        "--predicate",
        "slsa1",
        "--predicate",
        "spdx",
        "--predicate",
        "vuln",
    ];
    // Two of three keys (ECDSA and Ed25519); full attestations.
    sign("team/two-keys", &["ec", "ed"], &[]);
    attest("team/two-keys", &full);
    // Only one key.
    sign("team/one-key", &["rsa"], &[]);
    attest("team/one-key", &full);
    // Signatures and attestations in another repository.
    sign(
        "team/elsewhere",
        &["ec", "rsa"],
        &["--sig-repo", "sigs/store"],
    );
    attest(
        "team/elsewhere",
        &[&full[..], &["--sig-repo", "sigs/store"]].concat(),
    );
    // A denied license in the SBOM.
    sign("team/gpl", &["ec", "ed"], &[]);
    attest(
        "team/gpl",
        &[
            "--predicate",
            "slsa1",
            "--predicate",
            "spdx",
            "--predicate",
            "vuln",
            "--license",
            "GPL-3.0-only",
        ],
    );
    // Critical findings in the scan.
    sign("team/vulnerable", &["ec", "ed"], &[]);
    attest(
        "team/vulnerable",
        &[&full[..], &["--critical", "2"]].concat(),
    );
    // Built from a branch the policy does not accept.
    sign("team/badref", &["ec", "ed"], &[]);
    attest(
        "team/badref",
        &[&full[..], &["--source-ref", "refs/heads/feature"]].concat(),
    );
    // in-toto Statement v0.1.
    sign("team/v01", &["ec", "ed"], &[]);
    attest("team/v01", &[&full[..], &["--statement", "v0.1"]].concat());
    // A tampered attestation payload.
    sign("team/tampered", &["ec", "ed"], &[]);
    attest(
        "team/tampered",
        &[&full[..], &["--tamper", "payload"]].concat(),
    );

    let policy = dir.join("policy");
    std::fs::create_dir_all(policy.join("keys")).unwrap();
    for name in ["ec", "ed", "rsa"] {
        std::fs::copy(
            keys.join(name).join("cosign.pub"),
            policy.join("keys").join(format!("{name}.pub")),
        )
        .unwrap();
    }
    let rules = format!(
        r#"  signatures: {{authorities: [ec, ed, rsa], threshold: 2}}
  attestations:
    - name: provenance
      predicateType: https://slsa.dev/provenance/v1
      authorities: [ec]
      slsa:
        builderIds: ["{BUILDER}"]
        sourceRepositories: ["github.com/acme/app"]
        sourceRefs: ["refs/heads/main", "refs/tags/*"]
    - name: sbom
      predicateType: https://spdx.dev/Document
      authorities: [ec]
      conditions:
        - cel: "predicate.packages.all(p, !p.licenseConcluded.contains('GPL'))"
          message: "no GPL-licensed package"
    - name: vulns
      predicateType: https://cosign.sigstore.dev/attestation/vuln/v1
      authorities: [ec]
      conditions:
        - cel: "predicate.scanner.result.Results.all(r, !has(r.Vulnerabilities) || r.Vulnerabilities.all(v, v.Severity != 'CRITICAL'))"
          message: "no critical vulnerability"
"#
    );
    let authorities = |sig_repo: &str| {
        format!(
            r#"  authorities:
    - {{name: ec, key: {{path: keys/ec.pub}}{sig_repo}}}
    - {{name: ed, key: {{path: keys/ed.pub}}{sig_repo}}}
    - {{name: rsa, key: {{path: keys/rsa.pub}}{sig_repo}}}
"#
        )
    };
    std::fs::write(
        policy.join("team.yaml"),
        format!(
            "apiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: team}}\nspec:\n  images: [\"{reg}/team/**\"]\n  exclude: [\"{reg}/team/elsewhere\"]\n  mode: enforce\n{}{rules}---\napiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: elsewhere}}\nspec:\n  images: [\"{reg}/team/elsewhere\"]\n  mode: enforce\n{}{rules}",
            authorities(""),
            authorities(&format!(", signatureRepository: {reg}/sigs/store"))
        ),
    )
    .unwrap();

    let img = |repo: &str| format!("{reg}/{repo}@{}", digest[repo]);
    for repo in ["team/two-keys", "team/elsewhere", "team/v01"] {
        let (ok, out) = verify(&img(repo), &policy);
        assert!(ok, "{repo} must be admitted:\n{out}");
    }
    for (repo, why) in [
        ("team/one-key", "1 of 2 required authorities signed"),
        ("team/gpl", "no GPL-licensed package"),
        ("team/vulnerable", "no critical vulnerability"),
        ("team/badref", "refs/heads/feature"),
        ("team/tampered", "FAIL attestation"),
    ] {
        let (ok, out) = verify(&img(repo), &policy);
        assert!(!ok, "{repo} must be denied:\n{out}");
        assert!(out.contains(why), "{repo}: expected {why:?} in\n{out}");
    }
}

/// A registry that answers the signature lookup with a 5 MiB manifest (the
/// real registry refuses to store one, so a proxy plays the hostile
/// registry): the decision fails closed with the limit named, and the same
/// image with the same signature passes once the registry is honest.
#[test]
fn an_oversized_signature_manifest_fails_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let layout = dir.join("layout");
    let digest = make_image(&layout, "v1", &[20_000], &[], 77);
    push(&layout, "v1", registry.addr, "team/huge");
    let keys = dir.join("keys");
    sign_py(&[
        "keygen",
        "--out",
        keys.to_str().unwrap(),
        "--alg",
        "ecdsa-p256",
    ]);
    let key = keys.join("cosign.key").display().to_string();
    let reg = registry.addr.to_string();
    sign_py(&[
        "sign",
        "--registry",
        &reg,
        "--repo",
        "team/huge",
        "--digest",
        &digest,
        "--key",
        &key,
    ]);
    let proxy = support::proxy::Proxy::start(&registry.url());
    let policy = dir.join("policy");
    std::fs::create_dir_all(policy.join("keys")).unwrap();
    std::fs::copy(keys.join("cosign.pub"), policy.join("keys/release.pub")).unwrap();
    std::fs::write(
        policy.join("policy.yaml"),
        format!(
            "apiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {{name: signed}}\nspec:\n  images: [\"{}/team/**\"]\n  mode: enforce\n  authorities:\n    - {{name: release, key: {{path: keys/release.pub}}}}\n  signatures: {{authorities: [release]}}\n",
            proxy.addr
        ),
    )
    .unwrap();
    let image = format!("{}/team/huge@{digest}", proxy.addr);
    proxy
        .state
        .oversized_signatures
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, out) = verify(&image, &policy);
    assert!(!ok, "an oversized signature manifest must deny: {out}");
    assert!(out.contains("4 MiB"), "the limit is named: {out}");
    proxy
        .state
        .oversized_signatures
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (ok, out) = verify(&image, &policy);
    assert!(ok, "the honest registry's signature verifies: {out}");
}
