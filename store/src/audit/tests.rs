//! Unit tests of the audit log: the chain, checkpoints, recovery at open.
use super::*;

#[test]
fn rfc3339() {
    assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(format_rfc3339(1_711_017_244), "2024-03-21T10:34:04Z");
    assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
}

fn key() -> (Arc<GatewayKey>, TrustedGatewayKeys) {
    let k = GatewayKey::generate().unwrap();
    let trusted = TrustedGatewayKeys::from_pems([k.public_pem().unwrap().as_str()]).unwrap();
    (Arc::new(k), trusted)
}

async fn signed_log(p: &Path, n: usize) -> TrustedGatewayKeys {
    let (k, trusted) = key();
    let log = AuditLog::open_with_key(p, Some(k)).unwrap();
    for i in 0..n {
        log.write("decision", &serde_json::json!({"image": format!("a/b{i}")}))
            .await
            .unwrap();
        if i % 3 == 2 {
            // Let the writer's clock pass a checkpoint interval now and then.
            tokio::time::sleep(CHECKPOINT_EVERY + Duration::from_millis(20)).await;
        }
    }
    drop(log);
    // The writer thread writes a final checkpoint when the last handle goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    trusted
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(p: &Path, l: &[String]) {
    std::fs::write(p, l.iter().map(|x| format!("{x}\n")).collect::<String>()).unwrap();
}

#[tokio::test]
async fn a_signed_chain_verifies_and_every_tampering_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let trusted = signed_log(&p, 7).await;
    let report = verify_log(&p, &trusted).unwrap();
    assert!(report.checkpoints >= 2, "{report:?}");
    assert_eq!(
        report.uncovered, 0,
        "the final checkpoint covers everything"
    );
    let orig = lines(&p);

    // Edited: an event's content changes.
    let mut edited = orig.clone();
    edited[1] = edited[1].replace("a/b1", "a/evil");
    write_lines(&p, &edited);
    let e = verify_log(&p, &trusted).unwrap_err();
    assert_eq!(e.line, 3, "{e}");

    // Deleted: one event removed.
    let mut deleted = orig.clone();
    deleted.remove(2);
    write_lines(&p, &deleted);
    let e = verify_log(&p, &trusted).unwrap_err();
    assert_eq!(e.line, 3, "{e}");
    assert!(e.reason.contains("sequence"), "{e}");

    // Truncated: cut in the middle of a line.
    let text = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let _ = text;
    write_lines(&p, &orig);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let e = verify_log(&p, &trusted).unwrap_err();
    assert!(e.reason.contains("truncated"), "{e}");

    // Re-chained after an edit (hashes recomputed) but not re-signed.
    let mut forged: Vec<serde_json::Value> = orig
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    forged[0]["image"] = "a/evil".into();
    let mut head = GENESIS.to_owned();
    let mut out = Vec::new();
    for v in &mut forged {
        v["prev"] = head.clone().into();
        if v["kind"] == "checkpoint" {
            v["head"] = head.clone().into();
        }
        let line = v.to_string();
        head = hex::encode(Sha256::digest(line.as_bytes()));
        out.push(line);
    }
    write_lines(&p, &out);
    let e = verify_log(&p, &trusted).unwrap_err();
    assert!(e.reason.contains("checkpoint signature"), "{e}");

    // Another key's checkpoints do not verify.
    write_lines(&p, &orig);
    let (_, other) = key();
    assert!(verify_log(&p, &other).is_err());
    assert!(verify_log(&p, &trusted).is_ok());
}

#[tokio::test]
async fn a_partial_tail_is_cut_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let trusted = signed_log(&p, 2).await;
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"seq\":99,\"half").unwrap();
    drop(f);
    let (k, _) = key();
    let _ = k;
    let log = AuditLog::open(&p).unwrap();
    log.write("decision", &serde_json::json!({"image": "x/y"}))
        .await
        .unwrap();
    drop(log);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(!text.contains("half"));
    assert!(text.contains("audit-recovered"), "{text}");
    verify_log(&p, &trusted).unwrap();
}

#[tokio::test]
async fn events_are_appended_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit/audit.jsonl");
    let log = AuditLog::open(&p).unwrap();
    log.write("decision", &serde_json::json!({"image": "a/b"}))
        .await
        .unwrap();
    log.write("decision", &serde_json::json!({"image": "c/d"}))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["image"], "c/d");
    assert_eq!(lines[0]["kind"], "decision");
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[1]["seq"], 2);
    assert_eq!(lines[0]["prev"], GENESIS);
}

/// Appends `line` as a correctly chained event: what an attacker with write
/// access to the file does while the writer is down.
fn append_chained(p: &Path, fields: serde_json::Value) -> String {
    let text = std::fs::read_to_string(p).unwrap();
    let last = text.lines().last().unwrap();
    let seq = text.lines().count() as u64 + 1;
    let mut v = fields;
    v["seq"] = seq.into();
    v["prev"] = hex::encode(Sha256::digest(last.as_bytes())).into();
    v["time"] = "2026-11-28T10:00:00Z".into();
    let line = v.to_string();
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    writeln!(f, "{line}").unwrap();
    line
}

fn kinds(p: &Path) -> Vec<String> {
    lines(p)
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn close_signs_everything_and_a_clean_restart_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let (k, trusted) = key();
    let log = AuditLog::open_with_key(&p, Some(k.clone())).unwrap();
    log.write("decision", &serde_json::json!({"image": "a/b"}))
        .await
        .unwrap();
    log.close().await.unwrap();
    // Durable when close returns: no sleep, no drop.
    let report = verify_log(&p, &trusted).unwrap();
    assert_eq!(report.uncovered, 0, "{report:?}");
    assert_eq!(kinds(&p), ["decision", CLOSED, "checkpoint"]);
    // An event still arriving during shutdown gets its own checkpoint.
    log.write("decision", &serde_json::json!({"image": "late"}))
        .await
        .unwrap();
    assert_eq!(verify_log(&p, &trusted).unwrap().uncovered, 0);
    drop(log);
    let before = lines(&p).len();
    let log = AuditLog::open_with_key(&p, Some(k)).unwrap();
    assert_eq!(lines(&p).len(), before, "a clean log is adopted as it is");
    log.write("decision", &serde_json::json!({"image": "c/d"}))
        .await
        .unwrap();
    log.checkpoint_now().await.unwrap();
    let report = verify_log(&p, &trusted).unwrap();
    assert_eq!(report.uncovered, 0, "checkpoint_now signs at once");
    assert!(report.recovered.is_empty(), "{report:?}");
}

#[tokio::test]
async fn a_forged_line_appended_while_down_is_recorded_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let (k, trusted) = key();
    let log = AuditLog::open_with_key(&p, Some(k.clone())).unwrap();
    log.write(
        "decision",
        &serde_json::json!({"image": "a/b", "verdict": "deny"}),
    )
    .await
    .unwrap();
    log.close().await.unwrap();
    drop(log);
    let from_byte = std::fs::metadata(&p).unwrap().len();
    let first = lines(&p).len() as u64 + 1;
    append_chained(
        &p,
        serde_json::json!({"kind": "decision", "image": "evil/app", "verdict": "allow"}),
    );
    append_chained(
        &p,
        serde_json::json!({"kind": "decision", "image": "evil/app2", "verdict": "allow"}),
    );
    let to_byte = std::fs::metadata(&p).unwrap().len();
    // Before the restart the forged lines are a trailing uncovered tail:
    // reported, not fatal (the gateway may simply be running).
    let report = verify_log(&p, &trusted).unwrap();
    assert_eq!(report.uncovered, 2);

    let log = AuditLog::open_with_key(&p, Some(k.clone())).unwrap();
    // Recorded before anything new is chained, and durable at once.
    let all = lines(&p);
    let marker: serde_json::Value = serde_json::from_str(&all[first as usize + 1]).unwrap();
    assert_eq!(marker["kind"], RECOVERED_UNSIGNED, "{all:?}");
    assert_eq!(marker["from_seq"], first);
    assert_eq!(marker["to_seq"], first + 1);
    assert_eq!(marker["from_byte"], from_byte);
    assert_eq!(marker["to_byte"], to_byte);
    let tail = &std::fs::read(&p).unwrap()[from_byte as usize..to_byte as usize];
    assert_eq!(marker["sha256"], hex::encode(Sha256::digest(tail)));
    assert!(marker.get("chain_break").is_none(), "{marker}");
    assert_eq!(kinds(&p).last().unwrap(), "checkpoint");
    log.write("decision", &serde_json::json!({"image": "x/y"}))
        .await
        .unwrap();
    log.close().await.unwrap();

    // The chain is intact and fully signed, but the range is reported.
    let report = verify_log(&p, &trusted).unwrap();
    assert_eq!(report.uncovered, 0);
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    let r = &report.recovered[0];
    assert_eq!((r.range.from_seq, r.range.to_seq), (first, first + 1));
    assert_eq!(r.line, first + 2);
    drop(log);

    // A second clean restart does not record the range again.
    let before = lines(&p).len();
    let log = AuditLog::open_with_key(&p, Some(k)).unwrap();
    assert_eq!(lines(&p).len(), before);
    drop(log);
}

#[tokio::test]
async fn unchained_garbage_and_forged_checkpoints_are_recorded_and_break_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let (k, trusted) = key();
    let log = AuditLog::open_with_key(&p, Some(k.clone())).unwrap();
    log.write("decision", &serde_json::json!({"image": "a/b"}))
        .await
        .unwrap();
    log.close().await.unwrap();
    drop(log);
    let n = lines(&p).len() as u64;
    // A checkpoint signed by another key, correctly chained.
    let (other, _) = key();
    let text = std::fs::read_to_string(&p).unwrap();
    let head = hex::encode(Sha256::digest(text.lines().last().unwrap().as_bytes()));
    let sig = other.sign_checkpoint(format!("{}:{head}", n + 1).as_bytes());
    append_chained(
        &p,
        serde_json::json!({"kind": "checkpoint", "head": head, "key_id": other.id(), "signature": hex::encode(sig)}),
    );
    // Then a line that is not even JSON.
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"hello\n").unwrap();
    drop(f);

    // The gateway still starts (an attacker cannot stop it by scribbling).
    let log = AuditLog::open_with_key(&p, Some(k)).unwrap();
    let all = lines(&p);
    let marker: serde_json::Value = serde_json::from_str(&all[n as usize + 2]).unwrap();
    assert_eq!(marker["kind"], RECOVERED_UNSIGNED, "{all:?}");
    assert_eq!(
        (marker["from_seq"].as_u64(), marker["to_seq"].as_u64()),
        (Some(n + 1), Some(n + 2))
    );
    let why = marker["chain_break"].as_str().unwrap();
    assert!(
        why.contains(&format!("line {}", n + 2)) && why.contains("not JSON"),
        "{why}"
    );
    // New lines carry on with seq = line number.
    assert_eq!(marker["seq"], n + 3);
    log.close().await.unwrap();
    // verify fails: first at the checkpoint no trusted key signed.
    let e = verify_log(&p, &trusted).unwrap_err();
    assert_eq!(e.line, n + 1, "{e}");
    assert!(e.reason.contains("checkpoint signature"), "{e}");
}

#[tokio::test]
async fn an_oversized_line_is_streamed_not_buffered() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let (k, trusted) = key();
    let log = AuditLog::open_with_key(&p, Some(k.clone())).unwrap();
    log.close().await.unwrap();
    drop(log);
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    let big = vec![b'x'; chain::MAX_LINE_BYTES + 10];
    f.write_all(&big).unwrap();
    f.write_all(b"\n").unwrap();
    drop(f);
    let log = AuditLog::open_with_key(&p, Some(k)).unwrap();
    log.close().await.unwrap();
    let text = std::fs::read_to_string(&p).unwrap();
    let marker = text
        .lines()
        .find(|l| l.contains(RECOVERED_UNSIGNED))
        .unwrap();
    assert!(marker.contains("longer than"), "{marker}");
    let e = verify_log(&p, &trusted).unwrap_err();
    assert!(e.reason.contains("longer than"), "{e}");
}

#[tokio::test]
async fn a_marker_that_misdescribes_its_range_is_a_break() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let (k, trusted) = key();
    let log = AuditLog::open_with_key(&p, Some(k.clone())).unwrap();
    log.close().await.unwrap();
    drop(log);
    append_chained(
        &p,
        serde_json::json!({"kind": "decision", "image": "evil/app"}),
    );
    let log = AuditLog::open_with_key(&p, Some(k.clone())).unwrap();
    log.close().await.unwrap();
    drop(log);
    let at = lines(&p)
        .iter()
        .position(|l| l.contains(RECOVERED_UNSIGNED))
        .unwrap() as u64
        + 1;
    let v: serde_json::Value = serde_json::from_str(&lines(&p)[at as usize - 1]).unwrap();
    let offset: u64 = lines(&p)[..at as usize - 1]
        .iter()
        .map(|l| l.len() as u64 + 1)
        .sum();
    assert!(check_recovered(&p, &v, at, offset).is_ok());
    let mut wrong = v.clone();
    wrong["sha256"] = "00".repeat(32).into();
    let e = check_recovered(&p, &wrong, at, offset).unwrap_err();
    assert!(e.contains("does not match"), "{e}");
    let mut wrong = v.clone();
    wrong["to_seq"] = at.into();
    assert!(check_recovered(&p, &wrong, at, offset).is_err());
    let mut wrong = v;
    wrong["to_byte"] = (offset + 1).into();
    assert!(check_recovered(&p, &wrong, at, offset).is_err());
    assert_eq!(verify_log(&p, &trusted).unwrap().recovered.len(), 1);
}

#[tokio::test]
async fn a_partial_tail_of_a_signed_log_is_cut_and_recorded_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let (k, trusted) = key();
    let log = AuditLog::open_with_key(&p, Some(k.clone())).unwrap();
    log.close().await.unwrap();
    drop(log);
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"seq\":9,\"half").unwrap();
    drop(f);
    let log = AuditLog::open_with_key(&p, Some(k)).unwrap();
    drop(log);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(!text.contains("half"), "{text}");
    assert!(
        !text.contains(RECOVERED_UNSIGNED),
        "complete lines were all signed: {text}"
    );
    let recovered = text
        .lines()
        .find(|l| l.contains("audit-recovered"))
        .unwrap();
    let expected = hex::encode(Sha256::digest(b"{\"seq\":9,\"half"));
    assert!(recovered.contains(&expected), "{recovered}");
    let report = verify_log(&p, &trusted).unwrap();
    assert_eq!(report.uncovered, 0, "recorded and signed at open");
}

#[tokio::test]
async fn after_a_key_change_the_older_part_is_recorded_as_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("audit.jsonl");
    let (k1, _) = key();
    let log = AuditLog::open_with_key(&p, Some(k1.clone())).unwrap();
    log.write("decision", &serde_json::json!({"image": "a/b"}))
        .await
        .unwrap();
    log.close().await.unwrap();
    drop(log);
    let n = lines(&p).len() as u64;
    let (k2, _) = key();
    let log = AuditLog::open_with_key(&p, Some(k2.clone())).unwrap();
    log.close().await.unwrap();
    drop(log);
    // Both keys verify every checkpoint; the range is still reported, for
    // the operator to accept after checking the older part.
    let both = TrustedGatewayKeys::from_pems([
        k1.public_pem().unwrap().as_str(),
        k2.public_pem().unwrap().as_str(),
    ])
    .unwrap();
    let report = verify_log(&p, &both).unwrap();
    assert_eq!(report.recovered.len(), 1, "{report:?}");
    assert_eq!(
        (
            report.recovered[0].range.from_seq,
            report.recovered[0].range.to_seq
        ),
        (1, n)
    );
}
