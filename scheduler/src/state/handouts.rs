//! The parents handed to each peer: what its bad-piece reports are checked
//! against. At 10,000 peers this is the scheduler's largest table, so an
//! entry is 8 bytes: a keyed 32-bit fingerprint of (blob, parent) and its
//! expiry in ticks of 1/16 s, kept per peer in a vector sorted by
//! fingerprint (a binary search per lookup). A `HashMap<u64, Instant>`
//! cost 25–50 bytes per entry; no crate keeps a bounded, expiring set of
//! integers per owner in less, so it is written here.
//!
//! Bounded per peer and in total: a peer at its cap gives up its own
//! oldest quarter (a peer can only push out its own entries, never
//! another's; a quarter at once so a peer calling in a loop costs O(1) per
//! insert, not a scan), a full book first drops expired entries.

use customs_protocol::peer_id::PeerId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A full book is swept for expired entries at most this often, so a book
/// full of live entries does not cost a full scan per insert.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Ticks per second of the stored expiries.
const TICKS_PER_SEC: f64 = 16.0;

/// Whether [`HandoutBook::insert`] kept the entry.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(super) enum Recorded {
    /// Stored (new, or an existing entry's expiry moved).
    Kept,
    /// Not stored: the book holds its total of live entries and the peer
    /// has none to give up.
    Full,
}

/// See the module docs.
pub(super) struct HandoutBook {
    /// Per peer: (fingerprint, expiry tick), sorted by fingerprint.
    by_owner: HashMap<PeerId, Vec<(u32, u32)>>,
    len: usize,
    per_owner: usize,
    total: usize,
    /// Tick 0 (the first instant the book saw; earlier instants are 0).
    epoch: Option<Instant>,
    last_full_sweep: Option<Instant>,
}

impl HandoutBook {
    /// An empty book with these caps.
    pub(super) fn new(per_owner: usize, total: usize) -> Self {
        HandoutBook {
            by_owner: HashMap::new(),
            len: 0,
            per_owner: per_owner.max(4),
            total: total.max(1),
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

    /// Records `key` for `owner` until `expires`.
    pub(super) fn insert(
        &mut self,
        owner: &PeerId,
        key: u32,
        expires: Instant,
        now: Instant,
    ) -> Recorded {
        let at = self.tick(now);
        let until = self.tick(expires);
        if let Some(book) = self.by_owner.get_mut(owner)
            && let Ok(k) = book.binary_search_by_key(&key, |e| e.0)
        {
            book[k].1 = book[k].1.max(until);
            return Recorded::Kept;
        }
        let own = self.by_owner.get(owner).map_or(0, Vec::len);
        if own >= self.per_owner {
            self.drop_oldest_of(owner, at);
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
                self.drop_oldest_of(owner, at);
            }
        }
        let book = self.by_owner.entry(owner.clone()).or_default();
        if book.len() == book.capacity() {
            // Grow by a quarter, not double: most peers keep a few dozen.
            book.reserve_exact((book.len() / 4).max(4));
        }
        let k = book.partition_point(|e| e.0 < key);
        book.insert(k, (key, until));
        self.len += 1;
        Recorded::Kept
    }

    /// Drops the owner's expired entries, or else its oldest quarter.
    fn drop_oldest_of(&mut self, owner: &PeerId, now: u32) {
        let Some(book) = self.by_owner.get_mut(owner) else {
            return;
        };
        let before = book.len();
        book.retain(|e| e.1 > now);
        if book.len() == before && !book.is_empty() {
            let mut expiries: Vec<u32> = book.iter().map(|e| e.1).collect();
            let quarter = (expiries.len() / 4).max(1);
            let (_, cut, _) = expiries.select_nth_unstable(quarter - 1);
            // Everything older than the cut goes, then entries at the cut
            // until a quarter is gone.
            let cut = *cut;
            let mut spare = quarter - book.iter().filter(|e| e.1 < cut).count();
            book.retain(|e| {
                if e.1 < cut {
                    return false;
                }
                if e.1 == cut && spare > 0 {
                    spare -= 1;
                    return false;
                }
                true
            });
        }
        self.len -= before - book.len();
    }

    /// True when `owner` holds a live `key`.
    pub(super) fn contains(&self, owner: &PeerId, key: u32, now: Instant) -> bool {
        let Some(epoch) = self.epoch else {
            return false;
        };
        let now = Self::tick_from(epoch, now);
        self.by_owner.get(owner).is_some_and(|book| {
            book.binary_search_by_key(&key, |e| e.0)
                .is_ok_and(|k| book[k].1 > now)
        })
    }

    /// Drops every expired entry.
    pub(super) fn sweep(&mut self, now: Instant) {
        let now = self.tick(now);
        let mut len = 0;
        self.by_owner.retain(|_, book| {
            book.retain(|e| e.1 > now);
            len += book.len();
            !book.is_empty()
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
        table::<PeerId, Vec<(u32, u32)>>(self.by_owner.capacity())
            + self
                .by_owner
                .iter()
                .map(|(owner, book)| id(owner) + book.capacity() * 8)
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
    fn an_entry_counts_until_it_expires() {
        let now = Instant::now();
        let mut b = HandoutBook::new(8, 100);
        assert!(!b.contains(&id("a"), 7, now), "an empty book holds nothing");
        assert_eq!(b.insert(&id("a"), 7, now + 10 * SEC, now), Recorded::Kept);
        assert!(b.contains(&id("a"), 7, now + 9 * SEC));
        assert!(!b.contains(&id("a"), 7, now + 10 * SEC));
        assert!(!b.contains(&id("b"), 7, now), "another peer's entry");
        assert!(!b.contains(&id("a"), 8, now), "another key");
        // Recording again moves the expiry, never back.
        b.insert(&id("a"), 7, now + 20 * SEC, now);
        b.insert(&id("a"), 7, now + 5 * SEC, now);
        assert!(b.contains(&id("a"), 7, now + 19 * SEC));
        assert_eq!(b.len(), 1);
        b.sweep(now + 20 * SEC);
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn a_peer_at_its_cap_gives_up_its_own_oldest_entries_only() {
        let now = Instant::now();
        let mut b = HandoutBook::new(8, 100);
        b.insert(&id("other"), 1, now + 100 * SEC, now);
        for k in 0..8u32 {
            b.insert(&id("a"), 1000 - k, now + SEC * (10 + k), now);
        }
        b.insert(&id("a"), 5, now + 50 * SEC, now);
        // The oldest quarter (two entries) went; the newest stayed.
        assert!(!b.contains(&id("a"), 1000, now));
        assert!(!b.contains(&id("a"), 999, now));
        assert!(b.contains(&id("a"), 998, now));
        assert!(b.contains(&id("a"), 5, now));
        assert!(b.contains(&id("other"), 1, now), "never another's entry");
        assert_eq!(b.len(), 8);
    }

    #[test]
    fn a_full_book_refuses_a_new_peer_until_entries_expire() {
        let now = Instant::now();
        let mut b = HandoutBook::new(8, 4);
        for k in 0..4 {
            b.insert(&id("a"), k, now + 10 * SEC, now);
        }
        assert_eq!(b.insert(&id("b"), 1, now + 10 * SEC, now), Recorded::Full);
        // "a" may still record: it gives up its own entries.
        assert_eq!(b.insert(&id("a"), 9, now + 10 * SEC, now), Recorded::Kept);
        assert!(b.len() <= 4);
        let later = now + 11 * SEC;
        assert_eq!(
            b.insert(&id("b"), 1, later + 10 * SEC, later),
            Recorded::Kept
        );
    }

    proptest::proptest! {
        #[test]
        fn the_book_stays_within_its_caps(ops in proptest::collection::vec((0u8..6, proptest::num::u32::ANY, 0u64..40), 0..400)) {
            let now = Instant::now();
            let mut b = HandoutBook::new(16, 40);
            for (step, (owner, key, at)) in ops.into_iter().enumerate() {
                let t = now + Duration::from_millis(step as u64 * 100);
                let who = id(&format!("p{owner}"));
                if b.insert(&who, key, t + Duration::from_secs(at), t) == Recorded::Kept && at > 0 {
                    proptest::prop_assert!(b.contains(&who, key, t));
                }
                proptest::prop_assert!(b.len() <= 40);
                proptest::prop_assert!(b.by_owner.values().all(|v| v.len() <= 16 && v.is_sorted_by_key(|e| e.0)));
                proptest::prop_assert_eq!(b.len(), b.by_owner.values().map(Vec::len).sum::<usize>());
            }
        }
    }
}
