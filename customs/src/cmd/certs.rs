//! `customs certs`: a development CA and component certificates.

use clap::Args;
use customs_tls::{Role, write_dev_pki};
use std::path::PathBuf;

/// `customs certs` flags.
#[derive(Args)]
pub struct CertsArgs {
    /// Output folder (the CA is created there once and reused).
    #[arg(long)]
    out: PathBuf,
    /// Certificates to issue, as NAME:ROLE (role: gateway, peer, scheduler). Repeatable.
    #[arg(long = "issue", value_name = "NAME:ROLE", required = true)]
    issue: Vec<String>,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let mut names = Vec::new();
    for spec in &args.issue {
        let (name, role) = spec
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--issue {spec:?} must be NAME:ROLE"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            anyhow::bail!("certificate name {name:?} must be letters, digits and '-'");
        }
        let role = match role {
            "gateway" => Role::Gateway,
            "peer" => Role::Peer,
            "scheduler" => Role::Scheduler,
            other => anyhow::bail!("unknown role {other:?} (gateway, peer, scheduler)"),
        };
        names.push((name, role));
    }
    write_dev_pki(&args.out, &names)?;
    for (n, _) in &names {
        println!("wrote {}/{n}.pem and {n}.key", args.out.display());
    }
    Ok(())
}
