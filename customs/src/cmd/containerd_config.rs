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
    /// Use https:// whenever the gateway is reached over the network
    /// (`customs gateway --listen-tls-cert`).
    #[arg(long)]
    gateway: Option<String>,
    /// CA certificate (PEM) that issued the gateway's serving certificate:
    /// written as the `ca` of `server`, so containerd authenticates the
    /// gateway. Needs an https:// --gateway.
    #[arg(long, value_name = "FILE", requires = "gateway")]
    ca: Option<PathBuf>,
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

/// The first line of every hosts.toml Customs writes: says who wrote it
/// and why, to the operator reading the node.
const MARKER: &str = "# Written by Customs:";

/// Refuses anything but an http(s) URL safe to quote in TOML.
pub fn check_url(what: &str, u: &str) -> anyhow::Result<()> {
    if !(u.starts_with("http://") || u.starts_with("https://")) || u.contains(['"', '\n', '\\']) {
        bail!("{what} {u:?} must be an http(s) URL");
    }
    Ok(())
}

/// The hosts.toml text for one registry; `ca` is the CA file containerd
/// verifies the gateway (`server`) with.
pub fn hosts_toml(mirror: &str, gateway: Option<&str>, ca: Option<&Path>) -> String {
    let server = gateway.unwrap_or(mirror).trim_end_matches('/');
    let mirror = mirror.trim_end_matches('/');
    let ca = ca
        .map(|p| format!("ca = \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "{MARKER} pulls go through the Customs peer,\n\
         # then the Customs gateway; containerd never contacts the upstream itself.\n\
         server = \"{server}\"\n{ca}\n\
         [host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// The CA file as containerd should read it: absolute (containerd would
/// resolve a relative path against its own working directory), existing,
/// and safe to quote in TOML.
fn ca_path(ca: &Path, gateway: Option<&str>) -> anyhow::Result<PathBuf> {
    if !gateway.is_some_and(|g| g.starts_with("https://")) {
        bail!("--ca is the CA of an https:// --gateway; the gateway given is not https");
    }
    let abs = std::fs::canonicalize(ca).with_context(|| format!("--ca {}", ca.display()))?;
    let text = abs
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("--ca {}: not UTF-8", abs.display()))?;
    if text.contains(['"', '\n', '\\']) {
        bail!("--ca {text:?}: quotes, backslashes and newlines are not allowed in the path");
    }
    customs_tls::client_config_trusting(
        &std::fs::read(&abs).with_context(|| format!("reading --ca {text}"))?,
    )
    .with_context(|| format!("--ca {text} holds no usable CA certificate"))?;
    Ok(abs)
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
    let ca = args
        .ca
        .as_deref()
        .map(|c| ca_path(c, args.gateway.as_deref()))
        .transpose()?;
    let text = hosts_toml(&args.mirror, args.gateway.as_deref(), ca.as_deref());
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
        let t = hosts_toml(
            "http://127.0.0.1:5071/",
            Some("http://127.0.0.1:5050"),
            None,
        );
        assert!(t.contains("server = \"http://127.0.0.1:5050\""));
        assert!(t.contains("[host.\"http://127.0.0.1:5071\"]"));
        assert!(t.contains("capabilities = [\"pull\", \"resolve\"]"));
        assert!(!t.contains("ca ="));
        let t = hosts_toml("http://127.0.0.1:5071", None, None);
        assert!(t.contains("server = \"http://127.0.0.1:5071\""));
        assert!(check_url("m", "http://x\"\n[host.evil]").is_err());
    }

    #[test]
    fn the_ca_entry_belongs_to_the_https_gateway() {
        let t = hosts_toml(
            "http://127.0.0.1:5071",
            Some("https://gw.example:5050"),
            Some(Path::new("/etc/customs/ca.pem")),
        );
        // Top-level keys belong to `server`: before the first [host] table.
        let ca_at = t.find("ca = \"/etc/customs/ca.pem\"").unwrap();
        assert!(ca_at < t.find("[host.").unwrap());
        assert!(t.contains("server = \"https://gw.example:5050\""));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate").unwrap();
        assert!(ca_path(&f, Some("http://gw:5050")).is_err());
        assert!(ca_path(&f, Some("https://gw:5050")).is_err());
    }
}
