//! Evaluates a [`PolicySet`] for one image digest over collected evidence.

use crate::compile::{AttestationRule, Policy, PolicySet};
use crate::conditions::Inputs;
use crate::decision::{PolicyDecision, PolicyResult, RuleResult};
use crate::evidence::{self, Evidence, EvidenceRegistry};
use crate::slsa::{SLSA_V1, SLSA_V02};
use crate::spec::Mode;
use crate::verify::{Claim, Verified, verify_item};
use customs_protocol::{Digest, ImageName};

/// Most per-item failure reasons quoted in a rule's reason.
const MAX_QUOTED: usize = 3;

impl PolicySet {
    /// The policies whose scope contains `image`.
    pub fn matching<'a>(&'a self, image: &ImageName) -> Vec<&'a Policy> {
        let name = image.to_string();
        self.policies
            .iter()
            .filter(|p| p.applies_to(&name))
            .collect()
    }

    /// Where evidence for `image` may live: its own repository and the
    /// signature repositories of the matching policies' authorities.
    pub fn evidence_repositories(&self, image: &ImageName) -> Vec<ImageName> {
        let mut repos = vec![image.clone()];
        for p in self.matching(image) {
            if !p.needs_evidence() {
                continue;
            }
            for a in &p.authorities {
                if let Some(r) = &a.signature_repository
                    && !repos.contains(r)
                {
                    repos.push(r.clone());
                }
            }
        }
        repos
    }

    /// Whether deciding `image` needs any evidence at all (a catch-all
    /// audit policy without rules does not).
    pub fn needs_evidence(&self, image: &ImageName) -> bool {
        self.matching(image).iter().any(|p| p.needs_evidence())
    }

    /// Collects evidence through `registry` and decides. An unreadable
    /// registry fails closed (a denial that says why).
    pub async fn decide<R: EvidenceRegistry>(
        &self,
        registry: &R,
        image: &ImageName,
        digest: &Digest,
    ) -> (PolicyDecision, Option<Evidence>) {
        if !self.needs_evidence(image) {
            return (self.evaluate(image, digest, &Evidence::default()), None);
        }
        let repos = self.evidence_repositories(image);
        match evidence::collect(registry, &repos, digest).await {
            Ok(ev) => (self.evaluate(image, digest, &ev), Some(ev)),
            Err(e) => (
                PolicyDecision {
                    image: image.to_string(),
                    digest: digest.to_string(),
                    allowed: false,
                    mode: Mode::Enforce,
                    revision: self.revision.clone(),
                    policies: Vec::new(),
                    evidence_problems: Vec::new(),
                    error: Some(format!("evidence could not be read: {e}")),
                },
                None,
            ),
        }
    }

    /// Decides over already collected evidence (also used by `policy test`).
    pub fn evaluate(&self, image: &ImageName, digest: &Digest, ev: &Evidence) -> PolicyDecision {
        let matching = self.matching(image);
        let mut d = PolicyDecision {
            image: image.to_string(),
            digest: digest.to_string(),
            allowed: false,
            mode: Mode::Enforce,
            revision: self.revision.clone(),
            policies: Vec::new(),
            evidence_problems: ev.problems.clone(),
            error: None,
        };
        if matching.is_empty() {
            d.error = Some(format!(
                "no policy applies to {image} (policy revision {}); add one, or a catch-all `images: [\"**\"]` policy in audit mode",
                self.revision
            ));
            return d;
        }
        let image_json = serde_json::json!({
            "registry": image.registry.as_str(),
            "repository": image.repository.as_str(),
            "digest": digest.to_string(),
        });
        for p in matching {
            d.policies.push(evaluate_policy(p, digest, ev, &image_json));
        }
        let failing_modes = d.policies.iter().filter(|p| !p.passed).map(|p| p.mode);
        match failing_modes.max() {
            None => {
                d.allowed = true;
                d.mode = Mode::Enforce;
            }
            Some(Mode::Enforce) => {
                d.allowed = false;
                d.mode = Mode::Enforce;
            }
            Some(m) => {
                d.allowed = true;
                d.mode = m;
            }
        }
        d
    }
}

impl Policy {
    /// Whether any rule needs evidence.
    pub fn needs_evidence(&self) -> bool {
        self.signatures.is_some() || !self.attestations.is_empty()
    }
}

/// Verification outcomes for every (authority, item) pair, computed once.
struct Checked {
    /// Per authority: verified items, and why the others failed.
    by_authority: Vec<(Vec<Verified>, Vec<String>)>,
}

fn check_all(p: &Policy, digest: &Digest, ev: &Evidence) -> Checked {
    let by_authority = p
        .authorities
        .iter()
        .map(|a| {
            let mut ok = Vec::new();
            let mut why = Vec::new();
            for item in &ev.items {
                match verify_item(a, item, digest) {
                    Ok(v) => ok.push(v),
                    Err(e) => why.push(format!("{}: {e}", item.location())),
                }
            }
            (ok, why)
        })
        .collect();
    Checked { by_authority }
}

fn quote(why: &[String]) -> String {
    if why.is_empty() {
        return String::new();
    }
    let mut s: Vec<&str> = why.iter().take(MAX_QUOTED).map(String::as_str).collect();
    let more = why.len().saturating_sub(MAX_QUOTED);
    let tail = if more > 0 {
        format!(" (+{more} more)")
    } else {
        String::new()
    };
    s.dedup();
    format!(" [{}{tail}]", s.join("; "))
}

fn evaluate_policy(
    p: &Policy,
    digest: &Digest,
    ev: &Evidence,
    image_json: &serde_json::Value,
) -> PolicyResult {
    let checked = check_all(p, digest, ev);
    let mut rules = Vec::new();
    if let Some(sig) = &p.signatures {
        let mut signed = Vec::new();
        let mut used = Vec::new();
        let mut why = Vec::new();
        for &i in &sig.authorities {
            let (ok, bad) = &checked.by_authority[i];
            let sigs: Vec<&Verified> = ok
                .iter()
                .filter(|v| matches!(v.claim, Claim::ImageSignature))
                .collect();
            if let Some(first) = sigs.first() {
                signed.push(p.authorities[i].name.clone());
                used.push(first.used.clone());
            } else {
                why.extend(bad.iter().cloned());
            }
        }
        let names: Vec<&str> = sig
            .authorities
            .iter()
            .map(|&i| p.authorities[i].name.as_str())
            .collect();
        let passed = signed.len() >= sig.threshold;
        let reason = if passed {
            format!(
                "signed by {} (threshold {})",
                signed.join(", "),
                sig.threshold
            )
        } else if signed.is_empty() && why.is_empty() {
            format!(
                "no signature found for {digest}; expected one from {}",
                names.join(", ")
            )
        } else {
            format!(
                "{} of {} required authorities signed (accepted: {}){}",
                signed.len(),
                sig.threshold,
                names.join(", "),
                quote(&why)
            )
        };
        rules.push(RuleResult {
            rule: "signatures".into(),
            passed,
            reason,
            evidence: used,
        });
    }
    for a in &p.attestations {
        rules.push(evaluate_attestation(p, a, &checked, image_json));
    }
    PolicyResult {
        policy: p.name.clone(),
        mode: p.mode,
        passed: rules.iter().all(|r| r.passed),
        rules,
    }
}

fn predicate_matches(required: &str, found: &str) -> bool {
    required == found
}

fn evaluate_attestation(
    p: &Policy,
    rule: &AttestationRule,
    checked: &Checked,
    image_json: &serde_json::Value,
) -> RuleResult {
    let name = format!("attestation {}", rule.name);
    let mut why = Vec::new();
    let mut candidates = 0usize;
    for &i in &rule.authorities {
        let (ok, bad) = &checked.by_authority[i];
        for v in ok {
            let Claim::Statement(st) = &v.claim else {
                continue;
            };
            if !predicate_matches(&rule.predicate_type, &st.predicate_type) {
                continue;
            }
            candidates += 1;
            let mut result = Ok(());
            if let Some(slsa) = &rule.slsa {
                if st.predicate_type == SLSA_V02 || st.predicate_type == SLSA_V1 {
                    result = slsa.check(&st.predicate_type, &st.predicate);
                } else {
                    result = Err(format!(
                        "slsa rules need a SLSA provenance predicate, found {}",
                        st.predicate_type
                    ));
                }
            }
            if result.is_ok() {
                let inputs = Inputs {
                    predicate: &st.predicate,
                    statement: &st.raw,
                    image: image_json,
                };
                result = rule.conditions.iter().try_for_each(|c| c.check(&inputs));
            }
            match result {
                Ok(()) => {
                    return RuleResult {
                        rule: name,
                        passed: true,
                        reason: format!("{} attested by {}", rule.predicate_type, v.used.authority),
                        evidence: vec![v.used.clone()],
                    };
                }
                Err(e) => why.push(format!("{}: {e}", v.used.location)),
            }
        }
        if candidates == 0 {
            why.extend(bad.iter().cloned());
        }
    }
    let names: Vec<&str> = rule
        .authorities
        .iter()
        .map(|&i| p.authorities[i].name.as_str())
        .collect();
    let reason = if candidates == 0 {
        format!(
            "no verified {} attestation from {}{}",
            rule.predicate_type,
            names.join(", "),
            quote(&why)
        )
    } else {
        format!(
            "no {} attestation passes its rules{}",
            rule.predicate_type,
            quote(&why)
        )
    };
    RuleResult {
        rule: name,
        passed: false,
        reason,
        evidence: Vec::new(),
    }
}
