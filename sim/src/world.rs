//! The event loop: simulated peers drive the real planner and health, and
//! call the real scheduler state as the peer's download loop calls the
//! scheduler service (announce every 2 s, a full piece report and a
//! `GetTask` every [`REFRESH`], one report per verified piece, an immediate
//! refresh after a seed piece). Links are [`Uploader`]s.

use crate::config::{Presence, SimConfig};
use crate::link::{NodeIx, Offer, Uploader};
use crate::report::{SimReport, percentile};
use customs_protocol::Digest;
use customs_protocol::PieceBitmap;
use customs_protocol::peer_id::PeerId;
use customs_protocol::piece_manifest::{
    AdmissionRef, GatewayKey, PieceManifest, Statement, TrustedGatewayKeys,
};
use customs_protocol::scheduler_proto::PeerInfo;
use customs_scheduler::state::SchedulerState;
use customs_swarm::engine::{REFRESH, SEED_PARENT};
use customs_swarm::health::Health;
use customs_swarm::piece_server::{
    PEER_UPLOAD_QUEUE, PEER_UPLOAD_SLOTS, SEED_UPLOAD_QUEUE, SEED_UPLOAD_SLOTS, SLOT_WAIT,
};
use customs_swarm::planner::{Ended, Planner, Rng, views};
use std::collections::{BinaryHeap, HashSet};
use std::time::Duration;

/// How often a peer announces itself (as the peer's announce loop does).
const ANNOUNCE_EVERY: f64 = 2.0;
/// How often the scheduler sweeps (its aggregate interval).
const SWEEP_EVERY: f64 = 60.0;
/// How often the scheduler's memory is measured.
const SAMPLE_EVERY: f64 = 1.0;

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The parameters describe no run.
    #[error("bad simulation parameters: {0}")]
    Config(&'static str),
    /// The piece manifest could not be signed or verified.
    #[error("piece manifest: {0}")]
    Manifest(#[from] customs_protocol::piece_manifest::PieceManifestError),
    /// The scheduler refused a simulated peer.
    #[error("the scheduler refused peer {peer}: {error}")]
    Announce {
        /// The peer.
        peer: String,
        /// Why.
        error: customs_scheduler::state::AnnounceError,
    },
}

#[derive(Debug)]
enum Ev {
    Join(NodeIx),
    Leave(NodeIx),
    Refresh(NodeIx, u64),
    Wake(NodeIx),
    Announce(NodeIx),
    Request {
        from: NodeIx,
        to: NodeIx,
        piece: u32,
    },
    Reply {
        to: NodeIx,
        piece: u32,
        parent: NodeIx,
        how: Ended,
    },
    Settle {
        up: NodeIx,
        generation: u64,
    },
    Report {
        from: NodeIx,
        piece: u32,
    },
    Sweep,
    Sample,
}

struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Earliest first out of a max-heap.
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Waiting,
    Active,
    Done(f64),
    Failed,
    Left,
}

struct Node {
    id: PeerId,
    info: PeerInfo,
    zone: u32,
    presence: Presence,
    phase: Phase,
    held: PieceBitmap,
    held_count: u32,
    reported: Option<u32>,
    planner: Planner,
    health: Option<Health>,
    refresh_generation: u64,
    wake_at: Option<u64>,
}

/// splitmix64: the simulation's own choices (who churns, when).
struct SimRng(u64);

impl SimRng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct World {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Item>,
    base: std::time::Instant,
    sched: SchedulerState,
    blob: Digest,
    pieces: u32,
    nodes: Vec<Node>,
    /// Upload links: peers `0..N`, the seeds from `N` on (one per zone:
    /// each zone's gateway; seed `N + z` stands in zone `z`).
    links: Vec<Uploader>,
    seed: NodeIx,
    seed_infos: Vec<PeerInfo>,
    seed_left: bool,
    sched_time: Duration,
    sched_calls: u64,
    sched_peak_bytes: usize,
    cross_zone: Vec<f64>,
    events: u64,
    open: usize,
    /// Bytes the gateway fetched from upstream.
    upstream_bytes: f64,
}

/// Runs one simulation to the end (every peer done, failed or gone).
pub fn simulate(cfg: &SimConfig) -> Result<SimReport, SimError> {
    let started = std::time::Instant::now();
    let mut w = World::new(cfg.clone())?;
    w.run();
    Ok(w.report(started.elapsed().as_secs_f64()))
}

fn secs(t: u64) -> f64 {
    t as f64 / 1e9
}

fn ticks(s: f64) -> u64 {
    (s * 1e9).ceil().max(0.0) as u64
}

impl World {
    fn new(cfg: SimConfig) -> Result<Self, SimError> {
        if cfg.nodes == 0 || cfg.size == 0 || cfg.upload_limit <= 0.0 {
            return Err(SimError::Config(
                "nodes, size and upload limit must be positive",
            ));
        }
        if cfg
            .presence
            .as_ref()
            .is_some_and(|p| p.len() != cfg.nodes as usize)
        {
            return Err(SimError::Config("one presence per node"));
        }
        let pieces = cfg.pieces();
        // The real statement the gateway would register: a signed final
        // manifest (piece digests are placeholders; nothing is hashed).
        let key = GatewayKey::generate()?;
        let blob = Digest::of(format!("sim-blob-{}", cfg.seed).as_bytes());
        let signed = key.sign(PieceManifest {
            blob: blob.clone(),
            size: cfg.size,
            piece_length: cfg.piece_length,
            pieces: (0..pieces).map(|i| Digest::of(&i.to_le_bytes())).collect(),
            admission: AdmissionRef {
                image: "sim/app".into(),
                manifest_digest: Digest::of(b"sim-manifest"),
                policy_revision: "sim".into(),
            },
            key_id: String::new(),
        })?;
        let trusted = TrustedGatewayKeys::from_pems([key.public_pem()?.as_str()])?;
        let statement = Statement::Final(trusted.verify(&signed, &blob)?);
        let mut sched = SchedulerState::with_seed(cfg.seed);
        let seed_count = cfg.zones.max(1);
        let seed_name = |z: u32| {
            if cfg.zones == 0 {
                SEED_PARENT.to_owned()
            } else {
                format!("{SEED_PARENT}-{z}")
            }
        };
        for z in 0..seed_count {
            let id = PeerId::parse(&seed_name(z)).map_err(|_| SimError::Config("seed name"))?;
            sched.register_from(statement.clone(), Some(&id));
        }

        let mut rng = SimRng(cfg.seed);
        let n = cfg.nodes as usize;
        let mut presence: Vec<Presence> = cfg.presence.clone().unwrap_or_else(|| {
            vec![
                Presence {
                    join: 0.0,
                    leave: None,
                };
                n
            ]
        });
        if cfg.presence.is_none() && cfg.churn > 0.0 {
            let leaving = ((cfg.churn * n as f64).round() as usize).min(n);
            let mut chosen = HashSet::new();
            while chosen.len() < leaving {
                chosen.insert((rng.next() % n as u64) as usize);
            }
            // In index order: a HashSet's order differs per process, and
            // the same seed must repeat the run.
            let mut chosen: Vec<usize> = chosen.into_iter().collect();
            chosen.sort_unstable();
            for i in chosen {
                presence[i].leave = Some(cfg.ideal_secs() * (0.1 + 0.8 * rng.unit()));
            }
        }
        let label = |prefix: &str, k: u32, of: u32| {
            if of == 0 {
                String::new()
            } else {
                format!("{prefix}-{}", k % of)
            }
        };
        let mut nodes = Vec::with_capacity(n);
        let mut links = Vec::with_capacity(n + 1);
        let slot_wait = SLOT_WAIT.as_secs_f64();
        for (i, p) in presence.iter().enumerate() {
            let name = format!("peer-{i}");
            let zone = if cfg.zones == 0 {
                0
            } else {
                i as u32 % cfg.zones
            };
            let rack = (i as u32).checked_div(cfg.zones).unwrap_or(i as u32);
            let rate = if cfg.peers_upload {
                cfg.upload_limit
            } else {
                0.0
            };
            nodes.push(Node {
                id: PeerId::parse(&name).map_err(|_| SimError::Config("peer name"))?,
                info: PeerInfo {
                    peer_id: name,
                    // A peer that uploads nothing runs no piece server.
                    upload_addr: if cfg.peers_upload {
                        format!("10.{}.{}.{}:4003", i >> 16, (i >> 8) & 255, i & 255)
                    } else {
                        String::new()
                    },
                    upload_capacity: rate as u64,
                    active_uploads: 0,
                    zone: label("zone", zone, cfg.zones),
                    rack: label("rack", rack, cfg.racks),
                    seed: false,
                },
                zone,
                presence: *p,
                phase: Phase::Waiting,
                held: PieceBitmap::new(),
                held_count: 0,
                reported: None,
                planner: Planner::new(pieces, Rng::seeded(cfg.seed ^ ((i as u64 + 1) << 20))),
                health: None,
                refresh_generation: 0,
                wake_at: None,
            });
            links.push(Uploader::new(
                rate,
                PEER_UPLOAD_SLOTS,
                PEER_UPLOAD_QUEUE,
                slot_wait,
            ));
        }
        let mut seed_infos = Vec::new();
        for z in 0..seed_count {
            links.push(Uploader::new(
                cfg.seed_upload_limit,
                SEED_UPLOAD_SLOTS,
                SEED_UPLOAD_QUEUE,
                slot_wait,
            ));
            seed_infos.push(PeerInfo {
                peer_id: seed_name(z),
                upload_addr: format!("10.255.254.{z}:4002"),
                upload_capacity: cfg.seed_upload_limit as u64,
                active_uploads: 0,
                zone: label("zone", z, cfg.zones),
                rack: String::new(),
                seed: true,
            });
        }
        let zones = cfg.zones.max(1) as usize;
        let mut w = World {
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            base: std::time::Instant::now(),
            sched,
            blob,
            pieces,
            open: n,
            nodes,
            links,
            seed: n,
            seed_infos,
            seed_left: false,
            sched_time: Duration::ZERO,
            sched_calls: 0,
            sched_peak_bytes: 0,
            cross_zone: vec![0.0; zones],
            events: 0,
            upstream_bytes: 0.0,
            cfg,
        };
        for z in 0..seed_count as usize {
            w.announce(w.seed + z);
        }
        // The gateway fetched the blob from upstream once before the
        // rollout (warm, as after a preheat); the seed serves from it. In
        // zones, each other zone's gateway took one copy from the owner's
        // zone (the fleet's rule), which is that zone's cross-zone copy.
        w.upstream_bytes = w.cfg.size as f64;
        for z in 1..seed_count as usize {
            w.cross_zone[z] += w.cfg.size as f64;
        }
        for (i, p) in presence.iter().enumerate() {
            w.at(p.join, Ev::Join(i));
            if let Some(l) = p.leave {
                w.at(l, Ev::Leave(i));
            }
        }
        if let Some(l) = w.cfg.seed_leaves {
            for z in 0..seed_count as usize {
                w.at(l, Ev::Leave(w.seed + z));
            }
        }
        w.at(SWEEP_EVERY, Ev::Sweep);
        w.at(0.0, Ev::Sample);
        Ok(w)
    }

    fn at(&mut self, t: f64, ev: Ev) {
        self.at_tick(ticks(t), ev);
    }

    fn at_tick(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Item {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn after(&mut self, d: f64, ev: Ev) {
        self.at_tick(self.now + ticks(d), ev);
    }

    fn std_now(&self) -> std::time::Instant {
        self.base + Duration::from_nanos(self.now)
    }

    fn tokio_now(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.std_now())
    }

    fn half_rtt(&self) -> f64 {
        self.cfg.rtt.as_secs_f64() / 2.0
    }

    fn piece_len(&self, i: u32) -> f64 {
        let start = u64::from(i) * self.cfg.piece_length;
        (self.cfg.size - start).min(self.cfg.piece_length) as f64
    }

    fn ix_of(&self, id: &str) -> Option<NodeIx> {
        if let Some(z) = self.seed_infos.iter().position(|s| s.peer_id == id) {
            return Some(self.seed + z);
        }
        id.strip_prefix("peer-")?
            .parse::<usize>()
            .ok()
            .filter(|i| *i < self.nodes.len())
    }

    /// Times one call into the scheduler state.
    fn timed<T>(&mut self, f: impl FnOnce(&mut SchedulerState, std::time::Instant) -> T) -> T {
        let now = self.std_now();
        let t = std::time::Instant::now();
        let out = f(&mut self.sched, now);
        self.sched_time += t.elapsed();
        self.sched_calls += 1;
        out
    }

    fn is_seed(&self, ix: NodeIx) -> bool {
        ix >= self.seed
    }

    fn announce_seed(&mut self, ix: NodeIx) {
        let mut info = self.seed_infos[ix - self.seed].clone();
        info.active_uploads = self.links[ix].active() as u32;
        let id = PeerId::parse(&info.peer_id).ok();
        if let Some(id) = id {
            let _ = self.timed(|s, now| s.announce(&id, info, now));
        }
    }

    fn run(&mut self) {
        let horizon = ticks(self.cfg.horizon.as_secs_f64());
        while self.open > 0 {
            let Some(item) = self.heap.pop() else { break };
            if item.at > horizon {
                break;
            }
            self.now = item.at;
            self.events += 1;
            self.handle(item.ev);
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(i) => self.join(i),
            Ev::Leave(i) => self.leave(i),
            Ev::Announce(i) => self.announce(i),
            Ev::Refresh(i, g) => {
                if self.nodes[i].refresh_generation == g {
                    self.refresh(i);
                }
            }
            Ev::Wake(i) => {
                // Only the latest wake-up counts.
                if self.nodes[i].wake_at == Some(self.now) {
                    self.nodes[i].wake_at = None;
                    self.drive(i);
                }
            }
            Ev::Request { from, to, piece } => self.request(from, to, piece),
            Ev::Reply {
                to,
                piece,
                parent,
                how,
            } => self.reply(to, piece, parent, how),
            Ev::Settle { up, generation } => {
                if self.links[up].generation == generation {
                    self.settle(up);
                }
            }
            Ev::Report { from, piece } => {
                if self.nodes[from].phase != Phase::Left {
                    let (id, blob) = (self.nodes[from].id.clone(), self.blob.clone());
                    let _ = self.timed(|s, _| s.report_pieces(&id, &blob, &[piece], None));
                }
            }
            Ev::Sweep => {
                self.timed(|s, now| s.sweep(now));
                self.after(SWEEP_EVERY, Ev::Sweep);
            }
            Ev::Sample => {
                let b = self.sched.heap_bytes();
                self.sched_peak_bytes = self.sched_peak_bytes.max(b);
                self.after(SAMPLE_EVERY, Ev::Sample);
            }
        }
    }

    fn join(&mut self, i: NodeIx) {
        if self.nodes[i].phase != Phase::Waiting {
            return;
        }
        let now = self.tokio_now();
        let n = &mut self.nodes[i];
        n.phase = Phase::Active;
        n.health = Some(Health::new(
            now,
            customs_swarm::health::NO_PROGRESS.max(
                customs_swarm::deadline::FetchDeadlines::for_piece(self.cfg.piece_length).total,
            ),
        ));
        self.announce(i);
        self.refresh(i);
    }

    fn announce(&mut self, i: NodeIx) {
        if self.is_seed(i) {
            if !self.seed_left {
                self.announce_seed(i);
                self.after(ANNOUNCE_EVERY, Ev::Announce(i));
            }
            return;
        }
        if matches!(self.nodes[i].phase, Phase::Left) {
            return;
        }
        let mut info = self.nodes[i].info.clone();
        info.active_uploads = self.links[i].active() as u32;
        let id = self.nodes[i].id.clone();
        let _ = self.timed(|s, now| s.announce(&id, info, now));
        self.after(ANNOUNCE_EVERY, Ev::Announce(i));
    }

    fn held_list(&self, i: NodeIx) -> Vec<u32> {
        let n = &self.nodes[i];
        (0..self.pieces).filter(|p| n.held.has(*p)).collect()
    }

    fn refresh(&mut self, i: NodeIx) {
        if self.nodes[i].phase != Phase::Active {
            return;
        }
        let now = self.tokio_now();
        if let Some(why) = self.nodes[i].health.as_ref().and_then(|h| h.stalled(now)) {
            let _ = why;
            self.nodes[i].phase = Phase::Failed;
            self.open -= 1;
            return;
        }
        let id = self.nodes[i].id.clone();
        let blob = self.blob.clone();
        if self.nodes[i].reported != Some(self.nodes[i].held_count) {
            let held = self.held_list(i);
            let _ = self.timed(|s, _| s.report_pieces(&id, &blob, &held, None));
            self.nodes[i].reported = Some(self.nodes[i].held_count);
        }
        let wanted = {
            let n = &mut self.nodes[i];
            let held = &n.held;
            n.planner.hints_wanted(|p| held.has(p))
        };
        let answer = self.timed(|s, now| s.task_for(&blob, &id, wanted as usize, now));
        if let Some((_, parents, hints)) = answer {
            let n = &mut self.nodes[i];
            n.planner.set_parents(views(parents));
            n.planner.add_hints(hints);
        }
        self.nodes[i].refresh_generation += 1;
        let g = self.nodes[i].refresh_generation;
        self.after(REFRESH.as_secs_f64(), Ev::Refresh(i, g));
        self.drive(i);
    }

    fn drive(&mut self, i: NodeIx) {
        if self.nodes[i].phase != Phase::Active {
            return;
        }
        let now = self.tokio_now();
        let mut asks = Vec::new();
        {
            let n = &mut self.nodes[i];
            let Some(health) = n.health.as_ref() else {
                return;
            };
            let unusable = health.unusable(now);
            let held = &n.held;
            while let Some((piece, parent)) =
                n.planner
                    .next(now, |p| held.has(p), &unusable, health.excluded(), true)
            {
                asks.push((piece, parent.id));
            }
        }
        for (piece, parent) in asks {
            if let Some(to) = self.ix_of(&parent) {
                self.after(self.half_rtt(), Ev::Request { from: i, to, piece });
            }
        }
        let wake = self.nodes[i].planner.wake_in(now, REFRESH);
        if wake < REFRESH {
            let at = self.now + wake.as_nanos() as u64;
            if self.nodes[i].wake_at.is_none_or(|w| w > at || w < self.now) {
                self.nodes[i].wake_at = Some(at);
                self.at_tick(at, Ev::Wake(i));
            }
        }
    }

    fn holds(&self, up: NodeIx, piece: u32) -> bool {
        if self.is_seed(up) {
            return !self.seed_left;
        }
        !matches!(self.nodes[up].phase, Phase::Left) && self.nodes[up].held.has(piece)
    }

    fn request(&mut self, from: NodeIx, to: NodeIx, piece: u32) {
        let reply = |how| Ev::Reply {
            to: from,
            piece,
            parent: to,
            how,
        };
        if !self.holds(to, piece) {
            self.after(self.half_rtt(), reply(Ended::Failed));
            return;
        }
        let len = self.piece_len(piece);
        match self.links[to].offer(secs(self.now), from, piece, len) {
            Offer::Started => self.schedule_settle(to),
            Offer::Queued => {}
            Offer::Busy => self.after(self.half_rtt(), reply(Ended::Busy)),
        }
    }

    fn schedule_settle(&mut self, up: NodeIx) {
        if let Some(t) = self.links[up].next_completion() {
            let generation = self.links[up].generation;
            self.at(t, Ev::Settle { up, generation });
        }
    }

    fn zone_of(&self, ix: NodeIx) -> u32 {
        if self.is_seed(ix) {
            (ix - self.seed) as u32
        } else {
            self.nodes[ix].zone
        }
    }

    fn settle(&mut self, up: NodeIx) {
        let (done, _started, timed_out) = self.links[up].settle(secs(self.now));
        let delay = self.half_rtt() + self.cfg.piece_overhead.as_secs_f64();
        for f in done {
            if self.cfg.zones > 0 && self.zone_of(up) != self.zone_of(f.to) {
                let z = self.zone_of(f.to) as usize;
                self.cross_zone[z] += self.piece_len(f.piece);
            }
            self.after(
                delay,
                Ev::Reply {
                    to: f.to,
                    piece: f.piece,
                    parent: up,
                    how: Ended::Done,
                },
            );
        }
        for (to, piece) in timed_out {
            self.after(
                self.half_rtt(),
                Ev::Reply {
                    to,
                    piece,
                    parent: up,
                    how: Ended::Busy,
                },
            );
        }
        self.schedule_settle(up);
    }

    fn parent_name(&self, ix: NodeIx) -> String {
        if self.is_seed(ix) {
            self.seed_infos[ix - self.seed].peer_id.clone()
        } else {
            self.nodes[ix].info.peer_id.clone()
        }
    }

    fn reply(&mut self, i: NodeIx, piece: u32, parent: NodeIx, how: Ended) {
        if self.nodes[i].phase != Phase::Active {
            return;
        }
        let now = self.tokio_now();
        let name = self.parent_name(parent);
        let from_seed = self.is_seed(parent);
        let how = if how == Ended::Done && self.nodes[i].held.has(piece) {
            Ended::Dropped
        } else {
            how
        };
        let n = &mut self.nodes[i];
        n.planner.ended(piece, &name, how, now);
        let health = n.health.get_or_insert_with(|| Health::new(now, REFRESH));
        match how {
            Ended::Done => {
                health.success(&name, now);
                n.held.set(piece);
                n.held_count += 1;
                if n.held_count == self.pieces {
                    n.phase = Phase::Done(secs(self.now) - n.presence.join);
                    self.open -= 1;
                    let (id, blob) = (n.id.clone(), self.blob.clone());
                    let held = self.held_list(i);
                    let _ = self.timed(|s, _| s.report_pieces(&id, &blob, &held, None));
                    return;
                }
                self.after(self.half_rtt(), Ev::Report { from: i, piece });
                if from_seed {
                    self.refresh(i);
                    return;
                }
            }
            Ended::Failed => {
                health.failure(&name, from_seed, "connection failed", now);
            }
            Ended::Busy | Ended::Dropped => {}
        }
        self.drive(i);
    }

    fn leave(&mut self, i: NodeIx) {
        if self.is_seed(i) {
            self.seed_left = true;
        } else {
            match self.nodes[i].phase {
                Phase::Active | Phase::Waiting => self.open -= 1,
                Phase::Done(_) | Phase::Failed | Phase::Left => {}
            }
            self.nodes[i].phase = Phase::Left;
        }
        for (to, piece) in self.links[i].fail_all() {
            self.after(
                self.half_rtt(),
                Ev::Reply {
                    to,
                    piece,
                    parent: i,
                    how: Ended::Failed,
                },
            );
        }
    }

    fn report(&self, wall: f64) -> SimReport {
        let mut times: Vec<f64> = self
            .nodes
            .iter()
            .filter_map(|n| match n.phase {
                Phase::Done(t) => Some(t),
                _ => None,
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let churned = self
            .nodes
            .iter()
            .filter(|n| n.presence.leave.is_some())
            .count();
        let incomplete = self
            .nodes
            .iter()
            .filter(|n| n.presence.leave.is_none() && !matches!(n.phase, Phase::Done(_)))
            .count();
        let s = self.cfg.size as f64;
        let ideal = self.cfg.ideal_secs();
        let peer_tasks = self.nodes.len().max(1);
        SimReport {
            nodes: self.cfg.nodes,
            size: self.cfg.size,
            upload_limit: self.cfg.upload_limit,
            seed_upload_limit: self.cfg.seed_upload_limit,
            piece_length: self.cfg.piece_length,
            zones: self.cfg.zones,
            racks: self.cfg.racks,
            churn: self.cfg.churn,
            seed: self.cfg.seed,
            ideal_secs: ideal,
            p50_secs: percentile(&times, 0.50),
            p99_secs: percentile(&times, 0.99),
            max_secs: times.last().copied().unwrap_or(f64::NAN),
            p50_ratio: percentile(&times, 0.50) / ideal,
            p99_ratio: percentile(&times, 0.99) / ideal,
            max_ratio: times.last().copied().unwrap_or(f64::NAN) / ideal,
            completed: times.len(),
            churned,
            incomplete,
            upstream_copies: self.upstream_bytes / s,
            seed_copies: self.links[self.seed..].iter().map(|l| l.sent).sum::<f64>() / s,
            cross_zone_copies_per_zone: self.cross_zone.iter().copied().fold(0.0, f64::max) / s,
            scheduler_calls: self.sched_calls,
            scheduler_cpu_secs: self.sched_time.as_secs_f64(),
            scheduler_cpu_us_per_call: self.sched_time.as_secs_f64() * 1e6
                / self.sched_calls.max(1) as f64,
            scheduler_cpu_ms_per_node: self.sched_time.as_secs_f64() * 1e3 / peer_tasks as f64,
            scheduler_peak_bytes: self.sched_peak_bytes,
            scheduler_bytes_per_peer_task: self.sched_peak_bytes as f64 / peer_tasks as f64,
            events: self.events,
            wall_secs: wall,
        }
    }
}
