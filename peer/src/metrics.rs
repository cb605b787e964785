//! The peer's Prometheus metrics (prometheus-client), read from the swarm's
//! own counters at scrape time: verified bytes received by source (the
//! gateway seed or other peers), bytes uploaded to other peers, and pieces
//! that failed their check.

use crate::admission::Refusals;
use crate::swarm::Swarm;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The id the gateway seed uses in the swarm.
const SEED_ID: &str = "gateway";

struct SwarmCounters(Arc<Swarm>);

impl std::fmt::Debug for SwarmCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SwarmCounters")
            .field(&self.0.peer_id())
            .finish()
    }
}

impl Collector for SwarmCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (received, uploaded) = self.0.traffic();
        let from_gateway = received.get(SEED_ID).copied().unwrap_or(0);
        let from_peers: u64 = received
            .iter()
            .filter(|(k, _)| k.as_str() != SEED_ID)
            .map(|(_, v)| v)
            .sum();
        let received_bytes = [("gateway", from_gateway), ("peers", from_peers)];
        let c = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "customs_received_bytes",
            "Verified bytes received, by source",
            None,
            c.metric_type(),
        )?;
        for (source, value) in received_bytes {
            let labels = [("source", source)];
            let metric = family.encode_family(&labels)?;
            ConstCounter::new(value).encode(metric)?;
        }
        for (name, help, value) in [
            (
                "customs_served_bytes",
                "Bytes uploaded to other peers",
                uploaded,
            ),
            (
                "customs_bad_pieces",
                "Pieces that failed their sha256 check",
                self.0.bad_pieces(),
            ),
            (
                "customs_cross_zone_received_bytes",
                "Verified bytes received from parents of another zone",
                self.0.cross_zone_bytes(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Refusals by kind: `customs_peer_refusals_total{reason}`.
#[derive(Debug)]
struct RefusalCounters(Arc<Refusals>);

impl Collector for RefusalCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "customs_peer_refusals",
            "Requests this node refused (denied by the gateway, no current admission, unbound blob)",
            None,
            c.metric_type(),
        )?;
        for (reason, value) in self.0.counts() {
            let labels = [("reason", reason)];
            let metric = family.encode_family(&labels)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}

/// The Prometheus text for a peer (swarm figures only in swarm mode),
/// every metric labelled with the node (its peer id), `role="peer"` and
/// its zone.
pub fn render(
    swarm: Option<&Arc<Swarm>>,
    refusals: &Arc<Refusals>,
    node: &str,
    zone: &str,
) -> String {
    let mut labels = vec![
        ("node".into(), node.to_owned().into()),
        ("role".into(), "peer".into()),
    ];
    if !zone.is_empty() {
        labels.push(("zone".into(), zone.to_owned().into()));
    }
    let mut registry = Registry::with_labels(labels.into_iter());
    registry.register_collector(Box::new(RefusalCounters(refusals.clone())));
    if let Some(swarm) = swarm {
        registry.register_collector(Box::new(SwarmCounters(swarm.clone())));
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    out
}
