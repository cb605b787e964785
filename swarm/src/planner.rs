//! The download planner: which piece to fetch next, and from whom.
//!
//! Pure bookkeeping, no sockets and no disk, so every rule is unit-tested
//! on a paused clock: rarest pieces first among usable peers, a parent
//! chosen at random weighted by its idle upload capacity, at most one
//! request in flight per peer parent (a peer gives one requester one upload
//! at a time and queues none), the seed (gateway) only for pieces the
//! scheduler hinted to us or no usable peer holds, within
//! [`SEED_CONCURRENCY`], a parent that refused for lack of slots skipped
//! for a growing backoff, and a hinted piece the seed could not send kept
//! as ours (the scheduler leases it to us alone until the lease runs out).
//! The I/O driver ([`super::engine`]) feeds it the scheduler's answers and
//! each transfer's outcome.

use customs_protocol::PieceBitmap;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Pieces fetched at once per blob.
pub const CONCURRENCY: usize = 8;
/// Seed (gateway) fetches at once per blob: peers are preferred.
pub const SEED_CONCURRENCY: usize = 2;
/// How long a parent that refused for lack of slots is skipped the first
/// time (about one and a half 256 KiB pieces at 8 MB/s); each refusal in a
/// row doubles it, up to 8 times. Every refusal is a request over mTLS on a
/// CPU shared with the workloads: at N = 16 on 2 cores 10 ms measured 27.5
/// peer CPU-s per GiB delivered, 50 ms 22.5 (`cargo bench -p customs
/// --bench swarm`, before requests were limited to one per parent).
pub const BUSY_BACKOFF: Duration = Duration::from_millis(50);

/// How long a piece only excluded parents claim waits, while the scheduler
/// is reachable, before this peer fetches it from the seed on its own:
/// meanwhile the peers that hold it, or the one the scheduler hints it to
/// once its holder has been silent for 6 s (or is blocklisted), pass it
/// on, so the seed does not send it once per peer that found the holder
/// gone (at 5% churn, N = 1,000 in the fleet simulation: 1.38·S of seed
/// bytes and p50 1.43·S/B without the wait, about 1.05 and 1.17 with 2 to
/// 8 s; at N = 10,000, 2 s measured 1.25·S and 1.33, 8 s 1.08 and 1.25).
/// Without a scheduler an orphan is fetched at once.
pub const ORPHAN_WAIT: Duration = Duration::from_secs(8);

/// A parent as the scheduler described it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParentView {
    /// Its peer id.
    pub id: String,
    /// host:port of its piece server.
    pub addr: String,
    /// The gateway's seed: holds every piece.
    pub seed: bool,
    /// Its zone (empty: none), for counting bytes that crossed zones.
    pub zone: String,
    /// Upload capacity per active upload (bytes/s), the choice weight.
    pub idle: f64,
    /// The pieces it holds.
    pub pieces: PieceBitmap,
}

/// The scheduler's parents as the planner sees them: a parent's choice
/// weight is its upload capacity per active upload (plus this request).
/// Shared by the engine and the fleet simulation, so both plan alike.
pub fn views(parents: Vec<customs_protocol::scheduler_proto::Parent>) -> Vec<ParentView> {
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
                zone: info.zone,
                idle: cap / (1.0 + f64::from(info.active_uploads)),
                pieces: PieceBitmap::from_wire(p.pieces),
            })
        })
        .collect()
}

impl ParentView {
    /// True when the parent holds piece `i`.
    pub fn has(&self, i: u32) -> bool {
        self.seed || self.pieces.has(i)
    }
}

/// A small, dependency-free PRNG for parent and piece choice (xorshift);
/// choices only need to spread load, not resist prediction.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the OS.
    pub fn new() -> Self {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        Rng::seeded(u64::from_le_bytes(seed))
    }
    /// A fixed sequence, for tests.
    pub fn seeded(seed: u64) -> Self {
        Rng(seed | 1)
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

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

/// What a transfer came to, as far as planning goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Verified and marked.
    Done,
    /// Nothing written and nobody at fault (already verified or being
    /// written), or a bad piece (the driver blocklists the sender).
    Dropped,
    /// The parent had no free upload slot.
    Busy,
    /// The parent could not deliver.
    Failed,
}

/// See the module docs.
pub struct Planner {
    pieces: u32,
    rng: Rng,
    parents: Vec<ParentView>,
    /// Pieces the scheduler leased to us for a first copy from the seed.
    hints: Vec<u32>,
    /// Pieces being fetched, and whether from a seed.
    in_progress: HashMap<u32, bool>,
    /// Parents that refused for lack of slots, until when.
    busy: HashMap<String, Instant>,
    /// Refusals in a row, per parent.
    refusals: HashMap<String, u32>,
    /// Peer parents with a request of ours in flight.
    asking: HashSet<String>,
    /// Pieces found orphaned (see [`ORPHAN_WAIT`]), and since when.
    orphaned_at: HashMap<u32, Instant>,
}

impl Planner {
    /// A planner for a blob of `pieces` pieces.
    pub fn new(pieces: u32, rng: Rng) -> Self {
        Planner {
            pieces,
            rng,
            parents: Vec::new(),
            hints: Vec::new(),
            in_progress: HashMap::new(),
            busy: HashMap::new(),
            refusals: HashMap::new(),
            asking: HashSet::new(),
            orphaned_at: HashMap::new(),
        }
    }

    /// The scheduler's latest parents.
    pub fn set_parents(&mut self, parents: Vec<ParentView>) {
        self.parents = parents;
    }

    /// The parents known now.
    pub fn parents(&self) -> &[ParentView] {
        &self.parents
    }

    /// Drops hints for pieces held or being fetched; returns how many new
    /// hints the free seed slots can take.
    pub fn hints_wanted(&mut self, held: impl Fn(u32) -> bool) -> u32 {
        let (in_progress, parents) = (&self.in_progress, &self.parents);
        // A hinted piece a peer parent now holds is no first copy any
        // more: it comes from that peer, and the seed never sends it twice.
        self.hints.retain(|i| {
            !held(*i)
                && !in_progress.contains_key(i)
                && !parents.iter().any(|p| !p.seed && p.pieces.has(*i))
        });
        SEED_CONCURRENCY.saturating_sub(self.seeds_busy() + self.hints.len()) as u32
    }

    /// Adds the scheduler's new hints.
    pub fn add_hints(&mut self, hints: impl IntoIterator<Item = u32>) {
        for i in hints {
            if i < self.pieces && !self.hints.contains(&i) {
                self.hints.push(i);
            }
        }
    }

    /// Forgets every hint (the scheduler is unreachable: its leases are
    /// void, and any missing piece may come from the seed).
    pub fn clear_hints(&mut self) {
        self.hints.clear();
    }

    /// Transfers in flight.
    pub fn in_flight(&self) -> usize {
        self.in_progress.len()
    }

    fn seeds_busy(&self) -> usize {
        self.in_progress.values().filter(|s| **s).count()
    }

    /// How long the driver may sleep before planning again with nothing
    /// else happening: until the nearest busy parent may be asked again.
    pub fn wake_in(&self, now: Instant, otherwise: Duration) -> Duration {
        // Only backoffs still running: one that ended while every transfer
        // slot was taken (and `next` had no reason to clear it) would
        // otherwise wake the driver at once, again and again, until a
        // transfer finished: a busy loop.
        self.busy
            .values()
            .filter(|t| **t > now)
            .map(|t| t.duration_since(now))
            .min()
            .map_or(otherwise, |d| d.min(otherwise))
    }

    /// The next piece and parent, recorded as in flight; `None` when
    /// nothing can be asked now. `held` tells verified pieces; `unusable`
    /// are parents the driver's health checks rule out for now; `dead` are
    /// excluded for good (dead or hostile); `use_hints` is false while the
    /// scheduler is unreachable.
    pub fn next(
        &mut self,
        now: Instant,
        held: impl Fn(u32) -> bool,
        unusable: &HashSet<String>,
        dead: &HashSet<String>,
        use_hints: bool,
    ) -> Option<(u32, ParentView)> {
        if self.in_progress.len() >= CONCURRENCY {
            return None;
        }
        self.busy.retain(|_, until| *until > now);
        let mut off_limits = unusable.clone();
        off_limits.extend(self.busy.keys().cloned());
        let (piece, parent) = self.choose(now, &held, &off_limits, dead, use_hints)?;
        self.in_progress.insert(piece, parent.seed);
        if !parent.seed {
            self.asking.insert(parent.id.clone());
        }
        Some((piece, parent))
    }

    fn choose(
        &mut self,
        now: Instant,
        held: &impl Fn(u32) -> bool,
        off_limits: &HashSet<String>,
        dead: &HashSet<String>,
        use_hints: bool,
    ) -> Option<(u32, ParentView)> {
        let peers: Vec<&ParentView> = self
            .parents
            .iter()
            .filter(|p| !p.seed && !off_limits.contains(&p.id) && !self.asking.contains(&p.id))
            .collect();
        let missing: Vec<u32> = (0..self.pieces)
            .filter(|i| !held(*i) && !self.in_progress.contains_key(i))
            .collect();
        if missing.is_empty() {
            return None;
        }
        let seeds_busy = self.seeds_busy();
        let seed = self
            .parents
            .iter()
            .find(|p| p.seed && !off_limits.contains(&p.id));
        let hints = use_hints.then_some(self.hints.as_slice());
        // The seed's link is the scarcest: a hinted first copy goes before
        // any piece other peers could serve, so the seed never idles while
        // a hint waits behind peer transfers.
        if seeds_busy < SEED_CONCURRENCY
            && let Some(h) = hints
            && let Some(piece) = h.iter().copied().find(|i| missing.contains(i))
            && let Some(seed) = seed
        {
            return Some((piece, seed.clone()));
        }
        let offset = (self.rng.next() % missing.len() as u64) as usize;
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
            let mut x = self.rng.unit() * total;
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
        // claim are orphans: no hint will name them, so they come from the
        // seed directly.
        let parents = &self.parents;
        let orphans = missing.iter().copied().filter(|i| {
            let mut holders = parents.iter().filter(|p| !p.seed && p.has(*i)).peekable();
            holders.peek().is_some() && holders.all(|p| dead.contains(&p.id))
        });
        let mut orphan = None;
        for i in orphans {
            let since = *self.orphaned_at.entry(i).or_insert(now);
            if hints.is_none() || now.saturating_duration_since(since) >= ORPHAN_WAIT {
                orphan = Some(i);
                break;
            }
        }
        let seed = seed?;
        // The scheduler's hints spread first copies across peers, so the
        // seed sends each piece about once; only when the scheduler is
        // unreachable does any missing piece come from the seed.
        let piece = match (orphan, hints) {
            (Some(o), _) => o,
            (None, Some(h)) => h.iter().copied().find(|h| missing.contains(h))?,
            (None, None) => missing[offset],
        };
        Some((piece, seed.clone()))
    }

    /// Records how the transfer of `piece` from `parent` ended.
    pub fn ended(&mut self, piece: u32, parent: &str, how: Ended, now: Instant) {
        let from_seed = self.in_progress.remove(&piece) == Some(true);
        self.asking.remove(parent);
        match how {
            Ended::Done => {
                self.refusals.remove(parent);
            }
            Ended::Dropped => {}
            Ended::Busy | Ended::Failed => {
                // A hinted piece the seed could not send stays ours: the
                // scheduler hints it to nobody else until the lease ends.
                if from_seed && !self.hints.contains(&piece) {
                    self.hints.push(piece);
                }
                if how == Ended::Busy {
                    let n = self.refusals.entry(parent.to_owned()).or_insert(0);
                    let wait = BUSY_BACKOFF * (1 << (*n).min(3));
                    *n += 1;
                    self.busy.insert(parent.to_owned(), now + wait);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, pieces: &[u32], idle: f64) -> ParentView {
        let mut bits = PieceBitmap::new();
        for i in pieces {
            bits.set(*i);
        }
        ParentView {
            zone: String::new(),
            id: id.into(),
            addr: format!("{id}:1"),
            seed: false,
            idle,
            pieces: bits,
        }
    }

    fn seed() -> ParentView {
        ParentView {
            id: "gateway".into(),
            addr: "gw:1".into(),
            seed: true,
            zone: String::new(),
            idle: 1e9,
            pieces: PieceBitmap::new(),
        }
    }

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    fn planner(pieces: u32, parents: Vec<ParentView>) -> Planner {
        let mut p = Planner::new(pieces, Rng::seeded(7));
        p.set_parents(parents);
        p
    }

    #[tokio::test(start_paused = true)]
    async fn the_rarest_piece_goes_first() {
        // Piece 0 has three holders, piece 1 one: piece 1 first, every time.
        for seed in 1..50 {
            let mut p = Planner::new(2, Rng::seeded(seed));
            p.set_parents(vec![
                peer("a", &[0, 1], 1.0),
                peer("b", &[0], 1.0),
                peer("c", &[0], 1.0),
            ]);
            let (piece, parent) = p
                .next(Instant::now(), |_| false, &none(), &none(), true)
                .unwrap();
            assert_eq!((piece, parent.id.as_str()), (1, "a"), "seed {seed}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn parents_are_weighted_by_idle_capacity() {
        let mut fast = 0;
        for seed in 1..2001 {
            let mut p = Planner::new(1, Rng::seeded(seed));
            p.set_parents(vec![peer("fast", &[0], 9.0), peer("slow", &[0], 1.0)]);
            let (_, parent) = p
                .next(Instant::now(), |_| false, &none(), &none(), true)
                .unwrap();
            fast += usize::from(parent.id == "fast");
        }
        // 90 % expected; far from 50 % either way.
        assert!((1600..=1990).contains(&fast), "fast chosen {fast} of 2000");
    }

    #[tokio::test(start_paused = true)]
    async fn one_request_per_peer_parent_and_at_most_the_concurrency() {
        let mut p = planner(
            16,
            vec![peer("a", &(0..16).collect::<Vec<_>>(), 1.0), seed()],
        );
        let now = Instant::now();
        let first = p.next(now, |_| false, &none(), &none(), true).unwrap();
        assert_eq!(first.1.id, "a");
        // "a" is being asked: without hints, nothing else may be asked.
        assert!(p.next(now, |_| false, &none(), &none(), true).is_none());
        p.ended(first.0, "a", Ended::Done, now);
        // The scheduler unreachable: the seed serves any missing piece, but
        // never more than SEED_CONCURRENCY at once, nor more than CONCURRENCY.
        let mut seeds = 0;
        while let Some((_, parent)) = p.next(now, |i| i == first.0, &none(), &none(), false) {
            seeds += usize::from(parent.seed);
        }
        assert_eq!(seeds, SEED_CONCURRENCY);
        assert!(p.in_flight() <= CONCURRENCY);
    }

    #[tokio::test(start_paused = true)]
    async fn hints_go_to_the_seed_first_and_a_refused_hint_stays_ours() {
        let mut p = planner(4, vec![peer("a", &[0, 1, 2], 1.0), seed()]);
        p.add_hints([3, 99]);
        let now = Instant::now();
        let (piece, parent) = p.next(now, |_| false, &none(), &none(), true).unwrap();
        assert_eq!(
            (piece, parent.seed),
            (3, true),
            "a hint goes to the seed first"
        );
        // The seed was busy: the hint is kept (it is leased to us alone)
        // and the seed is left alone for the backoff.
        p.ended(3, "gateway", Ended::Busy, now);
        assert_eq!(
            p.hints_wanted(|_| false),
            1,
            "the kept hint fills a seed slot"
        );
        let mut asked = Vec::new();
        while let Some((i, parent)) = p.next(now, |_| false, &none(), &none(), true) {
            asked.push((i, parent.seed));
        }
        assert!(
            asked.iter().all(|(_, s)| !s),
            "the busy seed was asked again at once: {asked:?}"
        );
        // After the backoff, the kept hint goes to the seed again.
        let later = now + BUSY_BACKOFF;
        for (i, _) in asked {
            p.ended(i, "a", Ended::Done, later);
        }
        let (piece, parent) = p.next(later, |i| i != 3, &none(), &none(), true).unwrap();
        assert_eq!((piece, parent.seed), (3, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_a_peer_parent_now_holds_comes_from_that_peer() {
        let mut p = planner(2, vec![peer("a", &[0], 1.0), seed()]);
        p.add_hints([1]);
        // The scheduler now says peer "a" holds piece 1: no first copy.
        p.set_parents(vec![peer("a", &[0, 1], 1.0), seed()]);
        assert_eq!(p.hints_wanted(|_| false), SEED_CONCURRENCY as u32);
        let mut asked = Vec::new();
        while let Some((i, parent)) = p.next(Instant::now(), |_| false, &none(), &none(), true) {
            asked.push((i, parent.seed));
        }
        assert!(
            asked.iter().all(|(_, s)| !s),
            "the seed sent a piece a peer holds: {asked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_parent_that_keeps_refusing_is_asked_less_often() {
        let mut p = planner(1, vec![peer("a", &[0], 1.0)]);
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..5 {
            let (i, parent) = p.next(now, |_| false, &none(), &none(), true).unwrap();
            p.ended(i, &parent.id, Ended::Busy, now);
            assert!(p.next(now, |_| false, &none(), &none(), true).is_none());
            let wait = p.wake_in(now, Duration::from_secs(1));
            waits.push(wait);
            tokio::time::advance(wait).await;
            now = Instant::now();
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![50, 100, 200, 400, 400]);
        // Serving once resets it.
        let (i, parent) = p.next(now, |_| false, &none(), &none(), true).unwrap();
        p.ended(i, &parent.id, Ended::Done, now);
        let (i, parent) = p.next(now, |_| false, &none(), &none(), true).unwrap();
        p.ended(i, &parent.id, Ended::Busy, now);
        assert_eq!(p.wake_in(now, Duration::from_secs(1)).as_millis(), 50);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_backoff_never_wakes_the_driver_at_once() {
        // Every transfer slot taken, then a refusal whose backoff runs out
        // while they still are: the driver sleeps its full interval.
        let pieces = CONCURRENCY as u32 + 2;
        let all: Vec<u32> = (0..pieces).collect();
        let names: Vec<String> = (0..=CONCURRENCY).map(|k| format!("p{k}")).collect();
        let mut p = planner(pieces, names.iter().map(|n| peer(n, &all, 1.0)).collect());
        let now = Instant::now();
        let (i, parent) = p.next(now, |_| false, &none(), &none(), true).unwrap();
        p.ended(i, &parent.id, Ended::Busy, now);
        let mut asked = 0;
        while p.next(now, |_| false, &none(), &none(), true).is_some() {
            asked += 1;
        }
        assert_eq!(asked, CONCURRENCY, "every slot taken");
        let later = now + BUSY_BACKOFF * 2;
        assert!(p.next(later, |_| false, &none(), &none(), true).is_none());
        assert_eq!(
            p.wake_in(later, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unusable_and_dead_parents_are_skipped_and_orphans_come_from_the_seed() {
        let mut p = planner(2, vec![peer("hostile", &[0, 1], 1.0), seed()]);
        let now = Instant::now();
        let dead: HashSet<String> = ["hostile".to_owned()].into();
        // No hints (none leased), yet the pieces only a dead peer claims
        // come from the seed: nobody else will ever be hinted them.
        // While the scheduler is up, it gets the chance to hint them to one
        // peer first (so the seed sends each once, not once per peer).
        assert!(p.next(now, |_| false, &dead, &dead, true).is_none());
        let later = now + ORPHAN_WAIT;
        let (piece, parent) = p.next(later, |_| false, &dead, &dead, true).unwrap();
        assert!(parent.seed, "asked the dead parent");
        assert!(piece < 2);
        // Without a scheduler, at once.
        let mut p = planner(2, vec![peer("hostile", &[0, 1], 1.0), seed()]);
        let (_, parent) = p.next(now, |_| false, &dead, &dead, false).unwrap();
        assert!(parent.seed);
        // A merely unusable (timed-out) peer is skipped, and without hints
        // or orphans the seed is not used while the scheduler is up.
        let mut p = planner(2, vec![peer("slow", &[0, 1], 1.0), seed()]);
        let slow: HashSet<String> = ["slow".to_owned()].into();
        assert!(p.next(now, |_| false, &slow, &none(), true).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn end_game_nothing_is_asked_twice_and_held_pieces_are_never_asked() {
        let mut p = planner(
            3,
            vec![peer("a", &[0, 1, 2], 1.0), peer("b", &[0, 1, 2], 1.0)],
        );
        let now = Instant::now();
        let mut asked = HashMap::new();
        while let Some((i, parent)) = p.next(now, |i| i == 0, &none(), &none(), true) {
            assert!(
                asked.insert(i, parent.id).is_none(),
                "piece {i} asked twice at once"
            );
        }
        let pieces: HashSet<u32> = asked.keys().copied().collect();
        assert_eq!(pieces, [1, 2].into(), "piece 0 is held");
        // A failed transfer frees its piece (and its parent) for another try.
        let from = asked[&1].clone();
        let other = asked[&2].clone();
        p.ended(1, &from, Ended::Failed, now);
        let (i, parent) = p.next(now, |i| i == 0, &none(), &none(), true).unwrap();
        assert_eq!((i, parent.id.as_str()), (1, from.as_str()));
        assert_ne!(parent.id, other, "asked a parent that is still sending");
    }
}
