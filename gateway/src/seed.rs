//! The gateway as seed peer: it turns admitted blobs into swarm tasks.
//!
//! For a blob a peer asks about, the gateway checks the repository binding
//! (the same check as an OCI blob request). A stored blob's signed piece
//! manifest is handed out (built once). A cold blob is fetched once from
//! upstream ([`pipeline`]): while it arrives the gateway hashes its pieces,
//! signs each growing prefix of piece hashes as a *provisional* statement,
//! registers it with the scheduler and serves those pieces, so the swarm
//! fans out while the fetch runs; once the whole-blob sha256 matched it
//! signs the final piece manifest. A final manifest is therefore never
//! signed for bytes whose whole-blob sha256 did not match, and a fetch that
//! fails is withdrawn: peers discard its pieces.

mod pipeline;

use crate::server::GatewayMirror;
use customs_mirror::MirrorError;
use customs_protocol::piece_manifest::{FetchId, GatewayKey, PieceManifest, SignedPieceManifest};
use customs_protocol::scheduler_proto as pb;
use customs_protocol::{Digest, ImageName, RegistryHost};
use customs_store::{FetchFailure, FetchFailureKind, StoreError, Table};
use customs_swarm::members::{Schedulers, try_next};
use pipeline::{FetchOutcome, SeedFetch};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The gateway's swarm side.
pub struct Seed {
    key: GatewayKey,
    /// The id this gateway seeds under: [`SEED_ID`] alone, or its fleet
    /// member id (its certificate names it).
    id: String,
    schedulers: Arc<Schedulers>,
    upload_addr: String,
    upload_capacity: u64,
    /// The zone it announces (empty: none): schedulers send a peer to a
    /// seed of its own zone when one holds the task.
    zone: String,
    locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Upstream fetches in progress, by (registry, blob): a bad or stalled
    /// registry's fetch is never another registry's.
    fetches: Mutex<HashMap<(RegistryHost, Digest), Arc<SeedFetch>>>,
    /// Recently failed fetches and why, so a peer asking about its fetch
    /// learns it failed instead of joining a new one.
    failed: Mutex<VecDeque<(FetchId, String)>>,
}

/// How long a verified blob may take to be kept (fsync, rename, index)
/// before its task is refused.
const STORE_WAIT: Duration = Duration::from_secs(30);
/// Failed fetches remembered (each a few dozen bytes).
const FAILED_KEPT: usize = 1024;

/// The peer id the gateway announces itself under (its certificate must
/// name `gateway.node.customs.internal`).
pub const SEED_ID: &str = "gateway";

impl Seed {
    /// Builds the seed side.
    pub fn new(
        key: GatewayKey,
        id: Option<String>,
        schedulers: Arc<Schedulers>,
        upload_addr: String,
        upload_capacity: u64,
    ) -> Self {
        Seed {
            key,
            id: id.unwrap_or_else(|| SEED_ID.to_owned()),
            schedulers,
            upload_addr,
            upload_capacity,
            zone: String::new(),
            locks: Mutex::default(),
            fetches: Mutex::default(),
            failed: Mutex::default(),
        }
    }

    /// The same seed announcing `zone` (its gateway's fleet zone).
    pub fn in_zone(mut self, zone: &str) -> Self {
        self.zone = zone.to_owned();
        self
    }

    /// The live peers the schedulers know (preheat targets): every peer
    /// announces to every scheduler, so the first that answers knows them.
    pub async fn list_peers(
        &self,
    ) -> Result<Vec<customs_protocol::scheduler_proto::PeerInfo>, tonic::Status> {
        let mut last = tonic::Status::unavailable("no scheduler known");
        for (id, mut client) in self.schedulers.all() {
            match client
                .list_peers(customs_protocol::scheduler_proto::ListPeersRequest {})
                .await
            {
                Ok(resp) => return Ok(resp.into_inner().peers),
                Err(e) if try_next(&e) => {
                    tracing::debug!(scheduler = %id, error = %e, "scheduler unreachable; asking the next");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The schedulers this seed registers with (the fleet's, once learned).
    pub fn schedulers(&self) -> &Arc<Schedulers> {
        &self.schedulers
    }

    /// The signing key's id.
    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    /// Announces the gateway as a seed to every scheduler every few
    /// seconds. A new or restarted scheduler, or a change of the scheduler
    /// set (task owners moved), gets every task registered again.
    pub async fn announce_loop(
        self: Arc<Self>,
        store: Arc<customs_store::BlobStore>,
        active: impl Fn() -> u32,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let info = pb::PeerInfo {
                peer_id: self.id.clone(),
                upload_addr: self.upload_addr.clone(),
                upload_capacity: self.upload_capacity,
                active_uploads: active(),
                zone: self.zone.clone(),
                rack: String::new(),
                seed: true,
            };
            let reregister = self.schedulers.announce(&info).await;
            if reregister {
                // A new or restarted scheduler knows no tasks: register
                // every piece manifest this gateway signed with its owner.
                let all: Vec<(String, SignedPieceManifest)> = store
                    .index()
                    .scan(Table::PieceManifests)
                    .unwrap_or_default();
                // Only what the current key signed: a manifest of a
                // retired key is rebuilt when a peer next asks.
                for (_, signed) in all.iter().filter(|(_, s)| s.key_id == self.key.id()) {
                    self.register(signed).await;
                }
                tracing::info!(tasks = all.len(), "registered tasks with the schedulers");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// The signed statement for a blob of `image`: its final piece manifest
    /// when the blob is stored (built and registered on first use), else a
    /// provisional statement of the upstream fetch this starts or joins,
    /// returned as soon as the upstream answered. The blob must be bound to
    /// a manifest of `image` that is admitted now (the same check an OCI
    /// blob request passes). A final manifest describes the stored blob's
    /// real size and bytes, never a descriptor's claim; a stored one is
    /// reused only when it was signed by the current key for that size.
    ///
    /// With `fetch`, the caller holds that fetch's provisional statement:
    /// the answer is that fetch's newer statement or the final manifest it
    /// ended in, or `BLOB_UNKNOWN` when it failed; no new fetch is started.
    /// Without `provisional` (a caller that takes final manifests only) the
    /// answer waits for the final manifest.
    pub async fn ensure_task(
        self: &Arc<Self>,
        mirror: &Arc<GatewayMirror>,
        image: &ImageName,
        digest: &Digest,
        fetch: Option<&FetchId>,
        provisional: bool,
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
        let guard = lock.lock().await;
        let key = (image.registry.clone(), digest.clone());
        let live = self
            .fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let running = match live {
            Some(f) if fetch.is_none_or(|id| *id == f.id) && !f.has_failed() => Some(f),
            _ => None,
        };
        let running = match running {
            Some(f) => f,
            None => {
                if let Some(signed) = self
                    .stored_final(mirror, digest, declared, &admitted_by, image)
                    .await?
                {
                    drop(guard);
                    self.register(&signed).await;
                    return Ok(signed);
                }
                if let Some(id) = fetch {
                    let why = self.failure_of(id).unwrap_or_else(|| {
                        "that fetch is over and its blob was not kept".to_owned()
                    });
                    // 404: that fetch is unknown now; the peer discards its
                    // pieces and asks afresh.
                    return Err(MirrorError::BlobUnknown(format!(
                        "fetch {id} of {digest} failed: {why}"
                    )));
                }
                SeedFetch::start(self.clone(), mirror, image, digest, declared, admitted_by).await?
            }
        };
        drop(guard);
        let outcome = if provisional {
            running.latest().await
        } else {
            running.final_outcome().await
        };
        match outcome {
            FetchOutcome::Statement(s) => Ok(s),
            FetchOutcome::Failed(f) => Err(MirrorError::for_blob(f)),
        }
    }

    /// The stored blob's final manifest (built and kept on first use), or
    /// `None` when the blob is not stored.
    async fn stored_final(
        &self,
        mirror: &GatewayMirror,
        digest: &Digest,
        declared: u64,
        admitted_by: &Digest,
        image: &ImageName,
    ) -> Result<Option<SignedPieceManifest>, MirrorError> {
        let store = mirror.store();
        let Some(meta) = store.meta(digest)? else {
            return Ok(None);
        };
        if meta.size != declared {
            return Err(MirrorError::ManifestInvalid(format!(
                "{image}: the descriptor for {digest} declares {declared} bytes, the blob has {}; no piece manifest is signed for it",
                meta.size
            )));
        }
        let existing: Option<SignedPieceManifest> = store
            .index()
            .get(Table::PieceManifests, &digest.to_string())
            .map_err(StoreError::from)?;
        if let Some(s) = existing.filter(|s| self.reusable(s, Some(meta.size))) {
            return Ok(Some(s));
        }
        // Stored, but no manifest of the current key: hash the stored blob
        // (no upstream fetch).
        let reader = mirror.blob_reader(image, digest).await?;
        let pieces = pipeline::hash_pieces(reader.into_stream(), declared).await?;
        let manifest = PieceManifest {
            blob: digest.clone(),
            size: declared,
            piece_length: customs_protocol::piece_manifest::piece_length_for(declared),
            pieces,
            admission: pipeline::admission(image, admitted_by, mirror),
            key_id: String::new(),
        };
        self.keep_final(mirror, manifest).await.map(Some)
    }

    /// Signs a final manifest and keeps it in the index.
    async fn keep_final(
        &self,
        mirror: &GatewayMirror,
        manifest: PieceManifest,
    ) -> Result<SignedPieceManifest, MirrorError> {
        let (blob, size, piece_length) =
            (manifest.blob.clone(), manifest.size, manifest.piece_length);
        let signed = self.key.sign(manifest).map_err(|e| {
            MirrorError::Source(FetchFailure::new(FetchFailureKind::Io, e.to_string()))
        })?;
        let key = blob.to_string();
        let rec = signed.clone();
        mirror
            .store()
            .blocking_index(move |idx| idx.put(Table::PieceManifests, &key, &rec))
            .await?;
        tracing::info!(%blob, size, piece_length, "piece manifest signed");
        Ok(signed)
    }

    fn failure_of(&self, id: &FetchId) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(f, _)| f == id)
            .map(|(_, why)| why.clone())
    }

    /// Records a failed fetch and drops it from the live ones.
    fn fetch_failed(&self, registry: &RegistryHost, blob: &Digest, id: &FetchId, why: String) {
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        if failed.len() >= FAILED_KEPT {
            failed.pop_front();
        }
        failed.push_back((id.clone(), why));
        drop(failed);
        self.fetch_ended(registry, blob, id);
    }

    /// Drops a fetch from the live ones (if it is still that fetch).
    fn fetch_ended(&self, registry: &RegistryHost, blob: &Digest, id: &FetchId) {
        let mut map = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        let key = (registry.clone(), blob.clone());
        if map.get(&key).is_some_and(|f| f.id == *id) {
            map.remove(&key);
        }
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
            seed_id: if self.id == SEED_ID {
                String::new()
            } else {
                self.id.clone()
            },
        };
        let Some(blob) = signed.claimed_blob() else {
            return;
        };
        for (id, mut client) in self.schedulers.for_blob(&blob) {
            use tracing::Instrument as _;
            // The final registration is a span of the pull's trace; the
            // provisional ones (one per batch of pieces read) are not.
            let provisional = signed
                .payload
                .starts_with(customs_protocol::piece_manifest::PROVISIONAL_DOMAIN);
            let span = if provisional {
                tracing::Span::none()
            } else {
                customs_runtime::trace_context::client_span("scheduler", &id.to_string())
            };
            let mut call = tonic::Request::new(req.clone());
            *call.metadata_mut() = tonic::metadata::MetadataMap::from_headers(
                customs_runtime::trace_context::headers_for(&span),
            );
            match client.register_task(call).instrument(span).await {
                Ok(_) => return,
                Err(e) if try_next(&e) => {
                    tracing::debug!(scheduler = %id, %blob, error = %e, "scheduler unreachable; registering with the next");
                }
                Err(e) => {
                    tracing::warn!(key_id = %signed.key_id, error = %e, "scheduler registration failed; peers fall back to the gateway");
                    return;
                }
            }
        }
        tracing::warn!(%blob, "no scheduler reachable; peers fall back to the gateway");
    }
}

impl Seed {
    /// Tells the scheduler a fetch failed (best effort: its statements
    /// expire anyway).
    async fn withdraw(&self, blob: &Digest, id: &FetchId) {
        let req = pb::WithdrawTaskRequest {
            blob_digest: blob.to_string(),
            fetch_id: id.to_string(),
        };
        for (_, mut client) in self.schedulers.for_blob(blob) {
            match client.withdraw_task(req.clone()).await {
                Ok(_) => return,
                Err(e) if try_next(&e) => {}
                Err(e) => {
                    tracing::warn!(%blob, fetch = %id, error = %e, "withdrawing a failed fetch's task failed; its statements expire");
                    return;
                }
            }
        }
    }
}

impl customs_swarm::piece_server::PartialPieces for Seed {
    /// Pieces of the requester's fetch, while it runs, that the gateway
    /// hashed and signed (a stored blob is served by the caller).
    fn partial_piece(
        &self,
        blob: &Digest,
        index: u32,
        fetch: Option<&FetchId>,
    ) -> Option<(customs_store::inflight::ByteStream, u64)> {
        let fetch = fetch?;
        let found = self
            .fetches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|((_, b), f)| b == blob && f.id == *fetch)
            .map(|(_, f)| f.clone());
        found?.piece(index)
    }
}
