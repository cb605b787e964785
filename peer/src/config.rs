//! The peer's configuration: a YAML file, overridden by flags.

use serde::Deserialize;
use std::path::PathBuf;

/// Peer settings; unknown keys are an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerConfig {
    /// Where the local store lives.
    pub data_dir: PathBuf,
    /// The gateway's OCI endpoint, e.g. `http://127.0.0.1:5050`.
    pub gateway: Option<String>,
    /// More gateways of the fleet, tried in order after `gateway` when it
    /// cannot be reached (the bootstrap list; the live fleet is learned
    /// from whichever answers).
    pub gateways: Vec<String>,
    /// The registry a request without `?ns=` means; should match the
    /// gateway's default upstream.
    pub default_registry: String,
    /// Size limit of the local store in bytes.
    pub max_cache_bytes: Option<u64>,
    /// The scheduler's URL (`https://host:port`); with it the peer swarms.
    pub scheduler: Option<String>,
    /// This peer's id (its certificate must name `<id>.node.customs.internal`).
    pub peer_id: Option<String>,
    /// Where other peers fetch pieces from (host:port, advertised as is).
    pub upload_addr: Option<String>,
    /// Upload limit for serving other peers, bytes per second (0 = none).
    pub upload_limit: u64,
    /// Pieces uploaded to other peers at once (they share the limit).
    pub upload_slots: usize,
    /// Piece requests that may wait for a slot; beyond them a requester is
    /// told "busy" (503) at once and asks another parent.
    pub upload_queue: usize,
    /// mTLS CA file.
    pub tls_ca: Option<PathBuf>,
    /// mTLS certificate file.
    pub tls_cert: Option<PathBuf>,
    /// mTLS key file.
    pub tls_key: Option<PathBuf>,
    /// Trusted gateway public keys (PEM files) for piece manifests.
    pub gateway_keys: Vec<PathBuf>,
    /// Locality: zone.
    pub zone: String,
    /// Locality: rack.
    pub rack: String,
    /// How long a gateway admission is reused before the node asks again
    /// (seconds; an admission of an older revision is never reused).
    pub admission_ttl_secs: u64,
    /// Fail static: while the gateway is unreachable, admissions of the
    /// newest revision keep being served this long after their last
    /// confirmation (seconds), then the node refuses.
    pub admission_stale_max_secs: u64,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            data_dir: PathBuf::from("/var/lib/customs/peer"),
            gateway: None,
            gateways: Vec::new(),
            default_registry: "docker.io".to_owned(),
            max_cache_bytes: None,
            scheduler: None,
            peer_id: None,
            upload_addr: None,
            upload_limit: 0,
            upload_slots: crate::swarm::piece_server::PEER_UPLOAD_SLOTS,
            upload_queue: crate::swarm::piece_server::PEER_UPLOAD_QUEUE,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            gateway_keys: Vec::new(),
            zone: String::new(),
            rack: String::new(),
            admission_ttl_secs: crate::admission::DEFAULT_ADMISSION_TTL_SECS,
            admission_stale_max_secs: crate::admission::DEFAULT_ADMISSION_STALE_MAX_SECS,
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
        if self.upload_slots == 0 {
            return Err(PeerConfigError::Invalid(
                "upload_slots must be at least 1".into(),
            ));
        }
        if self.scheduler.is_some() {
            let missing: Vec<&str> = [
                ("peer_id", self.peer_id.is_none()),
                ("tls_ca", self.tls_ca.is_none()),
                ("tls_cert", self.tls_cert.is_none()),
                ("tls_key", self.tls_key.is_none()),
                ("gateway_keys", self.gateway_keys.is_empty()),
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
                ("gateway", self.gateway.as_deref()),
                ("scheduler", self.scheduler.as_deref()),
            ];
            let more = self.gateways.iter().map(|g| ("gateway", Some(g.as_str())));
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
            .gateways
            .iter()
            .find(|g| !(g.starts_with("http://") || g.starts_with("https://")))
        {
            return Err(PeerConfigError::Invalid(format!(
                "gateway {g:?} must be an http(s) URL"
            )));
        }
        match &self.gateway {
            Some(g) if g.starts_with("http://") || g.starts_with("https://") => Ok(()),
            Some(g) => Err(PeerConfigError::Invalid(format!(
                "gateway {g:?} must be an http(s) URL"
            ))),
            None => Err(PeerConfigError::Invalid("no gateway: set --gateway".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_mode_refuses_plain_http() {
        let mut c = PeerConfig {
            gateway: Some("https://127.0.0.1:5051".into()),
            scheduler: Some("https://127.0.0.1:5060".into()),
            peer_id: Some("p1".into()),
            tls_ca: Some("ca.pem".into()),
            tls_cert: Some("p1.pem".into()),
            tls_key: Some("p1.key".into()),
            gateway_keys: vec!["gw.pub".into()],
            ..PeerConfig::default()
        };
        c.validate().unwrap();
        c.gateway = Some("http://127.0.0.1:5050".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("swarm mode refuses gateway"), "{e}");
        c.gateway = Some("https://127.0.0.1:5051".into());
        c.gateways = vec!["http://127.0.0.1:5052".into()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("swarm mode refuses gateway"), "{e}");
        c.gateways.clear();
        c.scheduler = Some("http://127.0.0.1:5060".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("swarm mode refuses scheduler"), "{e}");
        // Without a swarm a loopback http:// gateway stays allowed.
        let plain = PeerConfig {
            gateway: Some("http://127.0.0.1:5050".into()),
            ..PeerConfig::default()
        };
        plain.validate().unwrap();
    }
}
