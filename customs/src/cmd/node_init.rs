//! `customs node-init`: what the peer DaemonSet's init container runs on
//! each node (as Spegel's and Dragonfly's `dfinit` do): it writes
//! `hosts.toml` files into the host's `certs.d` so containerd pulls
//! through the local peer with the gateway as `server`, and never edits
//! containerd's config unless asked (`--edit-config`), never restarts it.
//!
//! Every file it replaces is kept beside it (`*.customs-backup`) and named
//! in a state file (`.customs-node-init.json`), so `--uninstall` puts the
//! node back as it was.

use super::containerd_config::{MARKER, check_url, hosts_toml};
use super::containerd_toml::{self, HostsDir};
use anyhow::{Context, bail};
use clap::Args;
use customs_protocol::RegistryHost;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The state file under `--certs-dir`.
const STATE: &str = ".customs-node-init.json";
/// The suffix of a replaced file's copy.
const BACKUP: &str = "customs-backup";
/// The gateway's CA, copied into each registry folder (containerd resolves
/// a relative `ca` against the folder of its hosts.toml, so the entry works
/// whatever path the init container mounted `certs.d` at).
const CA_FILE: &str = "customs-gateway-ca.pem";

/// `customs node-init` flags.
#[derive(Args)]
pub struct NodeInitArgs {
    /// The host's containerd `certs.d` (as mounted in this container).
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    certs_dir: PathBuf,
    /// The node's peer (`[host]`), e.g. http://127.0.0.1:5070.
    #[arg(long, required_unless_present = "uninstall")]
    peer: Option<String>,
    /// The gateway (`server`): https:// with --ca in production; an http://
    /// gateway is accepted with a warning (loopback setups).
    #[arg(long, required_unless_present = "uninstall")]
    gateway: Option<String>,
    /// PEM CA that issued the gateway's serving certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Registries to route through Customs (as images name them). Repeatable.
    #[arg(long = "registry")]
    registries: Vec<String>,
    /// Do not write `_default/hosts.toml` (which routes every other
    /// registry through the peer, with containerd's `ns` naming it).
    #[arg(long)]
    no_default: bool,
    /// containerd's config file, checked for `config_path`.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// `certs.d` as containerd on the host sees it, when this container
    /// mounts it elsewhere [default: --certs-dir].
    #[arg(long)]
    host_certs_dir: Option<PathBuf>,
    /// Set `config_path` in the containerd config when it is missing or a
    /// list (a backup is kept; containerd is not restarted).
    #[arg(long)]
    edit_config: bool,
    /// Restore what node-init replaced and remove what it wrote.
    #[arg(long, conflicts_with_all = ["peer", "gateway", "ca", "registries", "edit_config"])]
    uninstall: bool,
}

/// What node-init changed, for `--uninstall`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    /// Files written, relative to the certs dir, and whether each replaced
    /// a file of someone else's (kept as `FILE.customs-backup`).
    files: Vec<Written>,
    /// The containerd config edited, if any (kept as `FILE.customs-backup`).
    config: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Written {
    path: PathBuf,
    backed_up: bool,
}

fn backup_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".");
    s.push(BACKUP);
    PathBuf::from(s)
}

fn load_state(dir: &Path) -> anyhow::Result<State> {
    let p = dir.join(STATE);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn save_state(dir: &Path, st: &State) -> anyhow::Result<()> {
    let p = dir.join(STATE);
    std::fs::write(&p, serde_json::to_vec_pretty(st)?)
        .with_context(|| format!("writing {}", p.display()))
}

/// Writes `rel` under `dir` with `text`, keeping a file it replaces that
/// node-init did not write; records it in `st`.
fn put(dir: &Path, rel: &Path, text: &[u8], st: &mut State) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let known = st.files.iter().any(|w| w.path == rel);
    let mut backed_up = false;
    if !known && path.exists() {
        let ours = std::fs::read_to_string(&path).is_ok_and(|t| t.contains(MARKER));
        if !ours {
            std::fs::rename(&path, backup_of(&path))
                .with_context(|| format!("keeping a copy of {}", path.display()))?;
            backed_up = true;
            println!("kept {} as {}", path.display(), backup_of(&path).display());
        }
    }
    // Written beside, then renamed: containerd never reads half a file.
    let tmp = path.with_extension("customs-tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    if !known {
        st.files.push(Written {
            path: rel.to_path_buf(),
            backed_up,
        });
    }
    Ok(())
}

pub fn run(args: NodeInitArgs) -> anyhow::Result<()> {
    if args.uninstall {
        return uninstall(&args.certs_dir);
    }
    let (Some(peer), Some(gateway)) = (&args.peer, &args.gateway) else {
        bail!("--peer and --gateway are required");
    };
    check_url("--peer", peer)?;
    check_url("--gateway", gateway)?;
    if gateway.starts_with("http://") {
        eprintln!(
            "warning: --gateway {gateway} is plain HTTP: anyone on the path can answer as the gateway; use https:// with --ca outside loopback setups"
        );
    }
    let ca = match &args.ca {
        Some(c) if gateway.starts_with("https://") => {
            Some(std::fs::read(c).with_context(|| format!("reading --ca {}", c.display()))?)
        }
        Some(_) => bail!("--ca is the CA of an https:// --gateway; {gateway} is not https"),
        None => None,
    };
    if let Some(pem) = &ca {
        customs_tls::client_config_trusting(pem).context("--ca holds no usable CA certificate")?;
    }
    let mut names: Vec<String> = Vec::new();
    for r in &args.registries {
        // Parsing as a registry host also rules out path tricks in folder names.
        let host: RegistryHost = r.parse().with_context(|| format!("--registry {r:?}"))?;
        names.push(host.as_str().to_owned());
    }
    if !args.no_default {
        names.push("_default".to_owned());
    }
    if names.is_empty() {
        bail!("nothing to write: name a --registry or keep the _default entry");
    }
    let dir = &args.certs_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut st = load_state(dir)?;
    let ca_rel = ca.as_ref().map(|_| Path::new(CA_FILE));
    let text = hosts_toml(peer, Some(gateway), ca_rel);
    for name in &names {
        if let Some(pem) = &ca {
            put(dir, &Path::new(name).join(CA_FILE), pem, &mut st)?;
        }
        put(
            dir,
            &Path::new(name).join("hosts.toml"),
            text.as_bytes(),
            &mut st,
        )?;
        println!("wrote {}", dir.join(name).join("hosts.toml").display());
    }
    save_state(dir, &st)?;
    check_containerd(&args, &mut st)?;
    save_state(dir, &st)
}

/// Says whether containerd will read the files, and what to add if not;
/// with `--edit-config`, adds it.
fn check_containerd(args: &NodeInitArgs, st: &mut State) -> anyhow::Result<()> {
    let host_dir = args.host_certs_dir.as_ref().unwrap_or(&args.certs_dir);
    let host_dir = host_dir.to_string_lossy().into_owned();
    let path = &args.containerd_config;
    let Some(cfg) = containerd_toml::read(path)? else {
        println!(
            "no containerd config at {}: containerd then runs on its defaults, where `config_path` is unset (1.x) or a list (2.2), and hosts.toml is not read. Create it with (containerd 2.x, version 3):\n\nversion = 3\n{}\nor (containerd 1.6/1.7, version 2):\n\nversion = 2\n{}\nthen restart containerd.",
            path.display(),
            containerd_toml::fix(3, &host_dir),
            containerd_toml::fix(2, &host_dir)
        );
        return Ok(());
    };
    if cfg.has_mirrors {
        println!(
            "warning: {} sets the deprecated registry.mirrors table; containerd refuses config_path beside it: remove it",
            path.display()
        );
    }
    let why = match &cfg.hosts_dir {
        HostsDir::Set(d) if Path::new(d) == Path::new(&host_dir) => {
            println!(
                "containerd (config version {}) reads hosts.toml from {d}: nothing to change",
                cfg.version
            );
            return Ok(());
        }
        HostsDir::Set(d) => {
            println!(
                "warning: containerd reads hosts.toml from {d}, not {host_dir}: point config_path at {host_dir} or run node-init with --certs-dir {d}"
            );
            return Ok(());
        }
        HostsDir::Unset => "config_path is not set, so containerd ignores hosts.toml".to_owned(),
        HostsDir::List(l) => format!(
            "config_path is the list {l:?}: containerd 2.1+ pulls through its transfer service ignore hosts.toml when config_path lists several folders, which would silently bypass the mirror; node-init treats it as unset"
        ),
    };
    let fix = containerd_toml::fix(cfg.version, &host_dir);
    if !args.edit_config {
        println!(
            "containerd config {} (version {}): {why}. Add:\n\n{fix}\nthen restart containerd (or run node-init with --edit-config).",
            path.display(),
            cfg.version
        );
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let edited = containerd_toml::with_hosts_dir(&text, &host_dir)?;
    if st.config.is_none() {
        std::fs::copy(path, backup_of(path))
            .with_context(|| format!("keeping a copy of {}", path.display()))?;
        st.config = Some(path.clone());
    }
    std::fs::write(path, edited).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "set config_path = {host_dir:?} in {} ({why}; a copy is kept as {}): restart containerd to apply; node-init does not restart it",
        path.display(),
        backup_of(path).display()
    );
    Ok(())
}

fn uninstall(dir: &Path) -> anyhow::Result<()> {
    let st = load_state(dir)?;
    if st.files.is_empty() && st.config.is_none() {
        println!(
            "node-init wrote nothing under {}: nothing to undo",
            dir.display()
        );
        return Ok(());
    }
    for w in st.files.iter().rev() {
        let path = dir.join(&w.path);
        let is_hosts = w.path.file_name().is_some_and(|n| n == "hosts.toml");
        let ours = !is_hosts || std::fs::read_to_string(&path).is_ok_and(|t| t.contains(MARKER));
        if !ours {
            println!(
                "left {}: it was changed since node-init wrote it",
                path.display()
            );
            continue;
        }
        let _ = std::fs::remove_file(&path);
        if w.backed_up {
            std::fs::rename(backup_of(&path), &path)
                .with_context(|| format!("restoring {}", path.display()))?;
            println!("restored {}", path.display());
        } else {
            println!("removed {}", path.display());
        }
        if let Some(parent) = path.parent() {
            // Only an empty folder goes.
            let _ = std::fs::remove_dir(parent);
        }
    }
    if let Some(cfg) = &st.config {
        std::fs::rename(backup_of(cfg), cfg)
            .with_context(|| format!("restoring {}", cfg.display()))?;
        println!("restored {} (restart containerd to apply)", cfg.display());
    }
    std::fs::remove_file(dir.join(STATE)).with_context(|| format!("removing {STATE}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, config: &Path) -> NodeInitArgs {
        NodeInitArgs {
            certs_dir: dir.to_path_buf(),
            peer: Some("http://127.0.0.1:5070".into()),
            gateway: Some("http://127.0.0.1:5050".into()),
            ca: None,
            registries: vec!["docker.io".into()],
            no_default: false,
            containerd_config: config.to_path_buf(),
            host_certs_dir: None,
            edit_config: false,
            uninstall: false,
        }
    }

    #[test]
    fn install_keeps_what_it_replaces_and_uninstall_restores_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs.d");
        std::fs::create_dir_all(dir.join("docker.io")).unwrap();
        std::fs::write(
            dir.join("docker.io/hosts.toml"),
            "server = \"https://mine\"\n",
        )
        .unwrap();
        let config = tmp.path().join("config.toml");
        std::fs::write(&config, "version = 2\n").unwrap();
        run(args(&dir, &config)).unwrap();
        let t = std::fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap();
        assert!(
            t.contains("server = \"http://127.0.0.1:5050\"") && t.contains(MARKER),
            "{t}"
        );
        assert!(dir.join("_default/hosts.toml").exists());
        // The config was only read.
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "version = 2\n");
        // A second run keeps the operator's copy, not its own file.
        run(args(&dir, &config)).unwrap();
        let mut a = args(&dir, &config);
        a.edit_config = true;
        run(a).unwrap();
        assert!(
            std::fs::read_to_string(&config)
                .unwrap()
                .contains("config_path")
        );
        uninstall(&dir).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap(),
            "server = \"https://mine\"\n"
        );
        assert!(!dir.join("_default").exists());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "version = 2\n");
        // Nothing left to undo, and saying so is not an error.
        uninstall(&dir).unwrap();
    }

    #[test]
    fn hostile_registry_names_and_urls_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("none.toml");
        for bad in ["../../etc", "a/b", ""] {
            let mut a = args(tmp.path(), &config);
            a.registries = vec![bad.into()];
            assert!(run(a).is_err(), "{bad:?}");
        }
        let mut a = args(tmp.path(), &config);
        a.peer = Some("http://x\"\n[host.evil]".into());
        assert!(run(a).is_err());
        let mut a = args(tmp.path(), &config);
        a.ca = Some(tmp.path().join("ca.pem"));
        assert!(run(a).is_err(), "a CA for an http gateway");
    }
}
