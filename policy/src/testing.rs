//! `customs policy test`: runs the `ImagePolicyTest` cases kept beside the
//! policies, each a decision over recorded evidence (`customs verify
//! --record-evidence`), so a policy repository's CI catches a rule change
//! that would deny (or let through) a known image before it is merged.

use crate::compile::PolicySet;
use crate::decision::PolicyDecision;
use crate::evidence::Evidence;
use crate::snapshot::Snapshot;
use crate::spec::Expect;
use customs_protocol::{ImageRef, Reference};

/// One case's outcome.
#[derive(Debug, serde::Serialize)]
pub struct CaseOutcome {
    /// `file: suite/case`.
    pub name: String,
    /// Whether the decision matched the expectation.
    pub passed: bool,
    /// What went wrong, or the decision's reasons when it passed.
    pub detail: String,
    /// The decision, when one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<PolicyDecision>,
}

/// Runs every test case of `set` (compiled from `snap`).
pub fn run_tests(set: &PolicySet, snap: &Snapshot) -> Vec<CaseOutcome> {
    let mut out = Vec::new();
    for suite in &set.tests {
        for case in &suite.doc.spec.cases {
            let name = format!(
                "{}: {}/{}",
                suite.file, suite.doc.metadata.name.value, case.name
            );
            let fail = |detail: String| CaseOutcome {
                name: name.clone(),
                passed: false,
                detail,
                decision: None,
            };
            let image: ImageRef = match case.image.value.parse() {
                Ok(i) => i,
                Err(e) => {
                    out.push(fail(e.to_string()));
                    continue;
                }
            };
            let Reference::Digest(digest) = &image.reference else {
                out.push(fail(format!(
                    "image {:?} must name a digest (registry/repository@sha256:…)",
                    case.image.value
                )));
                continue;
            };
            let evidence =
                snap.resolve(&suite.file, &case.evidence.value)
                    .and_then(|(path, bytes)| {
                        serde_json::from_slice::<Evidence>(bytes)
                            .map_err(|e| format!("{path}: {e}"))
                    });
            let evidence = match evidence {
                Ok(e) => e,
                Err(e) => {
                    out.push(fail(format!("evidence: {e}")));
                    continue;
                }
            };
            if evidence.digest != digest.to_string() {
                out.push(fail(format!(
                    "evidence was recorded for {}, not {digest}",
                    evidence.digest
                )));
                continue;
            }
            let d = set.evaluate(&image.name, digest, &evidence);
            let reasons = d.reasons().join("; ");
            let verdict_ok = match case.expect {
                Expect::Allow => d.allowed,
                Expect::Deny => !d.allowed,
            };
            let reason_ok = case
                .reason_contains
                .as_ref()
                .is_none_or(|needle| reasons.contains(needle.as_str()));
            let detail = if !verdict_ok {
                format!(
                    "expected {:?}, got {}: {reasons}",
                    case.expect,
                    if d.allowed { "allow" } else { "deny" }
                )
            } else if !reason_ok {
                format!(
                    "reasons do not contain {:?}: {reasons}",
                    case.reason_contains.as_deref().unwrap_or_default()
                )
            } else {
                reasons
            };
            out.push(CaseOutcome {
                name,
                passed: verdict_ok && reason_ok,
                detail,
                decision: Some(d),
            });
        }
    }
    out
}
