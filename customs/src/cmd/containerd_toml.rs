//! Where containerd looks for `hosts.toml` files: its config file's
//! version and the CRI registry `config_path`, and the one edit node-init
//! may make to it (`--edit-config`). Read and edited with `toml_edit`, so
//! an edit keeps the operator's comments and layout.

use anyhow::Context as _;
use std::path::Path;

/// The CRI registry table of each config version.
fn registry_table(version: i64) -> &'static [&'static str] {
    match version {
        // containerd 2.x.
        3 => &["plugins", "io.containerd.cri.v1.images", "registry"],
        // containerd 1.x: version 2 ...
        2 => &["plugins", "io.containerd.grpc.v1.cri", "registry"],
        // ... and the original, unversioned layout.
        _ => &["plugins", "cri", "registry"],
    }
}

/// What a containerd config says about hosts.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostsDir {
    /// `config_path` is one folder.
    Set(String),
    /// `config_path` is absent or empty: containerd ignores hosts.toml.
    Unset,
    /// `config_path` is a `:`-separated list (containerd 2.2's default):
    /// containerd 2.1+ transfer-service pulls ignore hosts.toml then.
    List(String),
}

/// The config file as read.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// `version` (1 when absent).
    pub version: i64,
    /// Where it points hosts lookups.
    pub hosts_dir: HostsDir,
    /// Whether the deprecated `registry.mirrors` table is set (containerd
    /// refuses `config_path` beside it).
    pub has_mirrors: bool,
}

/// Parses a containerd config (`config.toml`).
pub fn parse(text: &str) -> anyhow::Result<ContainerdConfig> {
    let doc: toml_edit::DocumentMut = text.parse().context("not a TOML document")?;
    let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(1);
    if !(1..=3).contains(&version) {
        anyhow::bail!("containerd config version {version} is not one node-init knows (1, 2, 3)");
    }
    let mut item: Option<&toml_edit::Item> = Some(doc.as_item());
    for key in registry_table(version) {
        item = item.and_then(|i| i.get(key));
    }
    let path = item
        .and_then(|r| r.get("config_path"))
        .and_then(|p| p.as_str())
        .unwrap_or("");
    let has_mirrors = item.and_then(|r| r.get("mirrors")).is_some();
    let hosts_dir = if path.is_empty() {
        HostsDir::Unset
    } else if path.contains(':') {
        HostsDir::List(path.to_owned())
    } else {
        HostsDir::Set(path.to_owned())
    };
    Ok(ContainerdConfig {
        version,
        hosts_dir,
        has_mirrors,
    })
}

/// The TOML an operator adds to a config of `version` so containerd reads
/// hosts.toml files from `dir`.
pub fn fix(version: i64, dir: &str) -> String {
    let table = registry_table(version)
        .iter()
        .map(|k| {
            if k.contains('.') {
                format!("\"{k}\"")
            } else {
                (*k).to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    format!("[{table}]\n  config_path = \"{dir}\"\n")
}

/// `text` with `config_path` set to `dir` (the rest as it was).
pub fn with_hosts_dir(text: &str, dir: &str) -> anyhow::Result<String> {
    let mut doc: toml_edit::DocumentMut = text.parse().context("not a TOML document")?;
    let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(1);
    let mut table = doc.as_table_mut();
    for key in registry_table(version) {
        let entry = table
            .entry(key)
            .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()));
        table = entry
            .as_table_mut()
            .with_context(|| format!("{key} in the containerd config is not a table"))?;
    }
    table.insert("config_path", toml_edit::value(dir));
    Ok(doc.to_string())
}

/// Reads `path` (`None` when it does not exist).
pub fn read(path: &Path) -> anyhow::Result<Option<ContainerdConfig>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            Ok(Some(parse(&text).with_context(|| {
                format!("containerd config {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd 1.7's `containerd config default` layout (version 2).
    const V2: &str = r#"disabled_plugins = []
version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.8"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""
      [plugins."io.containerd.grpc.v1.cri".registry.auths]
"#;

    /// containerd 2.x's layout (version 3), as 2.2 writes it by default.
    const V3: &str = r#"version = 3

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = '/etc/containerd/certs.d:/etc/docker/certs.d'
"#;

    #[test]
    fn versions_and_config_paths_are_read_from_each_layout() {
        let c = parse(V2).unwrap();
        assert_eq!((c.version, &c.hosts_dir), (2, &HostsDir::Unset));
        let c = parse(V3).unwrap();
        assert_eq!(c.version, 3);
        assert!(matches!(c.hosts_dir, HostsDir::List(_)));
        let set = V2.replace(
            "config_path = \"\"",
            "config_path = \"/etc/containerd/certs.d\"",
        );
        assert_eq!(
            parse(&set).unwrap().hosts_dir,
            HostsDir::Set("/etc/containerd/certs.d".into())
        );
        // A v2 key in a v3 file is not where containerd 2.x looks.
        let wrong =
            "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\nconfig_path = \"/x\"\n";
        assert_eq!(parse(wrong).unwrap().hosts_dir, HostsDir::Unset);
        // No version: the unversioned layout.
        let v1 = "[plugins.cri.registry]\nconfig_path = \"/x\"\n";
        assert_eq!(parse(v1).unwrap().hosts_dir, HostsDir::Set("/x".into()));
        assert!(parse("version = 9\n").is_err());
        assert!(parse("this is = = not toml").is_err());
        let mirrors =
            format!("{V2}      [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors]\n");
        assert!(parse(&mirrors).unwrap().has_mirrors);
    }

    #[test]
    fn the_fix_and_the_edit_set_exactly_the_key_containerd_reads() {
        assert_eq!(
            fix(2, "/etc/containerd/certs.d"),
            "[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n"
        );
        assert_eq!(
            fix(3, "/etc/containerd/certs.d"),
            "[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n"
        );
        for text in [V2, V3, "version = 2\n", ""] {
            let edited = with_hosts_dir(text, "/etc/containerd/certs.d").unwrap();
            assert_eq!(
                parse(&edited).unwrap().hosts_dir,
                HostsDir::Set("/etc/containerd/certs.d".into()),
                "{edited}"
            );
        }
        // The rest of the file is kept, comments included.
        let edited = with_hosts_dir(&format!("# keep me\n{V2}"), "/d").unwrap();
        assert!(
            edited.contains("# keep me") && edited.contains("sandbox_image"),
            "{edited}"
        );
        // The fix, appended to a config without the table, is what parse reads.
        let appended = format!("version = 2\n{}", fix(2, "/d"));
        assert_eq!(
            parse(&appended).unwrap().hosts_dir,
            HostsDir::Set("/d".into())
        );
    }
}
