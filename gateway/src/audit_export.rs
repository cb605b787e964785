//! Audit export to a SIEM: syslog (RFC 5424 over `tcp://` with LF framing,
//! `tls://` with octet counting, `udp://` best effort), Splunk HEC, a
//! generic HTTP(S) endpoint, or JSON lines to a file or stdout.
//!
//! Each exporter tails the local audit log (which is durable first) from a
//! persistent cursor and advances the cursor only after the sink took the
//! batch (HTTP 2xx, file fsync, socket write), so delivery is at-least-once
//! across SIEM outages and restarts. Plain TCP syslog has no
//! acknowledgement: after every (re)connect the last [`RESEND_WINDOW`]
//! events are sent again and receivers de-duplicate by the `seq` carried
//! in each message's structured data.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Events re-sent after a TCP/TLS (re)connect.
pub const RESEND_WINDOW: usize = 100;
/// Most events per batch.
const BATCH: usize = 500;
/// Longest backoff between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Where events go.
#[derive(Clone, PartialEq, Eq)]
pub enum Sink {
    /// RFC 5424 over TCP, one message per LF-terminated line (RFC 6587).
    SyslogTcp(String),
    /// RFC 5424 over TLS with octet counting (RFC 5425).
    SyslogTls(String),
    /// RFC 5424, one datagram per message; best effort.
    SyslogUdp(String),
    /// Splunk HTTP Event Collector (`Authorization: Splunk TOKEN`).
    Hec {
        /// Collector URL (…/services/collector/event).
        url: String,
        /// HEC token.
        token: String,
    },
    /// A JSON array of events POSTed to a URL.
    Http(String),
    /// JSON lines appended to a file (`-`: stdout).
    File(PathBuf),
}

/// Why an export target is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The target URL does not parse.
    #[error(
        "audit export target {0:?}: expected tcp://, udp://, tls://HOST:PORT, http(s)://URL or a file"
    )]
    BadTarget(String),
}

/// Written by hand so the HEC token never reaches a log line.
impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sink::SyslogTcp(a) => write!(f, "tcp://{a}"),
            Sink::SyslogTls(a) => write!(f, "tls://{a}"),
            Sink::SyslogUdp(a) => write!(f, "udp://{a}"),
            Sink::Hec { url, .. } => write!(f, "hec {url} (token redacted)"),
            Sink::Http(u) => write!(f, "http {u}"),
            Sink::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl Sink {
    /// Parses `tcp://H:P`, `udp://H:P`, `tls://H:P`.
    pub fn syslog(target: &str) -> Result<Sink, ExportError> {
        let bad = || ExportError::BadTarget(target.to_owned());
        let (scheme, addr) = target.split_once("://").ok_or_else(bad)?;
        if addr.is_empty() || !addr.contains(':') {
            return Err(bad());
        }
        match scheme {
            "tcp" => Ok(Sink::SyslogTcp(addr.to_owned())),
            "tls" => Ok(Sink::SyslogTls(addr.to_owned())),
            "udp" => Ok(Sink::SyslogUdp(addr.to_owned())),
            _ => Err(bad()),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Sink::SyslogTcp(_) => "syslog-tcp",
            Sink::SyslogTls(_) => "syslog-tls",
            Sink::SyslogUdp(_) => "syslog-udp",
            Sink::Hec { .. } => "hec",
            Sink::Http(_) => "http",
            Sink::File(_) => "file",
        }
    }
}

/// Payload format (`json`, `cef`, `ocsf` in files and flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The audit line as written (Customs JSON).
    Json,
    /// ArcSight CEF (syslog only).
    Cef,
    /// OCSF 1.1: decisions as Compliance Findings, the rest as Base Events,
    /// the original event kept under `unmapped`.
    Ocsf,
}

/// How far one exporter is behind its log, for the
/// `customs_audit_export_lag_bytes` gauge (read at scrape time).
#[derive(Debug, Clone)]
pub struct ExportProgress {
    /// The sink's kind (`syslog-tcp`, `hec`, …).
    pub sink: &'static str,
    /// The log it exports.
    pub log: PathBuf,
    /// The cursor: bytes of the log delivered so far.
    pub delivered: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ExportProgress {
    /// Bytes written to the log but not yet delivered.
    pub fn lag_bytes(&self) -> u64 {
        let len = std::fs::metadata(&self.log).map_or(0, |m| m.len());
        len.saturating_sub(self.delivered.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// One exporter: a log, a sink, a cursor.
pub struct Exporter {
    /// Also names the log this exporter reads.
    progress: ExportProgress,
    sink: Sink,
    format: Format,
    cursor_path: PathBuf,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    http: reqwest::Client,
    hostname: String,
}

#[derive(serde::Serialize, serde::Deserialize, Default, Clone)]
struct Cursor {
    /// Byte offset of the next line to send.
    offset: u64,
    /// Offsets of the last lines sent (oldest first), for the resend window.
    #[serde(default)]
    window: VecDeque<u64>,
}

/// One audit line read from the log.
struct Line {
    offset: u64,
    end: u64,
    text: String,
}

impl Exporter {
    /// An exporter of `log` to `sink`, its cursor beside the log.
    pub fn new(
        log: &Path,
        sink: Sink,
        format: Format,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Self {
        let cursor_path = log.with_extension(format!("{}.cursor", sink.name()));
        let hostname = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "customs".to_owned());
        let progress = ExportProgress {
            sink: sink.name(),
            log: log.to_path_buf(),
            delivered: std::sync::Arc::default(),
        };
        Exporter {
            progress,
            sink,
            format,
            cursor_path,
            tls,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            hostname,
        }
    }

    /// Its progress, for the metrics.
    pub fn progress(&self) -> ExportProgress {
        self.progress.clone()
    }

    fn load_cursor(&self) -> Cursor {
        let c: Cursor = std::fs::read(&self.cursor_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        self.progress
            .delivered
            .store(c.offset, std::sync::atomic::Ordering::Relaxed);
        c
    }

    fn save_cursor(&self, c: &Cursor) -> std::io::Result<()> {
        let tmp = self.cursor_path.with_extension("tmp");
        let bytes = serde_json::to_vec(c).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.cursor_path)
    }

    /// Reads up to `max` complete lines from `offset`.
    async fn read_from(&self, offset: u64, max: usize) -> std::io::Result<Vec<Line>> {
        let mut f = match tokio::fs::File::open(&self.progress.log).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let mut r = tokio::io::BufReader::new(f);
        let mut out = Vec::new();
        let mut pos = offset;
        let mut buf = String::new();
        while out.len() < max {
            buf.clear();
            let n = r.read_line(&mut buf).await?;
            if n == 0 || !buf.ends_with('\n') {
                break;
            }
            out.push(Line {
                offset: pos,
                end: pos + n as u64,
                text: buf.trim_end().to_owned(),
            });
            pos += n as u64;
        }
        Ok(out)
    }

    /// The event as a JSON sink carries it.
    fn payload(&self, line: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        match self.format {
            Format::Ocsf => ocsf(&v),
            Format::Json | Format::Cef => v,
        }
    }

    /// RFC 5424: `<PRI>1 TIME HOST customs - KIND [customs@32473 seq="N"] MSG`.
    fn syslog_message(&self, line: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let kind = v["kind"].as_str().unwrap_or("event");
        let denied = v["verdict"] == "deny"
            || kind == "policy-refused"
            || kind == "bad-piece"
            || v["state"] == "FAILURE";
        // Facility 13 (log audit); severity 4 (warning) or 6 (informational).
        let pri = 13 * 8 + if denied { 4 } else { 6 };
        let time = v["time"].as_str().unwrap_or("-");
        let seq = v["seq"].as_u64().unwrap_or(0);
        let msgid: String = kind
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect();
        let msg = match self.format {
            Format::Json => line.to_owned(),
            Format::Cef => cef(&v, kind, denied),
            Format::Ocsf => ocsf(&v).to_string(),
        };
        format!(
            "<{pri}>1 {time} {} customs - {msgid} [customs@32473 seq=\"{seq}\"] {msg}",
            self.hostname
        )
    }

    /// Runs until `shutdown`, then delivers what the log already holds
    /// and returns (at once if the sink fails then).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut cursor = self.load_cursor();
        let mut conn: Option<Conn> = None;
        let mut backoff = Duration::from_millis(200);
        tracing::info!(sink = ?self.sink, log = %self.progress.log.display(), offset = cursor.offset, "audit export started");
        // After `shutdown` the loop still delivers what is already written
        // (the final checkpoint among it) and returns once caught up or at
        // the first failure; the cursor resumes the rest at the next start.
        loop {
            // A fresh stream connection first re-sends the recent window.
            let needs_window =
                conn.is_none() && matches!(self.sink, Sink::SyslogTcp(_) | Sink::SyslogTls(_));
            let from = if needs_window {
                cursor.window.front().copied().unwrap_or(cursor.offset)
            } else {
                cursor.offset
            };
            let lines = match self.read_from(from, BATCH + RESEND_WINDOW).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "audit export: reading the log failed");
                    Vec::new()
                }
            };
            let fresh = lines.iter().any(|l| l.offset >= cursor.offset);
            if !fresh {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
                continue;
            }
            match self.send(&mut conn, &lines).await {
                Ok(()) => {
                    for l in lines.iter().filter(|l| l.offset >= cursor.offset) {
                        cursor.window.push_back(l.offset);
                        while cursor.window.len() > RESEND_WINDOW {
                            cursor.window.pop_front();
                        }
                    }
                    if let Some(last) = lines.last() {
                        cursor.offset = cursor.offset.max(last.end);
                    }
                    self.progress
                        .delivered
                        .store(cursor.offset, std::sync::atomic::Ordering::Relaxed);
                    if let Err(e) = self.save_cursor(&cursor) {
                        tracing::error!(error = %e, "audit export: cursor not saved");
                    }
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    conn = None;
                    tracing::warn!(sink = ?self.sink, error = %e, retry_in = ?backoff, "audit export failed; will retry");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn send(&self, conn: &mut Option<Conn>, lines: &[Line]) -> Result<(), String> {
        match &self.sink {
            Sink::SyslogTcp(addr) | Sink::SyslogTls(addr) => {
                if conn.is_none() {
                    *conn = Some(self.connect(addr).await?);
                }
                let Some(c) = conn.as_mut() else {
                    return Err("not connected".into());
                };
                let mut out = Vec::new();
                for l in lines {
                    let m = self.syslog_message(&l.text);
                    if matches!(self.sink, Sink::SyslogTls(_)) {
                        out.extend(format!("{} {m}", m.len()).into_bytes());
                    } else {
                        out.extend(m.into_bytes());
                        out.push(b'\n');
                    }
                }
                c.write_all(&out).await.map_err(|e| e.to_string())
            }
            Sink::SyslogUdp(addr) => {
                let sock = tokio::net::UdpSocket::bind("0.0.0.0:0")
                    .await
                    .map_err(|e| e.to_string())?;
                for l in lines {
                    let m = self.syslog_message(&l.text);
                    sock.send_to(m.as_bytes(), addr.as_str())
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Sink::Hec { url, token } => {
                let mut body = String::new();
                for l in lines {
                    let v = self.payload(&l.text);
                    body.push_str(
                        &serde_json::json!({
                            "sourcetype": "customs:audit",
                            "source": "customs",
                            "host": self.hostname,
                            "event": v,
                        })
                        .to_string(),
                    );
                }
                let resp = self
                    .http
                    .post(url)
                    .header("Authorization", format!("Splunk {token}"))
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("HEC answered {}", resp.status()))
                }
            }
            Sink::Http(url) => {
                let events: Vec<serde_json::Value> =
                    lines.iter().map(|l| self.payload(&l.text)).collect();
                let resp = self
                    .http
                    .post(url)
                    .json(&events)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("{url} answered {}", resp.status()))
                }
            }
            Sink::File(path) => {
                let mut out = String::new();
                for l in lines {
                    match self.format {
                        Format::Ocsf => out.push_str(&self.payload(&l.text).to_string()),
                        Format::Json | Format::Cef => out.push_str(&l.text),
                    }
                    out.push('\n');
                }
                if path.as_os_str() == "-" {
                    let mut stdout = tokio::io::stdout();
                    stdout
                        .write_all(out.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    stdout.flush().await.map_err(|e| e.to_string())
                } else {
                    let mut f = tokio::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .await
                        .map_err(|e| e.to_string())?;
                    f.write_all(out.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    f.sync_data().await.map_err(|e| e.to_string())
                }
            }
        }
    }

    async fn connect(&self, addr: &str) -> Result<Conn, String> {
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        .map_err(|_| format!("connecting to {addr}: timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
        match &self.sink {
            Sink::SyslogTls(_) => {
                let config = self
                    .tls
                    .clone()
                    .ok_or_else(|| "tls:// needs --audit-syslog-ca".to_owned())?;
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
                let name = rustls::pki_types::ServerName::try_from(host)
                    .map_err(|e| format!("{addr}: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS to {addr}: {e}"))?;
                Ok(Conn::Tls(Box::new(tls)))
            }
            _ => Ok(Conn::Tcp(tcp)),
        }
    }
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl Conn {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(b).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(b).await?;
                s.flush().await
            }
        }
    }
}

/// Unix milliseconds of an RFC 3339 `YYYY-MM-DDTHH:MM:SSZ` time.
fn epoch_ms(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() != 20 || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant), the inverse of the log's formatter.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

/// OCSF 1.1. A policy decision is a Compliance Finding (class 2003,
/// category Findings): the image is the resource, the policy rules are the
/// compliance check. Everything else is a Base Event (class 0). The
/// original event is kept under `unmapped`.
fn ocsf(v: &serde_json::Value) -> serde_json::Value {
    let kind = v["kind"].as_str().unwrap_or("event");
    let time = v["time"].as_str().and_then(epoch_ms).unwrap_or(0);
    let metadata = serde_json::json!({
        "version": "1.1.0",
        "product": {"name": "Customs", "vendor_name": "Customs", "version": env!("CARGO_PKG_VERSION")},
        "uid": v["seq"].to_string(),
        "log_name": "audit",
    });
    if kind == "decision" {
        let allowed = v["verdict"] == "allow";
        let warned = allowed && v["mode"] != "enforce";
        let (status_id, status) = match (allowed, warned) {
            (true, false) => (1, "Pass"),
            (true, true) => (2, "Warning"),
            (false, _) => (3, "Fail"),
        };
        return serde_json::json!({
            "class_uid": 2003,
            "class_name": "Compliance Finding",
            "category_uid": 2,
            "category_name": "Findings",
            "activity_id": 1,
            "activity_name": "Create",
            "type_uid": 200301,
            "time": time,
            "severity_id": if allowed { 1 } else { 4 },
            "status_id": 1,
            "message": v["reasons"].as_array().map(|r| r.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join("; ")).unwrap_or_default(),
            "metadata": metadata,
            "finding_info": {
                "uid": v["seq"].to_string(),
                "title": format!("admission {} for {}", v["verdict"].as_str().unwrap_or("?"), v["image"].as_str().unwrap_or("?")),
                "types": ["Image admission"],
            },
            "compliance": {
                "status_id": status_id,
                "status": status,
                "standards": [format!("customs policy revision {}", v["revision"].as_str().unwrap_or("?"))],
            },
            "resources": [{
                "name": v["image"],
                "uid": v["digest"],
                "type": "Container Image",
            }],
            "unmapped": v,
        });
    }
    serde_json::json!({
        "class_uid": 0,
        "class_name": "Base Event",
        "category_uid": 0,
        "activity_id": 0,
        "type_uid": 0,
        "time": time,
        "severity_id": 1,
        "message": kind,
        "metadata": metadata,
        "unmapped": v,
    })
}

/// CEF escaping of header fields (`|` and `\`).
fn cef_header(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|")
}

/// CEF escaping of extension values (`=`, `\` and newlines).
fn cef_value(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

/// `CEF:0|Customs|customs|VERSION|KIND|NAME|SEVERITY|ext…`.
fn cef(v: &serde_json::Value, kind: &str, denied: bool) -> String {
    let name = match (kind, v["verdict"].as_str()) {
        ("decision", Some(verdict)) => format!("admission {verdict}"),
        _ => kind.to_owned(),
    };
    let mut ext = vec![format!("cs1Label=seq cs1={}", v["seq"])];
    if let Some(i) = v["image"].as_str() {
        ext.push(format!("cs2Label=image cs2={}", cef_value(i)));
    }
    if let Some(d) = v["digest"].as_str() {
        ext.push(format!("cs3Label=digest cs3={}", cef_value(d)));
    }
    if let Some(r) = v["revision"].as_str() {
        ext.push(format!("cs4Label=revision cs4={}", cef_value(r)));
    }
    if let Some(reasons) = v["reasons"].as_array() {
        let text: Vec<&str> = reasons.iter().filter_map(|r| r.as_str()).collect();
        ext.push(format!("msg={}", cef_value(&text.join("; "))));
    }
    format!(
        "CEF:0|Customs|customs|{}|{}|{}|{}|{}",
        env!("CARGO_PKG_VERSION"),
        cef_header(kind),
        cef_header(&name),
        if denied { 7 } else { 3 },
        ext.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ocsf_maps_decisions_to_compliance_findings() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"seq":3,"time":"2024-03-21T10:34:04Z","kind":"decision","verdict":"deny","mode":"enforce","image":"r/a","digest":"sha256:x","revision":"abc","reasons":["policy p: signatures: none"]}"#,
        )
        .unwrap();
        let o = ocsf(&v);
        assert_eq!(o["class_uid"], 2003);
        assert_eq!(o["compliance"]["status"], "Fail");
        assert_eq!(o["time"], 1_711_017_244_000i64);
        assert_eq!(o["resources"][0]["name"], "r/a");
        assert_eq!(o["unmapped"]["seq"], 3);
        let other = ocsf(&serde_json::json!({"kind": "preheat", "seq": 4}));
        assert_eq!(other["class_uid"], 0);
        assert_eq!(epoch_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(epoch_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(epoch_ms("bad"), None);
    }

    #[test]
    fn targets_parse_and_bad_ones_are_refused() {
        assert_eq!(
            Sink::syslog("tcp://127.0.0.1:514").unwrap(),
            Sink::SyslogTcp("127.0.0.1:514".into())
        );
        assert!(matches!(
            Sink::syslog("udp://h:1").unwrap(),
            Sink::SyslogUdp(_)
        ));
        for bad in ["127.0.0.1:514", "http://x:1", "tcp://", "tcp://nohost"] {
            assert!(Sink::syslog(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn syslog_messages_are_rfc5424_with_the_seq() {
        let e = Exporter::new(
            Path::new("/nonexistent/audit.jsonl"),
            Sink::SyslogUdp("h:1".into()),
            Format::Json,
            None,
        );
        let line = r#"{"seq":7,"prev":"00","time":"2026-11-28T10:00:00Z","kind":"decision","verdict":"deny"}"#;
        let m = e.syslog_message(line);
        assert!(m.starts_with("<108>1 2026-11-28T10:00:00Z "), "{m}");
        assert!(
            m.contains(" customs - decision [customs@32473 seq=\"7\"] {"),
            "{m}"
        );
        let e = Exporter::new(
            Path::new("/x"),
            Sink::SyslogUdp("h:1".into()),
            Format::Cef,
            None,
        );
        let line = r#"{"seq":8,"time":"t","kind":"decision","verdict":"allow","image":"r/a|b","reasons":["x=y"]}"#;
        let m = e.syslog_message(line);
        assert!(m.contains("CEF:0|Customs|customs|"), "{m}");
        assert!(
            m.contains("|decision|admission allow|3|cs1Label=seq cs1=8"),
            "{m}"
        );
        assert!(m.contains("cs2=r/a|b") && m.contains("msg=x\\=y"), "{m}");
    }
}
