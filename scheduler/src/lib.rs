//! The Customs scheduler: the swarm coordinator.
//!
//! It knows which peers hold which pieces of which admitted blobs and hands
//! each peer parents to fetch from. It only ever schedules a blob a gateway
//! registered with a piece manifest signed by a trusted gateway key, and
//! only a caller whose certificate carries the gateway role may register.
//! Its state is soft: peers re-announce and re-report after a restart.
//!
//! Layout:
//! - [`state`]: tasks, peers, piece bitmaps, parent selection, blocklists.
//! - [`service`]: the gRPC service (roles from mTLS certificates).
#![forbid(unsafe_code)]

pub mod service;
pub mod state;

pub use service::{SchedulerService, serve};
pub use state::SchedulerState;
