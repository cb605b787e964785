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
//!
//! Exactly one download loop writes into a blob's piece file: a second
//! download of the same blob joins the running one (it reads the same
//! ordered stream), and a loop that failed is stopped, its transfers
//! aborted and their disk writes finished, before another may start. Every
//! transfer has deadlines ([`super::deadline`]); a parent that keeps failing
//! is left alone, the seed included ([`super::health`]); a download that
//! makes no progress for a minute fails with the reasons.

use super::deadline::FetchDeadlines;
use super::health::{Health, NO_PROGRESS, Verdict};
use super::piece_file::{PieceError, PieceFile};
use super::planner::{Ended, ParentView, Planner, Rng, views};
use crate::members::{Gateways, Members, Schedulers, try_next};
use customs_protocol::piece_manifest::{
    FetchId, SignedPieceManifest, Statement, TrustedGatewayKeys, unix_now,
};
use customs_protocol::scheduler_proto as pb;
use customs_protocol::{Digest, ImageName};
use customs_store::{BlobStore, FetchFailure, FetchFailureKind, Table};
use futures_util::TryStreamExt;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
}

/// How often parents are refreshed and held pieces re-reported (a finished
/// seed piece refreshes at once). Each refresh is a scheduler round trip;
/// at N = 16 on 2 cores (CPU-saturated, ±0.2 S/B run to run) 50 ms measured
/// p50 1.50–1.68·S/B and 100 ms 1.34–1.76 (`cargo bench -p customs --bench
/// swarm`), with less CPU per GiB.
pub const REFRESH: Duration = Duration::from_millis(100);
/// How long a complete download waits for the store to keep it (fsync and
/// link) before its piece file goes regardless.
const STORE_WAIT: Duration = Duration::from_secs(60);
/// How long a failed download loop may take to wind down (its aborted
/// transfers finishing their disk writes) before a new download of the
/// same blob is refused as unavailable; disk writes are 256 KiB batches.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// The parent id bytes from any gateway's seed are counted under.
pub const SEED_PARENT: &str = "gateway";

/// What [`Swarm::adopt`] decided.
enum Adopted {
    /// A download is running: read its stream.
    Join(Arc<PieceFile>),
    /// Ours: start the loop, which stops when `stopping` is cancelled.
    Drive(Arc<PieceFile>, CancellationToken),
}

/// A blob being downloaded: its piece file and its one download loop.
struct Partial {
    pf: Arc<PieceFile>,
    /// Cancelled when the loop stops (failed or cancelled): the entry then
    /// only waits for the loop's last disk writes, and joins no one.
    stopping: CancellationToken,
}

/// The swarm side of a peer.
pub struct Swarm {
    cfg: SwarmConfig,
    /// The schedulers, ranked per blob.
    schedulers: Arc<Schedulers>,
    /// The gateways (mTLS base URLs), tried in order.
    gateways: Arc<Gateways>,
    /// Talks to the gateway only (its certificate must carry the gateway role).
    gateway_http: reqwest::Client,
    /// Talks to piece parents (peers and the gateway's seed).
    http: reqwest::Client,
    keys: TrustedGatewayKeys,
    store: Arc<BlobStore>,
    partials: std::sync::Mutex<HashMap<Digest, Partial>>,
    /// Served-bytes and active-upload figures come from the piece server's limiter.
    limiter: Arc<customs_mirror::rate::RateLimiter>,
    /// Verified bytes received, per parent id (where the bytes came from).
    received: std::sync::Mutex<HashMap<String, u64>>,
    /// Pieces that failed their sha256 check (each one reported).
    bad_pieces: std::sync::atomic::AtomicU64,
    /// Verified bytes received from parents of another zone (this node
    /// having a zone).
    cross_zone: std::sync::atomic::AtomicU64,
    /// How long a download may go without a verified piece: `None` is
    /// [`NO_PROGRESS`] or one piece's deadline, if longer; tests set it.
    no_progress: Option<Duration>,
}

fn failure(kind: FetchFailureKind, m: impl Into<String>) -> FetchFailure {
    FetchFailure::new(kind, m)
}

enum PieceOutcome {
    Done {
        piece: u32,
        parent: String,
    },
    /// The piece was verified or being written already: nothing written.
    Duplicate {
        piece: u32,
        parent: String,
    },
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
        members: Members,
        gateway_http: reqwest::Client,
        http: reqwest::Client,
        keys: TrustedGatewayKeys,
        store: Arc<BlobStore>,
        limiter: Arc<customs_mirror::rate::RateLimiter>,
    ) -> Arc<Self> {
        super::piece_file::sweep_adopted(&cfg.pieces_dir);
        Arc::new(Swarm {
            cfg,
            schedulers: members.schedulers,
            gateways: members.gateways,
            gateway_http,
            http,
            keys,
            store,
            partials: std::sync::Mutex::default(),
            limiter,
            received: std::sync::Mutex::default(),
            bad_pieces: std::sync::atomic::AtomicU64::new(0),
            cross_zone: std::sync::atomic::AtomicU64::new(0),
            no_progress: None,
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
            .filter(|p| !p.stopping.is_cancelled())
            .map(|p| p.pf.clone())
    }

    /// The running download of `blob`, to join; waits (bounded) for a
    /// failed one to wind down.
    async fn running(&self, blob: &Digest) -> Result<Option<Arc<PieceFile>>, FetchFailure> {
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        loop {
            {
                let map = self.partials.lock().unwrap_or_else(|e| e.into_inner());
                match map.get(blob) {
                    None => return Ok(None),
                    Some(p) if !p.stopping.is_cancelled() => return Ok(Some(p.pf.clone())),
                    Some(_) => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(failure(
                    FetchFailureKind::Unavailable,
                    "a failed download of this blob is still stopping",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    /// Verified bytes received from parents of another zone (0 when this
    /// node has no zone): what the zone rules keep to one copy per zone.
    pub fn cross_zone_bytes(&self) -> u64 {
        self.cross_zone.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Pieces received that failed their check.
    pub fn bad_pieces(&self) -> u64 {
        self.bad_pieces.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store (completed blobs are served from it).
    pub fn store(&self) -> &Arc<BlobStore> {
        &self.store
    }

    /// Announces this peer to every scheduler every few seconds until
    /// cancelled. A scheduler that is new or restarted (another instance),
    /// or a change of the scheduler set (task owners moved), gets every held
    /// piece reported again, to each task's owner.
    pub async fn announce_loop(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
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
            if self.schedulers.announce(&info).await {
                // A new (or restarted) scheduler, or moved tasks: tell them
                // everything held.
                pending = 3;
            }
            if pending > 0 {
                self.report_all_held().await;
                pending -= 1;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// Asks the scheduler for a task's parents and hints, and its statement
    /// unless `omit_manifest` (then only when it is newer than the
    /// provisional one held: `provisional` is its piece count and signing
    /// time).
    async fn get_task(
        &self,
        blob: &Digest,
        seed_hints_wanted: u32,
        omit_manifest: bool,
        provisional: Option<(u32, u64)>,
        fetch: Option<&FetchId>,
    ) -> Result<(Option<SignedPieceManifest>, Vec<pb::Parent>, Vec<u32>), tonic::Status> {
        let (pieces, at) = provisional.unwrap_or_default();
        let req = pb::GetTaskRequest {
            blob_digest: blob.to_string(),
            peer_id: self.cfg.peer_id.clone(),
            seed_hints_wanted,
            omit_manifest,
            holds_provisional: provisional.is_some(),
            provisional_pieces: pieces,
            provisional_signed_at: at,
            provisional_fetch: fetch.map(|f| f.to_string()).unwrap_or_default(),
            accepts_provisional: true,
            zone: self.cfg.zone.clone(),
        };
        let mut last = tonic::Status::unavailable("no scheduler known");
        // The task's owner, else whoever takes over from it.
        for (id, mut client) in self.schedulers.for_blob(blob) {
            match client.get_task(req.clone()).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok((r.manifest.map(Into::into), r.parents, r.seed_hints));
                }
                Err(e) if try_next(&e) => {
                    tracing::debug!(scheduler = %id, %blob, error = %e, "scheduler unreachable; asking the next");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Asks the gateway for the task: for a cold blob it starts its
    /// upstream fetch and answers with a provisional statement as soon as
    /// the upstream answered; for a stored one, with the final manifest.
    /// With `fetch`, it answers only about that fetch (its newer statement,
    /// or the final manifest it ended in) and fails if the fetch failed,
    /// never starting another.
    async fn task_from_gateway(
        &self,
        image: &ImageName,
        blob: &Digest,
        fetch: Option<&FetchId>,
    ) -> Result<SignedPieceManifest, FetchFailure> {
        let mut query = format!(
            "/customs/v1/tasks?ns={}&repo={}&digest={}&provisional=1",
            image.registry.as_str().replace(':', "%3A"),
            image.repository,
            blob
        );
        if let Some(f) = fetch {
            // A fetch id is one gateway's: another gateway answers 404 for
            // it and the download starts over from that gateway's task.
            query.push_str("&fetch=");
            query.push_str(f.as_str());
        }
        let mut turns = self.gateways.len().max(1);
        let resp = loop {
            let base = self.gateways.current();
            match self.gateway_http.get(format!("{base}{query}")).send().await {
                Ok(r) => break r,
                Err(e) if turns > 1 && (e.is_connect() || e.is_timeout()) => {
                    self.gateways.failed(&base);
                    turns -= 1;
                }
                Err(e) => {
                    return Err(failure(
                        FetchFailureKind::Unavailable,
                        format!("gateway: {e}"),
                    ));
                }
            }
        };
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

    /// Downloads `blob` through the swarm; the returned piece file fills
    /// with verified pieces as they arrive. A download of a blob that is
    /// being downloaded joins it: one loop per piece file.
    pub async fn download(
        self: &Arc<Self>,
        image: &ImageName,
        blob: &Digest,
    ) -> Result<Arc<PieceFile>, FetchFailure> {
        if let Some(pf) = self.running(blob).await? {
            return Ok(pf);
        }
        // The scheduler's statement if it verifies (one that expired
        // between its sweeps does not), else the gateway's.
        let from_scheduler = match self.get_task(blob, 0, false, None, None).await {
            Ok((Some(m), _, _)) => self
                .keys
                .verify_statement(&m, blob, unix_now())
                .ok()
                .map(|s| (m, s)),
            Ok((None, _, _)) | Err(_) => None,
        };
        let (signed, statement) = match from_scheduler {
            Some(found) => found,
            None => {
                let signed = self.task_from_gateway(image, blob, None).await?;
                let statement = self
                    .keys
                    .verify_statement(&signed, blob, unix_now())
                    .map_err(|e| {
                        failure(
                            FetchFailureKind::Denied,
                            format!("piece manifest rejected: {e}"),
                        )
                    })?;
                (signed, statement)
            }
        };
        if let Statement::Final(_) = &statement {
            self.keep_final(blob, &signed)
                .await
                .map_err(|e| failure(FetchFailureKind::Io, e))?;
        }
        self.begin(image, blob, statement).await
    }

    /// Keeps a final manifest, so the completed blob can be served as
    /// pieces later.
    async fn keep_final(&self, blob: &Digest, signed: &SignedPieceManifest) -> Result<(), String> {
        let key = blob.to_string();
        let rec = signed.clone();
        self.store
            .blocking_index(move |idx| idx.put(Table::PieceManifests, &key, &rec))
            .await
            .map_err(|e| e.to_string())
    }

    /// Takes on a statement for a running download (a newer provisional
    /// one, or the final manifest). An error stops the download: the
    /// statement did not verify, expired, or contradicts the pieces held.
    async fn apply(
        &self,
        blob: &Digest,
        pf: &PieceFile,
        signed: &SignedPieceManifest,
    ) -> Result<(), String> {
        let statement = self
            .keys
            .verify_statement(signed, blob, unix_now())
            .map_err(|e| format!("piece statement rejected: {e}"))?;
        let was_final = pf.is_final();
        pf.update(&statement).map_err(|e| e.to_string())?;
        if !was_final && pf.is_final() {
            tracing::info!(%blob, "final piece manifest received");
            self.keep_final(blob, signed).await?;
        }
        Ok(())
    }

    /// Joins the running download of the manifest's blob, or opens its
    /// piece file and starts the one download loop for it.
    async fn begin(
        self: &Arc<Self>,
        image: &ImageName,
        blob: &Digest,
        manifest: Statement,
    ) -> Result<Arc<PieceFile>, FetchFailure> {
        // Another download may have started meanwhile: join it rather than
        // open the file a second time.
        if let Some(pf) = self.running(blob).await? {
            return Ok(pf);
        }
        let opened = PieceFile::open(&self.cfg.pieces_dir, manifest)
            .await
            .map_err(|e| failure(FetchFailureKind::Io, e.to_string()))?;
        let (pf, stopping) = match self.adopt(blob, opened)? {
            Adopted::Join(pf) => return Ok(pf),
            Adopted::Drive(pf, stopping) => (pf, stopping),
        };
        let me = self.clone();
        let driver_pf = pf.clone();
        let blob2 = blob.clone();
        let image2 = image.clone();
        // The whole swarm download is one span in the trace of the request
        // that started it (pieces are too many to trace one by one).
        let span = tracing::info_span!(
            "swarm download",
            otel.kind = "internal",
            blob = %blob,
            pieces = pf.geometry().piece_count()
        );
        customs_runtime::spawn(tracing::Instrument::instrument(
            async move {
                let result = me.drive(&image2, &blob2, &driver_pf, &stopping).await;
                stopping.cancel();
                match result {
                    Ok(()) => {
                        // Keep the partial file until the store linked it into
                        // place, so pieces stay servable throughout; then only
                        // our name for it goes (the store's link keeps the bytes).
                        if !matches!(me.store.wait_stored(&blob2, STORE_WAIT).await, Ok(Some(_))) {
                            tracing::warn!(blob = %blob2, "complete blob not stored in time; its piece file is dropped");
                        }
                        // Our name goes before the entry: a download that
                        // starts after it opens a new file, never this name.
                        driver_pf.remove();
                        me.forget(&blob2, &driver_pf);
                    }
                    Err(reason) => {
                        tracing::warn!(blob = %blob2, %reason, "swarm download failed");
                        driver_pf.stop(&reason);
                        // The loop's transfers were aborted when it returned;
                        // their last disk writes finish before anyone may open
                        // the file again (verified pieces stay, for a resume).
                        let until = tokio::time::Instant::now() + DRAIN_WAIT;
                        while driver_pf.writing() > 0 && tokio::time::Instant::now() < until {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        if driver_pf.writing() == 0 {
                            // Pieces checked against a provisional statement
                            // only are discarded: the gateway's fetch may have
                            // failed its digest check. Verified final pieces
                            // stay, for a resume.
                            if !driver_pf.is_final() {
                                driver_pf.remove();
                            }
                            me.forget(&blob2, &driver_pf);
                        } else {
                            tracing::error!(blob = %blob2, "piece writes did not finish; the blob stays unavailable on this node");
                        }
                    }
                }
            },
            span,
        ));
        Ok(pf)
    }

    /// Registers `opened` as the blob's partial with a new loop to drive
    /// it, unless a download is running (join it) or a failed one is still
    /// winding down (unavailable).
    fn adopt(&self, blob: &Digest, opened: Arc<PieceFile>) -> Result<Adopted, FetchFailure> {
        let mut map = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(blob) {
            Some(p) if !p.stopping.is_cancelled() => Ok(Adopted::Join(p.pf.clone())),
            Some(_) => Err(failure(
                FetchFailureKind::Unavailable,
                "a failed download of this blob is still stopping",
            )),
            None => {
                let stopping = CancellationToken::new();
                map.insert(
                    blob.clone(),
                    Partial {
                        pf: opened.clone(),
                        stopping: stopping.clone(),
                    },
                );
                Ok(Adopted::Drive(opened, stopping))
            }
        }
    }

    /// Drops the partial entry of `blob` if it is still `pf`'s.
    fn forget(&self, blob: &Digest, pf: &Arc<PieceFile>) {
        let mut map = self.partials.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(blob).is_some_and(|p| Arc::ptr_eq(&p.pf, pf)) {
            map.remove(blob);
        }
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
            self.report(&blob, pieces, None).await;
        }
    }

    /// Tells the scheduler which pieces this peer holds; best effort (a
    /// lost report is repeated by the next full report).
    async fn report(&self, blob: &Digest, pieces: Vec<u32>, fetch: Option<FetchId>) {
        let req = pb::ReportPiecesRequest {
            peer_id: self.cfg.peer_id.clone(),
            blob_digest: blob.to_string(),
            pieces,
            fetch_id: fetch.map(String::from).unwrap_or_default(),
        };
        for (id, mut client) in self.schedulers.for_blob(blob) {
            match client.report_pieces(req.clone()).await {
                Ok(_) => return,
                Err(e) if try_next(&e) => {
                    tracing::debug!(scheduler = %id, %blob, error = %e, "piece report failed; trying the next scheduler")
                }
                Err(e) => {
                    tracing::debug!(%blob, error = %e, "piece report failed");
                    return;
                }
            }
        }
    }

    /// Fetches every missing piece, until complete; fails when no piece is
    /// verified for [`NO_PROGRESS`] (or one piece's deadline, if longer),
    /// or when `stop` is cancelled. Returning aborts every transfer.
    async fn drive(
        self: &Arc<Self>,
        image: &ImageName,
        blob: &Digest,
        pf: &Arc<PieceFile>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let n = pf.geometry().piece_count();
        let piece_len = pf.geometry().piece_length;
        // A piece no statement signs yet counts as held for planning: it
        // cannot be fetched until the gateway has read and signed it.
        let settled = |i: u32| pf.has(i) || !pf.is_signed(i);
        let mut plan = Planner::new(n, Rng::new());
        // Whether the scheduler answered the last refresh: without it, no
        // hints arrive and the seed is used for any missing piece.
        let mut scheduler_up = true;
        let started = tokio::time::Instant::now();
        // Whether a gateway was asked to seed this blob again (see below).
        let mut reseeded = false;
        let mut health = Health::new(
            started,
            self.no_progress
                .unwrap_or_else(|| NO_PROGRESS.max(FetchDeadlines::for_piece(piece_len).total)),
        );
        let mut tasks: JoinSet<PieceOutcome> = JoinSet::new();
        // Which piece and parent each transfer task is for.
        let mut transfers: HashMap<tokio::task::Id, (u32, String)> = HashMap::new();
        let mut last_refresh: Option<tokio::time::Instant> = None;
        let mut reported: usize = 0;
        while !pf.complete() {
            if let Some(why) = health.stalled(tokio::time::Instant::now()) {
                return Err(why);
            }
            if pf.expired(unix_now()) {
                return Err(
                    "the gateway's provisional piece statement expired without a final manifest"
                        .to_owned(),
                );
            }
            if last_refresh.is_none_or(|t| t.elapsed() >= REFRESH) {
                let held = pf.held();
                // The full set goes out whenever it changed and after the scheduler
                // was unreachable (a restarted scheduler has forgotten it).
                if held.len() != reported || last_refresh.is_none() || !scheduler_up {
                    self.report(blob, held.clone(), pf.fetch()).await;
                    reported = held.len();
                }
                // Hints are leased to this peer by the scheduler: the unused
                // ones are kept, and only what free seed slots can take is
                // asked for.
                let wanted = plan.hints_wanted(settled);
                // The final manifest is already verified and held: parents
                // and hints only (and a provisional statement's successor).
                let fetch = pf.fetch();
                match self
                    .get_task(blob, wanted, true, pf.provisional(), fetch.as_ref())
                    .await
                {
                    Ok((m, ps, h)) => {
                        if let Some(m) = m {
                            let before = pf.signed_count();
                            self.apply(blob, pf, &m).await?;
                            if pf.signed_count() > before {
                                // More pieces became fetchable: waiting for
                                // the gateway to read them was not a stall.
                                health.progressed(tokio::time::Instant::now());
                            }
                        }
                        plan.set_parents(views(ps));
                        plan.add_hints(h);
                        scheduler_up = true;
                    }
                    Err(e) => {
                        if e.code() == tonic::Code::NotFound {
                            // A restarted scheduler lost the task: the gateway
                            // registers it again. A provisional task that is
                            // gone was withdrawn: the gateway answers about
                            // that fetch, and fails it if it failed.
                            match self
                                .task_from_gateway(image, blob, pf.fetch().as_ref())
                                .await
                            {
                                Ok(m) => self.apply(blob, pf, &m).await?,
                                // Only a definite answer fails the download
                                // (the fetch failed, or the blob is no longer
                                // admitted); a timeout or 503 is retried
                                // until the statement expires.
                                Err(f)
                                    if pf.fetch().is_some()
                                        && matches!(
                                            f.kind,
                                            FetchFailureKind::NotFound | FetchFailureKind::Denied
                                        ) =>
                                {
                                    return Err(format!(
                                        "the gateway's fetch of this blob failed: {}",
                                        f.message
                                    ));
                                }
                                Err(_) => {}
                            }
                        }
                        tracing::debug!(%blob, error = %e, "scheduler unavailable; using known parents");
                        plan.clear_hints();
                        scheduler_up = false;
                    }
                }
                last_refresh = Some(tokio::time::Instant::now());
            }
            let now = tokio::time::Instant::now();
            let unusable = health.unusable(now);
            while let Some((piece, parent)) =
                plan.next(now, settled, &unusable, health.excluded(), scheduler_up)
            {
                let me = self.clone();
                let pf2 = pf.clone();
                let blob2 = blob.clone();
                let asked = (piece, parent.id.clone());
                let task =
                    tasks.spawn(async move { me.fetch_piece(&blob2, &pf2, piece, parent).await });
                transfers.insert(task.id(), asked);
            }
            let next = tokio::select! {
                r = tasks.join_next_with_id(), if !tasks.is_empty() => r,
                _ = tokio::time::sleep(plan.wake_in(now, REFRESH)) => None,
                _ = stop.cancelled() => return Err("download cancelled".to_owned()),
            };
            let now = tokio::time::Instant::now();
            let outcome = match next {
                None => continue,
                Some(Ok((id, outcome))) => {
                    transfers.remove(&id);
                    outcome
                }
                Some(Err(e)) => {
                    // A transfer task that panicked still frees its piece
                    // and its parent, or both would stay taken for good.
                    if let Some((piece, parent)) = transfers.remove(&e.id()) {
                        tracing::error!(%blob, piece, %parent, error = %e, "piece transfer task failed");
                        plan.ended(piece, &parent, Ended::Failed, now);
                    }
                    continue;
                }
            };
            match outcome {
                PieceOutcome::Done { piece: i, parent } => {
                    health.success(&parent, now);
                    let from_seed = plan.parents().iter().any(|p| p.id == parent && p.seed);
                    plan.ended(i, &parent, Ended::Done, now);
                    tracing::debug!(%blob, piece = i, at = started.elapsed().as_secs_f64(), "piece verified");
                    // A finished seed piece frees a seed slot: ask for the
                    // next hint now rather than at the next refresh, so the
                    // seed's link never idles.
                    if from_seed {
                        last_refresh = None;
                    }
                    // Tell the scheduler at once: the sooner others know, the
                    // sooner this peer's upload capacity joins the swarm.
                    let me = self.clone();
                    let blob = blob.clone();
                    let fetch = pf.fetch();
                    customs_runtime::spawn(async move { me.report(&blob, vec![i], fetch).await });
                }
                PieceOutcome::Duplicate { piece, parent } => {
                    // Only one loop writes this file, and it never asks for
                    // a piece twice at once; a duplicate is dropped, never
                    // held against its sender.
                    plan.ended(piece, &parent, Ended::Dropped, now);
                    tracing::debug!(%blob, piece, "duplicate piece dropped");
                }
                PieceOutcome::Busy { piece, parent } => {
                    plan.ended(piece, &parent, Ended::Busy, now);
                }
                PieceOutcome::Bad {
                    piece,
                    parent,
                    detail,
                } => {
                    plan.ended(piece, &parent, Ended::Dropped, now);
                    self.bad_pieces
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(%blob, piece, %parent, %detail, "bad piece: reporting and re-fetching elsewhere");
                    health.failure(&parent, false, &detail, now);
                    health.exclude(&parent);
                    if let Some((_, mut client)) = self.schedulers.for_blob(blob).into_iter().next()
                    {
                        let _ = client
                            .report_bad_piece(pb::ReportBadPieceRequest {
                                peer_id: self.cfg.peer_id.clone(),
                                parent_id: parent,
                                blob_digest: blob.to_string(),
                                piece,
                                detail,
                            })
                            .await;
                    }
                }
                PieceOutcome::Failed {
                    piece,
                    parent,
                    detail,
                } => {
                    // A peer that cannot deliver is not asked again in this
                    // download; the seed is paused after repeated failures.
                    plan.ended(piece, &parent, Ended::Failed, now);
                    let seed = plan.parents().iter().any(|p| p.id == parent && p.seed);
                    match health.failure(&parent, seed, &detail, now) {
                        Verdict::Paused(pause) => {
                            tracing::warn!(%blob, piece, %parent, %detail, pause_s = pause.as_secs(), "seed keeps failing; pausing it");
                            // The seed may be gone for good (a gateway of a
                            // fleet died): asking a gateway for the task makes
                            // the one that answers fetch the blob and seed it
                            // too, once per download.
                            if !reseeded {
                                reseeded = true;
                                let me = self.clone();
                                let (image, blob) = (image.clone(), blob.clone());
                                customs_runtime::spawn(async move {
                                    if let Err(e) = me.task_from_gateway(&image, &blob, None).await
                                    {
                                        tracing::debug!(%blob, error = %e.message, "asking a gateway to seed failed");
                                    }
                                });
                            }
                        }
                        _ => {
                            tracing::debug!(%blob, piece, %parent, %detail, "piece fetch failed; trying another parent")
                        }
                    }
                }
            }
        }
        self.report(blob, pf.held(), pf.fetch()).await;
        tracing::info!(%blob, pieces = n, secs = started.elapsed().as_secs_f64(), "all pieces verified");
        Ok(())
    }

    async fn fetch_piece(
        &self,
        blob: &Digest,
        pf: &PieceFile,
        piece: u32,
        parent: ParentView,
    ) -> PieceOutcome {
        let mut url = format!(
            "https://{}/pieces/{}/{piece}?from={}",
            parent.addr,
            blob.hex(),
            self.cfg.peer_id
        );
        // Pieces checked against a provisional statement must be that
        // fetch's: a parent holding another fetch's pieces refuses.
        if let Some(f) = pf.fetch() {
            url.push_str("&fetch=");
            url.push_str(f.as_str());
        }
        let fail = |detail: String| PieceOutcome::Failed {
            piece,
            parent: parent.id.clone(),
            detail,
        };
        let len = pf.geometry().piece_range(piece).map_or(0, |(a, b)| b - a);
        let deadlines = FetchDeadlines::for_piece(len);
        let send = self.http.get(&url).timeout(deadlines.total).send();
        let resp = match tokio::time::timeout(deadlines.first_byte, send).await {
            Err(_) => {
                return fail(format!(
                    "no response within {} s",
                    deadlines.first_byte.as_secs()
                ));
            }
            Ok(r) => r,
        };
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                keep_connection(r).await;
                return PieceOutcome::Busy {
                    piece,
                    parent: parent.id.clone(),
                };
            }
            Ok(r) => {
                let status = r.status();
                keep_connection(r).await;
                return fail(format!("parent answered {status}"));
            }
            Err(e) => return fail(e.to_string()),
        };
        let body = resp.bytes_stream().map_err(std::io::Error::other);
        let body = super::deadline::idle_timeout(body, deadlines.idle);
        match pf.write_piece(piece, Box::pin(body)).await {
            Ok(()) => {
                // Every gateway's seed counts as "gateway" (in a fleet each
                // seeds under its member id): the metrics split gateway
                // bytes from peer bytes, not one gateway from another.
                let from = if parent.seed {
                    SEED_PARENT.to_owned()
                } else {
                    parent.id.clone()
                };
                *self
                    .received
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(from)
                    .or_insert(0) += len;
                if !self.cfg.zone.is_empty() && parent.zone != self.cfg.zone {
                    self.cross_zone
                        .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                }
                PieceOutcome::Done {
                    piece,
                    parent: parent.id.clone(),
                }
            }
            Err(PieceError::Duplicate { .. } | PieceError::Unsigned { .. }) => {
                PieceOutcome::Duplicate {
                    piece,
                    parent: parent.id.clone(),
                }
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

/// Reads a refusal's short body to its end, so the connection goes back to
/// the pool instead of being closed (a new mTLS handshake per refusal cost
/// more CPU than the refusal); a body that is long or slow is dropped.
async fn keep_connection(mut r: reqwest::Response) {
    const MAX_REFUSAL_BODY: usize = 4096;
    let drain = async {
        let mut read = 0;
        while let Ok(Some(chunk)) = r.chunk().await {
            read += chunk.len();
            if read > MAX_REFUSAL_BODY {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use customs_protocol::piece_manifest::{
        AdmissionRef, GatewayKey, MIN_PIECE_LEN, PieceManifest,
    };
    use customs_store::inflight::ByteStream;
    use futures_util::StreamExt;

    /// A swarm whose scheduler and gateway are unreachable: it learns of
    /// no parent at all.
    fn swarm(dir: &std::path::Path, data: &[u8]) -> (Arc<Swarm>, Statement) {
        let key = GatewayKey::generate().unwrap();
        let blob = Digest::of(data);
        let signed = key
            .sign(PieceManifest {
                blob: blob.clone(),
                size: data.len() as u64,
                piece_length: MIN_PIECE_LEN,
                pieces: data
                    .chunks(MIN_PIECE_LEN as usize)
                    .map(Digest::of)
                    .collect(),
                admission: AdmissionRef {
                    image: "r/x".into(),
                    manifest_digest: Digest::of(b"m"),
                    policy_revision: "r".into(),
                },
                key_id: String::new(),
            })
            .unwrap();
        let keys = TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()]).unwrap();
        let manifest = Statement::Final(keys.verify(&signed, &blob).unwrap());
        let channel = tonic::transport::Channel::from_static("http://127.0.0.1:1").connect_lazy();
        let store = BlobStore::open(customs_store::StoreConfig {
            root: dir.join("store"),
            max_bytes: u64::MAX,
        })
        .unwrap();
        let mut s = Swarm::new(
            SwarmConfig {
                peer_id: "p1".into(),
                upload_addr: "127.0.0.1:1".into(),
                upload_capacity: 0,
                zone: String::new(),
                rack: String::new(),
                pieces_dir: dir.join("pieces"),
            },
            Members {
                schedulers: Arc::new(Schedulers::single(
                    customs_protocol::scheduler_proto::scheduler_client::SchedulerClient::new(
                        channel,
                    ),
                )),
                gateways: Arc::new(Gateways::new(vec!["http://127.0.0.1:1".into()])),
            },
            reqwest::Client::new(),
            reqwest::Client::new(),
            keys,
            store,
            customs_mirror::rate::RateLimiter::new(0),
        );
        Arc::get_mut(&mut s).unwrap().no_progress = Some(Duration::from_millis(300));
        (s, manifest)
    }

    fn image() -> ImageName {
        ImageName {
            registry: "registry.example".parse().unwrap(),
            repository: "team/app".parse().unwrap(),
        }
    }

    async fn drain(mut s: ByteStream) -> Result<usize, String> {
        let mut n = 0;
        while let Some(c) = s.next().await {
            n += c.map_err(|e| e.to_string())?.len();
        }
        Ok(n)
    }

    #[tokio::test]
    async fn one_loop_per_piece_file_and_a_failed_loop_stops_before_another_starts() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * MIN_PIECE_LEN as usize).map(|i| i as u8).collect();
        let (s, m) = swarm(dir.path(), &data);
        let blob = m.blob().clone();
        let opened = PieceFile::open(&dir.path().join("pieces"), m.clone())
            .await
            .unwrap();
        let Adopted::Drive(first, stopping) = s.adopt(&blob, opened.clone()).unwrap() else {
            panic!("the first download must drive");
        };
        // A second download of the same blob joins: same file, no loop.
        let other = PieceFile::open(&dir.path().join("pieces"), m.clone())
            .await
            .unwrap();
        let Adopted::Join(joined) = s.adopt(&blob, other).unwrap() else {
            panic!("a second loop was started on one piece file");
        };
        assert!(Arc::ptr_eq(&first, &joined));
        // While a failed loop winds down, nobody may start another.
        stopping.cancel();
        assert!(s.adopt(&blob, opened.clone()).is_err());
        s.forget(&blob, &first);
        assert!(matches!(s.adopt(&blob, opened), Ok(Adopted::Drive(..))));
    }

    #[tokio::test]
    async fn a_download_no_parent_can_serve_fails_with_a_reason_instead_of_spinning() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * MIN_PIECE_LEN as usize).map(|i| i as u8).collect();
        let (s, m) = swarm(dir.path(), &data);
        let blob = m.blob().clone();
        let a = s
            .begin(&image(), &blob, m.clone())
            .await
            .unwrap()
            .ordered_stream();
        let b = s
            .begin(&image(), &blob, m.clone())
            .await
            .unwrap()
            .ordered_stream();
        let (ra, rb) = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::join!(drain(a), drain(b))
        })
        .await
        .expect("the download spun instead of failing");
        for r in [ra, rb] {
            let e = r.unwrap_err();
            assert!(e.contains("no piece verified"), "{e}");
        }
        // The failed loop is gone, so a new download starts afresh.
        tokio::time::timeout(Duration::from_secs(10), async {
            while s.partial(&blob).is_some() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        let again = s.begin(&image(), &blob, m).await.unwrap().ordered_stream();
        assert!(drain(again).await.is_err());
    }
}
