//! The gateway as seed peer: it turns admitted, whole-blob-verified blobs
//! into swarm tasks.
//!
//! For a blob a peer asks about, the gateway checks the repository binding
//! (the same check as an OCI blob request), makes sure the blob is stored
//! (fetching and verifying it once if cold), hashes its pieces, signs the
//! piece manifest with the gateway key and registers it with the scheduler.
//! A piece manifest is therefore never signed for bytes whose whole-blob
//! sha256 did not match.

use crate::server::GatewayMirror;
use customs_mirror::MirrorError;
use customs_protocol::piece_manifest::{
    self, AdmissionRef, GatewayKey, PieceManifest, SignedPieceManifest,
};
use customs_protocol::scheduler_proto as pb;
use customs_protocol::scheduler_proto::scheduler_client::SchedulerClient;
use customs_protocol::{Digest, ImageName, Sha256Hasher};
use customs_store::{StoreError, Table};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// The gateway's swarm side.
pub struct Seed {
    key: GatewayKey,
    scheduler: SchedulerClient<Channel>,
    upload_addr: String,
    upload_capacity: u64,
    locks: std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

/// How long a verified blob may take to be kept (fsync, rename, index)
/// before its task is refused.
const STORE_WAIT: Duration = Duration::from_secs(30);

/// The peer id the gateway announces itself under (its certificate must
/// name `gateway.node.customs.internal`).
pub const SEED_ID: &str = "gateway";

impl Seed {
    /// Builds the seed side.
    pub fn new(
        key: GatewayKey,
        scheduler: SchedulerClient<Channel>,
        upload_addr: String,
        upload_capacity: u64,
    ) -> Self {
        Seed {
            key,
            scheduler,
            upload_addr,
            upload_capacity,
            locks: std::sync::Mutex::default(),
        }
    }

    /// The live peers the scheduler knows (preheat targets).
    pub async fn list_peers(
        &self,
    ) -> Result<Vec<customs_protocol::scheduler_proto::PeerInfo>, tonic::Status> {
        let mut client = self.scheduler.clone();
        let resp = client
            .list_peers(customs_protocol::scheduler_proto::ListPeersRequest {})
            .await?;
        Ok(resp.into_inner().peers)
    }

    /// The signing key's id.
    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    /// Announces the gateway as a seed every few seconds (a restarted
    /// scheduler learns it again).
    pub async fn announce_loop(
        self: Arc<Self>,
        store: Arc<customs_store::BlobStore>,
        active: impl Fn() -> u32,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut instance = String::new();
        loop {
            let info = pb::PeerInfo {
                peer_id: SEED_ID.to_owned(),
                upload_addr: self.upload_addr.clone(),
                upload_capacity: self.upload_capacity,
                active_uploads: active(),
                zone: String::new(),
                rack: String::new(),
                seed: true,
            };
            match self
                .scheduler
                .clone()
                .announce_peer(pb::AnnouncePeerRequest { peer: Some(info) })
                .await
            {
                Ok(r) => {
                    let now = r.into_inner().instance;
                    if now != instance {
                        // A new or restarted scheduler knows no tasks: register
                        // every piece manifest this gateway signed.
                        let all: Vec<(String, SignedPieceManifest)> = store
                            .index()
                            .scan(Table::PieceManifests)
                            .unwrap_or_default();
                        // Only what the current key signed: a manifest of a
                        // retired key is rebuilt when a peer next asks.
                        for (_, signed) in all.iter().filter(|(_, s)| s.key_id == self.key.id()) {
                            self.register(signed).await;
                        }
                        tracing::info!(tasks = all.len(), "registered tasks with the scheduler");
                        instance = now;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "seed announce failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// The signed piece manifest for a blob of `image`, building and
    /// registering it on first use. The blob must be bound to a manifest of
    /// `image` that is admitted now (the same check an OCI blob request
    /// passes). The manifest describes the stored blob's real size and
    /// bytes, never a descriptor's claim; a stored piece manifest is reused
    /// only when it was signed by the current key for that same size.
    pub async fn ensure_task(
        &self,
        mirror: &GatewayMirror,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<SignedPieceManifest, MirrorError> {
        let declared = mirror.blob_size(image, digest).await?;
        let admitted_by = mirror
            .binding(image, digest)?
            .and_then(|b| b.all_admitters().last().map(|a| a.manifest.clone()))
            .unwrap_or_else(|| digest.clone());
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(digest.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        let store = mirror.store();
        let existing: Option<SignedPieceManifest> = store
            .index()
            .get(Table::PieceManifests, &digest.to_string())
            .map_err(StoreError::from)?;
        let stored_size = store.meta(digest)?.map(|m| m.size);
        let signed = match existing.filter(|s| self.reusable(s, stored_size)) {
            Some(s) => s,
            None => {
                // Fetch (once, single-flight) and verify the whole blob; the
                // stream ends only after the digest check passed, and the
                // piece hashes are computed from the same bytes on the way.
                let body = mirror.blob(image, digest, None).await?;
                let piece_length = piece_manifest::piece_length_for(body.size);
                let mut hasher = PieceHasher::new(piece_length);
                let mut s = body.body;
                let mut read = 0u64;
                while let Some(chunk) = s.next().await {
                    let chunk = chunk.map_err(|e| {
                        MirrorError::Source(customs_store::FetchFailure::new(
                            customs_store::FetchFailureKind::Unavailable,
                            e.to_string(),
                        ))
                    })?;
                    read += chunk.len() as u64;
                    hasher.update(&chunk);
                }
                let pieces = hasher.finish();
                // Pieces are served from the stored blob: wait until it is kept.
                let real = store.wait_stored(digest, STORE_WAIT).await?.map(|m| m.size);
                let Some(real) = real else {
                    return Err(MirrorError::BlobUnknown(format!(
                        "{digest} was verified but could not be stored"
                    )));
                };
                if real != declared || read != real {
                    return Err(MirrorError::ManifestInvalid(format!(
                        "{image}: the descriptor for {digest} declares {declared} bytes, the blob has {real} (read {read}); no piece manifest is signed for it"
                    )));
                }
                let manifest = PieceManifest {
                    blob: digest.clone(),
                    size: real,
                    piece_length,
                    pieces,
                    admission: AdmissionRef {
                        image: image.to_string(),
                        manifest_digest: admitted_by,
                        policy_revision: mirror.admission_revision(),
                    },
                    key_id: String::new(),
                };
                let signed = self.key.sign(manifest).map_err(|e| {
                    MirrorError::Source(customs_store::FetchFailure::new(
                        customs_store::FetchFailureKind::Io,
                        e.to_string(),
                    ))
                })?;
                let key = digest.to_string();
                let rec = signed.clone();
                store
                    .blocking_index(move |idx| idx.put(Table::PieceManifests, &key, &rec))
                    .await?;
                tracing::info!(%image, blob = %digest, size = real, piece_length, "piece manifest signed");
                signed
            }
        };
        // Registration is idempotent: a restarted scheduler learns the task
        // again the next time a peer asks.
        self.register(&signed).await;
        Ok(signed)
    }

    /// A stored piece manifest may be handed out again only when the
    /// current key signed it and it describes the stored blob's size (one
    /// signed by a retired key, or for another size, is rebuilt).
    fn reusable(&self, signed: &SignedPieceManifest, stored_size: Option<u64>) -> bool {
        signed.key_id == self.key.id()
            && serde_json::from_slice::<PieceManifest>(&signed.payload)
                .is_ok_and(|m| Some(m.size) == stored_size && m.key_id == self.key.id())
    }
}

impl Seed {
    /// Registers one task (idempotent); failures are logged, peers fall back
    /// to the gateway.
    async fn register(&self, signed: &SignedPieceManifest) {
        let req = pb::RegisterTaskRequest {
            manifest: Some(signed.into()),
        };
        if let Err(e) = self.scheduler.clone().register_task(req).await {
            tracing::warn!(key_id = %signed.key_id, error = %e, "scheduler registration failed; peers fall back to the gateway");
        }
    }
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

    #[test]
    fn pieces_cover_the_blob_whatever_the_chunking() {
        let len = piece_manifest::MIN_PIECE_LEN as usize;
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
