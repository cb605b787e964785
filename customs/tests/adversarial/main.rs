//! The adversarial end-to-end suite (issue 10): each test plays one
//! attacker from the red-team review of the peer, the gateway, the
//! scheduler and the transports (a hostile peer, upstream, client, a pod on
//! the node, a network attacker) against real components: a real
//! `docker-registry`, `skopeo`, and `customs` processes. Every test fails
//! when the defence it covers is removed.
//!
//! Layout, one module per attack surface:
//! - [`enforcement`]: the peer as a policy enforcement point, revocation,
//!   piece manifests built from stored blobs.
//! - [`transport`]: role-checked TLS, handshake timeouts, connection caps,
//!   the HTTPS node → gateway path.
//! - [`audit`]: forged lines in the audit log.
//! - [`keys`]: private key and token file modes.
//! - [`scheduler`]: identities, bad-piece reports, bounded state.
//! - [`swarm`]: peers that never read, stalled transfers, duplicate writes.
//! - [`upstream`]: endless, slow and stalled upstreams.
#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod audit;
mod enforcement;
mod keys;
mod scheduler;
mod swarm;
mod transport;
mod upstream;
