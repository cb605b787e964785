//! The newest policy revision this node has seen from its gateway.
//!
//! Every gateway response carries the revision it decides under
//! ([`customs_protocol::headers::POLICY_REVISION`]); the peer also polls it.
//! An admission recorded under any other revision is not current: the next
//! request for it is checked with the gateway again. The revision is kept in
//! the node's index so that after a restart with the gateway unreachable the
//! node still knows which admissions it may serve fail-static.

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

/// See the module docs.
pub struct RevisionTracker {
    latest: RwLock<String>,
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
        Arc::new(RevisionTracker {
            latest: RwLock::new(kept.unwrap_or_default()),
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
            .clone()
    }

    /// Learns from a gateway response's headers.
    pub fn observe(&self, headers: &http::HeaderMap) {
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
            return;
        };
        self.set(rev);
    }

    /// Records `rev` as the newest revision.
    pub fn set(&self, rev: &str) {
        {
            let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
            if *latest == rev {
                return;
            }
            tracing::info!(from = %*latest, to = rev, "gateway policy revision changed: admissions are re-checked");
            *latest = rev.to_owned();
        }
        if let Err(e) = self
            .store
            .index()
            .put(Table::NodeState, REVISION_KEY, &rev.to_owned())
        {
            tracing::warn!(error = %e, "could not keep the policy revision");
        }
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
            RevisionTracker::load(store).latest(),
            "r1",
            "kept across restarts"
        );
    }
}
