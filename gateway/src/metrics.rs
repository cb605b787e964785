//! Prometheus metrics for the gateway (prometheus-client): bytes served,
//! refused connections, decisions by verdict and mode, preheat jobs by
//! outcome. Counters that other parts already keep (the rate limiter's
//! served bytes, refused handshakes) are read at scrape time by a collector
//! rather than mirrored, so there is one source of truth for each number.

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

/// Labels of `customs_preheat_jobs_total`.
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
}

#[derive(Debug)]
struct LiveCounters {
    limiter: Arc<RateLimiter>,
    refused: Arc<RefusedConnections>,
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
        ] {
            let counter = ConstCounter::new(value);
            let mut family = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            let metric = family.encode_family(&[("node", "gateway")])?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Registers everything.
    pub fn new(limiter: Arc<RateLimiter>, refused: Arc<RefusedConnections>) -> Arc<Self> {
        let mut registry = Registry::default();
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
        registry.register_collector(Box::new(LiveCounters { limiter, refused }));
        Arc::new(Metrics {
            registry,
            decisions,
            preheats,
        })
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
