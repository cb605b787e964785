//! The Customs gateway: the seed peer and policy gate.
//!
//! It is the only component that talks to upstream registries. Every
//! manifest passes its admission point before a byte is served, every blob
//! is checked against its digest before it is stored, and credentials for
//! upstreams never leave it.
//!
//! Layout:
//! - [`credentials`]: docker `config.json` credentials, redacted in logs.
//! - [`upstream`]: the upstream registries, as a mirror [`Source`].
//! - [`registry_client`]: one bounded HTTP client per upstream (token auth,
//!   timeouts, bodies capped while streaming).
//! - [`admission`]: the admission point (allow-all until policies land).
//! - [`policy_source`]: policies from a directory or Git, polled and reloaded.
//! - [`preheat`], [`api`]: preheat jobs, the Dragonfly-compatible job API and Harbor's webhook.
//! - [`audit_export`]: the audit log exported to syslog, Splunk HEC, HTTP or a file.
//! - [`metrics`]: Prometheus metrics.
//! - [`seed`]: piece manifests signed for verified blobs, registered with the scheduler.
//! - [`config`]: the gateway's configuration.
//! - [`status`]: `/customs/v1/status` and `/metrics`.
//! - [`server`]: wiring and the `run` entry point.
//!
//! [`Source`]: customs_mirror::Source
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod audit_export;
pub mod config;
pub mod credentials;
pub mod evidence;
pub mod fleet_source;
pub mod metrics;
pub mod policy_source;
pub mod preheat;
pub mod registry_client;
pub mod seed;
pub mod server;
pub mod status;
pub mod upstream;

pub use config::GatewayConfig;
pub use server::{Gateway, GatewayError};
