//! The newest policy revision this node has seen from its gateway.
//!
//! Every gateway response carries the revision it decides under
//! ([`customs_protocol::headers::POLICY_REVISION`]); the peer also polls it.
//! An admission recorded under any other revision is not current: the next
//! request for it is checked with the gateway again. The revision is kept in
//! the node's index so that after a restart with the gateway unreachable the
//! node still knows which admissions it may serve fail-static.
//!
//! A node that talks to several gateways (a fleet) orders revisions by the
//! time their commit was made ([`customs_protocol::headers::POLICY_REVISION_TIME`]):
//! a gateway answering under an older revision than the newest seen is
//! lagging behind the policy repository, and its answers are not taken (it
//! could otherwise re-admit an image a newer revision revoked).

use customs_store::{BlobStore, Table};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the revision is polled when the gateway does not advertise its
/// own policy poll period (a gateway without a policy source).
pub const DEFAULT_REVISION_POLL: Duration = Duration::from_secs(5);
/// The fastest revision poll, whatever the gateway advertises.
pub const MIN_REVISION_POLL: Duration = Duration::from_millis(250);

const REVISION_KEY: &str = "policy_revision";
const REVISION_TIME_KEY: &str = "policy_revision_time";

/// What one gateway answer says about the revision it was made under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The newest revision (or one that is not older): taken.
    Current,
    /// A revision older than the newest seen: the answer is not taken.
    Stale,
}

/// See the module docs.
pub struct RevisionTracker {
    /// The newest revision and when it was made (0: unknown).
    latest: RwLock<(String, u64)>,
    /// The gateway's policy poll period in ms (0: not advertised).
    gateway_poll_ms: AtomicU64,
    store: Arc<BlobStore>,
}

impl std::fmt::Debug for RevisionTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevisionTracker")
            .field("latest", &self.latest())
            .finish_non_exhaustive()
    }
}

impl RevisionTracker {
    /// The tracker, starting from the revision kept in `store` (if any).
    pub fn load(store: Arc<BlobStore>) -> Arc<Self> {
        let kept: Option<String> = store
            .index()
            .get(Table::NodeState, REVISION_KEY)
            .ok()
            .flatten();
        let kept_time: Option<u64> = store
            .index()
            .get(Table::NodeState, REVISION_TIME_KEY)
            .ok()
            .flatten();
        Arc::new(RevisionTracker {
            latest: RwLock::new((kept.unwrap_or_default(), kept_time.unwrap_or(0))),
            gateway_poll_ms: AtomicU64::new(0),
            store,
        })
    }

    /// The newest revision seen; empty when none was ever seen (then no
    /// admission is current).
    pub fn latest(&self) -> String {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// Learns from a gateway response's headers; says whether the answer
    /// was made under a revision older than the newest seen.
    pub fn observe(&self, headers: &http::HeaderMap) -> Observed {
        if let Some(ms) = headers
            .get(customs_protocol::headers::POLICY_POLL_MS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.gateway_poll_ms.store(ms, Ordering::Relaxed);
        }
        let Some(rev) = headers
            .get(customs_protocol::headers::POLICY_REVISION)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 256)
        else {
            return Observed::Current;
        };
        let time = headers
            .get(customs_protocol::headers::POLICY_REVISION_TIME)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        self.set_at(rev, time)
    }

    /// Records `rev` as the newest revision (no time known).
    pub fn set(&self, rev: &str) {
        self.set_at(rev, 0);
    }

    /// Records `rev`, made at `time`, unless it is older than the newest
    /// revision seen (both times known and `time` earlier).
    pub fn set_at(&self, rev: &str, time: u64) -> Observed {
        {
            let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
            if latest.0 == rev {
                if time > latest.1 {
                    latest.1 = time;
                }
                return Observed::Current;
            }
            if time > 0 && latest.1 > 0 && time < latest.1 {
                tracing::warn!(newest = %latest.0, stale = rev, "a gateway answers under an older policy revision than the newest seen; its answers are not taken");
                return Observed::Stale;
            }
            tracing::info!(from = %latest.0, to = rev, "gateway policy revision changed: admissions are re-checked");
            *latest = (rev.to_owned(), time);
        }
        let index = self.store.index();
        if let Err(e) = index
            .put(Table::NodeState, REVISION_KEY, &rev.to_owned())
            .and_then(|()| index.put(Table::NodeState, REVISION_TIME_KEY, &time))
        {
            tracing::warn!(error = %e, "could not keep the policy revision");
        }
        Observed::Current
    }

    /// How often to poll: half the gateway's policy poll period (so a new
    /// revision reaches this node within two of those periods), else
    /// [`DEFAULT_REVISION_POLL`].
    pub fn poll_period(&self) -> Duration {
        match self.gateway_poll_ms.load(Ordering::Relaxed) {
            0 => DEFAULT_REVISION_POLL,
            ms => (Duration::from_millis(ms) / 2).clamp(MIN_REVISION_POLL, DEFAULT_REVISION_POLL),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_are_learned_kept_and_polled_at_half_the_gateway_period() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(customs_store::StoreConfig {
            root: dir.path().to_path_buf(),
            max_bytes: u64::MAX,
        })
        .unwrap();
        let t = RevisionTracker::load(store.clone());
        assert_eq!(t.latest(), "");
        assert_eq!(t.poll_period(), DEFAULT_REVISION_POLL);
        let mut h = http::HeaderMap::new();
        h.insert(
            customs_protocol::headers::POLICY_REVISION,
            "r1".parse().unwrap(),
        );
        h.insert(
            customs_protocol::headers::POLICY_POLL_MS,
            "2000".parse().unwrap(),
        );
        t.observe(&h);
        assert_eq!(t.latest(), "r1");
        assert_eq!(t.poll_period(), Duration::from_secs(1));
        drop(t);
        assert_eq!(
            RevisionTracker::load(store.clone()).latest(),
            "r1",
            "kept across restarts"
        );
    }

    #[test]
    fn a_lagging_gateways_older_revision_is_never_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(customs_store::StoreConfig {
            root: dir.path().to_path_buf(),
            max_bytes: u64::MAX,
        })
        .unwrap();
        let t = RevisionTracker::load(store.clone());
        let answer = |rev: &str, time: Option<u64>| {
            let mut h = http::HeaderMap::new();
            h.insert(
                customs_protocol::headers::POLICY_REVISION,
                rev.parse().unwrap(),
            );
            if let Some(time) = time {
                h.insert(
                    customs_protocol::headers::POLICY_REVISION_TIME,
                    time.to_string().parse().unwrap(),
                );
            }
            h
        };
        assert_eq!(t.observe(&answer("old", Some(100))), Observed::Current);
        assert_eq!(t.observe(&answer("new", Some(200))), Observed::Current);
        // Gateway B has not pulled the revoking commit yet.
        assert_eq!(t.observe(&answer("old", Some(100))), Observed::Stale);
        assert_eq!(t.latest(), "new");
        // Also after a restart.
        drop(t);
        let t = RevisionTracker::load(store);
        assert_eq!(t.observe(&answer("old", Some(100))), Observed::Stale);
        // A newer one is taken; without times (directory sources) the last
        // one seen wins, as with one gateway.
        assert_eq!(t.observe(&answer("newer", Some(300))), Observed::Current);
        assert_eq!(t.observe(&answer("dir-a", None)), Observed::Current);
        assert_eq!(t.latest(), "dir-a");
    }
}
