//! Which parents one download still tries, and when it gives up.
//!
//! A peer that fails to deliver a piece is excluded for the rest of the
//! download (others hold the same pieces, and the seed holds all). The seed
//! is the parent of last resort, but it is excluded like any other when it
//! keeps failing: after [`SEED_FAILURE_LIMIT`] failures in a row (a 404
//! counts: it means the seed does not hold the piece) it is left alone for
//! a backoff that doubles with each further failure, instead of being asked
//! again at once, forever. When no piece at all is verified for
//! [`NO_PROGRESS`], the download fails with the reasons, so containerd gets
//! an error instead of a request that never ends.

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Failures in a row after which the seed is left alone for a while: one
/// or two can be bad luck (a timeout, a restart), three mean it cannot
/// serve this blob now.
pub const SEED_FAILURE_LIMIT: u32 = 3;
/// The first pause of a failing seed; it doubles with each further failure.
pub const SEED_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// The longest pause: short enough that a seed that recovers is asked
/// again well within [`NO_PROGRESS`] (1, 2, 4, 8, 16 s: five pauses fit).
pub const SEED_BACKOFF_MAX: Duration = Duration::from_secs(16);
/// How long a download may go without a single verified piece before it
/// fails (never less than one piece's own deadline at the minimum rate).
/// An honest swarm verifies a piece every few hundred milliseconds; a
/// minute without one means no parent can serve.
pub const NO_PROGRESS: Duration = Duration::from_secs(60);

/// What a failure did to its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may be asked again.
    Retry,
    /// A peer: not asked again in this download.
    Excluded,
    /// The seed: not asked again for this long.
    Paused(Duration),
}

#[derive(Debug, Default)]
struct Record {
    in_a_row: u32,
    paused_until: Option<Instant>,
    last_error: String,
}

/// Failure counts of one download's parents; see the module docs.
#[derive(Debug)]
pub struct Health {
    parents: HashMap<String, Record>,
    excluded: HashSet<String>,
    last_progress: Instant,
    limit: Duration,
}

impl Health {
    /// A download starting `now` that fails after `limit` without progress.
    pub fn new(now: Instant, limit: Duration) -> Self {
        Health {
            parents: HashMap::new(),
            excluded: HashSet::new(),
            last_progress: now,
            limit,
        }
    }

    /// A piece from `parent` was verified.
    pub fn success(&mut self, parent: &str, now: Instant) {
        self.parents.remove(parent);
        self.last_progress = now;
    }

    /// The gateway signed more pieces: the clock for a stall restarts.
    pub fn progressed(&mut self, now: Instant) {
        self.last_progress = now;
    }

    /// A transfer from `parent` failed (or the parent sent a bad piece).
    pub fn failure(&mut self, parent: &str, seed: bool, detail: &str, now: Instant) -> Verdict {
        let r = self.parents.entry(parent.to_owned()).or_default();
        r.in_a_row += 1;
        r.last_error = detail.chars().take(200).collect();
        if !seed {
            self.excluded.insert(parent.to_owned());
            return Verdict::Excluded;
        }
        if r.in_a_row < SEED_FAILURE_LIMIT {
            return Verdict::Retry;
        }
        let doublings = (r.in_a_row - SEED_FAILURE_LIMIT).min(16);
        let pause = SEED_BACKOFF_BASE
            .saturating_mul(1 << doublings)
            .min(SEED_BACKOFF_MAX);
        r.paused_until = Some(now + pause);
        Verdict::Paused(pause)
    }

    /// A peer that served a bad piece: never asked again in this download.
    pub fn exclude(&mut self, parent: &str) {
        self.excluded.insert(parent.to_owned());
    }

    /// Parents excluded for good (not merely paused).
    pub fn excluded(&self) -> &HashSet<String> {
        &self.excluded
    }

    /// Parents not to ask now: excluded peers and paused seeds.
    pub fn unusable(&self, now: Instant) -> HashSet<String> {
        let paused = self
            .parents
            .iter()
            .filter(|(_, r)| r.paused_until.is_some_and(|t| t > now))
            .map(|(p, _)| p.clone());
        self.excluded.iter().cloned().chain(paused).collect()
    }

    /// When no piece was verified for the limit: why the download fails.
    pub fn stalled(&self, now: Instant) -> Option<String> {
        if now.duration_since(self.last_progress) < self.limit {
            return None;
        }
        let mut errors: Vec<String> = self
            .parents
            .iter()
            .map(|(p, r)| format!("{p}: {} ({} in a row)", r.last_error, r.in_a_row))
            .collect();
        errors.sort();
        let why = if errors.is_empty() {
            "no parent offered the missing pieces".to_owned()
        } else {
            errors.join("; ")
        };
        Some(format!(
            "no piece verified for {} s: {why}",
            self.limit.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_seed_is_paused_for_longer_each_time_and_recovers() {
        let t0 = Instant::now();
        let mut h = Health::new(t0, NO_PROGRESS);
        assert_eq!(h.failure("gw", true, "404", t0), Verdict::Retry);
        assert_eq!(h.failure("gw", true, "404", t0), Verdict::Retry);
        assert!(h.unusable(t0).is_empty());
        assert_eq!(
            h.failure("gw", true, "404", t0),
            Verdict::Paused(Duration::from_secs(1))
        );
        assert!(h.unusable(t0).contains("gw"));
        let t1 = t0 + Duration::from_secs(1);
        assert!(h.unusable(t1).is_empty(), "the pause ends");
        assert_eq!(
            h.failure("gw", true, "404", t1),
            Verdict::Paused(Duration::from_secs(2))
        );
        for _ in 0..10 {
            h.failure("gw", true, "404", t1);
        }
        assert_eq!(
            h.failure("gw", true, "404", t1),
            Verdict::Paused(SEED_BACKOFF_MAX)
        );
        // One delivered piece resets it.
        h.success("gw", t1);
        assert_eq!(h.failure("gw", true, "timeout", t1), Verdict::Retry);
    }

    #[test]
    fn a_failing_peer_is_excluded_at_once() {
        let t0 = Instant::now();
        let mut h = Health::new(t0, NO_PROGRESS);
        assert_eq!(h.failure("p2", false, "reset", t0), Verdict::Excluded);
        assert!(h.unusable(t0 + Duration::from_secs(3600)).contains("p2"));
        assert!(h.excluded().contains("p2"));
    }

    #[test]
    fn no_progress_for_the_limit_fails_with_the_reasons() {
        let t0 = Instant::now();
        let mut h = Health::new(t0, NO_PROGRESS);
        h.failure("gw", true, "parent answered 404 Not Found", t0);
        assert!(h.stalled(t0 + Duration::from_secs(59)).is_none());
        let why = h.stalled(t0 + NO_PROGRESS).unwrap();
        assert!(why.contains("no piece verified for 60 s"), "{why}");
        assert!(why.contains("gw: parent answered 404"), "{why}");
        // Progress restarts the clock.
        h.success("p2", t0 + NO_PROGRESS);
        assert!(
            h.stalled(t0 + NO_PROGRESS * 2 - Duration::from_secs(1))
                .is_none()
        );
    }
}
