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
    /// The registry a request without `?ns=` means; should match the
    /// gateway's default upstream.
    pub default_registry: String,
    /// Size limit of the local store in bytes.
    pub max_cache_bytes: Option<u64>,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            data_dir: PathBuf::from("/var/lib/customs/peer"),
            gateway: None,
            default_registry: "docker.io".to_owned(),
            max_cache_bytes: None,
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
        match &self.gateway {
            Some(g) if g.starts_with("http://") || g.starts_with("https://") => Ok(()),
            Some(g) => Err(PeerConfigError::Invalid(format!(
                "gateway {g:?} must be an http(s) URL"
            ))),
            None => Err(PeerConfigError::Invalid("no gateway: set --gateway".into())),
        }
    }
}
