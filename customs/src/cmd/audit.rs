//! `customs audit verify`: checks the audit logs' hash chains and signed
//! checkpoints, so anyone holding the gateway's public key can tell whether
//! the log was edited, had events deleted or was truncated, and which lines
//! the gateway found unsigned when it started (`recovered-unsigned`).
//!
//! Exit 0: every chain is intact and nothing recovered is left unaccepted
//! (events after the last checkpoint are reported: the gateway may be
//! running, or stopped without its shutdown checkpoint). Exit 1: a break,
//! or a `recovered-unsigned` range without `--accept-recovered`.

use anyhow::Context;
use customs_protocol::piece_manifest::TrustedGatewayKeys;
use customs_store::audit::{RECOVERED_UNSIGNED, verify_log};
use std::path::PathBuf;

/// Subcommands.
#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Verify every audit log under DATA_DIR/audit (exit 1 on any break or
    /// unaccepted recovered-unsigned range).
    Verify {
        /// The gateway's (or `customs up`'s) data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Gateway public key(s) (PEM); default DATA_DIR/gateway-key.pub.
        #[arg(long)]
        key: Vec<PathBuf>,
        /// Exit 0 despite recovered-unsigned ranges (after checking the
        /// lines they name: written while the gateway was down, or
        /// acknowledged just before a crash).
        #[arg(long)]
        accept_recovered: bool,
    },
}

/// Ok(true) when every log verifies.
pub fn run(cmd: AuditCommand) -> anyhow::Result<bool> {
    let AuditCommand::Verify {
        data_dir,
        key,
        accept_recovered,
    } = cmd;
    let keys = if key.is_empty() {
        vec![data_dir.join("gateway-key.pub")]
    } else {
        key
    };
    let pems: Vec<String> = keys
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    let trusted = TrustedGatewayKeys::from_pems(pems.iter().map(String::as_str))?;
    let mut logs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("audit"))
        .with_context(|| format!("reading {}/audit", data_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    logs.sort();
    if logs.is_empty() {
        anyhow::bail!("no audit log under {}/audit", data_dir.display());
    }
    let mut ok = true;
    for log in &logs {
        let r = match verify_log(log, &trusted) {
            Ok(r) => r,
            Err(e) => {
                ok = false;
                println!("FAIL {e}");
                continue;
            }
        };
        let unaccepted = !r.recovered.is_empty() && !accept_recovered;
        println!(
            "{} {}: {} lines, {} signed checkpoints, {} events after the last checkpoint",
            if unaccepted { "FAIL" } else { "ok  " },
            log.display(),
            r.lines,
            r.checkpoints,
            r.uncovered
        );
        if r.uncovered > 0 {
            println!(
                "     the last {} events are not signed yet: the writer is running, or stopped without its shutdown checkpoint",
                r.uncovered
            );
        }
        for rec in &r.recovered {
            let range = &rec.range;
            println!(
                "     {RECOVERED_UNSIGNED} range: seq {}..{} (bytes {}..{}, sha256 {}) found unsigned when the log was opened, recorded at line {}{}{}",
                range.from_seq,
                range.to_seq,
                range.from_byte,
                range.to_byte,
                range.sha256,
                rec.line,
                range
                    .chain_break
                    .as_deref()
                    .map(|b| format!("; chain break: {b}"))
                    .unwrap_or_default(),
                if accept_recovered { " (accepted)" } else { "" },
            );
        }
        if unaccepted {
            ok = false;
            println!(
                "     no signed checkpoint vouches for those lines: check them, then run again with --accept-recovered"
            );
        }
    }
    Ok(ok)
}
