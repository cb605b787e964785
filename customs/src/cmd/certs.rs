//! `customs certs`: a development CA and component certificates.
//!
//! Each certificate carries exactly two names: its role
//! (`<role>.customs.internal`) and its node identity
//! (`<name>.node.customs.internal`). `--san NAME=DNS,IP,...` adds public
//! serving names to one certificate (the gateway's HTTPS endpoint for
//! containerd); nothing else ever names a location.

use anyhow::Context;
use clap::Args;
use customs_tls::{CertRequest, ExtraName, Role, write_pki};
use std::collections::BTreeMap;
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
    /// Extra DNS names or IP addresses for the certificate NAME, as
    /// NAME=SAN[,SAN...] (e.g. `gw=registry.example,10.0.0.1` for the
    /// gateway's `--listen-tls-cert`). Repeatable.
    #[arg(long = "san", value_name = "NAME=SAN[,SAN...]")]
    san: Vec<String>,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let mut extra: BTreeMap<&str, Vec<ExtraName>> = BTreeMap::new();
    for spec in &args.san {
        let (name, sans) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--san {spec:?} must be NAME=SAN[,SAN...]"))?;
        for san in sans.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parsed: ExtraName = san.parse().with_context(|| format!("--san {spec:?}"))?;
            extra.entry(name).or_default().push(parsed);
        }
    }
    let mut requests = Vec::new();
    for spec in &args.issue {
        let (name, role) = spec
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--issue {spec:?} must be NAME:ROLE"))?;
        if !customs_tls::valid_id(name) {
            anyhow::bail!("certificate name {name:?} must be letters, digits and '-'");
        }
        let role: Role = role.parse()?;
        requests.push(CertRequest {
            id: name.to_owned(),
            role,
            extra: extra.remove(name).unwrap_or_default(),
        });
    }
    if let Some(name) = extra.keys().next() {
        anyhow::bail!("--san names {name:?}, which no --issue issues");
    }
    write_pki(&args.out, &requests)?;
    for r in &requests {
        println!(
            "wrote {dir}/{n}.pem and {n}.key ({role}, node {n})",
            dir = args.out.display(),
            n = r.id,
            role = r.role.name()
        );
    }
    Ok(())
}
