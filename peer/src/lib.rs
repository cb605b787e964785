//! The Customs peer: the node daemon containerd pulls through.
//!
//! It speaks the same OCI pull API as the gateway and keeps a local
//! content-addressed store. In this version it fetches whole blobs from the
//! gateway (which enforces admission and verifies upstream content) and
//! re-verifies every blob's sha256 itself before storing or serving it whole;
//! the swarm replaces the blob path with verified pieces from other peers.
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
pub mod swarm;

pub use config::PeerConfig;
pub use server::{Peer, PeerError};
