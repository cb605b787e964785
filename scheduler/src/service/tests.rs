use super::*;
use customs_protocol::piece_manifest::{AdmissionRef, GatewayKey, PieceManifest};

/// A certificate with exactly these DNS SANs (the checks only read SANs;
/// the CA chain is rustls' job before a request gets here).
fn cert(sans: &[&str]) -> CertificateDer<'static> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params =
        rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .unwrap();
    params.self_signed(&key).unwrap().der().clone()
}

fn id(s: &str) -> PeerId {
    PeerId::parse(s).unwrap()
}

/// A peer certificate for `name` with the identity in both spellings
/// (`<name>.customs.internal` and `<name>.node.customs.internal`), so the
/// checks hold before and after the identity SAN moved under `node.`.
fn peer_cert(name: &str) -> CertificateDer<'static> {
    cert(&[
        Role::Peer.san(),
        &format!("{name}.customs.internal"),
        &format!("{name}.node.customs.internal"),
    ])
}

#[test]
fn a_peer_speaks_only_for_the_id_its_certificate_names() {
    let p1 = peer_cert("peer-1");
    assert!(may_speak_for(&p1, &id("peer-1")));
    for other in ["peer-2", "peer", "scheduler", "gateway", "peer-10"] {
        assert!(!may_speak_for(&p1, &id(other)), "peer-1 posing as {other}");
    }
}

#[test]
fn a_role_san_never_stands_in_for_an_identity() {
    // Only the role SAN: `peer` would match it as `<id>.customs.internal`.
    let role_only = cert(&[Role::Peer.san()]);
    for name in ["peer", "scheduler", "gateway"] {
        assert!(!may_speak_for(&role_only, &id(name)), "{name}");
    }
    // A certificate issued for the node literally called `peer` may.
    let named_peer = cert(&[Role::Peer.san(), "peer.node.customs.internal"]);
    assert!(may_speak_for(&named_peer, &id("peer")));
}

#[test]
fn the_seed_id_needs_the_gateway_role() {
    let gw = cert(&[
        Role::Gateway.san(),
        "gateway.customs.internal",
        "gateway.node.customs.internal",
    ]);
    assert!(may_speak_for(&gw, &id(SEED_PEER_ID)));
    assert!(
        !may_speak_for(&gw, &id("peer-1")),
        "a gateway is not a node"
    );
    // A peer certificate issued for a node named `gateway` is not the seed.
    let fake = peer_cert("gateway");
    assert!(!may_speak_for(&fake, &id(SEED_PEER_ID)));
}

#[test]
fn an_identity_without_the_peer_role_is_refused() {
    let no_role = cert(&["peer-1.customs.internal", "peer-1.node.customs.internal"]);
    assert!(!may_speak_for(&no_role, &id("peer-1")));
    let scheduler = cert(&[
        Role::Scheduler.san(),
        "peer-1.customs.internal",
        "peer-1.node.customs.internal",
    ]);
    assert!(!may_speak_for(&scheduler, &id("peer-1")));
}

#[tokio::test]
async fn requests_without_a_certificate_or_with_a_bad_id_are_refused() {
    let svc = service(None, Duration::from_secs(60));
    let req = |peer_id: &str| {
        Request::new(pb::ReportBadPieceRequest {
            peer_id: peer_id.into(),
            parent_id: "peer-2".into(),
            blob_digest: Digest::of(b"x").to_string(),
            piece: 0,
            detail: String::new(),
        })
    };
    let e = svc.report_bad_piece(req("peer-1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    for bad in ["", "Peer-1", "peer-1.node", &"p".repeat(64)] {
        let e = svc.report_bad_piece(req(bad)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad:?}");
    }
}

fn service(audit: Option<AuditLog>, interval: Duration) -> SchedulerService {
    let key = GatewayKey::generate().unwrap();
    let keys = TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()]).unwrap();
    let svc = SchedulerService::new(keys.clone(), audit, interval);
    let blob = Digest::of(b"blob");
    let len = customs_protocol::piece_manifest::MIN_PIECE_LEN;
    let signed = key
        .sign(PieceManifest {
            blob: blob.clone(),
            size: len,
            piece_length: len,
            pieces: vec![Digest::of(b"0")],
            admission: AdmissionRef {
                image: "r/x".into(),
                manifest_digest: Digest::of(b"m"),
                policy_revision: "r".into(),
            },
            key_id: String::new(),
        })
        .unwrap();
    let now = Instant::now();
    let mut s = svc.state();
    s.register(customs_protocol::piece_manifest::Statement::Final(
        keys.verify(&signed, &blob).unwrap(),
    ));
    for p in ["a", "b", "evil"] {
        let info = pb::PeerInfo {
            peer_id: p.into(),
            upload_addr: "127.0.0.1:1".into(),
            ..Default::default()
        };
        s.announce(&id(p), info, now).unwrap();
    }
    s.report_pieces(&id("evil"), &blob, &[0], None).unwrap();
    drop(s);
    svc
}

fn audit_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn a_report_flood_becomes_one_aggregate_event_and_a_global_blocklisting_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler.jsonl");
    let svc = Arc::new(service(
        Some(AuditLog::open(&path).unwrap()),
        Duration::from_millis(100),
    ));
    let blob = Digest::of(b"blob");
    let (evil, a, b) = (id("evil"), id("a"), id("b"));
    // 10,000 reports that were never handed out, 10,000 that were.
    for _ in 0..10_000 {
        assert!(!svc.bad_piece(&a, &evil, &blob, 0, "x").await.unwrap());
    }
    svc.state().task_for(&blob, &a, 0, Instant::now()).unwrap();
    for _ in 0..10_000 {
        assert!(svc.bad_piece(&a, &evil, &blob, 0, "x").await.unwrap());
    }
    assert!(audit_lines(&path).is_empty(), "no write per report");
    // A second genuine reporter: the global blocklisting is written at once.
    svc.state().task_for(&blob, &b, 0, Instant::now()).unwrap();
    let detail = "d".repeat(10_000);
    assert!(svc.bad_piece(&b, &evil, &blob, 0, &detail).await.unwrap());
    let lines = audit_lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["kind"], "peer_blocklisted");
    assert_eq!(lines[0]["parent"], "evil");
    assert_eq!(lines[0]["detail"].as_str().unwrap().len(), MAX_DETAIL_CHARS);
    // One aggregate per interval, then one more at shutdown if needed.
    let stop = CancellationToken::new();
    let agg = tokio::spawn(svc.clone().aggregate_loop(stop.clone()));
    tokio::time::sleep(Duration::from_millis(350)).await;
    stop.cancel();
    agg.await.unwrap();
    let lines = audit_lines(&path);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let agg = &lines[1];
    assert_eq!(agg["kind"], "bad_piece");
    assert_eq!(agg["counted"][0]["parent"], "evil");
    assert_eq!(agg["counted"][0]["reports"], 10_001);
    assert_eq!(agg["ignored"][0]["reporter"], "a");
    assert_eq!(agg["ignored"][0]["not_handed_out"], 10_000);
}

#[tokio::test]
async fn the_aggregate_loop_writes_the_last_counts_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scheduler.jsonl");
    let svc = Arc::new(service(
        Some(AuditLog::open(&path).unwrap()),
        BAD_PIECE_AGGREGATE_INTERVAL,
    ));
    let stop = CancellationToken::new();
    let agg = tokio::spawn(svc.clone().aggregate_loop(stop.clone()));
    svc.bad_piece(&id("a"), &id("evil"), &Digest::of(b"blob"), 0, "")
        .await
        .unwrap();
    stop.cancel();
    agg.await.unwrap();
    let lines = audit_lines(&path);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["kind"], "bad_piece");
    assert_eq!(lines[0]["interval_secs"], 60);
}
