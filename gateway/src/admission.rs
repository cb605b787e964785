//! The gateway's admission point.
//!
//! Every manifest digest passes [`Admission::admit`] before any of its bytes
//! are served. With a policy source configured, decisions come from the
//! policy gate (`customs-policy`) over evidence read from the upstream;
//! without one, everything is allowed in `audit` mode and every decision
//! says so. Every fresh decision is an audit event; a decision that cannot
//! be recorded is a denial.

use crate::metrics::{CacheLabels, DecisionLabels, JobLabels, Metrics};
use crate::upstream::Upstreams;
use customs_mirror::{Admission, AdmissionRequest, AdmissionUnavailable, Decision, Verdict};
use customs_policy::{PolicyDecision, PolicySet};
use customs_protocol::ImageName;
use customs_store::audit::AuditLog;
use customs_tls::RefusedConnections;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// The revision name used when no policy is configured.
pub const NO_POLICY_REVISION: &str = "no-policy";

/// The gateway's admission: policy gate, or allow-all in audit mode.
pub struct GatewayAdmission {
    audit: AuditLog,
    policy: Option<PolicyGate>,
    metrics: Option<Arc<Metrics>>,
    /// Cache hits since the last aggregate event, per (image, verdict).
    hits: Mutex<HashMap<(String, Verdict), u64>>,
}

/// Most distinct images named in one aggregate event; the rest are summed.
const MAX_AGGREGATE_ENTRIES: usize = 1000;

#[derive(Serialize)]
struct HitCount {
    image: String,
    verdict: Verdict,
    count: u64,
}

#[derive(Serialize)]
struct AggregateEvent {
    interval_secs: u64,
    cache_hits: Vec<HitCount>,
    other_cache_hits: u64,
    refused_connections: u64,
}

struct PolicyGate {
    set: RwLock<Arc<PolicySet>>,
    registry: Arc<Upstreams>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<&'a PolicyDecision>,
}

impl GatewayAdmission {
    /// Allows everything in audit mode, loudly.
    pub fn allow_all(audit: AuditLog) -> Self {
        tracing::warn!("NO POLICY CONFIGURED: every image is admitted in audit mode");
        GatewayAdmission {
            audit,
            policy: None,
            metrics: None,
            hits: Mutex::default(),
        }
    }

    /// Enforces `set`, reading evidence through `registry`.
    pub fn with_policy(audit: AuditLog, set: PolicySet, registry: Arc<Upstreams>) -> Self {
        tracing::info!(revision = %set.revision, policies = set.policies.len(), "policy in force");
        GatewayAdmission {
            audit,
            policy: Some(PolicyGate {
                set: RwLock::new(Arc::new(set)),
                registry,
            }),
            metrics: None,
            hits: Mutex::default(),
        }
    }

    /// Counts every fresh decision in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes one aggregate event per `interval` with the cache hits and
    /// refused mTLS connections counted since the last one (nothing when
    /// there was nothing), so neither load nor an attacker turns into one
    /// durable write per request.
    pub async fn aggregate_loop(
        self: Arc<Self>,
        refused: Arc<RefusedConnections>,
        interval: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut refused_seen = refused.get();
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(interval) => false,
            };
            let hits = std::mem::take(&mut *self.hits.lock().unwrap_or_else(|e| e.into_inner()));
            let refused_now = refused.get();
            let refused_delta = refused_now.saturating_sub(refused_seen);
            refused_seen = refused_now;
            if !hits.is_empty() || refused_delta > 0 {
                let mut counts: Vec<HitCount> = hits
                    .into_iter()
                    .map(|((image, verdict), count)| HitCount {
                        image,
                        verdict,
                        count,
                    })
                    .collect();
                counts.sort_by_key(|c| std::cmp::Reverse(c.count));
                let other = counts
                    .iter()
                    .skip(MAX_AGGREGATE_ENTRIES)
                    .map(|c| c.count)
                    .sum();
                counts.truncate(MAX_AGGREGATE_ENTRIES);
                let event = AggregateEvent {
                    interval_secs: interval.as_secs(),
                    cache_hits: counts,
                    other_cache_hits: other,
                    refused_connections: refused_delta,
                };
                if let Err(e) = self.audit.write("aggregate", &event).await {
                    tracing::error!(error = %e, "aggregate audit event could not be written");
                }
            }
            if stop {
                return;
            }
        }
    }

    /// Counts a policy load (`success`) or refusal (`failure`).
    pub fn count_policy_load(&self, ok: bool) {
        if let Some(m) = &self.metrics {
            m.policy_loads
                .get_or_create(&JobLabels {
                    state: if ok { "success" } else { "failure" }.to_owned(),
                })
                .inc();
        }
    }

    /// The audit log decisions and policy changes are written to.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// When the revision in force was made (its Git commit's time; 0 when
    /// unknown or without a policy source).
    pub fn policy_revision_time(&self) -> u64 {
        self.current().map_or(0, |s| s.revision_time)
    }

    /// The revision in force, if a policy source is configured.
    pub fn policy_revision(&self) -> Option<String> {
        self.current().map(|s| s.revision.clone())
    }

    /// Puts a validated revision in force. Later decisions are made (and
    /// cached, since the revision is part of the cache key) under it.
    /// Ignored without a policy source: allow-all stays allow-all.
    pub fn replace_policy(&self, set: PolicySet) {
        if let Some(gate) = &self.policy {
            let mut guard = gate.set.write().unwrap_or_else(|e| e.into_inner());
            *guard = Arc::new(set);
        }
    }

    fn current(&self) -> Option<Arc<PolicySet>> {
        self.policy.as_ref().map(|p| {
            p.set
                .read()
                .map(|s| s.clone())
                .unwrap_or_else(|e| e.into_inner().clone())
        })
    }

    async fn record(
        &self,
        req: &AdmissionRequest<'_>,
        mut decision: Decision,
        policy: Option<&PolicyDecision>,
    ) -> Decision {
        let event = DecisionEvent {
            image: req.image.to_string(),
            digest: req.digest.to_string(),
            media_type: &req.manifest.media_type,
            parent_index: req.parent_index.map(|d| d.to_string()),
            verdict: decision.verdict,
            mode: &decision.mode,
            revision: &decision.revision,
            reasons: &decision.reasons,
            policy,
        };
        if let Err(e) = self.audit.write("decision", &event).await {
            tracing::error!(error = %e, image = %req.image, digest = %req.digest, "audit write failed; denying");
            decision.verdict = Verdict::Deny;
            decision.reasons = vec![format!("the decision could not be recorded: {e}")];
        } else {
            if let Some(m) = &self.metrics {
                let verdict = match decision.verdict {
                    Verdict::Allow => "allow",
                    Verdict::Deny => "deny",
                };
                m.decisions
                    .get_or_create(&DecisionLabels {
                        verdict: verdict.to_owned(),
                        mode: decision.mode.clone(),
                    })
                    .inc();
            }
            tracing::info!(image = %req.image, digest = %req.digest, verdict = ?decision.verdict,
                mode = %decision.mode, revision = %decision.revision, reasons = ?decision.reasons, "admission decision");
        }
        decision
    }
}

fn to_decision(d: &PolicyDecision) -> Decision {
    Decision {
        verdict: if d.allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        },
        mode: d.mode.as_str().to_owned(),
        reasons: d.reasons(),
        revision: d.revision.clone(),
    }
}

impl Admission for GatewayAdmission {
    fn cached(&self, image: &ImageName, verdict: Verdict) {
        let mut hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: past the cap, new images are folded into one key.
        let key = if hits.len() >= 10 * MAX_AGGREGATE_ENTRIES {
            ("(other images)".to_owned(), verdict)
        } else {
            (image.to_string(), verdict)
        };
        *hits.entry(key).or_default() += 1;
        if let Some(m) = &self.metrics {
            m.cache_hits
                .get_or_create(&CacheLabels {
                    verdict: match verdict {
                        Verdict::Allow => "allow",
                        Verdict::Deny => "deny",
                    }
                    .to_owned(),
                })
                .inc();
        }
    }

    fn revision(&self) -> String {
        self.current()
            .map_or_else(|| NO_POLICY_REVISION.to_owned(), |s| s.revision.clone())
    }

    async fn admit(&self, req: AdmissionRequest<'_>) -> Result<Decision, AdmissionUnavailable> {
        // The gateway always decides: evidence it cannot read is a denial.
        Ok(self.decide(req).await)
    }
}

impl GatewayAdmission {
    async fn decide(&self, req: AdmissionRequest<'_>) -> Decision {
        let (Some(set), Some(gate)) = (self.current(), self.policy.as_ref()) else {
            let decision = Decision {
                verdict: Verdict::Allow,
                mode: "audit".to_owned(),
                reasons: vec![
                    "no policy configured: everything is allowed (audit mode)".to_owned(),
                ],
                revision: NO_POLICY_REVISION.to_owned(),
            };
            return self.record(&req, decision, None).await;
        };
        let (mut pd, _) = set
            .decide(gate.registry.as_ref(), req.image, req.digest)
            .await;
        // Multi-arch: a platform manifest listed by an index is covered by
        // the index's evidence when its own does not pass (documented in
        // SECURITY.md). The index is re-decided under the current revision.
        if !pd.allowed
            && let Some(parent) = req.parent_index
        {
            let (parent_d, _) = set.decide(gate.registry.as_ref(), req.image, parent).await;
            if parent_d.allowed {
                let mut d = to_decision(&parent_d);
                d.reasons
                    .insert(0, format!("covered by the admitted index {parent}"));
                pd = parent_d;
                return self.record(&req, d, Some(&pd)).await;
            }
        }
        let d = to_decision(&pd);
        self.record(&req, d, Some(&pd)).await
    }
}
