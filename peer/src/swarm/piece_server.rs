//! The piece (upload) server: serves verified pieces to other peers over
//! mTLS, paced by the node's upload limit.
//!
//! A piece is served only when it is covered by a gateway-signed piece
//! manifest: from a completed, whole-blob-verified blob in the store, or
//! from a partial download where that piece's sha256 already matched.

use super::Swarm;
use super::piece_file::read_range;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use customs_mirror::rate::RateLimiter;
use customs_protocol::Digest;
use customs_protocol::piece_manifest::{PieceManifest, SignedPieceManifest};
use customs_store::inflight::ByteStream;
use customs_store::{BlobStore, Table};
use std::sync::Arc;

/// Concurrent piece uploads of a peer (default of `--upload-slots`). One
/// upload at the full rate finishes each piece soonest, and a finished
/// piece is one its receiver can pass on (2 slots measured 1.18·S/B at
/// p50 in the swarm bench, 1 slot 1.14).
pub const PEER_UPLOAD_SLOTS: usize = 1;
/// Piece requests a peer lets wait for a slot (default of `--upload-queue`).
/// None: a waiting request is stuck behind a whole piece while another
/// parent may be free (a queue of 2 measured 1.42·S/B against 1.31 without,
/// with 1 MiB pieces).
pub const PEER_UPLOAD_QUEUE: usize = 0;
/// Concurrent piece uploads of the gateway (seed): one piece at a time at
/// the full rate, so first copies reach the swarm as early as possible.
pub const SEED_UPLOAD_SLOTS: usize = 1;

/// Where pieces come from.
#[derive(Clone)]
pub struct PieceProvider {
    /// Completed blobs (and their stored piece manifests).
    pub store: Arc<BlobStore>,
    /// Partial downloads (a peer); `None` on the gateway, which only holds
    /// whole verified blobs.
    pub swarm: Option<Arc<Swarm>>,
    /// The node's upload limit.
    pub limiter: Arc<RateLimiter>,
    /// Pieces uploaded at once. Few concurrent uploads at full rate finish
    /// pieces sooner than many slow ones, and a finished piece is one the
    /// receiver can share at once.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// When all slots are taken: how many requests may wait for one. A
    /// peer lets none wait by default and answers 503, so the requester
    /// asks another parent; the seed lets everything wait, since the
    /// pieces it is asked for exist nowhere else.
    pub queue: UploadQueue,
}

/// Requests waiting for an upload slot, and how many may.
#[derive(Debug, Clone)]
pub struct UploadQueue {
    /// Requests allowed to wait (`usize::MAX`: all, the seed).
    pub max_waiting: usize,
    /// Requests waiting now.
    pub waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl UploadQueue {
    /// A queue of at most `max_waiting` requests.
    pub fn new(max_waiting: usize) -> Self {
        UploadQueue {
            max_waiting,
            waiting: Arc::default(),
        }
    }
}

/// Counts a waiting request while it lives.
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl PieceProvider {
    /// A verified piece as a stream, or `None`.
    pub async fn piece(&self, blob: &Digest, index: u32) -> Option<ByteStream> {
        let signed: Option<SignedPieceManifest> = self
            .store
            .index()
            .get(Table::PieceManifests, &blob.to_string())
            .ok()
            .flatten();
        // The stored manifest was verified (peer) or signed (gateway) before
        // it was stored; only its geometry is read here.
        let manifest: Option<PieceManifest> =
            signed.and_then(|s| serde_json::from_slice(&s.payload).ok());
        if let Some(m) = &manifest
            && let Some((start, end)) = m.piece_range(index)
            && let Ok(Some(reader)) = self.store.open_blob(blob).await
            && reader.size == m.size
        {
            let file = Arc::new(reader.file.into_std().await);
            let pin = reader.pin;
            let s = read_range(file, start, end);
            // Hold the pin for as long as the stream lives.
            return Some(Box::pin(futures_util::StreamExt::map(s, move |c| {
                let _ = &pin;
                c
            })));
        }
        self.swarm.as_ref()?.partial(blob)?.piece_stream(index)
    }
}

/// The piece server's routes.
pub fn router(provider: PieceProvider) -> Router {
    Router::new()
        .route("/pieces/{blob}/{index}", axum::routing::get(get_piece))
        .with_state(provider)
}

async fn get_piece(
    State(p): State<PieceProvider>,
    Path((blob, index)): Path<(String, u32)>,
) -> Response {
    let Ok(digest) = format!("sha256:{blob}").parse::<Digest>() else {
        return (StatusCode::BAD_REQUEST, "bad blob digest").into_response();
    };
    let permit = match p.slots.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) => {
            let q = &p.queue;
            let before = q.waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _waiting = Waiting(q.waiting.clone());
            if before >= q.max_waiting {
                None
            } else {
                p.slots.clone().acquire_owned().await.ok()
            }
        }
    };
    let Some(permit) = permit else {
        return (StatusCode::SERVICE_UNAVAILABLE, "all upload slots busy").into_response();
    };
    match p.piece(&digest, index).await {
        Some(body) => {
            let limited = p.limiter.limit(body);
            // The slot is held until the body is fully sent (or dropped).
            let body = futures_util::StreamExt::map(limited, move |c| {
                let _ = &permit;
                c
            });
            Response::new(Body::from_stream(body))
        }
        None => (StatusCode::NOT_FOUND, "piece not held").into_response(),
    }
}
