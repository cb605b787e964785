//! Expiring entries kept per peer, bounded per peer and in total.
//!
//! The scheduler remembers two things per peer that a hostile peer could
//! otherwise grow without limit: which parents it was handed for which blob
//! (what its bad-piece reports are checked against) and which parents it
//! reported (blocklisted for it alone). Both age out and both are capped, so
//! neither a busy honest fleet nor a peer that calls in a loop turns into
//! unbounded memory.

use customs_protocol::peer_id::PeerId;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A full ledger is swept for expired entries at most this often, so a
/// ledger full of live entries does not cost a full scan per insert.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Entries `K` per owner, each with the instant it expires.
pub(super) struct Ledger<K> {
    by_owner: HashMap<PeerId, HashMap<K, Instant>>,
    len: usize,
    per_owner: usize,
    total: usize,
    last_full_sweep: Option<Instant>,
}

/// Whether [`Ledger::insert`] kept the entry.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Inserted {
    /// Stored (new, or an existing entry's expiry moved).
    Kept {
        /// False when the entry was already there.
        new: bool,
    },
    /// Not stored: the ledger holds `total` live entries and the owner
    /// has none to give up.
    Full,
}

impl<K: Eq + Hash + Clone> Ledger<K> {
    /// An empty ledger with these caps.
    pub(super) fn new(per_owner: usize, total: usize) -> Self {
        Ledger {
            by_owner: HashMap::new(),
            len: 0,
            per_owner: per_owner.max(1),
            total: total.max(1),
            last_full_sweep: None,
        }
    }

    /// Stores `key` for `owner` until `expires`. An owner at its cap gives
    /// up its own oldest entry (a peer can only push out its own entries,
    /// never another's); a full ledger first drops expired entries.
    pub(super) fn insert(
        &mut self,
        owner: &PeerId,
        key: K,
        expires: Instant,
        now: Instant,
    ) -> Inserted {
        if let Some(t) = self.by_owner.get_mut(owner).and_then(|m| m.get_mut(&key)) {
            *t = expires;
            return Inserted::Kept { new: false };
        }
        let own = self.by_owner.get(owner).map_or(0, HashMap::len);
        if own >= self.per_owner {
            self.drop_oldest_of(owner, now);
        } else if self.len >= self.total {
            if self
                .last_full_sweep
                .is_none_or(|t| now.duration_since(t) >= FULL_SWEEP_EVERY)
            {
                self.last_full_sweep = Some(now);
                self.sweep(now);
            }
            if self.len >= self.total {
                if own == 0 {
                    return Inserted::Full;
                }
                self.drop_oldest_of(owner, now);
            }
        }
        self.by_owner
            .entry(owner.clone())
            .or_default()
            .insert(key, expires);
        self.len += 1;
        Inserted::Kept { new: true }
    }

    /// Drops the owner's expired entries, or else the one expiring first.
    fn drop_oldest_of(&mut self, owner: &PeerId, now: Instant) {
        let Some(m) = self.by_owner.get_mut(owner) else {
            return;
        };
        let before = m.len();
        m.retain(|_, t| *t > now);
        if m.len() == before
            && let Some(oldest) = m.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            m.remove(&oldest);
        }
        self.len -= before - m.len();
    }

    /// True when `owner` holds a live `key`.
    pub(super) fn contains(&self, owner: &PeerId, key: &K, now: Instant) -> bool {
        self.by_owner
            .get(owner)
            .and_then(|m| m.get(key))
            .is_some_and(|t| *t > now)
    }

    /// Drops every expired entry.
    pub(super) fn sweep(&mut self, now: Instant) {
        let mut len = 0;
        self.by_owner.retain(|_, m| {
            m.retain(|_, t| *t > now);
            len += m.len();
            !m.is_empty()
        });
        self.len = len;
    }

    /// Entries stored (live or not yet swept).
    /// Each owner's entries (for the footprint).
    pub(super) fn owners(&self) -> impl Iterator<Item = (&PeerId, &HashMap<K, Instant>)> {
        self.by_owner.iter()
    }

    /// Capacity of the owner table (for the footprint).
    pub(super) fn by_owner_capacity(&self) -> usize {
        self.by_owner.capacity()
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Entries stored for `owner`.
    #[cfg(test)]
    pub(super) fn len_of(&self, owner: &PeerId) -> usize {
        self.by_owner.get(owner).map_or(0, HashMap::len)
    }
}
