//! Property tests for every `customs-protocol` parser that reads untrusted
//! input: digests, registry hosts, repositories, tags, references, image
//! references, image and index manifests, signed piece manifests and OCI
//! error bodies.
//!
//! Each property plays the attacker: arbitrary or mutated input must never
//! panic, a refusal must carry a clear error (non-empty, bounded length, so
//! hostile input cannot blow up logs or responses), and a declared size or
//! count is never allocated just because the input names it.
#![allow(clippy::unwrap_used)]

use customs_protocol::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use customs_protocol::oci_error::error_body;
use customs_protocol::piece_manifest::{
    AdmissionRef, MIN_PIECE_LEN, PieceManifest, PieceManifestError, SignedPieceManifest,
    TrustedGatewayKeys, piece_count, piece_length_for,
};
use customs_protocol::{
    Digest, ImageRef, MAX_MANIFEST_BYTES, ManifestError, ManifestKind, ManifestRefs, OciErrorCode,
    Reference, RegistryHost, Repository, Tag,
};
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::{Signer, SigningKey};
use proptest::prelude::*;
use std::fmt::Display;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "kit/prop_kit.rs"]
mod prop_kit;
use prop_kit::{edits, mutate};

/// A refusal is clear and bounded (see [`prop_kit::assert_clear_within`]).
fn assert_clear(e: &impl Display) {
    prop_kit::assert_clear_within(e, MAX_ERROR_LEN);
}

/// Cases per property: enough to find shallow bugs, small enough that the
/// whole file runs in a few seconds in CI.
const CASES: u32 = 256;

/// Longest error message any parser may produce, whatever the input. Error
/// texts end up in logs, reason phrases and JSON bodies; an attacker must
/// not be able to make them as large as the input.
const MAX_ERROR_LEN: usize = 1024;

/// The input size for "over the cap" checks: well over every 4 MiB cap.
const HUGE: usize = 10 * 1024 * 1024;

fn hex64() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

fn digest() -> impl Strategy<Value = Digest> {
    hex64().prop_map(|h| format!("sha256:{h}").parse().unwrap())
}

/// Strings that look like the input a parser expects, plus pure noise: most
/// of the interesting bugs sit near the grammar, not in random Unicode.
fn name_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        "[a-zA-Z0-9._:/@\\[\\]-]{0,120}",
        "[a-z0-9]{1,8}([._-]{1,3}[a-z0-9]{1,8}){0,3}(/[a-z0-9]{1,8}){0,4}",
        "(sha256|sha512|SHA256|)[:]?[0-9a-fA-F]{0,70}",
        "[a-z0-9.-]{1,20}(:[0-9]{0,6})?/[a-z0-9/_.-]{0,40}(:[A-Za-z0-9_.-]{0,20})?(@sha256:[0-9a-f]{0,64})?",
        "\\[[0-9a-f:]{0,40}\\](:[0-9]{1,6})?",
    ]
}

// ---------------------------------------------------------------- names

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn digest_parse_is_total_and_canonical(s in name_like()) {
        match s.parse::<Digest>() {
            Ok(d) => {
                // Only the canonical form is accepted, so it prints back as given.
                prop_assert_eq!(d.to_string(), s.clone());
                prop_assert_eq!(d.hex().len(), 64);
                prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d.clone());
                let json = serde_json::to_string(&d).unwrap();
                prop_assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
            }
            Err(e) => {
                assert_clear(&e);
                // serde refuses exactly what FromStr refuses.
                let json = serde_json::to_string(&s).unwrap();
                prop_assert!(serde_json::from_str::<Digest>(&json).is_err());
            }
        }
    }

    #[test]
    fn valid_digests_parse_and_any_one_char_change_is_refused(
        h in hex64(),
        at in 0usize..71,
        c in any::<char>(),
    ) {
        let s = format!("sha256:{h}");
        prop_assert_eq!(s.parse::<Digest>().unwrap().to_string(), s.clone());
        let mut chars: Vec<char> = s.chars().collect();
        let at = at % chars.len();
        prop_assume!(chars[at] != c);
        // Replacing a hex digit by another lowercase hex digit is a different
        // valid digest; anything else must be refused.
        let still_valid = at >= 7 && c.is_ascii_hexdigit() && !c.is_ascii_uppercase();
        chars[at] = c;
        let m: String = chars.into_iter().collect();
        prop_assert_eq!(m.parse::<Digest>().is_ok(), still_valid, "{:?}", m);
    }

    #[test]
    fn registry_host_parse_is_total_and_idempotent(s in name_like()) {
        match s.parse::<RegistryHost>() {
            Ok(h) => {
                prop_assert_eq!(h.as_str(), s.to_ascii_lowercase());
                prop_assert!(!h.as_str().contains('/'));
                prop_assert!(h.as_str().len() <= customs_protocol::name::MAX_HOST_LEN);
                prop_assert_eq!(h.as_str().parse::<RegistryHost>().unwrap(), h);
            }
            Err(e) => assert_clear(&e),
        }
    }

    #[test]
    fn valid_registry_hosts_parse(
        labels in proptest::collection::vec("[a-zA-Z0-9][a-zA-Z0-9-]{0,10}", 1..5),
        port in proptest::option::of(any::<u16>()),
    ) {
        let mut s = labels.join(".");
        if let Some(p) = port {
            s = format!("{s}:{p}");
        }
        prop_assert!(s.parse::<RegistryHost>().is_ok(), "{:?}", s);
    }

    #[test]
    fn repository_parse_is_total_and_never_a_path_trick(s in name_like()) {
        match s.parse::<Repository>() {
            Ok(r) => {
                let r = r.as_str();
                prop_assert!(r.len() <= customs_protocol::name::MAX_REPOSITORY_LEN);
                prop_assert!(!r.starts_with('/') && !r.ends_with('/'));
                prop_assert!(!r.contains("//") && !r.contains(".."));
                prop_assert!(r.split('/').all(|c| c != "." && !c.is_empty()));
                prop_assert!(r.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'-' | b'/')));
                let again: Repository = r.parse().unwrap();
                prop_assert_eq!(again.as_str(), r);
            }
            Err(e) => assert_clear(&e),
        }
    }

    #[test]
    fn valid_repositories_parse(
        parts in proptest::collection::vec("[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,2}", 1..5),
    ) {
        let s = parts.join("/");
        prop_assert!(s.parse::<Repository>().is_ok(), "{:?}", s);
    }

    #[test]
    fn tag_parse_matches_the_oci_grammar(s in prop_oneof!["\\PC{0,140}", "[A-Za-z0-9_.-]{0,140}"]) {
        let grammar = !s.is_empty()
            && s.len() <= customs_protocol::name::MAX_TAG_LEN
            && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        match s.parse::<Tag>() {
            Ok(t) => {
                prop_assert!(grammar, "{:?} accepted", s);
                prop_assert_eq!(t.as_str(), s.as_str());
            }
            Err(e) => {
                prop_assert!(!grammar, "{:?} refused", s);
                assert_clear(&e);
            }
        }
    }

    #[test]
    fn reference_parse_is_total_and_round_trips(s in name_like()) {
        match s.parse::<Reference>() {
            Ok(r) => {
                prop_assert_eq!(r.to_string(), s.clone());
                prop_assert_eq!(r.to_string().parse::<Reference>().unwrap(), r);
            }
            Err(e) => assert_clear(&e),
        }
    }

    #[test]
    fn image_ref_parse_is_total_and_its_display_is_a_fixed_point(s in name_like()) {
        match s.parse::<ImageRef>() {
            Ok(r) => {
                let shown = r.to_string();
                let again: ImageRef = shown
                    .parse()
                    .unwrap_or_else(|e| panic!("{s:?} → {shown:?} does not parse again: {e}"));
                prop_assert_eq!(&again, &r, "{:?} → {:?}", s, shown);
                prop_assert_eq!(again.to_string(), shown);
            }
            Err(e) => assert_clear(&e),
        }
    }
}

#[test]
fn huge_names_are_refused_with_bounded_errors() {
    let huge = "a".repeat(HUGE);
    assert_clear(&huge.parse::<Digest>().unwrap_err());
    assert_clear(&format!("sha256:{huge}").parse::<Digest>().unwrap_err());
    assert_clear(&format!("{huge}:x").parse::<Digest>().unwrap_err());
    assert_clear(&huge.parse::<RegistryHost>().unwrap_err());
    assert_clear(&huge.parse::<Repository>().unwrap_err());
    assert_clear(&huge.parse::<Tag>().unwrap_err());
    assert_clear(&huge.parse::<Reference>().unwrap_err());
    assert_clear(&format!("r.io/{huge}:v1").parse::<ImageRef>().unwrap_err());
    assert_clear(&format!("r.io/app:{huge}").parse::<ImageRef>().unwrap_err());
}

// ------------------------------------------------------------ manifests

fn media_type() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        Just(OCI_MANIFEST.to_owned()),
        Just(DOCKER_MANIFEST.to_owned()),
        Just(OCI_INDEX.to_owned()),
        Just(DOCKER_LIST.to_owned()),
        "[a-z./+-]{0,30}",
    ])
}

fn descriptor() -> impl Strategy<Value = serde_json::Value> {
    (digest(), any::<u64>(), "[a-z./+-]{0,20}").prop_map(
        |(d, size, mt)| serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": size}),
    )
}

/// An image manifest (config + layers) or an index (manifests), with a
/// declared media type that may or may not fit its shape.
fn manifest_doc() -> impl Strategy<Value = (serde_json::Value, bool, Option<String>)> {
    (
        any::<bool>(),
        media_type(),
        descriptor(),
        proptest::collection::vec(descriptor(), 0..8),
    )
        .prop_map(|(index, mt, config, list)| {
            let mut doc = serde_json::json!({"schemaVersion": 2});
            if let Some(mt) = &mt {
                doc["mediaType"] = mt.clone().into();
            }
            if index {
                doc["manifests"] = list.into();
            } else {
                doc["config"] = config;
                doc["layers"] = list.into();
            }
            (doc, index, mt)
        })
}

/// Arbitrary JSON documents, biased towards manifest-shaped objects.
fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(Into::into),
        any::<i64>().prop_map(Into::into),
        any::<u64>().prop_map(Into::into),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or_default()),
        "\\PC{0,20}".prop_map(Into::into),
        digest().prop_map(|d| d.to_string().into()),
    ];
    let key = prop_oneof![
        Just("schemaVersion".to_owned()),
        Just("mediaType".to_owned()),
        Just("config".to_owned()),
        Just("layers".to_owned()),
        Just("manifests".to_owned()),
        Just("digest".to_owned()),
        Just("size".to_owned()),
        Just("platform".to_owned()),
        "[a-z]{1,6}",
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Into::into),
            proptest::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn declared() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof![
        Just(format!("{OCI_MANIFEST}; charset=utf-8")),
        Just(DOCKER_LIST.to_owned()),
        "\\PC{0,40}",
    ])
}

/// What every parsed manifest must satisfy, whatever bytes produced it.
fn check_refs(r: &ManifestRefs) {
    match r.kind {
        ManifestKind::Image => {
            assert!(
                !r.blobs.is_empty(),
                "an image manifest has at least its config"
            );
            assert!(r.children.is_empty());
            assert!([OCI_MANIFEST, DOCKER_MANIFEST].contains(&r.media_type.as_str()));
        }
        ManifestKind::Index => {
            assert!(r.blobs.is_empty());
            assert!([OCI_INDEX, DOCKER_LIST].contains(&r.media_type.as_str()));
        }
    }
    for d in r.blobs.iter().chain(&r.children) {
        // Typed digests: a descriptor that parsed carries a canonical one.
        assert_eq!(d.digest.to_string().parse::<Digest>().unwrap(), d.digest);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn manifest_parse_of_arbitrary_bytes_is_total(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        declared in declared(),
    ) {
        match ManifestRefs::parse(&bytes, declared.as_deref()) {
            Ok(r) => check_refs(&r),
            Err(e) => assert_clear(&e),
        }
    }

    #[test]
    fn manifest_parse_of_arbitrary_json_is_total(doc in arbitrary_json(), declared in declared()) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        match ManifestRefs::parse(&bytes, declared.as_deref()) {
            Ok(r) => check_refs(&r),
            Err(e) => assert_clear(&e),
        }
    }

    #[test]
    fn valid_manifests_parse_to_exactly_what_they_reference(
        (doc, index, mt) in manifest_doc(),
    ) {
        let bytes = serde_json::to_vec(&doc).unwrap();
        let fits = match (&mt, index) {
            (None, _) => true,
            (Some(m), false) => [OCI_MANIFEST, DOCKER_MANIFEST].contains(&m.as_str()),
            (Some(m), true) => [OCI_INDEX, DOCKER_LIST].contains(&m.as_str()),
        };
        match ManifestRefs::parse(&bytes, None) {
            Ok(r) => {
                prop_assert!(fits, "{} accepted with media type {:?}", doc, mt);
                check_refs(&r);
                let want: Vec<&serde_json::Value> = if index {
                    doc["manifests"].as_array().unwrap().iter().collect()
                } else {
                    std::iter::once(&doc["config"])
                        .chain(doc["layers"].as_array().unwrap())
                        .collect()
                };
                let got = if index { &r.children } else { &r.blobs };
                prop_assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(want) {
                    prop_assert_eq!(g.digest.to_string(), w["digest"].as_str().unwrap());
                    prop_assert_eq!(Some(g.size), w["size"].as_u64());
                }
            }
            Err(e) => {
                prop_assert!(!fits, "{} refused: {}", doc, e);
                prop_assert!(matches!(e, ManifestError::UnsupportedMediaType(_)));
                assert_clear(&e);
            }
        }
    }

    #[test]
    fn mutated_manifests_never_panic(
        (doc, _, _) in manifest_doc(),
        edits in edits(),
        declared in declared(),
    ) {
        let bytes = mutate(&serde_json::to_vec(&doc).unwrap(), &edits);
        match ManifestRefs::parse(&bytes, declared.as_deref()) {
            Ok(r) => check_refs(&r),
            Err(e) => assert_clear(&e),
        }
    }

    /// Hostile values inside an otherwise well-formed manifest (a huge
    /// media type, a huge string where a number belongs) must not come back
    /// in full in the error. (Found: both did, before clipping.)
    #[test]
    fn hostile_field_values_give_bounded_errors(
        filler in "[A-Za-z0-9]{1,8}",
        len in 2_000usize..100_000,
        field in 0usize..5,
    ) {
        let big = filler.repeat(len / filler.len());
        let d = Digest::of(b"x").to_string();
        let doc = match field {
            0 => serde_json::json!({"schemaVersion": 2, "mediaType": big, "config": {"digest": d, "size": 1}, "layers": []}),
            1 => serde_json::json!({"schemaVersion": 2, "config": {"digest": d, "size": big}, "layers": []}),
            2 => serde_json::json!({"schemaVersion": 2, "config": {"digest": big, "size": 1}, "layers": []}),
            3 => serde_json::json!({"schemaVersion": big, "manifests": []}),
            _ => serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": d, "size": 1, "platform": {"os": [big]}}]}),
        };
        let e = ManifestRefs::parse(&serde_json::to_vec(&doc).unwrap(), None).unwrap_err();
        assert_clear(&e);
    }
}

#[test]
fn oversized_manifests_are_refused_before_parsing() {
    // A valid manifest padded over the cap: refused by size, not parsed.
    let d = Digest::of(b"x").to_string();
    let mut body =
        format!(r#"{{"schemaVersion":2,"config":{{"digest":"{d}","size":1}},"layers":["#)
            .into_bytes();
    let layer = format!(r#"{{"digest":"{d}","size":1}},"#).into_bytes();
    while body.len() < HUGE {
        body.extend_from_slice(&layer);
    }
    body.extend_from_slice(format!(r#"{{"digest":"{d}","size":1}}]}}"#).as_bytes());
    let t = Instant::now();
    let e = ManifestRefs::parse(&body, None).unwrap_err();
    assert!(
        matches!(e, ManifestError::TooLarge(n) if n == body.len()),
        "{e}"
    );
    assert_clear(&e);
    // Refusing by length is O(1): far below the time parsing 10 MiB takes.
    assert!(t.elapsed() < Duration::from_millis(50), "{:?}", t.elapsed());
    // The cap is inclusive: exactly MAX_MANIFEST_BYTES is parsed (and here
    // refused as malformed), one more byte is refused by size.
    let mut at_cap = vec![b' '; MAX_MANIFEST_BYTES];
    at_cap[0] = b'{';
    assert!(matches!(
        ManifestRefs::parse(&at_cap, None),
        Err(ManifestError::Malformed(_))
    ));
    at_cap.push(b' ');
    assert!(matches!(
        ManifestRefs::parse(&at_cap, None),
        Err(ManifestError::TooLarge(_))
    ));
}

#[test]
fn huge_declared_sizes_are_not_allocated() {
    // A descriptor may declare any size; parsing reads the number, it never
    // reserves the bytes it names.
    let d = Digest::of(b"x").to_string();
    let m = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"{d}","size":{}}},"layers":[{{"digest":"{d}","size":{}}}]}}"#,
        u64::MAX,
        u64::MAX
    );
    let r = ManifestRefs::parse(m.as_bytes(), None).unwrap();
    assert_eq!(r.blobs[1].size, u64::MAX);
    // Deep nesting is refused by serde_json's recursion limit, not a stack
    // overflow.
    let deep = format!(
        r#"{{"schemaVersion":2,"config":{}1{},"layers":[]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_clear(&ManifestRefs::parse(deep.as_bytes(), None).unwrap_err());
}

// ------------------------------------------------------- piece manifests

/// A gateway key the tests control, so they can sign any payload a
/// compromised or buggy gateway might produce.
struct TestGateway {
    key: SigningKey,
    id: String,
    trusted: TrustedGatewayKeys,
}

fn gateway() -> &'static TestGateway {
    static G: OnceLock<TestGateway> = OnceLock::new();
    G.get_or_init(|| {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pem = key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let id = format!(
            "ed25519:{}",
            &Digest::of(key.verifying_key().as_bytes()).hex()[..16]
        );
        let trusted = TrustedGatewayKeys::from_pems([pem.as_str()]).unwrap();
        TestGateway { key, id, trusted }
    })
}

impl TestGateway {
    fn sign_bytes(&self, payload: Vec<u8>) -> SignedPieceManifest {
        let signature = self.key.sign(&payload).to_bytes().to_vec();
        SignedPieceManifest {
            payload,
            signature,
            key_id: self.id.clone(),
        }
    }
}

fn piece_manifest(blob: Digest, size: u64) -> PieceManifest {
    let piece_length = piece_length_for(size);
    let n = piece_count(size, piece_length);
    PieceManifest {
        blob,
        size,
        piece_length,
        pieces: (0..n).map(|i| Digest::of(&i.to_le_bytes())).collect(),
        admission: AdmissionRef {
            image: "r.example/team/app".into(),
            manifest_digest: Digest::of(b"m"),
            policy_revision: "rev1".into(),
        },
        key_id: gateway().id.clone(),
    }
}

fn check_verified(m: &PieceManifest, blob: &Digest) {
    assert_eq!(&m.blob, blob);
    assert_eq!(m.pieces.len() as u64, piece_count(m.size, m.piece_length));
    // Every listed piece has a range inside the blob, and they tile it.
    let mut next = 0;
    for i in 0..m.pieces.len() as u32 {
        let (s, e) = m.piece_range(i).unwrap();
        assert_eq!(s, next);
        assert!(s <= e && e <= m.size);
        next = e;
    }
    assert_eq!(next, m.size);
    assert_eq!(m.piece_range(m.pieces.len() as u32), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Unsigned garbage from a peer never verifies, never panics.
    #[test]
    fn arbitrary_signed_manifests_are_refused(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
        key_id in prop_oneof![Just(gateway().id.clone()), "\\PC{0,100}"],
        blob in digest(),
    ) {
        let signed = SignedPieceManifest { payload, signature, key_id };
        let e = gateway().trusted.verify(&signed, &blob).unwrap_err();
        prop_assert!(matches!(
            e,
            PieceManifestError::UntrustedKey(_) | PieceManifestError::BadSignature
        ), "{e}");
        assert_clear(&e);
    }

    /// Even a payload the trusted gateway really signed is checked: any
    /// bytes it could have signed by mistake are refused cleanly.
    #[test]
    fn signed_arbitrary_payloads_never_panic(
        doc in arbitrary_json(),
        raw in proptest::collection::vec(any::<u8>(), 0..200),
        use_raw in any::<bool>(),
        blob in digest(),
    ) {
        let payload = if use_raw { raw } else { serde_json::to_vec(&doc).unwrap() };
        let signed = gateway().sign_bytes(payload);
        match gateway().trusted.verify(&signed, &blob) {
            Ok(v) => check_verified(v.manifest(), &blob),
            Err(e) => assert_clear(&e),
        }
    }

    /// A real manifest signed by the gateway verifies; flipping any byte of
    /// the payload or signature, naming another key or another blob does not.
    #[test]
    fn mutated_signed_manifests_are_refused(
        size in prop_oneof![0u64..4 * MIN_PIECE_LEN, any::<u64>().prop_map(|s| s % (1 << 34))],
        blob in digest(),
        other in digest(),
        edits in edits(),
        which in 0usize..3,
    ) {
        let m = piece_manifest(blob.clone(), size);
        let payload = serde_json::to_vec(&m).unwrap();
        let signed = gateway().sign_bytes(payload);
        let v = gateway().trusted.verify(&signed, &blob).unwrap();
        check_verified(v.manifest(), &blob);
        if other != blob {
            let wrong = gateway().trusted.verify(&signed, &other);
            prop_assert!(
                matches!(wrong, Err(PieceManifestError::WrongBlob { .. })),
                "another blob's manifest was accepted"
            );
        }
        let mut bad = signed.clone();
        match which {
            0 => bad.payload = mutate(&bad.payload, &edits),
            1 => bad.signature = mutate(&bad.signature, &edits),
            _ => bad.key_id = String::from_utf8_lossy(&mutate(bad.key_id.as_bytes(), &edits)).into_owned(),
        }
        prop_assume!(bad != signed);
        let e = gateway().trusted.verify(&bad, &blob).unwrap_err();
        assert_clear(&e);
    }

    /// The gateway signing an inconsistent manifest (a truncated piece list,
    /// a size that disagrees with its pieces, an absurd piece length) is
    /// still refused by every verifier.
    #[test]
    fn signed_inconsistent_manifests_are_refused(
        size in 0u64..(1 << 30),
        blob in digest(),
        drop in 1usize..4,
        piece_length in any::<u64>(),
        which in 0usize..3,
    ) {
        let mut m = piece_manifest(blob.clone(), size);
        match which {
            0 => {
                let keep = m.pieces.len().saturating_sub(drop);
                m.pieces.truncate(keep);
            }
            1 => m.size = m.size.saturating_add(drop as u64 * m.piece_length),
            _ => {
                prop_assume!(piece_length != m.piece_length);
                m.piece_length = piece_length;
            }
        }
        let signed = gateway().sign_bytes(serde_json::to_vec(&m).unwrap());
        match gateway().trusted.verify(&signed, &blob) {
            // A different piece length can still tile the same size, and an
            // empty blob grown by one piece still has one piece.
            Ok(v) => {
                prop_assert!(which == 2 || (which == 1 && size == 0 && drop == 1));
                check_verified(v.manifest(), &blob);
            }
            Err(e) => {
                prop_assert!(matches!(e, PieceManifestError::Inconsistent(_)), "{e}");
                assert_clear(&e);
            }
        }
    }

    /// Signed-manifest JSON (base64 fields) from arbitrary text.
    #[test]
    fn signed_manifest_json_is_total(doc in arbitrary_json(), s in "\\PC{0,200}") {
        let _ = serde_json::from_value::<SignedPieceManifest>(doc);
        if let Err(e) = serde_json::from_str::<SignedPieceManifest>(&s) {
            assert_clear(&e);
        }
    }
}

#[test]
fn huge_declared_piece_counts_are_not_allocated() {
    // A signed manifest may claim an exabyte blob; verification compares the
    // count it implies with the listed pieces, it never allocates the count.
    let blob = Digest::of(b"b");
    let mut m = piece_manifest(blob.clone(), 10);
    m.size = u64::MAX;
    let signed = gateway().sign_bytes(serde_json::to_vec(&m).unwrap());
    let t = Instant::now();
    let e = gateway().trusted.verify(&signed, &blob).unwrap_err();
    assert!(matches!(e, PieceManifestError::Inconsistent(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    // A key id of 10 MiB comes back clipped.
    let signed = SignedPieceManifest {
        payload: Vec::new(),
        signature: Vec::new(),
        key_id: "k".repeat(HUGE),
    };
    assert_clear(&gateway().trusted.verify(&signed, &blob).unwrap_err());
}

// ------------------------------------------------------- OCI error bodies

fn code() -> impl Strategy<Value = OciErrorCode> {
    prop_oneof![
        Just(OciErrorCode::BlobUnknown),
        Just(OciErrorCode::ManifestUnknown),
        Just(OciErrorCode::ManifestInvalid),
        Just(OciErrorCode::DigestInvalid),
        Just(OciErrorCode::NameInvalid),
        Just(OciErrorCode::NameUnknown),
        Just(OciErrorCode::Denied),
        Just(OciErrorCode::Unauthorized),
        Just(OciErrorCode::Unsupported),
        Just(OciErrorCode::Toomanyrequests),
        Just(OciErrorCode::RangeInvalid),
        Just(OciErrorCode::Unavailable),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn oci_error_codes_parse_only_their_spelling(s in "[A-Z_a-z]{0,20}|\\PC{0,20}", c in code()) {
        if let Some(p) = OciErrorCode::parse(&s) {
            prop_assert_eq!(p.as_str(), s.as_str());
        }
        prop_assert_eq!(OciErrorCode::parse(c.as_str()), Some(c));
        prop_assert!((400..600).contains(&c.status()));
    }

    /// Any message (control characters, quotes, Unicode) survives the body
    /// as JSON data and the code reads back: a message cannot forge a code.
    #[test]
    fn oci_error_bodies_round_trip(c in code(), message in "\\PC{0,200}|[\"\\\\{}\\[\\]\r\n\t]{0,40}") {
        let body = serde_json::to_vec(&error_body(c, &message)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let errors = v["errors"].as_array().unwrap();
        prop_assert_eq!(errors.len(), 1);
        prop_assert_eq!(OciErrorCode::parse(errors[0]["code"].as_str().unwrap()), Some(c));
        prop_assert_eq!(errors[0]["message"].as_str().unwrap(), message.as_str());
    }
}
