//! Flag groups several components share, each with the config keys it
//! sets: one definition, one overlay, whichever command flattens it.

use crate::layered::Overlay;
use clap::Args;
use std::path::PathBuf;

/// mTLS files (`gateway`, `peer`, `scheduler`, `up`): `tls.ca`,
/// `tls.cert`, `tls.key`.
#[derive(Args, Clone, Debug, Default)]
pub struct TlsFlags {
    /// mTLS CA file.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// mTLS certificate (carrying this component's role).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// mTLS private key.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
}

impl TlsFlags {
    /// Sets the keys these flags name.
    pub fn overlay(&self, o: &mut Overlay) -> anyhow::Result<()> {
        o.set("tls.ca", self.tls_ca.as_ref())?;
        o.set("tls.cert", self.tls_cert.as_ref())?;
        o.set("tls.key", self.tls_key.as_ref())
    }
}

/// The fleet's Redis (`gateway`, `scheduler`, `up`): `fleet.redis`,
/// `fleet.redis_ca`.
#[derive(Args, Clone, Debug, Default)]
pub struct FleetFlags {
    /// The fleet's Redis: redis://[user:password@]host:port[/db] or
    /// rediss:// (TLS). Gateways and schedulers sharing it form one fleet
    /// (membership, shared preheat jobs). Without it everything stays
    /// embedded.
    #[arg(long, env = "CUSTOMS_FLEET_REDIS", hide_env_values = true)]
    pub fleet_redis: Option<customs_fleet::FleetUrl>,
    /// PEM CAs trusted for a rediss:// --fleet-redis (system roots otherwise).
    #[arg(long, env = "CUSTOMS_FLEET_REDIS_CA", requires = "fleet_redis")]
    pub fleet_redis_ca: Option<PathBuf>,
}

impl FleetFlags {
    /// Sets the keys these flags name.
    pub fn overlay(&self, o: &mut Overlay) -> anyhow::Result<()> {
        o.set(
            "fleet.redis",
            self.fleet_redis.as_ref().map(|u| u.expose_for_child()),
        )?;
        o.set("fleet.redis_ca", self.fleet_redis_ca.as_ref())
    }
}
