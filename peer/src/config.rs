//! The peer's configuration: a YAML file, overridden by flags.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Peer settings, in sections; unknown keys are an error, durations are
/// humantime strings (`20s`, `10m`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerConfig {
    /// Where the local store lives.
    pub data_dir: PathBuf,
    /// This peer's id (its certificate must name `<id>.node.customs.internal`).
    pub peer_id: Option<String>,
    /// The registry a request without `?ns=` means; should match the
    /// gateway's default upstream.
    pub default_registry: String,
    /// The gateways this node asks.
    pub gateway: GatewayLink,
    /// The local store.
    pub store: PeerStoreConfig,
    /// The swarm: scheduler, piece server, locality.
    pub swarm: PeerSwarmConfig,
    /// mTLS.
    pub tls: PeerTlsConfig,
    /// How the node enforces the gateway's admissions.
    pub policy: PeerPolicyConfig,
}

/// `gateway:` — how the node reaches its gateways.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayLink {
    /// The gateway's OCI endpoint, e.g. `http://127.0.0.1:5050`.
    pub url: Option<String>,
    /// More gateways of the fleet, tried in order after `url` when it
    /// cannot be reached (the bootstrap list; the live fleet is learned
    /// from whichever answers).
    pub fallback: Vec<String>,
    /// Trusted gateway public keys (PEM files) for piece manifests.
    pub keys: Vec<PathBuf>,
}

/// `store:` — the local store.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerStoreConfig {
    /// Size limit in bytes.
    pub max_cache_bytes: Option<u64>,
}

/// `swarm:` — the scheduler, this node's piece server and its locality.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSwarmConfig {
    /// The scheduler's URL (`https://host:port`); with it the peer swarms.
    pub scheduler: Option<String>,
    /// Where other peers fetch pieces from (host:port, advertised as is).
    pub upload_addr: Option<String>,
    /// Upload limit for serving other peers, bytes per second (0 = none).
    pub upload_limit: u64,
    /// Pieces uploaded to other peers at once (they share the limit).
    pub upload_slots: usize,
    /// Piece requests that may wait for a slot; beyond them a requester is
    /// told "busy" (503) at once and asks another parent.
    pub upload_queue: usize,
    /// Locality: zone.
    pub zone: String,
    /// Locality: rack.
    pub rack: String,
}

impl Default for PeerSwarmConfig {
    fn default() -> Self {
        PeerSwarmConfig {
            scheduler: None,
            upload_addr: None,
            upload_limit: 0,
            upload_slots: crate::swarm::piece_server::PEER_UPLOAD_SLOTS,
            upload_queue: crate::swarm::piece_server::PEER_UPLOAD_QUEUE,
            zone: String::new(),
            rack: String::new(),
        }
    }
}

/// `tls:` — mTLS files.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerTlsConfig {
    /// mTLS CA file.
    pub ca: Option<PathBuf>,
    /// mTLS certificate file.
    pub cert: Option<PathBuf>,
    /// mTLS key file.
    pub key: Option<PathBuf>,
}

/// `policy:` — reuse of the gateway's admissions on this node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerPolicyConfig {
    /// How long a gateway admission is reused before the node asks again
    /// (an admission of an older revision is never reused).
    #[serde(with = "humantime_serde")]
    pub admission_ttl: Duration,
    /// Fail static: while the gateway is unreachable, admissions of the
    /// newest revision keep being served this long after their last
    /// confirmation, then the node refuses.
    #[serde(with = "humantime_serde")]
    pub admission_stale_max: Duration,
}

impl Default for PeerPolicyConfig {
    fn default() -> Self {
        PeerPolicyConfig {
            admission_ttl: Duration::from_secs(crate::admission::DEFAULT_ADMISSION_TTL_SECS),
            admission_stale_max: Duration::from_secs(
                crate::admission::DEFAULT_ADMISSION_STALE_MAX_SECS,
            ),
        }
    }
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            data_dir: PathBuf::from("/var/lib/customs/peer"),
            peer_id: None,
            default_registry: "docker.io".to_owned(),
            gateway: GatewayLink::default(),
            store: PeerStoreConfig::default(),
            swarm: PeerSwarmConfig::default(),
            tls: PeerTlsConfig::default(),
            policy: PeerPolicyConfig::default(),
        }
    }
}

/// Why a peer configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PeerConfigError {
    /// YAML syntax or unknown keys.
    #[error("peer config: {0}")]
    Parse(String),
    /// Missing or bad values.
    #[error("peer config: {0}")]
    Invalid(String),
}

impl PeerConfig {
    /// Parses a YAML document.
    pub fn from_yaml(text: &str) -> Result<Self, PeerConfigError> {
        serde_saphyr::from_str(text).map_err(|e| PeerConfigError::Parse(e.to_string()))
    }

    /// Checks required values.
    pub fn validate(&self) -> Result<(), PeerConfigError> {
        if self.swarm.upload_slots == 0 {
            return Err(PeerConfigError::Invalid(
                "swarm.upload_slots must be at least 1".into(),
            ));
        }
        if self.swarm.scheduler.is_some() {
            let missing: Vec<&str> = [
                ("peer_id", self.peer_id.is_none()),
                ("tls.ca", self.tls.ca.is_none()),
                ("tls.cert", self.tls.cert.is_none()),
                ("tls.key", self.tls.key.is_none()),
                ("gateway.keys", self.gateway.keys.is_empty()),
            ]
            .into_iter()
            .filter(|(_, m)| *m)
            .map(|(n, _)| n)
            .collect();
            if !missing.is_empty() {
                return Err(PeerConfigError::Invalid(format!(
                    "swarm mode (scheduler set) needs {}",
                    missing.join(", ")
                )));
            }
            // Plain HTTP would let anyone on the network answer as the
            // gateway (any manifest, any task) or the scheduler; over mTLS
            // the peer checks each one holds its role.
            let named = [
                ("gateway", self.gateway.url.as_deref()),
                ("scheduler", self.swarm.scheduler.as_deref()),
            ];
            let more = self
                .gateway
                .fallback
                .iter()
                .map(|g| ("gateway", Some(g.as_str())));
            for (what, url) in named.into_iter().chain(more) {
                if let Some(u) = url
                    && !u.starts_with("https://")
                {
                    return Err(PeerConfigError::Invalid(format!(
                        "swarm mode refuses {what} {u:?}: it must be an https:// URL (the peer verifies over mTLS that it holds the {what} role)"
                    )));
                }
            }
        }
        if let Some(g) = self
            .gateway
            .fallback
            .iter()
            .find(|g| !(g.starts_with("http://") || g.starts_with("https://")))
        {
            return Err(PeerConfigError::Invalid(format!(
                "gateway {g:?} must be an http(s) URL"
            )));
        }
        match &self.gateway.url {
            Some(g) if g.starts_with("http://") || g.starts_with("https://") => Ok(()),
            Some(g) => Err(PeerConfigError::Invalid(format!(
                "gateway {g:?} must be an http(s) URL"
            ))),
            None => Err(PeerConfigError::Invalid(
                "no gateway: set gateway.url (--gateway)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_mode_refuses_plain_http() {
        let mut c = PeerConfig::default();
        c.gateway.url = Some("https://127.0.0.1:5051".into());
        c.gateway.keys = vec!["gw.pub".into()];
        c.swarm.scheduler = Some("https://127.0.0.1:5060".into());
        c.peer_id = Some("p1".into());
        c.tls = PeerTlsConfig {
            ca: Some("ca.pem".into()),
            cert: Some("p1.pem".into()),
            key: Some("p1.key".into()),
        };
        c.validate().unwrap();
        c.gateway.url = Some("http://127.0.0.1:5050".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("swarm mode refuses gateway"), "{e}");
        c.gateway.url = Some("https://127.0.0.1:5051".into());
        c.gateway.fallback = vec!["http://127.0.0.1:5052".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("swarm mode refuses gateway"), "{e}");
        c.gateway.fallback.clear();
        c.swarm.scheduler = Some("http://127.0.0.1:5060".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("swarm mode refuses scheduler"), "{e}");
        // Without a swarm a loopback http:// gateway stays allowed.
        let mut plain = PeerConfig::default();
        plain.gateway.url = Some("http://127.0.0.1:5050".into());
        plain.validate().unwrap();
    }

    #[test]
    fn sections_durations_and_unknown_keys() {
        let c = PeerConfig::from_yaml(
            "gateway:\n  url: http://127.0.0.1:5050\npolicy:\n  admission_ttl: 45s\n",
        )
        .unwrap();
        assert_eq!(c.policy.admission_ttl, Duration::from_secs(45));
        assert!(PeerConfig::from_yaml("swarm:\n  upload_slot: 3\n").is_err());
        assert!(PeerConfig::from_yaml("policy:\n  admission_ttl: later\n").is_err());
    }
}
