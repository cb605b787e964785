//! The download loop.
//!
//! For a blob the node asks for: get the gateway-signed piece manifest
//! (from the scheduler, or from the gateway, which fetches, verifies and
//! registers a cold blob first), then fetch pieces concurrently from parents
//! the scheduler names, each piece's parent chosen at random weighted by its
//! idle upload capacity, rarest pieces first. Every piece is verified
//! against the signed manifest before it is marked, served or streamed; a
//! bad piece is reported (the scheduler blocklists the sender) and fetched
//! again elsewhere. The gateway (seed) is used for pieces no peer has.

use super::piece_file::{PieceError, PieceFile};
use customs_protocol::piece_manifest::{
    SignedPieceManifest, TrustedGatewayKeys, VerifiedPieceManifest,
};
use customs_protocol::scheduler_proto as pb;
use customs_protocol::scheduler_proto::scheduler_client::SchedulerClient;
use customs_protocol::{Digest, ImageName};
use customs_store::inflight::ByteStream;
use customs_store::{BlobStore, FetchFailure, FetchFailureKind, Table};
use futures_util::TryStreamExt;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Who this peer is in the swarm.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// The peer id (must match the certificate's `<id>.node.customs.internal`).
    pub peer_id: String,
    /// host:port of this peer's piece server.
    pub upload_addr: String,
    /// Upload capacity in bytes/s (0 = unlimited).
    pub upload_capacity: u64,
    /// Locality labels.
    pub zone: String,
    /// Locality labels.
    pub rack: String,
    /// Where partial downloads live.
    pub pieces_dir: PathBuf,
    /// The gateway's mTLS base URL (`https://host:port`).
    pub gateway_url: String,
}

/// Pieces fetched at once per blob.
const CONCURRENCY: usize = 8;
/// Seed (gateway) fetches at once per blob: peers are preferred.
const SEED_CONCURRENCY: usize = 2;
/// How often parents are refreshed and held pieces re-reported.
const REFRESH: Duration = Duration::from_millis(50);
/// How long a parent that refused for lack of slots is skipped (about a
/// third of a 256 KiB piece at 8 MB/s; 25 ms measured 1.15–1.17·S/B at p50,
/// 10 ms 1.15).
const BUSY_BACKOFF: Duration = Duration::from_millis(10);

/// The swarm side of a peer.
pub struct Swarm {
    cfg: SwarmConfig,
    scheduler: SchedulerClient<Channel>,
    /// Talks to the gateway only (its certificate must carry the gateway role).
    gateway_http: reqwest::Client,
    /// Talks to piece parents (peers and the gateway's seed).
    http: reqwest::Client,
    keys: TrustedGatewayKeys,
    store: Arc<BlobStore>,
    partials: std::sync::Mutex<HashMap<Digest, Arc<PieceFile>>>,
    /// Served-bytes and active-upload figures come from the piece server's limiter.
    limiter: Arc<customs_mirror::rate::RateLimiter>,
    /// Verified bytes received, per parent id (where the bytes came from).
    received: std::sync::Mutex<HashMap<String, u64>>,
    /// Pieces that failed their sha256 check (each one reported).
    bad_pieces: std::sync::atomic::AtomicU64,
}

fn failure(kind: FetchFailureKind, m: impl Into<String>) -> FetchFailure {
    FetchFailure::new(kind, m)
}

fn from_pb(m: Option<pb::SignedPieceManifest>) -> Option<SignedPieceManifest> {
    m.map(|m| SignedPieceManifest {
        payload: m.payload,
        signature: m.signature,
        key_id: m.key_id,
    })
}

#[derive(Clone)]
struct ParentView {
    id: String,
    addr: String,
    seed: bool,
    idle: f64,
    pieces: Vec<u8>,
}

impl ParentView {
    fn has(&self, i: u32) -> bool {
        self.seed
            || self
                .pieces
                .get((i / 8) as usize)
                .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
}

fn views(parents: Vec<pb::Parent>) -> Vec<ParentView> {
    parents
        .into_iter()
        .filter_map(|p| {
            let info = p.peer?;
            let cap = if info.upload_capacity == 0 {
                1e12
            } else {
                info.upload_capacity as f64
            };
            Some(ParentView {
                id: info.peer_id,
                addr: info.upload_addr,
                seed: info.seed,
                idle: cap / (1.0 + f64::from(info.active_uploads)),
                pieces: p.pieces,
            })
        })
        .collect()
}

/// A small, dependency-free PRNG for parent and piece choice (xorshift);
/// choices only need to spread load, not resist prediction.
struct Rng(u64);
impl Rng {
    fn new() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Rng(u64::from_le_bytes(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

enum PieceOutcome {
    Done(u32),
    /// The parent had no free upload slot: try elsewhere, not a failure.
    Busy {
        piece: u32,
        parent: String,
    },
    Bad {
        piece: u32,
        parent: String,
        detail: String,
    },
    Failed {
        piece: u32,
        parent: String,
        detail: String,
    },
}

impl Swarm {
    /// Builds the swarm side.
    pub fn new(
        cfg: SwarmConfig,
        scheduler: SchedulerClient<Channel>,
        gateway_http: reqwest::Client,
        http: reqwest::Client,
        keys: TrustedGatewayKeys,
        store: Arc<BlobStore>,
        limiter: Arc<customs_mirror::rate::RateLimiter>,
    ) -> Arc<Self> {
        Arc::new(Swarm {
            cfg,
            scheduler,
            gateway_http,
            http,
            keys,
            store,
            partials: std::sync::Mutex::default(),
            limiter,
            received: std::sync::Mutex::default(),
            bad_pieces: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The peer id.
    pub fn peer_id(&self) -> &str {
        &self.cfg.peer_id
    }

    /// A partial download, for the piece server.
    pub fn partial(&self, blob: &Digest) -> Option<Arc<PieceFile>> {
        self.partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(blob)
            .cloned()
    }

    /// Verified bytes received per parent, and bytes uploaded to other peers.
    pub fn traffic(&self) -> (HashMap<String, u64>, u64) {
        let received = self
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (received, self.limiter.served())
    }

    /// Pieces received that failed their check.
    pub fn bad_pieces(&self) -> u64 {
        self.bad_pieces.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store (completed blobs are served from it).
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    /// Announces this peer to the scheduler every few seconds until cancelled.
    pub async fn announce_loop(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut instance = String::new();
        // Rounds of full reports still due after a scheduler change (the
        // gateway may re-register its tasks a moment after we arrive).
        let mut pending = 0u8;
        loop {
            let info = pb::PeerInfo {
                peer_id: self.cfg.peer_id.clone(),
                upload_addr: self.cfg.upload_addr.clone(),
                upload_capacity: self.cfg.upload_capacity,
                active_uploads: self.limiter.active() as u32,
                zone: self.cfg.zone.clone(),
                rack: self.cfg.rack.clone(),
                seed: false,
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
                        // A new (or restarted) scheduler: tell it everything held.
                        pending = 3;
                        instance = now;
                    }
                    if pending > 0 {
                        self.report_all_held().await;
                        pending -= 1;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "announce failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    async fn get_task(
        &self,
        blob: &Digest,
        seed_hints_wanted: u32,
    ) -> Result<(Option<SignedPieceManifest>, Vec<pb::Parent>, Vec<u32>), tonic::Status> {
        let r = self
            .scheduler
            .clone()
            .get_task(pb::GetTaskRequest {
                blob_digest: blob.to_string(),
                peer_id: self.cfg.peer_id.clone(),
                seed_hints_wanted,
            })
            .await?
            .into_inner();
        Ok((from_pb(r.manifest), r.parents, r.seed_hints))
    }

    /// Asks the gateway for the task: it fetches and verifies a cold blob,
    /// signs its piece manifest and registers it, then answers.
    async fn task_from_gateway(
        &self,
        image: &ImageName,
        blob: &Digest,
    ) -> Result<SignedPieceManifest, FetchFailure> {
        let url = format!(
            "{}/customs/v1/tasks?ns={}&repo={}&digest={}",
            self.cfg.gateway_url,
            image.registry.as_str().replace(':', "%3A"),
            image.repository,
            blob
        );
        let resp = self
            .gateway_http
            .get(url)
            .send()
            .await
            .map_err(|e| failure(FetchFailureKind::Unavailable, format!("gateway: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let kind = match status.as_u16() {
                404 => FetchFailureKind::NotFound,
                403 => FetchFailureKind::Denied,
                _ => FetchFailureKind::Unavailable,
            };
            return Err(failure(
                kind,
                format!("gateway: {}", text.chars().take(300).collect::<String>()),
            ));
        }
        resp.json()
            .await
            .map_err(|e| failure(FetchFailureKind::Unavailable, format!("gateway task: {e}")))
    }

    /// Downloads `blob` through the swarm; the returned stream yields the
    /// blob in order as verified pieces arrive.
    pub async fn download(
        self: &Arc<Self>,
        image: &ImageName,
        blob: &Digest,
    ) -> Result<ByteStream, FetchFailure> {
        let signed = match self.get_task(blob, 0).await {
            Ok((Some(m), _, _)) => m,
            Ok((None, _, _)) | Err(_) => self.task_from_gateway(image, blob).await?,
        };
        let manifest = self.keys.verify(&signed, blob).map_err(|e| {
            failure(
                FetchFailureKind::Denied,
                format!("piece manifest rejected: {e}"),
            )
        })?;
        // Kept so the completed blob can be served as pieces later.
        let key = blob.to_string();
        let rec = signed.clone();
        self.store
            .blocking_index(move |idx| idx.put(Table::PieceManifests, &key, &rec))
            .await
            .map_err(|e| failure(FetchFailureKind::Io, e.to_string()))?;
        let pf = self.partial_for(manifest).await?;
        let me = self.clone();
        let driver_pf = pf.clone();
        let blob2 = blob.clone();
        let image2 = image.clone();
        tokio::spawn(async move {
            me.drive(&image2, &blob2, &driver_pf).await;
            // Keep the partial file until the store committed the blob, so
            // pieces stay servable throughout.
            for _ in 0..600 {
                if me.store.meta(&blob2).ok().flatten().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            me.partials
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&blob2);
            driver_pf.remove();
        });
        Ok(pf.ordered_stream())
    }

    async fn partial_for(
        &self,
        manifest: VerifiedPieceManifest,
    ) -> Result<Arc<PieceFile>, FetchFailure> {
        let blob = manifest.manifest().blob.clone();
        if let Some(p) = self.partial(&blob) {
            return Ok(p);
        }
        let pf = PieceFile::open(&self.cfg.pieces_dir, manifest)
            .await
            .map_err(|e| failure(FetchFailureKind::Io, e.to_string()))?;
        let mut map = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(blob).or_insert(pf).clone())
    }

    /// Reports every piece held: whole blobs with a piece manifest, and the
    /// verified pieces of partial downloads.
    async fn report_all_held(&self) {
        let manifests: Vec<(String, SignedPieceManifest)> = self
            .store
            .index()
            .scan(Table::PieceManifests)
            .unwrap_or_default();
        for (key, signed) in manifests {
            let Ok(blob) = key.parse::<Digest>() else {
                continue;
            };
            let pieces = match self.partial(&blob) {
                Some(pf) => pf.held(),
                None if self.store.meta(&blob).ok().flatten().is_some() => {
                    let Ok(m) = serde_json::from_slice::<
                        customs_protocol::piece_manifest::PieceManifest,
                    >(&signed.payload) else {
                        continue;
                    };
                    (0..m.piece_count()).collect()
                }
                None => continue,
            };
            self.report(&blob, pieces).await;
        }
    }

    /// Tells the scheduler which pieces this peer holds; best effort (a
    /// lost report is repeated by the next full report).
    async fn report(&self, blob: &Digest, pieces: Vec<u32>) {
        let req = pb::ReportPiecesRequest {
            peer_id: self.cfg.peer_id.clone(),
            blob_digest: blob.to_string(),
            pieces,
        };
        if let Err(e) = self.scheduler.clone().report_pieces(req).await {
            tracing::debug!(%blob, error = %e, "piece report failed");
        }
    }

    /// Fetches every missing piece, until complete.
    async fn drive(self: &Arc<Self>, image: &ImageName, blob: &Digest, pf: &Arc<PieceFile>) {
        let n = pf.manifest().manifest().piece_count();
        let mut rng = Rng::new();
        let mut parents: Vec<ParentView> = Vec::new();
        let mut hints: Vec<u32> = Vec::new();
        // Whether the scheduler answered the last refresh: without it, no
        // hints arrive and the seed is used for any missing piece.
        let mut scheduler_up = true;
        let mut excluded: HashSet<String> = HashSet::new();
        // Parents that just refused for lack of slots, until when.
        let mut busy: HashMap<String, tokio::time::Instant> = HashMap::new();
        let mut in_progress: HashMap<u32, bool> = HashMap::new(); // piece -> from seed
        let mut tasks: JoinSet<PieceOutcome> = JoinSet::new();
        let mut last_refresh: Option<tokio::time::Instant> = None;
        let mut reported: usize = 0;
        let started = tokio::time::Instant::now();
        while !pf.complete() {
            if last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
                let held = pf.held();
                // The full set goes out whenever it changed and after the scheduler
                // was unreachable (a restarted scheduler has forgotten it).
                if held.len() != reported || last_refresh.is_none() || !scheduler_up {
                    self.report(blob, held.clone()).await;
                    reported = held.len();
                }
                // Hints are leased to this peer by the scheduler: keep the
                // unused ones (a dropped hint would leave its piece unsent
                // until the lease ran out) and ask only for what free seed
                // slots can take.
                hints.retain(|i| !pf.has(*i) && !in_progress.contains_key(i));
                let seeds_busy = in_progress.values().filter(|s| **s).count();
                let wanted = SEED_CONCURRENCY.saturating_sub(seeds_busy + hints.len()) as u32;
                match self.get_task(blob, wanted).await {
                    Ok((_, ps, h)) => {
                        parents = views(ps);
                        for i in h {
                            if !hints.contains(&i) {
                                hints.push(i);
                            }
                        }
                        scheduler_up = true;
                    }
                    Err(e) => {
                        if e.code() == tonic::Code::NotFound {
                            // A restarted scheduler lost the task: the gateway
                            // registers it again.
                            let _ = self.task_from_gateway(image, blob).await;
                        }
                        tracing::debug!(%blob, error = %e, "scheduler unavailable; using known parents");
                        hints.clear();
                        scheduler_up = false;
                    }
                }
                last_refresh = Some(tokio::time::Instant::now());
            }
            let now = tokio::time::Instant::now();
            busy.retain(|_, until| *until > now);
            let unavailable: HashSet<String> =
                excluded.iter().chain(busy.keys()).cloned().collect();
            while tasks.len() < CONCURRENCY {
                let seeds_busy = in_progress.values().filter(|s| **s).count();
                let Some((piece, parent)) = self.choose(
                    pf,
                    n,
                    &parents,
                    if scheduler_up { Some(&hints) } else { None },
                    &unavailable,
                    &excluded,
                    &in_progress,
                    seeds_busy,
                    &mut rng,
                ) else {
                    break;
                };
                in_progress.insert(piece, parent.seed);
                let me = self.clone();
                let pf2 = pf.clone();
                let blob2 = blob.clone();
                tasks.spawn(async move { me.fetch_piece(&blob2, &pf2, piece, parent).await });
            }
            let next = tokio::select! {
                r = tasks.join_next(), if !tasks.is_empty() => r,
                _ = tokio::time::sleep(if busy.is_empty() { REFRESH } else { BUSY_BACKOFF }) => None,
            };
            let Some(Ok(outcome)) = next else { continue };
            match outcome {
                PieceOutcome::Done(i) => {
                    tracing::debug!(%blob, piece = i, at = started.elapsed().as_secs_f64(), "piece verified");
                    // A finished seed piece frees a seed slot: ask for the
                    // next hint now rather than at the next refresh, so the
                    // seed's link never idles.
                    if in_progress.remove(&i) == Some(true) {
                        last_refresh = None;
                    }
                    // Tell the scheduler at once: the sooner others know, the
                    // sooner this peer's upload capacity joins the swarm.
                    let me = self.clone();
                    let blob = blob.clone();
                    tokio::spawn(async move { me.report(&blob, vec![i]).await });
                }
                PieceOutcome::Busy { piece, parent } => {
                    in_progress.remove(&piece);
                    busy.insert(parent, tokio::time::Instant::now() + BUSY_BACKOFF);
                }
                PieceOutcome::Bad {
                    piece,
                    parent,
                    detail,
                } => {
                    in_progress.remove(&piece);
                    self.bad_pieces
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%blob, piece, %parent, %detail, "bad piece: reporting and re-fetching elsewhere");
                    excluded.insert(parent.clone());
                    let _ = self
                        .scheduler
                        .clone()
                        .report_bad_piece(pb::ReportBadPieceRequest {
                            peer_id: self.cfg.peer_id.clone(),
                            parent_id: parent,
                            blob_digest: blob.to_string(),
                            piece,
                            detail,
                        })
                        .await;
                }
                PieceOutcome::Failed {
                    piece,
                    parent,
                    detail,
                } => {
                    in_progress.remove(&piece);
                    tracing::debug!(%blob, piece, %parent, %detail, "piece fetch failed; trying another parent");
                    // A parent that cannot deliver is skipped until the next
                    // refresh shows it again; seeds are never excluded.
                    if parents.iter().any(|p| p.id == parent && !p.seed) {
                        excluded.insert(parent);
                    }
                }
            }
        }
        self.report(blob, pf.held()).await;
        tracing::info!(%blob, pieces = n, secs = started.elapsed().as_secs_f64(), "all pieces verified");
    }

    /// Picks the next piece and its parent: rarest first among pieces some
    /// usable peer holds (parent weighted by idle capacity); otherwise a
    /// hinted (else random) missing piece from a seed, within the seed
    /// concurrency.
    #[allow(clippy::too_many_arguments)]
    fn choose(
        &self,
        pf: &PieceFile,
        n: u32,
        parents: &[ParentView],
        hints: Option<&[u32]>,
        unavailable: &HashSet<String>,
        dead: &HashSet<String>,
        in_progress: &HashMap<u32, bool>,
        seeds_busy: usize,
        rng: &mut Rng,
    ) -> Option<(u32, ParentView)> {
        let peers: Vec<&ParentView> = parents
            .iter()
            .filter(|p| !p.seed && !unavailable.contains(&p.id))
            .collect();
        let missing: Vec<u32> = (0..n)
            .filter(|i| !pf.has(*i) && !in_progress.contains_key(i))
            .collect();
        if missing.is_empty() {
            return None;
        }
        // The seed's link is the scarcest: a hinted first copy goes before
        // any piece other peers could serve, so the seed never idles while
        // a hint waits behind peer transfers.
        if seeds_busy < SEED_CONCURRENCY
            && let Some(h) = hints
            && let Some(piece) = h.iter().copied().find(|i| missing.contains(i))
            && let Some(seed) = parents.iter().find(|p| p.seed)
        {
            return Some((piece, seed.clone()));
        }
        let offset = (rng.next() % missing.len() as u64) as usize;
        let mut best: Option<(usize, u32)> = None;
        for k in 0..missing.len() {
            let i = missing[(k + offset) % missing.len()];
            let holders = peers.iter().filter(|p| p.has(i)).count();
            if holders > 0 && best.is_none_or(|(h, _)| holders < h) {
                best = Some((holders, i));
            }
        }
        if let Some((_, i)) = best {
            let cands: Vec<&&ParentView> = peers.iter().filter(|p| p.has(i)).collect();
            let total: f64 = cands.iter().map(|p| p.idle).sum();
            let mut x = rng.unit() * total;
            for c in &cands {
                x -= c.idle;
                if x <= 0.0 {
                    return Some((i, (**c).clone()));
                }
            }
            return cands.last().map(|c| (i, (**c).clone()));
        }
        if seeds_busy >= SEED_CONCURRENCY {
            return None;
        }
        // Pieces only excluded parents (dead or hostile, not merely busy)
        // claim are orphans:
        // no hint will name them, so they come from the seed directly.
        let orphan = missing.iter().copied().find(|i| {
            let mut holders = parents.iter().filter(|p| !p.seed && p.has(*i)).peekable();
            holders.peek().is_some() && holders.all(|p| dead.contains(&p.id))
        });
        let seed = parents.iter().find(|p| p.seed)?;
        // The scheduler's hints spread first copies across peers, so the seed
        // sends each piece about once; only when the scheduler is unreachable
        // does any missing piece come from the seed.
        let piece = match (orphan, hints) {
            (Some(o), _) => o,
            (None, Some(h)) => h.iter().copied().find(|h| missing.contains(h))?,
            (None, None) => missing[offset],
        };
        Some((piece, seed.clone()))
    }

    async fn fetch_piece(
        &self,
        blob: &Digest,
        pf: &PieceFile,
        piece: u32,
        parent: ParentView,
    ) -> PieceOutcome {
        let url = format!(
            "https://{}/pieces/{}/{piece}?from={}",
            parent.addr,
            blob.hex(),
            self.cfg.peer_id
        );
        let fail = |detail: String| PieceOutcome::Failed {
            piece,
            parent: parent.id.clone(),
            detail,
        };
        let resp = match self
            .http
            .get(&url)
            .timeout(Duration::from_secs(120))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                return PieceOutcome::Busy {
                    piece,
                    parent: parent.id.clone(),
                };
            }
            Ok(r) => return fail(format!("parent answered {}", r.status())),
            Err(e) => return fail(e.to_string()),
        };
        let body = resp.bytes_stream().map_err(std::io::Error::other);
        match pf.write_piece(piece, Box::pin(body)).await {
            Ok(()) => {
                let len = pf
                    .manifest()
                    .manifest()
                    .piece_range(piece)
                    .map_or(0, |(a, b)| b - a);
                *self
                    .received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(parent.id.clone())
                    .or_insert(0) += len;
                PieceOutcome::Done(piece)
            }
            Err(e @ (PieceError::Mismatch { .. } | PieceError::Length { .. })) => {
                PieceOutcome::Bad {
                    piece,
                    parent: parent.id.clone(),
                    detail: e.to_string(),
                }
            }
            Err(e) => fail(e.to_string()),
        }
    }
}
