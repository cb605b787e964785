use super::*;

fn manifest(size: u64) -> PieceManifest {
    let len = piece_length_for(size);
    let n = piece_count(size, len);
    PieceManifest {
        blob: Digest::of(b"blob"),
        size,
        piece_length: len,
        pieces: (0..n).map(|i| Digest::of(&i.to_le_bytes())).collect(),
        admission: AdmissionRef {
            image: "r.example/team/app".into(),
            manifest_digest: Digest::of(b"m"),
            policy_revision: "rev1".into(),
        },
        key_id: String::new(),
    }
}

#[test]
fn piece_lengths() {
    assert_eq!(piece_length_for(10), MIN_PIECE_LEN);
    assert_eq!(piece_length_for(1 << 30), 4 << 20);
    assert_eq!(piece_length_for(32 << 20), 256 << 10);
    assert_eq!(piece_length_for(64 << 20), 256 << 10);
    assert_eq!(piece_length_for(128 << 20), 512 << 10);
    assert_eq!(piece_length_for(1 << 40), MAX_PIECE_LEN);
    assert_eq!(piece_count(0, MIN_PIECE_LEN), 1);
    assert_eq!(piece_count(MIN_PIECE_LEN + 1, MIN_PIECE_LEN), 2);
    let m = manifest(3 * MIN_PIECE_LEN + 5);
    assert_eq!(
        m.piece_range(3),
        Some((3 * MIN_PIECE_LEN, 3 * MIN_PIECE_LEN + 5))
    );
    assert_eq!(m.piece_range(4), None);
}

#[test]
fn sign_and_verify_round_trip() {
    let key = GatewayKey::generate().unwrap();
    let trusted = TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()]).unwrap();
    let signed = key.sign(manifest(5 * MIN_PIECE_LEN)).unwrap();
    let v = trusted.verify(&signed, &Digest::of(b"blob")).unwrap();
    assert_eq!(v.manifest().pieces.len(), 5);
    // PEM round trip keeps the identity.
    let again = GatewayKey::from_pem(&key.to_pem().unwrap()).unwrap();
    assert_eq!(again.id(), key.id());
}

#[test]
fn forged_manifests_are_rejected() {
    let key = GatewayKey::generate().unwrap();
    let other = GatewayKey::generate().unwrap();
    let trusted = TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()]).unwrap();
    let blob = Digest::of(b"blob");

    // Wrong key.
    let forged = other.sign(manifest(MIN_PIECE_LEN)).unwrap();
    assert!(matches!(
        trusted.verify(&forged, &blob),
        Err(PieceManifestError::UntrustedKey(_))
    ));
    // Wrong key claiming the trusted key's id.
    let mut claimed = forged.clone();
    claimed.key_id = key.id().to_owned();
    assert_eq!(
        trusted.verify(&claimed, &blob).unwrap_err(),
        PieceManifestError::BadSignature
    );

    // Edited digest list.
    let good = key.sign(manifest(2 * MIN_PIECE_LEN)).unwrap();
    let mut m: PieceManifest = serde_json::from_slice(&good.payload).unwrap();
    m.pieces[1] = Digest::of(b"evil");
    let mut edited = good.clone();
    edited.payload = serde_json::to_vec(&m).unwrap();
    assert_eq!(
        trusted.verify(&edited, &blob).unwrap_err(),
        PieceManifestError::BadSignature
    );

    // A valid manifest for another blob.
    assert!(matches!(
        trusted.verify(&good, &Digest::of(b"another")),
        Err(PieceManifestError::WrongBlob { .. })
    ));

    // Truncated signature, garbage payload.
    let mut short = good.clone();
    short.signature.truncate(10);
    assert_eq!(
        trusted.verify(&short, &blob).unwrap_err(),
        PieceManifestError::BadSignature
    );

    // Inconsistent content is refused even when signed.
    let mut bad = manifest(2 * MIN_PIECE_LEN);
    bad.pieces.pop();
    assert!(matches!(
        key.sign(bad),
        Err(PieceManifestError::Inconsistent(_))
    ));

    // No trusted keys: nothing verifies.
    assert!(TrustedGatewayKeys::default().verify(&good, &blob).is_err());
}

#[test]
fn a_statements_claimed_blob_is_read_from_either_kind_of_payload() {
    let blob = Digest::of(b"blob");
    let signed = |payload: Vec<u8>| SignedPieceManifest {
        payload,
        signature: Vec::new(),
        key_id: String::new(),
    };
    let json = format!(r#"{{"blob":"{blob}","size":1}}"#).into_bytes();
    assert_eq!(signed(json.clone()).claimed_blob(), Some(blob.clone()));
    let provisional = [PROVISIONAL_DOMAIN, &json].concat();
    assert_eq!(signed(provisional).claimed_blob(), Some(blob));
    for junk in [
        &b"{"[..],
        br#"{"blob":"sha256:nothex"}"#,
        br#"{"size":1}"#,
        b"",
    ] {
        assert_eq!(signed(junk.to_vec()).claimed_blob(), None);
    }
}
