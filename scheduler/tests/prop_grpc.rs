//! Property tests for what the scheduler reads from peers over gRPC: the
//! prost decoding of every request message, and the `customs-protocol`
//! parsing the service applies to their fields (blob digests, upload
//! addresses, signed piece manifests).
//!
//! A peer controls every byte of its messages: arbitrary bytes must decode
//! or fail cleanly, lengths and counts declared inside a message are never
//! allocated on trust, and a field that reaches the service's parsers is
//! refused with a clear, bounded error unless it is well formed.
//!
//! The state-level properties (`announce`, `report_pieces`, `report_bad`,
//! `task_for` with arbitrary ids, digests and piece lists) are left out on
//! purpose while the scheduler state's API is being rewritten.
#![allow(clippy::unwrap_used)]

use customs_protocol::Digest;
use customs_protocol::piece_manifest::{
    AdmissionRef, GatewayKey, MIN_PIECE_LEN, PieceManifest, SignedPieceManifest,
    TrustedGatewayKeys, piece_count, piece_length_for,
};
use customs_protocol::scheduler_proto as pb;
use proptest::prelude::*;
use prost::Message;
use std::fmt::Display;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "../../protocol/tests/kit/prop_kit.rs"]
mod prop_kit;

/// A refusal is clear and bounded (see [`prop_kit::assert_clear_within`]).
fn assert_clear(e: &impl Display) {
    prop_kit::assert_clear_within(e, MAX_ERROR_LEN);
}

/// Cases per property (a few seconds for the whole file).
const CASES: u32 = 256;

/// Longest error text a peer's message may provoke: errors travel back as
/// `tonic::Status` messages and into the scheduler's logs.
const MAX_ERROR_LEN: usize = 1024;

/// tonic's default decoding limit, which the scheduler server keeps.
const TONIC_MAX_MESSAGE: usize = 4 * 1024 * 1024;

/// Decodes `bytes` as every message a peer (or the gateway) sends the
/// scheduler, and as every answer a peer decodes from it; checks each
/// success re-encodes to a message that decodes to the same value.
fn decode_all(bytes: &[u8]) {
    fn one<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
        match M::decode(bytes) {
            Ok(m) => {
                // A decoded message is no larger than its input implies
                // (unknown fields are dropped, nothing is invented).
                let again = m.encode_to_vec();
                assert!(
                    again.len() <= bytes.len() + 16,
                    "{} → {}",
                    bytes.len(),
                    again.len()
                );
                assert_eq!(M::decode(again.as_slice()).unwrap(), m);
            }
            Err(e) => assert_clear(&e),
        }
    }
    one::<pb::RegisterTaskRequest>(bytes);
    one::<pb::AnnouncePeerRequest>(bytes);
    one::<pb::GetTaskRequest>(bytes);
    one::<pb::ReportPiecesRequest>(bytes);
    one::<pb::ReportBadPieceRequest>(bytes);
    one::<pb::ListPeersRequest>(bytes);
    one::<pb::AnnouncePeerResponse>(bytes);
    one::<pb::GetTaskResponse>(bytes);
    one::<pb::ReportBadPieceResponse>(bytes);
    one::<pb::ListPeersResponse>(bytes);
}

/// Protobuf-shaped noise: field keys of the real tags and wire types, with
/// varints and length prefixes that may lie.
fn wire() -> impl Strategy<Value = Vec<u8>> {
    let varint = prop_oneof![
        any::<u64>(),
        0u64..300,
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
    ];
    let field = (
        1u64..9,
        0u64..6,
        varint,
        proptest::collection::vec(any::<u8>(), 0..24),
    );
    proptest::collection::vec(field, 0..12).prop_map(|fields| {
        let mut out = Vec::new();
        for (tag, wire_type, v, tail) in fields {
            put_varint(&mut out, (tag << 3) | wire_type);
            put_varint(&mut out, v);
            out.extend_from_slice(&tail);
        }
        out
    })
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn peer_info() -> impl Strategy<Value = pb::PeerInfo> {
    (
        "\\PC{0,40}",
        "\\PC{0,30}",
        any::<u64>(),
        any::<u32>(),
        "\\PC{0,10}",
        "\\PC{0,10}",
        any::<bool>(),
    )
        .prop_map(
            |(peer_id, upload_addr, upload_capacity, active_uploads, zone, rack, seed)| {
                pb::PeerInfo {
                    peer_id,
                    upload_addr,
                    upload_capacity,
                    active_uploads,
                    zone,
                    rack,
                    seed,
                }
            },
        )
}

fn digest_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        "sha256:[0-9a-f]{64}",
        "(sha256|sha512|md5)?:?[0-9a-fA-F./]{0,80}",
    ]
}

// ------------------------------------------------------------- decoding

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_all(&bytes);
    }

    #[test]
    fn protobuf_shaped_noise_decodes_or_fails_cleanly(bytes in wire()) {
        decode_all(&bytes);
    }

    /// Every request a peer can send round-trips through the wire unchanged.
    #[test]
    fn requests_round_trip(
        info in peer_info(),
        blob in digest_like(),
        peer_id in "\\PC{0,40}",
        parent_id in "\\PC{0,40}",
        pieces in proptest::collection::vec(any::<u32>(), 0..64),
        piece in any::<u32>(),
        wanted in any::<u32>(),
        detail in "\\PC{0,100}",
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        signature in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        fn rt<M: Message + Default + PartialEq + std::fmt::Debug>(m: M) -> Result<(), TestCaseError> {
            prop_assert_eq!(M::decode(m.encode_to_vec().as_slice()).unwrap(), m);
            Ok(())
        }
        rt(pb::AnnouncePeerRequest { peer: Some(info.clone()) })?;
        rt(pb::GetTaskRequest { blob_digest: blob.clone(), peer_id: peer_id.clone(), seed_hints_wanted: wanted, omit_manifest: wanted % 2 == 1 , ..Default::default() })?;
        rt(pb::ReportPiecesRequest { peer_id: peer_id.clone(), blob_digest: blob.clone(), pieces, ..Default::default() })?;
        rt(pb::ReportBadPieceRequest { peer_id, parent_id, blob_digest: blob, piece, detail })?;
        rt(pb::RegisterTaskRequest { manifest: Some(pb::SignedPieceManifest { payload, signature, key_id: info.peer_id.clone() }), seed_id: String::new() })?;
        rt(pb::ListPeersResponse { peers: vec![info] })?;
    }

    /// Damaged requests never panic the decoder.
    #[test]
    fn mutated_requests_decode_or_fail_cleanly(
        info in peer_info(),
        blob in digest_like(),
        pieces in proptest::collection::vec(any::<u32>(), 0..64),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        for m in [
            pb::AnnouncePeerRequest { peer: Some(info.clone()) }.encode_to_vec(),
            pb::ReportPiecesRequest { peer_id: info.peer_id.clone(), blob_digest: blob, pieces, ..Default::default() }.encode_to_vec(),
        ] {
            let mut m = m;
            for &(at, op, byte) in &edits {
                if m.is_empty() {
                    m.push(byte);
                    continue;
                }
                let i = at % m.len();
                match op % 3 {
                    0 => m[i] ^= byte | 1,
                    1 => { m.remove(i); }
                    _ => m.insert(i, byte),
                }
            }
            decode_all(&m);
        }
    }
}

#[test]
fn declared_lengths_are_not_allocated_on_trust() {
    // A few bytes that declare a 4 GiB (or 2^63) field: prost checks the
    // declared length against what is there before reserving anything.
    for len in [u64::from(u32::MAX), 1 << 40, u64::MAX >> 1, u64::MAX] {
        for tag in 1u64..=5 {
            let mut m = Vec::new();
            put_varint(&mut m, (tag << 3) | 2);
            put_varint(&mut m, len);
            m.extend_from_slice(b"short");
            let t = Instant::now();
            decode_all(&m);
            assert!(
                t.elapsed() < Duration::from_millis(200),
                "{:?}",
                t.elapsed()
            );
            assert!(pb::ReportPiecesRequest::decode(m.as_slice()).is_err());
            assert!(pb::AnnouncePeerRequest::decode(m.as_slice()).is_err());
        }
    }
    // A packed `repeated uint32` as large as tonic lets through decodes to
    // at most one entry per input byte: the count is bounded by the message.
    let mut pieces = Vec::new();
    put_varint(&mut pieces, (3 << 3) | 2);
    put_varint(&mut pieces, TONIC_MAX_MESSAGE as u64 - 8);
    pieces.resize(pieces.len() + TONIC_MAX_MESSAGE - 8, 0x01);
    let t = Instant::now();
    let r = pb::ReportPiecesRequest::decode(pieces.as_slice()).unwrap();
    assert_eq!(r.pieces.len(), TONIC_MAX_MESSAGE - 8);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Deeply nested messages (a Parent's PeerInfo inside GetTaskResponse,
    // nested over and over through unknown groups) hit prost's recursion
    // limit instead of overflowing the stack.
    let mut nested = Vec::new();
    for _ in 0..10_000 {
        put_varint(&mut nested, (9 << 3) | 3); // start group, unknown field
    }
    decode_all(&nested);
}

// ------------------------------------- fields through the protocol parsers

/// A gateway key for the register-task pipeline (the gateway is the only
/// caller allowed to register; it still gets no trust beyond its key).
struct TestGateway {
    key: GatewayKey,
    trusted: TrustedGatewayKeys,
}

fn gateway() -> &'static TestGateway {
    static G: OnceLock<TestGateway> = OnceLock::new();
    G.get_or_init(|| {
        let key = GatewayKey::generate().unwrap();
        let trusted = TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()]).unwrap();
        TestGateway { key, trusted }
    })
}

/// What `register_task` does with a decoded request, through the public
/// protocol API: the blob the payload claims, then the signature and the
/// manifest's consistency. Returns the error text a caller would see.
fn register(req: &pb::RegisterTaskRequest) -> Result<u32, String> {
    let signed: SignedPieceManifest = req.manifest.clone().ok_or("missing piece manifest")?.into();
    let claimed: serde_json::Value =
        serde_json::from_slice(&signed.payload).map_err(|e| format!("piece manifest: {e}"))?;
    let blob: Digest = claimed["blob"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("blob digest: {e}"))?;
    let v = gateway()
        .trusted
        .verify(&signed, &blob)
        .map_err(|e| e.to_string())?;
    Ok(v.manifest().piece_count())
}

fn signed_manifest(size: u64, blob: &Digest) -> pb::SignedPieceManifest {
    let piece_length = piece_length_for(size);
    let m = PieceManifest {
        blob: blob.clone(),
        size,
        piece_length,
        pieces: (0..piece_count(size, piece_length))
            .map(|i| Digest::of(&i.to_le_bytes()))
            .collect(),
        admission: AdmissionRef {
            image: "r.io/team/app".into(),
            manifest_digest: Digest::of(b"m"),
            policy_revision: "rev".into(),
        },
        key_id: String::new(),
    };
    (&gateway().key.sign(m).unwrap()).into()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// The digest fields of `GetTask`, `ReportPieces` and `ReportBadPiece`
    /// go through `Digest::from_str`: only the canonical form passes, and
    /// a refusal is bounded however long the field.
    #[test]
    fn digest_fields_parse_or_are_refused_clearly(blob in digest_like(), pad in 0usize..3) {
        let blob = match pad {
            0 => blob,
            1 => format!("{blob}{}", "f".repeat(100_000)),
            _ => format!("sha256:{}{blob}", "a".repeat(64)),
        };
        let req = pb::GetTaskRequest { blob_digest: blob, peer_id: "p".into(), seed_hints_wanted: 1, omit_manifest: false, ..Default::default() };
        let req = pb::GetTaskRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        match req.blob_digest.parse::<Digest>() {
            Ok(d) => prop_assert_eq!(d.to_string(), req.blob_digest),
            Err(e) => assert_clear(&e),
        }
    }

    /// `AnnouncePeer`'s `upload_addr` must be a socket address; host names,
    /// URLs and garbage are refused before the state sees them.
    #[test]
    fn upload_addrs_are_socket_addresses_or_refused(
        addr in prop_oneof![
            "\\PC{0,40}",
            "[0-9.]{1,15}:[0-9]{1,6}",
            "\\[[0-9a-f:]{2,20}\\]:[0-9]{1,5}",
            "[a-z.]{1,20}:[0-9]{1,5}",
            "(http|https)://[a-z0-9.:]{1,20}",
        ],
    ) {
        let req = pb::AnnouncePeerRequest {
            peer: Some(pb::PeerInfo { upload_addr: addr.clone(), ..Default::default() }),
        };
        let req = pb::AnnouncePeerRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        let got = req.peer.unwrap().upload_addr;
        if let Ok(sa) = got.parse::<std::net::SocketAddr>() {
            // What is accepted is an IP literal and a port, never a name
            // the scheduler would hand to peers to resolve.
            let (host, port) = got.rsplit_once(':').unwrap();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            prop_assert_eq!(host.parse::<std::net::IpAddr>().unwrap(), sa.ip());
            prop_assert_eq!(port.parse::<u16>().unwrap(), sa.port());
        }
    }

    /// `RegisterTask` with arbitrary content: refused cleanly unless the
    /// trusted gateway signed a consistent manifest for the blob it claims.
    #[test]
    fn register_task_payloads_are_refused_or_verified(
        payload in proptest::collection::vec(any::<u8>(), 0..300),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
        key_id in prop_oneof![Just(gateway().key.id().to_owned()), "\\PC{0,80}"],
        blob in "[0-9a-f]{64}",
        claim in any::<bool>(),
        missing in any::<bool>(),
    ) {
        let mut payload = payload;
        if claim {
            // Make the payload claim a blob, so the signature check is reached.
            payload = serde_json::to_vec(&serde_json::json!({
                "blob": format!("sha256:{blob}"),
                "junk": String::from_utf8_lossy(&payload),
            })).unwrap();
        }
        let req = pb::RegisterTaskRequest {
            manifest: (!missing).then_some(pb::SignedPieceManifest { payload, signature, key_id }),
            seed_id: String::new(),
        };
        let req = pb::RegisterTaskRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        let e = register(&req).unwrap_err();
        assert_clear(&e);
    }

    /// The gateway's real registrations verify after a trip over the wire;
    /// any change to the bytes on the way is caught.
    #[test]
    fn signed_registrations_survive_the_wire_and_damage_is_caught(
        size in prop_oneof![0u64..4 * MIN_PIECE_LEN, 0u64..(1 << 34)],
        blob in "[0-9a-f]{64}",
        at in any::<usize>(),
        flip in 1u8..=255,
        field in 0usize..2,
    ) {
        let blob: Digest = format!("sha256:{blob}").parse().unwrap();
        let m = signed_manifest(size, &blob);
        let req = pb::RegisterTaskRequest { manifest: Some(m), seed_id: String::new() };
        let wire = req.encode_to_vec();
        let decoded = pb::RegisterTaskRequest::decode(wire.as_slice()).unwrap();
        let n = register(&decoded).unwrap();
        prop_assert_eq!(u64::from(n), piece_count(size, piece_length_for(size)));
        let mut bad = decoded.clone();
        let inner = bad.manifest.as_mut().unwrap();
        let bytes = if field == 0 { &mut inner.payload } else { &mut inner.signature };
        let i = at % bytes.len();
        bytes[i] ^= flip;
        assert_clear(&register(&bad).unwrap_err());
    }
}
