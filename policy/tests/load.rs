//! Malformed policies are refused as a whole, with file:line errors, and
//! never panic.
#![allow(clippy::unwrap_used)]

use customs_policy::{Snapshot, compile};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn snap(files: &[(&str, &str)]) -> Snapshot {
    let map: BTreeMap<String, Vec<u8>> = files
        .iter()
        .map(|(p, c)| (p.to_string(), c.as_bytes().to_vec()))
        .collect();
    Snapshot::from_files("t".into(), map)
}

const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6Jqt0lKKBv7R8lEMsRRmRkHHcqCa
wqsdYLPcAuK8B6WfVHwN3xmLd2tLwSf1XaIGcqQvgeE5k0RwbcScUd4F3g==
-----END PUBLIC KEY-----
";

fn errors(policy: &str) -> String {
    match compile(&snap(&[("p.yaml", policy), ("k.pub", KEY)])) {
        Ok(_) => panic!("policy must be refused:\n{policy}"),
        Err(e) => e.to_string(),
    }
}

const HEAD: &str =
    "apiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\nspec:\n";

#[test]
fn unknown_authority_is_a_line_error() {
    let e = errors(&format!(
        "{HEAD}  images: [\"r.io/**\"]\n  authorities:\n    - name: a\n      key: {{path: k.pub}}\n  signatures:\n    authorities: [b]\n"
    ));
    assert!(
        e.contains("p.yaml:10") && e.contains("unknown authority"),
        "{e}"
    );
}

#[test]
fn bad_regex_glob_key_path_and_cel_are_refused() {
    let e = errors(&format!(
        "{HEAD}  images: [\"r.io/(x\"]\n  authorities:\n    - name: a\n      key: {{path: ../../etc/passwd}}\n    - name: c\n      keyless:\n        trustedRoot: nope.json\n        identities: [{{issuer: i, subjectRegExp: \"(\"}}]\n  attestations:\n    - name: s\n      predicateType: t\n      authorities: [a]\n      conditions: [{{cel: \"((\"}}]\n"
    ));
    assert!(e.contains("p.yaml:5"), "glob: {e}");
    assert!(e.contains("leaves the policy source"), "path trick: {e}");
    assert!(e.contains("nope.json"), "root: {e}");
    assert!(e.contains("CEL"), "cel: {e}");
}

#[test]
fn unknown_keys_and_bad_mode_are_refused() {
    let e = errors(&format!("{HEAD}  images: [\"**\"]\n  mode: block\n"));
    assert!(e.contains("p.yaml"), "{e}");
    let e = errors(&format!("{HEAD}  images: [\"**\"]\n  signatuers: {{}}\n"));
    assert!(e.contains("signatuers"), "{e}");
    let e = errors(
        "apiVersion: v0\nkind: ImagePolicy\nmetadata: {name: p}\nspec: {images: [\"**\"]}\n",
    );
    assert!(e.contains("apiVersion"), "{e}");
    // A misspelt kind is an error, never silently read as a policy.
    let e = errors(
        "apiVersion: customs.dev/v1alpha1\nkind: ImagePolicyy\nmetadata: {name: p}\nspec: {images: [\"**\"]}\n",
    );
    assert!(e.contains("unknown kind"), "{e}");
}

#[test]
fn threshold_above_the_authorities_is_refused() {
    let e = errors(&format!(
        "{HEAD}  images: [\"**\"]\n  authorities:\n    - name: a\n      key: {{path: k.pub}}\n  signatures: {{authorities: [a], threshold: 2}}\n"
    ));
    assert!(e.contains("threshold"), "{e}");
}

#[test]
fn a_valid_policy_compiles() {
    let set = compile(&snap(&[(
        "p.yaml",
        &format!(
            "{HEAD}  images: [\"**\"]\n  authorities:\n    - name: a\n      key: {{path: k.pub}}\n  signatures: {{authorities: [a]}}\n"
        ),
    ), ("k.pub", KEY)]))
    .unwrap();
    assert_eq!(set.policies.len(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn arbitrary_yaml_never_panics(s in "\\PC{0,400}") {
        let _ = compile(&snap(&[("p.yaml", &s)]));
    }

    #[test]
    fn arbitrary_evidence_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = customs_policy::intoto::parse(&payload);
        let _ = customs_policy::keys::PublicKey::from_pem(&String::from_utf8_lossy(&payload));
    }
}
