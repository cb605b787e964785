//! Where policies come from — a directory or a Git repository — and the
//! loop that keeps the gate on the newest revision that validates.
//!
//! A revision is validated as a whole before use. A broken revision is
//! refused with file:line errors, the last good one stays in force, and the
//! refusal is an audit event; so is every reload. Git is read with `gix`
//! (pure Rust, no OpenSSL): a bare mirror of the repository lives in the
//! data directory and is fetched on every poll.

use crate::admission::GatewayAdmission;
use customs_policy::snapshot::{MAX_SOURCE_BYTES, MAX_SOURCE_FILES};
use customs_policy::{PolicySet, Snapshot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A configured policy source.
#[derive(Debug, Clone)]
pub enum PolicySource {
    /// Every `*.yaml` under a directory; the revision is a content hash.
    Dir(PathBuf),
    /// A Git repository at `url`, branch/tag/commit `reference`; the
    /// revision is the commit id.
    Git {
        /// Anything gix can fetch: a path, `file://`, `https://`, `ssh://`.
        url: String,
        /// A branch, a tag or a full ref name.
        reference: String,
        /// Where the bare mirror is kept.
        mirror_dir: PathBuf,
    },
}

/// Why a revision could not be read (before it is even validated).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory could not be read.
    #[error(transparent)]
    Dir(#[from] customs_policy::snapshot::SnapshotError),
    /// Git failed (clone, fetch, ref lookup, object read).
    #[error("policy repository {url} ({reference}): {detail}")]
    Git {
        /// The repository.
        url: String,
        /// The ref asked for.
        reference: String,
        /// What failed.
        detail: String,
    },
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicySource::Dir(d) => write!(f, "{}", d.display()),
            PolicySource::Git { url, reference, .. } => write!(f, "{url}#{reference}"),
        }
    }
}

impl PolicySource {
    /// Reads the source's current revision (blocking: run it off the
    /// async threads).
    pub fn snapshot(&self) -> Result<Snapshot, SourceError> {
        match self {
            PolicySource::Dir(d) => Ok(Snapshot::from_dir(d)?),
            PolicySource::Git {
                url,
                reference,
                mirror_dir,
            } => git_snapshot(url, reference, mirror_dir).map_err(|detail| SourceError::Git {
                url: url.clone(),
                reference: reference.clone(),
                detail,
            }),
        }
    }
}

/// One validated or refused load.
pub enum Loaded {
    /// The revision validated.
    Good(PolicySet),
    /// The revision (if it could be read) and every error, with file:line.
    Refused {
        /// The refused revision, when known.
        revision: Option<String>,
        /// The errors.
        errors: String,
    },
}

/// Reads and validates the current revision (blocking).
pub fn load(source: &PolicySource) -> Loaded {
    let snap = match source.snapshot() {
        Ok(s) => s,
        Err(e) => {
            return Loaded::Refused {
                revision: None,
                errors: e.to_string(),
            };
        }
    };
    match customs_policy::compile(&snap) {
        Ok(set) => Loaded::Good(set),
        Err(e) => Loaded::Refused {
            revision: Some(snap.revision().to_owned()),
            errors: e.to_string(),
        },
    }
}

/// The set that denies everything: a configured source that never
/// validated must not turn into "allow" (fail closed).
pub fn deny_all() -> PolicySet {
    PolicySet {
        revision: "refused".to_owned(),
        revision_time: 0,
        policies: Vec::new(),
        tests: Vec::new(),
    }
}

#[derive(serde::Serialize)]
struct ReloadEvent<'a> {
    source: String,
    revision: &'a str,
    previous: &'a str,
    policies: Vec<&'a str>,
}

#[derive(serde::Serialize)]
struct RefusalEvent<'a> {
    source: String,
    revision: Option<&'a str>,
    in_force: &'a str,
    errors: &'a str,
}

/// Polls `source` every `interval` and swaps in each new revision that
/// validates; refusals keep the current set. Every change is an audit
/// event; a refusal is recorded once per refused revision.
pub async fn reload_loop(
    source: PolicySource,
    admission: Arc<GatewayAdmission>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last_refused: Option<String> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let src = source.clone();
        let loaded = match tokio::task::spawn_blocking(move || load(&src)).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "policy reload task failed");
                continue;
            }
        };
        let current = admission.policy_revision().unwrap_or_default();
        match loaded {
            Loaded::Good(set) if set.revision == current => {}
            Loaded::Good(set) => {
                last_refused = None;
                let event = ReloadEvent {
                    source: source.to_string(),
                    revision: &set.revision,
                    previous: &current,
                    policies: set.policies.iter().map(|p| p.name.as_str()).collect(),
                };
                if let Err(e) = admission.audit().write("policy-reload", &event).await {
                    // Not recorded, not applied: the old revision stays.
                    tracing::error!(error = %e, "policy reload could not be recorded; keeping the current revision");
                    continue;
                }
                tracing::info!(source = %source, revision = %set.revision, previous = %current, "policy reloaded");
                admission.count_policy_load(true);
                admission.replace_policy(set);
            }
            Loaded::Refused { revision, errors } => {
                let key = revision.clone().unwrap_or_else(|| errors.clone());
                if last_refused.as_deref() == Some(key.as_str()) {
                    continue;
                }
                tracing::error!(source = %source, revision = ?revision, in_force = %current, errors = %errors,
                    "policy revision refused; the last good revision stays in force");
                let event = RefusalEvent {
                    source: source.to_string(),
                    revision: revision.as_deref(),
                    in_force: &current,
                    errors: &errors,
                };
                if let Err(e) = admission.audit().write("policy-refused", &event).await {
                    tracing::error!(error = %e, "policy refusal could not be recorded");
                    continue;
                }
                admission.count_policy_load(false);
                last_refused = Some(key);
            }
        }
    }
}

/// Clones (first time) or fetches the bare mirror, then reads the tree of
/// `reference`'s commit. Hidden paths are skipped, as for directories.
fn git_snapshot(url: &str, reference: &str, mirror_dir: &Path) -> Result<Snapshot, String> {
    let interrupt = AtomicBool::new(false);
    let repo = if mirror_dir.join("HEAD").exists() {
        let repo = gix::open(mirror_dir).map_err(|e| format!("opening the mirror: {e}"))?;
        // An anonymous remote with explicit refspecs: a bare clone's origin
        // may carry none, and the URL is the configured one, not whatever
        // the mirror's config says.
        let remote = repo
            .remote_at(url)
            .map_err(|e| format!("remote {url}: {e}"))?
            .with_refspecs(
                [
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                gix::remote::Direction::Fetch,
            )
            .map_err(|e| format!("refspecs: {e}"))?;
        remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| format!("connecting: {e}"))?
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| format!("fetching: {e}"))?
            .receive(gix::progress::Discard, &interrupt)
            .map_err(|e| format!("fetching: {e}"))?;
        repo
    } else {
        std::fs::create_dir_all(mirror_dir)
            .map_err(|e| format!("{}: {e}", mirror_dir.display()))?;
        let mut prepare =
            gix::prepare_clone_bare(url, mirror_dir).map_err(|e| format!("cloning: {e}"))?;
        let (repo, _) = prepare
            .fetch_only(gix::progress::Discard, &interrupt)
            .map_err(|e| {
                // A failed first clone leaves nothing half-made behind.
                let _ = std::fs::remove_dir_all(mirror_dir);
                format!("cloning: {e}")
            })?;
        repo
    };
    let commit = resolve_commit(&repo, reference)?;
    let tree = commit
        .tree()
        .map_err(|e| format!("reading the tree: {e}"))?;
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| format!("walking the tree: {e}"))?;
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    for entry in recorder.records {
        if !entry.mode.is_blob() {
            continue;
        }
        let path = entry.filepath.to_string();
        if path.split('/').any(|seg| seg.starts_with('.')) {
            continue;
        }
        let object = repo
            .find_object(entry.oid)
            .map_err(|e| format!("{path}: {e}"))?;
        total += object.data.len() as u64;
        if total > MAX_SOURCE_BYTES || files.len() >= MAX_SOURCE_FILES {
            return Err(format!(
                "the policy tree is larger than {MAX_SOURCE_BYTES} bytes or {MAX_SOURCE_FILES} files"
            ));
        }
        files.insert(path, object.data.clone());
    }
    let time = commit
        .time()
        .map(|t| u64::try_from(t.seconds).unwrap_or(0))
        .unwrap_or(0);
    Ok(Snapshot::from_files(commit.id.to_string(), files).with_time(time))
}

/// `reference` as a remote branch, a tag, a full ref name or a commit id.
fn resolve_commit<'r>(
    repo: &'r gix::Repository,
    reference: &str,
) -> Result<gix::Commit<'r>, String> {
    let candidates = [
        format!("refs/remotes/origin/{reference}"),
        format!("refs/heads/{reference}"),
        format!("refs/tags/{reference}"),
        reference.to_owned(),
    ];
    for name in &candidates {
        if let Ok(Some(mut r)) = repo.try_find_reference(name.as_str()) {
            return r.peel_to_commit().map_err(|e| format!("{name}: {e}"));
        }
    }
    if let Ok(id) = gix::ObjectId::from_hex(reference.as_bytes())
        && let Ok(obj) = repo.find_object(id)
    {
        return obj
            .try_into_commit()
            .map_err(|e| format!("{reference}: {e}"));
    }
    Err(format!("no branch, tag or commit named {reference:?}"))
}
