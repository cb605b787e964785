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
use customs_protocol::piece_manifest::VerifiedPieceManifest;
use customs_protocol::{Digest, Sha256Hasher};
use customs_store::inflight::ByteStream;
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

/// See the module docs.
pub struct PieceFile {
    manifest: VerifiedPieceManifest,
    file: Arc<std::fs::File>,
    path: PathBuf,
    have: watch::Sender<Vec<bool>>,
    /// Pieces a writer has claimed (see the module docs).
    claims: Arc<Mutex<Vec<bool>>>,
    /// Why the download stopped for good, once it did: readers waiting for
    /// a piece get this error instead of waiting forever.
    stopped: Mutex<Option<String>>,
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
    /// Opens (resuming) or creates the piece file for a verified manifest.
    /// Pieces already on disk count only after they hash correctly again.
    pub async fn open(
        dir: &Path,
        manifest: VerifiedPieceManifest,
    ) -> Result<Arc<Self>, PieceError> {
        tokio::fs::create_dir_all(dir).await?;
        let m = manifest.manifest();
        let path = dir.join(format!("{}.pieces", m.blob.hex()));
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
        file.set_len(m.size)?;
        let file = Arc::new(file);
        let n = m.piece_count() as usize;
        let mut have = vec![false; n];
        if existed {
            let f = file.clone();
            let mm = manifest.clone();
            have = tokio::task::spawn_blocking(move || rescan(&f, &mm))
                .await
                .map_err(std::io::Error::other)??;
            let resumed = have.iter().filter(|h| **h).count();
            tracing::info!(blob = %m.blob, resumed, total = n, "resuming a partial download");
        }
        let (tx, _) = watch::channel(have);
        Ok(Arc::new(PieceFile {
            manifest,
            file,
            path,
            have: tx,
            claims: Arc::new(Mutex::new(vec![false; n])),
            stopped: Mutex::new(None),
        }))
    }

    /// The manifest.
    pub fn manifest(&self) -> &VerifiedPieceManifest {
        &self.manifest
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

    /// True when every piece is verified.
    pub fn complete(&self) -> bool {
        self.have.borrow().iter().all(|h| *h)
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
    /// its length and sha256 match the manifest. A piece already verified
    /// or being written by another writer is refused with
    /// [`PieceError::Duplicate`] before a byte is read or written.
    pub async fn write_piece<S>(&self, index: u32, mut body: S) -> Result<(), PieceError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
    {
        let m = self.manifest.manifest();
        let (start, end) = m.piece_range(index).ok_or_else(|| PieceError::Length {
            index,
            detail: "no such piece".into(),
        })?;
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
        let want = &m.pieces[index as usize];
        if got != *want {
            return Err(PieceError::Mismatch {
                index,
                want: want.clone(),
                got,
            });
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
        let (start, end) = self.manifest.manifest().piece_range(index)?;
        Some(read_range(self.file.clone(), start, end))
    }

    /// The whole blob in order, each piece released as soon as it and all
    /// before it are verified.
    pub fn ordered_stream(self: Arc<Self>) -> ByteStream {
        let size = self.manifest.manifest().size;
        let rx = self.have.subscribe();
        Box::pin(futures_util::stream::unfold(
            (self, rx, 0u64),
            move |(pf, mut rx, pos)| async move {
                if pos >= size {
                    return None;
                }
                let m = pf.manifest.manifest();
                let piece = (pos / m.piece_length) as u32;
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
                let (_, end) = m.piece_range(piece)?;
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

    /// Deletes the file (after the blob was committed to the store).
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }

    /// Bytes from the start of the blob that are verified: the pieces
    /// before the first missing one.
    pub fn verified_prefix(&self) -> u64 {
        let m = self.manifest.manifest();
        let pieces = self.have.borrow().iter().take_while(|h| **h).count() as u64;
        pieces.saturating_mul(m.piece_length).min(m.size)
    }
}

/// The store follows a piece file's verified prefix and links the complete
/// file into place: every piece matched the gateway-signed manifest, which
/// names the blob's digest and size, so all pieces matching is the whole
/// blob matching (the gateway checked the whole-blob sha256 before signing).
impl customs_store::inflight::AssembledBlob for PieceFile {
    fn file(&self) -> Arc<std::fs::File> {
        self.file.clone()
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn size(&self) -> u64 {
        self.manifest.manifest().size
    }

    fn wait_verified(
        &self,
        beyond: u64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, std::io::Error>> + Send + '_>>
    {
        Box::pin(async move {
            let size = self.manifest.manifest().size;
            let mut rx = self.have.subscribe();
            loop {
                let now = self.verified_prefix();
                if now > beyond || now >= size {
                    return Ok(now);
                }
                if let Some(reason) = self.stopped() {
                    return Err(std::io::Error::other(format!(
                        "piece download stopped: {reason}"
                    )));
                }
                // Marked and stopped both notify; a dropped sender cannot
                // happen while `self` lives.
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

fn rescan(f: &std::fs::File, m: &VerifiedPieceManifest) -> std::io::Result<Vec<bool>> {
    let m = m.manifest();
    let mut have = Vec::with_capacity(m.pieces.len());
    let mut buf = vec![0u8; READ_CHUNK as usize];
    for i in 0..m.piece_count() {
        let Some((start, end)) = m.piece_range(i) else {
            have.push(false);
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
        have.push(h.finish() == m.pieces[i as usize]);
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

    fn manifest(data: &[u8]) -> VerifiedPieceManifest {
        let key = GatewayKey::generate().unwrap();
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
