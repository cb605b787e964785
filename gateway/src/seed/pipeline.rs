//! One upstream fetch of a cold blob, fanned out while it runs.
//!
//! The store writes the upstream body to its temp file and hashes the whole
//! blob as it goes (the one whole-blob hash). A [`SeedFetch`] reads the same
//! bytes back as they land, hashes them piece by piece, and after each new
//! piece signs the growing prefix of piece hashes as a provisional
//! statement, registered with the scheduler: peers start fetching those
//! pieces (from the gateway's temp file, then from each other) while the
//! upstream is still sending. The last piece is never signed
//! provisionally; it is released with the final manifest, which is signed
//! only after the store's whole-blob digest check passed and the blob was
//! kept. A fetch that fails is withdrawn and remembered, so peers holding
//! its pieces discard them.

use super::{STORE_WAIT, Seed};
use crate::server::GatewayMirror;
use customs_mirror::MirrorError;
use customs_protocol::piece_manifest::{
    AdmissionRef, FetchId, PROVISIONAL_DOMAIN, PROVISIONAL_RESIGN_SECS, PROVISIONAL_TTL_SECS,
    PieceGeometry, PieceManifest, ProvisionalPieces, SignedPieceManifest, piece_length_for,
    unix_now,
};
use customs_protocol::{Digest, ImageName, Sha256Hasher};
use customs_store::inflight::{ByteStream, RecentBytes, TailReader};
use customs_store::{FetchFailure, FetchFailureKind};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// The least time between two provisional statements of one fetch: a
/// fast upstream completes many pieces per tick, and each statement is one
/// signature and one scheduler call.
const SIGN_EVERY: Duration = Duration::from_millis(25);

/// A fetch that completes no new piece for this long stops being re-signed:
/// its statements then expire (at most [`PROVISIONAL_TTL_SECS`] later) and
/// peers let go of it, while the store's own timeouts end the fetch.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// What a fetch has to say now.
#[derive(Debug, Clone)]
pub(super) enum FetchOutcome {
    /// Its newest statement: provisional while it runs, then final.
    Statement(SignedPieceManifest),
    /// It failed; nothing it signed provisionally may complete a blob.
    Failed(FetchFailure),
}

/// A cold blob's upstream fetch as the seed sees it.
pub(super) struct SeedFetch {
    /// The fetch's id, in each of its statements.
    pub(super) id: FetchId,
    geometry: PieceGeometry,
    /// The store's temp file of this fetch (then the stored blob: same inode).
    file: Arc<std::fs::File>,
    /// What the store wrote last, still in memory: a piece signed a moment
    /// ago is served from here, not read back.
    recent: RecentBytes,
    /// Pieces hashed and signed so far: only these are served.
    signed: AtomicU32,
    latest: watch::Sender<Option<FetchOutcome>>,
}

impl SeedFetch {
    /// Starts the fetch of `digest` (`size` bytes, as the admitted
    /// descriptor says), records it in `seed`'s live fetches and returns
    /// once the upstream answered; statements follow from a task of its
    /// own. The caller holds the blob's seed lock.
    pub(super) async fn start(
        seed: Arc<Seed>,
        mirror: &Arc<GatewayMirror>,
        image: &ImageName,
        digest: &Digest,
        size: u64,
        admitted_by: Digest,
    ) -> Result<Arc<SeedFetch>, MirrorError> {
        let reader = mirror.blob_reader(image, digest).await?;
        let file = reader.file().ok_or_else(|| {
            MirrorError::Source(FetchFailure::new(
                FetchFailureKind::Io,
                "the blob fetch started without a file",
            ))
        })?;
        let id = FetchId::random().map_err(|e| {
            MirrorError::Source(FetchFailure::new(FetchFailureKind::Io, e.to_string()))
        })?;
        let geometry = PieceGeometry {
            size,
            piece_length: piece_length_for(size),
        };
        let fetch = Arc::new(SeedFetch {
            id,
            geometry,
            file,
            recent: reader.recent(),
            signed: AtomicU32::new(0),
            latest: watch::channel(None).0,
        });
        let run = Run {
            seed,
            mirror: mirror.clone(),
            image: image.clone(),
            blob: digest.clone(),
            admission: admission(image, &admitted_by, mirror),
            fetch: fetch.clone(),
        };
        if geometry.piece_count() > 1 {
            // Peers may begin at once: the first statement signs no piece
            // yet, but names the fetch and its geometry.
            run.sign_provisional(&[]).await;
        }
        // Recorded before its task starts, so the task's end always finds
        // (and removes) it.
        let key = (image.registry.clone(), digest.clone());
        run.seed
            .fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, fetch.clone());
        let (seed, registry, blob) = (run.seed.clone(), image.registry.clone(), digest.clone());
        let task = customs_runtime::spawn(tracing::Instrument::in_current_span(run.run(reader)));
        let watched = fetch.clone();
        customs_runtime::spawn(async move {
            // A panicked task still fails its fetch: nobody waits forever.
            if task.await.is_err() {
                let f = FetchFailure::new(FetchFailureKind::Io, "the seed's fetch task failed");
                seed.fetch_failed(&registry, &blob, &watched.id, f.message.clone());
                watched.latest.send_replace(Some(FetchOutcome::Failed(f)));
                seed.withdraw(&blob, &watched.id).await;
            }
        });
        Ok(fetch)
    }

    /// True once the fetch failed.
    pub(super) fn has_failed(&self) -> bool {
        matches!(*self.latest.borrow(), Some(FetchOutcome::Failed(_)))
    }

    /// The final manifest, or the failure (for callers that take no
    /// provisional statement).
    pub(super) async fn final_outcome(&self) -> FetchOutcome {
        let mut rx = self.latest.subscribe();
        let done = |v: &Option<FetchOutcome>| match v {
            Some(FetchOutcome::Statement(s)) => !s.payload.starts_with(PROVISIONAL_DOMAIN),
            Some(FetchOutcome::Failed(_)) => true,
            None => false,
        };
        match rx.wait_for(done).await {
            Ok(v) => v.clone().unwrap_or_else(gone),
            Err(_) => gone(),
        }
    }

    /// The newest statement, or the failure (waits for the first).
    pub(super) async fn latest(&self) -> FetchOutcome {
        let mut rx = self.latest.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(gone),
            Err(_) => gone(),
        }
    }

    /// A signed piece of this fetch, read from its file: `None` when the
    /// piece is not signed yet.
    pub(super) fn piece(&self, index: u32) -> Option<(ByteStream, u64)> {
        if index >= self.signed.load(Ordering::Acquire) {
            return None;
        }
        let (start, end) = self.geometry.piece_range(index)?;
        let stream: ByteStream = match self.recent.range(start, end) {
            Some(chunks) => Box::pin(futures_util::stream::iter(chunks.into_iter().map(Ok))),
            None => customs_swarm::piece_file::read_range(self.file.clone(), start, end),
        };
        Some((stream, end - start))
    }
}

fn gone() -> FetchOutcome {
    FetchOutcome::Failed(FetchFailure::new(
        FetchFailureKind::Io,
        "the blob fetch ended without a result",
    ))
}

/// The task that follows one fetch to its end.
struct Run {
    seed: Arc<Seed>,
    mirror: Arc<GatewayMirror>,
    image: ImageName,
    blob: Digest,
    admission: AdmissionRef,
    fetch: Arc<SeedFetch>,
}

impl Run {
    async fn run(self, reader: TailReader) {
        let outcome = self.follow(reader).await;
        let id = self.fetch.id.clone();
        match outcome {
            Ok(signed) => {
                self.fetch
                    .signed
                    .store(self.fetch.geometry.piece_count(), Ordering::Release);
                self.fetch
                    .latest
                    .send_replace(Some(FetchOutcome::Statement(signed)));
                self.seed.fetch_ended(&self.image.registry, &self.blob, &id);
            }
            Err(f) => {
                tracing::warn!(image = %self.image, blob = %self.blob, fetch = %id, error = %f, "seed fetch failed; its provisional pieces are withdrawn");
                self.seed
                    .fetch_failed(&self.image.registry, &self.blob, &id, f.message.clone());
                self.fetch
                    .latest
                    .send_replace(Some(FetchOutcome::Failed(f)));
                self.seed.withdraw(&self.blob, &id).await;
            }
        }
    }

    /// Hashes the pieces as they arrive, signing provisional prefixes, and
    /// signs the final manifest once the blob verified and was kept.
    async fn follow(&self, reader: TailReader) -> Result<SignedPieceManifest, FetchFailure> {
        let geometry = self.fetch.geometry;
        let n = geometry.piece_count();
        let mut hasher = PieceHasher::new(geometry.piece_length);
        let mut stream = reader.into_stream();
        let mut read = 0u64;
        let mut announced = 0usize;
        let mut last_sign = tokio::time::Instant::now();
        let mut last_piece = (0usize, tokio::time::Instant::now());
        let mut resign = tokio::time::interval(Duration::from_secs(PROVISIONAL_RESIGN_SECS));
        resign.tick().await;
        loop {
            tokio::select! {
                chunk = stream.next() => {
                    let Some(chunk) = chunk else { break };
                    let chunk = chunk.map_err(|e| FetchFailure::new(FetchFailureKind::Unavailable, e.to_string()))?;
                    read += chunk.len() as u64;
                    if read > geometry.size {
                        return Err(FetchFailure::new(FetchFailureKind::SizeMismatch, format!("more than the declared {} bytes", geometry.size)));
                    }
                    hasher.update(&chunk);
                    if hasher.done().len() > last_piece.0 {
                        last_piece = (hasher.done().len(), tokio::time::Instant::now());
                    }
                    // Never the last piece: it comes with the final manifest.
                    let ready = hasher.done().len().min(n.saturating_sub(1) as usize);
                    if ready > announced && last_sign.elapsed() >= SIGN_EVERY {
                        self.sign_provisional(&hasher.done()[..ready]).await;
                        announced = ready;
                        last_sign = tokio::time::Instant::now();
                    }
                }
                _ = resign.tick(), if n > 1 && last_piece.1.elapsed() < STALL_LIMIT => {
                    // A slow upstream: keep the statement from expiring.
                    let ready = hasher.done().len().min(n.saturating_sub(1) as usize);
                    self.sign_provisional(&hasher.done()[..ready]).await;
                    announced = ready;
                    last_sign = tokio::time::Instant::now();
                }
            }
        }
        if read != geometry.size {
            return Err(FetchFailure::new(
                FetchFailureKind::SizeMismatch,
                format!("read {read} of {} bytes", geometry.size),
            ));
        }
        let pieces = hasher.finish();
        // The stream ended only after the store's whole-blob digest check
        // passed; pieces are served from the stored blob once it is kept.
        let store = self.mirror.store();
        let kept = store
            .wait_stored(&self.blob, STORE_WAIT)
            .await
            .map_err(|e| FetchFailure::new(FetchFailureKind::Io, e.to_string()))?;
        match kept {
            Some(m) if m.size == geometry.size => {}
            Some(m) => {
                return Err(FetchFailure::new(
                    FetchFailureKind::SizeMismatch,
                    format!("stored {} bytes, declared {}", m.size, geometry.size),
                ));
            }
            None => {
                return Err(FetchFailure::new(
                    FetchFailureKind::Io,
                    format!("{} was verified but could not be stored", self.blob),
                ));
            }
        }
        let manifest = PieceManifest {
            blob: self.blob.clone(),
            size: geometry.size,
            piece_length: geometry.piece_length,
            pieces,
            admission: self.admission.clone(),
            key_id: String::new(),
        };
        let signed = self
            .seed
            .keep_final(&self.mirror, manifest)
            .await
            .map_err(|e| FetchFailure::new(FetchFailureKind::Io, e.to_string()))?;
        self.seed.register(&signed).await;
        Ok(signed)
    }

    /// Signs `pieces` (a prefix, never all) as this fetch's newest
    /// statement, makes those pieces servable and registers it. A signing
    /// failure only delays peers: the next piece tries again.
    async fn sign_provisional(&self, pieces: &[Digest]) {
        let now = unix_now();
        let statement = ProvisionalPieces {
            blob: self.blob.clone(),
            size: self.fetch.geometry.size,
            piece_length: self.fetch.geometry.piece_length,
            pieces: pieces.to_vec(),
            fetch: self.fetch.id.clone(),
            signed_at: now,
            expires_at: now + PROVISIONAL_TTL_SECS,
            admission: self.admission.clone(),
            key_id: String::new(),
        };
        let signed = match self.seed.key.sign_provisional(statement) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(blob = %self.blob, error = %e, "signing a provisional statement failed");
                return;
            }
        };
        self.fetch
            .signed
            .fetch_max(pieces.len() as u32, Ordering::AcqRel);
        self.fetch
            .latest
            .send_replace(Some(FetchOutcome::Statement(signed.clone())));
        if !self
            .mirror
            .source()
            .states_fetches_of(&self.image, &self.blob)
        {
            return;
        }
        // Detached: a slow scheduler never slows the fetch; the scheduler
        // keeps the newest statement of a fetch whatever the arrival order.
        let seed = self.seed.clone();
        customs_runtime::spawn(tracing::Instrument::in_current_span(async move {
            seed.register(&signed).await
        }));
    }
}

/// The admission a statement names: what admitted the blob, under which
/// policy revision.
pub(super) fn admission(
    image: &ImageName,
    admitted_by: &Digest,
    mirror: &GatewayMirror,
) -> AdmissionRef {
    AdmissionRef {
        image: image.to_string(),
        manifest_digest: admitted_by.clone(),
        policy_revision: mirror.admission_revision(),
    }
}

/// The piece hashes of a whole stream of `size` bytes (a stored blob).
pub(super) async fn hash_pieces(
    mut stream: ByteStream,
    size: u64,
) -> Result<Vec<Digest>, MirrorError> {
    let mut hasher = PieceHasher::new(piece_length_for(size));
    let mut read = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            MirrorError::Source(FetchFailure::new(FetchFailureKind::Io, e.to_string()))
        })?;
        read += chunk.len() as u64;
        hasher.update(&chunk);
    }
    if read != size {
        return Err(MirrorError::Source(FetchFailure::new(
            FetchFailureKind::SizeMismatch,
            format!("read {read} of {size} stored bytes"),
        )));
    }
    Ok(hasher.finish())
}

/// Splits a byte stream into pieces and hashes each one.
struct PieceHasher {
    piece_length: u64,
    current: Sha256Hasher,
    done: Vec<Digest>,
}

impl PieceHasher {
    fn new(piece_length: u64) -> Self {
        PieceHasher {
            piece_length,
            current: Sha256Hasher::new(),
            done: Vec::new(),
        }
    }

    fn update(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let room = (self.piece_length - self.current.len()) as usize;
            let (now, rest) = chunk.split_at(room.min(chunk.len()));
            self.current.update(now);
            if self.current.len() == self.piece_length {
                self.done.push(std::mem::take(&mut self.current).finish());
            }
            chunk = rest;
        }
    }

    /// The hashes of the pieces completed so far.
    fn done(&self) -> &[Digest] {
        &self.done
    }

    fn finish(mut self) -> Vec<Digest> {
        if !self.current.is_empty() || self.done.is_empty() {
            self.done.push(self.current.finish());
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use customs_protocol::piece_manifest::MIN_PIECE_LEN;

    #[test]
    fn pieces_cover_the_blob_whatever_the_chunking() {
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..(2 * len + 7)).map(|i| i as u8).collect();
        for chunk in [1000, len, 3 * len] {
            let mut h = PieceHasher::new(len as u64);
            for c in data.chunks(chunk) {
                h.update(c);
            }
            let pieces = h.finish();
            assert_eq!(pieces.len(), 3);
            assert_eq!(pieces[0], Digest::of(&data[..len]));
            assert_eq!(pieces[2], Digest::of(&data[2 * len..]));
        }
        assert_eq!(PieceHasher::new(1 << 20).finish(), vec![Digest::of(b"")]);
    }
}
