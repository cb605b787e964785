//! The parents handed to each peer: what its bad-piece reports are checked
//! against. At 10,000 peers this is the scheduler's largest table, so an
//! entry is 4 bytes: a keyed 32-bit fingerprint of (blob, parent). Each
//! peer's entries sit in one vector in two generations, each sorted (a
//! binary search per lookup): the current one takes new hand-outs; once it
//! is [`GENERATION`] old it becomes the previous one, and the previous one
//! is dropped. So a hand-out counts for at least one generation and at
//! most two after it was last handed out. (A `HashMap<u64, Instant>` cost
//! 25–50 bytes per entry; no crate keeps an expiring set of integers per
//! owner in less, so it is written here.)
//!
//! Bounded per peer and in total: a peer at its cap gives up its previous
//! generation, or else a quarter of its current one (a peer can only push
//! out its own entries, never another's; a quarter at once, so a peer
//! calling in a loop costs O(1) per insert, not a scan); a full book first
//! drops expired generations.

use customs_protocol::peer_id::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A full book is swept for expired entries at most this often, so a book
/// full of live entries does not cost a full scan per insert.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Ticks per second of the stored generation starts.
const TICKS_PER_SEC: f64 = 16.0;

/// Whether [`HandoutBook::insert`] kept the entry.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Recorded {
    /// Stored (new, or already there).
    Kept,
    /// Not stored: the book holds its total of live entries and the peer
    /// has none to give up.
    Full,
}

/// One peer's entries: `keys[..split]` the previous generation,
/// `keys[split..]` the current one, each sorted; the current one began at
/// tick `since`.
#[derive(Default)]
struct Owned {
    keys: Vec<u32>,
    split: u32,
    since: u32,
}

impl Owned {
    fn prev(&self) -> &[u32] {
        &self.keys[..self.split as usize]
    }
    fn cur(&self) -> &[u32] {
        &self.keys[self.split as usize..]
    }

    /// Moves the generations on to tick `now`; returns entries dropped.
    fn rotate(&mut self, now: u32, generation: u32) -> usize {
        let age = now.saturating_sub(self.since);
        if age < generation {
            return 0;
        }
        let before = self.keys.len();
        if age >= 2 * generation {
            self.keys.clear();
        } else {
            self.keys.drain(..self.split as usize);
        }
        self.split = self.keys.len() as u32;
        self.since = now;
        if self.keys.capacity() > self.keys.len() + self.keys.len() / 4 + 4 {
            self.keys.shrink_to(self.keys.len() + 4);
        }
        before - self.keys.len()
    }

    fn holds(&self, key: u32, now: u32, generation: u32) -> bool {
        let age = now.saturating_sub(self.since);
        if age >= 2 * generation {
            return false;
        }
        self.cur().binary_search(&key).is_ok()
            || (age < generation && self.prev().binary_search(&key).is_ok())
    }

    /// Drops the previous generation, or else a quarter of the current one.
    fn give_up(&mut self) -> usize {
        let before = self.keys.len();
        if self.split > 0 {
            self.keys.drain(..self.split as usize);
        } else {
            // Fingerprints are keyed hashes: the lowest quarter is as good
            // as a random one.
            let quarter = (self.keys.len() / 4).max(1);
            self.keys.drain(..quarter.min(self.keys.len()));
        }
        self.split = 0;
        before - self.keys.len()
    }

    /// Adds `key` to the current generation; false when it was there.
    fn add(&mut self, key: u32) -> bool {
        let split = self.split as usize;
        let cur = &self.keys[split..];
        let at = match cur.binary_search(&key) {
            Ok(_) => return false,
            Err(at) => split + at,
        };
        if self.keys.len() == self.keys.capacity() {
            // Grow by an eighth, not double: most peers keep a few dozen.
            self.keys.reserve_exact((self.keys.len() / 8).max(4));
        }
        self.keys.insert(at, key);
        true
    }
}

/// See the module docs.
pub(super) struct HandoutBook {
    by_owner: HashMap<PeerId, Owned>,
    len: usize,
    per_owner: usize,
    total: usize,
    /// A generation's length in ticks.
    generation: u32,
    /// Tick 0 (the first instant the book saw; earlier instants are 0).
    epoch: Option<Instant>,
    last_full_sweep: Option<Instant>,
}

impl HandoutBook {
    /// An empty book with these caps; a hand-out counts for at least
    /// `generation` and at most twice that.
    pub(super) fn new(per_owner: usize, total: usize, generation: Duration) -> Self {
        HandoutBook {
            by_owner: HashMap::new(),
            len: 0,
            per_owner: per_owner.max(4),
            total: total.max(1),
            generation: ((generation.as_secs_f64() * TICKS_PER_SEC) as u32).max(1),
            epoch: None,
            last_full_sweep: None,
        }
    }

    fn tick(&mut self, t: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(t);
        Self::tick_from(epoch, t)
    }

    fn tick_from(epoch: Instant, t: Instant) -> u32 {
        let ticks = t.saturating_duration_since(epoch).as_secs_f64() * TICKS_PER_SEC;
        ticks.min(f64::from(u32::MAX)) as u32
    }

    /// Records that `owner` was handed `key` now.
    pub(super) fn insert(&mut self, owner: &PeerId, key: u32, now: Instant) -> Recorded {
        let at = self.tick(now);
        let generation = self.generation;
        if let Some(o) = self.by_owner.get_mut(owner) {
            self.len -= o.rotate(at, generation);
            if o.cur().binary_search(&key).is_ok() {
                return Recorded::Kept;
            }
        }
        let own = self.by_owner.get(owner).map_or(0, |o| o.keys.len());
        if own >= self.per_owner {
            self.give_up(owner);
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
                    return Recorded::Full;
                }
                self.give_up(owner);
            }
        }
        let o = self.by_owner.entry(owner.clone()).or_insert_with(|| Owned {
            since: at,
            ..Owned::default()
        });
        if o.add(key) {
            self.len += 1;
        }
        Recorded::Kept
    }

    fn give_up(&mut self, owner: &PeerId) {
        if let Some(o) = self.by_owner.get_mut(owner) {
            self.len -= o.give_up();
        }
    }

    /// True when `owner` holds a live `key`.
    pub(super) fn contains(&self, owner: &PeerId, key: u32, now: Instant) -> bool {
        let Some(epoch) = self.epoch else {
            return false;
        };
        let now = Self::tick_from(epoch, now);
        self.by_owner
            .get(owner)
            .is_some_and(|o| o.holds(key, now, self.generation))
    }

    /// Drops every expired generation.
    pub(super) fn sweep(&mut self, now: Instant) {
        let now = self.tick(now);
        let generation = self.generation;
        let mut len = 0;
        self.by_owner.retain(|_, o| {
            o.rotate(now, generation);
            len += o.keys.len();
            !o.keys.is_empty()
        });
        self.len = len;
    }

    /// Entries stored (live or not yet swept).
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes (see [`super::footprint`]).
    pub(super) fn heap_bytes(&self) -> usize {
        use super::footprint::{id, table};
        table::<PeerId, Owned>(self.by_owner.capacity())
            + self
                .by_owner
                .iter()
                .map(|(owner, o)| id(owner) + o.keys.capacity() * 4)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> PeerId {
        PeerId::parse(s).unwrap()
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn an_entry_counts_for_one_to_two_generations() {
        let now = Instant::now();
        let mut b = HandoutBook::new(8, 100, 10 * SEC);
        assert!(!b.contains(&id("a"), 7, now), "an empty book holds nothing");
        assert_eq!(b.insert(&id("a"), 7, now), Recorded::Kept);
        assert!(b.contains(&id("a"), 7, now + 19 * SEC));
        assert!(!b.contains(&id("a"), 7, now + 20 * SEC));
        assert!(!b.contains(&id("b"), 7, now), "another peer's entry");
        assert!(!b.contains(&id("a"), 8, now), "another key");
        // Handed out again in a later generation: it counts from then.
        b.insert(&id("a"), 7, now + 15 * SEC);
        assert!(b.contains(&id("a"), 7, now + 29 * SEC));
        // Late in its generation, a hand-out still counts a generation on.
        b.insert(&id("a"), 9, now + 19 * SEC);
        // (its generation began at 15 s: it counts until 35 s).
        assert!(b.contains(&id("a"), 9, now + 34 * SEC));
        assert!(!b.contains(&id("a"), 9, now + 35 * SEC));
        b.sweep(now + 60 * SEC);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn a_peer_at_its_cap_gives_up_its_own_oldest_entries_only() {
        let now = Instant::now();
        let mut b = HandoutBook::new(8, 100, 10 * SEC);
        b.insert(&id("other"), 1, now);
        for k in 0..4u32 {
            b.insert(&id("a"), 1000 + k, now);
        }
        // The next generation: these four are the previous one.
        for k in 0..4u32 {
            b.insert(&id("a"), 2000 + k, now + 11 * SEC);
        }
        b.insert(&id("a"), 5, now + 12 * SEC);
        // At the cap the previous generation went, the current one stayed.
        let t = now + 12 * SEC;
        assert!(!b.contains(&id("a"), 1000, t));
        assert!(b.contains(&id("a"), 2000, t));
        assert!(b.contains(&id("a"), 5, t));
        assert!(b.contains(&id("other"), 1, t), "never another's entry");
        assert_eq!(b.len(), 6);
    }

    #[test]
    fn a_full_book_refuses_a_new_peer_until_entries_expire() {
        let now = Instant::now();
        let mut b = HandoutBook::new(8, 4, 10 * SEC);
        for k in 0..4 {
            b.insert(&id("a"), k, now);
        }
        assert_eq!(b.insert(&id("b"), 1, now), Recorded::Full);
        // "a" may still record: it gives up its own entries.
        assert_eq!(b.insert(&id("a"), 9, now), Recorded::Kept);
        assert!(b.len() <= 4);
        let later = now + 21 * SEC;
        assert_eq!(b.insert(&id("b"), 1, later), Recorded::Kept);
    }

    proptest::proptest! {
        #[test]
        fn the_book_stays_within_its_caps(ops in proptest::collection::vec((0u8..6, proptest::num::u32::ANY, 0u64..3), 0..400)) {
            let now = Instant::now();
            let mut b = HandoutBook::new(16, 40, 2 * SEC);
            let mut t = now;
            for (owner, key, step) in ops {
                t += Duration::from_millis(step * 700);
                let who = id(&format!("p{owner}"));
                if b.insert(&who, key, t) == Recorded::Kept {
                    proptest::prop_assert!(b.contains(&who, key, t));
                }
                proptest::prop_assert!(b.len() <= 40);
                proptest::prop_assert!(b.by_owner.values().all(|o| o.keys.len() <= 16
                    && o.prev().is_sorted() && o.cur().is_sorted()));
                proptest::prop_assert_eq!(b.len(), b.by_owner.values().map(|o| o.keys.len()).sum::<usize>());
            }
        }
    }
}
