//! Prometheus metrics for the gateway (prometheus-client): bytes served,
//! refused connections, decisions by verdict and mode, preheat jobs by
//! outcome. Counters that other parts already keep (the rate limiter's
//! served bytes, refused handshakes) are read at scrape time by a collector
//! rather than mirrored, so there is one source of truth for each number.

use crate::audit_export::ExportProgress;
use crate::upstream::Upstreams;
use customs_mirror::rate::RateLimiter;
use customs_tls::RefusedConnections;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of `customs_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `allow` or `deny`.
    pub verdict: String,
    /// `enforce`, `warn` or `audit`.
    pub mode: String,
}

/// Labels of `customs_preheat_jobs_total` and `customs_policy_loads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `success` or `failure`.
    pub state: String,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Fresh admission decisions.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Finished preheat jobs.
    pub preheats: Family<JobLabels, Counter>,
    /// Decisions answered from the cache.
    pub cache_hits: Family<CacheLabels, Counter>,
    /// Policy revisions loaded or refused.
    pub policy_loads: Family<JobLabels, Counter>,
    /// Audit exporters, added as they start.
    exports: Arc<std::sync::Mutex<Vec<ExportProgress>>>,
}

/// Labels of `customs_decision_cache_hits_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `allow` or `deny`.
    pub verdict: String,
}

struct LiveCounters {
    limiter: Arc<RateLimiter>,
    refused: Arc<RefusedConnections>,
    upstreams: Arc<Upstreams>,
    exports: Arc<std::sync::Mutex<Vec<ExportProgress>>>,
}

impl std::fmt::Debug for LiveCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCounters")
    }
}

impl Collector for LiveCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "customs_served_bytes",
                "Bytes the node sent to peers and clients",
                self.limiter.served(),
            ),
            (
                "customs_refused_connections",
                "mTLS connections refused (no valid client certificate)",
                self.refused.get(),
            ),
            (
                "customs_upstream_bytes",
                "Blob bytes fetched from upstream registries",
                self.upstreams.fetched_bytes(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let exports = self
            .exports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !exports.is_empty() {
            let mut family = encoder.encode_descriptor(
                "customs_audit_export_lag_bytes",
                "Audit log bytes written but not yet delivered to the sink",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for e in exports {
                let log = e
                    .log
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let gauge =
                    prometheus_client::metrics::gauge::ConstGauge::new(e.lag_bytes() as i64);
                let labels = [("sink", e.sink), ("log", log.as_str())];
                let metric = family.encode_family(&labels)?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

/// The labels every metric of a process carries, so one dashboard covers
/// the fleet: `node` (a gateway's fleet id; `gateway` for a gateway
/// outside a fleet, as before), `role` and, when set, `zone`.
pub fn process_labels(
    node: &str,
    role: &'static str,
    zone: &str,
) -> Vec<(
    std::borrow::Cow<'static, str>,
    std::borrow::Cow<'static, str>,
)> {
    let mut labels = vec![
        ("node".into(), node.to_owned().into()),
        ("role".into(), role.into()),
    ];
    if !zone.is_empty() {
        labels.push(("zone".into(), zone.to_owned().into()));
    }
    labels
}

impl Metrics {
    /// Registers everything; `node` and `zone` label every metric.
    pub fn new(
        limiter: Arc<RateLimiter>,
        refused: Arc<RefusedConnections>,
        upstreams: Arc<Upstreams>,
        node: &str,
        zone: &str,
    ) -> Arc<Self> {
        let mut registry = Registry::with_labels(process_labels(node, "gateway", zone).into_iter());
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "customs_decisions",
            "Fresh admission decisions",
            decisions.clone(),
        );
        let preheats = Family::<JobLabels, Counter>::default();
        registry.register(
            "customs_preheat_jobs",
            "Finished preheat jobs",
            preheats.clone(),
        );
        let cache_hits = Family::<CacheLabels, Counter>::default();
        registry.register(
            "customs_decision_cache_hits",
            "Admission decisions answered from the decision cache",
            cache_hits.clone(),
        );
        let policy_loads = Family::<JobLabels, Counter>::default();
        registry.register(
            "customs_policy_loads",
            "Policy revisions loaded (success) or refused (failure)",
            policy_loads.clone(),
        );
        let exports = Arc::<std::sync::Mutex<Vec<ExportProgress>>>::default();
        registry.register_collector(Box::new(LiveCounters {
            limiter,
            refused,
            upstreams,
            exports: exports.clone(),
        }));
        Arc::new(Metrics {
            registry,
            decisions,
            preheats,
            cache_hits,
            policy_loads,
            exports,
        })
    }

    /// Adds an audit exporter to the export-lag gauge.
    pub fn watch_export(&self, progress: ExportProgress) {
        self.exports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(progress);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}
