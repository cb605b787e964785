//! The simulation's knobs and link model.

use std::time::Duration;

/// When one node joins the rollout and (with churn) leaves it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Presence {
    /// Seconds after the start when the node asks for the blob.
    pub join: f64,
    /// Seconds after the start when the node leaves (killed, no goodbye).
    pub leave: Option<f64>,
}

/// A run's parameters. The link model is what the README states: every
/// node (and the seed) uploads at most `upload_limit` bytes/s shared by its
/// active uploads, downloads are not capped, each request costs one `rtt`
/// before bytes flow, and each verified piece costs `piece_overhead` (hash
/// and write) before the planner hears of it.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Peers (the seed is extra).
    pub nodes: u32,
    /// Blob size in bytes.
    pub size: u64,
    /// Upload cap of every peer, bytes/s.
    pub upload_limit: f64,
    /// Upload cap of the seed (gateway), bytes/s; the bench caps both.
    pub seed_upload_limit: f64,
    /// Availability zones peers are spread over (0: none).
    pub zones: u32,
    /// Racks per zone (0: none).
    pub racks: u32,
    /// Fraction of peers that leave mid-download.
    pub churn: f64,
    /// The run's random seed: same seed, same run.
    pub seed: u64,
    /// Round trip of one request.
    pub rtt: Duration,
    /// Per-piece cost after the last byte (hash, write).
    pub piece_overhead: Duration,
    /// Piece length in bytes (default: what the gateway picks for `size`).
    pub piece_length: u64,
    /// Peers with upload 0 refuse every piece request.
    pub peers_upload: bool,
    /// Overrides join/leave per peer (tests); default: all join at 0.
    pub presence: Option<Vec<Presence>>,
    /// When the seed leaves, if it does (tests).
    pub seed_leaves: Option<f64>,
    /// Give up after this much simulated time.
    pub horizon: Duration,
}

impl SimConfig {
    /// A run of `nodes` peers fetching `size` bytes at upload cap `b`.
    pub fn new(nodes: u32, size: u64, b: f64) -> Self {
        SimConfig {
            nodes,
            size,
            upload_limit: b,
            seed_upload_limit: b,
            zones: 0,
            racks: 0,
            churn: 0.0,
            seed: 1,
            rtt: Duration::from_micros(500),
            // Hashing and writing a piece: 0.2 ms plus 1 GB/s.
            piece_overhead: Duration::from_secs_f64(
                2e-4 + customs_protocol::piece_manifest::piece_length_for(size) as f64 / 1e9,
            ),
            piece_length: customs_protocol::piece_manifest::piece_length_for(size),
            peers_upload: true,
            presence: None,
            seed_leaves: None,
            horizon: Duration::from_secs(24 * 3600),
        }
    }

    /// S/B: the time one upload link needs for the blob.
    pub fn ideal_secs(&self) -> f64 {
        self.size as f64 / self.upload_limit
    }

    /// How many pieces the blob has.
    pub fn pieces(&self) -> u32 {
        self.size.div_ceil(self.piece_length.max(1)) as u32
    }
}
