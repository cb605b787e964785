//! The peers holding pieces of one task, kept so that choosing parents
//! costs the same at 10 peers and at 10,000: holders sit in a vector (a
//! random sample is O(1) per draw), indexed by id and by zone, with the
//! union of their pieces kept up to date (seed hints ask "does anyone hold
//! piece i?" once per piece). Removal is rare (a forgotten peer, a
//! restarted fetch) and rebuilds the indexes.

use customs_protocol::PieceBitmap;
use customs_protocol::peer_id::PeerId;
use std::collections::HashMap;

/// See the module docs.
#[derive(Default)]
pub(super) struct Holders {
    list: Vec<(PeerId, PieceBitmap)>,
    index: HashMap<PeerId, u32>,
    /// Positions in `list` per zone label (holders with a zone only).
    by_zone: HashMap<String, Vec<u32>>,
    /// Pieces at least one holder holds, per zone ("" = everyone).
    any: HashMap<String, PieceBitmap>,
}

impl Holders {
    /// How many holders.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// Records that `peer` (of `zone`) holds `pieces` (all `< n`).
    pub(super) fn add(&mut self, peer: &PeerId, zone: &str, pieces: impl Iterator<Item = u32>) {
        let at = match self.index.get(peer) {
            Some(at) => *at as usize,
            None => {
                let at = self.list.len();
                self.list.push((peer.clone(), PieceBitmap::new()));
                self.index.insert(peer.clone(), at as u32);
                if !zone.is_empty() {
                    self.by_zone
                        .entry(zone.to_owned())
                        .or_default()
                        .push(at as u32);
                }
                at
            }
        };
        let bits = &mut self.list[at].1;
        let mut added = Vec::new();
        for p in pieces {
            if !bits.has(p) {
                bits.set(p);
                added.push(p);
            }
        }
        if added.is_empty() {
            // A report repeats the whole held set: usually nothing is new.
            return;
        }
        let everyone = self.any.entry(String::new()).or_default();
        for p in &added {
            everyone.set(*p);
        }
        if !zone.is_empty() {
            if !self.any.contains_key(zone) {
                self.any.insert(zone.to_owned(), PieceBitmap::new());
            }
            if let Some(local) = self.any.get_mut(zone) {
                for p in &added {
                    local.set(*p);
                }
            }
        }
    }

    /// The pieces anyone (in `zone`, or anywhere for "") holds; `None`
    /// when nobody there holds any. One lookup for many pieces.
    pub(super) fn held_in(&self, zone: &str) -> Option<&PieceBitmap> {
        self.any.get(zone)
    }

    /// The pieces the holders (of `zone`, or all for "") that `keep`
    /// accepts hold between them.
    pub(super) fn union_where(&self, zone: &str, keep: impl Fn(&PeerId) -> bool) -> PieceBitmap {
        let mut out = PieceBitmap::new();
        let mut add = |(id, bits): &(PeerId, PieceBitmap)| {
            if keep(id) {
                out.union_with(bits);
            }
        };
        if zone.is_empty() {
            self.list.iter().for_each(&mut add);
        } else {
            for at in self.in_zone(zone) {
                if let Some(h) = self.list.get(*at as usize) {
                    add(h);
                }
            }
        }
        out
    }

    /// What `peer` holds, if it holds anything.
    pub(super) fn of(&self, peer: &PeerId) -> Option<&PieceBitmap> {
        self.index.get(peer).map(|at| &self.list[*at as usize].1)
    }

    /// The holder at `at` (a sampled position).
    pub(super) fn at(&self, at: u32) -> Option<(&PeerId, &PieceBitmap)> {
        self.list.get(at as usize).map(|(k, v)| (k, v))
    }

    /// Positions of the holders in `zone`.
    pub(super) fn in_zone(&self, zone: &str) -> &[u32] {
        self.by_zone.get(zone).map_or(&[], Vec::as_slice)
    }

    /// Keeps the holders `keep` accepts, with `zone_of` their zone now.
    pub(super) fn retain(
        &mut self,
        keep: impl Fn(&PeerId) -> bool,
        zone_of: impl Fn(&PeerId) -> String,
    ) {
        let before = self.list.len();
        let list: Vec<(PeerId, PieceBitmap)> =
            self.list.drain(..).filter(|(k, _)| keep(k)).collect();
        if list.len() == before {
            self.list = list;
            return;
        }
        *self = Holders::default();
        for (id, bits) in list {
            let n = bits.as_bytes().len() as u32 * 8;
            self.add(&id, &zone_of(&id), (0..n).filter(|i| bits.has(*i)));
        }
    }

    /// Forgets every holder.
    pub(super) fn clear(&mut self) {
        *self = Holders::default();
    }

    /// Heap bytes (see [`super::footprint`]).
    pub(super) fn heap_bytes(&self) -> usize {
        use super::footprint::{id, table};
        self.list.capacity() * std::mem::size_of::<(PeerId, PieceBitmap)>()
            + self
                .list
                .iter()
                .map(|(k, v)| id(k) + v.as_bytes().len())
                .sum::<usize>()
            + table::<PeerId, u32>(self.index.capacity())
            + self.index.keys().map(id).sum::<usize>()
            + table::<String, Vec<u32>>(self.by_zone.capacity())
            + self
                .by_zone
                .iter()
                .map(|(z, v)| z.len() + v.capacity() * 4)
                .sum::<usize>()
            + self
                .any
                .iter()
                .map(|(z, b)| z.len() + b.as_bytes().len() + 64)
                .sum::<usize>()
    }
}
