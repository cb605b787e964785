//! The swarm: downloading blobs as verified pieces from other peers (and
//! the gateway as seed), and serving verified pieces to other peers.
//!
//! - [`piece_file`]: a blob being assembled, with its bitmap of verified pieces.
//! - [`engine`]: the download loop (parent choice, verification, reports).
//! - [`piece_server`]: the mTLS upload endpoint with the upload rate limit.
//! - [`deadline`]: deadlines on every piece transfer, at both ends.
//! - [`health`]: which parents a download still tries, and when it fails.
//! - [`planner`]: which piece next, and from whom (pure, paused-clock tests).
//!
//! One crate for both ends: peers download and serve, the gateway's seed
//! serves with the same piece server.
#![forbid(unsafe_code)]

pub mod deadline;
pub mod engine;
pub mod health;
pub mod members;
pub mod piece_file;
pub mod piece_server;
pub mod planner;
pub mod topology;

pub use engine::{Swarm, SwarmConfig};
