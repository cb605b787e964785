//! Finding 10: forged audit events got signed. An attacker with write
//! access to the data directory appends a correctly chained decision line
//! while the gateway is down; before the fix the gateway adopted it at
//! start and its next signed checkpoint covered it, so `customs audit
//! verify` passed. Now the line is named by a `recovered-unsigned` event,
//! verify fails on it unless `--accept-recovered`, and every log (gateway
//! and scheduler) ends a clean run with a signed checkpoint.

use crate::support::*;
use sha2::Digest as _;
use std::path::Path;
use std::process::Command;

/// The `kind` of every line.
fn kinds(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["kind"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Appends `event` correctly chained to the last line (seq and prev), as an
/// attacker who can write the file would; returns its seq.
fn append_forged(log: &Path, mut event: serde_json::Value) -> u64 {
    let text = std::fs::read_to_string(log).unwrap();
    let last = text.lines().last().unwrap();
    let seq = text.lines().count() as u64 + 1;
    event["seq"] = seq.into();
    event["prev"] = hex::encode(sha2::Sha256::digest(last.as_bytes())).into();
    event["time"] = "2026-11-28T10:00:00Z".into();
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
    writeln!(f, "{event}").unwrap();
    seq
}

/// `customs audit verify --data-dir D [extra]`: (exit 0?, stdout).
fn verify(data: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_customs"))
        .args(["audit", "verify", "--data-dir"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_line_appended_while_the_gateway_is_down_is_recorded_not_signed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let digest = make_image(&dir.join("app"), "v1", &[20_000], &[], 101);
    push(&dir.join("app"), "v1", registry.addr, "library/app");
    let data = dir.join("up");
    let gateway_log = data.join("audit/audit.jsonl");
    let scheduler_log = data.join("audit/scheduler.jsonl");

    let mut up = Customs::up(&data, &registry.url(), &[]);
    let (ok, err) = skopeo_pull(&format!("{}/library/app:v1", up.addr), &dir.join("out"));
    assert!(ok, "{err}");
    assert!(up.proc.terminate().success(), "{}", up.log_text());

    // SIGTERM left a final signed checkpoint on both logs.
    let k = kinds(&gateway_log);
    assert!(k.iter().any(|k| k == "decision"), "{k:?}");
    // (An aggregate event may land after audit-closed while tasks drain;
    // it then carries its own checkpoint.)
    assert!(k.iter().any(|k| k == "audit-closed"), "gateway log: {k:?}");
    assert_eq!(k.last().unwrap(), "checkpoint", "gateway log: {k:?}");
    assert_eq!(
        kinds(&scheduler_log)[..],
        ["audit-closed", "checkpoint"],
        "scheduler log"
    );
    let (ok, out) = verify(&data, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("0 events after the last checkpoint"), "{out}");

    // While it is down: a forged, correctly chained allow decision, and a
    // forged bad-piece report in the scheduler's log.
    let forged = append_forged(
        &gateway_log,
        serde_json::json!({"kind": "decision", "verdict": "allow", "mode": "enforce",
            "image": format!("{}/evil/app", registry.addr), "digest": digest,
            "reasons": []}),
    );
    let forged_sched = append_forged(
        &scheduler_log,
        serde_json::json!({"kind": "bad_piece", "peer": "peer-9", "reporter": "peer-1"}),
    );
    // Not yet signed by anyone: reported, not fatal (as for a running gateway).
    let (ok, out) = verify(&data, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("1 events after the last checkpoint"), "{out}");

    let mut up = Customs::up(&data, &registry.url(), &[]);
    assert!(up.proc.terminate().success(), "{}", up.log_text());

    let text = std::fs::read_to_string(&gateway_log).unwrap();
    let marker: serde_json::Value = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["kind"] == "recovered-unsigned")
        .unwrap_or_else(|| panic!("no recovered-unsigned event: {text}"));
    assert_eq!(marker["from_seq"], forged);
    assert_eq!(marker["to_seq"], forged);
    assert_eq!(marker["seq"], forged + 1, "recorded before anything new");
    let (ok, out) = verify(&data, &[]);
    assert!(!ok, "a forged line must not pass: {out}");
    assert!(
        out.contains(&format!("recovered-unsigned range: seq {forged}..{forged}")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "recovered-unsigned range: seq {forged_sched}..{forged_sched}"
        )),
        "the scheduler log too: {out}"
    );
    let (ok, out) = verify(&data, &["--accept-recovered"]);
    assert!(ok, "{out}");
    assert!(out.contains("(accepted)"), "{out}");
}
