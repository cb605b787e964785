//! The figures one run prints (the JSON fields are a contract: our
//! acceptance checks read `nodes`, `size`, `upload_limit`, `ideal_secs`,
//! `p50_secs`, `p99_secs`, `max_secs`, `upstream_copies` and
//! `scheduler_bytes_per_peer_task`).

use serde::Serialize;

/// See the module docs.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// Peers.
    pub nodes: u32,
    /// Blob size (bytes).
    pub size: u64,
    /// Upload cap per node, bytes/s.
    pub upload_limit: f64,
    /// Upload cap of the seed (each zone's gateway), bytes/s.
    pub seed_upload_limit: f64,
    /// Piece length (bytes).
    pub piece_length: u64,
    /// Zones peers were spread over (0: none).
    pub zones: u32,
    /// Racks per zone (0: none).
    pub racks: u32,
    /// Fraction of peers that left mid-download.
    pub churn: f64,
    /// The run's random seed.
    pub seed: u64,
    /// S/B.
    pub ideal_secs: f64,
    /// Median completion time of the peers that stayed.
    pub p50_secs: f64,
    /// 99th percentile completion time.
    pub p99_secs: f64,
    /// Slowest completion.
    pub max_secs: f64,
    /// p50 / (S/B).
    pub p50_ratio: f64,
    /// p99 / (S/B).
    pub p99_ratio: f64,
    /// max / (S/B).
    pub max_ratio: f64,
    /// Peers that completed.
    pub completed: usize,
    /// Peers that left mid-rollout (not counted in the percentiles).
    pub churned: usize,
    /// Peers that stayed but did not complete (their download failed).
    pub incomplete: usize,
    /// Upstream bytes / S.
    pub upstream_copies: f64,
    /// Bytes the seed (gateway) uploaded / S.
    pub seed_copies: f64,
    /// The most bytes any zone received from other zones / S.
    pub cross_zone_copies_per_zone: f64,
    /// Calls into the scheduler state.
    pub scheduler_calls: u64,
    /// Time spent inside the scheduler state (single-threaded: CPU time).
    pub scheduler_cpu_secs: f64,
    /// Per call, microseconds.
    pub scheduler_cpu_us_per_call: f64,
    /// Per node over the whole rollout, milliseconds.
    pub scheduler_cpu_ms_per_node: f64,
    /// The scheduler state's largest heap footprint during the run.
    pub scheduler_peak_bytes: usize,
    /// That footprint per peer-task (one blob: per peer).
    pub scheduler_bytes_per_peer_task: f64,
    /// Events simulated.
    pub events: u64,
    /// Wall time of the simulation itself.
    pub wall_secs: f64,
}

/// The `q` quantile (nearest rank) of sorted `xs`; NaN when empty.
pub fn percentile(xs: &[f64], q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[rank - 1]
}
