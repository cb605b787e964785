//! Private key and token files: written 0600 in 0700 directories, and
//! refused at start when group or others can read or write them.
//!
//! A key another local user can read is a key that user holds: the mTLS
//! CA key issues any role, the gateway key signs piece manifests and audit
//! checkpoints, a token authenticates preheat jobs. So every file of that
//! kind Customs writes goes through [`write_private`] (a temporary file
//! created 0600, fsynced, then renamed over the target, so the mode is
//! right whatever was there before and a crash never leaves half a key),
//! and every one it reads goes through [`read_private`], which checks the
//! mode of the file it actually opened (no window between check and read).

use std::io::{Read, Write};
use std::path::Path;

/// Mode of every private key and token file Customs writes.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every directory Customs creates for private files.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Largest secret file read: PEM keys and tokens are a few KiB; a bigger
/// file is a wrong path (a log, a device), refused before it is read whole.
const MAX_SECRET_BYTES: u64 = 1 << 20;

/// Why a private file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file system refused.
    #[error("private file {path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Group or others may read or write it.
    #[error(
        "private file {path} has mode {mode:04o}: group or others can access it (it must be 0600 or stricter); run `chmod 600 {path}`"
    )]
    Exposed {
        /// Which file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Not a regular file, or far too large to be a key or token.
    #[error("private file {path}: {detail}")]
    NotASecret {
        /// Which file.
        path: String,
        /// What it is instead.
        detail: String,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SecretFileError + '_ {
    move |source| SecretFileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Creates `dir` (and missing parents) 0700, or tightens an existing
/// directory to 0700: for directories Customs owns (its PKI folder, its
/// data directory), never for a folder an operator named for one file.
pub fn private_dir(dir: &Path) -> Result<(), SecretFileError> {
    create_dirs(dir)?;
    set_mode(dir, PRIVATE_DIR_MODE)
}

/// Writes `data` to `path` with mode 0600, atomically (temporary file,
/// fsync, rename). Missing parent directories are created 0700; existing
/// ones are left as they are.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), SecretFileError> {
    let err = io(path);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_dirs(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| SecretFileError::NotASecret {
            path: path.display().to_string(),
            detail: "no file name".into(),
        })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut f = open_new_private(&tmp).map_err(&err)?;
    let written = f
        .write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

/// Refuses `path` when group or others have any access to it.
pub fn check_private(path: &Path) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    check_meta(path, &meta)
}

/// Reads a private file after checking the mode of the very file opened.
pub fn read_private(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    let err = io(path);
    let f = std::fs::File::open(path).map_err(&err)?;
    let meta = f.metadata().map_err(&err)?;
    check_meta(path, &meta)?;
    let mut out = Vec::new();
    f.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(&err)?;
    if out.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretFileError::NotASecret {
            path: path.display().to_string(),
            detail: format!("larger than {MAX_SECRET_BYTES} bytes"),
        });
    }
    Ok(out)
}

/// Reads a token file: private, UTF-8, trailing newline (and other
/// trailing whitespace) trimmed, not empty.
pub fn read_token(path: &Path) -> Result<String, SecretFileError> {
    let bytes = read_private(path)?;
    let bad = |detail: &str| SecretFileError::NotASecret {
        path: path.display().to_string(),
        detail: detail.into(),
    };
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
    let token = text.trim_end();
    if token.is_empty() {
        return Err(bad("empty token"));
    }
    Ok(token.to_owned())
}

fn check_meta(path: &Path, meta: &std::fs::Metadata) -> Result<(), SecretFileError> {
    if !meta.is_file() {
        return Err(SecretFileError::NotASecret {
            path: path.display().to_string(),
            detail: "not a regular file".into(),
        });
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(SecretFileError::NotASecret {
            path: path.display().to_string(),
            detail: format!("larger than {MAX_SECRET_BYTES} bytes"),
        });
    }
    let mode = mode_of(meta);
    if mode & 0o077 != 0 {
        return Err(SecretFileError::Exposed {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode_of(_meta: &std::fs::Metadata) -> u32 {
    PRIVATE_FILE_MODE
}

#[cfg(unix)]
fn create_dirs(dir: &Path) -> Result<(), SecretFileError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(io(dir))
}

#[cfg(not(unix))]
fn create_dirs(dir: &Path) -> Result<(), SecretFileError> {
    std::fs::create_dir_all(dir).map_err(io(dir))
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io(path))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), SecretFileError> {
    Ok(())
}

#[cfg(unix)]
fn open_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

#[cfg(not(unix))]
fn open_new_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn written_0600_in_a_0700_dir_even_over_a_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new/sub/k.key");
        write_private(&p, b"secret").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&dir.path().join("new")), 0o700);
        assert_eq!(mode(&dir.path().join("new/sub")), 0o700);
        // An existing 0644 file is replaced, not reused with its mode.
        let q = dir.path().join("old.key");
        std::fs::write(&q, b"x").unwrap();
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&q, b"secret").unwrap();
        assert_eq!(mode(&q), 0o600);
        assert_eq!(read_private(&q).unwrap(), b"secret");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_file_others_can_access_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.key");
        for bad in [0o644, 0o640, 0o604, 0o620, 0o602] {
            std::fs::write(&p, b"secret").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(bad)).unwrap();
            let e = read_private(&p).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:04o}")), "{e}");
            assert!(e.contains(&format!("chmod 600 {}", p.display())), "{e}");
            assert!(check_private(&p).is_err());
        }
        for good in [0o600, 0o400] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(good)).unwrap();
            check_private(&p).unwrap();
            assert_eq!(read_private(&p).unwrap(), b"secret");
        }
        assert!(read_private(dir.path()).is_err(), "a directory is no key");
    }

    #[test]
    fn tokens_lose_their_trailing_newline_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        write_private(&p, b"s3cret\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "s3cret");
        write_private(&p, b"\n").unwrap();
        assert!(read_token(&p).is_err());
    }

    #[test]
    fn private_dir_tightens_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("pki");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&d).unwrap();
        assert_eq!(mode(&d), 0o700);
    }

    #[test]
    fn the_dev_pki_keeps_its_keys_private_and_load_refuses_exposed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        crate::write_dev_pki(&pki, &[("gw", crate::Role::Gateway)]).unwrap();
        assert_eq!(mode(&pki), 0o700);
        assert_eq!(mode(&pki.join("ca.key")), 0o600);
        assert_eq!(mode(&pki.join("gw.key")), 0o600);
        let paths = crate::TlsPaths::in_dir(&pki, "gw");
        crate::TlsIdentity::load(&paths).unwrap();
        std::fs::set_permissions(&paths.key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = crate::TlsIdentity::load(&paths).unwrap_err().to_string();
        assert!(e.contains("0644") && e.contains("chmod 600"), "{e}");
        // Reusing the CA refuses an exposed CA key too.
        std::fs::set_permissions(pki.join("ca.key"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(crate::write_dev_pki(&pki, &[("p1", crate::Role::Peer)]).is_err());
    }
}
