//! `customs audit verify`: checks the audit logs' hash chains and signed
//! checkpoints, so anyone holding the gateway's public key can tell whether
//! the log was edited, had events deleted or was truncated.

use anyhow::Context;
use customs_protocol::piece_manifest::TrustedGatewayKeys;
use customs_store::audit::verify_log;
use std::path::PathBuf;

/// Subcommands.
#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Verify every audit log under DATA_DIR/audit (exit 1 on any break).
    Verify {
        /// The gateway's (or `customs up`'s) data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Gateway public key(s) (PEM); default DATA_DIR/gateway-key.pub.
        #[arg(long)]
        key: Vec<PathBuf>,
    },
}

/// Ok(true) when every log verifies.
pub fn run(cmd: AuditCommand) -> anyhow::Result<bool> {
    let AuditCommand::Verify { data_dir, key } = cmd;
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
        match verify_log(log, &trusted) {
            Ok(r) => println!(
                "ok   {}: {} lines, {} signed checkpoints, {} events after the last checkpoint",
                log.display(),
                r.lines,
                r.checkpoints,
                r.uncovered
            ),
            Err(e) => {
                ok = false;
                println!("FAIL {e}");
            }
        }
    }
    Ok(ok)
}
