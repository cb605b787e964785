//! A decision and every reason behind it: what admission returns, what the
//! audit log records and what `customs verify` prints.

use crate::spec::Mode;
use crate::verify::EvidenceUsed;
use serde::Serialize;

/// One rule's outcome.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleResult {
    /// `signatures` or `attestation <name>`.
    pub rule: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why.
    pub reason: String,
    /// The evidence that satisfied it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<EvidenceUsed>,
}

/// One policy's outcome.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyResult {
    /// `metadata.name`.
    pub policy: String,
    /// Its mode.
    pub mode: Mode,
    /// Whether every rule passed.
    pub passed: bool,
    /// Each rule.
    pub rules: Vec<RuleResult>,
}

/// The decision for one image digest.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDecision {
    /// `registry/repository`.
    pub image: String,
    /// The manifest digest.
    pub digest: String,
    /// Allowed to be served.
    pub allowed: bool,
    /// The mode that decided: `enforce` for a denial or a clean pass,
    /// `warn`/`audit` when such a policy failed but allowed.
    pub mode: Mode,
    /// The policy revision.
    pub revision: String,
    /// Each matching policy.
    pub policies: Vec<PolicyResult>,
    /// Problems met while collecting evidence (skipped layers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence_problems: Vec<String>,
    /// Set when no policy matched or evidence could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl PolicyDecision {
    /// One line per failed rule (or the error), prefixed by the policy name;
    /// a pass gives one line saying what passed.
    pub fn reasons(&self) -> Vec<String> {
        if let Some(e) = &self.error {
            return vec![e.clone()];
        }
        let failed: Vec<String> = self
            .policies
            .iter()
            .filter(|p| !p.passed)
            .flat_map(|p| {
                p.rules.iter().filter(|r| !r.passed).map(move |r| {
                    let tag = match p.mode {
                        Mode::Enforce => "",
                        Mode::Warn => "WARN ",
                        Mode::Audit => "AUDIT ",
                    };
                    format!("{tag}policy {}: {}: {}", p.policy, r.rule, r.reason)
                })
            })
            .collect();
        if failed.is_empty() {
            let names: Vec<&str> = self.policies.iter().map(|p| p.policy.as_str()).collect();
            vec![format!("passed policies: {}", names.join(", "))]
        } else {
            failed
        }
    }
}
