//! The scheduler's configuration file: `customs scheduler --config FILE`,
//! layered like the others (see [`crate::layered`]). The scheduler keeps
//! no state of its own beyond its audit log, so this is short; it lives
//! here because the scheduler crate has no view of the fleet's Redis.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Scheduler settings, in sections; unknown keys are an error.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Address to serve gRPC (mTLS) on.
    pub listen: SocketAddr,
    /// Folder with ca.pem, scheduler.pem and scheduler.key (what `customs
    /// certs` and `customs up` write); `tls` overrides single files.
    pub pki_dir: PathBuf,
    /// Trusted gateway public keys (PEM), several during a rotation.
    pub gateway_keys: Vec<PathBuf>,
    /// mTLS files.
    pub tls: SchedulerTls,
    /// The bad-piece audit log.
    pub audit: SchedulerAudit,
    /// Membership in a fleet on Redis.
    pub fleet: SchedulerFleet,
}

/// `tls:` — mTLS files (default: under `pki_dir`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerTls {
    /// CA file [default: PKI_DIR/ca.pem].
    pub ca: Option<PathBuf>,
    /// Certificate [default: PKI_DIR/scheduler.pem].
    pub cert: Option<PathBuf>,
    /// Key [default: PKI_DIR/scheduler.key].
    pub key: Option<PathBuf>,
}

/// `audit:` — where bad-piece reports are logged (JSON lines).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerAudit {
    /// The log file; none: reports are only counted.
    pub log: Option<PathBuf>,
}

/// `fleet:` — heartbeating membership in the fleet's Redis.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerFleet {
    /// The fleet's Redis (as the gateway's `fleet.redis`; better given as
    /// `CUSTOMS_FLEET_REDIS`). Never written out.
    #[serde(skip_serializing)]
    pub redis: Option<customs_fleet::FleetUrl>,
    /// PEM CAs trusted for a `rediss://` Redis.
    pub redis_ca: Option<PathBuf>,
    /// This scheduler's id (default: host name and listen port).
    pub id: Option<String>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            pki_dir: PathBuf::from("customs-data/pki"),
            gateway_keys: vec![PathBuf::from("customs-data/gateway-key.pub")],
            tls: SchedulerTls::default(),
            audit: SchedulerAudit::default(),
            fleet: SchedulerFleet::default(),
        }
    }
}

impl SchedulerConfig {
    /// Checks what the layers cannot: each error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.gateway_keys.is_empty() {
            anyhow::bail!("gateway_keys: at least one gateway public key is needed");
        }
        if self.fleet.redis_ca.is_some() && self.fleet.redis.is_none() {
            anyhow::bail!("fleet.redis_ca needs fleet.redis");
        }
        if let Some(id) = &self.fleet.id {
            id.parse::<customs_fleet::MemberId>()
                .map_err(|e| anyhow::anyhow!("fleet.id: {e}"))?;
        }
        Ok(())
    }
}
