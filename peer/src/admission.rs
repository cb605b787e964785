//! The node as a policy enforcement point.
//!
//! Whatever the node has on disk, it serves a manifest (and the blobs it
//! references) for a (registry, repository) only under a current admission
//! of that (registry, repository, digest) by its gateway, carrying the
//! gateway's policy revision. The mirror keeps each admission for at most
//! the admission TTL and only while its revision is the newest the node has
//! seen ([`RevisionTracker`]); then it asks the gateway again. A gateway
//! refusal is final. When the gateway cannot be asked, the mirror keeps
//! serving admissions of the newest revision for at most the fail-static
//! window after their last confirmation, and refuses everything else.

use crate::gateway_source::{GatewayAnswer, GatewaySource};
use crate::revision::RevisionTracker;
use customs_mirror::{
    Admission, AdmissionRequest, AdmissionUnavailable, Decision, Refusal, Verdict,
};
use customs_protocol::ImageName;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Default admission TTL: how long a node reuses a gateway admission
/// before asking again, even when the revision did not change.
pub const DEFAULT_ADMISSION_TTL_SECS: u64 = 20;
/// Default fail-static window (`--admission-stale-max`).
pub const DEFAULT_ADMISSION_STALE_MAX_SECS: u64 = 600;

/// Refusals answered by this node, by kind (for `/metrics`).
#[derive(Debug, Default)]
pub struct Refusals {
    denied: AtomicU64,
    not_current: AtomicU64,
    unbound: AtomicU64,
}

impl Refusals {
    /// (kind label, count) pairs.
    pub fn counts(&self) -> [(&'static str, u64); 3] {
        [
            ("denied", self.denied.load(Ordering::Relaxed)),
            ("not_current", self.not_current.load(Ordering::Relaxed)),
            ("unbound", self.unbound.load(Ordering::Relaxed)),
        ]
    }
}

/// See the module docs.
pub struct NodeAdmission {
    gateway: GatewaySource,
    revisions: Arc<RevisionTracker>,
    refusals: Arc<Refusals>,
}

impl NodeAdmission {
    /// Admission through `gateway`, tracking revisions in `revisions`.
    pub fn new(
        gateway: GatewaySource,
        revisions: Arc<RevisionTracker>,
        refusals: Arc<Refusals>,
    ) -> Self {
        NodeAdmission {
            gateway,
            revisions,
            refusals,
        }
    }
}

impl Admission for NodeAdmission {
    fn revision(&self) -> String {
        self.revisions.latest()
    }

    async fn admit(&self, req: AdmissionRequest<'_>) -> Result<Decision, AdmissionUnavailable> {
        let answer = self
            .gateway
            .admission_of(req.image, req.digest)
            .await
            .map_err(|f| AdmissionUnavailable {
                detail: f.to_string(),
            })?;
        let decision = match answer {
            GatewayAnswer::Admitted { revision } => {
                // The answer's header already updated the tracker.
                Decision {
                    verdict: Verdict::Allow,
                    mode: "gateway".to_owned(),
                    reasons: vec![format!("admitted by the gateway under revision {revision}")],
                    revision,
                }
            }
            GatewayAnswer::Refused { reason } => Decision {
                verdict: Verdict::Deny,
                mode: "gateway".to_owned(),
                reasons: vec![format!("refused by the gateway: {reason}")],
                revision: self.revisions.latest(),
            },
        };
        tracing::info!(image = %req.image, digest = %req.digest, verdict = ?decision.verdict,
            revision = %decision.revision, "admission checked with the gateway");
        Ok(decision)
    }

    fn refused(&self, image: &ImageName, refusal: Refusal) {
        let counter = match refusal {
            Refusal::Denied => &self.refusals.denied,
            Refusal::NotCurrent => &self.refusals.not_current,
            Refusal::Unbound => &self.refusals.unbound,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%image, ?refusal, "request refused");
    }
}
