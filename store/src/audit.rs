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
//!
//! # What a restart trusts
//!
//! Anyone who can write the file while the writer is down can append lines
//! that are correctly chained: the chain is only a hash, not a secret. Only
//! a checkpoint proves the key holder saw a line. So a signed log, when it
//! is opened, is verified from the start with the writer's own key, and:
//!
//! - the lines up to the last valid signed checkpoint are trusted and the
//!   chain continues from them;
//! - any complete lines after it (written while the writer was down, or
//!   acknowledged just before a crash, which cannot be told apart) are
//!   never adopted silently: before anything new is chained, the writer
//!   appends a `recovered-unsigned` event naming them (`from_seq`..`to_seq`,
//!   the byte range `from_byte`..`to_byte`, the sha256 of those bytes and,
//!   when they do not even chain, the first break), then a checkpoint. The
//!   lines stay in place as evidence; the checkpoint after the event vouches
//!   only that they were found there. `customs audit verify` fails on such a
//!   range unless the operator, having looked at it, passes
//!   `--accept-recovered`;
//! - a last line without a newline (a batch whose fsync never completed, so
//!   never acknowledged) is cut off and recorded by an `audit-recovered`
//!   event with its offset, length and sha256.
//!
//! A stronger alternative, a signature on every event, was weighed and not
//! chosen: it would also close the crash window (each acknowledged line
//! signed on its own), but at one signature per event on the group-commit
//! path and a new line format for every reader and exporter, and it still
//! could not show that lines were removed from the end. The checkpoint
//! design keeps the format; the window it leaves is bounded by the
//! checkpoint interval (1 s or 256 events) and closed on every clean stop:
//! [`AuditLog::close`], which every component calls on SIGTERM, appends an
//! `audit-closed` event and a signed checkpoint, so after a clean stop
//! nothing is uncovered and a `recovered-unsigned` range after a restart
//! means a crash or tampering.
//!
//! Limits: checkpoints are verified at open with the writer's current key
//! only, so after a key rotation the first start records the earlier part
//! as recovered (verify it with both keys, then accept it). Removing lines
//! from the end of a log, back to a checkpoint, leaves an intact chain; the
//! export to a SIEM (`audit_export`, which carries every `seq`) is what
//! shows such a gap. An unsigned log (no key, e.g. a standalone
//! scheduler's `--audit-log`) is chained but makes no authenticity claim and
//! records no ranges.

mod chain;
#[cfg(test)]
mod tests;

use chain::{Lines, check_checkpoint, check_link, hash_range};
use customs_protocol::piece_manifest::{GatewayKey, TrustedGatewayKeys};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::Write;
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
/// The event naming lines found at open that no signed checkpoint covers.
pub const RECOVERED_UNSIGNED: &str = "recovered-unsigned";
/// The event [`AuditLog::close`] writes before its final checkpoint.
pub const CLOSED: &str = "audit-closed";

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
    /// The signing key cannot check the log's own checkpoints.
    #[error("audit log {path}: signing key: {detail}")]
    Key {
        /// The log file.
        path: String,
        /// Why.
        detail: String,
    },
}

/// Lines found in a log when it was opened that no valid signed checkpoint
/// covers: the fields of a `recovered-unsigned` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveredRange {
    /// First line of the range (1-based; the `seq` of an intact chain).
    pub from_seq: u64,
    /// Last line of the range.
    pub to_seq: u64,
    /// Byte offset of the range's first byte in the file.
    pub from_byte: u64,
    /// Byte offset just past the range's last newline.
    pub to_byte: u64,
    /// Hex sha256 of the bytes `from_byte..to_byte`.
    pub sha256: String,
    /// The first chain break inside the range, when the lines do not even
    /// chain (`None`: correctly chained, only unsigned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_break: Option<String>,
}

/// What the writer asks of its thread besides events.
enum Flush {
    /// Sign what is uncovered now.
    Checkpoint,
    /// Write [`CLOSED`] and sign; from then on sign after every batch.
    Close,
}

enum Request {
    Event {
        kind: String,
        fields: serde_json::Map<String, serde_json::Value>,
        done: tokio::sync::oneshot::Sender<Result<u64, String>>,
    },
    Flush {
        what: Flush,
        done: tokio::sync::oneshot::Sender<Result<u64, String>>,
    },
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
    /// Lines this writer appended (for the close event).
    written: u64,
    /// After [`Flush::Close`]: every later batch ends with a checkpoint, so
    /// an event acknowledged during shutdown is covered too.
    sealed: bool,
}

/// What opening found in an existing log.
struct Recovered {
    /// The last line's seq: new lines continue after it.
    seq: u64,
    /// The last complete line's hash.
    head: String,
    /// A last line without a newline: (offset, length, sha256).
    partial: Option<(u64, u64, String)>,
    /// Complete lines after the last valid signed checkpoint (signed logs).
    untrusted: Option<RecoveredRange>,
    /// The first chain break anywhere, for the operator's log.
    first_break: Option<(u64, String)>,
}

/// Reads the whole log back with bounded memory. With `keys` (the writer's
/// own public key), finds the last checkpoint that verifies and names the
/// complete lines after it. A partial last line is cut off.
fn recover(path: &Path, keys: Option<&TrustedGatewayKeys>) -> std::io::Result<Recovered> {
    let mut found = Recovered {
        seq: 0,
        head: GENESIS.to_owned(),
        partial: None,
        untrusted: None,
        first_break: None,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    let mut lines = Lines::new(std::io::BufReader::new(file));
    // The trusted prefix: (lines, bytes) up to the last valid checkpoint.
    let (mut trusted_lines, mut trusted_bytes) = (0u64, 0u64);
    let mut tail_break: Option<String> = None;
    let mut no = 0u64;
    let mut end = 0u64;
    while let Some(line) = lines.next_line()? {
        if !line.complete {
            let sha = hash_range(path, line.offset, line.offset + line.len)?;
            found.partial = Some((line.offset, line.len, sha));
            break;
        }
        no += 1;
        end = line.offset + line.len;
        match check_link(&line, no, &found.head) {
            Ok(v) => {
                let signed = v["kind"] == "checkpoint"
                    && keys.is_some_and(|k| check_checkpoint(&v, no, &found.head, k).is_ok());
                if signed {
                    (trusted_lines, trusted_bytes) = (no, end);
                    tail_break = None;
                    lines.restart_raw_hash();
                }
            }
            Err(reason) => {
                // Carry on after the line as it stands: new lines chain onto
                // what is on disk (seq = line number, as `verify_log` wants)
                // and the break stays visible to `customs audit verify`.
                tail_break.get_or_insert_with(|| format!("line {no}: {reason}"));
                found.first_break.get_or_insert((no, reason));
            }
        }
        found.seq = no;
        found.head = line.hash;
    }
    if let Some((offset, _, _)) = &found.partial {
        // Never acknowledged (its fsync did not complete): cut it off.
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(*offset)?;
        f.sync_all()?;
    }
    if keys.is_some() && no > trusted_lines {
        found.untrusted = Some(RecoveredRange {
            from_seq: trusted_lines + 1,
            to_seq: no,
            from_byte: trusted_bytes,
            to_byte: end,
            sha256: if found.partial.is_some() {
                // The raw hash ran into the partial line: hash the range itself.
                hash_range(path, trusted_bytes, end)?
            } else {
                lines.raw_hash()
            },
            chain_break: tail_break,
        });
    }
    Ok(found)
}

impl Writer {
    fn line(&mut self, kind: &str, fields: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
        self.seq += 1;
        self.written += 1;
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

    /// An event of the writer's own, counted like any other.
    fn own_event(&mut self, kind: &str, event: serde_json::Value) -> Vec<u8> {
        self.since_checkpoint += 1;
        self.line(kind, event.as_object().cloned().unwrap_or_default())
    }

    /// Appends and fsyncs `bytes` (nothing to do when empty).
    fn commit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.file.write_all(bytes)?;
        self.file.sync_data()
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
                        let _ = self.commit(&cp);
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
            let mut acks = Vec::with_capacity(batch.len());
            for r in batch {
                match r {
                    Request::Event { kind, fields, done } => {
                        bytes.extend(self.line(&kind, fields));
                        acks.push((done, self.seq));
                        self.since_checkpoint += 1;
                    }
                    Request::Flush { what, done } => {
                        if matches!(what, Flush::Close) {
                            let n = self.written;
                            bytes.extend(
                                self.own_event(CLOSED, serde_json::json!({"lines_written": n})),
                            );
                            self.sealed = true;
                        }
                        if self.since_checkpoint > 0
                            && let Some(cp) = self.checkpoint()
                        {
                            bytes.extend(cp);
                        }
                        acks.push((done, self.seq));
                    }
                }
            }
            if self.since_checkpoint > 0
                && (self.sealed
                    || self.since_checkpoint >= CHECKPOINT_EVERY_EVENTS
                    || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
                && let Some(cp) = self.checkpoint()
            {
                bytes.extend(cp);
            }
            let result = self.commit(&bytes).map_err(|e| e.to_string());
            for (done, seq) in acks {
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

    /// Opens (or creates) the log; with `key`, checkpoints are signed and
    /// the existing log is verified first (see the module docs): lines no
    /// valid checkpoint covers are named by a `recovered-unsigned` event,
    /// durable before this returns and before any new event is chained.
    pub fn open_with_key(path: &Path, key: Option<Arc<GatewayKey>>) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let own_keys = match &key {
            Some(k) => Some(
                k.public_pem()
                    .and_then(|pem| TrustedGatewayKeys::from_pems([pem.as_str()]))
                    .map_err(|e| AuditError::Key {
                        path: path.display().to_string(),
                        detail: e.to_string(),
                    })?,
            ),
            None => None,
        };
        let found = recover(path, own_keys.as_ref()).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let mut writer = Writer {
            file,
            seq: found.seq,
            head: found.head,
            key,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            written: 0,
            sealed: false,
        };
        if let Some((line, reason)) = &found.first_break {
            tracing::error!(path = %path.display(), line, reason = %reason,
                "audit log chain is broken (`customs audit verify` fails on it); appending after it");
        }
        // Written here, before the writer thread exists, so nothing new can
        // be chained before them.
        let mut bytes = Vec::new();
        if let Some(range) = &found.untrusted {
            tracing::warn!(path = %path.display(), from_seq = range.from_seq, to_seq = range.to_seq,
                from_byte = range.from_byte, to_byte = range.to_byte, sha256 = %range.sha256,
                chain_break = ?range.chain_break,
                "audit log lines not covered by a signed checkpoint: recorded as recovered-unsigned, not adopted");
            let event = serde_json::to_value(range).map_err(|e| io(std::io::Error::other(e)))?;
            bytes.extend(writer.own_event(RECOVERED_UNSIGNED, event));
        }
        if let Some((offset, dropped, sha256)) = &found.partial {
            tracing::warn!(path = %path.display(), dropped_bytes = dropped, "audit log ended in a partial (never acknowledged) line; cut off");
            bytes.extend(writer.own_event(
                "audit-recovered",
                serde_json::json!({"dropped_bytes": dropped, "offset": offset, "sha256": sha256}),
            ));
        }
        if writer.since_checkpoint > 0
            && let Some(cp) = writer.checkpoint()
        {
            bytes.extend(cp);
        }
        writer.commit(&bytes).map_err(io)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            tx,
        })
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
        self.send(
            Request::Event {
                kind: kind.to_owned(),
                fields,
                done,
            },
            wait,
        )
        .await
    }

    /// Signs everything written so far now, without waiting for the next
    /// periodic checkpoint; returns once it is durable. A no-op for an
    /// unsigned log or when nothing is uncovered.
    pub async fn checkpoint_now(&self) -> Result<(), AuditError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(
            Request::Flush {
                what: Flush::Checkpoint,
                done,
            },
            wait,
        )
        .await
        .map(|_| ())
    }

    /// Ends this run of the log: appends an `audit-closed` event and a
    /// signed checkpoint covering every event written so far, durable
    /// before it returns. Called on shutdown (SIGTERM) so a clean stop
    /// leaves nothing for the next start to record as recovered. Events
    /// still arriving afterwards (tasks draining) are accepted, each batch
    /// with its own checkpoint.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.send(
            Request::Flush {
                what: Flush::Close,
                done,
            },
            wait,
        )
        .await
        .map(|_| ())
    }

    async fn send(
        &self,
        request: Request,
        wait: tokio::sync::oneshot::Receiver<Result<u64, String>>,
    ) -> Result<u64, AuditError> {
        self.tx
            .send(request)
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

/// A `recovered-unsigned` event found in a log, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The line of the `recovered-unsigned` event.
    pub line: u64,
    /// The range it names.
    pub range: RecoveredRange,
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
    /// Ranges the writer found unsigned when it opened the log: intact,
    /// but not vouched for by any checkpoint of the key holder.
    pub recovered: Vec<Recovery>,
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

/// Checks sequence numbers, the hash chain and every checkpoint signature,
/// and collects the `recovered-unsigned` ranges (each checked against the
/// bytes it names). `keys` empty: checkpoints are reported as unverifiable
/// (a break). A trailing run of events after the last checkpoint is
/// counted in [`ChainReport::uncovered`], not a break.
pub fn verify_log(path: &Path, keys: &TrustedGatewayKeys) -> Result<ChainReport, ChainBreak> {
    let brk = |line: u64, reason: String| ChainBreak {
        path: path.display().to_string(),
        line,
        reason,
    };
    let f = std::fs::File::open(path).map_err(|e| brk(0, e.to_string()))?;
    let mut lines = Lines::new(std::io::BufReader::new(f));
    let mut head = GENESIS.to_owned();
    let mut report = ChainReport {
        lines: 0,
        checkpoints: 0,
        uncovered: 0,
        recovered: Vec::new(),
    };
    loop {
        let no = report.lines + 1;
        let Some(line) = lines.next_line().map_err(|e| brk(no, e.to_string()))? else {
            break;
        };
        if !line.complete {
            return Err(brk(no, "truncated: the last line is incomplete".into()));
        }
        let v = check_link(&line, no, &head).map_err(|reason| brk(no, reason))?;
        if v["kind"] == "checkpoint" {
            check_checkpoint(&v, no, &head, keys).map_err(|reason| brk(no, reason))?;
            report.checkpoints += 1;
            report.uncovered = 0;
        } else {
            report.uncovered += 1;
        }
        if v["kind"] == RECOVERED_UNSIGNED {
            let range = check_recovered(path, &v, no, line.offset).map_err(|r| brk(no, r))?;
            report.recovered.push(Recovery { line: no, range });
        }
        head = line.hash;
        report.lines = no;
    }
    Ok(report)
}

/// A `recovered-unsigned` event at line `no` (starting at byte `at`) must
/// name lines before it, and the sha256 it gives must be that of the bytes
/// it names: a marker that misdescribes its range is a break.
fn check_recovered(
    path: &Path,
    v: &serde_json::Value,
    no: u64,
    at: u64,
) -> Result<RecoveredRange, String> {
    let range: RecoveredRange = serde_json::from_value(v.clone())
        .map_err(|e| format!("{RECOVERED_UNSIGNED} event is malformed: {e}"))?;
    if range.from_seq == 0
        || range.from_seq > range.to_seq
        || range.to_seq >= no
        || range.from_byte > range.to_byte
        || range.to_byte > at
    {
        return Err(format!(
            "{RECOVERED_UNSIGNED} event names lines {}..{} (bytes {}..{}), not a range before it",
            range.from_seq, range.to_seq, range.from_byte, range.to_byte
        ));
    }
    let actual = hash_range(path, range.from_byte, range.to_byte)
        .map_err(|e| format!("{RECOVERED_UNSIGNED} range: {e}"))?;
    if actual != range.sha256 {
        return Err(format!(
            "{RECOVERED_UNSIGNED} event's sha256 does not match bytes {}..{} (the recovered lines were changed)",
            range.from_byte, range.to_byte
        ));
    }
    Ok(range)
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
