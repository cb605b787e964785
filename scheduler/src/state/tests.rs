use super::*;
use customs_protocol::piece_manifest::{
    AdmissionRef, GatewayKey, PieceManifest, TrustedGatewayKeys,
};

fn task() -> (VerifiedPieceManifest, Digest) {
    let key = GatewayKey::generate().unwrap();
    let blob = Digest::of(b"blob");
    let len = customs_protocol::piece_manifest::MIN_PIECE_LEN;
    let signed = key
        .sign(PieceManifest {
            blob: blob.clone(),
            size: 3 * len,
            piece_length: len,
            pieces: vec![Digest::of(b"0"), Digest::of(b"1"), Digest::of(b"2")],
            admission: AdmissionRef {
                image: "r/x".into(),
                manifest_digest: Digest::of(b"m"),
                policy_revision: "r".into(),
            },
            key_id: String::new(),
        })
        .unwrap();
    let trusted = TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()]).unwrap();
    (trusted.verify(&signed, &blob).unwrap(), blob)
}

fn peer(id: &str, zone: &str, load: u32, seed: bool) -> PeerInfo {
    PeerInfo {
        peer_id: id.into(),
        upload_addr: format!("127.0.0.1:{}", 1000 + id.len()),
        upload_capacity: 100,
        active_uploads: load,
        zone: zone.into(),
        rack: String::new(),
        seed,
    }
}

#[test]
fn parents_by_locality_then_load_with_seed_last() {
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    let now = Instant::now();
    s.register(m);
    s.announce(peer("me", "z1", 0, false), now);
    s.announce(peer("far", "z2", 0, false), now);
    s.announce(peer("near-busy", "z1", 50, false), now);
    s.announce(peer("near-idle", "z1", 1, false), now);
    s.announce(peer("gw", "", 0, true), now);
    for p in ["far", "near-busy", "near-idle", "me"] {
        assert!(s.report_pieces(p, &blob, &[0, 99]));
    }
    let (_, parents, _) = s.task_for(&blob, "me", 0, now).unwrap();
    let ids: Vec<_> = parents
        .iter()
        .map(|p| p.peer.as_ref().unwrap().peer_id.as_str())
        .collect();
    assert_eq!(ids, ["near-idle", "near-busy", "far", "gw"]);
    assert_eq!(parents[0].pieces, vec![1]); // piece 99 is out of range: ignored
    assert!(
        s.task_for(&Digest::of(b"unregistered"), "me", 0, now)
            .is_none()
    );
    assert!(!s.report_pieces("me", &Digest::of(b"unregistered"), &[0]));
}

#[test]
fn bad_piece_reports_blocklist_per_reporter_then_globally() {
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    let now = Instant::now();
    s.register(m);
    for p in ["a", "b", "c", "evil"] {
        s.announce(peer(p, "", 0, false), now);
    }
    s.report_pieces("evil", &blob, &[0, 1, 2]);
    let has_evil = |s: &mut SchedulerState, who: &str| {
        s.task_for(&blob, who, 0, now)
            .unwrap()
            .1
            .iter()
            .any(|p| p.peer.as_ref().unwrap().peer_id == "evil")
    };
    assert_eq!(s.report_bad("a", "evil", now), BlockOutcome::ForReporter);
    assert!(!has_evil(&mut s, "a"));
    assert!(
        has_evil(&mut s, "c"),
        "one report must not cut a peer out for everyone"
    );
    assert_eq!(s.report_bad("b", "evil", now), BlockOutcome::Global);
    assert!(!has_evil(&mut s, "c"));
    // Stale peers are not offered.
    assert!(!has_evil(&mut s, "c"));
    let later = now + PEER_TTL + Duration::from_secs(1);
    assert!(s.task_for(&blob, "c", 0, later).unwrap().1.is_empty());
}

#[test]
fn seed_hints_spread_unheld_pieces_across_peers() {
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    let now = Instant::now();
    s.register(m);
    let (_, _, a) = s.task_for(&blob, "a", 2, now).unwrap();
    let (_, _, b) = s.task_for(&blob, "b", 2, now).unwrap();
    assert_eq!(a, vec![0, 1]);
    assert_eq!(b, vec![2], "leased pieces are not hinted twice");
    let (_, _, none) = s.task_for(&blob, "c", 2, now).unwrap();
    assert!(none.is_empty());
    let (_, _, zero) = s.task_for(&blob, "c", 0, now + HINT_LEASE).unwrap();
    assert!(zero.is_empty(), "no hints unless asked");
    s.report_pieces("a", &blob, &[0, 1]);
    let (_, _, c) = s.task_for(&blob, "c", 2, now + HINT_LEASE).unwrap();
    assert_eq!(
        c,
        vec![2],
        "held pieces are never hinted; expired leases are"
    );
}
