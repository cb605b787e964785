//! The Customs peer: the node daemon containerd pulls through.
//!
//! It speaks the same OCI pull API as the gateway and keeps a local
//! content-addressed store. Without a scheduler it fetches whole blobs from
//! the gateway (which enforces admission and verifies upstream content) and
//! re-verifies every blob's sha256 itself before storing or serving it;
//! with one, blobs arrive as pieces from other peers, each checked against
//! the gateway-signed piece manifest, and the piece file becomes the stored
//! blob.
//!
//! Layout:
//! - [`admission`]: the node as a policy enforcement point (every manifest
//!   and blob served under a current gateway admission).
//! - [`revision`]: the newest policy revision seen from the gateway.
//! - [`gateway_source`]: the gateway as the peer's [`Source`](customs_mirror::Source).
//! - [`config`]: the peer's configuration.
//! - [`swarm`]: piece download, verification and serving.
//! - [`server`]: wiring and the `serve` entry point.
#![forbid(unsafe_code)]

pub mod admission;
pub mod config;
pub mod gateway_source;
pub mod metrics;
pub mod preheat;
pub mod revision;
pub mod server;
/// The swarm, from its own crate (the gateway's seed uses it too).
pub use customs_swarm as swarm;

pub use config::PeerConfig;
pub use server::{Peer, PeerError};
