use super::ledger::{Inserted, Ledger};
use super::*;
use customs_protocol::piece_manifest::{
    AdmissionRef, GatewayKey, PieceManifest, TrustedGatewayKeys,
};

const SECOND: Duration = Duration::from_secs(1);

fn task_of(content: &[u8]) -> (Statement, Digest) {
    let key = GatewayKey::generate().unwrap();
    let blob = Digest::of(content);
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
    (
        Statement::Final(trusted.verify(&signed, &blob).unwrap()),
        blob,
    )
}

fn task() -> (Statement, Digest) {
    task_of(b"blob")
}

fn id(s: &str) -> PeerId {
    PeerId::parse(s).unwrap()
}

fn peer(name: &str, zone: &str, load: u32, seed: bool) -> PeerInfo {
    PeerInfo {
        peer_id: name.into(),
        upload_addr: format!("127.0.0.1:{}", 1000 + name.len()),
        upload_capacity: 100,
        active_uploads: load,
        zone: zone.into(),
        rack: String::new(),
        seed,
    }
}

fn announce(s: &mut SchedulerState, name: &str, now: Instant) {
    s.announce(&id(name), peer(name, "", 0, name == "gw"), now)
        .unwrap();
}

/// Ids of the parents `who` is offered for `blob` (recording the hand-out).
fn offered(s: &mut SchedulerState, blob: &Digest, who: &str, now: Instant) -> Vec<String> {
    s.task_for(blob, &id(who), 0, now)
        .unwrap()
        .1
        .iter()
        .map(|p| p.peer.as_ref().unwrap().peer_id.clone())
        .collect()
}

/// A task with peers `names` announced, "evil" holding every piece.
fn swarm(names: &[&str], now: Instant) -> (SchedulerState, Digest) {
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    s.register(m);
    for p in names.iter().chain(&["evil"]) {
        announce(&mut s, p, now);
    }
    s.report_pieces(&id("evil"), &blob, &[0, 1, 2], None)
        .unwrap();
    (s, blob)
}

fn bad(s: &mut SchedulerState, reporter: &str, blob: &Digest, now: Instant) -> ReportOutcome {
    s.report_bad(&id(reporter), &id("evil"), blob, 0, now)
}

#[test]
fn parents_by_locality_with_seed_last() {
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    let now = Instant::now();
    s.register(m);
    s.announce(&id("me"), peer("me", "z1", 0, false), now)
        .unwrap();
    s.announce(&id("far"), peer("far", "z2", 0, false), now)
        .unwrap();
    s.announce(&id("near-busy"), peer("near-busy", "z1", 50, false), now)
        .unwrap();
    s.announce(&id("near-idle"), peer("near-idle", "z1", 1, false), now)
        .unwrap();
    s.announce(&id("gw"), peer("gw", "", 0, true), now).unwrap();
    for p in ["far", "near-busy", "near-idle"] {
        s.report_pieces(&id(p), &blob, &[0, 99], None).unwrap();
    }
    let (_, parents, _) = s.task_for(&blob, &id("me"), 0, now).unwrap();
    let ids: Vec<_> = parents
        .iter()
        .map(|p| p.peer.as_ref().unwrap().peer_id.as_str())
        .collect();
    // Nearest first, in random order within a locality (announced load is
    // stale: ranking by it herds every peer onto the same parents).
    let mut near = ids[..2].to_vec();
    near.sort_unstable();
    assert_eq!(near, ["near-busy", "near-idle"]);
    assert_eq!(ids[2..], ["far", "gw"]);
    assert_eq!(parents[0].pieces, vec![1]); // piece 99 is out of range: ignored
    assert!(
        s.task_for(&Digest::of(b"unregistered"), &id("me"), 0, now)
            .is_none()
    );
    assert_eq!(
        s.report_pieces(&id("me"), &Digest::of(b"unregistered"), &[0], None),
        Err(PiecesError::UnknownTask(Digest::of(b"unregistered")))
    );
}

#[test]
fn a_report_counts_only_for_a_parent_handed_to_that_reporter_for_that_blob() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "b"], now);
    let (other_task, other_blob) = task_of(b"other");
    s.register(other_task);
    s.report_pieces(&id("evil"), &other_blob, &[0], None)
        .unwrap();
    // Never handed out: ignored, and evil is still offered to a.
    assert_eq!(
        bad(&mut s, "a", &blob, now),
        ReportOutcome::Ignored(IgnoredReport::NotHandedOut)
    );
    // Handed to b, not to a: a's report still does not count.
    assert!(offered(&mut s, &blob, "b", now).contains(&"evil".to_owned()));
    assert_eq!(
        bad(&mut s, "a", &blob, now),
        ReportOutcome::Ignored(IgnoredReport::NotHandedOut)
    );
    // Handed to a for another blob: does not count for this one.
    assert!(offered(&mut s, &other_blob, "a", now).contains(&"evil".to_owned()));
    assert_eq!(
        bad(&mut s, "a", &blob, now),
        ReportOutcome::Ignored(IgnoredReport::NotHandedOut)
    );
    assert!(offered(&mut s, &blob, "a", now).contains(&"evil".to_owned()));
    // Now the hand-out matches: blocklisted for a only.
    assert_eq!(
        bad(&mut s, "a", &blob, now),
        ReportOutcome::ForReporter { new: true }
    );
    assert_eq!(
        bad(&mut s, "a", &blob, now),
        ReportOutcome::ForReporter { new: false }
    );
    assert!(!offered(&mut s, &blob, "a", now).contains(&"evil".to_owned()));
    assert!(offered(&mut s, &blob, "b", now).contains(&"evil".to_owned()));
}

#[test]
fn a_hand_out_stops_being_reportable_after_its_lifetime() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a"], now);
    offered(&mut s, &blob, "a", now);
    let late = now + HANDOUT_TTL;
    announce(&mut s, "evil", late);
    assert_eq!(
        bad(&mut s, "a", &blob, late),
        ReportOutcome::Ignored(IgnoredReport::NotHandedOut)
    );
    // A fresh hand-out is reportable again.
    offered(&mut s, &blob, "a", late);
    assert_eq!(
        bad(&mut s, "a", &blob, late),
        ReportOutcome::ForReporter { new: true }
    );
}

#[test]
fn reports_for_unknown_tasks_or_missing_pieces_are_ignored() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a"], now);
    offered(&mut s, &blob, "a", now);
    assert_eq!(
        s.report_bad(&id("a"), &id("evil"), &blob, 3, now),
        ReportOutcome::Ignored(IgnoredReport::PieceOutOfRange)
    );
    assert_eq!(
        s.report_bad(&id("a"), &id("evil"), &blob, u32::MAX, now),
        ReportOutcome::Ignored(IgnoredReport::PieceOutOfRange)
    );
    assert_eq!(
        s.report_bad(&id("a"), &id("evil"), &Digest::of(b"nope"), 0, now),
        ReportOutcome::Ignored(IgnoredReport::UnknownTask)
    );
    assert!(offered(&mut s, &blob, "a", now).contains(&"evil".to_owned()));
}

#[test]
fn a_global_blocklisting_needs_two_distinct_genuinely_served_reporters() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "b", "c", "liar"], now);
    offered(&mut s, &blob, "a", now);
    assert_eq!(
        bad(&mut s, "a", &blob, now),
        ReportOutcome::ForReporter { new: true }
    );
    // One reporter, however often, is one reporter.
    for _ in 0..100 {
        assert_ne!(bad(&mut s, "a", &blob, now), ReportOutcome::Global);
    }
    // A second reporter the parent never served does not count.
    assert_eq!(
        bad(&mut s, "liar", &blob, now),
        ReportOutcome::Ignored(IgnoredReport::NotHandedOut)
    );
    assert!(offered(&mut s, &blob, "c", now).contains(&"evil".to_owned()));
    assert_eq!(s.live_peers(now).len(), 5);
    // A second genuine one does.
    offered(&mut s, &blob, "b", now);
    assert_eq!(bad(&mut s, "b", &blob, now), ReportOutcome::Global);
    assert!(!offered(&mut s, &blob, "c", now).contains(&"evil".to_owned()));
    assert!(!s.live_peers(now).iter().any(|p| p.peer_id == "evil"));
    // Stale peers are not offered.
    let later = now + PEER_TTL + SECOND;
    assert!(offered(&mut s, &blob, "c", later).is_empty());
}

#[test]
fn a_seed_is_never_blocklisted_for_everyone() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "b", "gw"], now);
    for r in ["a", "b"] {
        assert!(offered(&mut s, &blob, r, now).contains(&"gw".to_owned()));
        assert_eq!(
            s.report_bad(&id(r), &id("gw"), &blob, 0, now),
            ReportOutcome::ForReporter { new: true }
        );
    }
    assert!(offered(&mut s, &blob, "evil", now).contains(&"gw".to_owned()));
}

#[test]
fn reports_count_for_a_limited_time() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "b"], now);
    offered(&mut s, &blob, "a", now);
    assert_eq!(
        bad(&mut s, "a", &blob, now),
        ReportOutcome::ForReporter { new: true }
    );
    // a's report has stopped counting by the time b reports.
    let later = now + BLOCKLIST_FOR;
    for p in ["a", "b", "evil"] {
        announce(&mut s, p, later);
    }
    offered(&mut s, &blob, "b", later);
    assert_eq!(
        bad(&mut s, "b", &blob, later),
        ReportOutcome::ForReporter { new: true }
    );
    assert!(s.live_peers(later).iter().any(|p| p.peer_id == "evil"));
}

#[test]
fn a_global_blocklisting_lapses_and_its_reports_are_spent() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "b", "c", "d"], now);
    for r in ["a", "b", "c"] {
        offered(&mut s, &blob, r, now);
    }
    bad(&mut s, "a", &blob, now);
    assert_eq!(bad(&mut s, "b", &blob, now), ReportOutcome::Global);
    // c reports during the blocklisting (from an earlier hand-out): its
    // report would still count after the lapse, but the lapse spends it.
    let mid = now + BLOCKLIST_FOR / 2;
    assert_eq!(
        bad(&mut s, "c", &blob, mid),
        ReportOutcome::ForReporter { new: true }
    );
    let lapsed = now + BLOCKLIST_FOR;
    for p in ["a", "b", "c", "d", "evil"] {
        announce(&mut s, p, lapsed);
    }
    assert!(offered(&mut s, &blob, "d", lapsed).contains(&"evil".to_owned()));
    assert!(s.live_peers(lapsed).iter().any(|p| p.peer_id == "evil"));
    assert_eq!(
        bad(&mut s, "d", &blob, lapsed),
        ReportOutcome::ForReporter { new: true },
        "one fresh report after a lapse is one reporter, not two"
    );
    assert!(s.live_peers(lapsed).iter().any(|p| p.peer_id == "evil"));
}

#[test]
fn a_blocklisting_for_one_reporter_expires() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a"], now);
    offered(&mut s, &blob, "a", now);
    bad(&mut s, "a", &blob, now);
    assert!(!offered(&mut s, &blob, "a", now).contains(&"evil".to_owned()));
    let later = now + BLOCKLIST_FOR;
    for p in ["a", "evil"] {
        announce(&mut s, p, later);
    }
    assert!(offered(&mut s, &blob, "a", later).contains(&"evil".to_owned()));
    s.sweep(later);
    assert_eq!(s.sizes().2, 0, "expired blocklistings are swept");
}

#[test]
fn one_reporter_keeps_a_bounded_private_blocklist() {
    let now = Instant::now();
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    s.register(m);
    announce(&mut s, "a", now);
    let n = MAX_PRIVATE_BLOCKS_PER_REPORTER + 8;
    for i in 0..n {
        let p = format!("p{i}");
        announce(&mut s, &p, now);
        s.report_pieces(&id(&p), &blob, &[0], None).unwrap();
    }
    let mut reported = 0;
    let mut t = now;
    while reported < n {
        let parents = offered(&mut s, &blob, "a", t);
        assert!(!parents.is_empty());
        for p in parents {
            assert_eq!(
                s.report_bad(&id("a"), &id(&p), &blob, 0, t),
                ReportOutcome::ForReporter { new: true }
            );
            reported += 1;
            t += Duration::from_millis(1);
        }
    }
    assert_eq!(s.sizes().2, MAX_PRIVATE_BLOCKS_PER_REPORTER);
    // The oldest gave way: those parents are offered to a again (each
    // window draws a sample of the holders, so over a few windows).
    let mut again = std::collections::BTreeSet::new();
    for _ in 0..5 {
        for i in 0..n {
            announce(&mut s, &format!("p{i}"), t);
        }
        announce(&mut s, "a", t);
        again.extend(offered(&mut s, &blob, "a", t));
        t += STICKY_WINDOW;
    }
    assert_eq!(again.len(), n - MAX_PRIVATE_BLOCKS_PER_REPORTER);
}

#[test]
fn ledger_caps_per_owner_and_in_total_and_ages_out() {
    let now = Instant::now();
    let until = now + Duration::from_secs(10);
    let mut l: Ledger<u32> = Ledger::new(3, 5);
    for k in 0..5 {
        let expires = until + Duration::from_millis(u64::from(k));
        assert_eq!(
            l.insert(&id("a"), k, expires, now),
            Inserted::Kept { new: true }
        );
    }
    // Per owner: a's oldest entries give way to its newest.
    assert_eq!(l.len_of(&id("a")), 3);
    assert!(!l.contains(&id("a"), &0, now) && !l.contains(&id("a"), &1, now));
    assert!(l.contains(&id("a"), &4, now));
    assert_eq!(
        l.insert(&id("a"), 4, until, now),
        Inserted::Kept { new: false }
    );
    // In total: b takes the last two slots, then c finds the ledger full
    // and cannot push out anyone else's entries.
    for k in 0..2 {
        l.insert(&id("b"), k, until, now);
    }
    assert_eq!(l.len(), 5);
    assert_eq!(l.insert(&id("c"), 0, until, now), Inserted::Full);
    // b at the total cap gives up its own oldest instead.
    assert_eq!(
        l.insert(&id("b"), 9, until + SECOND, now),
        Inserted::Kept { new: true }
    );
    assert_eq!(l.len(), 5);
    assert_eq!(l.len_of(&id("b")), 2);
    // Entries expire and are swept; a full ledger sweeps before refusing.
    assert!(!l.contains(&id("a"), &4, until + SECOND));
    let later = until + Duration::from_secs(5);
    assert_eq!(
        l.insert(&id("c"), 0, later + SECOND, later),
        Inserted::Kept { new: true }
    );
    assert_eq!(l.len(), 1);
    l.sweep(later + SECOND);
    assert_eq!(l.len(), 0);
}

#[test]
fn hand_outs_are_bounded_per_requester() {
    let now = Instant::now();
    let mut s = SchedulerState::default();
    announce(&mut s, "a", now);
    announce(&mut s, "gw", now);
    let blobs = MAX_HANDOUTS_PER_PEER + 10;
    let mut all = Vec::new();
    let mut t = now;
    for i in 0..blobs {
        let (m, blob) = task_of(format!("blob-{i}").as_bytes());
        s.register(m);
        assert_eq!(offered(&mut s, &blob, "a", t), ["gw"]);
        all.push(blob);
        t += Duration::from_millis(1);
    }
    // At its cap a peer gives up a quarter of its hand-outs at once.
    let kept = s.sizes().1;
    assert!(
        (MAX_HANDOUTS_PER_PEER * 3 / 4..=MAX_HANDOUTS_PER_PEER).contains(&kept),
        "{kept} hand-outs kept"
    );
    // Exactly the forgotten hand-outs no longer count.
    let ignored = all
        .iter()
        .filter(|blob| {
            s.report_bad(&id("a"), &id("gw"), blob, 0, t)
                == ReportOutcome::Ignored(IgnoredReport::NotHandedOut)
        })
        .count();
    assert_eq!(ignored, blobs - kept);
    s.sweep(t + HANDOUT_TTL);
    assert_eq!(s.sizes().1, 0, "expired hand-outs are swept");
}

#[test]
fn peers_not_heard_from_are_forgotten_with_their_pieces() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "quiet"], now);
    s.report_pieces(&id("quiet"), &blob, &[1], None).unwrap();
    let later = now + PEER_FORGET_AFTER;
    for p in ["a", "evil"] {
        announce(&mut s, p, later);
    }
    s.sweep(later);
    assert_eq!(s.sizes().0, 2);
    assert_eq!(offered(&mut s, &blob, "a", later), ["evil"]);
    assert_eq!(
        s.report_pieces(&id("quiet"), &blob, &[1], None),
        Err(PiecesError::UnknownPeer(id("quiet"))),
        "a forgotten peer announces again before it reports"
    );
}

#[test]
fn a_blocklisted_peer_cannot_shed_its_blocklisting_by_going_quiet() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "b"], now);
    // Handed out while evil was live, reported late in the hand-outs' life.
    let handed = now + PEER_TTL / 2;
    for p in ["a", "b", "evil"] {
        announce(&mut s, p, handed);
    }
    for r in ["a", "b"] {
        offered(&mut s, &blob, r, handed);
    }
    let reported = handed + HANDOUT_TTL / 2 - SECOND;
    bad(&mut s, "a", &blob, reported);
    assert_eq!(bad(&mut s, "b", &blob, reported), ReportOutcome::Global);
    // Silent past the forget time but still blocklisted: kept, so a fresh
    // announcement does not make it a new, clean peer.
    let quiet = now + PEER_FORGET_AFTER + SECOND;
    assert!(quiet < reported + BLOCKLIST_FOR);
    s.sweep(quiet);
    announce(&mut s, "evil", quiet);
    assert!(!s.live_peers(quiet).iter().any(|p| p.peer_id == "evil"));
    // Forgotten once the blocklisting is over.
    let over = reported + BLOCKLIST_FOR + PEER_FORGET_AFTER;
    announce(&mut s, "a", over);
    s.sweep(over);
    assert_eq!(s.sizes().0, 1);
}

#[test]
fn the_peer_table_is_bounded() {
    let now = Instant::now();
    let mut s = SchedulerState::default();
    for i in 0..MAX_PEERS {
        announce(&mut s, &format!("p{i}"), now);
    }
    assert_eq!(
        s.announce(&id("one-more"), peer("one-more", "", 0, false), now),
        Err(AnnounceError::TableFull)
    );
    // Known peers keep refreshing.
    announce(&mut s, "p0", now + SECOND);
    // Once the others are gone, a newcomer fits.
    let later = now + PEER_FORGET_AFTER;
    announce(&mut s, "one-more", later);
    assert_eq!(s.sizes().0, 2, "p0 and the newcomer");
}

#[test]
fn announcements_are_checked_and_bounded() {
    let now = Instant::now();
    let mut s = SchedulerState::default();
    let long = "z".repeat(MAX_LABEL_LEN + 1);
    let mut p = peer("a", &long, 0, false);
    assert_eq!(
        s.announce(&id("a"), p.clone(), now),
        Err(AnnounceError::TooLong {
            field: "zone",
            max: MAX_LABEL_LEN
        })
    );
    p.zone = String::new();
    p.rack = long;
    assert!(matches!(
        s.announce(&id("a"), p.clone(), now),
        Err(AnnounceError::TooLong { field: "rack", .. })
    ));
    p.rack = String::new();
    p.upload_addr = "localhost:99".into();
    assert_eq!(
        s.announce(&id("a"), p.clone(), now),
        Err(AnnounceError::UploadAddr)
    );
    p.upload_addr = format!("127.0.0.1:1{}", "0".repeat(MAX_UPLOAD_ADDR_LEN));
    assert!(matches!(
        s.announce(&id("a"), p.clone(), now),
        Err(AnnounceError::TooLong {
            field: "upload_addr",
            ..
        })
    ));
    p.upload_addr = "127.0.0.1:1".into();
    assert_eq!(
        s.announce(&id("b"), p.clone(), now),
        Err(AnnounceError::PeerId),
        "an announcement speaks for the caller's id only"
    );
    assert_eq!(s.announce(&id("a"), p, now), Ok(()));
}

#[test]
fn piece_reports_are_bounded_by_the_task() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "b"], now);
    assert_eq!(
        s.report_pieces(&id("a"), &blob, &[0, 1, 2, 0], None),
        Err(PiecesError::TooMany { sent: 4, pieces: 3 })
    );
    s.report_pieces(&id("a"), &blob, &[2, 2, u32::MAX], None)
        .unwrap();
    let (_, parents, _) = s.task_for(&blob, &id("b"), 0, now).unwrap();
    let a = parents
        .iter()
        .find(|p| p.peer.as_ref().unwrap().peer_id == "a")
        .unwrap();
    assert_eq!(a.pieces, vec![0b100], "bitmap sized by the task");
    assert_eq!(
        s.report_pieces(&id("stranger"), &blob, &[0], None),
        Err(PiecesError::UnknownPeer(id("stranger")))
    );
}

#[test]
fn reports_are_tallied_not_written_one_by_one() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&["a", "b"], now);
    assert!(s.take_bad_piece_summary().is_none(), "nothing to write");
    offered(&mut s, &blob, "a", now);
    for _ in 0..10_000 {
        bad(&mut s, "a", &blob, now);
        bad(&mut s, "b", &blob, now);
    }
    s.report_bad(&id("b"), &id("evil"), &blob, 7, now);
    let sum = s.take_bad_piece_summary().unwrap();
    assert_eq!(
        sum.counted,
        vec![CountedReports {
            parent: id("evil"),
            blob: blob.clone(),
            reports: 10_000
        }]
    );
    assert_eq!(sum.ignored.len(), 1);
    assert_eq!(sum.ignored[0].reporter, id("b"));
    assert_eq!(
        sum.ignored[0].counts,
        IgnoredCounts {
            unknown_task: 0,
            piece_out_of_range: 1,
            not_handed_out: 10_000
        }
    );
    assert!(
        s.take_bad_piece_summary().is_none(),
        "the tally starts afresh"
    );
}

#[test]
fn the_tally_is_bounded() {
    let now = Instant::now();
    let (mut s, blob) = swarm(&[], now);
    for i in 0..MAX_TALLY_ENTRIES + 5 {
        s.report_bad(&id(&format!("r{i}")), &id("evil"), &blob, 0, now);
        s.report_bad(&id("x"), &id(&format!("p{i}")), &Digest::of(b"?"), 0, now);
    }
    let sum = s.take_bad_piece_summary().unwrap();
    assert_eq!(sum.ignored.len(), MAX_TALLY_ENTRIES);
    assert_eq!(sum.ignored[0].reporter, id("x"), "most first");
    assert_eq!(sum.other_ignored.not_handed_out, 6);
}

#[test]
fn seed_hints_spread_unheld_pieces_across_peers() {
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    let now = Instant::now();
    s.register(m);
    announce(&mut s, "a", now);
    // One hint per request, so first copies land on as many peers as can be.
    let (_, _, a) = s.task_for(&blob, &id("a"), 2, now).unwrap();
    let (_, _, b) = s.task_for(&blob, &id("b"), 2, now).unwrap();
    let (_, _, b2) = s.task_for(&blob, &id("b"), 2, now).unwrap();
    assert_eq!(a, vec![0]);
    assert_eq!(b, vec![1], "leased pieces are not hinted twice");
    assert_eq!(b2, vec![2]);
    let (_, _, none) = s.task_for(&blob, &id("c"), 2, now).unwrap();
    assert!(none.is_empty());
    let (_, _, zero) = s.task_for(&blob, &id("c"), 0, now + HINT_LEASE).unwrap();
    assert!(zero.is_empty(), "no hints unless asked");
    s.report_pieces(&id("a"), &blob, &[0, 1], None).unwrap();
    announce(&mut s, "a", now + HINT_LEASE);
    let (_, _, c) = s.task_for(&blob, &id("c"), 2, now + HINT_LEASE).unwrap();
    assert_eq!(
        c,
        vec![2],
        "held pieces are never hinted; expired leases are"
    );
}

/// A provisional statement for `blob` (3 pieces) signing its first
/// `signed` pieces, from fetch `fetch`, and the final manifest.
fn provisional(
    key: &GatewayKey,
    blob: &Digest,
    fetch: &customs_protocol::piece_manifest::FetchId,
    signed: usize,
    at: u64,
) -> Statement {
    use customs_protocol::piece_manifest::{PROVISIONAL_TTL_SECS, ProvisionalPieces};
    let len = customs_protocol::piece_manifest::MIN_PIECE_LEN;
    let s = key
        .sign_provisional(ProvisionalPieces {
            blob: blob.clone(),
            size: 3 * len,
            piece_length: len,
            pieces: (0..signed)
                .map(|i| Digest::of(format!("{i}").as_bytes()))
                .collect(),
            fetch: fetch.clone(),
            signed_at: at,
            expires_at: at + PROVISIONAL_TTL_SECS,
            admission: AdmissionRef {
                image: "r/x".into(),
                manifest_digest: Digest::of(b"m"),
                policy_revision: "r".into(),
            },
            key_id: String::new(),
        })
        .unwrap();
    TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()])
        .unwrap()
        .verify_statement(&s, blob, at)
        .unwrap()
}

#[test]
fn a_provisional_task_hints_only_signed_pieces_and_yields_to_its_final_manifest() {
    use customs_protocol::piece_manifest::{FetchId, unix_now};
    let key = GatewayKey::generate().unwrap();
    let blob = Digest::of(b"blob");
    let now = Instant::now();
    let t = unix_now();
    let fetch = FetchId::random().unwrap();
    let mut s = SchedulerState::default();
    assert!(s.register(provisional(&key, &blob, &fetch, 1, t)));
    announce(&mut s, "a", now);
    announce(&mut s, "gw", now);
    // Only piece 0 is signed: the seed is hinted for it and nothing else.
    let (_, _, hints) = s.task_for(&blob, &id("a"), 3, now).unwrap();
    assert_eq!(hints, vec![0]);
    s.report_pieces(&id("a"), &blob, &[0], None).unwrap();
    // An older statement of the same fetch does not replace a newer one.
    assert!(s.register(provisional(&key, &blob, &fetch, 2, t)));
    assert!(!s.register(provisional(&key, &blob, &fetch, 1, t)));
    let (st, _, hints) = s.task_for(&blob, &id("b"), 3, now + HINT_LEASE).unwrap();
    assert_eq!(st.pieces().len(), 2);
    assert_eq!(hints, vec![1]);
    // Another fetch's statement signed in the same second does not replace
    // it; a later one does, and drops the holders of the first one's pieces.
    let other = FetchId::random().unwrap();
    assert!(!s.register(provisional(&key, &blob, &other, 1, t)));
    assert!(s.register(provisional(&key, &blob, &other, 1, t + 1)));
    let (_, parents, _) = s.task_for(&blob, &id("b"), 0, now).unwrap();
    assert!(
        parents
            .iter()
            .all(|p| p.peer.as_ref().unwrap().peer_id != "a")
    );
    // A report of the old fetch's pieces makes nobody a holder.
    s.report_pieces(&id("a"), &blob, &[0], Some(&fetch))
        .unwrap();
    let offers_a = |s: &mut SchedulerState| {
        let (_, parents, _) = s.task_for(&blob, &id("b"), 0, now).unwrap();
        parents
            .iter()
            .any(|p| p.peer.as_ref().unwrap().peer_id == "a")
    };
    assert!(!offers_a(&mut s));
    s.report_pieces(&id("a"), &blob, &[0], Some(&other))
        .unwrap();
    assert!(offers_a(&mut s));
    // Withdrawing needs the fetch's id; then the task is gone, and a
    // statement of the withdrawn fetch arriving late does not bring it back.
    assert!(!s.withdraw(&blob, &fetch));
    assert!(s.withdraw(&blob, &other));
    assert!(s.task_for(&blob, &id("b"), 0, now).is_none());
    assert!(!s.register(provisional(&key, &blob, &other, 2, t + 2)));
    assert!(s.task_for(&blob, &id("b"), 0, now).is_none());
    // The final manifest replaces a provisional one and is never replaced
    // or withdrawn by one.
    let (fin, fblob) = task();
    let third = FetchId::random().unwrap();
    assert!(s.register(provisional(&key, &fblob, &third, 1, t)));
    assert!(s.register(fin));
    assert!(!s.register(provisional(&key, &fblob, &third, 2, t + 1)));
    assert!(!s.withdraw(&fblob, &third));
    let (st, _, _) = s.task_for(&fblob, &id("a"), 0, now).unwrap();
    assert!(matches!(*st, Statement::Final(_)));
}

#[test]
fn in_a_fleet_a_task_hands_out_only_the_seeds_that_registered_it() {
    use customs_protocol::piece_manifest::{FetchId, unix_now};
    let key = GatewayKey::generate().unwrap();
    let blob = Digest::of(b"blob");
    let now = Instant::now();
    let t = unix_now();
    let mut s = SchedulerState::default();
    announce(&mut s, "a", now);
    for g in ["gw-1", "gw-2"] {
        s.announce(&id(g), peer(g, "", 0, true), now).unwrap();
    }
    let seeds = |s: &mut SchedulerState| -> Vec<String> {
        let (_, parents, _) = s.task_for(&blob, &id("a"), 0, now).unwrap();
        parents
            .iter()
            .map(|p| p.peer.as_ref().unwrap())
            .filter(|p| p.seed)
            .map(|p| p.peer_id.clone())
            .collect()
    };
    // gw-1 (the blob's owner) states its fetch; gw-2's fetch of the same
    // blob, signed later, does not take the task over or clear its holders.
    let first = FetchId::random().unwrap();
    assert!(s.register_from(provisional(&key, &blob, &first, 1, t), Some(&id("gw-1"))));
    s.report_pieces(&id("a"), &blob, &[0], Some(&first))
        .unwrap();
    let second = FetchId::random().unwrap();
    assert!(!s.register_from(
        provisional(&key, &blob, &second, 2, t + 1),
        Some(&id("gw-2"))
    ));
    assert_eq!(
        seeds(&mut s),
        ["gw-1"],
        "gw-2 does not hold the first fetch's pieces"
    );
    // The owner restarting its own fetch does replace it.
    let third = FetchId::random().unwrap();
    assert!(s.register_from(
        provisional(&key, &blob, &third, 1, t + 2),
        Some(&id("gw-1"))
    ));
    // Final manifests: each gateway that holds the blob becomes a seed of it.
    let (fin, fblob) = task();
    assert!(s.register_from(fin.clone(), Some(&id("gw-2"))));
    assert!(!s.register_from(fin, Some(&id("gw-1"))));
    let (_, parents, _) = s.task_for(&fblob, &id("a"), 0, now).unwrap();
    let mut fin_seeds: Vec<String> = parents
        .iter()
        .map(|p| p.peer.as_ref().unwrap())
        .filter(|p| p.seed)
        .map(|p| p.peer_id.clone())
        .collect();
    fin_seeds.sort();
    assert_eq!(fin_seeds, ["gw-1", "gw-2"]);
}

#[test]
fn a_zone_with_its_own_gateway_takes_parents_and_seeds_from_that_zone_only() {
    let now = Instant::now();
    let mut s = SchedulerState::default();
    let (fin, blob) = task();
    for (g, z) in [("gw-a", "zone-a"), ("gw-b", "zone-b")] {
        s.announce(&id(g), peer(g, z, 0, true), now).unwrap();
        s.register_from(fin.clone(), Some(&id(g)));
    }
    for (p, z) in [
        ("pa", "zone-a"),
        ("pa2", "zone-a"),
        ("pb", "zone-b"),
        ("pb2", "zone-b"),
        ("pc", "zone-c"),
        ("pn", ""),
    ] {
        s.announce(&id(p), peer(p, z, 0, false), now).unwrap();
    }
    for holder in ["pa2", "pb2"] {
        s.report_pieces(&id(holder), &blob, &[0, 1], None).unwrap();
    }
    let mut offered_sorted = |who: &str| -> Vec<String> {
        let mut v = offered(&mut s, &blob, who, now);
        v.sort();
        v
    };
    assert_eq!(offered_sorted("pa"), ["gw-a", "pa2"]);
    assert_eq!(offered_sorted("pb"), ["gw-b", "pb2"]);
    // A zone without a gateway of its own (or a peer without a zone) gets
    // every parent and seed, nearest first.
    assert_eq!(offered_sorted("pc"), ["gw-a", "gw-b", "pa2", "pb2"]);
    assert_eq!(offered_sorted("pn"), ["gw-a", "gw-b", "pa2", "pb2"]);
    // A peer this scheduler has no announcement of yet keeps to the zone it
    // says it is in.
    let (_, early, _) = s.task_for_in(&blob, &id("new"), "zone-b", 0, now).unwrap();
    let mut early: Vec<String> = early
        .iter()
        .map(|p| p.peer.as_ref().unwrap().peer_id.clone())
        .collect();
    early.sort();
    assert_eq!(early, ["gw-b", "pb2"]);

    // A task only zone a's gateway holds: zone b's peers are sent to their
    // own gateway (no task here), which fetches it through the zone.
    let (only_a, blob_a) = task_of(b"other blob");
    s.register_from(only_a, Some(&id("gw-a")));
    s.report_pieces(&id("pa2"), &blob_a, &[0], None).unwrap();
    assert!(s.task_for(&blob_a, &id("pb"), 0, now).is_none());
    assert!(s.task_for(&blob_a, &id("pa"), 0, now).is_some());
    assert!(s.task_for(&blob_a, &id("pc"), 0, now).is_some());
}

#[test]
fn a_zone_served_by_its_own_gateway_gets_its_own_first_copies_hinted() {
    let now = Instant::now();
    let mut s = SchedulerState::default();
    let (fin, blob) = task();
    for (g, z) in [("gw-a", "zone-a"), ("gw-b", "zone-b")] {
        s.announce(&id(g), peer(g, z, 0, true), now).unwrap();
        s.register_from(fin.clone(), Some(&id(g)));
    }
    for (p, z) in [("pa", "zone-a"), ("pb", "zone-b"), ("pc", "zone-c")] {
        s.announce(&id(p), peer(p, z, 0, false), now).unwrap();
    }
    // Zone a holds every piece; zone b none of them.
    s.report_pieces(&id("pa"), &blob, &[0, 1, 2], None).unwrap();
    let hints = |s: &mut SchedulerState, who: &str| {
        let mut h = s.task_for(&blob, &id(who), 3, now).unwrap().2;
        h.sort();
        h
    };
    assert_eq!(
        hints(&mut s, "pb").len(),
        SEED_HINTS,
        "zone b's first copies come from its seed"
    );
    assert!(
        hints(&mut s, "pc").is_empty(),
        "a zone without a gateway takes them from zone a's peers"
    );
}

#[test]
fn a_download_only_peer_is_nobodys_parent_and_frees_its_hints() {
    let now = Instant::now();
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    s.register(m);
    s.announce(&id("gw"), peer("gw", "", 0, true), now).unwrap();
    let mut taker = peer("taker", "", 0, false);
    taker.upload_addr = String::new();
    s.announce(&id("taker"), taker, now).unwrap();
    announce(&mut s, "b", now);
    // The taker is hinted pieces 0 and 1 and fetches them.
    let mut first = s.task_for(&blob, &id("taker"), 2, now).unwrap().2;
    first.extend(s.task_for(&blob, &id("taker"), 2, now).unwrap().2);
    assert_eq!(first.len(), 2);
    s.report_pieces(&id("taker"), &blob, &first, None).unwrap();
    // It is nobody's parent, and what it took is hinted to the next peer
    // at once (only the seed can send it), never to itself again.
    assert_eq!(offered(&mut s, &blob, "b", now), ["gw"]);
    let mut next = Vec::new();
    for _ in 0..3 {
        next.extend(s.task_for(&blob, &id("b"), 2, now).unwrap().2);
    }
    assert!(
        first.iter().all(|p| next.contains(p)),
        "{first:?} not in {next:?}"
    );
    let again = s.task_for(&blob, &id("taker"), 3, now).unwrap().2;
    assert!(again.iter().all(|p| !first.contains(p)), "{again:?}");
}

#[test]
fn a_peers_parents_stay_put_within_a_window_and_differ_between_peers() {
    let now = Instant::now();
    let (m, blob) = task();
    // A fixed seed: where the window boundary falls (staggered per peer)
    // is then fixed too, and not within this test's first second.
    let mut s = SchedulerState::with_seed(1);
    s.register(m);
    for who in ["a", "b"] {
        announce(&mut s, who, now);
    }
    for i in 0..(4 * CANDIDATES) {
        let p = format!("p{i}");
        announce(&mut s, &p, now);
        s.report_pieces(&id(&p), &blob, &[0], None).unwrap();
    }
    let first = offered(&mut s, &blob, "a", now);
    assert_eq!(first.len(), MAX_PARENTS);
    // Refreshes within the window hand out the same parents: a peer's
    // transfers stay where they are, and its hand-outs stay few.
    let handed = s.sizes().1;
    for k in 1..10 {
        let t = now + Duration::from_millis(100 * k);
        let mut again = offered(&mut s, &blob, "a", t);
        let mut want = first.clone();
        again.sort();
        want.sort();
        assert_eq!(again, want, "refresh {k}");
    }
    assert_eq!(s.sizes().1, handed, "no new hand-outs within the window");
    // Another peer draws its own: load spreads over the holders.
    let other = offered(&mut s, &blob, "b", now);
    assert_ne!(
        other.iter().collect::<std::collections::BTreeSet<_>>(),
        first.iter().collect::<std::collections::BTreeSet<_>>()
    );
    // A later window draws afresh.
    let later = offered(&mut s, &blob, "a", now + 2 * STICKY_WINDOW);
    assert_ne!(
        later.iter().collect::<std::collections::BTreeSet<_>>(),
        first.iter().collect::<std::collections::BTreeSet<_>>()
    );
}

#[test]
fn pieces_only_a_silent_holder_held_are_first_copies_again() {
    let now = Instant::now();
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    s.register(m);
    for p in ["a", "gone"] {
        announce(&mut s, p, now);
    }
    s.report_pieces(&id("gone"), &blob, &[0, 1, 2], None)
        .unwrap();
    // While it is heard from, its pieces are no first copies.
    assert!(s.task_for(&blob, &id("a"), 1, now).unwrap().2.is_empty());
    // Killed: no more announcements. Once it has missed three, the seed
    // sends its pieces to someone else (once, under a lease).
    let later = now + HOLDER_SILENT_AFTER;
    announce(&mut s, "a", later);
    assert_eq!(s.task_for(&blob, &id("a"), 1, later).unwrap().2, vec![0]);
    // An announcement brings it back: its pieces count again (after the
    // next recount).
    let back = later + LIVE_HELD_EVERY;
    for p in ["a", "gone"] {
        announce(&mut s, p, back);
    }
    let hints = s.task_for(&blob, &id("a"), 1, back).unwrap().2;
    assert!(hints.is_empty(), "{hints:?}");
}

#[test]
fn a_lease_ends_when_its_peer_falls_silent() {
    let now = Instant::now();
    let (m, blob) = task();
    let mut s = SchedulerState::default();
    s.register(m);
    for p in ["gone", "a"] {
        announce(&mut s, p, now);
    }
    assert_eq!(s.task_for(&blob, &id("gone"), 1, now).unwrap().2, vec![0]);
    // Still heard from: its lease holds.
    let soon = now + HOLDER_SILENT_AFTER / 2;
    announce(&mut s, "a", soon);
    assert_eq!(s.task_for(&blob, &id("a"), 1, soon).unwrap().2, vec![1]);
    // It left (no announcement since): its piece is hinted again well
    // before the lease would have run out.
    let later = now + HOLDER_SILENT_AFTER;
    assert!(later < now + HINT_LEASE);
    announce(&mut s, "a", later);
    let mut again = s.task_for(&blob, &id("a"), 1, later).unwrap().2;
    again.extend(s.task_for(&blob, &id("a"), 1, later).unwrap().2);
    assert!(again.contains(&0), "{again:?}");
    assert!(!again.contains(&1), "a live peer's lease holds: {again:?}");
}
