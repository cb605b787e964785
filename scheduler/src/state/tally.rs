//! Bad-piece reports counted between two aggregate audit events.
//!
//! A report is not a durable write of its own: any peer can send them in a
//! loop. They are counted here per (parent, blob), ignored ones per
//! reporter, and the service writes one `bad_piece` event per interval
//! with the counts. Only a parent becoming blocklisted for every peer is
//! written at once (at most once per peer per blocklisting period).

use customs_protocol::Digest;
use customs_protocol::peer_id::PeerId;
use serde::Serialize;
use std::collections::HashMap;

/// Most distinct (parent, blob) pairs and reporters counted per interval;
/// further ones are summed into `other_*`, so the tally's memory and the
/// event's size stay bounded whatever peers send.
pub const MAX_TALLY_ENTRIES: usize = 1000;

/// Why a bad-piece report was not counted against the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoredReport {
    /// No admitted task for the blob.
    UnknownTask,
    /// The piece index is outside the task's pieces.
    PieceOutOfRange,
    /// The scheduler did not hand this parent to this reporter for this
    /// blob within the hand-out lifetime: no transfer it arranged happened.
    NotHandedOut,
}

/// Counts since the last aggregate event.
#[derive(Default)]
pub(super) struct Tally {
    counted: HashMap<(PeerId, Digest), u64>,
    other_counted: u64,
    ignored: HashMap<PeerId, IgnoredCounts>,
    other_ignored: IgnoredCounts,
}

/// Ignored reports by reason.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IgnoredCounts {
    /// See [`IgnoredReport::UnknownTask`].
    pub unknown_task: u64,
    /// See [`IgnoredReport::PieceOutOfRange`].
    pub piece_out_of_range: u64,
    /// See [`IgnoredReport::NotHandedOut`].
    pub not_handed_out: u64,
}

impl IgnoredCounts {
    fn add(&mut self, why: IgnoredReport) {
        let c = match why {
            IgnoredReport::UnknownTask => &mut self.unknown_task,
            IgnoredReport::PieceOutOfRange => &mut self.piece_out_of_range,
            IgnoredReport::NotHandedOut => &mut self.not_handed_out,
        };
        *c = c.saturating_add(1);
    }

    fn total(&self) -> u64 {
        self.unknown_task
            .saturating_add(self.piece_out_of_range)
            .saturating_add(self.not_handed_out)
    }
}

/// Reports counted against one parent for one blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountedReports {
    /// The parent reported.
    pub parent: PeerId,
    /// The blob its bad pieces belonged to.
    pub blob: Digest,
    /// How many reports.
    pub reports: u64,
}

/// Reports from one reporter that did not count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IgnoredByReporter {
    /// Who sent them.
    pub reporter: PeerId,
    /// How many, by reason.
    #[serde(flatten)]
    pub counts: IgnoredCounts,
}

/// The body of one `bad_piece` aggregate audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadPieceSummary {
    /// Counted reports per (parent, blob), most first.
    pub counted: Vec<CountedReports>,
    /// Counted reports beyond [`MAX_TALLY_ENTRIES`] pairs.
    pub other_counted: u64,
    /// Ignored reports per reporter, most first.
    pub ignored: Vec<IgnoredByReporter>,
    /// Ignored reports beyond [`MAX_TALLY_ENTRIES`] reporters.
    pub other_ignored: IgnoredCounts,
}

impl Tally {
    /// Heap bytes (see `footprint`).
    pub(super) fn heap_bytes(&self) -> usize {
        use super::footprint::{id, table};
        table::<(PeerId, Digest), u64>(self.counted.capacity())
            + self
                .counted
                .keys()
                .map(|(p, d)| id(p) + d.hex().len())
                .sum::<usize>()
            + table::<PeerId, IgnoredCounts>(self.ignored.capacity())
            + self.ignored.keys().map(id).sum::<usize>()
    }

    pub(super) fn count(&mut self, parent: &PeerId, blob: &Digest) {
        let key = (parent.clone(), blob.clone());
        if let Some(c) = self.counted.get_mut(&key) {
            *c = c.saturating_add(1);
        } else if self.counted.len() < MAX_TALLY_ENTRIES {
            self.counted.insert(key, 1);
        } else {
            self.other_counted = self.other_counted.saturating_add(1);
        }
    }

    pub(super) fn ignore(&mut self, reporter: &PeerId, why: IgnoredReport) {
        if let Some(c) = self.ignored.get_mut(reporter) {
            c.add(why);
        } else if self.ignored.len() < MAX_TALLY_ENTRIES {
            self.ignored.entry(reporter.clone()).or_default().add(why);
        } else {
            self.other_ignored.add(why);
        }
    }

    /// The counts so far (None when there were none), starting afresh.
    pub(super) fn take(&mut self) -> Option<BadPieceSummary> {
        let t = std::mem::take(self);
        if t.counted.is_empty() && t.ignored.is_empty() && t.other_ignored.total() == 0 {
            return None;
        }
        let mut counted: Vec<CountedReports> = t
            .counted
            .into_iter()
            .map(|((parent, blob), reports)| CountedReports {
                parent,
                blob,
                reports,
            })
            .collect();
        counted.sort_by(|a, b| {
            b.reports
                .cmp(&a.reports)
                .then_with(|| a.parent.cmp(&b.parent))
        });
        let mut ignored: Vec<IgnoredByReporter> = t
            .ignored
            .into_iter()
            .map(|(reporter, counts)| IgnoredByReporter { reporter, counts })
            .collect();
        ignored.sort_by(|a, b| {
            b.counts
                .total()
                .cmp(&a.counts.total())
                .then_with(|| a.reporter.cmp(&b.reporter))
        });
        Some(BadPieceSummary {
            counted,
            other_counted: t.other_counted,
            ignored,
            other_ignored: t.other_ignored,
        })
    }
}
