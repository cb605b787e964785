//! A deterministic discrete-event simulation of a rollout to thousands of
//! nodes, driving the real code: the scheduler's state machine
//! ([`customs_scheduler::state::SchedulerState`], in process, without
//! sockets), and on every simulated peer the real download planner and
//! parent health ([`customs_swarm::planner`], [`customs_swarm::health`]),
//! called exactly as the peer's download loop calls them.
//!
//! What is simulated instead of run: links ([`link`]: each node's upload
//! capped at B and shared by its active uploads, the piece server's slot
//! and queue rules, a round-trip time per request), and time (a virtual
//! clock; the planner and scheduler get `Instant`s on it). A 2-core
//! machine cannot run 10,000 peer processes; this runs their logic.
//!
//! - [`config`]: the knobs (`customs bench fleet-sim` flags).
//! - [`link`]: one node's upload side.
//! - [`world`]: the event loop, peers and scheduler calls.
//! - [`report`]: the figures a run prints.
#![forbid(unsafe_code)]

pub mod config;
pub mod link;
pub mod report;
pub mod world;

pub use config::SimConfig;
pub use report::SimReport;
pub use world::{SimError, simulate};

#[cfg(test)]
mod tests;
