//! Real public vectors (testdata/vectors, copied unchanged from their
//! upstream repositories): evidence nobody on this project produced.
#![allow(clippy::unwrap_used)]

use customs_policy::bundle_check::{BundleArtifact, BundleSigner, verify_bundle};
use customs_policy::layout::Layout;
use customs_policy::{Snapshot, compile};
use customs_protocol::{Digest, ImageName};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/vectors")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(vectors().join(rel)).unwrap()
}

const GH_ISSUER: &str = "https://token.actions.githubusercontent.com";
const GENERATOR: &str = "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v1.10.0";

fn slsa_policy(source_repo: &str, identity: &str) -> Snapshot {
    let policy = format!(
        r#"apiVersion: customs.dev/v1alpha1
kind: ImagePolicy
metadata: {{name: slsa}}
spec:
  images: ["ghcr.io/slsa-framework/**"]
  mode: enforce
  authorities:
    - name: generator
      keyless:
        trustedRoot: trust/trusted_root.json
        identities:
          - {{issuer: "{GH_ISSUER}", subjectRegExp: "{identity}"}}
  attestations:
    - name: provenance
      predicateType: https://slsa.dev/provenance/v0.2
      authorities: [generator]
      slsa:
        builderIds: ["{GENERATOR}"]
        sourceRepositories: ["{source_repo}"]
"#
    );
    let mut files = BTreeMap::new();
    files.insert("policy.yaml".to_owned(), policy.into_bytes());
    files.insert(
        "trust/trusted_root.json".to_owned(),
        read("sigstore-rs/trusted_root_prod.json").into_bytes(),
    );
    Snapshot::from_files("test-rev".into(), files)
}

fn image() -> ImageName {
    ImageName {
        registry: "ghcr.io".parse().unwrap(),
        repository: "slsa-framework/example-package".parse().unwrap(),
    }
}

async fn decide_slsa(source_repo: &str, identity: &str) -> customs_policy::PolicyDecision {
    let set = compile(&slsa_policy(source_repo, identity)).unwrap();
    let layout = Layout::open(&vectors().join("slsa-container-v1.10.0/layout")).unwrap();
    let digest: Digest = read("slsa-container-v1.10.0/digest")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(layout.image.as_ref(), Some(&digest));
    set.decide(&layout, &image(), &digest).await.0
}

#[tokio::test]
async fn slsa_container_keyless_v02_is_admitted_for_its_source_repo() {
    let d = decide_slsa(
        "github.com/slsa-framework/example-package",
        "^https://github.com/slsa-framework/slsa-github-generator/",
    )
    .await;
    assert!(d.allowed, "{:#?}", d.reasons());
    let rule = &d.policies[0].rules[0];
    assert!(rule.passed);
    let used = &rule.evidence[0];
    assert!(used.signer.contains(GENERATOR), "{used:?}");
    assert!(used.rekor_log_index.is_some());
}

#[tokio::test]
async fn slsa_container_is_denied_for_another_source_repo() {
    let d = decide_slsa(
        "github.com/acme/app",
        "^https://github.com/slsa-framework/slsa-github-generator/",
    )
    .await;
    assert!(!d.allowed);
    let reasons = d.reasons().join("\n");
    assert!(reasons.contains("example-package"), "{reasons}");
    assert!(reasons.contains("attestation provenance"), "{reasons}");
}

#[tokio::test]
async fn slsa_container_is_denied_for_another_identity() {
    let d = decide_slsa(
        "github.com/slsa-framework/example-package",
        "^https://github.com/acme/",
    )
    .await;
    assert!(!d.allowed);
    assert!(
        d.reasons().join("\n").contains("is not accepted"),
        "{:?}",
        d.reasons()
    );
}

#[tokio::test]
async fn slsa_container_is_denied_under_an_untrusted_root() {
    // The same root without its Rekor keys: the SET can no longer verify.
    let mut files = BTreeMap::new();
    let snap = slsa_policy(
        "github.com/slsa-framework/example-package",
        "^https://github.com/slsa-framework/",
    );
    for (p, b) in snap.files() {
        files.insert(p.to_owned(), b.to_vec());
    }
    let mut root: serde_json::Value =
        serde_json::from_str(&read("sigstore-rs/trusted_root_prod.json")).unwrap();
    root["tlogs"] = serde_json::json!([]);
    files.insert(
        "trust/trusted_root.json".into(),
        serde_json::to_vec(&root).unwrap(),
    );
    let set = compile(&Snapshot::from_files("r2".into(), files)).unwrap();
    let layout = Layout::open(&vectors().join("slsa-container-v1.10.0/layout")).unwrap();
    let digest: Digest = read("slsa-container-v1.10.0/digest")
        .trim()
        .parse()
        .unwrap();
    let d = set.decide(&layout, &image(), &digest).await.0;
    assert!(
        !d.allowed,
        "a root without Rekor keys must not verify the SET"
    );
}

#[tokio::test]
async fn slsa_container_tampered_set_is_rejected() {
    // Copy the layout and corrupt the Rekor SET in the attestation's annotations.
    let src = vectors().join("slsa-container-v1.10.0/layout");
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&src, tmp.path());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("index.json")).unwrap()).unwrap();
    let att = index["manifests"][1]["digest"].as_str().unwrap().to_owned();
    let att_path = tmp.path().join("blobs/sha256").join(&att[7..]);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&att_path).unwrap()).unwrap();
    let ann = &mut m["layers"][0]["annotations"]["dev.sigstore.cosign/bundle"];
    let mut rb: serde_json::Value = serde_json::from_str(ann.as_str().unwrap()).unwrap();
    let set = rb["SignedEntryTimestamp"].as_str().unwrap().to_owned();
    let mut bytes = set.into_bytes();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    rb["SignedEntryTimestamp"] = String::from_utf8(bytes).unwrap().into();
    *ann = serde_json::Value::String(rb.to_string());
    let new = serde_json::to_vec(&m).unwrap();
    let new_digest = Digest::of(&new);
    std::fs::write(tmp.path().join("blobs/sha256").join(new_digest.hex()), &new).unwrap();
    let idx = String::from_utf8(std::fs::read(tmp.path().join("index.json")).unwrap())
        .unwrap()
        .replace(&att, &new_digest.to_string());
    std::fs::write(tmp.path().join("index.json"), idx).unwrap();
    let set = compile(&slsa_policy(
        "github.com/slsa-framework/example-package",
        "^https://github.com/slsa-framework/",
    ))
    .unwrap();
    let layout = Layout::open(tmp.path()).unwrap();
    let digest: Digest = read("slsa-container-v1.10.0/digest")
        .trim()
        .parse()
        .unwrap();
    let d = set.decide(&layout, &image(), &digest).await.0;
    assert!(!d.allowed, "a corrupted SET must fail");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

const BCR_SIGNER: &str = "https://github.com/bazel-contrib/publish-to-bcr/.github/workflows/publish.yaml@refs/tags/v0.0.1";

fn bcr(bundle: &str, identity: &str) -> Result<String, String> {
    let artifact = std::fs::read(vectors().join("slsa-bcr/MODULE.bazel")).unwrap();
    verify_bundle(
        read(bundle).trim(),
        &BundleArtifact::Blob(artifact),
        &BundleSigner::Identity {
            identity: identity.into(),
            issuer: GH_ISSUER.into(),
        },
        Some(&read("sigstore-rs/trusted_root_prod.json")),
    )
}

#[test]
fn github_attestation_bundle_right_signer_passes() {
    bcr("slsa-bcr/MODULE.bazel.intoto.jsonl", BCR_SIGNER).unwrap();
}

#[test]
fn github_attestation_bundle_wrong_signer_fails() {
    assert!(
        bcr(
            "slsa-bcr/MODULE-wrong-signer.bazel.intoto.jsonl",
            BCR_SIGNER
        )
        .is_err()
    );
    assert!(
        bcr(
            "slsa-bcr/MODULE.bazel.intoto.jsonl",
            "https://github.com/acme/x"
        )
        .is_err()
    );
}

#[test]
fn github_attestation_bundle_for_another_artifact_fails() {
    let r = verify_bundle(
        read("slsa-bcr/MODULE.bazel.intoto.jsonl").trim(),
        &BundleArtifact::Blob(b"another file".to_vec()),
        &BundleSigner::Identity {
            identity: BCR_SIGNER.into(),
            issuer: GH_ISSUER.into(),
        },
        Some(&read("sigstore-rs/trusted_root_prod.json")),
    );
    assert!(r.is_err());
}

#[test]
fn cosign_bundle_verifies_for_its_digest_only() {
    let bundle = read("cosign/oci-attestation.sigstore.json");
    let root = read("cosign/trusted_root_pgi.json");
    let signer = BundleSigner::Identity {
        identity: "cody@soyland.com".into(),
        issuer: "https://github.com/login/oauth".into(),
    };
    let digest = "732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4";
    let ok = verify_bundle(
        &bundle,
        &BundleArtifact::Sha256(digest.into()),
        &signer,
        Some(&root),
    );
    assert!(ok.is_ok(), "{ok:?}");
    let other = "0".repeat(64);
    assert!(
        verify_bundle(
            &bundle,
            &BundleArtifact::Sha256(other),
            &signer,
            Some(&root)
        )
        .is_err()
    );
}

#[test]
fn bundle_with_tsa_needs_a_root_listing_the_tsa() {
    let bundle = read("sigstore-rs/bundle_v03.json");
    let r = verify_bundle(
        &bundle,
        &BundleArtifact::Blob(b"x".to_vec()),
        &BundleSigner::Identity {
            identity: "x".into(),
            issuer: "y".into(),
        },
        Some(&read("sigstore-rs/trusted_root_prod.json")),
    );
    let e = r.unwrap_err();
    assert!(e.to_lowercase().contains("timestamp"), "{e}");
}
