//! A policy source at one revision: every file of a directory or of a Git
//! tree, read into memory (policy repositories are small), so a revision is
//! validated as a whole before it replaces the one in force and a file can
//! never change under a decision.

use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Largest policy source read (all files together).
pub const MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024;
/// Most files read from a policy source.
pub const MAX_SOURCE_FILES: usize = 10_000;

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// I/O failure.
    #[error("{path}: {source}")]
    Io {
        /// Which path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Over the size or file-count limits.
    #[error("policy source is too large: {0}")]
    TooLarge(String),
}

/// Files by `/`-separated relative path, plus the revision they form.
#[derive(Debug, Clone)]
pub struct Snapshot {
    revision: String,
    /// When the revision was made (a Git commit's time, Unix seconds), so
    /// revisions can be ordered across gateways; 0 when unknown (a
    /// directory).
    time: u64,
    files: BTreeMap<String, Vec<u8>>,
}

impl Snapshot {
    /// Wraps files read elsewhere (a Git tree) under a known revision.
    pub fn from_files(revision: String, files: BTreeMap<String, Vec<u8>>) -> Self {
        Snapshot {
            revision,
            time: 0,
            files,
        }
    }

    /// The same snapshot, made at `time` (Unix seconds).
    pub fn with_time(mut self, time: u64) -> Self {
        self.time = time;
        self
    }

    /// When the revision was made (0: unknown).
    pub fn time(&self) -> u64 {
        self.time
    }

    /// Reads a directory recursively (hidden entries such as `.git` are
    /// skipped; symbolic links are not followed). The revision is a content
    /// hash, so an unchanged directory keeps its revision.
    pub fn from_dir(dir: &Path) -> Result<Self, SnapshotError> {
        let mut files = BTreeMap::new();
        let mut total = 0u64;
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((path, rel)) = stack.pop() {
            let io = |source| SnapshotError::Io {
                path: path.display().to_string(),
                source,
            };
            for entry in std::fs::read_dir(&path).map_err(io)? {
                let entry = entry.map_err(io)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let rel_child = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry.file_type().map_err(io)?;
                if ft.is_dir() {
                    stack.push((entry.path(), rel_child));
                } else if ft.is_file() {
                    let bytes =
                        std::fs::read(entry.path()).map_err(|source| SnapshotError::Io {
                            path: entry.path().display().to_string(),
                            source,
                        })?;
                    total += bytes.len() as u64;
                    if total > MAX_SOURCE_BYTES || files.len() >= MAX_SOURCE_FILES {
                        return Err(SnapshotError::TooLarge(dir.display().to_string()));
                    }
                    files.insert(rel_child, bytes);
                }
            }
        }
        let mut h = Sha256::new();
        for (p, b) in &files {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p.as_bytes());
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        }
        let revision = format!("dir-sha256:{}", &hex::encode(h.finalize())[..16]);
        Ok(Snapshot {
            revision,
            time: 0,
            files,
        })
    }

    /// The revision (Git commit or content hash).
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Every file, by relative path.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    /// Resolves `rel` relative to the directory of `from` inside the
    /// snapshot. Absolute paths and `..` that climbs out of the source are
    /// refused: a policy cannot read files outside its own repository.
    pub fn resolve(&self, from: &str, rel: &str) -> Result<(String, &[u8]), String> {
        if rel.starts_with('/') || rel.contains('\\') || rel.contains('\0') {
            return Err(format!(
                "{rel:?}: paths must be relative to the policy file"
            ));
        }
        let mut parts: Vec<&str> = from.split('/').collect();
        parts.pop();
        for seg in rel.split('/') {
            match seg {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(format!("{rel:?} leaves the policy source"));
                    }
                }
                s => parts.push(s),
            }
        }
        let path = parts.join("/");
        match self.files.get(&path) {
            Some(b) => Ok((path, b)),
            None => Err(format!(
                "{rel:?}: no such file in the policy source ({path})"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        let mut f = BTreeMap::new();
        f.insert("policies/a.yaml".to_owned(), b"x".to_vec());
        f.insert("keys/k.pub".to_owned(), b"k".to_vec());
        Snapshot::from_files("r".into(), f)
    }

    #[test]
    fn resolves_inside_only() {
        let s = snap();
        assert_eq!(
            s.resolve("policies/a.yaml", "../keys/k.pub").unwrap().1,
            b"k"
        );
        assert!(s.resolve("policies/a.yaml", "../../etc/passwd").is_err());
        assert!(s.resolve("policies/a.yaml", "/etc/passwd").is_err());
        assert!(s.resolve("policies/a.yaml", "missing.pub").is_err());
    }

    #[test]
    fn dir_revision_follows_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("p.yaml"), "a").unwrap();
        std::fs::create_dir(d.path().join(".git")).unwrap();
        std::fs::write(d.path().join(".git/x"), "ignored").unwrap();
        let r1 = Snapshot::from_dir(d.path()).unwrap();
        assert_eq!(r1.files().count(), 1);
        std::fs::write(d.path().join("p.yaml"), "b").unwrap();
        let r2 = Snapshot::from_dir(d.path()).unwrap();
        assert_ne!(r1.revision(), r2.revision());
    }
}
