//! Property tests for the policy crate's parsers of untrusted input: DSSE
//! envelopes, simple-signing payloads, in-toto statements, Sigstore bundles,
//! cosign's keyless annotations, artifact manifests and referrers from a
//! registry, and policy YAML.
//!
//! Inputs are arbitrary bytes and mutations of the real public vectors in
//! `testdata/vectors`. Each property plays a hostile registry (or a hostile
//! policy pull request): no panic, a clear bounded reason, and declared
//! sizes or counts are never fetched or allocated because the input names
//! them.
#![allow(clippy::unwrap_used)]

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine as _;
use customs_policy::authority::Authority;
use customs_policy::evidence::{
    self, B64, BUNDLE_MEDIA_TYPE_PREFIX, DSSE_MEDIA_TYPE, EvidenceItem, EvidenceRegistry,
    KeylessAnnotations, MAX_LAYER_BYTES, MAX_LAYERS, MAX_REFERRERS, Referrer, RegistryError,
    SIMPLE_SIGNING_MEDIA_TYPE,
};
use customs_policy::intoto::{self, STATEMENT_V01, STATEMENT_V1};
use customs_policy::verify::{Claim, INTOTO_PAYLOAD_TYPE, verify_item};
use customs_policy::{PolicySet, Snapshot, compile};
use customs_protocol::{Digest, ImageName};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[path = "../../protocol/tests/kit/prop_kit.rs"]
mod prop_kit;
use prop_kit::{edits, mutate};

/// A refusal is clear and bounded (see [`prop_kit::assert_clear_within`]).
fn assert_clear(e: &impl Display) {
    prop_kit::assert_clear_within(e, MAX_ERROR_LEN);
}

/// Cases per property: the crypto paths cost about a millisecond each, so
/// this keeps the file within a few seconds.
const CASES: u32 = 256;

/// Longest reason a refusal may carry. Reasons go into decisions, audit
/// events and OCI error messages; a registry must not be able to make them
/// as large as what it serves.
const MAX_ERROR_LEN: usize = 2048;

/// Cases for the whole-registry properties: each case runs a collection
/// over up to 64 referrers and a decision, so fewer cases keep the time.
const REGISTRY_CASES: u32 = 48;

/// A hostile input size: the bounds checked here do not depend on the size,
/// and parsing more in debug builds only costs CI time.
const HUGE: usize = 1024 * 1024;

const STD: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// Real public vectors (see testdata/vectors/README.md).
const ENVELOPE: &[u8] = include_bytes!(
    "../../testdata/vectors/slsa-container-v1.10.0/layout/blobs/sha256/20b16d5835eceaa7b9dbb7e4fdf4db52a8b9159c1416dd73e54cade07e838917"
);
const STATEMENT: &[u8] = include_bytes!(
    "../../testdata/vectors/slsa-container-v1.10.0/layout/blobs/sha256/c1944d4717b644d2c7e1eccab4cc6e963cefbe288d75b7f7c3dfee4f4a894406"
);
const ATT_MANIFEST: &[u8] = include_bytes!(
    "../../testdata/vectors/slsa-container-v1.10.0/layout/blobs/sha256/31cc4fb663c8d34e2e6a0bd5f183d576c2811ee286e0998b4c2965e3b35a0d86"
);
const IMAGE_DIGEST: &str = include_str!("../../testdata/vectors/slsa-container-v1.10.0/digest");
const BUNDLE_V03: &[u8] = include_bytes!("../../testdata/vectors/sigstore-rs/bundle_v03.json");
const COSIGN_BUNDLE: &[u8] =
    include_bytes!("../../testdata/vectors/cosign/oci-attestation.sigstore.json");
const BCR_BUNDLE: &[u8] =
    include_bytes!("../../testdata/vectors/slsa-bcr/MODULE-wrong-signer.bazel.intoto.jsonl");
const TRUSTED_ROOT: &[u8] =
    include_bytes!("../../testdata/vectors/sigstore-rs/trusted_root_prod.json");

/// Mutates one JSON string field somewhere in `doc` (structure-aware
/// damage, so the document still parses and the checks behind the parser
/// are reached).
fn mutate_json(
    doc: &serde_json::Value,
    pick: usize,
    edits: &[(usize, u8, u8)],
) -> serde_json::Value {
    /// Calls `f` on the `target`-th string (depth first); counts strings.
    fn walk(
        v: &mut serde_json::Value,
        target: usize,
        seen: &mut usize,
        f: &dyn Fn(&str) -> String,
    ) {
        match v {
            serde_json::Value::String(s) => {
                if *seen == target {
                    *s = f(s);
                }
                *seen += 1;
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, target, seen, f)),
            serde_json::Value::Object(m) => m.values_mut().for_each(|x| walk(x, target, seen, f)),
            _ => {}
        }
    }
    let mut out = doc.clone();
    let mut count = 0;
    walk(&mut out, usize::MAX, &mut count, &|s| s.to_owned());
    if count > 0 {
        let mut seen = 0;
        walk(&mut out, pick % count, &mut seen, &|s| {
            String::from_utf8_lossy(&mutate(s.as_bytes(), edits)).into_owned()
        });
    }
    out
}

/// Arbitrary JSON, biased towards the field names these parsers read.
fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(Into::into),
        any::<i64>().prop_map(Into::into),
        "\\PC{0,20}".prop_map(Into::into),
        "[A-Za-z0-9+/=]{0,40}".prop_map(Into::into),
        Just(serde_json::Value::from(STATEMENT_V1)),
        Just(serde_json::Value::from(INTOTO_PAYLOAD_TYPE)),
    ];
    let key = prop_oneof![
        Just("_type".to_owned()),
        Just("subject".to_owned()),
        Just("digest".to_owned()),
        Just("sha256".to_owned()),
        Just("predicateType".to_owned()),
        Just("predicate".to_owned()),
        Just("payloadType".to_owned()),
        Just("payload".to_owned()),
        Just("signatures".to_owned()),
        Just("sig".to_owned()),
        Just("critical".to_owned()),
        Just("image".to_owned()),
        Just("type".to_owned()),
        Just("docker-manifest-digest".to_owned()),
        Just("layers".to_owned()),
        Just("mediaType".to_owned()),
        Just("size".to_owned()),
        Just("annotations".to_owned()),
        "[a-zA-Z]{1,8}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Into::into),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn digest() -> impl Strategy<Value = Digest> {
    "[0-9a-f]{64}".prop_map(|h| format!("sha256:{h}").parse().unwrap())
}

// ------------------------------------------------------------- fixtures

/// The signing side of the key authority: tests sign whatever a holder of
/// a trusted key (or a compromised one) could sign.
struct Fixture {
    key: Ed25519KeyPair,
    set: PolicySet,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = Ed25519KeyPair::from_seed_unchecked(&[9u8; 32]).unwrap();
        // SubjectPublicKeyInfo for Ed25519: fixed prefix + the 32-byte key.
        let mut spki = hex::decode("302a300506032b6570032100").unwrap();
        spki.extend_from_slice(key.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STD.encode(&spki)
        );
        let policy = r#"apiVersion: customs.dev/v1alpha1
kind: ImagePolicy
metadata: {name: p}
spec:
  images: ["**"]
  authorities:
    - name: k
      key: {path: k.pub}
    - name: kr
      key: {path: k.pub, tlog: required, trustedRoot: root.json}
    - name: kl
      keyless:
        trustedRoot: root.json
        identities:
          - {issuerRegExp: ".*", subjectRegExp: ".*"}
  signatures: {authorities: [k]}
  attestations:
    - name: provenance
      predicateType: https://slsa.dev/provenance/v0.2
      authorities: [k, kl]
      slsa: {builderIds: ["https://example.com/builder"]}
      conditions:
        - cel: "predicate.buildType != ''"
"#;
        let mut files = BTreeMap::new();
        files.insert("p.yaml".to_owned(), policy.as_bytes().to_vec());
        files.insert("k.pub".to_owned(), pem.into_bytes());
        files.insert("root.json".to_owned(), TRUSTED_ROOT.to_vec());
        let set = compile(&Snapshot::from_files("prop".into(), files)).unwrap();
        Fixture { key, set }
    })
}

impl Fixture {
    fn authority(&self, name: &str) -> &Arc<Authority> {
        self.set.policies[0]
            .authorities
            .iter()
            .find(|a| a.name == name)
            .unwrap()
    }

    fn sign(&self, message: &[u8]) -> String {
        STD.encode(self.key.sign(message).as_ref())
    }

    /// A DSSE envelope over `payload`, signed per the DSSE v1 spec
    /// (PAE written out here, not taken from the code under test).
    fn envelope(&self, payload_type: &str, payload: &[u8]) -> Vec<u8> {
        let mut pae = format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            payload.len()
        )
        .into_bytes();
        pae.extend_from_slice(payload);
        serde_json::to_vec(&serde_json::json!({
            "payloadType": payload_type,
            "payload": STD.encode(payload),
            "signatures": [{"keyid": "", "sig": self.sign(&pae)}],
        }))
        .unwrap()
    }
}

fn authorities() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("k"), Just("kr"), Just("kl")]
}

fn dsse(envelope: Vec<u8>, keyless: KeylessAnnotations) -> EvidenceItem {
    EvidenceItem::DsseLayer {
        location: "r.io/app:sha256-x.att#0".into(),
        envelope: B64(envelope),
        keyless,
    }
}

/// The real keyless attestation's annotations (certificate, chain, Rekor
/// SET), as cosign stored them.
fn real_annotations() -> KeylessAnnotations {
    let m: serde_json::Value = serde_json::from_slice(ATT_MANIFEST).unwrap();
    let a = &m["layers"][0]["annotations"];
    let get = |k: &str| a[k].as_str().map(str::to_owned);
    KeylessAnnotations {
        certificate: get(evidence::CERTIFICATE_ANNOTATION),
        chain: get(evidence::CHAIN_ANNOTATION),
        rekor_bundle: get(evidence::REKOR_BUNDLE_ANNOTATION),
    }
}

fn image_digest() -> Digest {
    IMAGE_DIGEST.trim().parse().unwrap()
}

fn statement(subjects: &[Digest], predicate_type: &str, v1: bool) -> Vec<u8> {
    let subject: Vec<_> = subjects
        .iter()
        .map(|d| serde_json::json!({"name": "x", "digest": {"sha256": d.hex()}}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "_type": if v1 { STATEMENT_V1 } else { STATEMENT_V01 },
        "subject": subject,
        "predicateType": predicate_type,
        "predicate": {"buildType": "b", "builder": {"id": "https://example.com/builder"}},
    }))
    .unwrap()
}

#[test]
fn the_real_keyless_attestation_verifies() {
    // The mutation properties below start from this: make sure the seed is
    // accepted, so a refusal of a mutant is the mutation's doing.
    let v = verify_item(
        fixture().authority("kl"),
        &dsse(ENVELOPE.to_vec(), real_annotations()),
        &image_digest(),
    )
    .unwrap();
    assert!(matches!(v.claim, Claim::Statement(_)));
}

// ------------------------------------------------- statements and DSSE

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn intoto_parse_is_total(
        raw in proptest::collection::vec(any::<u8>(), 0..400),
        doc in arbitrary_json(),
        pick in any::<usize>(),
        edits in edits(),
        which in 0usize..4,
    ) {
        let real: serde_json::Value = serde_json::from_slice(STATEMENT).unwrap();
        let input = match which {
            0 => raw,
            1 => serde_json::to_vec(&doc).unwrap(),
            2 => mutate(STATEMENT, &edits),
            _ => serde_json::to_vec(&mutate_json(&real, pick, &edits)).unwrap(),
        };
        match intoto::parse(&input) {
            Ok(st) => {
                prop_assert!(st.raw.is_object());
                prop_assert!(st.predicate.is_object() || !st.predicate.is_null());
            }
            Err(e) => assert_clear(&e),
        }
    }

    /// A statement binds exactly the digests it lists as sha256 subjects.
    #[test]
    fn statements_bind_exactly_their_subjects(
        subjects in proptest::collection::vec(digest(), 1..5),
        other in digest(),
        v1 in any::<bool>(),
    ) {
        let st = intoto::parse(&statement(&subjects, "t", v1)).unwrap();
        for d in &subjects {
            prop_assert!(st.check_subject(d).is_ok());
        }
        prop_assert_eq!(st.check_subject(&other).is_ok(), subjects.contains(&other));
    }

    /// Envelopes nobody trusted signed: always refused, with a clear reason.
    #[test]
    fn unsigned_envelopes_are_refused(
        raw in proptest::collection::vec(any::<u8>(), 0..400),
        doc in arbitrary_json(),
        pick in any::<usize>(),
        edits in edits(),
        which in 0usize..4,
        authority in authorities(),
    ) {
        let real: serde_json::Value = serde_json::from_slice(ENVELOPE).unwrap();
        let envelope = match which {
            0 => raw,
            1 => serde_json::to_vec(&doc).unwrap(),
            2 => mutate(ENVELOPE, &edits),
            _ => serde_json::to_vec(&mutate_json(&real, pick, &edits)).unwrap(),
        };
        let keyless = if authority == "k" { KeylessAnnotations::default() } else { real_annotations() };
        let r = verify_item(fixture().authority(authority), &dsse(envelope.clone(), keyless), &image_digest());
        match r {
            // Only the keyless authority can accept, and only an envelope
            // that still carries the real signature over the real payload.
            Ok(_) => {
                prop_assert_eq!(authority, "kl");
                let got: serde_json::Value = serde_json::from_slice(&envelope).unwrap();
                prop_assert_eq!(&got["payload"], &real["payload"]);
                prop_assert_eq!(&got["payloadType"], &real["payloadType"]);
            }
            Err(e) => assert_clear(&e),
        }
    }

    /// Envelopes our trusted key really signed, over any payload: accepted
    /// only as an in-toto statement about this digest.
    #[test]
    fn signed_envelopes_are_accepted_only_for_their_subject(
        raw in proptest::collection::vec(any::<u8>(), 0..300),
        doc in arbitrary_json(),
        subjects in proptest::collection::vec(digest(), 1..3),
        include in any::<bool>(),
        payload_type in prop_oneof![Just(INTOTO_PAYLOAD_TYPE.to_owned()), "\\PC{0,30}"],
        which in 0usize..3,
    ) {
        let d = image_digest();
        let mut subjects = subjects;
        if include {
            subjects.push(d.clone());
        }
        let payload = match which {
            0 => raw,
            1 => serde_json::to_vec(&doc).unwrap(),
            _ => statement(&subjects, "https://slsa.dev/provenance/v0.2", include),
        };
        let env = fixture().envelope(&payload_type, &payload);
        match verify_item(fixture().authority("k"), &dsse(env, KeylessAnnotations::default()), &d) {
            Ok(v) => {
                prop_assert_eq!(&payload_type, INTOTO_PAYLOAD_TYPE);
                let st = intoto::parse(&payload).unwrap();
                prop_assert!(st.check_subject(&d).is_ok());
                prop_assert!(v.used.signer.starts_with("key sha256:"));
            }
            Err(e) => {
                prop_assert!(!(which == 2 && include && payload_type == INTOTO_PAYLOAD_TYPE), "{}", e);
                assert_clear(&e);
            }
        }
        // The same envelope demanding a Rekor entry, with no entry: refused.
        let env = fixture().envelope(&payload_type, &payload);
        assert_clear(&verify_item(fixture().authority("kr"), &dsse(env, KeylessAnnotations::default()), &d).unwrap_err());
    }

    /// cosign's keyless annotations (certificate, chain, Rekor SET) are
    /// registry data: damaged or arbitrary ones never panic the bundle
    /// builder, and only the keyless authority can ever accept the
    /// envelope (the key authority's key did not sign it).
    #[test]
    fn keyless_annotations_are_total(
        pick in 0usize..3,
        edits in edits(),
        junk in proptest::option::of("\\PC{0,200}"),
        json_edit in proptest::option::of(any::<usize>()),
        authority in prop_oneof![Just("kr"), Just("kl")],
    ) {
        let mut a = real_annotations();
        let field = match pick {
            0 => &mut a.certificate,
            1 => &mut a.chain,
            _ => &mut a.rekor_bundle,
        };
        *field = match (junk, field.as_deref(), json_edit) {
            (Some(j), _, _) => Some(j),
            (None, Some(s), Some(at)) if pick == 2 => {
                let v: serde_json::Value = serde_json::from_str(s).unwrap();
                Some(mutate_json(&v, at, &edits).to_string())
            }
            (None, Some(s), _) => Some(String::from_utf8_lossy(&mutate(s.as_bytes(), &edits)).into_owned()),
            (None, None, _) => None,
        };
        match verify_item(fixture().authority(authority), &dsse(ENVELOPE.to_vec(), a), &image_digest()) {
            // A change outside what is checked (the chain, PEM whitespace)
            // may still verify, but only for the keyless authority.
            Ok(_) => prop_assert_eq!(authority, "kl"),
            Err(e) => assert_clear(&e),
        }
    }
}

// ------------------------------------------------------ simple signing

fn simple_signing(digest: &str, kind: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "critical": {
            "identity": {"docker-reference": "r.io/app"},
            "image": {"docker-manifest-digest": digest},
            "type": kind,
        },
        "optional": null,
    }))
    .unwrap()
}

fn simple(payload: Vec<u8>, signature: String) -> EvidenceItem {
    EvidenceItem::SimpleSigning {
        location: "r.io/app:sha256-x.sig#0".into(),
        payload: B64(payload),
        signature,
        keyless: KeylessAnnotations::default(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn simple_signing_accepts_only_a_signed_payload_for_this_digest(
        raw in proptest::collection::vec(any::<u8>(), 0..300),
        doc in arbitrary_json(),
        other in digest(),
        kind in prop_oneof![Just("cosign container image signature".to_owned()), "\\PC{0,30}"],
        which in 0usize..4,
        signature in prop_oneof!["[A-Za-z0-9+/=]{0,100}", "\\PC{0,100}"],
        edits in edits(),
    ) {
        let d = image_digest();
        let payload = match which {
            0 => raw,
            1 => serde_json::to_vec(&doc).unwrap(),
            2 => simple_signing(&other.to_string(), &kind),
            _ => simple_signing(&d.to_string(), &kind),
        };
        let good = which == 3 && kind == "cosign container image signature";
        let k = fixture().authority("k");
        // Signed by the trusted key.
        let sig = fixture().sign(&payload);
        match verify_item(k, &simple(payload.clone(), sig.clone()), &d) {
            Ok(v) => {
                prop_assert!(good);
                prop_assert!(matches!(v.claim, Claim::ImageSignature));
            }
            Err(e) => {
                prop_assert!(!good, "{}", e);
                assert_clear(&e);
            }
        }
        // Arbitrary signature text, or the payload changed after signing.
        assert_clear(&verify_item(k, &simple(payload.clone(), signature), &d).unwrap_err());
        let damaged = mutate(&payload, &edits);
        if damaged != payload {
            assert_clear(&verify_item(k, &simple(damaged, sig.clone()), &d).unwrap_err());
        }
        // Keyless and Rekor-required without the annotations: refused.
        for a in ["kr", "kl"] {
            assert_clear(&verify_item(fixture().authority(a), &simple(payload.clone(), sig.clone()), &d).unwrap_err());
        }
    }
}

// ------------------------------------------------------ Sigstore bundles

fn bundle_item(bytes: Vec<u8>) -> EvidenceItem {
    EvidenceItem::Bundle {
        location: "r.io/app@sha256:x#0".into(),
        bundle: B64(bytes),
    }
}

fn real_bundle(which: usize) -> &'static [u8] {
    match which % 3 {
        0 => BUNDLE_V03,
        1 => COSIGN_BUNDLE,
        _ => BCR_BUNDLE,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Arbitrary and damaged bundles are refused cleanly by every
    /// authority (none of the real ones is for this digest, so nothing here
    /// may verify).
    #[test]
    fn bundles_are_total(
        raw in proptest::collection::vec(any::<u8>(), 0..400),
        doc in arbitrary_json(),
        which in 0usize..4,
        seed in 0usize..3,
        pick in any::<usize>(),
        edits in edits(),
        authority in authorities(),
        d in digest(),
    ) {
        let bytes = match which {
            0 => raw,
            1 => serde_json::to_vec(&doc).unwrap(),
            2 => mutate(real_bundle(seed), &edits),
            _ => {
                let v: serde_json::Value = serde_json::from_slice(real_bundle(seed).trim_ascii()).unwrap();
                serde_json::to_vec(&mutate_json(&v, pick, &edits)).unwrap()
            }
        };
        let e = verify_item(fixture().authority(authority), &bundle_item(bytes), &d).unwrap_err();
        assert_clear(&e);
    }
}

// ------------------------------------- registry: manifests and referrers

/// A registry that serves whatever the test tells it to, and records which
/// blobs the policy crate asked for and with which cap.
#[derive(Default)]
struct HostileRegistry {
    manifests: HashMap<String, Vec<u8>>,
    blobs: HashMap<Digest, Vec<u8>>,
    referrers: Vec<Referrer>,
    asked: Mutex<Vec<(Digest, u64)>>,
}

impl EvidenceRegistry for HostileRegistry {
    async fn manifest(
        &self,
        _repo: &ImageName,
        reference: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        Ok(self.manifests.get(reference).cloned())
    }

    async fn referrers(
        &self,
        _repo: &ImageName,
        _digest: &Digest,
    ) -> Result<Vec<Referrer>, RegistryError> {
        Ok(self.referrers.clone())
    }

    async fn blob(
        &self,
        _repo: &ImageName,
        digest: &Digest,
        max_bytes: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        self.asked.lock().unwrap().push((digest.clone(), max_bytes));
        match self.blobs.get(digest) {
            Some(b) if b.len() as u64 <= max_bytes => Ok(b.clone()),
            Some(_) => Err(RegistryError("blob over the cap".into())),
            None => Err(RegistryError("blob unknown".into())),
        }
    }
}

fn image() -> ImageName {
    ImageName {
        registry: "r.io".parse().unwrap(),
        repository: "team/app".parse().unwrap(),
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn layer_media_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(SIMPLE_SIGNING_MEDIA_TYPE.to_owned()),
        Just(DSSE_MEDIA_TYPE.to_owned()),
        Just(format!("{BUNDLE_MEDIA_TYPE_PREFIX}.v0.3+json")),
        "[a-z./+-]{0,30}",
    ]
}

/// A layer: content the registry holds (or not), a declared size that may
/// lie, a digest that may not match.
fn layer() -> impl Strategy<Value = (String, Vec<u8>, u64, bool, bool)> {
    (
        layer_media_type(),
        proptest::collection::vec(any::<u8>(), 0..64),
        prop_oneof![
            Just(None),
            Just(Some(u64::MAX)),
            (MAX_LAYER_BYTES + 1..u64::MAX).prop_map(Some)
        ],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mt, bytes, size, honest_digest, served)| {
            let declared = size.unwrap_or(bytes.len() as u64);
            (mt, bytes, declared, honest_digest, served)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(REGISTRY_CASES))]

    /// Whatever a registry answers for the `.sig` / `.att` tags and the
    /// referrers: collection never panics, never fetches a layer that
    /// declares more than the cap or lies past the layer limit, and every
    /// problem it records is clear and bounded.
    #[test]
    fn evidence_collection_is_bounded(
        layers in proptest::collection::vec(layer(), 0..8),
        extra_layers in 0usize..80,
        sig in proptest::option::of(prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            arbitrary_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ]),
        referrers in 0usize..80,
        honest_referrers in any::<bool>(),
        artifact_type in proptest::option::of(prop_oneof![
            Just(format!("{BUNDLE_MEDIA_TYPE_PREFIX}.v0.3+json")),
            "[a-z./+-]{0,20}",
        ]),
    ) {
        let d = image_digest();
        let mut reg = HostileRegistry::default();
        let mut descs = Vec::new();
        for (mt, bytes, declared, honest, served) in &layers {
            let named = if *honest { Digest::of(bytes) } else { Digest::of(b"another blob") };
            if *served {
                reg.blobs.insert(named.clone(), bytes.clone());
            }
            descs.push(serde_json::json!({
                "mediaType": mt, "digest": named.to_string(), "size": declared,
                "annotations": {evidence::SIGNATURE_ANNOTATION: "c2ln"},
            }));
        }
        // Past the layer limit: never fetched.
        let flood = Digest::of(b"flood");
        reg.blobs.insert(flood.clone(), b"{}".to_vec());
        for _ in 0..extra_layers {
            descs.push(serde_json::json!({"mediaType": DSSE_MEDIA_TYPE, "digest": flood.to_string(), "size": 2}));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": descs})).unwrap();
        if let Some(sig) = sig {
            reg.manifests.insert(evidence::cosign_tag(&d, "sig"), sig);
        }
        reg.manifests.insert(evidence::cosign_tag(&d, "att"), manifest.clone());
        // Many referrers, all pointing at the same manifest (or lying).
        let referred = Digest::of(&manifest);
        reg.manifests.insert(referred.to_string(), manifest.clone());
        for _ in 0..referrers {
            reg.referrers.push(Referrer {
                digest: if honest_referrers { referred.clone() } else { Digest::of(b"lies") },
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                artifact_type: artifact_type.clone(),
            });
        }
        // A blob the registry fails to serve fails the collection closed
        // (absence is only concluded from a clean "not found").
        let ev = match block_on(evidence::collect(&reg, &[image()], &d)) {
            Ok(ev) => Some(ev),
            Err(e) => {
                assert_clear(&e);
                None
            }
        };
        let asked = reg.asked.lock().unwrap();
        let manifests_read = 2 + referrers.min(MAX_REFERRERS);
        let flood_room = extra_layers.min(MAX_LAYERS.saturating_sub(layers.len()));
        let flood_fetches = asked.iter().filter(|(g, _)| g == &flood).count();
        prop_assert!(flood_fetches <= manifests_read * flood_room, "layers past the limit were fetched");
        prop_assert!(asked.len() <= manifests_read * MAX_LAYERS);
        let known = |mt: &str| {
            mt == SIMPLE_SIGNING_MEDIA_TYPE || mt == DSSE_MEDIA_TYPE || mt.starts_with(BUNDLE_MEDIA_TYPE_PREFIX)
        };
        for (g, max) in asked.iter() {
            prop_assert_eq!(*max, MAX_LAYER_BYTES);
            // Only a layer that declared a size within the cap is fetched.
            let declared_ok = g == &flood || layers.iter().any(|(mt, bytes, declared, honest, _)| {
                let named = if *honest { Digest::of(bytes) } else { Digest::of(b"another blob") };
                &named == g && known(mt) && *declared <= MAX_LAYER_BYTES
            });
            prop_assert!(declared_ok, "fetched {} although it declared more than the cap", g);
        }
        if let Some(ev) = &ev {
            prop_assert!(ev.items.len() <= asked.len());
            if layers.iter().any(|(mt, _, declared, _, _)| known(mt) && *declared > MAX_LAYER_BYTES) {
                prop_assert!(ev.problems.iter().any(|p| p.contains("evidence limit")), "{:?}", ev.problems);
            }
            for p in &ev.problems {
                assert_clear(p);
            }
        }
        drop(asked);
        // And a decision over it is reached, whatever it is.
        let (decision, _) = block_on(fixture().set.decide(&reg, &image(), &d));
        prop_assert!(!decision.allowed);
        for r in decision.reasons() {
            assert_clear(&r);
        }
    }

    /// A registry serving garbage where an artifact manifest belongs (huge
    /// strings where the parser wants numbers or lists): the problem
    /// recorded is bounded.
    #[test]
    fn hostile_artifact_manifests_give_bounded_problems(
        filler in "[A-Za-z0-9]{1,8}",
        len in 2_000usize..50_000,
        field in 0usize..4,
    ) {
        let big = filler.repeat(len / filler.len());
        let d = image_digest();
        let doc = match field {
            0 => serde_json::json!({"layers": big}),
            1 => serde_json::json!({"layers": [{"mediaType": DSSE_MEDIA_TYPE, "digest": big, "size": 1}]}),
            2 => serde_json::json!({"layers": [{"mediaType": DSSE_MEDIA_TYPE, "digest": d.to_string(), "size": big}]}),
            _ => serde_json::json!({"layers": [{"mediaType": big, "digest": d.to_string(), "size": 1, "annotations": big}]}),
        };
        let mut reg = HostileRegistry::default();
        reg.manifests.insert(evidence::cosign_tag(&d, "sig"), serde_json::to_vec(&doc).unwrap());
        let ev = block_on(evidence::collect(&reg, &[image()], &d)).unwrap();
        prop_assert!(!ev.problems.is_empty());
        for p in &ev.problems {
            assert_clear(p);
        }
    }
}

#[test]
fn huge_evidence_is_refused_with_bounded_reasons() {
    let d = image_digest();
    let huge = vec![b'{'; HUGE];
    for authority in ["k", "kr", "kl"] {
        let a = fixture().authority(authority);
        for item in [
            dsse(huge.clone(), real_annotations()),
            bundle_item(huge.clone()),
            simple(huge.clone(), "x".repeat(HUGE)),
        ] {
            let t = Instant::now();
            assert_clear(&verify_item(a, &item, &d).unwrap_err());
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        }
    }
    // Hostile envelope fields are read before any signature check.
    let big = "x".repeat(HUGE);
    for env in [
        serde_json::json!({"payloadType": big, "payload": "", "signatures": []}),
        serde_json::json!({"payloadType": INTOTO_PAYLOAD_TYPE, "payload": "", "signatures": big}),
        serde_json::json!({"payloadType": INTOTO_PAYLOAD_TYPE, "payload": big, "signatures": []}),
    ] {
        let env = serde_json::to_vec(&env).unwrap();
        for authority in ["k", "kr", "kl"] {
            let item = dsse(env.clone(), real_annotations());
            assert_clear(&verify_item(fixture().authority(authority), &item, &d).unwrap_err());
        }
    }
    assert_clear(&intoto::parse(&huge).unwrap_err());
    // A statement type of 10 MiB is not quoted back whole.
    let st = format!(
        r#"{{"_type":"{}","subject":[{{"digest":{{}}}}],"predicateType":"t"}}"#,
        "x".repeat(HUGE)
    );
    assert_clear(&intoto::parse(st.as_bytes()).unwrap_err());
}

// ------------------------------------------------------------ policy YAML

fn snap(policy: &str) -> Snapshot {
    let mut files = BTreeMap::new();
    files.insert("p.yaml".to_owned(), policy.as_bytes().to_vec());
    files.insert("root.json".to_owned(), TRUSTED_ROOT.to_vec());
    Snapshot::from_files("prop".into(), files)
}

/// Every feature of the format, as the seed for mutations.
const RICH_POLICY: &str = r#"apiVersion: customs.dev/v1alpha1
kind: ImagePolicy
metadata: {name: rich}
spec:
  images: ["r.io/team/**", "ghcr.io/*/app"]
  exclude: ["r.io/team/scratch/**"]
  mode: warn
  authorities:
    - name: release
      keyless:
        trustedRoot: root.json
        identities:
          - issuer: https://token.actions.githubusercontent.com
            subjectRegExp: "^https://github.com/acme/.*$"
            github: {repository: acme/app, ref: refs/heads/main}
      signatureRepository: r.io/team/sigs
  signatures:
    authorities: [release]
    threshold: 1
  attestations:
    - name: provenance
      predicateType: https://slsa.dev/provenance/v1
      authorities: [release]
      slsa:
        builderIds: ["https://github.com/actions/runner"]
        sourceRepositories: ["github.com/acme/app"]
        sourceRefs: ["refs/tags/*"]
      conditions:
        - cel: "predicate.buildDefinition.buildType != ''"
          message: a build type is required
---
apiVersion: customs.dev/v1alpha1
kind: ImagePolicyTest
metadata: {name: rich-tests}
spec:
  cases:
    - name: denied without evidence
      image: r.io/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000
      evidence: evidence.json
      expect: deny
      reasonContains: signature
"#;

#[test]
fn the_rich_policy_compiles() {
    // The mutation seed must be valid, so refusals of mutants are theirs.
    let set = compile(&snap(RICH_POLICY)).unwrap();
    assert_eq!(set.policies.len(), 1);
    assert_eq!(set.tests.len(), 1);
}

fn check_compile(text: &str) {
    match compile(&snap(text)) {
        Ok(set) => assert!(set.policies.len() <= text.matches("ImagePolicy").count()),
        Err(e) => {
            assert!(!e.0.is_empty(), "a refusal lists at least one error");
            for err in &e.0 {
                assert_eq!(err.file, "p.yaml");
                assert!(!err.message.trim().is_empty(), "empty error: {err}");
                assert_clear(err);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_policy_yaml_is_refused_clearly(
        s in prop_oneof![
            "\\PC{0,300}",
            "[a-zA-Z:{}\\[\\],&*!|>'\"#\\- \n]{0,300}",
        ],
    ) {
        check_compile(&s);
    }

    #[test]
    fn mutated_policies_compile_or_are_refused_clearly(edits in edits()) {
        let m = mutate(RICH_POLICY.as_bytes(), &edits);
        check_compile(&String::from_utf8_lossy(&m));
    }

    /// Line-level damage (dropped, duplicated, re-indented lines) keeps the
    /// YAML plausible, so the checks after parsing are reached.
    #[test]
    fn line_mutated_policies_compile_or_are_refused_clearly(
        ops in proptest::collection::vec((any::<usize>(), 0u8..4), 1..4),
    ) {
        let mut lines: Vec<String> = RICH_POLICY.lines().map(str::to_owned).collect();
        for (at, op) in ops {
            let i = at % lines.len();
            match op {
                0 => { lines.remove(i); }
                1 => { let l = lines[i].clone(); lines.insert(i, l); }
                2 => lines[i] = format!("  {}", lines[i]),
                _ => lines[i] = lines[i].trim_start().to_owned(),
            }
            if lines.is_empty() {
                break;
            }
        }
        check_compile(&lines.join("\n"));
    }
}

#[test]
fn yaml_bombs_are_refused_quickly() {
    const HEAD: &str =
        "apiVersion: customs.dev/v1alpha1\nkind: ImagePolicy\nmetadata: {name: p}\nspec:\n";
    // Billion laughs: 9 levels of 9 aliases each.
    let mut bomb = String::from(
        "x0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!(
            "x{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
        ));
    }
    let laughs = format!("{bomb}{HEAD}  images: *a9\n");
    let nested = format!(
        "{HEAD}  images: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let wide = format!("{HEAD}  images: [{}]\n", "\"a\",".repeat(HUGE / 4));
    let docs = format!("{HEAD}  images: [\"**\"]\n")
        .repeat(200)
        .replace("apiVersion", "---\napiVersion");
    // serde-saphyr's default budget (250k nodes, depth 64) stops the first
    // three; duplicate names the last.
    for (name, text, why) in [
        ("laughs", laughs, "budget breached"),
        ("nested", nested, "recursion limit"),
        ("wide", wide, "budget breached"),
        ("docs", docs, "defined twice"),
    ] {
        let t = Instant::now();
        let r = compile(&snap(&text));
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{name} compiled"))
            .to_string();
        assert!(
            e.contains(why),
            "{name}: {}",
            e.chars().take(300).collect::<String>()
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            t.elapsed()
        );
    }
}
