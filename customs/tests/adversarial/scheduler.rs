//! A hostile peer against the scheduler (issue 10, findings 3 and 9): it
//! holds one honest peer certificate (peer-1's) and talks gRPC to the real
//! `customs scheduler` of a standalone fleet. It tries to blocklist an
//! honest peer (peer-2) with reports for transfers that never happened, to
//! report under a second identity, and to flood the audit log.

use crate::support::*;
use customs_protocol::scheduler_proto as pb;
use futures_util::StreamExt;
use pb::scheduler_client::SchedulerClient;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Reports the attacker sends in its flood.
const FLOOD: usize = 10_000;

/// A gRPC client of the scheduler at `addr` holding `name`'s certificate
/// from `pki` (whatever SANs `customs certs` gave it).
async fn client(pki: &Path, name: &str, addr: &str) -> SchedulerClient<Channel> {
    let id = customs_tls::TlsIdentity::load(&customs_tls::TlsPaths::in_dir(pki, name)).unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(id.tonic_client_for(customs_tls::Role::Scheduler))
        .unwrap()
        .connect()
        .await
        .unwrap();
    SchedulerClient::new(channel)
}

fn report(peer: &str, parent: &str, blob: &str) -> pb::ReportBadPieceRequest {
    pb::ReportBadPieceRequest {
        peer_id: peer.into(),
        parent_id: parent.into(),
        blob_digest: blob.into(),
        piece: 0,
        detail: "sha256 mismatch".into(),
    }
}

async fn parents(c: &mut SchedulerClient<Channel>, me: &str, blob: &str) -> Vec<String> {
    c.get_task(pb::GetTaskRequest {
        blob_digest: blob.into(),
        peer_id: me.into(),
        seed_hints_wanted: 0,
        omit_manifest: false,
        ..Default::default()
    })
    .await
    .map(|r| {
        r.into_inner()
            .parents
            .into_iter()
            .filter_map(|p| p.peer.map(|p| p.peer_id))
            .collect()
    })
    .unwrap_or_default()
}

async fn live_peers(gw: &mut SchedulerClient<Channel>) -> Vec<String> {
    gw.list_peers(pb::ListPeersRequest {})
        .await
        .unwrap()
        .into_inner()
        .peers
        .into_iter()
        .map(|p| p.peer_id)
        .collect()
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The first layer of the image `tag` in an OCI layout.
fn first_layer(layout: &Path, manifest_digest: &str) -> String {
    let hex = manifest_digest.trim_start_matches("sha256:");
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    m["layers"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn a_hostile_peer_cannot_blocklist_an_honest_one_or_flood_the_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let layout = dir.join("layout");
    let digest = make_image(&layout, "v1", &[600 * 1024], &[], 31);
    let blob = first_layer(&layout, &digest);
    push(&layout, "v1", registry.addr, "team/app");
    let Standalone {
        mut scheduler,
        mut scheduler_args,
        peer_addrs,
        gateway: _gateway,
        peers: _peers,
        ..
    } = Standalone::start(dir, &registry, 2, &[], &[]);
    // Run the scheduler with an audit log (the kit starts it without one).
    let audit = dir.join("scheduler-audit.jsonl");
    scheduler.terminate();
    scheduler_args.extend(strings(&["--audit-log", audit.to_str().unwrap()]));
    let sched_addr =
        scheduler_args[scheduler_args.iter().position(|a| a == "--listen").unwrap() + 1].clone();
    let mut scheduler = spawn_customs(dir, "scheduler-audited", &scheduler_args);
    wait_for_port(sched_addr.parse().unwrap(), Duration::from_secs(20));
    // Everyone re-announces (every 2 s), then peer-2 (only) pulls: it holds
    // every piece, and the scheduler never handed it to peer-1.
    std::thread::sleep(Duration::from_millis(2500));
    let (ok, err) = skopeo_pull(&format!("{}/team/app:v1", peer_addrs[1]), &dir.join("p2"));
    assert!(ok, "{err}");

    let pki = dir.join("pki");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut evil = client(&pki, "peer-1", &sched_addr).await;
        let mut gw = client(&pki, "gateway", &sched_addr).await;
        let start = Instant::now();
        while !parents(&mut gw, "gateway", &blob)
            .await
            .contains(&"peer-2".to_owned())
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the scheduler never learned peer-2's pieces"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // A refresh that says it holds the manifest gets parents only; a
        // first request gets the signed manifest.
        for omit in [false, true] {
            let r = gw
                .get_task(pb::GetTaskRequest {
                    blob_digest: blob.clone(),
                    peer_id: "gateway".into(),
                    seed_hints_wanted: 0,
                    omit_manifest: omit,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.manifest.is_none(), omit);
            assert!(!r.parents.is_empty());
        }
        let before = audit_lines(&audit).len();

        // (a) A report for a transfer the scheduler never arranged.
        let r = evil
            .report_bad_piece(report("peer-1", "peer-2", &blob))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.parent_blocklisted, "a report with no hand-out counted");

        // (b) Reports under any identity but its own are refused.
        for other in ["peer", "peer-2", "peer-3", "gateway", "scheduler"] {
            let e = evil
                .report_bad_piece(report(other, "peer-2", &blob))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "as {other}: {e}");
        }
        for bad in ["PEER-1", "peer-1.node", "peer.customs.internal"] {
            let e = evil
                .report_bad_piece(report(bad, "peer-2", &blob))
                .await
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "as {bad:?}: {e}");
        }
        let e = evil
            .announce_peer(pb::AnnouncePeerRequest {
                peer: Some(pb::PeerInfo {
                    peer_id: "peer".into(),
                    upload_addr: "127.0.0.1:1".into(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

        // (c) A flood of reports.
        let answers: Vec<bool> = futures_util::stream::iter(0..FLOOD)
            .map(|_| {
                let mut c = evil.clone();
                let req = report("peer-1", "peer-2", &blob);
                async move {
                    c.report_bad_piece(req)
                        .await
                        .unwrap()
                        .into_inner()
                        .parent_blocklisted
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert!(answers.iter().all(|b| !b));
        let after = audit_lines(&audit).len();
        assert!(
            after <= before + 2,
            "{FLOOD} reports grew the audit log by {} lines",
            after - before
        );
        // peer-2 is still everyone's parent, peer-1's included.
        assert!(live_peers(&mut gw).await.contains(&"peer-2".to_owned()));
        assert!(
            parents(&mut evil, "peer-1", &blob)
                .await
                .contains(&"peer-2".to_owned())
        );
        // Now peer-2 was handed to peer-1: its report counts, for peer-1
        // only; one reporter never blocklists a peer for everyone.
        let r = evil
            .report_bad_piece(report("peer-1", "peer-2", &blob))
            .await
            .unwrap()
            .into_inner();
        assert!(r.parent_blocklisted);
        assert!(
            !parents(&mut evil, "peer-1", &blob)
                .await
                .contains(&"peer-2".to_owned())
        );
        assert!(live_peers(&mut gw).await.contains(&"peer-2".to_owned()));
        assert!(
            parents(&mut gw, "gateway", &blob)
                .await
                .contains(&"peer-2".to_owned())
        );
    });

    // The reports are not lost: the scheduler writes their counts as one
    // aggregate event (here at shutdown).
    scheduler.terminate();
    let lines = audit_lines(&audit);
    assert!(lines.len() <= 4, "{lines:#?}");
    // One aggregate event per minute: normally just the one at shutdown.
    let agg: Vec<_> = lines.iter().filter(|l| l["kind"] == "bad_piece").collect();
    assert!(!agg.is_empty() && agg.len() <= 2, "{lines:#?}");
    let sum = |f: &dyn Fn(&serde_json::Value) -> Option<u64>| -> u64 {
        agg.iter().filter_map(|a| f(a)).sum()
    };
    let counted = sum(&|a| {
        a["counted"]
            .as_array()?
            .iter()
            .filter(|c| c["parent"] == "peer-2")
            .map(|c| c["reports"].as_u64())
            .sum()
    });
    let ignored = sum(&|a| {
        a["ignored"]
            .as_array()?
            .iter()
            .filter(|c| c["reporter"] == "peer-1")
            .map(|c| c["not_handed_out"].as_u64())
            .sum()
    });
    assert_eq!(counted, 1, "{lines:#?}");
    assert_eq!(ignored, FLOOD as u64 + 1, "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l["kind"] == "peer_blocklisted"),
        "{lines:#?}"
    );
}
