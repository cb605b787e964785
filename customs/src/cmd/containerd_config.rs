//! `customs containerd-config`: hosts.toml files for containerd.
//!
//! containerd tries `[host]` entries in order and `server` last, and
//! bypasses a file without a `[host]` table. So the file always lists the
//! local mirror as a `[host]` and sets `server` to the gateway (or the
//! mirror): containerd never talks to the upstream itself, and a peer that is
//! down fails over to the gateway, never to unverified content.

use anyhow::{Context, bail};
use clap::Args;
use customs_protocol::RegistryHost;
use std::path::{Path, PathBuf};

/// `customs containerd-config` flags.
#[derive(Args)]
pub struct ContainerdConfigArgs {
    /// The node-local mirror (peer) URL, e.g. http://127.0.0.1:5070.
    #[arg(long)]
    mirror: String,
    /// The gateway URL, used as `server` (fallback when the peer is down).
    #[arg(long)]
    gateway: Option<String>,
    /// Registries to route through Customs (as images name them). Repeatable.
    #[arg(long = "registry", required_unless_present = "default")]
    registries: Vec<String>,
    /// Also write `_default/hosts.toml` (every other registry).
    #[arg(long)]
    default: bool,
    /// Output folder (containerd's `config_path`).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    out: PathBuf,
}

fn check_url(what: &str, u: &str) -> anyhow::Result<()> {
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(['"', '\n', '\\']) {
        bail!("{what} {u:?} must be an http(s) URL");
    }
    Ok(())
}

/// The hosts.toml text for one registry.
pub fn hosts_toml(mirror: &str, gateway: Option<&str>) -> String {
    let server = gateway.unwrap_or(mirror).trim_end_matches('/');
    let mirror = mirror.trim_end_matches('/');
    format!(
        "# Written by `customs containerd-config`: pulls go through the Customs peer,\n\
         # then the Customs gateway; containerd never contacts the upstream itself.\n\
         server = \"{server}\"\n\n\
         [host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let f = d.join("hosts.toml");
    std::fs::write(&f, text).with_context(|| format!("writing {}", f.display()))?;
    println!("wrote {}", f.display());
    Ok(())
}

pub fn run(args: ContainerdConfigArgs) -> anyhow::Result<()> {
    check_url("--mirror", &args.mirror)?;
    if let Some(g) = &args.gateway {
        check_url("--gateway", g)?;
    }
    let text = hosts_toml(&args.mirror, args.gateway.as_deref());
    for r in &args.registries {
        // Parsing as a registry host also rules out path tricks in folder names.
        let host: RegistryHost = r.parse().with_context(|| format!("--registry {r:?}"))?;
        write(&args.out, host.as_str(), &text)?;
    }
    if args.default {
        write(&args.out, "_default", &text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_the_mirror_as_host_and_the_gateway_as_server() {
        let t = hosts_toml("http://127.0.0.1:5071/", Some("http://127.0.0.1:5050"));
        assert!(t.contains("server = \"http://127.0.0.1:5050\""));
        assert!(t.contains("[host.\"http://127.0.0.1:5071\"]"));
        assert!(t.contains("capabilities = [\"pull\", \"resolve\"]"));
        let t = hosts_toml("http://127.0.0.1:5071", None);
        assert!(t.contains("server = \"http://127.0.0.1:5071\""));
        assert!(check_url("m", "http://x\"\n[host.evil]").is_err());
    }
}
