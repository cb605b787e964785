//! Reading a log back: a bounded line reader and the per-line chain checks
//! shared by the writer's recovery at open ([`super::AuditLog::open_with_key`])
//! and by [`super::verify_log`], so the two can never disagree about what an
//! intact line or a valid checkpoint is.

use customs_protocol::piece_manifest::TrustedGatewayKeys;
use sha2::{Digest as _, Sha256};
use std::io::BufRead;

/// Longest line kept in memory while reading a log back. Customs' own
/// events are well under 64 KiB (aggregates are capped by entry count); a
/// longer line can only be damage or forgery, so it is hashed as it streams
/// by (the chain still needs its hash) and reported, never buffered whole:
/// a hostile multi-gigabyte line cannot exhaust memory at start or in
/// `customs audit verify`.
pub(super) const MAX_LINE_BYTES: usize = 1 << 20;

/// One line as it is on disk.
pub(super) struct RawLine {
    /// Byte offset of its first byte.
    pub offset: u64,
    /// Its length on disk, newline included.
    pub len: u64,
    /// Hex sha256 of the line without its newline (what the next `prev` names).
    pub hash: String,
    /// The bytes without the newline; `None` when over [`MAX_LINE_BYTES`].
    pub text: Option<Vec<u8>>,
    /// False for a last line without a newline (a write that never completed).
    pub complete: bool,
}

/// Streams the lines of a log with bounded memory, and keeps a running
/// sha256 of every raw byte read since the last [`Lines::restart_raw_hash`]
/// (the hash a `recovered-unsigned` event names).
pub(super) struct Lines<R> {
    reader: R,
    offset: u64,
    raw: Sha256,
}

impl<R: BufRead> Lines<R> {
    pub(super) fn new(reader: R) -> Self {
        Lines {
            reader,
            offset: 0,
            raw: Sha256::new(),
        }
    }

    /// Forgets the raw bytes hashed so far.
    pub(super) fn restart_raw_hash(&mut self) {
        self.raw = Sha256::new();
    }

    /// Hex sha256 of the raw bytes since the last restart.
    pub(super) fn raw_hash(&self) -> String {
        hex::encode(self.raw.clone().finalize())
    }

    /// The next line, or `None` at the end of the file.
    pub(super) fn next_line(&mut self) -> std::io::Result<Option<RawLine>> {
        let offset = self.offset;
        let mut line_hash = Sha256::new();
        let mut text = Some(Vec::new());
        let mut len = 0u64;
        let mut complete = false;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let body = &buf[..newline.unwrap_or(buf.len())];
            line_hash.update(body);
            if let Some(t) = &mut text {
                if t.len() + body.len() > MAX_LINE_BYTES {
                    text = None;
                } else {
                    t.extend_from_slice(body);
                }
            }
            let used = body.len() + usize::from(newline.is_some());
            self.raw.update(&buf[..used]);
            len += used as u64;
            self.reader.consume(used);
            if newline.is_some() {
                complete = true;
                break;
            }
        }
        if len == 0 {
            return Ok(None);
        }
        self.offset += len;
        Ok(Some(RawLine {
            offset,
            len,
            hash: hex::encode(line_hash.finalize()),
            text,
            complete,
        }))
    }
}

/// Parses a complete line and checks that it continues the chain: `seq` is
/// `expected_seq` and `prev` is `head`, the hash of the line before it.
/// On a break, the reason.
pub(super) fn check_link(
    line: &RawLine,
    expected_seq: u64,
    head: &str,
) -> Result<serde_json::Value, String> {
    let Some(text) = &line.text else {
        return Err(format!(
            "line longer than {MAX_LINE_BYTES} bytes (not written by Customs)"
        ));
    };
    let v: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    if v["seq"].as_u64() != Some(expected_seq) {
        return Err(format!(
            "sequence {} where {expected_seq} was expected (an event was deleted or inserted)",
            v["seq"]
        ));
    }
    if v["prev"].as_str() != Some(head) {
        return Err("prev does not match the previous line's hash (an earlier line was edited, deleted or reordered)".into());
    }
    Ok(v)
}

/// Checks a `checkpoint` line that [`check_link`] accepted at `seq`: its
/// `head` is the chain's and its signature over `seq:head` verifies with one
/// of `keys`.
pub(super) fn check_checkpoint(
    v: &serde_json::Value,
    seq: u64,
    head: &str,
    keys: &TrustedGatewayKeys,
) -> Result<(), String> {
    if v["head"].as_str() != Some(head) {
        return Err("checkpoint head does not match the chain".into());
    }
    let key_id = v["key_id"].as_str().unwrap_or_default();
    let sig = hex::decode(v["signature"].as_str().unwrap_or_default())
        .map_err(|e| format!("checkpoint signature: {e}"))?;
    keys.verify_checkpoint(key_id, format!("{seq}:{head}").as_bytes(), &sig)
        .map_err(|e| format!("checkpoint signature: {e}"))
}

/// Hex sha256 of the bytes `[from, to)` of `file`, streamed.
pub(super) fn hash_range(file: &std::path::Path, from: u64, to: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(from))?;
    let mut left = to.saturating_sub(from);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = f.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the range ends past the end of the file",
            ));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hex::encode(h.finalize()))
}
