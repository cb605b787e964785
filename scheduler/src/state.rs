//! The scheduler's soft state and its parent selection.
//!
//! Every map here is fed by peers, so every map is bounded and ages out:
//! the peer table (cap plus a sweep of peers not heard from), the parents
//! handed to each peer (what its bad-piece reports are checked against),
//! the per-reporter blocklists, the reporters counted against a parent and
//! the bad-piece tally between two audit events. A bad-piece report counts
//! only for a transfer the scheduler arranged: that parent handed to that
//! reporter for that blob within [`HANDOUT_TTL`] (at least half of it).

mod footprint;
mod handouts;
mod holders;
mod ledger;
mod tally;

pub use tally::{
    BadPieceSummary, CountedReports, IgnoredByReporter, IgnoredCounts, IgnoredReport,
    MAX_TALLY_ENTRIES,
};

use customs_protocol::peer_id::PeerId;
use customs_protocol::piece_manifest::{FetchId, Statement};
use customs_protocol::scheduler_proto::{Parent, PeerInfo};
use customs_protocol::{Digest, PieceBitmap};
use handouts::{HandoutBook, Recorded};
use holders::Holders;
use ledger::{Inserted, Ledger};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally::Tally;

/// A peer not heard from for this long is no longer offered as a parent.
pub const PEER_TTL: Duration = Duration::from_secs(60);
/// A peer not heard from for this long is forgotten with its pieces (unless
/// it is still blocklisted: going quiet must not shed a blocklisting).
/// Peers announce every 2 s; 15 min outlasts any restart or network blip.
pub const PEER_FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most peers in the table: five times the 2,000-node fleet the design
/// targets. Each entry is under 1 KiB (ids and labels are capped), so the
/// table stays under ~10 MiB. New peers are refused while it is full.
pub const MAX_PEERS: usize = 10_000;
/// How long a blocklisting lasts, and how long one report counts towards
/// one.
pub const BLOCKLIST_FOR: Duration = Duration::from_secs(600);
/// Distinct reporters needed to blocklist a parent for everyone. One report
/// blocklists it for the reporter at once; a single lying reporter cannot
/// cut an honest peer out of the swarm.
pub const GLOBAL_BLOCKLIST_REPORTERS: usize = 2;
/// Reporters remembered per parent: the threshold needs only
/// [`GLOBAL_BLOCKLIST_REPORTERS`]; a few more keep the newest when some
/// expire.
pub const MAX_REPORTERS_PER_PARENT: usize = 16;
/// Most parents returned per request.
pub const MAX_PARENTS: usize = 16;
/// Seeds (gateways) remembered per task.
pub const MAX_TASK_SEEDS: usize = 64;
/// How long a parent handed to a peer stays reportable by it, at most: a
/// hand-out counts for at least half of this after it was last handed out
/// and at most all of it (the book keeps two generations of half this
/// length, see `handouts`). A transfer arranged by one `GetTask` is over
/// well within half (peers ask again every refresh), and it matches
/// [`BLOCKLIST_FOR`].
pub const HANDOUT_TTL: Duration = Duration::from_secs(600);
/// Hand-outs remembered per requester: 64 blobs in flight with a full
/// parent list each. Beyond that a peer's oldest hand-outs are forgotten
/// (only its own reports stop counting).
pub const MAX_HANDOUTS_PER_PEER: usize = 64 * (MAX_PARENTS + 1);
/// Hand-outs remembered in total (4 bytes each: 4 MiB at most; 100 per
/// peer at [`MAX_PEERS`]).
pub const MAX_HANDOUTS: usize = 1 << 20;
/// Parents blocklisted for one reporter at a time; the oldest gives way.
pub const MAX_PRIVATE_BLOCKS_PER_REPORTER: usize = 64;
/// Per-reporter blocklistings kept in total.
pub const MAX_PRIVATE_BLOCKS: usize = 65_536;
/// Longest zone or rack label accepted in an announcement.
pub const MAX_LABEL_LEN: usize = 64;
/// Longest `upload_addr` accepted (a bracketed IPv6 address with a port is
/// at most 47 characters).
pub const MAX_UPLOAD_ADDR_LEN: usize = 64;
/// How long a hinted piece stays reserved for the peer it was hinted to.
/// Long enough to cover the wait in the seed's upload queue (one piece at a
/// time for every peer's seed requests).
pub const HINT_LEASE: Duration = Duration::from_secs(10);
/// Most seed hints handed out per request: one, so first copies land on
/// as many peers as possible, each the root of its own spread (two per
/// request put runs of new pieces on the few peers that asked first, and
/// their one upload slot held the spread back: the fleet simulation at
/// N = 1,000 measured the same p50 and 6% more seed bytes).
pub const SEED_HINTS: usize = 1;
/// Withdrawn fetches remembered, so a statement of one that arrives after
/// its withdrawal (registrations are not ordered with it) is refused.
pub const MAX_WITHDRAWN: usize = 4096;

struct PeerEntry {
    info: PeerInfo,
    last_seen: Instant,
    blocked_until: Option<Instant>,
    /// Reporters whose genuine bad-piece report against this peer still
    /// counts, with when it stops counting (at most
    /// [`MAX_REPORTERS_PER_PARENT`]: a vector, 24 bytes when empty, as
    /// nearly every peer's is).
    reporters: Vec<(PeerId, Instant)>,
}

impl PeerEntry {
    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|t| now < t)
    }

    /// Ends a lapsed blocklisting: the reports behind it are spent.
    fn lapse(&mut self, now: Instant) {
        if self.blocked_until.is_some_and(|t| now >= t) {
            self.blocked_until = None;
            self.reporters.clear();
        }
        self.reporters.retain(|(_, t)| *t > now);
    }
}

struct Task {
    /// The final manifest, or a provisional statement while the gateway
    /// is still fetching (shared: every parent query hands it out).
    statement: Arc<Statement>,
    /// The fetch its provisional statements were of (kept once final): a
    /// peer reporting pieces of another fetch holds a failed fetch's bytes.
    fetch: Option<FetchId>,
    holders: Holders,
    /// Pieces of download-only peers (no piece server): never parents, so
    /// not holders, but never hinted pieces they already hold.
    takers: HashMap<PeerId, PieceBitmap>,
    /// The seeds (gateways) that registered the current statement or a
    /// final manifest of this blob: the only seeds handed out as parents,
    /// since another gateway's seed may not hold the blob (at most
    /// [`MAX_TASK_SEEDS`]).
    seeds: std::collections::BTreeSet<PeerId>,
    /// Where the next seed hint search starts.
    seed_cursor: u32,
    /// Pieces hinted recently, and when: not hinted again within the lease,
    /// so the seed sends each first copy once.
    /// Keyed by (zone, piece): a zone served by its own gateway has its
    /// own first copies (the zone is empty for everyone else).
    /// Per zone scope, per piece: when it was hinted, and to whom.
    hinted: HashMap<String, Vec<Option<Lease>>>,
    /// Per zone scope: the pieces only holders not heard from lately hold,
    /// and when that was worked out (at most every [`LIVE_HELD_EVERY`]).
    /// Such a piece is a first copy again.
    orphaned: HashMap<String, (Instant, PieceBitmap)>,
}

/// A piece hinted to one peer for a first copy from the seed.
struct Lease {
    at: Instant,
    to: PeerId,
}

/// Everything the scheduler knows; lost on restart by design.
pub struct SchedulerState {
    /// Boxed: the table keeps its buckets up to half empty, and an empty
    /// bucket then costs a pointer, not a whole entry.
    peers: HashMap<PeerId, Box<PeerEntry>>,
    /// The announced seeds (gateways), a handful: a parent query looks at
    /// these, never at every peer.
    seeds: std::collections::BTreeSet<PeerId>,
    tasks: HashMap<Digest, Task>,
    /// Parents handed to each requester: (blob, parent) until it expires.
    /// (Fingerprints of blob and parent, see [`SchedulerState::handout`]
    /// and [`handouts`]: 8 bytes an entry, at 10,000 peers the largest
    /// table.)
    handouts: HandoutBook,
    /// Keys the hand-out fingerprints (random per process, so nobody can
    /// aim a collision at a pair they were not handed).
    handout_keys: std::hash::RandomState,
    /// Keys each peer's per-window draw ([`STICKY_WINDOW`]).
    sample_key: u64,
    /// The first instant a parent query saw: windows count from it.
    epoch: Option<Instant>,
    /// Parents blocklisted for one reporter: reporter -> parent, until.
    private_blocks: Ledger<PeerId>,
    tally: Tally,
    /// Recently withdrawn fetches, oldest first (at most [`MAX_WITHDRAWN`]).
    withdrawn: std::collections::VecDeque<FetchId>,
}

impl Default for SchedulerState {
    fn default() -> Self {
        SchedulerState {
            peers: HashMap::new(),
            seeds: std::collections::BTreeSet::new(),
            tasks: HashMap::new(),
            handouts: HandoutBook::new(MAX_HANDOUTS_PER_PEER, MAX_HANDOUTS, HANDOUT_TTL / 2),
            private_blocks: Ledger::new(MAX_PRIVATE_BLOCKS_PER_REPORTER, MAX_PRIVATE_BLOCKS),
            tally: Tally::default(),
            withdrawn: std::collections::VecDeque::new(),
            handout_keys: std::hash::RandomState::new(),
            sample_key: SampleRng::from_os().0,
            epoch: None,
        }
    }
}

/// xorshift64 for sampling candidate parents: it only spreads load.
struct SampleRng(u64);

impl SampleRng {
    fn from_os() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        SampleRng(u64::from_le_bytes(seed) | 1)
    }
    /// The draw of `peer` for `blob` in window `window`: the same within
    /// a window, so a peer's parents change slowly (each one handed out is
    /// remembered for its reports) and stay where its transfers are.
    fn keyed(key: u64, peer: &PeerId, blob: &Digest, window: u64) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        (key, peer, blob, window).hash(&mut h);
        SampleRng(h.finish() | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// What a bad-piece report did.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ReportOutcome {
    /// Not counted against the parent (no blocklisting); only tallied.
    Ignored(IgnoredReport),
    /// The parent is no longer offered to the reporter; `new` is false
    /// when it already was blocklisted for it.
    ForReporter {
        /// The first report of this parent by this reporter (in the period).
        new: bool,
    },
    /// This report made the parent blocklisted for every peer.
    Global,
}

impl ReportOutcome {
    /// True when the parent is now blocklisted (for the reporter or all).
    pub fn blocklisted(self) -> bool {
        !matches!(self, ReportOutcome::Ignored(_))
    }
}

/// Why an announcement was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnounceError {
    /// The peer table holds [`MAX_PEERS`] live peers.
    #[error("the peer table is full")]
    TableFull,
    /// A field is longer than its cap.
    #[error("{field} is longer than {max} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its cap.
        max: usize,
    },
    /// `upload_addr` is not host:port.
    #[error("upload_addr must be ip:port")]
    UploadAddr,
    /// The announced `peer_id` is not the id the caller speaks for.
    #[error("peer_id is not the caller's id")]
    PeerId,
}

/// Why a piece report was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PiecesError {
    /// No admitted task for the blob.
    #[error("no admitted task for {0}")]
    UnknownTask(Digest),
    /// The reporting peer has not announced itself (or was forgotten).
    #[error("peer {0} is not announced")]
    UnknownPeer(PeerId),
    /// More piece indices than the task has pieces.
    #[error("{sent} pieces reported for a task of {pieces}")]
    TooMany {
        /// How many were sent.
        sent: usize,
        /// How many the task has.
        pieces: u32,
    },
}

impl SchedulerState {
    /// A state whose parent sampling follows `seed` (the fleet simulation:
    /// same seed, same run).
    pub fn with_seed(seed: u64) -> Self {
        SchedulerState {
            sample_key: seed,
            ..SchedulerState::default()
        }
    }

    /// Live, non-blocklisted, non-seed peers, sorted by id (preheat targets).
    pub fn live_peers(&self, now: Instant) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .peers
            .values()
            .filter(|p| {
                !p.info.seed && now.duration_since(p.last_seen) < PEER_TTL && !p.blocked(now)
            })
            .map(|p| p.info.clone())
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    #[cfg(test)]
    /// Records a verified task (idempotent; a re-registration keeps
    /// holders). A final manifest replaces a provisional statement; a
    /// provisional statement never replaces a final one, and replaces a
    /// provisional one only when newer: of the same fetch (holders kept) or,
    /// signed later, of another (holders dropped: their pieces came from
    /// another fetch). Returns whether the task changed.
    pub fn register(&mut self, statement: Statement) -> bool {
        self.register_from(statement, None)
    }

    /// [`SchedulerState::register`] by seed `seed`. A provisional statement
    /// of another fetch replaces the current one only when it comes from a
    /// seed of the task (that gateway restarted its fetch): two gateways
    /// of a fleet fetching one blob at once would otherwise take turns
    /// replacing each other's statement and clearing its holders; peers of
    /// the second one move to the first one's fetch when they ask.
    /// Without a `seed` (a gateway outside a fleet, seeding as `gateway`)
    /// the task is not tied to seeds: every seed is handed out.
    pub fn register_from(&mut self, statement: Statement, seed: Option<&PeerId>) -> bool {
        let blob = statement.blob().clone();
        let fetch = match &statement {
            Statement::Provisional(p) => Some(p.content().fetch.clone()),
            Statement::Final(_) => None,
        };
        if fetch.as_ref().is_some_and(|f| self.withdrawn.contains(f)) {
            return false;
        }
        let Some(task) = self.tasks.get_mut(&blob) else {
            self.tasks.insert(
                blob,
                Task {
                    statement: Arc::new(statement),
                    fetch,
                    holders: Holders::default(),
                    takers: HashMap::new(),
                    seeds: seed.into_iter().cloned().collect(),
                    seed_cursor: 0,
                    hinted: HashMap::new(),
                    orphaned: HashMap::new(),
                },
            );
            return true;
        };
        let known_seed = match seed {
            Some(id) => task.seeds.contains(id),
            None => task.seeds.is_empty(),
        };
        match (task.statement.as_ref(), &statement) {
            (Statement::Final(_), Statement::Final(_)) => {
                // Another gateway holds the blob too: it may serve it.
                if let Some(id) = seed
                    && !known_seed
                    && !task.seeds.is_empty()
                    && task.seeds.len() < MAX_TASK_SEEDS
                {
                    task.seeds.insert(id.clone());
                }
                false
            }
            (Statement::Final(_), _) => false,
            (Statement::Provisional(_), Statement::Final(_)) => {
                task.statement = Arc::new(statement);
                if let Some(id) = seed
                    && !task.seeds.is_empty()
                    && task.seeds.len() < MAX_TASK_SEEDS
                {
                    task.seeds.insert(id.clone());
                }
                true
            }
            (Statement::Provisional(old), Statement::Provisional(new)) => {
                let (o, n) = (old.content(), new.content());
                if o.fetch == n.fetch {
                    let newer = (n.pieces.len(), n.signed_at) > (o.pieces.len(), o.signed_at);
                    if newer {
                        task.statement = Arc::new(statement);
                    }
                    newer
                } else if known_seed && n.signed_at > o.signed_at {
                    // A newer fetch (the old one failed or stalled): the
                    // holders hold the old fetch's bytes.
                    task.statement = Arc::new(statement);
                    task.fetch = fetch;
                    task.holders.clear();
                    task.takers.clear();
                    task.hinted.clear();
                    task.seeds = seed.into_iter().cloned().collect();
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Drops a provisional task of `fetch` (the gateway's fetch failed);
    /// a final task, or another fetch's, stays. Returns whether it went.
    pub fn withdraw(&mut self, blob: &Digest, fetch: &FetchId) -> bool {
        if !self.withdrawn.contains(fetch) {
            if self.withdrawn.len() >= MAX_WITHDRAWN {
                self.withdrawn.pop_front();
            }
            self.withdrawn.push_back(fetch.clone());
        }
        let gone = self.tasks.get(blob).is_some_and(
            |t| matches!(t.statement.as_ref(), Statement::Provisional(p) if p.content().fetch == *fetch),
        );
        if gone {
            self.tasks.remove(blob);
        }
        gone
    }

    /// Records or refreshes a peer. `info.peer_id` must be `id` (the id the
    /// caller's certificate names); fields are length-checked. A new peer
    /// is refused while the table is full of peers still remembered.
    pub fn announce(
        &mut self,
        id: &PeerId,
        info: PeerInfo,
        now: Instant,
    ) -> Result<(), AnnounceError> {
        if info.peer_id != id.as_str() {
            return Err(AnnounceError::PeerId);
        }
        for (field, value, max) in [
            ("zone", &info.zone, MAX_LABEL_LEN),
            ("rack", &info.rack, MAX_LABEL_LEN),
            ("upload_addr", &info.upload_addr, MAX_UPLOAD_ADDR_LEN),
        ] {
            if value.len() > max {
                return Err(AnnounceError::TooLong { field, max });
            }
        }
        // Empty: a download-only peer (no piece server), never a parent.
        if !info.upload_addr.is_empty() && info.upload_addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(AnnounceError::UploadAddr);
        }
        if !self.peers.contains_key(id) && self.peers.len() >= MAX_PEERS {
            self.forget_gone_peers(now);
            if self.peers.len() >= MAX_PEERS {
                return Err(AnnounceError::TableFull);
            }
        }
        let e = self.peers.entry(id.clone()).or_insert_with(|| {
            Box::new(PeerEntry {
                info: info.clone(),
                last_seen: now,
                blocked_until: None,
                reporters: Vec::new(),
            })
        });
        if info.seed {
            self.seeds.insert(id.clone());
        } else {
            self.seeds.remove(id);
        }
        e.info = info;
        e.last_seen = now;
        Ok(())
    }

    /// Records pieces a peer holds. Out-of-range pieces are ignored (a peer
    /// cannot introduce content by reporting it); a list longer than the
    /// task, an unknown task or an unannounced peer is refused.
    pub fn report_pieces(
        &mut self,
        peer: &PeerId,
        blob: &Digest,
        pieces: &[u32],
        fetch: Option<&FetchId>,
    ) -> Result<(), PiecesError> {
        let Some(task) = self.tasks.get_mut(blob) else {
            return Err(PiecesError::UnknownTask(blob.clone()));
        };
        if fetch.is_some() && fetch != task.fetch.as_ref() {
            // Pieces of another fetch than the task's: never offered.
            return Ok(());
        }
        let n = task.statement.piece_count();
        if pieces.len() > n as usize {
            return Err(PiecesError::TooMany {
                sent: pieces.len(),
                pieces: n,
            });
        }
        let Some(info) = self.peers.get(peer).map(|e| &e.info) else {
            return Err(PiecesError::UnknownPeer(peer.clone()));
        };
        if info.upload_addr.is_empty() {
            // A download-only peer (no piece server) is nobody's parent:
            // its pieces are not held for anyone else, and the first-copy
            // hints it took are free for the next peer at once.
            let bits = task.takers.entry(peer.clone()).or_default();
            for p in pieces.iter().copied().filter(|p| *p < n) {
                bits.set(p);
            }
            for leases in task.hinted.values_mut() {
                for (i, at) in leases.iter_mut().enumerate() {
                    if bits.has(i as u32) {
                        *at = None;
                    }
                }
            }
            return Ok(());
        }
        task.holders
            .add(peer, &info.zone, pieces.iter().copied().filter(|p| *p < n));
        Ok(())
    }

    /// A bad piece `piece` of `blob` from `parent`, reported by `reporter`.
    /// It counts only when the scheduler handed `parent` to `reporter` for
    /// `blob` within [`HANDOUT_TTL`] and the piece exists; then the parent
    /// is blocklisted for the reporter, and for everyone once
    /// [`GLOBAL_BLOCKLIST_REPORTERS`] distinct reporters' reports count at
    /// once (never a seed). Every report is tallied for the audit log.
    pub fn report_bad(
        &mut self,
        reporter: &PeerId,
        parent: &PeerId,
        blob: &Digest,
        piece: u32,
        now: Instant,
    ) -> ReportOutcome {
        let outcome = self.judge_report(reporter, parent, blob, piece, now);
        match outcome {
            ReportOutcome::Ignored(why) => self.tally.ignore(reporter, why),
            _ => self.tally.count(parent, blob),
        }
        outcome
    }

    fn judge_report(
        &mut self,
        reporter: &PeerId,
        parent: &PeerId,
        blob: &Digest,
        piece: u32,
        now: Instant,
    ) -> ReportOutcome {
        let Some(task) = self.tasks.get(blob) else {
            return ReportOutcome::Ignored(IgnoredReport::UnknownTask);
        };
        if piece >= task.statement.piece_count() {
            return ReportOutcome::Ignored(IgnoredReport::PieceOutOfRange);
        }
        if !self
            .handouts
            .contains(reporter, self.handout(blob, parent), now)
        {
            return ReportOutcome::Ignored(IgnoredReport::NotHandedOut);
        }
        let new = match self.private_blocks.insert(
            reporter,
            parent.clone(),
            now + BLOCKLIST_FOR,
            now,
        ) {
            Inserted::Kept { new } => new,
            Inserted::Full => {
                tracing::warn!(%reporter, %parent, "per-reporter blocklist table full; report counts towards a global blocklisting only");
                true
            }
        };
        if let Some(e) = self.peers.get_mut(parent) {
            e.lapse(now);
            let until = now + BLOCKLIST_FOR;
            match e.reporters.iter_mut().find(|(k, _)| k == reporter) {
                Some(r) => r.1 = until,
                None => {
                    if e.reporters.len() >= MAX_REPORTERS_PER_PARENT
                        && let Some(oldest) = e
                            .reporters
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, (_, t))| *t)
                            .map(|(k, _)| k)
                    {
                        e.reporters.swap_remove(oldest);
                    }
                    e.reporters.push((reporter.clone(), until));
                }
            }
            if e.reporters.len() >= GLOBAL_BLOCKLIST_REPORTERS && !e.info.seed && !e.blocked(now) {
                e.blocked_until = Some(now + BLOCKLIST_FOR);
                return ReportOutcome::Global;
            }
        }
        ReportOutcome::ForReporter { new }
    }

    /// The bad-piece counts since the last call (None when there were none).
    pub fn take_bad_piece_summary(&mut self) -> Option<BadPieceSummary> {
        self.tally.take()
    }

    /// Drops what has aged out: forgotten peers and their pieces, lapsed
    /// blocklistings and the reports behind them, expired hand-outs,
    /// per-reporter blocklistings and hint leases.
    pub fn sweep(&mut self, now: Instant) {
        self.forget_gone_peers(now);
        for e in self.peers.values_mut() {
            e.lapse(now);
        }
        self.handouts.sweep(now);
        self.private_blocks.sweep(now);
        for t in self.tasks.values_mut() {
            t.hinted.retain(|_, leases| {
                for at in leases.iter_mut() {
                    if at
                        .as_ref()
                        .is_some_and(|l| now.duration_since(l.at) >= HINT_LEASE)
                    {
                        *at = None;
                    }
                }
                leases.iter().any(Option::is_some)
            });
        }
        // A provisional task past its expiry: its gateway stopped signing.
        let unix = customs_protocol::piece_manifest::unix_now();
        self.tasks.retain(|_, t| match t.statement.as_ref() {
            Statement::Provisional(p) => p.content().expires_at > unix,
            Statement::Final(_) => true,
        });
    }

    fn forget_gone_peers(&mut self, now: Instant) {
        let before = self.peers.len();
        self.peers
            .retain(|_, e| now.duration_since(e.last_seen) < PEER_FORGET_AFTER || e.blocked(now));
        if self.peers.len() != before {
            let peers = &self.peers;
            self.seeds.retain(|id| peers.contains_key(id));
            for t in self.tasks.values_mut() {
                t.takers.retain(|id, _| peers.contains_key(id));
                t.holders.retain(
                    |id| peers.contains_key(id),
                    |id| {
                        peers
                            .get(id)
                            .map(|e| e.info.zone.clone())
                            .unwrap_or_default()
                    },
                );
            }
            tracing::info!(
                forgotten = before - self.peers.len(),
                "forgot peers not heard from"
            );
        }
    }

    /// How many peers, hand-outs and per-reporter blocklistings are stored
    /// (for tests and status).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.peers.len(),
            self.handouts.len(),
            self.private_blocks.len(),
        )
    }

    /// The statement a task holds now (none when unknown).
    pub fn task_statement(&self, blob: &Digest) -> Option<&Statement> {
        self.tasks.get(blob).map(|t| t.statement.as_ref())
    }

    /// The task's manifest and candidate parents for `peer`: peers that hold
    /// pieces, live, not blocklisted (globally or for this peer), same zone
    /// and rack first, in random order (see [`STICKY_WINDOW`]); seeds last.
    /// Every parent returned is recorded as handed to `peer` for `blob`.
    pub fn task_for(
        &mut self,
        blob: &Digest,
        peer: &PeerId,
        wanted: usize,
        now: Instant,
    ) -> Option<(Arc<Statement>, Vec<Parent>, Vec<u32>)> {
        self.task_for_in(blob, peer, "", wanted, now)
    }

    /// [`Self::task_for`] for a peer that says it is in `zone`: what counts
    /// is its announcement, and `zone` only while it has none here (a zone
    /// label longer than [`MAX_LABEL_LEN`] counts as none).
    pub fn task_for_in(
        &mut self,
        blob: &Digest,
        peer: &PeerId,
        zone: &str,
        wanted: usize,
        now: Instant,
    ) -> Option<(Arc<Statement>, Vec<Parent>, Vec<u32>)> {
        let unix = customs_protocol::piece_manifest::unix_now();
        if self
            .tasks
            .get(blob)
            .is_some_and(|t| match t.statement.as_ref() {
                Statement::Provisional(p) => p.content().expires_at <= unix,
                Statement::Final(_) => false,
            })
        {
            // Expired between sweeps: as good as gone.
            self.tasks.remove(blob);
            return None;
        }
        let me = self.peers.get(peer).map(|e| e.info.clone());
        let said = if zone.len() <= MAX_LABEL_LEN {
            zone
        } else {
            ""
        };
        let my_zone = me.as_ref().map_or(said, |m| m.zone.as_str());
        let usable = |id: &PeerId, e: &PeerEntry| {
            id != peer
                && now.saturating_duration_since(e.last_seen) < HOLDER_SILENT_AFTER
                && !e.blocked(now)
                && !self.private_blocks.contains(peer, id, now)
        };
        // A zone with a live gateway of its own is served by it alone: its
        // peers get parents and seeds of their zone only, so a blob enters
        // the zone once (its gateway's fetch from the zone owner), not once
        // per peer. Until that gateway holds the task the peer gets none and
        // asks its gateway, which fetches it through the zone.
        let seed_entries: Vec<(&PeerId, &PeerEntry)> = self
            .seeds
            .iter()
            .filter_map(|id| Some((id, &**self.peers.get(id)?)))
            .collect();
        let zone_served = !my_zone.is_empty()
            && seed_entries
                .iter()
                .any(|(id, e)| e.info.seed && e.info.zone == my_zone && usable(id, e));
        let task = self.tasks.get(blob)?;
        let seeds: Vec<(&PeerId, &PeerEntry)> = seed_entries
            .into_iter()
            .filter(|(id, e)| {
                e.info.seed
                    && usable(id, e)
                    && (task.seeds.is_empty() || task.seeds.contains(*id))
                    && (!zone_served || e.info.zone == my_zone)
            })
            .collect();
        if zone_served && seeds.is_empty() {
            return None;
        }
        // Each peer's candidates are its own draw for the current window
        // (windows are staggered per peer), so its parents stay put across
        // refreshes; if they offer too little, a fresh draw fills up.
        let epoch = *self.epoch.get_or_insert(now);
        let mut window_rng = SampleRng::keyed(self.sample_key, peer, blob, 0);
        let stagger = window_rng.below(STICKY_WINDOW.as_millis() as usize) as u128;
        let window = ((now.saturating_duration_since(epoch).as_millis() + stagger)
            / STICKY_WINDOW.as_millis()) as u64;
        let mut window_rng = SampleRng::keyed(self.sample_key, peer, blob, window);
        let mut picks = sample(&task.holders, my_zone, zone_served, &mut window_rng);
        // Ties (most parents have the same load) are broken at random: a
        // fixed order would hand every peer the same parents, and a piece
        // only the others hold would never spread.
        for k in (1..picks.len()).rev() {
            picks.swap(k, window_rng.below(k + 1));
        }
        let mine = task.holders.of(peer);
        let consider = |at: u32| -> Option<(u32, f64, &PeerId, &PieceBitmap, &PeerInfo)> {
            let (id, bits) = task.holders.at(at)?;
            let e = self.peers.get(id)?;
            if !usable(id, e) || e.info.seed || (zone_served && e.info.zone != my_zone) {
                return None;
            }
            // A parent holding nothing the peer lacks is no parent.
            if let Some(m) = mine
                && !offers_more(bits, m)
            {
                return None;
            }
            let locality = match &me {
                Some(m) if !m.zone.is_empty() && m.zone == e.info.zone && m.rack == e.info.rack => {
                    0
                }
                Some(m) if !m.zone.is_empty() && m.zone == e.info.zone => 1,
                _ => 2,
            };
            let load = f64::from(e.info.active_uploads) / (e.info.upload_capacity.max(1) as f64);
            Some((locality, load, id, bits, &e.info))
        };
        let mut parents: Vec<(u32, f64, &PeerId, &PieceBitmap, &PeerInfo)> =
            picks.iter().copied().filter_map(consider).collect();
        if parents.len() < MAX_PARENTS && task.holders.len() > picks.len() {
            // A second draw of the window, so this too stays put (its
            // parents are remembered for reports, at 8 bytes each).
            let mut fresh_rng = SampleRng::keyed(self.sample_key, peer, blob, window ^ (1 << 63));
            let mut fresh = sample(&task.holders, my_zone, zone_served, &mut fresh_rng);
            for k in (1..fresh.len()).rev() {
                fresh.swap(k, fresh_rng.below(k + 1));
            }
            picks.sort_unstable();
            parents.extend(
                fresh
                    .into_iter()
                    .filter(|at| picks.binary_search(at).is_err())
                    .filter_map(consider),
            );
        }
        // Nearest first; within a locality the draw's random order. Not by
        // announced load: announcements are up to 2 s old, and every peer
        // ranking by them picked the same idle-looking parents (at N =
        // 1,000 in the fleet simulation: p50 1.24·S/B by load, 1.17
        // without). The planner still weights its choice by load.
        parents.sort_by_key(|p| p.0);
        let mut chosen: Vec<usize> = (0..parents.len().min(MAX_PARENTS)).collect();
        if !my_zone.is_empty() && parents.len() > MAX_PARENTS {
            // The nearest parents fill the list; a piece nobody in this
            // zone holds must still reach it, so up to COVER_PARENTS of
            // them give way to other zones' holders of such pieces.
            let zone_holds = task.holders.held_in(my_zone);
            let covers = parents[MAX_PARENTS..]
                .iter()
                .enumerate()
                .filter(|(_, p)| p.0 == 2 && zone_holds.is_none_or(|z| offers_more(p.3, z)))
                .map(|(k, _)| k + MAX_PARENTS)
                .take(COVER_PARENTS);
            for (slot, k) in (MAX_PARENTS - COVER_PARENTS..MAX_PARENTS).zip(covers) {
                chosen[slot] = k;
            }
        }
        let mut out: Vec<(PeerId, Parent)> = chosen
            .into_iter()
            .map(|k| {
                let (_, _, id, bits, info) = parents[k];
                (
                    id.clone(),
                    Parent {
                        peer: Some(info.clone()),
                        pieces: bits.as_bytes().to_vec(),
                    },
                )
            })
            .collect();
        // A seed of the peer's own zone, when one holds the task, is its
        // only seed (see above).
        out.extend(seeds.into_iter().map(|(id, e)| {
            (
                id.clone(),
                Parent {
                    peer: Some(e.info.clone()),
                    pieces: Vec::new(),
                },
            )
        }));
        let zone = zone_served.then(|| my_zone.to_owned());
        let hints = self.seed_hints(blob, wanted, now, zone.as_deref(), peer);
        let task = self.tasks.get(blob)?;
        let manifest = task.statement.clone();
        for (id, _) in &out {
            let key = self.handout(blob, id);
            if self.handouts.insert(peer, key, now) == Recorded::Full {
                tracing::warn!(%peer, parent = %id, "hand-out table full; a report of this parent will not count");
            }
        }
        let out = out.into_iter().map(|(_, p)| p).collect();
        Some((manifest, out, hints))
    }

    /// The fingerprint a hand-out of `parent` for `blob` is kept under.
    fn handout(&self, blob: &Digest, parent: &PeerId) -> u32 {
        use std::hash::BuildHasher;
        // The high half: SipHash's output bits are all equally good.
        (self.handout_keys.hash_one((blob, parent)) >> 32) as u32
    }

    /// The next pieces no peer holds, round-robin over requests; while the
    /// task is provisional, only pieces the gateway has signed (the seed
    /// serves nothing else).
    fn seed_hints(
        &mut self,
        blob: &Digest,
        wanted: usize,
        now: Instant,
        zone: Option<&str>,
        asker: &PeerId,
    ) -> Vec<u32> {
        let Some(task) = self.tasks.get_mut(blob) else {
            return Vec::new();
        };
        let n = task.statement.piece_count();
        let signed = task.statement.pieces().len() as u32;
        // In a zone served by its own gateway only the zone's holders
        // count: a piece held in another zone only is a first copy here.
        let scope = zone.unwrap_or_default();
        if wanted == 0 {
            return Vec::new();
        }
        let fresh = task
            .orphaned
            .get(scope)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < LIVE_HELD_EVERY);
        if !fresh {
            let peers = &self.peers;
            let live = task.holders.union_where(scope, |id| {
                peers.get(id).is_some_and(|e| {
                    now.saturating_duration_since(e.last_seen) < HOLDER_SILENT_AFTER
                        && !e.blocked(now)
                })
            });
            let mut orphaned = PieceBitmap::new();
            if let Some(any) = task.holders.held_in(scope) {
                for i in 0..n {
                    if any.has(i) && !live.has(i) {
                        orphaned.set(i);
                    }
                }
            }
            task.orphaned.insert(scope.to_owned(), (now, orphaned));
        }
        let mine = task.holders.of(asker).or_else(|| task.takers.get(asker));
        let anyone = task.holders.held_in(scope);
        let orphaned = task.orphaned.get(scope).map(|(_, b)| b);
        let held = |i: u32| {
            (anyone.is_some_and(|b| b.has(i)) && !orphaned.is_some_and(|o| o.has(i)))
                || mine.is_some_and(|m| m.has(i))
        };
        if !task.hinted.contains_key(scope) {
            task.hinted.insert(scope.to_owned(), Vec::new());
        }
        let Some(leases) = task.hinted.get_mut(scope) else {
            return Vec::new();
        };
        leases.resize_with(n as usize, || None);
        // A lease ends early when its peer falls silent (it left): its
        // pieces would otherwise wait out the lease with nobody fetching.
        let peers = &self.peers;
        let live = |l: &Option<Lease>| {
            l.as_ref().is_some_and(|l| {
                now.duration_since(l.at) < HINT_LEASE
                    && peers.get(&l.to).is_none_or(|e| {
                        now.saturating_duration_since(e.last_seen) < HOLDER_SILENT_AFTER
                    })
            })
        };
        let wanted = wanted.min(SEED_HINTS);
        let mut hints = Vec::new();
        let mut k = 0;
        while k < n && hints.len() < wanted {
            let i = (task.seed_cursor + k) % n;
            if i < signed && !held(i) && !live(&leases[i as usize]) {
                hints.push(i);
                leases[i as usize] = Some(Lease {
                    at: now,
                    to: asker.clone(),
                });
            }
            k += 1;
        }
        task.seed_cursor = (task.seed_cursor + k) % n.max(1);
        hints
    }
}

/// A holder not heard from for this long (three announcements missed) no
/// longer makes its pieces "held" for seed hints: the seed sends them to
/// someone else, once, instead of every peer fetching them on its own once
/// it finds the holder gone.
pub const HOLDER_SILENT_AFTER: Duration = Duration::from_secs(6);
/// How often the pieces live holders hold are worked out per task.
pub const LIVE_HELD_EVERY: Duration = Duration::from_secs(1);

/// Holders looked at per parent query: every one up to this many, else a
/// random sample of this size (three quarters from the asking peer's zone
/// when it has one), so a query costs the same at any fleet size (as
/// Dragonfly's scheduler filters a random sample of the task's peers).
pub const CANDIDATES: usize = 4 * MAX_PARENTS;
/// How long a peer's own draw of candidates lasts (see
/// [`SchedulerState::task_for_in`]): its parents change at this pace, not
/// at every refresh.
pub const STICKY_WINDOW: Duration = Duration::from_secs(10);
/// Parent places kept for other zones' holders of pieces the asking peer's
/// zone lacks.
pub const COVER_PARENTS: usize = 2;

/// Whether `parent` holds a piece `mine` lacks.
fn offers_more(parent: &PieceBitmap, mine: &PieceBitmap) -> bool {
    let (p, m) = (parent.as_bytes(), mine.as_bytes());
    p.iter()
        .enumerate()
        .any(|(k, b)| b & !m.get(k).copied().unwrap_or(0) != 0)
}

/// Positions of the holders a parent query considers (see [`CANDIDATES`]).
fn sample(holders: &Holders, zone: &str, zone_only: bool, rng: &mut SampleRng) -> Vec<u32> {
    let n = holders.len();
    if n <= CANDIDATES && !zone_only {
        return (0..n as u32).collect();
    }
    let mut picks: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let local = if zone.is_empty() {
        &[][..]
    } else {
        holders.in_zone(zone)
    };
    // A zone served by its own gateway draws from the zone alone.
    let from_zone = if zone_only {
        CANDIDATES
    } else {
        CANDIDATES * 3 / 4
    };
    if local.len() <= from_zone {
        picks.extend(local.iter().copied());
    } else {
        for _ in 0..2 * from_zone {
            if picks.len() >= from_zone {
                break;
            }
            picks.insert(local[rng.below(local.len())]);
        }
    }
    if zone_only {
        let mut v: Vec<u32> = picks.into_iter().collect();
        v.sort_unstable();
        return v;
    }
    for _ in 0..2 * CANDIDATES {
        if picks.len() >= CANDIDATES {
            break;
        }
        picks.insert(rng.below(n) as u32);
    }
    let mut v: Vec<u32> = picks.into_iter().collect();
    // HashSet order is random per process: sort for repeatable runs.
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests;
