//! A blob being assembled from pieces: a sparse file plus a bitmap of
//! verified pieces. Only pieces whose sha256 matched the signed manifest are
//! marked, and only marked pieces are ever read (to containerd or to other
//! peers). Bytes of a piece that failed verification stay unmarked and are
//! overwritten by the next attempt.
//!
//! A marked piece is never written again, and a piece has at most one
//! writer at a time: a writer claims the piece before its first byte and
//! holds the claim until its last byte is on disk (even when the writing
//! task is aborted mid-way, the claim lives until the disk write returns).
//! A second or late writer is refused with [`PieceError::Duplicate`] and
//! writes nothing, so a slow or hostile parent can never overwrite bytes
//! that were already verified and handed on.

use bytes::Bytes;
use customs_protocol::piece_manifest::{
    FetchId, PieceGeometry, Statement, VerifiedPieceManifest, VerifiedProvisional,
};
use customs_protocol::{Digest, Sha256Hasher};
use customs_store::inflight::{ByteStream, VerifiedPrefix};
use futures_util::{Stream, StreamExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Why a piece was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PieceError {
    /// The bytes did not hash to the manifest's piece digest.
    #[error("piece {index} hashes to {got}, not {want}")]
    Mismatch {
        /// Which piece.
        index: u32,
        /// What the manifest says.
        want: Digest,
        /// What arrived.
        got: Digest,
    },
    /// More or fewer bytes than the piece has.
    #[error("piece {index}: {detail}")]
    Length {
        /// Which piece.
        index: u32,
        /// What was wrong.
        detail: String,
    },
    /// No statement held signs this piece's hash yet (the gateway is still
    /// fetching it): nothing was read or written.
    #[error("piece {index} is not signed yet")]
    Unsigned {
        /// Which piece.
        index: u32,
    },
    /// The sender broke off.
    #[error("piece transfer: {0}")]
    Transfer(String),
    /// The piece is already verified, or another writer is writing it: this
    /// write was dropped without touching the file. Not the sender's fault.
    #[error("piece {index} is already verified or being written; duplicate dropped")]
    Duplicate {
        /// Which piece.
        index: u32,
    },
    /// Local disk trouble.
    #[error("piece file: {0}")]
    Io(#[from] std::io::Error),
}

/// Why a new statement could not be taken on: the pieces held were signed
/// for other bytes, so the download must discard them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatementConflict {
    /// A provisional statement of another fetch than the one held.
    #[error(
        "the gateway's fetch of this blob changed (from {held} to {got}): the pieces of the first are discarded"
    )]
    OtherFetch {
        /// The fetch the held pieces belong to.
        held: FetchId,
        /// The fetch the new statement names.
        got: FetchId,
    },
    /// Piece geometry or an already signed piece hash differs.
    #[error("the new statement contradicts the one held: {0}")]
    Contradiction(String),
}

/// The statements a piece file's pieces are checked against.
#[derive(Debug, Clone)]
struct Signed {
    /// sha256 of the first `hashes.len()` pieces, as signed.
    hashes: Vec<Digest>,
    /// The final manifest, once held.
    finalized: Option<VerifiedPieceManifest>,
    /// Until the final manifest: the provisional statement's fetch, when it
    /// was signed and when it expires.
    provisional: Option<(FetchId, u64, u64)>,
}

impl Signed {
    fn from_statement(st: &Statement) -> Self {
        match st {
            Statement::Final(m) => Signed {
                hashes: m.manifest().pieces.clone(),
                finalized: Some(m.clone()),
                provisional: None,
            },
            Statement::Provisional(p) => Signed {
                hashes: p.content().pieces.clone(),
                finalized: None,
                provisional: Some(provisional_info(p)),
            },
        }
    }
}

fn provisional_info(p: &VerifiedProvisional) -> (FetchId, u64, u64) {
    let c = p.content();
    (c.fetch.clone(), c.signed_at, c.expires_at)
}

/// See the module docs.
pub struct PieceFile {
    blob: Digest,
    geometry: PieceGeometry,
    file: Arc<std::fs::File>,
    path: PathBuf,
    have: watch::Sender<Vec<bool>>,
    /// Pieces a writer has claimed (see the module docs).
    claims: Arc<Mutex<Vec<bool>>>,
    /// Why the download stopped for good, once it did: readers waiting for
    /// a piece get this error instead of waiting forever.
    stopped: Mutex<Option<String>>,
    /// What the pieces are checked against (grows while provisional).
    signed: Mutex<Signed>,
}

/// One writer's claim on one piece; released when the last clone drops
/// (the writer, and any disk write it started).
struct Claim {
    claims: Arc<Mutex<Vec<bool>>>,
    index: usize,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut c = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = c.get_mut(self.index) {
            *slot = false;
        }
    }
}

const READ_CHUNK: u64 = 256 * 1024;
const WRITE_BATCH: usize = 256 * 1024;

impl PieceFile {
    /// Opens (resuming) or creates the piece file for a verified statement
    /// (a final manifest, or a provisional one while the gateway fetches).
    /// Pieces already on disk count only after they hash correctly again
    /// against a hash the statement signs.
    pub async fn open(dir: &Path, statement: Statement) -> Result<Arc<Self>, PieceError> {
        tokio::fs::create_dir_all(dir).await?;
        let blob = statement.blob().clone();
        let geometry = PieceGeometry {
            size: statement.size(),
            piece_length: statement.piece_length(),
        };
        let path = dir.join(format!("{}.pieces", blob.hex()));
        let mut existed = path.exists();
        // A piece file that is also linked elsewhere is a stored blob (the
        // store adopted it and the node stopped before dropping this name):
        // never write through it. Start afresh under a new inode.
        if existed && std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(&path)?) > 1 {
            std::fs::remove_file(&path)?;
            existed = false;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        file.set_len(geometry.size)?;
        let file = Arc::new(file);
        let n = geometry.piece_count() as usize;
        let signed = Signed::from_statement(&statement);
        let mut have = vec![false; n];
        if existed {
            let f = file.clone();
            let hashes = signed.hashes.clone();
            have = tokio::task::spawn_blocking(move || rescan(&f, geometry, &hashes))
                .await
                .map_err(std::io::Error::other)??;
            let resumed = have.iter().filter(|h| **h).count();
            tracing::info!(%blob, resumed, total = n, "resuming a partial download");
        }
        let (tx, _) = watch::channel(have);
        Ok(Arc::new(PieceFile {
            blob,
            geometry,
            file,
            path,
            have: tx,
            claims: Arc::new(Mutex::new(vec![false; n])),
            stopped: Mutex::new(None),
            signed: Mutex::new(signed),
        }))
    }

    fn signed(&self) -> std::sync::MutexGuard<'_, Signed> {
        self.signed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The blob.
    pub fn blob(&self) -> &Digest {
        &self.blob
    }

    /// Where the pieces lie.
    pub fn geometry(&self) -> PieceGeometry {
        self.geometry
    }

    /// The final manifest, once held.
    pub fn final_manifest(&self) -> Option<VerifiedPieceManifest> {
        self.signed().finalized.clone()
    }

    /// True once the final manifest is held.
    pub fn is_final(&self) -> bool {
        self.signed().finalized.is_some()
    }

    /// Until the final manifest: how many pieces the held provisional
    /// statement signs, and when it was signed.
    pub fn provisional(&self) -> Option<(u32, u64)> {
        let s = self.signed();
        s.provisional
            .as_ref()
            .filter(|_| s.finalized.is_none())
            .map(|(_, at, _)| (s.hashes.len() as u32, *at))
    }

    /// The provisional statement's fetch, until the final manifest.
    pub fn fetch(&self) -> Option<FetchId> {
        let s = self.signed();
        s.provisional
            .as_ref()
            .filter(|_| s.finalized.is_none())
            .map(|(f, _, _)| f.clone())
    }

    /// True when only a provisional statement is held and it expired at
    /// `now` (Unix seconds): its pieces must be discarded.
    pub fn expired(&self, now: u64) -> bool {
        let s = self.signed();
        s.finalized.is_none()
            && s.provisional
                .as_ref()
                .is_some_and(|(_, _, exp)| now >= *exp)
    }

    /// How many piece hashes are signed (all, once final).
    pub fn signed_count(&self) -> u32 {
        self.signed().hashes.len() as u32
    }

    /// True when piece `i`'s hash is signed (it may be fetched).
    pub fn is_signed(&self, i: u32) -> bool {
        (i as usize) < self.signed().hashes.len()
    }

    /// Takes on a newer statement for the blob: the final manifest (every
    /// piece held must have the hash it signs), or a provisional statement
    /// of the same fetch signing more pieces or valid for longer. Returns
    /// whether anything changed. A conflict means the pieces held were
    /// signed for other bytes: the download must stop and discard them.
    pub fn update(&self, statement: &Statement) -> Result<bool, StatementConflict> {
        if statement.blob() != &self.blob
            || statement.size() != self.geometry.size
            || statement.piece_length() != self.geometry.piece_length
        {
            return Err(StatementConflict::Contradiction(format!(
                "another blob or piece geometry ({} bytes in pieces of {})",
                statement.size(),
                statement.piece_length()
            )));
        }
        let mut s = self.signed();
        if s.finalized.is_some() {
            return Ok(false);
        }
        let agree =
            |held: &[Digest], new: &[Digest]| held.iter().zip(new).position(|(a, b)| a != b);
        match statement {
            Statement::Final(m) => {
                if let Some(i) = agree(&s.hashes, &m.manifest().pieces) {
                    return Err(StatementConflict::Contradiction(format!(
                        "the final manifest's piece {i} differs from the provisional one"
                    )));
                }
                s.hashes = m.manifest().pieces.clone();
                s.finalized = Some(m.clone());
            }
            Statement::Provisional(p) => {
                let (fetch, at, exp) = provisional_info(p);
                let pieces = &p.content().pieces;
                if let Some((held, held_at, _)) = &s.provisional {
                    if *held != fetch {
                        return Err(StatementConflict::OtherFetch {
                            held: held.clone(),
                            got: fetch,
                        });
                    }
                    if (pieces.len(), at) <= (s.hashes.len(), *held_at) {
                        return Ok(false);
                    }
                }
                if let Some(i) = agree(&s.hashes, pieces) {
                    return Err(StatementConflict::Contradiction(format!(
                        "piece {i} was signed with two hashes"
                    )));
                }
                if pieces.len() > s.hashes.len() {
                    s.hashes = pieces.clone();
                }
                s.provisional = Some((fetch, at, exp));
            }
        }
        drop(s);
        // Readers waiting for the final manifest (or new pieces) look again.
        self.have.send_modify(|_| {});
        Ok(true)
    }

    /// True when piece `i` is verified.
    pub fn has(&self, i: u32) -> bool {
        self.have.borrow().get(i as usize).copied().unwrap_or(false)
    }

    /// Indices of verified pieces.
    pub fn held(&self) -> Vec<u32> {
        self.have
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, h)| **h)
            .map(|(i, _)| i as u32)
            .collect()
    }

    /// True when every piece is verified against the final manifest.
    pub fn complete(&self) -> bool {
        self.is_final() && self.have.borrow().iter().all(|h| *h)
    }

    /// Pieces being written now (claimed by a writer or by a disk write
    /// still in flight).
    pub fn writing(&self) -> usize {
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| **c)
            .count()
    }

    /// Claims piece `index` for one writer; `None` when it is verified or
    /// claimed already.
    fn claim(&self, index: u32) -> Option<Arc<Claim>> {
        let mut c = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        // Checked under the claims lock: a writer marks its piece before it
        // releases its claim, so no piece is ever both unclaimed and about
        // to be marked.
        if self.has(index) {
            return None;
        }
        let slot = c.get_mut(index as usize)?;
        if *slot {
            return None;
        }
        *slot = true;
        Some(Arc::new(Claim {
            claims: self.claims.clone(),
            index: index as usize,
        }))
    }

    /// Marks the download as stopped for good: readers of pieces not yet
    /// verified get `reason` as an error.
    pub fn stop(&self, reason: &str) {
        *self.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
        // Wakes every reader waiting for a piece.
        self.have.send_modify(|_| {});
    }

    /// Why the download stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Writes a piece from a stream while hashing it; marks it only when
    /// its length and sha256 match the hash a held statement signs. A piece
    /// already verified or being written by another writer is refused with
    /// [`PieceError::Duplicate`], and one not signed yet with
    /// [`PieceError::Unsigned`], before a byte is read or written.
    pub async fn write_piece<S>(&self, index: u32, mut body: S) -> Result<(), PieceError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
    {
        let (start, end) = self
            .geometry
            .piece_range(index)
            .ok_or_else(|| PieceError::Length {
                index,
                detail: "no such piece".into(),
            })?;
        let want = self
            .signed()
            .hashes
            .get(index as usize)
            .cloned()
            .ok_or(PieceError::Unsigned { index })?;
        let claim = self.claim(index).ok_or(PieceError::Duplicate { index })?;
        let want_len = end - start;
        let mut hasher = Sha256Hasher::new();
        // Network chunks are small; writing them in batches keeps blocking
        // disk calls (and their thread hand-offs) to a few per piece.
        let mut batch = bytes::BytesMut::with_capacity(WRITE_BATCH);
        let mut batch_at = start;
        let mut ended = false;
        while !ended {
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| PieceError::Transfer(e.to_string()))?;
                    if hasher.len() + chunk.len() as u64 > want_len {
                        return Err(PieceError::Length {
                            index,
                            detail: format!("sender sent more than {want_len} bytes"),
                        });
                    }
                    hasher.update(&chunk);
                    batch.extend_from_slice(&chunk);
                }
                None => ended = true,
            }
            if batch.len() >= WRITE_BATCH || (ended && !batch.is_empty()) {
                let f = self.file.clone();
                let data = batch.split().freeze();
                let at = batch_at;
                batch_at += data.len() as u64;
                // The disk write holds the claim too: if this task is
                // aborted, the piece stays claimed until the write is done.
                let held = claim.clone();
                tokio::task::spawn_blocking(move || {
                    let _held = held;
                    f.write_all_at(&data, at)
                })
                .await
                .map_err(std::io::Error::other)??;
            }
        }
        if hasher.len() != want_len {
            return Err(PieceError::Length {
                index,
                detail: format!("sender sent {} of {want_len} bytes", hasher.len()),
            });
        }
        let got = hasher.finish();
        if got != want {
            return Err(PieceError::Mismatch { index, want, got });
        }
        self.have.send_modify(|h| h[index as usize] = true);
        drop(claim);
        Ok(())
    }

    /// Reads a verified piece as a stream (for serving it to another peer).
    pub fn piece_stream(&self, index: u32) -> Option<ByteStream> {
        if !self.has(index) {
            return None;
        }
        let (start, end) = self.geometry.piece_range(index)?;
        Some(read_range(self.file.clone(), start, end))
    }

    /// The whole blob in order, each piece released as soon as it and all
    /// before it are verified. The last piece is verified only against the
    /// final manifest (no provisional statement signs it), so the stream
    /// never completes before it.
    pub fn ordered_stream(self: Arc<Self>) -> ByteStream {
        let size = self.geometry.size;
        let rx = self.have.subscribe();
        Box::pin(futures_util::stream::unfold(
            (self, rx, 0u64),
            move |(pf, mut rx, pos)| async move {
                if pos >= size {
                    return None;
                }
                let g = pf.geometry;
                let piece = (pos / g.piece_length) as u32;
                loop {
                    if rx
                        .borrow_and_update()
                        .get(piece as usize)
                        .copied()
                        .unwrap_or(false)
                    {
                        break;
                    }
                    if let Some(reason) = pf.stopped() {
                        return Some((
                            Err(std::io::Error::other(format!(
                                "piece download stopped: {reason}"
                            ))),
                            (pf, rx, u64::MAX),
                        ));
                    }
                    if rx.changed().await.is_err() {
                        return Some((
                            Err(std::io::Error::other("piece download stopped")),
                            (pf, rx, u64::MAX),
                        ));
                    }
                }
                let (_, end) = g.piece_range(piece)?;
                let len = (end - pos).min(READ_CHUNK);
                let f = pf.file.clone();
                let res = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    f.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                match res {
                    Ok(b) => Some((Ok(b), (pf, rx, pos + len))),
                    Err(e) => Some((Err(e), (pf, rx, u64::MAX))),
                }
            },
        ))
    }

    /// Deletes the file (after the blob was committed to the store, or when
    /// its pieces are discarded).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Bytes from the start of the blob that are verified (the pieces
    /// before the first missing one), and whether against the final
    /// manifest.
    pub fn verified_prefix(&self) -> VerifiedPrefix {
        let g = self.geometry;
        let is_final = self.is_final();
        let pieces = self.have.borrow().iter().take_while(|h| **h).count() as u64;
        VerifiedPrefix {
            bytes: pieces.saturating_mul(g.piece_length).min(g.size),
            is_final,
        }
    }
}

/// The store follows a piece file's verified prefix and links the complete
/// file into place: every piece matched the gateway-signed final manifest,
/// which names the blob's digest and size, so all pieces matching is the
/// whole blob matching (the gateway checked the whole-blob sha256 before
/// signing it). While only a provisional statement covers the pieces, the
/// store holds readers back as for a cold stream and stores nothing.
impl customs_store::inflight::AssembledBlob for PieceFile {
    fn file(&self) -> Arc<std::fs::File> {
        self.file.clone()
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.geometry.size
    }

    fn wait_verified(
        &self,
        beyond: u64,
        was_final: bool,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<VerifiedPrefix, std::io::Error>> + Send + '_>,
    > {
        Box::pin(async move {
            let size = self.geometry.size;
            let mut rx = self.have.subscribe();
            loop {
                let now = self.verified_prefix();
                if now.bytes > beyond || (now.is_final && (!was_final || now.bytes >= size)) {
                    return Ok(now);
                }
                if let Some(reason) = self.stopped() {
                    return Err(std::io::Error::other(format!(
                        "piece download stopped: {reason}"
                    )));
                }
                // Marked, updated and stopped all notify; a dropped sender
                // cannot happen while `self` lives.
                if rx.changed().await.is_err() {
                    return Err(std::io::Error::other("piece download stopped"));
                }
            }
        })
    }
}

/// Drops piece-file names that are also linked elsewhere: blobs the store
/// adopted before the node stopped, before the swarm dropped its own name.
/// Left alone, such a name would keep the blob's disk space after the store
/// evicts it. Returns how many were dropped.
pub fn sweep_adopted(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut dropped = 0;
    for e in entries.flatten() {
        let path = e.path();
        let linked = path.extension().is_some_and(|x| x == "pieces")
            && std::fs::symlink_metadata(&path)
                .is_ok_and(|m| m.is_file() && std::os::unix::fs::MetadataExt::nlink(&m) > 1);
        if linked && std::fs::remove_file(&path).is_ok() {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::info!(dropped, dir = %dir.display(), "dropped piece files the store had already kept");
    }
    dropped
}

fn rescan(f: &std::fs::File, g: PieceGeometry, hashes: &[Digest]) -> std::io::Result<Vec<bool>> {
    let mut have = vec![false; g.piece_count() as usize];
    let mut buf = vec![0u8; READ_CHUNK as usize];
    for (i, want) in hashes.iter().enumerate() {
        let Some((start, end)) = g.piece_range(i as u32) else {
            continue;
        };
        let mut h = Sha256Hasher::new();
        let mut pos = start;
        while pos < end {
            let n = (end - pos).min(READ_CHUNK) as usize;
            f.read_exact_at(&mut buf[..n], pos)?;
            h.update(&buf[..n]);
            pos += n as u64;
        }
        have[i] = h.finish() == *want;
    }
    Ok(have)
}

/// Streams `start..end` of a file in chunks.
pub fn read_range(file: Arc<std::fs::File>, start: u64, end: u64) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (file, start),
        move |(f, pos)| async move {
            if pos >= end {
                return None;
            }
            let len = (end - pos).min(READ_CHUNK);
            let f2 = f.clone();
            let res = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; len as usize];
                f2.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            match res {
                Ok(b) => Some((Ok(b), (f, pos + len))),
                Err(e) => Some((Err(e), (f, end))),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use customs_protocol::piece_manifest::{
        AdmissionRef, GatewayKey, MIN_PIECE_LEN, PieceManifest, TrustedGatewayKeys,
    };

    fn manifest(data: &[u8]) -> Statement {
        Statement::Final(final_manifest(&GatewayKey::generate().unwrap(), data))
    }

    fn final_manifest(key: &GatewayKey, data: &[u8]) -> VerifiedPieceManifest {
        let len = MIN_PIECE_LEN;
        let blob = Digest::of(data);
        let signed = key
            .sign(PieceManifest {
                blob: blob.clone(),
                size: data.len() as u64,
                piece_length: len,
                pieces: data.chunks(len as usize).map(Digest::of).collect(),
                admission: AdmissionRef {
                    image: "r/x".into(),
                    manifest_digest: Digest::of(b"m"),
                    policy_revision: "r".into(),
                },
                key_id: String::new(),
            })
            .unwrap();
        TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()])
            .unwrap()
            .verify(&signed, &blob)
            .unwrap()
    }

    /// A provisional statement for `data` signing its first `signed`
    /// pieces with `hashes` (the true ones unless given), from `fetch`.
    fn provisional(
        key: &GatewayKey,
        data: &[u8],
        hashes: Vec<Digest>,
        fetch: &FetchId,
        at: u64,
    ) -> Statement {
        use customs_protocol::piece_manifest::{PROVISIONAL_TTL_SECS, ProvisionalPieces};
        let blob = Digest::of(data);
        let signed = key
            .sign_provisional(ProvisionalPieces {
                blob: blob.clone(),
                size: data.len() as u64,
                piece_length: MIN_PIECE_LEN,
                pieces: hashes,
                fetch: fetch.clone(),
                signed_at: at,
                expires_at: at + PROVISIONAL_TTL_SECS,
                admission: AdmissionRef {
                    image: "r/x".into(),
                    manifest_digest: Digest::of(b"m"),
                    policy_revision: "r".into(),
                },
                key_id: String::new(),
            })
            .unwrap();
        TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()])
            .unwrap()
            .verify_statement(&signed, &blob, at)
            .unwrap()
    }

    fn true_hashes(data: &[u8], n: usize) -> Vec<Digest> {
        data.chunks(MIN_PIECE_LEN as usize)
            .take(n)
            .map(Digest::of)
            .collect()
    }

    #[tokio::test]
    async fn provisional_pieces_are_shared_but_only_the_final_manifest_completes_a_blob() {
        use customs_protocol::piece_manifest::unix_now;
        let dir = tempfile::tempdir().unwrap();
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..(3 * len + 10)).map(|i| (i % 247) as u8).collect();
        let key = GatewayKey::generate().unwrap();
        let fetch = FetchId::random().unwrap();
        let t = unix_now();
        let first = provisional(&key, &data, true_hashes(&data, 2), &fetch, t);
        let pf = PieceFile::open(dir.path(), first).await.unwrap();
        // A piece no statement signs yet is refused before a byte is read.
        assert!(matches!(
            pf.write_piece(2, body(&data[2 * len..3 * len])).await,
            Err(PieceError::Unsigned { index: 2 })
        ));
        assert!(matches!(
            pf.write_piece(1, body(&vec![1u8; len])).await,
            Err(PieceError::Mismatch { .. })
        ));
        pf.write_piece(0, body(&data[..len])).await.unwrap();
        pf.write_piece(1, body(&data[len..2 * len])).await.unwrap();
        // Signed pieces are shared at once...
        assert!(pf.piece_stream(1).is_some());
        assert_eq!(
            pf.verified_prefix(),
            VerifiedPrefix {
                bytes: 2 * len as u64,
                is_final: false
            }
        );
        // ...and the next statement of the same fetch lets more in.
        assert!(
            pf.update(&provisional(&key, &data, true_hashes(&data, 3), &fetch, t))
                .unwrap()
        );
        pf.write_piece(2, body(&data[2 * len..3 * len]))
            .await
            .unwrap();
        assert_eq!(pf.provisional(), Some((3, t)));
        // The last piece is never provisional: nothing completes.
        assert!(matches!(
            pf.write_piece(3, body(&data[3 * len..])).await,
            Err(PieceError::Unsigned { index: 3 })
        ));
        assert!(!pf.complete());
        // Another fetch's statement conflicts: the download must discard.
        let other = FetchId::random().unwrap();
        assert!(matches!(
            pf.update(&provisional(
                &key,
                &data,
                true_hashes(&data, 3),
                &other,
                t + 1
            )),
            Err(StatementConflict::OtherFetch { .. })
        ));
        // The final manifest completes it.
        assert!(!pf.expired(t + 1));
        assert!(pf.expired(t + 61));
        assert!(
            pf.update(&Statement::Final(final_manifest(&key, &data)))
                .unwrap()
        );
        assert!(!pf.expired(t + 61), "a final manifest never expires");
        pf.write_piece(3, body(&data[3 * len..])).await.unwrap();
        assert!(pf.complete());
        assert!(pf.verified_prefix().is_final);
    }

    #[tokio::test]
    async fn a_final_manifest_that_contradicts_a_held_piece_is_refused() {
        use customs_protocol::piece_manifest::unix_now;
        let dir = tempfile::tempdir().unwrap();
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..(2 * len + 1)).map(|i| (i % 241) as u8).collect();
        let key = GatewayKey::generate().unwrap();
        let fetch = FetchId::random().unwrap();
        let t = unix_now();
        // The provisional hash of piece 0 is of bytes the upstream sent;
        // the final manifest (for other bytes) disagrees.
        let mut lied = data.clone();
        lied[0] ^= 1;
        let pf = PieceFile::open(
            dir.path(),
            provisional(&key, &data, true_hashes(&lied, 1), &fetch, t),
        )
        .await
        .unwrap();
        pf.write_piece(0, body(&lied[..len])).await.unwrap();
        assert!(matches!(
            pf.update(&Statement::Final(final_manifest(&key, &data))),
            Err(StatementConflict::Contradiction(_))
        ));
        assert!(!pf.is_final());
    }

    fn body(
        b: &[u8],
    ) -> futures_util::stream::Iter<std::vec::IntoIter<Result<Bytes, std::io::Error>>> {
        futures_util::stream::iter(vec![Ok(Bytes::copy_from_slice(b))])
    }

    #[tokio::test]
    async fn bad_pieces_are_never_marked_and_downloads_resume() {
        let dir = tempfile::tempdir().unwrap();
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..(3 * len + 10)).map(|i| (i % 253) as u8).collect();
        let m = manifest(&data);
        let pf = PieceFile::open(dir.path(), m.clone()).await.unwrap();
        // Wrong bytes, a valid piece of the wrong index, short and long bodies.
        assert!(matches!(
            pf.write_piece(0, body(&vec![0u8; len])).await,
            Err(PieceError::Mismatch { .. })
        ));
        assert!(matches!(
            pf.write_piece(0, body(&data[len..2 * len])).await,
            Err(PieceError::Mismatch { .. })
        ));
        assert!(matches!(
            pf.write_piece(1, body(&data[len..2 * len - 1])).await,
            Err(PieceError::Length { .. })
        ));
        assert!(matches!(
            pf.write_piece(3, body(&data[3 * len - 1..])).await,
            Err(PieceError::Length { .. })
        ));
        assert!(pf.held().is_empty());
        assert!(
            pf.piece_stream(0).is_none(),
            "an unverified piece was served"
        );
        pf.write_piece(0, body(&data[..len])).await.unwrap();
        pf.write_piece(2, body(&data[2 * len..3 * len]))
            .await
            .unwrap();
        assert_eq!(pf.held(), vec![0, 2]);
        drop(pf);
        // Restart: verified pieces are kept after re-hashing, the rest fetched.
        let pf = PieceFile::open(dir.path(), m).await.unwrap();
        assert_eq!(pf.held(), vec![0, 2]);
        pf.write_piece(1, body(&data[len..2 * len])).await.unwrap();
        pf.write_piece(3, body(&data[3 * len..])).await.unwrap();
        assert!(pf.complete());
        let mut all = Vec::new();
        let mut s = pf.clone().ordered_stream();
        while let Some(c) = s.next().await {
            all.extend_from_slice(&c.unwrap());
        }
        assert_eq!(all, data);
    }

    /// A body fed by the test, chunk by chunk.
    fn channel() -> (
        tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
        impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let s =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
            );
        (tx, Box::pin(s))
    }

    async fn read_all(pf: &PieceFile, i: u32) -> Vec<u8> {
        let mut s = pf.piece_stream(i).unwrap();
        let mut v = Vec::new();
        while let Some(c) = s.next().await {
            v.extend_from_slice(&c.unwrap());
        }
        v
    }

    #[tokio::test]
    async fn a_piece_file_the_store_also_links_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..(2 * len)).map(|i| (i % 251) as u8).collect();
        let m = manifest(&data);
        let pf = PieceFile::open(dir.path(), m.clone()).await.unwrap();
        pf.write_piece(0, body(&data[..len])).await.unwrap();
        pf.write_piece(1, body(&data[len..])).await.unwrap();
        // The store linked the complete file; the node stopped before the
        // swarm dropped its own name.
        let stored = dir.path().join("stored-blob");
        std::fs::hard_link(&pf.path, &stored).unwrap();
        drop(pf);
        // A new download of the blob starts from a new file, so nothing it
        // writes (a bad piece's bytes before their check) reaches the blob.
        let again = PieceFile::open(dir.path(), m).await.unwrap();
        assert!(
            again.held().is_empty(),
            "resumed into the stored blob's inode"
        );
        assert!(
            matches!(
                again.write_piece(0, body(&vec![0u8; len])).await,
                Err(PieceError::Mismatch { .. })
            ),
            "a bad piece was accepted"
        );
        assert_eq!(
            std::fs::read(&stored).unwrap(),
            data,
            "the stored blob changed"
        );
        // At start, a name the store also links is dropped; a partial
        // download's own file is kept for its resume.
        drop(again);
        std::fs::write(dir.path().join("other.pieces"), b"partial").unwrap();
        std::fs::hard_link(&stored, dir.path().join("adopted.pieces")).unwrap();
        assert_eq!(sweep_adopted(dir.path()), 1);
        assert!(!dir.path().join("adopted.pieces").exists());
        assert!(dir.path().join("other.pieces").exists());
        assert_eq!(std::fs::read(&stored).unwrap(), data);
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_while_the_first_writes() {
        let dir = tempfile::tempdir().unwrap();
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..2 * len).map(|i| (i % 251) as u8).collect();
        let pf = PieceFile::open(dir.path(), manifest(&data)).await.unwrap();
        let (tx, slow) = channel();
        let first = {
            let pf = pf.clone();
            tokio::spawn(async move { pf.write_piece(0, slow).await })
        };
        tx.send(Ok(Bytes::copy_from_slice(&data[..len / 2])))
            .await
            .unwrap();
        // Wait until the first writer holds its claim.
        while pf.writing() == 0 {
            tokio::task::yield_now().await;
        }
        // A hostile second parent races for the same piece: refused, and
        // nothing it sent reaches the file.
        let hostile = vec![0xAAu8; len];
        assert!(matches!(
            pf.write_piece(0, body(&hostile)).await,
            Err(PieceError::Duplicate { index: 0 })
        ));
        // Another piece is not blocked by the claim on piece 0.
        pf.write_piece(1, body(&data[len..])).await.unwrap();
        tx.send(Ok(Bytes::copy_from_slice(&data[len / 2..len])))
            .await
            .unwrap();
        drop(tx);
        first.await.unwrap().unwrap();
        assert_eq!(pf.writing(), 0);
        assert!(pf.complete());
        assert_eq!(read_all(&pf, 0).await, data[..len]);
    }

    #[tokio::test]
    async fn a_late_writer_never_changes_a_verified_piece() {
        let dir = tempfile::tempdir().unwrap();
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..len + 7).map(|i| (i % 241) as u8).collect();
        let m = manifest(&data);
        let pf = PieceFile::open(dir.path(), m.clone()).await.unwrap();
        pf.write_piece(0, body(&data[..len])).await.unwrap();
        // The same (good) bytes again, and bad bytes of the right length.
        assert!(matches!(
            pf.write_piece(0, body(&data[..len])).await,
            Err(PieceError::Duplicate { .. })
        ));
        assert!(matches!(
            pf.write_piece(0, body(&vec![0u8; len])).await,
            Err(PieceError::Duplicate { .. })
        ));
        assert!(pf.has(0));
        assert_eq!(read_all(&pf, 0).await, data[..len]);
        // On disk too: a restart re-hashes piece 0 and still finds it good.
        drop(pf);
        let pf = PieceFile::open(dir.path(), m).await.unwrap();
        assert_eq!(pf.held(), vec![0]);
    }

    #[tokio::test]
    async fn an_aborted_writer_releases_its_claim_and_the_piece_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..len).map(|i| (i % 239) as u8).collect();
        let pf = PieceFile::open(dir.path(), manifest(&data)).await.unwrap();
        let (tx, slow) = channel();
        let task = {
            let pf = pf.clone();
            tokio::spawn(async move { pf.write_piece(0, slow).await })
        };
        tx.send(Ok(Bytes::copy_from_slice(&data[..10])))
            .await
            .unwrap();
        while pf.writing() == 0 {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        while pf.writing() != 0 {
            tokio::task::yield_now().await;
        }
        pf.write_piece(0, body(&data)).await.unwrap();
        assert!(pf.complete());
    }

    #[tokio::test]
    async fn readers_of_a_stopped_download_get_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let len = MIN_PIECE_LEN as usize;
        let data: Vec<u8> = (0..2 * len).map(|i| (i % 233) as u8).collect();
        let pf = PieceFile::open(dir.path(), manifest(&data)).await.unwrap();
        pf.write_piece(0, body(&data[..len])).await.unwrap();
        let mut s = pf.clone().ordered_stream();
        let reader = tokio::spawn(async move {
            let mut got = 0;
            loop {
                match s.next().await {
                    Some(Ok(c)) => got += c.len(),
                    Some(Err(e)) => return (got, e.to_string()),
                    None => return (got, String::new()),
                }
            }
        });
        tokio::task::yield_now().await;
        pf.stop("no parent could serve piece 1");
        let (got, err) = reader.await.unwrap();
        assert_eq!(got, len, "verified bytes are still handed out");
        assert!(err.contains("no parent could serve piece 1"), "{err}");
    }
}
