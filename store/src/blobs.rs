//! Blob files on disk, their metadata, reads with pins, and LRU eviction.

use crate::StoreError;
use crate::index::{Index, Table};
use crate::inflight::{self, FetchKey, Inflight, TailReader};
use customs_protocol::{Digest, RegistryHost};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How a store is laid out and bounded.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Root folder; `blobs/`, `tmp/` and `index.redb` live under it.
    pub root: PathBuf,
    /// Size limit for stored blobs; least-recently-used blobs are evicted
    /// beyond it. `u64::MAX` disables eviction.
    pub max_bytes: u64,
}

/// What the index records per stored blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobMeta {
    /// Size in bytes (verified when stored).
    pub size: u64,
    /// Unix seconds of the last read, for LRU eviction.
    pub last_access: u64,
}

/// What a garbage collection run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub evicted: usize,
    /// Bytes freed.
    pub freed: u64,
    /// Bytes still stored.
    pub remaining: u64,
    /// Blobs skipped because they were being served or fetched.
    pub skipped_in_use: usize,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Access times are written back at most this often per blob, so a hot blob
/// does not turn every read into a durable index write.
const ACCESS_WRITE_INTERVAL_SECS: u64 = 60;

/// The blob store. Shared through `Arc`.
pub struct BlobStore {
    cfg: StoreConfig,
    index: Index,
    /// Blobs with open readers: never evicted while the count is non-zero.
    pins: Arc<Mutex<HashMap<Digest, usize>>>,
    /// Fetches in progress, one per (registry, digest).
    pub(crate) inflight: Mutex<HashMap<FetchKey, Arc<Inflight>>>,
    /// See [`BlobStore::set_source_idle_timeout`], in milliseconds.
    source_idle_ms: AtomicU64,
    /// See [`BlobStore::set_source_open_timeout`], in milliseconds; 0: the
    /// idle timeout.
    source_open_ms: AtomicU64,
    /// Serialises eviction so two runs do not race over the same files.
    gc_lock: tokio::sync::Mutex<()>,
    /// Makes temp file names unique.
    tmp_seq: AtomicU64,
    /// Bumped after every blob is recorded, for [`BlobStore::wait_stored`].
    commits: tokio::sync::watch::Sender<u64>,
    /// Every fetch task, so shutdown can let them finish (see
    /// [`BlobStore::fetches_done`]).
    pub(crate) fetches: tokio_util::task::TaskTracker,
}

/// Holds a blob against eviction for as long as it lives.
pub struct Pin {
    pins: Arc<Mutex<HashMap<Digest, usize>>>,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = pins.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.digest);
            }
        }
    }
}

/// An open stored blob: the file, its verified size, and a pin.
pub struct BlobReader {
    /// The open file (positioned at 0).
    pub file: tokio::fs::File,
    /// Its size.
    pub size: u64,
    /// Keeps the blob from being evicted while it is read.
    pub pin: Pin,
}

impl BlobStore {
    /// Waits until no fetch is in progress (shutdown: a fetch under way
    /// finishes, is verified and recorded rather than cut off). New fetches
    /// may still start; callers bound the wait with their drain deadline.
    pub async fn fetches_done(&self) {
        self.fetches.close();
        self.fetches.wait().await;
    }

    /// Opens the store, creating its folders and discarding temp files left
    /// by a crash (they were never verified, so they are never kept).
    pub fn open(cfg: StoreConfig) -> Result<Arc<Self>, StoreError> {
        std::fs::create_dir_all(cfg.root.join("blobs/sha256"))?;
        let tmp = cfg.root.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        let index = Index::open(&cfg.root.join("index.redb"))?;
        Ok(Arc::new(BlobStore {
            cfg,
            index,
            pins: Arc::default(),
            inflight: Mutex::default(),
            gc_lock: tokio::sync::Mutex::new(()),
            tmp_seq: AtomicU64::new(0),
            source_idle_ms: AtomicU64::new(duration_ms(inflight::SOURCE_IDLE_TIMEOUT)),
            source_open_ms: AtomicU64::new(0),
            commits: tokio::sync::watch::Sender::new(0),
            fetches: tokio_util::task::TaskTracker::new(),
        }))
    }

    /// The index, for the tables other layers keep (tags, bindings, admissions).
    pub fn index(&self) -> &Index {
        &self.index
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.cfg.root.join("blobs/sha256").join(d.hex())
    }

    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.cfg.root.join("tmp")
    }

    /// A temp file name no other writer uses (`<hex>.<n>.<ext>`).
    pub(crate) fn unique_tmp_path(&self, d: &Digest, ext: &str) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir().join(format!("{}.{n}.{ext}", d.hex()))
    }

    /// Sets how long a fetch waits for its source to open and then for each
    /// next chunk before it fails its readers (default
    /// [`inflight::SOURCE_IDLE_TIMEOUT`]). A node whose source enforces
    /// shorter timeouts of its own sets this a little above them, so the
    /// source's more specific error is the one clients see.
    pub fn set_source_idle_timeout(&self, idle: Duration) {
        self.source_idle_ms
            .store(duration_ms(idle).max(1), Ordering::Relaxed);
    }

    pub(crate) fn source_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.source_idle_ms.load(Ordering::Relaxed))
    }

    /// Sets how long a fetch waits for its source to open (its first
    /// stream), separately from the gap allowed between chunks (default: the
    /// idle timeout). A swarm peer opens a cold blob only once the gateway
    /// has fetched, verified and signed the whole of it, which for a large
    /// layer from a slow upstream takes longer than any chunk gap should;
    /// the gateway's own upstream timeouts bound that wait.
    pub fn set_source_open_timeout(&self, open: Duration) {
        self.source_open_ms
            .store(duration_ms(open).max(1), Ordering::Relaxed);
    }

    pub(crate) fn source_open_timeout(&self) -> Duration {
        match self.source_open_ms.load(Ordering::Relaxed) {
            0 => self.source_idle_timeout(),
            ms => Duration::from_millis(ms),
        }
    }

    pub(crate) fn pin(&self, d: &Digest) -> Pin {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        *pins.entry(d.clone()).or_insert(0) += 1;
        Pin {
            pins: self.pins.clone(),
            digest: d.clone(),
        }
    }

    /// Metadata of a stored blob, if present.
    pub fn meta(&self, d: &Digest) -> Result<Option<BlobMeta>, StoreError> {
        Ok(self.index.get(Table::Blobs, &d.to_string())?)
    }

    /// Opens a stored blob for reading, pinning it. `None` when absent.
    pub async fn open_blob(&self, d: &Digest) -> Result<Option<BlobReader>, StoreError> {
        let pin = self.pin(d);
        let Some(meta) = self.meta(d)? else {
            return Ok(None);
        };
        let file = match tokio::fs::File::open(self.blob_path(d)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let now = now_secs();
        if now.saturating_sub(meta.last_access) >= ACCESS_WRITE_INTERVAL_SECS {
            let key = d.to_string();
            let rec = BlobMeta {
                size: meta.size,
                last_access: now,
            };
            self.blocking_index(move |idx| idx.put(Table::Blobs, &key, &rec))
                .await?;
        }
        Ok(Some(BlobReader {
            file,
            size: meta.size,
            pin,
        }))
    }

    /// Stores small content already in memory (manifests), after checking
    /// its digest.
    pub async fn put_verified_bytes(&self, d: &Digest, bytes: &[u8]) -> Result<bool, StoreError> {
        if Digest::of(bytes) != *d {
            return Ok(false);
        }
        if self.meta(d)?.is_some() {
            return Ok(true);
        }
        // Unique per writer: concurrent first requests for the same manifest
        // each write their own temp file; the first rename wins.
        let tmp = self.unique_tmp_path(d, "put");
        tokio::fs::write(&tmp, bytes).await?;
        self.commit_file(d, &tmp, bytes.len() as u64).await?;
        Ok(true)
    }

    /// Moves a verified temp file into place and records it; then enforces
    /// the size limit.
    pub(crate) async fn commit_file(
        &self,
        d: &Digest,
        tmp: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let f = tokio::fs::File::open(tmp).await?;
        f.sync_all().await?;
        tokio::fs::rename(tmp, self.blob_path(d)).await?;
        self.record(d, size).await
    }

    /// Keeps a complete, verified file that a source assembled itself
    /// (see [`inflight::AssembledBlob`]): made durable, then linked into
    /// place under a temp name and renamed over the blob's path, so the
    /// bytes are neither hashed nor written a second time. The source may
    /// unlink its own name afterwards. Across file systems (a link is
    /// impossible) the open file is copied instead.
    ///
    /// The link is made by path, so it is checked to be the very file that
    /// was verified (same device and inode as the open descriptor): if the
    /// source's name now points elsewhere (it dropped the name and a new,
    /// unverified download took it), nothing is kept.
    pub(crate) async fn adopt_file(
        &self,
        d: &Digest,
        file: Arc<std::fs::File>,
        path: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        let tmp = self.unique_tmp_path(d, "link");
        let from = path.to_path_buf();
        let link = tmp.clone();
        let placed = tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            use std::os::unix::fs::MetadataExt;
            file.sync_all()?;
            match std::fs::hard_link(&from, &link) {
                Ok(()) => {
                    let (ours, linked) = (file.metadata()?, std::fs::metadata(&link)?);
                    if (ours.dev(), ours.ino()) != (linked.dev(), linked.ino()) {
                        return Err(StoreError::NotAdopted(from));
                    }
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
                    copy_open_file(&file, &link, size)
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?;
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        if let Err(e) = tokio::fs::rename(&tmp, self.blob_path(d)).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        self.record(d, size).await
    }

    /// Records a blob that is in place, wakes its waiters, then enforces
    /// the size limit.
    async fn record(&self, d: &Digest, size: u64) -> Result<(), StoreError> {
        let key = d.to_string();
        let rec = BlobMeta {
            size,
            last_access: now_secs(),
        };
        self.blocking_index(move |idx| idx.put(Table::Blobs, &key, &rec))
            .await?;
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
        if self.cfg.max_bytes != u64::MAX {
            self.gc(self.cfg.max_bytes).await?;
        }
        Ok(())
    }

    /// Runs an index operation off the async workers (redb commits fsync).
    pub async fn blocking_index<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Index) -> Result<T, crate::IndexError> + Send + 'static,
    {
        let idx = self.index.clone();
        tokio::task::spawn_blocking(move || f(&idx))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
            .map_err(StoreError::from)
    }

    /// Evicts least-recently-used blobs until at most `target` bytes remain,
    /// skipping blobs that are pinned by a reader or being fetched.
    pub async fn gc(&self, target: u64) -> Result<GcReport, StoreError> {
        let _guard = self.gc_lock.lock().await;
        let mut blobs = self.index.scan::<BlobMeta>(Table::Blobs)?;
        let mut used: u64 = blobs.iter().map(|(_, m)| m.size).sum();
        let mut report = GcReport::default();
        blobs.sort_by_key(|(_, m)| m.last_access);
        let mut removed = Vec::new();
        for (key, meta) in blobs {
            if used <= target {
                break;
            }
            let Ok(d) = key.parse::<Digest>() else {
                continue;
            };
            let busy = {
                let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
                let infl = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
                pins.contains_key(&d) || infl.keys().any(|(_, x)| *x == d)
            };
            if busy {
                report.skipped_in_use += 1;
                continue;
            }
            match tokio::fs::remove_file(self.blob_path(&d)).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            used -= meta.size;
            report.evicted += 1;
            report.freed += meta.size;
            removed.push(key);
        }
        if !removed.is_empty() {
            tracing::info!(
                evicted = report.evicted,
                freed = report.freed,
                "evicted least-recently-used blobs"
            );
            self.blocking_index(move |idx| idx.remove_many(Table::Blobs, &removed))
                .await?;
        }
        report.remaining = used;
        Ok(report)
    }

    /// Starts (or joins) the single fetch of a blob from `registry` and
    /// returns a reader that streams it from `offset` as it arrives; a blob
    /// already stored is read from disk whichever registry asks. A fetch of
    /// the same digest from another registry is never joined. See
    /// [`inflight`].
    pub fn fetch_or_join<F, B>(
        self: &Arc<Self>,
        registry: &RegistryHost,
        digest: &Digest,
        size: u64,
        offset: u64,
        open: F,
    ) -> Result<TailReader, StoreError>
    where
        F: std::future::Future<Output = Result<B, crate::FetchFailure>> + Send + 'static,
        B: Into<inflight::SourceBody>,
    {
        let open = async move { open.await.map(Into::into) };
        inflight::fetch_or_join(self, registry, digest, size, offset, open)
    }

    /// Waits (at most `within`) until `d` is stored, and returns its
    /// metadata; `None` if it was not stored in time. Woken by every
    /// commit, never polled.
    pub async fn wait_stored(
        &self,
        d: &Digest,
        within: Duration,
    ) -> Result<Option<BlobMeta>, StoreError> {
        // Subscribed before the first look, so a commit in between wakes us.
        let mut commits = self.commits.subscribe();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(m) = self.meta(d)? {
                return Ok(Some(m));
            }
            match tokio::time::timeout_at(deadline, commits.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Ok(None),
            }
        }
    }
}

/// Copies `size` bytes of an open file to a new file at `to` and makes it
/// durable (positional reads: the source may be read by others meanwhile).
fn copy_open_file(file: &std::fs::File, to: &Path, size: u64) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let mut out = std::fs::File::create(to)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        out.write_all(&buf[..n])?;
        at += n as u64;
    }
    out.sync_all()?;
    Ok(())
}

/// A duration in whole milliseconds, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max: u64) -> Arc<BlobStore> {
        BlobStore::open(StoreConfig {
            root: dir.to_path_buf(),
            max_bytes: max,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn put_rejects_wrong_digest_and_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), u64::MAX);
        let d = Digest::of(b"hello");
        assert!(!s.put_verified_bytes(&d, b"HELLO").await.unwrap());
        assert!(s.open_blob(&d).await.unwrap().is_none());
        assert!(s.put_verified_bytes(&d, b"hello").await.unwrap());
        assert_eq!(s.open_blob(&d).await.unwrap().unwrap().size, 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_puts_of_the_same_content_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), u64::MAX);
        let d = Digest::of(b"same manifest");
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let s = s.clone();
                let d = d.clone();
                tokio::spawn(async move { s.put_verified_bytes(&d, b"same manifest").await })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap().unwrap());
        }
        assert_eq!(s.open_blob(&d).await.unwrap().unwrap().size, 13);
    }

    #[tokio::test]
    async fn lru_eviction_skips_pinned_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), u64::MAX);
        let a = Digest::of(b"aaaa");
        let b = Digest::of(b"bbbb");
        s.put_verified_bytes(&a, b"aaaa").await.unwrap();
        s.put_verified_bytes(&b, b"bbbb").await.unwrap();
        // `a` is the oldest but is being read: it must survive.
        s.index()
            .put(
                Table::Blobs,
                &a.to_string(),
                &BlobMeta {
                    size: 4,
                    last_access: 1,
                },
            )
            .unwrap();
        let reader = s.open_blob(&a).await.unwrap().unwrap();
        let r = s.gc(4).await.unwrap();
        assert_eq!(r.skipped_in_use, 1);
        assert_eq!(r.evicted, 1);
        assert!(s.meta(&b).unwrap().is_none());
        drop(reader);
        let r = s.gc(0).await.unwrap();
        assert_eq!(r.evicted, 1);
        assert_eq!(r.remaining, 0);
        assert!(s.open_blob(&a).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn leftover_temp_files_are_discarded_on_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(store(dir.path(), u64::MAX));
        std::fs::write(dir.path().join("tmp/partial"), b"x").unwrap();
        drop(store(dir.path(), u64::MAX));
        assert!(!dir.path().join("tmp/partial").exists());
    }
}
