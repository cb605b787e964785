//! The audit log: one JSON object per line, hash-chained, group-committed,
//! durable before it is acknowledged, with checkpoints signed by the
//! gateway key.
//!
//! Every line carries `seq` (1, 2, …) and `prev`, the hex sha256 of the
//! previous line's bytes (64 zeros for the first). Writers hand events to
//! one writer thread, which appends a whole batch, fsyncs once and only
//! then acknowledges every event of the batch (group commit). With a key,
//! the writer appends a `checkpoint` line (signed `seq:head`, where `head`
//! is the hash of the line before it) at most every second or every 256
//! events, so editing, deleting or reordering any event before the last
//! checkpoint is detectable by anyone holding the public key
//! ([`verify_log`], `customs audit verify`).

use customs_protocol::piece_manifest::{GatewayKey, TrustedGatewayKeys};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Most events between two checkpoints.
const CHECKPOINT_EVERY_EVENTS: u64 = 256;
/// Longest time between an event and the checkpoint covering it.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Most events written in one batch.
const MAX_BATCH: usize = 1024;

/// Why an audit event could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Disk trouble: the caller must fail closed.
    #[error("audit log {path}: {source}")]
    Io {
        /// The log file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The writer thread is gone.
    #[error("audit log {0}: the writer stopped")]
    Stopped(String),
}

struct Request {
    kind: String,
    fields: serde_json::Map<String, serde_json::Value>,
    done: tokio::sync::oneshot::Sender<Result<u64, String>>,
}

/// An append-only, hash-chained audit log file.
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    tx: std::sync::mpsc::Sender<Request>,
}

struct Writer {
    file: std::fs::File,
    seq: u64,
    head: String,
    key: Option<Arc<GatewayKey>>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
}

/// The last complete line's seq and hash; a partial tail (a batch whose
/// fsync never completed, so never acknowledged) is cut off and reported.
fn recover(path: &Path) -> std::io::Result<(u64, String, u64)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, GENESIS.into(), 0)),
        Err(e) => return Err(e),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let dropped = (bytes.len() - complete) as u64;
    if dropped > 0 {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(complete as u64)?;
        f.sync_all()?;
    }
    let body = &bytes[..complete];
    let Some(last) = body[..body.len().saturating_sub(1)]
        .split(|&b| b == b'\n')
        .next_back()
        .filter(|l| !l.is_empty())
    else {
        return Ok((0, GENESIS.into(), dropped));
    };
    let v: serde_json::Value = serde_json::from_slice(last).map_err(std::io::Error::other)?;
    let seq = v["seq"].as_u64().unwrap_or(0);
    Ok((seq, hex::encode(Sha256::digest(last)), dropped))
}

impl Writer {
    fn line(&mut self, kind: &str, fields: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
        self.seq += 1;
        let mut obj = serde_json::Map::new();
        obj.insert("seq".into(), self.seq.into());
        obj.insert("prev".into(), self.head.clone().into());
        obj.insert("time".into(), time_rfc3339().into());
        obj.insert("kind".into(), kind.into());
        for (k, v) in fields {
            if !matches!(k.as_str(), "seq" | "prev" | "time" | "kind") {
                obj.insert(k, v);
            }
        }
        let bytes = serde_json::Value::Object(obj).to_string().into_bytes();
        self.head = hex::encode(Sha256::digest(&bytes));
        let mut out = bytes;
        out.push(b'\n');
        out
    }

    fn checkpoint(&mut self) -> Option<Vec<u8>> {
        let key = self.key.clone()?;
        let seq = self.seq + 1;
        let message = format!("{seq}:{}", self.head);
        let signature = key.sign_checkpoint(message.as_bytes());
        let mut f = serde_json::Map::new();
        f.insert("head".into(), self.head.clone().into());
        f.insert("key_id".into(), key.id().into());
        f.insert("signature".into(), hex::encode(signature).into());
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Some(self.line("checkpoint", f))
    }

    fn run(mut self, rx: std::sync::mpsc::Receiver<Request>) {
        loop {
            let first = match rx.recv_timeout(CHECKPOINT_EVERY) {
                Ok(r) => Some(r),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    if self.since_checkpoint > 0
                        && let Some(cp) = self.checkpoint()
                    {
                        let _ = self
                            .file
                            .write_all(&cp)
                            .and_then(|()| self.file.sync_data());
                    }
                    return;
                }
            };
            let mut batch: Vec<Request> = first.into_iter().collect();
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut bytes = Vec::new();
            let mut seqs = Vec::with_capacity(batch.len());
            let mut dones = Vec::with_capacity(batch.len());
            for r in batch {
                bytes.extend(self.line(&r.kind, r.fields));
                seqs.push(self.seq);
                dones.push(r.done);
                self.since_checkpoint += 1;
            }
            if self.since_checkpoint > 0
                && (self.since_checkpoint >= CHECKPOINT_EVERY_EVENTS
                    || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
                && let Some(cp) = self.checkpoint()
            {
                bytes.extend(cp);
            }
            if bytes.is_empty() {
                continue;
            }
            let result = self
                .file
                .write_all(&bytes)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| e.to_string());
            for (done, seq) in dones.into_iter().zip(seqs) {
                let _ = done.send(result.clone().map(|()| seq));
            }
        }
    }
}

impl AuditLog {
    /// Opens (or creates) an unsigned log: chained, but without checkpoints.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        Self::open_with_key(path, None)
    }

    /// Opens (or creates) the log; with `key`, checkpoints are signed.
    pub fn open_with_key(path: &Path, key: Option<Arc<GatewayKey>>) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let (seq, head, dropped) = recover(path).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let writer = Writer {
            file,
            seq,
            head,
            key,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        let log = AuditLog {
            path: path.to_path_buf(),
            tx,
        };
        if dropped > 0 {
            tracing::warn!(path = %path.display(), dropped_bytes = dropped, "audit log ended in a partial (never acknowledged) line; cut off");
            let log2 = log.clone();
            let event = serde_json::json!({"dropped_bytes": dropped});
            // Recorded asynchronously: open() is called outside a runtime too.
            std::thread::spawn(move || {
                let (tx, _rx) = tokio::sync::oneshot::channel();
                let _ = log2.tx.send(Request {
                    kind: "audit-recovered".into(),
                    fields: event.as_object().cloned().unwrap_or_default(),
                    done: tx,
                });
            });
        }
        Ok(log)
    }

    /// Appends one event; returns its sequence number once it is durable.
    pub async fn write<E: Serialize>(&self, kind: &str, event: &E) -> Result<u64, AuditError> {
        let fields = match serde_json::to_value(event) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(other) => {
                let mut m = serde_json::Map::new();
                m.insert("event".into(), other);
                m
            }
            Err(e) => {
                return Err(AuditError::Io {
                    path: self.path.display().to_string(),
                    source: std::io::Error::other(e),
                });
            }
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Request {
                kind: kind.to_owned(),
                fields,
                done,
            })
            .map_err(|_| AuditError::Stopped(self.path.display().to_string()))?;
        match wait.await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(AuditError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(AuditError::Stopped(self.path.display().to_string())),
        }
    }
}

/// What a verified log contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Lines (events and checkpoints).
    pub lines: u64,
    /// Valid signed checkpoints.
    pub checkpoints: u64,
    /// Events after the last checkpoint (chained but not yet signed).
    pub uncovered: u64,
}

/// The first break found in a log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}:{line}: {reason}")]
pub struct ChainBreak {
    /// The file.
    pub path: String,
    /// 1-based line number.
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

/// Checks sequence numbers, the hash chain and every checkpoint signature.
/// `keys` empty: checkpoints are reported as unverifiable (a break).
pub fn verify_log(path: &Path, keys: &TrustedGatewayKeys) -> Result<ChainReport, ChainBreak> {
    let brk = |line: u64, reason: String| ChainBreak {
        path: path.display().to_string(),
        line,
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| brk(0, e.to_string()))?;
    let mut reader = std::io::BufReader::new(f);
    let mut head = GENESIS.to_owned();
    let mut report = ChainReport {
        lines: 0,
        checkpoints: 0,
        uncovered: 0,
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| brk(report.lines + 1, e.to_string()))?;
        if n == 0 {
            break;
        }
        let no = report.lines + 1;
        if buf.last() != Some(&b'\n') {
            return Err(brk(no, "truncated: the last line is incomplete".into()));
        }
        let line = &buf[..buf.len() - 1];
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| brk(no, format!("not JSON: {e}")))?;
        if v["seq"].as_u64() != Some(no) {
            return Err(brk(
                no,
                format!(
                    "sequence {} where {no} was expected (an event was deleted or inserted)",
                    v["seq"]
                ),
            ));
        }
        if v["prev"].as_str() != Some(head.as_str()) {
            return Err(brk(no, "prev does not match the previous line's hash (an earlier line was edited, deleted or reordered)".into()));
        }
        if v["kind"] == "checkpoint" {
            if v["head"].as_str() != Some(head.as_str()) {
                return Err(brk(no, "checkpoint head does not match the chain".into()));
            }
            let key_id = v["key_id"].as_str().unwrap_or_default();
            let sig = hex::decode(v["signature"].as_str().unwrap_or_default())
                .map_err(|e| brk(no, format!("checkpoint signature: {e}")))?;
            keys.verify_checkpoint(key_id, format!("{no}:{head}").as_bytes(), &sig)
                .map_err(|e| brk(no, format!("checkpoint signature: {e}")))?;
            report.checkpoints += 1;
            report.uncovered = 0;
        } else {
            report.uncovered += 1;
        }
        head = hex::encode(Sha256::digest(line));
        report.lines = no;
    }
    Ok(report)
}

/// Current UTC time in RFC 3339 with seconds precision. Hand-written to avoid
/// a date crate for one format (civil-from-days, Howard Hinnant's algorithm).
pub fn time_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_rfc3339(secs)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
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
}
