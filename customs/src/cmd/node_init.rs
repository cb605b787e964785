//! `customs node-init`: what the peer DaemonSet's init container runs on
//! each node (as Spegel's and Dragonfly's `dfinit` do): it writes
//! `hosts.toml` files into the host's `certs.d` so containerd pulls
//! through the local peer with the gateway as `server`, and never edits
//! containerd's config unless asked (`--edit-config`), never restarts it.
//!
//! Every file it replaces is kept beside it (`*.customs-backup`) and named
//! in a state file (`.customs-node-init.json`), so `--uninstall` puts the
//! node back as it was.

use super::containerd_config::{check_url, hosts_toml};
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
    /// Files written, relative to the certs dir.
    files: Vec<Written>,
    /// The containerd config edited, if any (kept as `FILE.customs-backup`),
    /// and the sha256 of what node-init wrote there.
    config: Option<Written>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Written {
    path: PathBuf,
    /// Whether it replaced a file of someone else's (kept as
    /// `FILE.customs-backup`).
    backed_up: bool,
    /// sha256 of what node-init wrote: uninstall removes only a file that
    /// still holds exactly that.
    sha256: String,
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// sha256 of the file at `p`, if it exists.
fn file_sha256(p: &Path) -> Option<String> {
    std::fs::read(p).ok().map(|b| sha256(&b))
}

fn backup_of(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(".");
    s.push(BACKUP);
    PathBuf::from(s)
}

/// A path the state file may name: `<registry or _default>/<our file>`,
/// nothing absolute, no `..` (the state file sits in a folder others may
/// write; uninstall runs as root).
fn valid_entry(rel: &Path) -> bool {
    let parts: Vec<_> = rel.components().collect();
    let [
        std::path::Component::Normal(dir),
        std::path::Component::Normal(file),
    ] = parts[..]
    else {
        return false;
    };
    let dir = dir.to_string_lossy();
    (dir == "_default" || dir.parse::<RegistryHost>().is_ok())
        && (file == "hosts.toml" || file == CA_FILE)
}

fn load_state(dir: &Path) -> anyhow::Result<State> {
    let p = dir.join(STATE);
    let st: State = match std::fs::read(&p) {
        Ok(b) => {
            serde_json::from_slice(&b).with_context(|| format!("{} is corrupt", p.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    if let Some(bad) = st.files.iter().find(|w| !valid_entry(&w.path)) {
        bail!(
            "{} names {:?}, which node-init never writes: refusing to act on it",
            p.display(),
            bad.path
        );
    }
    Ok(st)
}

fn save_state(dir: &Path, st: &State) -> anyhow::Result<()> {
    let p = dir.join(STATE);
    atomic_write(&p, &serde_json::to_vec_pretty(st)?)
}

/// Writes `path` beside and renames it into place: a reader (containerd)
/// never sees half a file, and a crash leaves the old one.
fn atomic_write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("customs-tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).ok();
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Keeps a copy of `path` (someone else's file) as its backup; never over
/// an existing backup, which would lose the operator's original.
fn keep_copy(path: &Path) -> anyhow::Result<()> {
    let b = backup_of(path);
    if b.exists() {
        bail!(
            "{} would replace {}, a copy kept earlier: move that copy away (or run --uninstall) first",
            path.display(),
            b.display()
        );
    }
    std::fs::copy(path, &b).with_context(|| format!("keeping a copy of {}", path.display()))?;
    println!("kept {} as {}", path.display(), b.display());
    Ok(())
}

/// Writes `rel` under `dir` with `text`, keeping a copy of a file it
/// replaces that node-init did not write (or that changed since); the
/// state is saved before the file is replaced.
fn put(dir: &Path, rel: &Path, text: &[u8], st: &mut State) -> anyhow::Result<()> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let at = st.files.iter().position(|w| w.path == rel);
    let current = file_sha256(&path);
    let ours = match (&current, at) {
        (None, _) => true,
        (Some(h), Some(i)) => *h == st.files[i].sha256,
        (Some(_), None) => false,
    };
    let mut backed_up = at.is_some_and(|i| st.files[i].backed_up);
    if !ours {
        keep_copy(&path)?;
        backed_up = true;
    }
    let entry = Written {
        path: rel.to_path_buf(),
        backed_up,
        sha256: sha256(text),
    };
    match at {
        Some(i) => st.files[i] = entry,
        None => st.files.push(entry),
    }
    save_state(dir, st)?;
    atomic_write(&path, text)
}

pub fn run(args: NodeInitArgs) -> anyhow::Result<()> {
    if args.uninstall {
        return uninstall(&args.certs_dir, &args.containerd_config);
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
    if cfg.has_mirrors {
        bail!(
            "not editing {}: containerd refuses config_path beside registry.mirrors, so the edit would stop it at its next start; move the mirrors to hosts.toml files first",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)?;
    let edited = containerd_toml::with_hosts_dir(&text, &host_dir)?;
    let ours = st.config.as_ref().is_some_and(|w| {
        w.path == *path && file_sha256(path).as_deref() == Some(w.sha256.as_str())
    });
    if !ours {
        keep_copy(path)?;
    }
    st.config = Some(Written {
        path: path.clone(),
        backed_up: true,
        sha256: sha256(edited.as_bytes()),
    });
    save_state(&args.certs_dir, st)?;
    atomic_write(path, edited.as_bytes())?;
    println!(
        "set config_path = {host_dir:?} in {} ({why}; a copy is kept as {}): restart containerd to apply; node-init does not restart it",
        path.display(),
        backup_of(path).display()
    );
    Ok(())
}

fn uninstall(dir: &Path, containerd_config: &Path) -> anyhow::Result<()> {
    let mut st = load_state(dir)?;
    if st.files.is_empty() && st.config.is_none() {
        println!(
            "node-init wrote nothing under {}: nothing to undo",
            dir.display()
        );
        return Ok(());
    }
    // Last written first; each entry leaves the state as it is undone, so
    // a rerun after a failure picks up where this one stopped.
    for w in st.files.clone().into_iter().rev() {
        let path = dir.join(&w.path);
        let current = file_sha256(&path);
        if current.is_some() && current.as_deref() != Some(w.sha256.as_str()) {
            println!(
                "left {}: it was changed since node-init wrote it",
                path.display()
            );
            continue;
        }
        let backup = backup_of(&path);
        if w.backed_up && backup.exists() {
            std::fs::rename(&backup, &path)
                .with_context(|| format!("restoring {}", path.display()))?;
            println!("restored {}", path.display());
        } else if current.is_some() {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            println!("removed {}", path.display());
            if let Some(parent) = path.parent() {
                // Only an empty folder goes.
                let _ = std::fs::remove_dir(parent);
            }
        }
        st.files.retain(|x| x.path != w.path);
        save_state(dir, &st)?;
    }
    if let Some(w) = st.config.clone() {
        let backup = backup_of(&w.path);
        if w.path != containerd_config {
            println!(
                "left {}: node-init edited that config, not {} (give --containerd-config {})",
                w.path.display(),
                containerd_config.display(),
                w.path.display()
            );
        } else if file_sha256(&w.path).as_deref() != Some(w.sha256.as_str()) {
            println!(
                "left {}: it was changed since node-init set config_path (the original is at {})",
                w.path.display(),
                backup.display()
            );
        } else if backup.exists() {
            std::fs::rename(&backup, &w.path)
                .with_context(|| format!("restoring {}", w.path.display()))?;
            println!(
                "restored {} (restart containerd to apply)",
                w.path.display()
            );
            st.config = None;
            save_state(dir, &st)?;
        }
    }
    if st.files.is_empty() && st.config.is_none() {
        std::fs::remove_file(dir.join(STATE)).with_context(|| format!("removing {STATE}"))?;
    }
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
            t.contains("server = \"http://127.0.0.1:5050\"") && t.contains("Written by Customs"),
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
        uninstall(&dir, &config).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("docker.io/hosts.toml")).unwrap(),
            "server = \"https://mine\"\n"
        );
        assert!(!dir.join("_default").exists());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), "version = 2\n");
        // Nothing left to undo, and saying so is not an error.
        uninstall(&dir, &config).unwrap();
    }

    #[test]
    fn a_rerun_never_loses_the_operators_original_and_a_forged_state_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs.d");
        std::fs::create_dir_all(dir.join("docker.io")).unwrap();
        let theirs = "server = \"https://mine\"\n";
        std::fs::write(dir.join("docker.io/hosts.toml"), theirs).unwrap();
        let config = tmp.path().join("none.toml");
        run(args(&dir, &config)).unwrap();
        // The operator edits node-init's file; a rerun keeps that too, and
        // refuses to overwrite the first copy.
        std::fs::write(
            dir.join("docker.io/hosts.toml"),
            "server = \"https://edited\"\n",
        )
        .unwrap();
        assert!(run(args(&dir, &config)).is_err());
        assert_eq!(
            std::fs::read_to_string(backup_of(&dir.join("docker.io/hosts.toml"))).unwrap(),
            theirs
        );
        // Uninstall leaves the edited file (and its copy) alone.
        uninstall(&dir, &config).unwrap();
        assert!(
            std::fs::read_to_string(dir.join("docker.io/hosts.toml"))
                .unwrap()
                .contains("edited")
        );
        assert!(
            dir.join(STATE).exists(),
            "the state of what was left is kept"
        );
        // A state file naming paths outside certs.d is refused outright.
        std::fs::write(
            dir.join(STATE),
            r#"{"files":[{"path":"../../etc/passwd","backed_up":false,"sha256":"x"}],"config":null}"#,
        )
        .unwrap();
        let e = uninstall(&dir, &config).unwrap_err().to_string();
        assert!(e.contains("never writes"), "{e}");
    }

    #[test]
    fn edit_config_refuses_a_config_with_mirrors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("certs.d");
        let config = tmp.path().join("config.toml");
        let text = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n";
        std::fs::write(&config, text).unwrap();
        let mut a = args(&dir, &config);
        a.edit_config = true;
        assert!(run(a).is_err());
        assert_eq!(std::fs::read_to_string(&config).unwrap(), text);
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
