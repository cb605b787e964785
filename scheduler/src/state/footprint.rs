//! The scheduler state's heap footprint, for the fleet simulation's
//! "bytes per peer-task" figure and for status. Estimated from what each
//! container has allocated (capacity × entry size, hashbrown's one control
//! byte per bucket, string and bitmap lengths): no allocator hook, so it
//! can run in the production binary and in tests alike, and it never
//! undercounts a container that grew and shrank (capacity stays).

use super::ledger::Ledger;
use super::{PeerEntry, SchedulerState, Task};
use customs_protocol::Digest;
use customs_protocol::PieceBitmap;
use customs_protocol::peer_id::PeerId;
use customs_protocol::scheduler_proto::PeerInfo;
use std::collections::HashMap;
use std::mem::size_of;

/// Buckets × (entry + control byte) of a hash map with `capacity`.
pub(super) fn table<K, V>(capacity: usize) -> usize {
    // hashbrown keeps at most 7/8 of its buckets full.
    let buckets = if capacity == 0 {
        0
    } else {
        (capacity * 8 / 7).next_power_of_two()
    };
    buckets * (size_of::<(K, V)>() + 1)
}

pub(super) fn id(p: &PeerId) -> usize {
    p.as_str().len()
}

fn digest(d: &Digest) -> usize {
    d.hex().len()
}

fn info(i: &PeerInfo) -> usize {
    i.peer_id.capacity() + i.upload_addr.capacity() + i.zone.capacity() + i.rack.capacity()
}

fn peer(e: &PeerEntry) -> usize {
    info(&e.info)
        + e.reporters.capacity() * size_of::<(PeerId, std::time::Instant)>()
        + e.reporters.iter().map(|(k, _)| id(k)).sum::<usize>()
}

fn task(t: &Task) -> usize {
    let s = t.statement.signed();
    let statement = s.payload.capacity()
        + s.signature.capacity()
        + s.key_id.capacity()
        + t.statement.pieces().len() * (size_of::<Digest>() + 64);
    statement
        + t.holders.heap_bytes()
        + t.seeds
            .iter()
            .map(|s| size_of::<PeerId>() + 16 + id(s))
            .sum::<usize>()
        + table::<String, (std::time::Instant, PieceBitmap)>(t.orphaned.capacity())
        + t.orphaned
            .iter()
            .map(|(z, (_, b))| z.len() + b.as_bytes().len())
            .sum::<usize>()
        + table::<String, Vec<Option<super::Lease>>>(t.hinted.capacity())
        + t.hinted
            .iter()
            .map(|(z, v)| {
                z.len()
                    + v.capacity() * size_of::<Option<super::Lease>>()
                    + v.iter().flatten().map(|l| id(&l.to)).sum::<usize>()
            })
            .sum::<usize>()
}

impl SchedulerState {
    /// The heap bytes this state holds (see the module docs).
    pub fn heap_bytes(&self) -> usize {
        let peers = table::<PeerId, Box<PeerEntry>>(self.peers.capacity())
            + self.peers.len() * size_of::<PeerEntry>()
            + self
                .peers
                .iter()
                .map(|(k, e)| id(k) + peer(e))
                .sum::<usize>();
        let tasks = table::<Digest, Task>(self.tasks.capacity())
            + self
                .tasks
                .iter()
                .map(|(d, t)| digest(d) + task(t))
                .sum::<usize>();
        let withdrawn = self.withdrawn.capacity() * 24
            + self
                .withdrawn
                .iter()
                .map(|f| f.as_str().len())
                .sum::<usize>();
        peers
            + tasks
            + self.handouts.heap_bytes()
            + self.private_blocks.heap_bytes(id)
            + self.tally.heap_bytes()
            + withdrawn
    }
}

impl<K: Eq + std::hash::Hash + Clone> Ledger<K> {
    /// Heap bytes of the ledger; `key` tells a key's own heap bytes.
    pub(super) fn heap_bytes(&self, key: impl Fn(&K) -> usize) -> usize {
        table::<PeerId, HashMap<K, std::time::Instant>>(self.by_owner_capacity())
            + self
                .owners()
                .map(|(owner, m)| {
                    id(owner)
                        + table::<K, std::time::Instant>(m.capacity())
                        + m.keys().map(&key).sum::<usize>()
                })
                .sum::<usize>()
    }
}
