//! The piece (upload) server: serves verified pieces to other peers over
//! mTLS, paced by the node's upload limit.
//!
//! A piece is served only when it is covered by a gateway-signed piece
//! manifest: from a completed, whole-blob-verified blob in the store, or
//! from a partial download where that piece's sha256 already matched.

use super::Swarm;
use super::deadline::{SERVE_IDLE, serve_deadline, watched};
use super::piece_file::read_range;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use customs_mirror::rate::RateLimiter;
use customs_protocol::Digest;
use customs_protocol::piece_manifest::{FetchId, PieceManifest, SignedPieceManifest};
use customs_store::inflight::ByteStream;
use customs_store::{BlobStore, Table};
use customs_tls::PeerCertificate;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Concurrent piece uploads of a peer (default of `--upload-slots`). One
/// upload at the full rate finishes each piece soonest, and a finished
/// piece is one its receiver can pass on (2 slots measured 1.18·S/B at
/// p50 in the swarm bench, 1 slot 1.14).
pub const PEER_UPLOAD_SLOTS: usize = 1;
/// Piece requests a peer lets wait for a slot (default of `--upload-queue`).
/// One: the next upload starts the moment the current one ends, instead of
/// after some requester's busy backoff (the fleet simulation at N = 100,
/// 1 GiB, B = 100 MB/s: p50 1.11·S/B with one, 1.47 with none; at N =
/// 1,000, 2 measured 1.28 and 4 1.32 against 1.19 with one: a longer queue
/// holds requests behind whole pieces while other parents are free; the
/// swarm bench once measured 1.42·S/B with 2 against 1.31 with none).
pub const PEER_UPLOAD_QUEUE: usize = 1;
/// Concurrent piece uploads of the gateway (seed): two, so that one
/// requester that stops reading (or a hostile one) can never hold all of
/// them: each requester gets at most [`REQUESTER_UPLOADS`] of a node's
/// slots, and the other keeps serving the fleet. (One slot sent first
/// copies soonest, but one stalled requester then stalled every node.)
pub const SEED_UPLOAD_SLOTS: usize = 2;
/// Piece requests the seed lets wait for a slot: enough for every peer of a
/// fleet-sized rollout to have its next seed piece queued (the seed's link
/// never idles between pieces, and a waiting request costs no retries),
/// bounded so a flood is answered 503 ("try another parent") instead of
/// queueing without bound as the seed once did. One requester may have only
/// [`REQUESTER_WAITING`] of them, each waits at most [`SLOT_WAIT`]. (A queue
/// of 4 measured 1.8·S/B at N = 16 in the swarm bench, 64 measured 1.6.)
pub const SEED_UPLOAD_QUEUE: usize = 64;
/// Upload slots one requester (one client certificate) may hold at a node
/// at once. With the seed's two slots, a node that stops reading holds at
/// most one of them, for at most [`super::deadline::SERVE_IDLE`].
pub const REQUESTER_UPLOADS: usize = 1;
/// Requests one requester may have waiting at a node: one, so the node
/// sends it the next piece as soon as the current one ends (an honest peer
/// asks the seed for two pieces of a blob at a time) while one requester
/// cannot fill the queue and starve the rest with 503s.
pub const REQUESTER_WAITING: usize = 1;
/// The longest a request waits for a slot before it is answered 503: two
/// stalled uploads in a row, each cut off at
/// [`super::deadline::SERVE_IDLE`].
pub const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where pieces come from.
#[derive(Clone)]
pub struct PieceProvider {
    /// Completed blobs (and their stored piece manifests).
    pub store: Arc<BlobStore>,
    /// Blobs not stored yet whose verified pieces may be served: a peer's
    /// partial downloads, the gateway's fetches in progress (pieces it has
    /// hashed and signed provisionally).
    pub partials: Option<Arc<dyn PartialPieces>>,
    /// The node's upload limit.
    pub limiter: Arc<RateLimiter>,
    /// Pieces uploaded at once. Few concurrent uploads at full rate finish
    /// pieces sooner than many slow ones, and a finished piece is one the
    /// receiver can share at once.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// When all slots are taken: how many requests may wait for one. A
    /// peer lets none wait by default and answers 503, so the requester
    /// asks another parent; the seed lets [`SEED_UPLOAD_QUEUE`] wait, and
    /// answers 503 beyond that too ("try another parent, or again").
    pub queue: UploadQueue,
    /// Piece geometry of stored blobs, so a piece request costs no index
    /// read or manifest parse.
    pub geometry: GeometryCache,
}

/// Verified pieces of blobs that are not stored yet.
pub trait PartialPieces: Send + Sync + 'static {
    /// Piece `index` of `blob` and its length, when it is held and its hash
    /// is signed. A requester that checks pieces against a provisional
    /// statement names its `fetch`: a piece checked only against another
    /// fetch's statement is never served to it (the bytes of a failed fetch
    /// would fail its check and get an honest parent blocklisted), and
    /// without a fetch only pieces checked against the final manifest are.
    fn partial_piece(
        &self,
        blob: &Digest,
        index: u32,
        fetch: Option<&FetchId>,
    ) -> Option<(ByteStream, u64)>;
}

impl PartialPieces for Swarm {
    fn partial_piece(
        &self,
        blob: &Digest,
        index: u32,
        fetch: Option<&FetchId>,
    ) -> Option<(ByteStream, u64)> {
        let pf = self.partial(blob)?;
        if !pf.is_final() && (fetch.is_none() || pf.fetch().as_ref() != fetch) {
            return None;
        }
        let stream = pf.piece_stream(index)?;
        let (start, end) = pf.geometry().piece_range(index)?;
        Some((stream, end - start))
    }
}

/// Stored blobs' piece manifests, parsed once. Only the geometry (size,
/// piece length) is used, and it is fixed by the blob's digest; the served
/// bytes come from the verified stored blob whose size must match.
#[derive(Clone, Default)]
pub struct GeometryCache(Arc<Mutex<HashMap<Digest, Arc<PieceManifest>>>>);

/// Blobs whose geometry is kept; the cache starts over beyond that.
const GEOMETRY_CACHE: usize = 4096;

impl GeometryCache {
    fn get(&self, store: &BlobStore, blob: &Digest) -> Option<Arc<PieceManifest>> {
        if let Some(m) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(blob) {
            return Some(m.clone());
        }
        let signed: SignedPieceManifest = store
            .index()
            .get(Table::PieceManifests, &blob.to_string())
            .ok()
            .flatten()?;
        // The stored manifest was verified (peer) or signed (gateway) before
        // it was stored; only its geometry is read here.
        let m: Arc<PieceManifest> = Arc::new(serde_json::from_slice(&signed.payload).ok()?);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= GEOMETRY_CACHE {
            map.clear();
        }
        map.insert(blob.clone(), m.clone());
        Some(m)
    }
}

/// Requests waiting for an upload slot, how many may, and what each
/// requester holds.
#[derive(Debug, Clone)]
pub struct UploadQueue {
    /// Requests allowed to wait.
    pub max_waiting: usize,
    /// Requests waiting now.
    pub waiting: Arc<AtomicUsize>,
    /// Slots held and requests waiting, per requester (client
    /// certificate); entries vanish with the requester's last request.
    requesters: Arc<Mutex<HashMap<Option<Digest>, Weak<Requester>>>>,
}

impl UploadQueue {
    /// A queue of at most `max_waiting` requests.
    pub fn new(max_waiting: usize) -> Self {
        UploadQueue {
            max_waiting,
            waiting: Arc::default(),
            requesters: Arc::default(),
        }
    }

    /// The state of one requester (`None`: no client certificate, which
    /// only tests see: the piece server sits behind mTLS).
    fn requester(&self, who: Option<Digest>) -> Arc<Requester> {
        let mut map = self.requesters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(&who).and_then(Weak::upgrade) {
            return r;
        }
        // Bounded by the requesters with a request in progress.
        map.retain(|_, w| w.strong_count() > 0);
        let r = Arc::new(Requester {
            uploads: Arc::new(Semaphore::new(REQUESTER_UPLOADS)),
            waiting: AtomicUsize::new(0),
        });
        map.insert(who, Arc::downgrade(&r));
        r
    }
}

/// One requester's share of a node's upload slots.
#[derive(Debug)]
struct Requester {
    uploads: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Counts a waiting request while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Counts one more waiting request unless `max` already wait.
    fn join(count: &'a AtomicUsize, max: usize) -> Option<Self> {
        let before = count.fetch_add(1, Ordering::SeqCst);
        let w = Waiting(count);
        (before < max).then_some(w)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An upload slot: a node-wide slot and one of its requester's, held until
/// the piece is sent or its watchdog gives it up.
#[derive(Debug)]
pub struct UploadSlot {
    _node: OwnedSemaphorePermit,
    _requester: OwnedSemaphorePermit,
    _who: Arc<Requester>,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// Every slot is taken and the queue (or this requester's share of it)
    /// is full, or the wait ran out: the requester should try another
    /// parent (503).
    Busy,
}

impl PieceProvider {
    /// A verified piece as a stream, and its length, or `None`.
    pub async fn piece(
        &self,
        blob: &Digest,
        index: u32,
        fetch: Option<&FetchId>,
    ) -> Option<(ByteStream, u64)> {
        // A partial download first: it is in memory, and a blob is stored
        // only once its download is complete.
        if let Some(found) = self
            .partials
            .as_ref()
            .and_then(|p| p.partial_piece(blob, index, fetch))
        {
            return Some(found);
        }
        let manifest = self.geometry.get(&self.store, blob);
        if let Some(m) = &manifest
            && let Some((start, end)) = m.piece_range(index)
            && let Ok(Some(reader)) = self.store.open_blob(blob).await
            && reader.size == m.size
        {
            let file = Arc::new(reader.file.into_std().await);
            let pin = reader.pin;
            let s = read_range(file, start, end);
            // Hold the pin for as long as the stream lives.
            let s: ByteStream = Box::pin(futures_util::StreamExt::map(s, move |c| {
                let _ = &pin;
                c
            }));
            return Some((s, end - start));
        }
        None
    }

    /// An upload slot for `who` (a client certificate): at once if one is
    /// free and `who` holds less than its share, else after waiting in the
    /// bounded queue (at most [`SLOT_WAIT`]), else [`NoSlot::Busy`].
    pub async fn slot(&self, who: Option<&PeerCertificate>) -> Result<UploadSlot, NoSlot> {
        let who = self.queue.requester(who.map(|c| Digest::of(c.0.as_ref())));
        let mut mine = who.uploads.clone().try_acquire_owned().ok();
        if let Some(m) = mine.take() {
            match self.slots.clone().try_acquire_owned() {
                Ok(node) => {
                    return Ok(UploadSlot {
                        _node: node,
                        _requester: m,
                        _who: who,
                    });
                }
                Err(_) => mine = Some(m),
            }
        }
        let _queued =
            Waiting::join(&self.queue.waiting, self.queue.max_waiting).ok_or(NoSlot::Busy)?;
        let _mine_queued = Waiting::join(&who.waiting, REQUESTER_WAITING).ok_or(NoSlot::Busy)?;
        let wait = async {
            let mine = match mine {
                Some(m) => m,
                None => who.uploads.clone().acquire_owned().await.ok()?,
            };
            let node = self.slots.clone().acquire_owned().await.ok()?;
            Some((mine, node))
        };
        let Ok(Some((mine, node))) = tokio::time::timeout(SLOT_WAIT, wait).await else {
            return Err(NoSlot::Busy);
        };
        Ok(UploadSlot {
            _node: node,
            _requester: mine,
            _who: who.clone(),
        })
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
    cert: Option<axum::Extension<PeerCertificate>>,
    Path((blob, index)): Path<(String, u32)>,
    // `from` (the requester's id, for logs) and the requester's
    // provisional `fetch`, if any.
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(digest) = format!("sha256:{blob}").parse::<Digest>() else {
        return (StatusCode::BAD_REQUEST, "bad blob digest").into_response();
    };
    let fetch = match q.get("fetch").map(|f| f.parse::<FetchId>()).transpose() {
        Ok(f) => f,
        Err(_) => return (StatusCode::BAD_REQUEST, "bad fetch id").into_response(),
    };
    // A piece not held is answered at once, without queueing for a slot,
    // so the requester can count the failure and move on.
    let Some((body, len)) = p.piece(&digest, index, fetch.as_ref()).await else {
        return (StatusCode::NOT_FOUND, "piece not held").into_response();
    };
    let Ok(slot) = p.slot(cert.as_ref().map(|c| &c.0)).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "all upload slots busy: try another parent",
        )
            .into_response();
    };
    // The slot is held until the body is fully sent, and given up at once
    // when the requester stops reading or the piece takes too long.
    let body = watched(p.limiter.limit(body), slot, serve_deadline(len), SERVE_IDLE);
    Response::new(Body::from_stream(body))
}
