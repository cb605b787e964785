//! Single-flight fetches with streaming readers.
//!
//! The first miss on a blob spawns one fetch task that writes the source's
//! bytes to a temp file while hashing them; every client that misses on the
//! same blob meanwhile (including the first) reads that file through a
//! positional-read handle, following the writer as it grows. So the source
//! sees one transfer per blob however many clients ask at once, and no client
//! waits for the whole blob before its first byte.
//!
//! Readers never see the final [`HOLDBACK`] bytes until the whole blob's
//! sha256 matched: a cold stream is never a complete unverified blob. On a
//! mismatch readers get an error (the HTTP layer aborts the response, so the
//! client's own length/digest check fails) and nothing is stored.
//!
//! A range that ends before the blob does gets the same treatment: its own
//! last [`HOLDBACK`] bytes wait for the whole blob's digest, so a cold
//! `Range: bytes=0-N` response never completes with unverified bytes.
//!
//! Fetches are keyed by (registry, digest), not by digest alone: a request
//! for a blob from one registry never joins another registry's transfer of
//! the same digest, so a hostile or stalled registry cannot hold up (or
//! answer for) an honest one. Once any of them verified and stored the blob,
//! everyone reads the stored copy: it is content-addressed and checked.
//!
//! A source that goes quiet is cut off: opening it and each read of it are
//! bounded by the store's source idle timeout ([`SOURCE_IDLE_TIMEOUT`] unless
//! the node sets its own), and its readers fail with an error naming the
//! timeout instead of waiting forever.
//!
//! The fetch task is detached from the requests: a client that disconnects
//! does not cancel the transfer the others are waiting on.
//!
//! A source may instead hand over an [`AssembledBlob`]: a file it fills and
//! verifies itself (the swarm's piece file, each piece checked against a
//! gateway-signed piece manifest that binds the blob's digest). Readers then
//! follow its verified prefix, and the complete file is linked into the
//! store as it is: one hash and one write per byte on the node instead of
//! two of each. While the pieces are checked against a *final* manifest
//! (signed after the whole-blob digest matched) readers get all of that
//! prefix; while they are checked only against a *provisional* statement
//! (the gateway is still fetching) readers are held back exactly as for a
//! cold stream: no response, ranged or not, completes before the final
//! manifest, and nothing is stored before it.

use crate::StoreError;
use crate::blobs::{BlobStore, Pin};
use bytes::Bytes;
use customs_protocol::{Digest, RegistryHost, Sha256Hasher};
use futures_util::{Stream, StreamExt};
use std::fmt;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Bytes withheld from cold-stream readers until the digest matched: the
/// last bytes of the blob, and the last bytes of a range that ends earlier.
pub const HOLDBACK: u64 = 4096;
/// How long a fetch waits for its source to open, and then for each next
/// chunk, before it fails every reader. A backstop behind the sources' own
/// timeouts (the gateway's upstream client gives up after 30 s of silence
/// with a more specific error), long enough that a swarm source retrying
/// another parent is not cut off, short enough that a stalled transfer never
/// holds a client for more than two minutes.
pub const SOURCE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How much the fetch task buffers before each disk write.
const WRITE_BATCH: usize = 256 * 1024;
/// How much a reader pulls from disk per step.
const READ_CHUNK: u64 = 256 * 1024;
/// Batches a fetch keeps in memory after writing them (2 MiB): a reader
/// that keeps up with the source (the gateway's piece hasher, a client
/// following a cold stream, a peer asking for a piece just signed) takes
/// its bytes from here instead of reading them back from disk.
const RECENT_BATCHES: usize = 8;

/// A stream of body bytes from a source or to a client.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// What a source hands the single-flight fetch.
pub enum SourceBody {
    /// Bytes the store hashes against the digest while it writes them.
    Stream(ByteStream),
    /// A file the source fills and verifies itself (see [`AssembledBlob`]).
    Assembled(Arc<dyn AssembledBlob>),
}

impl From<ByteStream> for SourceBody {
    fn from(s: ByteStream) -> Self {
        SourceBody::Stream(s)
    }
}

/// A blob a source assembles in a file of its own and verifies as it goes,
/// so the store need not hash or copy it again.
///
/// Implementing this is a promise the store cannot check: every byte of
/// the prefix [`AssembledBlob::wait_verified`] reports is already proven to
/// be the blob's (the swarm proves it per piece against a gateway-signed
/// manifest that names the blob's digest and size). Only such sources
/// implement it; anything else is a [`SourceBody::Stream`].
pub trait AssembledBlob: Send + Sync + 'static {
    /// The file, for positional reads.
    fn file(&self) -> Arc<std::fs::File>;
    /// Where it is, so the complete file can be linked into the store.
    fn path(&self) -> &std::path::Path;
    /// The blob's size, as the signed manifest states it.
    fn size(&self) -> u64;
    /// Waits until more than `beyond` bytes from the start are verified,
    /// or the statement they are verified against became final, or the
    /// whole blob is verified against a final one; returns the state then.
    /// Fails when the assembly stopped for good.
    fn wait_verified(
        &self,
        beyond: u64,
        was_final: bool,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<VerifiedPrefix, std::io::Error>> + Send + '_>,
    >;
}

/// How much of an assembled blob is verified, and against what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedPrefix {
    /// Bytes from the start whose pieces matched.
    pub bytes: u64,
    /// Whether they matched a final manifest (the whole-blob digest was
    /// checked by its signer); `false` while only a provisional statement
    /// covers them.
    pub is_final: bool,
}

/// The class of a failed fetch, so the HTTP edge can pick the right OCI error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchFailureKind {
    /// The source does not have the blob.
    NotFound,
    /// The source refused our credentials.
    Unauthorized,
    /// The source denied access (e.g. the gateway's policy).
    Denied,
    /// The source rate-limited us.
    TooManyRequests,
    /// The source could not be reached or broke off.
    Unavailable,
    /// The bytes did not hash to the digest.
    DigestMismatch,
    /// The source sent more or fewer bytes than the descriptor's size.
    SizeMismatch,
    /// Local disk trouble.
    Io,
}

/// Why a fetch failed, with a message safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchFailure {
    /// The class.
    pub kind: FetchFailureKind,
    /// Human-readable detail.
    pub message: String,
}

impl FetchFailure {
    /// Builds a failure.
    pub fn new(kind: FetchFailureKind, message: impl Into<String>) -> Self {
        FetchFailure {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for FetchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for FetchFailure {}

#[derive(Debug, Clone)]
enum State {
    Opening,
    /// Unverified bytes arriving: the last [`HOLDBACK`] bytes wait.
    Running,
    /// An [`AssembledBlob`]'s verified prefix: all of it is readable.
    Assembling,
    /// An [`AssembledBlob`]'s prefix verified against a provisional
    /// statement only: held back like [`State::Running`].
    Provisional,
    Verified,
    Failed(FetchFailure),
}

#[derive(Debug, Clone)]
struct Progress {
    written: u64,
    state: State,
    /// The last [`RECENT_BATCHES`] batches written, oldest first, each at
    /// its offset: the same bytes as the file's, shared, not copied.
    recent: std::collections::VecDeque<(u64, Bytes)>,
}

impl Progress {
    fn new(written: u64, state: State) -> Self {
        Progress {
            written,
            state,
            recent: std::collections::VecDeque::new(),
        }
    }

    /// Bytes `pos..` (up to `limit` and to the end of their batch) when a
    /// recent batch holds `pos`.
    fn recent_from(&self, pos: u64, limit: u64) -> Option<Bytes> {
        if pos >= limit {
            return None;
        }
        let (at, b) = self
            .recent
            .iter()
            .find(|(at, b)| *at <= pos && pos < at + b.len() as u64)?;
        let from = (pos - at) as usize;
        let to = ((limit - at) as usize).min(b.len());
        Some(b.slice(from..to))
    }
}

/// The file readers pread: known once the source opened (the store's temp
/// file, or the source's own assembled file).
type ReadFile = Arc<std::sync::OnceLock<Arc<std::fs::File>>>;

/// One fetch in progress.
pub(crate) struct Inflight {
    file: ReadFile,
    tx: watch::Sender<Progress>,
}

/// A client's view of a blob: stored or still arriving.
pub struct TailReader {
    file: ReadFile,
    rx: watch::Receiver<Progress>,
    size: u64,
    pos: u64,
    _pin: Pin,
}

impl TailReader {
    /// Waits until the source answered: `Ok` once bytes flow (or the blob is
    /// already stored), the failure if the source refused. Lets the HTTP
    /// layer turn an upstream 404 into a 404 instead of a broken 200.
    pub async fn started(&mut self) -> Result<(), FetchFailure> {
        loop {
            match &self.rx.borrow_and_update().state {
                State::Opening => {}
                State::Failed(f) => return Err(f.clone()),
                State::Running | State::Assembling | State::Provisional | State::Verified => {
                    return Ok(());
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(FetchFailure::new(
                    FetchFailureKind::Io,
                    "fetch task ended without a result",
                ));
            }
        }
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file the reader preads (the store's temp file while a fetch
    /// runs, then the stored blob: the same inode), once the source opened.
    /// The gateway's seed serves pieces it has hashed from it.
    pub fn file(&self) -> Option<Arc<std::fs::File>> {
        self.file.get().cloned()
    }

    /// The bytes this fetch wrote last, while they are still in memory.
    pub fn recent(&self) -> RecentBytes {
        RecentBytes(self.rx.clone())
    }

    /// Turns the reader into a body stream from its offset to the end.
    pub fn into_stream(self) -> ByteStream {
        self.into_stream_until(u64::MAX)
    }

    /// Turns the reader into a body stream that ends at `end` (exclusive).
    /// While the blob is still arriving, the last [`HOLDBACK`] bytes before
    /// `end` wait for the whole blob's digest check: the stream completes
    /// only with verified content, and fails if the check fails.
    pub fn into_stream_until(self, end: u64) -> ByteStream {
        let end = end.min(self.size);
        Box::pin(futures_util::stream::unfold(
            self,
            move |mut r| async move {
                match r.next_chunk(end).await {
                    Ok(Some(b)) => Some((Ok(b), r)),
                    Ok(None) => None,
                    Err(e) => {
                        // End the stream after the error.
                        r.pos = u64::MAX;
                        Some((Err(e), r))
                    }
                }
            },
        ))
    }

    async fn next_chunk(&mut self, end: u64) -> Result<Option<Bytes>, std::io::Error> {
        if self.pos >= end {
            return Ok(None);
        }
        loop {
            let (readable, failed, in_memory) = {
                let p = self.rx.borrow_and_update();
                let (readable, failed) = match &p.state {
                    State::Verified => (self.size, None),
                    State::Failed(f) => (0, Some(f.clone())),
                    // `end` is at most the size: holding back before the end
                    // of the range also holds back before the end of the blob.
                    State::Opening | State::Running | State::Provisional => {
                        (p.written.min(end.saturating_sub(HOLDBACK)), None)
                    }
                    State::Assembling => (p.written, None),
                };
                let in_memory = match failed {
                    None => p.recent_from(self.pos, readable.min(end)),
                    Some(_) => None,
                };
                (readable, failed, in_memory)
            };
            if let Some(f) = failed {
                return Err(std::io::Error::other(f));
            }
            if let Some(b) = in_memory {
                self.pos += b.len() as u64;
                return Ok(Some(b));
            }
            if self.pos < readable.min(end) {
                let len = (readable.min(end) - self.pos).min(READ_CHUNK) as usize;
                let file = self.file.get().cloned().ok_or_else(|| {
                    std::io::Error::other("blob fetch announced bytes before its file")
                })?;
                let pos = self.pos;
                let buf = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, pos).map(|()| buf)
                })
                .await
                .map_err(std::io::Error::other)??;
                self.pos += len as u64;
                return Ok(Some(Bytes::from(buf)));
            }
            if self.rx.changed().await.is_err() {
                // The writer is gone; re-check the final state once more.
                let p = self.rx.borrow();
                if !matches!(p.state, State::Verified) || self.pos >= end {
                    return Err(std::io::Error::other("blob fetch ended unexpectedly"));
                }
            }
        }
    }
}

/// The batches a fetch wrote last (at most [`RECENT_BATCHES`]), for a
/// reader that serves a range just written (the gateway's seed serving a
/// piece it signed a moment ago) without reading it back from disk.
pub struct RecentBytes(watch::Receiver<Progress>);

impl RecentBytes {
    /// Bytes `start..end` as shared chunks, when they are all written and
    /// still held; `None` sends the caller to the file.
    pub fn range(&self, start: u64, end: u64) -> Option<Vec<Bytes>> {
        let p = self.0.borrow();
        if matches!(p.state, State::Failed(_)) || end > p.written {
            return None;
        }
        let mut chunks = Vec::new();
        let mut pos = start;
        while pos < end {
            let b = p.recent_from(pos, end)?;
            pos += b.len() as u64;
            chunks.push(b);
        }
        Some(chunks)
    }
}

/// A reader over an already stored blob.
fn stored_reader(
    store: &BlobStore,
    digest: &Digest,
    offset: u64,
) -> Result<Option<TailReader>, StoreError> {
    let pin = store.pin(digest);
    let Some(meta) = store.meta(digest)? else {
        return Ok(None);
    };
    let file = match std::fs::File::open(store.blob_path(digest)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let (_tx, rx) = watch::channel(Progress::new(meta.size, State::Verified));
    Ok(Some(TailReader {
        file: Arc::new(std::sync::OnceLock::from(Arc::new(file))),
        rx,
        size: meta.size,
        pos: offset,
        _pin: pin,
    }))
}

/// The single-flight key: which registry the bytes come from, and which
/// blob. Two registries serving the same digest are two fetches.
pub(crate) type FetchKey = (RegistryHost, Digest);

pub(crate) fn fetch_or_join<F>(
    store: &Arc<BlobStore>,
    registry: &RegistryHost,
    digest: &Digest,
    size: u64,
    offset: u64,
    open: F,
) -> Result<TailReader, StoreError>
where
    F: std::future::Future<Output = Result<SourceBody, FetchFailure>> + Send + 'static,
{
    let key: FetchKey = (registry.clone(), digest.clone());
    let mut map = store.inflight.lock().unwrap_or_else(|e| e.into_inner());
    // A stored blob first: it was verified, whichever registry sent it, and
    // a request must not wait on this registry's (possibly stalled) fetch
    // when another registry's already delivered the same content.
    if let Some(r) = stored_reader(store, digest, offset)? {
        return Ok(r);
    }
    if let Some(inf) = map.get(&key) {
        return Ok(TailReader {
            file: inf.file.clone(),
            rx: inf.tx.subscribe(),
            size,
            pos: offset,
            _pin: store.pin(digest),
        });
    }
    let (tx, rx) = watch::channel(Progress::new(0, State::Opening));
    let file: ReadFile = Arc::default();
    let inf = Arc::new(Inflight {
        file: file.clone(),
        tx,
    });
    map.insert(key.clone(), inf.clone());
    drop(map);
    let task_store = store.clone();
    let idle = store.source_idle_timeout();
    let open_within = store.source_open_timeout();
    // The fetch belongs to the trace of the request that started it.
    store.fetches.spawn(tracing::Instrument::in_current_span(async move {
        let (task_registry, task_digest) = &key;
        let fetch = Fetch {
            store: &task_store,
            inf: &inf,
            digest: task_digest,
            size,
            idle,
            open_within,
        };
        let result = fetch.run(open).await;
        match &result {
            Ok(()) => {
                tracing::debug!(registry = %task_registry, digest = %task_digest, size, "blob fetched and verified");
                inf.tx.send_modify(|p| p.state = State::Verified);
            }
            Err(f) => {
                tracing::warn!(registry = %task_registry, digest = %task_digest, error = %f, "blob fetch failed; nothing stored");
                inf.tx.send_modify(|p| {
                    p.state = State::Failed(f.clone());
                    p.recent.clear();
                });
            }
        }
        task_store
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }));
    Ok(TailReader {
        file,
        rx,
        size,
        pos: offset,
        _pin: store.pin(digest),
    })
}

/// One fetch task's fixed inputs.
struct Fetch<'a> {
    store: &'a Arc<BlobStore>,
    inf: &'a Inflight,
    digest: &'a Digest,
    size: u64,
    idle: Duration,
    open_within: Duration,
}

fn io_failure(e: std::io::Error) -> FetchFailure {
    FetchFailure::new(FetchFailureKind::Io, format!("local store: {e}"))
}

impl Fetch<'_> {
    async fn run<F>(self, open: F) -> Result<(), FetchFailure>
    where
        F: std::future::Future<Output = Result<SourceBody, FetchFailure>>,
    {
        let body = tokio::time::timeout(self.open_within, open)
            .await
            .map_err(|_| {
                FetchFailure::new(
                    FetchFailureKind::Unavailable,
                    format!(
                        "source did not answer within {}s (source idle timeout)",
                        self.open_within.as_secs_f32()
                    ),
                )
            })??;
        match body {
            SourceBody::Stream(stream) => {
                // Unique per fetch: another registry may be fetching the
                // same digest.
                let tmp = self.store.unique_tmp_path(self.digest, "part");
                let result = self.hash_and_write(stream, &tmp).await;
                if result.is_err() {
                    let _ = std::fs::remove_file(&tmp);
                }
                result
            }
            SourceBody::Assembled(blob) => self.follow(blob).await,
        }
    }

    /// Writes the source's bytes to `tmp` while hashing them; stores the
    /// file only when its sha256 matched.
    async fn hash_and_write(
        &self,
        mut stream: ByteStream,
        tmp: &std::path::Path,
    ) -> Result<(), FetchFailure> {
        let Fetch {
            store,
            inf,
            digest,
            size,
            idle,
            ..
        } = *self;
        let writer = Arc::new(std::fs::File::create(tmp).map_err(io_failure)?);
        let reader = std::fs::File::open(tmp).map_err(io_failure)?;
        let _ = inf.file.set(Arc::new(reader));
        inf.tx.send_modify(|p| p.state = State::Running);
        let mut hasher = Sha256Hasher::new();
        // Source chunks are small (often 8-16 KiB); batching them bounds the
        // number of disk round trips and reader wake-ups per blob.
        let mut batch = bytes::BytesMut::with_capacity(WRITE_BATCH);
        let mut ended = false;
        while !ended {
            let next = tokio::time::timeout(idle, stream.next())
                .await
                .map_err(|_| {
                    FetchFailure::new(
                        FetchFailureKind::Unavailable,
                        format!(
                            "source sent nothing for {}s after {} of {size} bytes (source idle timeout)",
                            idle.as_secs_f32(),
                            hasher.len(),
                        ),
                    )
                })?;
            match next {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| {
                        FetchFailure::new(
                            FetchFailureKind::Unavailable,
                            format!("source broke off: {e}"),
                        )
                    })?;
                    if hasher.len() + chunk.len() as u64 > size {
                        return Err(FetchFailure::new(
                            FetchFailureKind::SizeMismatch,
                            format!("source sent more than the expected {size} bytes"),
                        ));
                    }
                    hasher.update(&chunk);
                    batch.extend_from_slice(&chunk);
                }
                None => ended = true,
            }
            if batch.len() >= WRITE_BATCH || (ended && !batch.is_empty()) {
                // One positional write of the batch, awaited, so `written`
                // never runs ahead of what readers can pread; the batch is
                // then shared with readers that keep up, not copied.
                let data = batch.split().freeze();
                batch.reserve(WRITE_BATCH);
                let at = hasher.len() - data.len() as u64;
                let (f, d) = (writer.clone(), data.clone());
                tokio::task::spawn_blocking(move || f.write_all_at(&d, at))
                    .await
                    .map_err(|e| io_failure(std::io::Error::other(e)))?
                    .map_err(io_failure)?;
                let written = hasher.len();
                inf.tx.send_modify(|p| {
                    p.written = written;
                    p.recent.push_back((at, data));
                    if p.recent.len() > RECENT_BATCHES {
                        p.recent.pop_front();
                    }
                });
            }
        }
        if hasher.len() != size {
            return Err(FetchFailure::new(
                FetchFailureKind::SizeMismatch,
                format!("source sent {} bytes, expected {size}", hasher.len()),
            ));
        }
        let got = hasher.finish();
        if got != *digest {
            return Err(FetchFailure::new(
                FetchFailureKind::DigestMismatch,
                format!("content hashes to {got}, not {digest}"),
            ));
        }
        drop(writer);
        // The digest matched: readers may have the final bytes now. Keeping
        // the blob (fsync, rename, index) happens after, off their critical
        // path; if it fails the blob was still correct, it is just not kept.
        inf.tx.send_modify(|p| p.state = State::Verified);
        if let Err(e) = store.commit_file(digest, tmp, size).await {
            tracing::error!(%digest, error = %e, "verified blob could not be stored");
            let _ = std::fs::remove_file(tmp);
        }
        Ok(())
    }

    /// Follows an assembled blob's verified prefix; links the complete file
    /// into the store.
    async fn follow(&self, blob: Arc<dyn AssembledBlob>) -> Result<(), FetchFailure> {
        let Fetch {
            store,
            inf,
            digest,
            size,
            idle,
            ..
        } = *self;
        if blob.size() != size {
            return Err(FetchFailure::new(
                FetchFailureKind::SizeMismatch,
                format!(
                    "the source's signed manifest says {} bytes, expected {size}",
                    blob.size()
                ),
            ));
        }
        let _ = inf.file.set(blob.file());
        inf.tx.send_modify(|p| p.state = State::Provisional);
        let mut verified = VerifiedPrefix {
            bytes: 0,
            is_final: false,
        };
        while !(verified.is_final && verified.bytes >= size) {
            let now = tokio::time::timeout(
                idle,
                blob.wait_verified(verified.bytes, verified.is_final),
            )
                .await
                .map_err(|_| {
                    FetchFailure::new(
                        FetchFailureKind::Unavailable,
                        format!(
                            "source verified nothing for {}s after {} of {size} bytes (source idle timeout)",
                            idle.as_secs_f32(),
                            verified.bytes,
                        ),
                    )
                })?
                .map_err(|e| {
                    FetchFailure::new(
                        FetchFailureKind::Unavailable,
                        format!("source broke off: {e}"),
                    )
                })?;
            verified = VerifiedPrefix {
                bytes: now.bytes.min(size),
                is_final: now.is_final,
            };
            inf.tx.send_modify(|p| {
                p.written = verified.bytes;
                p.state = if verified.is_final {
                    State::Assembling
                } else {
                    State::Provisional
                };
            });
        }
        inf.tx.send_modify(|p| p.state = State::Verified);
        if let Err(e) = store
            .adopt_file(digest, blob.file(), blob.path(), size)
            .await
        {
            tracing::error!(%digest, error = %e, "verified blob could not be stored");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
