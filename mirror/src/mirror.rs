//! Manifest resolution, admission, blob bindings and blob serving.

use crate::admission::{Admission, AdmissionRequest, Decision, Refusal, Verdict};
use crate::error::MirrorError;
use crate::range::ByteRange;
use crate::source::{FetchedManifest, Source};
use bytes::Bytes;
use customs_protocol::{Digest, ImageName, ManifestRefs, Reference};
use customs_store::inflight::{ByteStream, TailReader};
use customs_store::{BlobStore, FetchFailureKind, Table};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a mirror does with a blob request no local manifest binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnboundBlobs {
    /// Answer `BLOB_UNKNOWN` (the gateway: it is the enforcement point).
    Refuse,
    /// Ask the source, which enforces bindings itself (the peer).
    AskSource,
}

/// Timing knobs.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// How long a tag resolution is reused without asking the source.
    pub tag_ttl: Duration,
    /// How long a cached tag keeps being served while the source is down.
    pub stale_window: Duration,
    /// How long a denial is reused before admission runs again.
    pub deny_ttl: Duration,
    /// How long an allow is reused before admission runs again (`None`:
    /// until the revision changes — the gateway, which decides itself; a
    /// node re-checks with its gateway after this long).
    pub allow_ttl: Option<Duration>,
    /// Fail static: while admission is unavailable, an allow made under the
    /// newest revision seen keeps being served for at most this long after
    /// it was last confirmed; then the node refuses. Zero on the gateway.
    pub fail_static_max: Duration,
    /// How long an unknown tag is answered `MANIFEST_UNKNOWN` without asking
    /// the source again (so repeated misses cannot burn the upstream's rate
    /// limit).
    pub miss_ttl: Duration,
    /// See [`UnboundBlobs`].
    pub unbound_blobs: UnboundBlobs,
}

/// Most unknown tags remembered at once (the miss cache is bounded).
const MAX_REMEMBERED_MISSES: usize = 10_000;
/// Most manifests remembered as admitters of one blob in one repository.
const MAX_ADMITTERS: usize = 32;

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            tag_ttl: Duration::from_secs(30),
            stale_window: Duration::from_secs(6 * 3600),
            deny_ttl: Duration::from_secs(30),
            allow_ttl: None,
            fail_static_max: Duration::ZERO,
            miss_ttl: Duration::from_secs(10),
            unbound_blobs: UnboundBlobs::Refuse,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TagRecord {
    digest: Digest,
    fetched_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ManifestMeta {
    media_type: String,
}

/// A binding of content to a repository, written when a manifest of that
/// repository is admitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binding {
    /// The size the latest referencing manifest declares.
    pub size: u64,
    /// For index children: the admitted index that listed it.
    pub parent_index: Option<Digest>,
    /// For blobs: the admitted manifest that references it (records written
    /// before `admitters` existed; read as one admitter).
    #[serde(default)]
    pub admitted_by: Option<Digest>,
    /// For blobs: every admitted manifest of the repository that references
    /// it (newest last, at most [`MAX_ADMITTERS`]). The blob is served only
    /// while one of them is currently admitted, so revoking one image does
    /// not take away a layer another admitted image shares.
    #[serde(default)]
    pub admitters: Vec<Admitter>,
}

/// One manifest that references a blob, and the size it declares for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Admitter {
    /// The admitted manifest's digest.
    pub manifest: Digest,
    /// The blob size that manifest's descriptor declares.
    pub size: u64,
}

impl Binding {
    /// Every admitter, including one recorded in the older field.
    pub fn all_admitters(&self) -> Vec<Admitter> {
        let mut all = self.admitters.clone();
        if let Some(d) = &self.admitted_by
            && !all.iter().any(|a| a.manifest == *d)
        {
            all.insert(
                0,
                Admitter {
                    manifest: d.clone(),
                    size: self.size,
                },
            );
        }
        all
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AdmissionRecord {
    decision: Decision,
    decided_at: u64,
}

/// A manifest ready to serve.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    /// Exact bytes.
    pub bytes: Bytes,
    /// Verified digest.
    pub digest: Digest,
    /// Content-Type to send.
    pub media_type: String,
}

/// A blob response: its full size, the range served and the body.
pub struct BlobBody {
    /// Full blob size.
    pub size: u64,
    /// The range served, when a Range header asked for one.
    pub range: Option<ByteRange>,
    /// The bytes.
    pub body: ByteStream,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn key(image: &ImageName, suffix: &str) -> String {
    format!("{image}{suffix}")
}

/// A pull-through mirror over a [`Source`], gated by an [`Admission`].
pub struct Mirror<S, A> {
    store: Arc<BlobStore>,
    source: Arc<S>,
    admission: Arc<A>,
    cfg: MirrorConfig,
    /// One fresh decision at a time per (repository, digest): concurrent
    /// cold pulls of one image wait for it instead of each fetching and
    /// verifying the evidence again.
    deciding: DecidingLocks,
    /// Serialises read-modify-write of blob bindings (several manifests of
    /// one repository may be admitted at once and share layers).
    binding_lock: Arc<std::sync::Mutex<()>>,
    /// Unknown tags recently answered by the source, and when.
    misses: std::sync::Mutex<HashMap<String, Instant>>,
}

/// Per-key async locks, removed when the last holder is done.
type DecidingLocks = Arc<std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// Removes a key's lock from [`DecidingLocks`] when nobody else holds it.
struct DecidingGuard {
    locks: DecidingLocks,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl DecidingGuard {
    /// The key's lock (shared with concurrent requests for the same key).
    /// The guard holds the only reference besides the map's, so it can tell
    /// when the last holder is done and drop the entry.
    fn take(locks: &DecidingLocks, key: &str) -> Self {
        let lock = locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        DecidingGuard {
            locks: locks.clone(),
            key: key.to_owned(),
            lock,
        }
    }
}

impl Drop for DecidingGuard {
    fn drop(&mut self) {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // The map's reference and ours: nobody is waiting.
        if Arc::strong_count(&self.lock) <= 2 {
            map.remove(&self.key);
        }
    }
}

impl<S: Source, A: Admission> Mirror<S, A> {
    /// Builds a mirror.
    pub fn new(
        store: Arc<BlobStore>,
        source: Arc<S>,
        admission: Arc<A>,
        cfg: MirrorConfig,
    ) -> Self {
        Mirror {
            store,
            source,
            admission,
            cfg,
            deciding: Arc::default(),
            binding_lock: Arc::default(),
            misses: std::sync::Mutex::default(),
        }
    }

    /// The source (for status: where content comes from).
    pub fn source(&self) -> &Arc<S> {
        &self.source
    }

    /// The store (for gc and status).
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    /// Resolves, verifies and admits a manifest.
    pub async fn manifest(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> Result<ServedManifest, MirrorError> {
        let r = self.manifest_inner(image, reference).await;
        self.count_refusal(image, &r);
        r
    }

    /// Tells admission about a refusal (metrics), once per request.
    fn count_refusal<T>(&self, image: &ImageName, r: &Result<T, MirrorError>) {
        let kind = match r {
            Err(MirrorError::Denied(_)) => Refusal::Denied,
            Err(MirrorError::NotCurrent(_)) => Refusal::NotCurrent,
            Err(MirrorError::BlobUnknown(_)) => Refusal::Unbound,
            Err(MirrorError::Source(f)) if f.kind == FetchFailureKind::Denied => Refusal::Denied,
            _ => return,
        };
        self.admission.refused(image, kind);
    }

    async fn manifest_inner(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> Result<ServedManifest, MirrorError> {
        let (digest, fetched) = match reference {
            Reference::Digest(d) => (d.clone(), None),
            Reference::Tag(tag) => self.resolve_tag(image, tag.as_str()).await?,
        };
        let (bytes, declared_type) = match fetched {
            Some(f) => f,
            None => self.manifest_by_digest(image, &digest).await?,
        };
        let refs = ManifestRefs::parse(&bytes, declared_type.as_deref())
            .map_err(|e| MirrorError::ManifestInvalid(e.to_string()))?;
        self.admit(image, &digest, &refs, &bytes).await?;
        Ok(ServedManifest {
            bytes,
            digest,
            media_type: refs.media_type,
        })
    }

    /// Tag → digest, through the cache within its TTL, the source otherwise,
    /// and the cache again within the stale window when the source is down.
    async fn resolve_tag(
        &self,
        image: &ImageName,
        tag: &str,
    ) -> Result<(Digest, Option<(Bytes, Option<String>)>), MirrorError> {
        let tag_key = key(image, &format!(":{tag}"));
        let cached: Option<TagRecord> = self
            .store
            .index()
            .get(Table::Tags, &tag_key)
            .map_err(customs_store::StoreError::from)?;
        let now = now_secs();
        if let Some(c) = &cached
            && now.saturating_sub(c.fetched_at) < self.cfg.tag_ttl.as_secs()
        {
            return Ok((c.digest.clone(), None));
        }
        if self.recent_miss(&tag_key) {
            return Err(MirrorError::ManifestUnknown(format!(
                "{image}:{tag}: unknown (answered from the miss cache)"
            )));
        }
        let reference = Reference::Tag(tag.parse()?);
        match self.source.manifest(image, &reference).await {
            Ok(m) => {
                let (digest, bytes, media_type) = self.verify_and_store(m, None).await?;
                let rec = TagRecord {
                    digest: digest.clone(),
                    fetched_at: now,
                };
                self.store
                    .blocking_index(move |idx| idx.put(Table::Tags, &tag_key, &rec))
                    .await?;
                Ok((digest, Some((bytes, media_type))))
            }
            Err(f) if f.kind == FetchFailureKind::NotFound => {
                self.remember_miss(tag_key);
                Err(MirrorError::ManifestUnknown(format!(
                    "{image}:{tag}: {}",
                    f.message
                )))
            }
            // A denial is final: never "unavailable", never answered from
            // the stale tag cache.
            Err(f) if f.kind == FetchFailureKind::Denied => Err(MirrorError::Source(f)),
            Err(f) => match cached {
                Some(c) if now.saturating_sub(c.fetched_at) < self.cfg.stale_window.as_secs() => {
                    tracing::warn!(%image, tag, error = %f, digest = %c.digest, "source unavailable; serving cached tag");
                    Ok((c.digest, None))
                }
                _ => Err(MirrorError::Source(f)),
            },
        }
    }

    fn recent_miss(&self, tag_key: &str) -> bool {
        let misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        misses
            .get(tag_key)
            .is_some_and(|t| t.elapsed() < self.cfg.miss_ttl)
    }

    fn remember_miss(&self, tag_key: String) {
        if self.cfg.miss_ttl.is_zero() {
            return;
        }
        let mut misses = self.misses.lock().unwrap_or_else(|e| e.into_inner());
        if misses.len() >= MAX_REMEMBERED_MISSES {
            let ttl = self.cfg.miss_ttl;
            misses.retain(|_, t| t.elapsed() < ttl);
            if misses.len() >= MAX_REMEMBERED_MISSES {
                misses.clear();
            }
        }
        misses.insert(tag_key, Instant::now());
    }

    async fn manifest_by_digest(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<(Bytes, Option<String>), MirrorError> {
        if let Some(mut r) = self.store.open_blob(digest).await? {
            if r.size > customs_protocol::MAX_MANIFEST_BYTES as u64 {
                return Err(MirrorError::ManifestInvalid(format!(
                    "{digest} is not a manifest"
                )));
            }
            let mut buf = Vec::with_capacity(r.size as usize);
            tokio::io::AsyncReadExt::read_to_end(&mut r.file, &mut buf)
                .await
                .map_err(customs_store::StoreError::from)?;
            let meta: Option<ManifestMeta> = self
                .store
                .index()
                .get(Table::Manifests, &digest.to_string())
                .map_err(customs_store::StoreError::from)?;
            return Ok((Bytes::from(buf), meta.map(|m| m.media_type)));
        }
        let m = self
            .source
            .manifest(image, &Reference::Digest(digest.clone()))
            .await
            .map_err(|f| match f.kind {
                FetchFailureKind::NotFound => {
                    MirrorError::ManifestUnknown(format!("{image}@{digest}: {}", f.message))
                }
                _ => MirrorError::Source(f),
            })?;
        let (_, bytes, media_type) = self.verify_and_store(m, Some(digest)).await?;
        Ok((bytes, media_type))
    }

    /// Checks a fetched manifest's size and digest (against the requested
    /// digest and the declared one), then stores it.
    async fn verify_and_store(
        &self,
        m: FetchedManifest,
        expected: Option<&Digest>,
    ) -> Result<(Digest, Bytes, Option<String>), MirrorError> {
        if m.bytes.len() > customs_protocol::MAX_MANIFEST_BYTES {
            return Err(MirrorError::ManifestInvalid(format!(
                "manifest is {} bytes, over the 4 MiB limit",
                m.bytes.len()
            )));
        }
        let actual = Digest::of(&m.bytes);
        for want in expected.into_iter().chain(m.declared_digest.as_ref()) {
            if *want != actual {
                return Err(MirrorError::ManifestInvalid(format!(
                    "manifest hashes to {actual}, not {want}"
                )));
            }
        }
        self.store.put_verified_bytes(&actual, &m.bytes).await?;
        if let Some(mt) = &m.media_type {
            let k = actual.to_string();
            let rec = ManifestMeta {
                media_type: mt.clone(),
            };
            self.store
                .blocking_index(move |idx| idx.put(Table::Manifests, &k, &rec))
                .await?;
        }
        Ok((actual, m.bytes, m.media_type))
    }

    /// A stored decision that is current under `revision`: made under that
    /// revision, an allow within the allow TTL (if any), a denial within the
    /// deny TTL. With `count`, a hit is reported to admission (aggregated
    /// cache-hit events); blob checks do not count.
    fn cached_decision(
        &self,
        image: &ImageName,
        adm_key: &str,
        revision: &str,
        count: bool,
    ) -> Result<Option<Result<(), MirrorError>>, MirrorError> {
        let Some(rec) = self.stored_decision(adm_key)? else {
            return Ok(None);
        };
        if rec.decision.revision != revision || revision.is_empty() {
            return Ok(None);
        }
        let age = now_secs().saturating_sub(rec.decided_at);
        Ok(match rec.decision.verdict {
            Verdict::Allow if self.cfg.allow_ttl.is_none_or(|t| age < t.as_secs()) => {
                if count {
                    self.admission.cached(image, Verdict::Allow);
                }
                Some(Ok(()))
            }
            Verdict::Deny if age < self.cfg.deny_ttl.as_secs() => {
                if count {
                    self.admission.cached(image, Verdict::Deny);
                }
                Some(Err(MirrorError::Denied(rec.decision.reasons.join("; "))))
            }
            _ => None,
        })
    }

    fn stored_decision(&self, adm_key: &str) -> Result<Option<AdmissionRecord>, MirrorError> {
        Ok(self
            .store
            .index()
            .get(Table::Admissions, adm_key)
            .map_err(customs_store::StoreError::from)?)
    }

    /// Runs (or reuses) admission; on allow, binds the manifest's blobs and
    /// children to the repository.
    async fn admit(
        &self,
        image: &ImageName,
        digest: &Digest,
        refs: &ManifestRefs,
        bytes: &[u8],
    ) -> Result<(), MirrorError> {
        let adm_key = key(image, &format!("@{digest}"));
        let revision = self.admission.revision();
        if let Some(answer) = self.cached_decision(image, &adm_key, &revision, true)? {
            return answer;
        }
        let cleanup = DecidingGuard::take(&self.deciding, &adm_key);
        let _deciding = cleanup.lock.lock().await;
        // Decided by a concurrent request while this one waited? (The
        // revision may have moved meanwhile: read it again.)
        let revision = self.admission.revision();
        if let Some(answer) = self.cached_decision(image, &adm_key, &revision, false)? {
            return answer;
        }
        let binding: Option<Binding> = self
            .store
            .index()
            .get(Table::Bindings, &adm_key)
            .map_err(customs_store::StoreError::from)?;
        let parent = binding.and_then(|b| b.parent_index);
        let outcome = self
            .admission
            .admit(AdmissionRequest {
                image,
                digest,
                manifest: refs,
                bytes,
                parent_index: parent.as_ref(),
            })
            .await;
        let decision = match outcome {
            Ok(d) => d,
            Err(unavailable) => return self.fail_static(image, digest, &adm_key, &unavailable),
        };
        let verdict = decision.verdict;
        let reasons = decision.reasons.join("; ");
        let record = AdmissionRecord {
            decision,
            decided_at: now_secs(),
        };
        let mut children: Vec<(String, Binding)> = Vec::new();
        let mut blobs: Vec<(String, u64)> = Vec::new();
        if verdict == Verdict::Allow {
            blobs.extend(
                refs.blobs
                    .iter()
                    .map(|b| (key(image, &format!("@{}", b.digest)), b.size)),
            );
            children.extend(refs.children.iter().map(|c| {
                (
                    key(image, &format!("@{}", c.digest)),
                    Binding {
                        size: c.size,
                        parent_index: Some(digest.clone()),
                        admitted_by: None,
                        admitters: Vec::new(),
                    },
                )
            }));
        }
        let manifest = digest.clone();
        let lock = self.binding_lock.clone();
        // Bindings first, then the decision: a crash in between leaves a
        // manifest that is re-admitted, never a decision without bindings.
        self.store
            .blocking_index(move |idx| {
                let _serial = lock.lock().unwrap_or_else(|e| e.into_inner());
                // An index child keeps whatever binding it already has (a
                // digest some admitted manifest lists as a blob keeps those
                // admitters, so an index cannot take its binding over); the
                // index only adds itself as the parent.
                let mut bindings = Vec::with_capacity(children.len());
                for (k, child) in children {
                    let b = match idx.get::<Binding>(Table::Bindings, &k)? {
                        Some(mut existing) => {
                            existing.parent_index = child.parent_index;
                            if existing.all_admitters().is_empty() {
                                existing.size = child.size;
                            }
                            existing
                        }
                        None => child,
                    };
                    bindings.push((k, b));
                }
                for (k, size) in blobs {
                    let mut b: Binding = idx.get(Table::Bindings, &k)?.unwrap_or(Binding {
                        size,
                        parent_index: None,
                        admitted_by: None,
                        admitters: Vec::new(),
                    });
                    b.admitters = b.all_admitters();
                    b.admitted_by = None;
                    b.admitters.retain(|a| a.manifest != manifest);
                    b.admitters.push(Admitter {
                        manifest: manifest.clone(),
                        size,
                    });
                    let excess = b.admitters.len().saturating_sub(MAX_ADMITTERS);
                    b.admitters.drain(..excess);
                    b.size = size;
                    bindings.push((k, b));
                }
                idx.put_many(Table::Bindings, &bindings)?;
                idx.put(Table::Admissions, &adm_key, &record)
            })
            .await?;
        match verdict {
            Verdict::Allow => Ok(()),
            Verdict::Deny => Err(MirrorError::Denied(reasons)),
        }
    }

    /// Admission is unavailable: serve an allow made under the newest
    /// revision seen, within the fail-static window since it was last
    /// confirmed; a denial stays a denial; everything else is refused.
    fn fail_static(
        &self,
        image: &ImageName,
        digest: &Digest,
        adm_key: &str,
        unavailable: &crate::admission::AdmissionUnavailable,
    ) -> Result<(), MirrorError> {
        let revision = self.admission.revision();
        let window = self.cfg.fail_static_max;
        match self.stored_decision(adm_key)? {
            Some(rec) if rec.decision.revision == revision && !revision.is_empty() => {
                let age = now_secs().saturating_sub(rec.decided_at);
                match rec.decision.verdict {
                    Verdict::Deny => Err(MirrorError::Denied(rec.decision.reasons.join("; "))),
                    Verdict::Allow if age < window.as_secs() => {
                        tracing::warn!(%image, %digest, revision, age_secs = age, max_secs = window.as_secs(),
                            error = %unavailable, "admission unavailable: serving the last admission (fail static)");
                        Ok(())
                    }
                    Verdict::Allow => Err(MirrorError::NotCurrent(format!(
                        "{image}@{digest}: admission not confirmed for {age} s (the limit is {} s) and it cannot be re-checked: {unavailable}",
                        window.as_secs()
                    ))),
                }
            }
            _ => Err(MirrorError::NotCurrent(format!(
                "{image}@{digest} has no current admission under the newest policy revision seen, and it cannot be checked: {unavailable}"
            ))),
        }
    }

    /// The admission binding of a blob to a repository, if any.
    pub fn binding(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<Option<Binding>, MirrorError> {
        let k = key(image, &format!("@{digest}"));
        Ok(self
            .store
            .index()
            .get(Table::Bindings, &k)
            .map_err(customs_store::StoreError::from)?)
    }

    /// The revision admission currently decides under.
    pub fn admission_revision(&self) -> String {
        self.admission.revision()
    }

    /// Whether manifest `digest` of `image` is admitted now: a current
    /// stored decision, else admission runs again on the stored (or
    /// fetched) manifest, under the current revision.
    pub async fn current_admission(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<(), MirrorError> {
        let adm_key = key(image, &format!("@{digest}"));
        let revision = self.admission.revision();
        if let Some(answer) = self.cached_decision(image, &adm_key, &revision, false)? {
            return answer;
        }
        let (bytes, declared_type) = self.manifest_by_digest(image, digest).await?;
        let refs = ManifestRefs::parse(&bytes, declared_type.as_deref())
            .map_err(|e| MirrorError::ManifestInvalid(e.to_string()))?;
        self.admit(image, digest, &refs, &bytes).await
    }

    /// The size of a blob as bound to this repository by a currently
    /// admitted manifest, or the refusal. When the blob is stored, its
    /// real size must equal what the admitting manifest declares: a
    /// descriptor that disagrees is an error for that manifest.
    pub async fn blob_size(&self, image: &ImageName, digest: &Digest) -> Result<u64, MirrorError> {
        self.admitted_blob(image, digest)
            .await
            .map(|(size, _)| size)
    }

    /// [`Mirror::blob_size`] and the manifest (or index) whose current
    /// admission allows the blob, when one does (not for a blob the source
    /// vouched for).
    async fn admitted_blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<(u64, Option<Digest>), MirrorError> {
        let r = self.admitted_blob_size(image, digest).await;
        self.count_refusal(image, &r);
        r
    }

    async fn admitted_blob_size(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<(u64, Option<Digest>), MirrorError> {
        let binding = self.binding(image, digest)?;
        let stored = self.store.meta(digest)?.map(|m| m.size);
        match (binding, self.cfg.unbound_blobs) {
            (Some(b), _) => {
                let admitters = b.all_admitters();
                if admitters.is_empty() {
                    // An index child addressed as a blob: it stands or
                    // falls with the index that listed it.
                    return match &b.parent_index {
                        Some(index) => {
                            self.current_admission(image, index).await?;
                            Ok((b.size, Some(index.clone())))
                        }
                        None => Err(MirrorError::BlobUnknown(format!(
                            "{digest} is not referenced by an admitted manifest of {image}"
                        ))),
                    };
                }
                let mut refusal = None;
                // Newest first: the likeliest to be admitted now.
                for a in admitters.iter().rev() {
                    if let Some(real) = stored
                        && real != a.size
                    {
                        refusal.get_or_insert(MirrorError::ManifestInvalid(format!(
                            "{image}@{}: its descriptor for {digest} declares {} bytes, the stored blob has {real}",
                            a.manifest, a.size
                        )));
                        continue;
                    }
                    match self.current_admission(image, &a.manifest).await {
                        Ok(()) => return Ok((a.size, Some(a.manifest.clone()))),
                        Err(e @ (MirrorError::Denied(_) | MirrorError::NotCurrent(_))) => {
                            if !matches!(refusal, Some(MirrorError::Denied(_))) {
                                refusal = Some(e);
                            }
                        }
                        Err(e) => {
                            refusal.get_or_insert(e);
                        }
                    }
                }
                Err(match refusal {
                    Some(MirrorError::Denied(why)) => MirrorError::Denied(format!(
                        "{digest} of {image}: no manifest referencing it is admitted now: {why}"
                    )),
                    Some(e) => e,
                    None => MirrorError::BlobUnknown(format!(
                        "{digest} is not referenced by an admitted manifest of {image}"
                    )),
                })
            }
            (None, UnboundBlobs::Refuse) => Err(MirrorError::BlobUnknown(format!(
                "{digest} is not referenced by an admitted manifest of {image}"
            ))),
            (None, UnboundBlobs::AskSource) => self
                .source
                .blob_size(image, digest)
                .await
                .map(|size| (size, None))
                .map_err(MirrorError::for_blob),
        }
    }

    /// A reader of a blob bound to an admitted manifest of `image` (the
    /// same checks as [`Mirror::blob`]), from its start, once the source
    /// answered: the gateway's seed hashes pieces from it and serves them
    /// from its file while the fetch is still running.
    pub async fn blob_reader(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<TailReader, MirrorError> {
        let (size, via) = self.admitted_blob(image, digest).await?;
        self.reader_at(image, digest, size, via.as_ref(), 0).await
    }

    async fn reader_at(
        &self,
        image: &ImageName,
        digest: &Digest,
        size: u64,
        via: Option<&Digest>,
        start: u64,
    ) -> Result<TailReader, MirrorError> {
        let mut reader = self.store.fetch_or_join(
            &image.registry,
            digest,
            size,
            start,
            self.source.blob_body_via(image, digest, size, via),
        )?;
        reader.started().await.map_err(MirrorError::for_blob)?;
        Ok(reader)
    }

    /// Serves a blob (or a range of it), fetching it once on a miss.
    pub async fn blob(
        &self,
        image: &ImageName,
        digest: &Digest,
        range_header: Option<&str>,
    ) -> Result<BlobBody, MirrorError> {
        let (size, via) = self.admitted_blob(image, digest).await?;
        let range = crate::range::parse(range_header, size).map_err(MirrorError::Range)?;
        let start = range.map_or(0, |r| r.start);
        let reader = self
            .reader_at(image, digest, size, via.as_ref(), start)
            .await?;
        let end = range.map_or(size, |r| r.end);
        Ok(BlobBody {
            size,
            range,
            body: reader.into_stream_until(end),
        })
    }
}

#[cfg(test)]
mod deciding_tests {
    use super::*;

    #[test]
    fn a_key_lock_is_shared_and_goes_with_its_last_holder() {
        let locks = DecidingLocks::default();
        let a = DecidingGuard::take(&locks, "r/a@d");
        let b = DecidingGuard::take(&locks, "r/a@d");
        assert!(Arc::ptr_eq(&a.lock, &b.lock), "one lock per key");
        let other = DecidingGuard::take(&locks, "r/b@d");
        assert!(!Arc::ptr_eq(&a.lock, &other.lock));
        drop(a);
        assert!(
            locks.lock().unwrap().contains_key("r/a@d"),
            "b still holds it"
        );
        drop(b);
        drop(other);
        assert!(locks.lock().unwrap().is_empty(), "no entry left behind");
    }
}
