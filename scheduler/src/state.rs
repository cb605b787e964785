//! The scheduler's soft state and its parent selection.

use customs_protocol::Digest;
use customs_protocol::piece_manifest::VerifiedPieceManifest;
use customs_protocol::scheduler_proto::{Parent, PeerInfo};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A peer not heard from for this long is no longer offered as a parent.
pub const PEER_TTL: Duration = Duration::from_secs(60);
/// How long a blocklisting lasts.
pub const BLOCKLIST_FOR: Duration = Duration::from_secs(600);
/// Distinct reporters needed to blocklist a parent for everyone. One report
/// blocklists it for the reporter at once; a single lying reporter cannot
/// cut an honest peer out of the swarm.
pub const GLOBAL_BLOCKLIST_REPORTERS: usize = 2;
/// Most parents returned per request.
pub const MAX_PARENTS: usize = 16;

struct PeerEntry {
    info: PeerInfo,
    last_seen: Instant,
    blocked_until: Option<Instant>,
    /// Peers that reported this one for a bad piece.
    reporters: HashSet<String>,
}

struct Task {
    manifest: VerifiedPieceManifest,
    holders: HashMap<String, Vec<u8>>,
    /// Where the next seed hint search starts.
    seed_cursor: u32,
    /// Pieces hinted recently, and when: not hinted again within the lease,
    /// so the seed sends each first copy once.
    hinted: HashMap<u32, Instant>,
}

/// How long a hinted piece stays reserved for the peer it was hinted to.
/// Long enough to cover the wait in the seed's upload queue (one piece at a
/// time for every peer's seed requests).
pub const HINT_LEASE: Duration = Duration::from_secs(10);

/// Most seed hints handed out per request.
pub const SEED_HINTS: usize = 2;

/// Everything the scheduler knows; lost on restart by design.
#[derive(Default)]
pub struct SchedulerState {
    peers: HashMap<String, PeerEntry>,
    tasks: HashMap<Digest, Task>,
    /// (reporter, parent) pairs: a parent blocklisted for one reporter.
    private_blocks: HashSet<(String, String)>,
}

fn set_bit(bits: &mut Vec<u8>, i: u32) {
    let byte = (i / 8) as usize;
    if bits.len() <= byte {
        bits.resize(byte + 1, 0);
    }
    bits[byte] |= 1 << (i % 8);
}

/// What a bad-piece report did.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Blocklisted for the reporter only (so far).
    ForReporter,
    /// Blocklisted for every peer.
    Global,
}

impl SchedulerState {
    /// Live, non-blocklisted, non-seed peers, sorted by id (preheat targets).
    pub fn live_peers(&self, now: Instant) -> Vec<PeerInfo> {
        let mut peers: Vec<PeerInfo> = self
            .peers
            .values()
            .filter(|p| {
                !p.info.seed
                    && now.duration_since(p.last_seen) < PEER_TTL
                    && p.blocked_until.is_none_or(|t| t <= now)
            })
            .map(|p| p.info.clone())
            .collect();
        peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        peers
    }

    /// Records a verified task (idempotent; a re-registration keeps holders).
    pub fn register(&mut self, manifest: VerifiedPieceManifest) {
        let blob = manifest.manifest().blob.clone();
        self.tasks.entry(blob).or_insert_with(|| Task {
            manifest,
            holders: HashMap::new(),
            seed_cursor: 0,
            hinted: HashMap::new(),
        });
    }

    /// Records or refreshes a peer.
    pub fn announce(&mut self, info: PeerInfo, now: Instant) {
        let e = self
            .peers
            .entry(info.peer_id.clone())
            .or_insert_with(|| PeerEntry {
                info: info.clone(),
                last_seen: now,
                blocked_until: None,
                reporters: HashSet::new(),
            });
        e.info = info;
        e.last_seen = now;
    }

    /// Records pieces a peer holds. Unknown tasks and out-of-range pieces
    /// are ignored (a peer cannot introduce content by reporting it).
    pub fn report_pieces(&mut self, peer: &str, blob: &Digest, pieces: &[u32]) -> bool {
        let Some(task) = self.tasks.get_mut(blob) else {
            return false;
        };
        let n = task.manifest.manifest().piece_count();
        let bits = task.holders.entry(peer.to_owned()).or_default();
        for &p in pieces.iter().filter(|p| **p < n) {
            set_bit(bits, p);
        }
        true
    }

    /// Records a bad piece; returns how far the blocklisting went.
    pub fn report_bad(&mut self, reporter: &str, parent: &str, now: Instant) -> BlockOutcome {
        self.private_blocks
            .insert((reporter.to_owned(), parent.to_owned()));
        if let Some(e) = self.peers.get_mut(parent) {
            e.reporters.insert(reporter.to_owned());
            if e.reporters.len() >= GLOBAL_BLOCKLIST_REPORTERS && !e.info.seed {
                e.blocked_until = Some(now + BLOCKLIST_FOR);
                return BlockOutcome::Global;
            }
        }
        BlockOutcome::ForReporter
    }

    /// The task's manifest and candidate parents for `peer`: peers that hold
    /// pieces, live, not blocklisted (globally or for this peer), same zone
    /// and rack first, then least loaded relative to capacity; seeds last.
    pub fn task_for(
        &mut self,
        blob: &Digest,
        peer: &str,
        wanted: usize,
        now: Instant,
    ) -> Option<(VerifiedPieceManifest, Vec<Parent>, Vec<u32>)> {
        let hints = self.seed_hints(blob, wanted, now);
        let task = self.tasks.get(blob)?;
        let me = self.peers.get(peer).map(|e| &e.info);
        let usable = |id: &str, e: &PeerEntry| {
            id != peer
                && now.duration_since(e.last_seen) < PEER_TTL
                && e.blocked_until.is_none_or(|t| now >= t)
                && !self
                    .private_blocks
                    .contains(&(peer.to_owned(), id.to_owned()))
        };
        let mut parents: Vec<(u32, f64, Parent)> = task
            .holders
            .iter()
            .filter_map(|(id, bits)| {
                let e = self.peers.get(id)?;
                if !usable(id, e) || e.info.seed {
                    return None;
                }
                let locality = match me {
                    Some(m)
                        if !m.zone.is_empty() && m.zone == e.info.zone && m.rack == e.info.rack =>
                    {
                        0
                    }
                    Some(m) if !m.zone.is_empty() && m.zone == e.info.zone => 1,
                    _ => 2,
                };
                let load =
                    f64::from(e.info.active_uploads) / (e.info.upload_capacity.max(1) as f64);
                Some((
                    locality,
                    load,
                    Parent {
                        peer: Some(e.info.clone()),
                        pieces: bits.clone(),
                    },
                ))
            })
            .collect();
        parents.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
        let mut out: Vec<Parent> = parents
            .into_iter()
            .take(MAX_PARENTS)
            .map(|(_, _, p)| p)
            .collect();
        out.extend(
            self.peers
                .iter()
                .filter(|(id, e)| e.info.seed && usable(id, e))
                .map(|(_, e)| Parent {
                    peer: Some(e.info.clone()),
                    pieces: Vec::new(),
                }),
        );
        Some((task.manifest.clone(), out, hints))
    }

    /// The next pieces no peer holds, round-robin over requests.
    fn seed_hints(&mut self, blob: &Digest, wanted: usize, now: Instant) -> Vec<u32> {
        let Some(task) = self.tasks.get_mut(blob) else {
            return Vec::new();
        };
        let n = task.manifest.manifest().piece_count();
        let held = |i: u32| {
            task.holders.values().any(|bits| {
                bits.get((i / 8) as usize)
                    .is_some_and(|b| b & (1 << (i % 8)) != 0)
            })
        };
        let wanted = wanted.min(SEED_HINTS);
        let mut hints = Vec::new();
        let mut k = 0;
        while k < n && hints.len() < wanted {
            let i = (task.seed_cursor + k) % n;
            let leased = task
                .hinted
                .get(&i)
                .is_some_and(|t| now.duration_since(*t) < HINT_LEASE);
            if !held(i) && !leased {
                hints.push(i);
            }
            k += 1;
        }
        for h in &hints {
            task.hinted.insert(*h, now);
        }
        task.seed_cursor = (task.seed_cursor + k) % n.max(1);
        hints
    }
}

#[cfg(test)]
mod tests;
