//! The gateway's admission point.
//!
//! Every manifest digest passes [`Admission::admit`] before any of its bytes
//! are served. Until policies are configured the gateway allows everything
//! in `audit` mode, says so loudly in every decision, and records each one.

use customs_mirror::{Admission, AdmissionRequest, Decision, Verdict};
use customs_store::audit::AuditLog;
use serde::Serialize;

/// Allows everything, recording each decision in the audit log. If the
/// audit write fails the decision is a denial: an unrecorded admission
/// would break the audit invariant (fail closed).
pub struct AllowAllAudited {
    audit: AuditLog,
}

impl AllowAllAudited {
    /// Builds the admission point over an audit log.
    pub fn new(audit: AuditLog) -> Self {
        tracing::warn!("NO POLICY CONFIGURED: every image is admitted in audit mode");
        AllowAllAudited { audit }
    }
}

#[derive(Serialize)]
struct DecisionEvent<'a> {
    image: String,
    digest: String,
    media_type: &'a str,
    parent_index: Option<String>,
    verdict: Verdict,
    mode: &'a str,
    revision: &'a str,
    reasons: &'a [String],
}

/// The revision name used when no policy is configured.
pub const NO_POLICY_REVISION: &str = "no-policy";

impl Admission for AllowAllAudited {
    fn revision(&self) -> String {
        NO_POLICY_REVISION.to_owned()
    }

    async fn admit(&self, req: AdmissionRequest<'_>) -> Decision {
        let mut decision = Decision {
            verdict: Verdict::Allow,
            mode: "audit".to_owned(),
            reasons: vec!["no policy configured: everything is allowed (audit mode)".to_owned()],
            revision: NO_POLICY_REVISION.to_owned(),
        };
        let event = DecisionEvent {
            image: req.image.to_string(),
            digest: req.digest.to_string(),
            media_type: &req.manifest.media_type,
            parent_index: req.parent_index.map(|d| d.to_string()),
            verdict: decision.verdict,
            mode: &decision.mode,
            revision: &decision.revision,
            reasons: &decision.reasons,
        };
        if let Err(e) = self.audit.write("decision", &event).await {
            tracing::error!(error = %e, image = %req.image, digest = %req.digest, "audit write failed; denying");
            decision.verdict = Verdict::Deny;
            decision.reasons = vec![format!("the decision could not be recorded: {e}")];
        } else {
            tracing::info!(image = %req.image, digest = %req.digest, verdict = "allow", mode = "audit", "admission decision");
        }
        decision
    }
}
