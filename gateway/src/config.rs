//! The gateway's configuration: a YAML file, overridden by flags.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Gateway settings. Every field has a default so a file only names what it
/// changes; unknown keys are an error so a typo never silently does nothing.
///
/// Serializable so `customs up` can hand each gateway of a local fleet its
/// file; the fleet URL (which may carry a password) is never written out.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where blobs, the index and the audit log live.
    pub data_dir: PathBuf,
    /// The default upstream registry URL (requests without `?ns=`).
    pub upstream: Option<String>,
    /// Extra upstreams: registry host (as containerd's `ns` names it) → URL.
    pub registries: BTreeMap<String, String>,
    /// A docker `config.json` with upstream credentials.
    pub docker_config: Option<PathBuf>,
    /// PEM file of extra CAs trusted for upstream TLS.
    pub extra_ca: Option<PathBuf>,
    /// Size limit of the blob store in bytes (LRU eviction beyond it).
    pub max_cache_bytes: Option<u64>,
    /// Seconds a tag resolution is reused without asking upstream.
    pub tag_ttl_secs: u64,
    /// Seconds a cached tag keeps being served while upstream is down.
    pub stale_window_secs: u64,
    /// The scheduler's URL (`https://host:port`); with it the gateway seeds the swarm.
    pub scheduler: Option<String>,
    /// The address peers reach the gateway's mTLS endpoint at (host:port).
    pub upload_addr: Option<String>,
    /// Everything the gateway sends, in bytes per second (0 = unlimited).
    pub upload_limit: u64,
    /// PKCS#8 PEM Ed25519 key that signs piece manifests (created if missing).
    pub signing_key: Option<PathBuf>,
    /// mTLS CA file.
    pub tls_ca: Option<PathBuf>,
    /// mTLS certificate file (must carry the gateway role).
    pub tls_cert: Option<PathBuf>,
    /// mTLS key file.
    pub tls_key: Option<PathBuf>,
    /// Certificate chain (PEM) for serving the OCI endpoint (`--listen`)
    /// over HTTPS to containerd; without it that endpoint is plain HTTP.
    pub listen_tls_cert: Option<PathBuf>,
    /// Private key of `listen_tls_cert`.
    pub listen_tls_key: Option<PathBuf>,
    /// Policy directory; without one (and without `policy_git`)
    /// everything is allowed in audit mode.
    pub policy: Option<PathBuf>,
    /// Policy Git repository (URL or path), polled.
    pub policy_git: Option<String>,
    /// Branch, tag or commit of `policy_git`.
    pub policy_ref: String,
    /// Seconds between polls of the policy source.
    pub policy_poll_secs: u64,
    /// Operator API address (preheat jobs, Harbor webhook, /metrics).
    pub api_listen: Option<std::net::SocketAddr>,
    /// Bearer token the API requires for jobs and webhooks.
    pub api_token: Option<String>,
    /// File holding `api_token` (0600; read at start, trailing newline
    /// trimmed), so the token stays out of the command line. Exclusive
    /// with `api_token`.
    pub api_token_file: Option<PathBuf>,
    /// Scope of preheats triggered by Harbor push webhooks.
    pub webhook_scope: String,
    /// Seconds between aggregate audit events (cache hits, refused connections).
    pub audit_aggregate_secs: u64,
    /// Syslog export target: `tcp://`, `udp://` or `tls://HOST:PORT`.
    pub audit_syslog: Option<String>,
    /// CA bundle trusted for `tls://` syslog.
    pub audit_syslog_ca: Option<PathBuf>,
    /// Export payload: `json` (Customs' own, default), `ocsf` (OCSF 1.1
    /// events, every sink) or `cef` (syslog only; other sinks send JSON).
    pub audit_format: String,
    /// Splunk HEC URL.
    pub audit_hec: Option<String>,
    /// Splunk HEC token.
    pub audit_hec_token: Option<String>,
    /// File holding `audit_hec_token` (as `api_token_file`).
    pub audit_hec_token_file: Option<PathBuf>,
    /// Generic HTTP(S) endpoint receiving JSON arrays of events.
    pub audit_http: Option<String>,
    /// JSON-lines file (`-` for stdout).
    pub audit_file: Option<PathBuf>,
    /// Seconds to wait for a TCP/TLS connection to an upstream.
    pub upstream_connect_timeout_secs: u64,
    /// Seconds from an upstream request to its response headers.
    pub upstream_first_byte_timeout_secs: u64,
    /// Seconds an upstream response body may stay silent before the
    /// transfer is cut off and its clients get an error.
    pub upstream_idle_timeout_secs: u64,
    /// Seconds a whole manifest, referrers index or token may take.
    pub upstream_body_timeout_secs: u64,
    /// The fleet's Redis (`redis://` or `rediss://`, with `user:password@`
    /// for an ACL user): membership and shared preheat jobs. Without it
    /// everything stays embedded.
    #[serde(skip_serializing)]
    pub fleet_redis: Option<customs_fleet::FleetUrl>,
    /// PEM CAs trusted for a `rediss://` fleet Redis (system roots
    /// otherwise).
    pub fleet_redis_ca: Option<PathBuf>,
    /// This gateway's id in the fleet (default: the host name and the
    /// `--listen` port).
    pub gateway_id: Option<String>,
    /// This gateway's zone in the fleet (empty: none). A gateway asks the
    /// owner among its own zone's gateways first; only each zone's owner
    /// fetches across zones, so at most one copy of a blob enters a zone.
    pub zone: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            data_dir: PathBuf::from("/var/lib/customs/gateway"),
            upstream: None,
            registries: BTreeMap::new(),
            docker_config: None,
            extra_ca: None,
            max_cache_bytes: None,
            tag_ttl_secs: 30,
            stale_window_secs: 6 * 3600,
            scheduler: None,
            upload_addr: None,
            upload_limit: 0,
            signing_key: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            listen_tls_cert: None,
            listen_tls_key: None,
            policy: None,
            policy_git: None,
            policy_ref: "main".to_owned(),
            policy_poll_secs: 10,
            api_listen: None,
            api_token: None,
            api_token_file: None,
            webhook_scope: "all_peers".to_owned(),
            audit_aggregate_secs: 60,
            audit_syslog: None,
            audit_syslog_ca: None,
            audit_format: "json".to_owned(),
            audit_hec: None,
            audit_hec_token: None,
            audit_hec_token_file: None,
            fleet_redis: None,
            fleet_redis_ca: None,
            gateway_id: None,
            zone: String::new(),
            audit_http: None,
            audit_file: None,
            upstream_connect_timeout_secs: crate::registry_client::CONNECT_TIMEOUT.as_secs(),
            upstream_first_byte_timeout_secs: crate::registry_client::FIRST_BYTE_TIMEOUT.as_secs(),
            upstream_idle_timeout_secs: crate::registry_client::IDLE_READ_TIMEOUT.as_secs(),
            upstream_body_timeout_secs: crate::registry_client::BODY_TIMEOUT.as_secs(),
        }
    }
}

/// Why a configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML does not parse or has unknown keys.
    #[error("gateway config: {0}")]
    Parse(String),
    /// A value is out of range or inconsistent.
    #[error("gateway config: {0}")]
    Invalid(String),
}

impl GatewayConfig {
    /// The configured policy source, if any (`policy_git` wins over
    /// `policy`; `validate` refuses both at once).
    pub fn policy_source(&self) -> Option<crate::policy_source::PolicySource> {
        use crate::policy_source::PolicySource;
        match (&self.policy_git, &self.policy) {
            (Some(url), _) => Some(PolicySource::Git {
                url: url.clone(),
                reference: self.policy_ref.clone(),
                mirror_dir: self.data_dir.join("policy-git"),
            }),
            (None, Some(dir)) => Some(PolicySource::Dir(dir.clone())),
            (None, None) => None,
        }
    }

    /// Parses a YAML document.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// Parses a `HOST=URL` flag value into the registries map.
    pub fn add_registry_flag(&mut self, flag: &str) -> Result<(), ConfigError> {
        let (host, url) = flag
            .split_once('=')
            .ok_or_else(|| ConfigError::Invalid(format!("--registry {flag:?} must be HOST=URL")))?;
        self.registries
            .insert(host.trim().to_owned(), url.trim().to_owned());
        Ok(())
    }

    /// The configuration with `api_token_file` and `audit_hec_token_file`
    /// read into `api_token` and `audit_hec_token`. Each file must not be
    /// group/other accessible (the error names the `chmod` that fixes it);
    /// a token given both inline and as a file is an error.
    pub fn with_token_files(&self) -> Result<Self, ConfigError> {
        self.validate()?;
        let mut cfg = self.clone();
        for (name, file, token) in [
            (
                "api_token_file",
                &mut cfg.api_token_file,
                &mut cfg.api_token,
            ),
            (
                "audit_hec_token_file",
                &mut cfg.audit_hec_token_file,
                &mut cfg.audit_hec_token,
            ),
        ] {
            if let Some(path) = file.take() {
                let read = customs_tls::read_token(&path)
                    .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
                *token = Some(read);
            }
        }
        Ok(cfg)
    }

    /// Checks ranges and required values after all overlays.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.upstream.is_none() && self.registries.is_empty() {
            return Err(ConfigError::Invalid(
                "no upstream registry: set --upstream or registries".into(),
            ));
        }
        if self.scheduler.is_some()
            && (self.tls_ca.is_none()
                || self.tls_cert.is_none()
                || self.tls_key.is_none()
                || self.upload_addr.is_none())
        {
            return Err(ConfigError::Invalid(
                "a scheduler needs tls_ca, tls_cert, tls_key and upload_addr".into(),
            ));
        }
        if let Some(s) = &self.scheduler
            && !s.starts_with("https://")
        {
            return Err(ConfigError::Invalid(format!(
                "scheduler {s:?} must be an https:// URL: the gateway verifies over mTLS that it holds the scheduler role"
            )));
        }
        if self.listen_tls_cert.is_some() != self.listen_tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "listen_tls_cert and listen_tls_key go together".into(),
            ));
        }
        if let Some(t) = &self.audit_syslog {
            crate::audit_export::Sink::syslog(t)
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if t.starts_with("tls://") && self.audit_syslog_ca.is_none() {
                return Err(ConfigError::Invalid(
                    "tls:// syslog needs audit_syslog_ca (the CA that issued the receiver's certificate)".into(),
                ));
            }
        }
        if !matches!(self.audit_format.as_str(), "json" | "ocsf" | "cef") {
            return Err(ConfigError::Invalid(
                "audit_format is json, ocsf or cef".into(),
            ));
        }
        if self.api_token.is_some() && self.api_token_file.is_some() {
            return Err(ConfigError::Invalid(
                "api_token and api_token_file are exclusive: give the token one way".into(),
            ));
        }
        if self.audit_hec_token.is_some() && self.audit_hec_token_file.is_some() {
            return Err(ConfigError::Invalid(
                "audit_hec_token and audit_hec_token_file are exclusive: give the token one way"
                    .into(),
            ));
        }
        if self.api_listen.is_some() && self.api_token.is_none() && self.api_token_file.is_none() {
            return Err(ConfigError::Invalid(
                "api_listen needs api_token or api_token_file (jobs and webhooks are authenticated)"
                    .into(),
            ));
        }
        let hec_token = self.audit_hec_token.is_some() || self.audit_hec_token_file.is_some();
        if self.audit_hec.is_some() != hec_token {
            return Err(ConfigError::Invalid(
                "audit_hec and audit_hec_token (or audit_hec_token_file) go together".into(),
            ));
        }
        if self.policy.is_some() && self.policy_git.is_some() {
            return Err(ConfigError::Invalid(
                "policy and policy_git are exclusive: choose one policy source".into(),
            ));
        }
        if let Some(id) = &self.gateway_id {
            id.parse::<customs_fleet::MemberId>()
                .map_err(|e| ConfigError::Invalid(format!("gateway_id: {e}")))?;
        }
        if self.fleet_redis_ca.is_some() && self.fleet_redis.is_none() {
            return Err(ConfigError::Invalid(
                "fleet_redis_ca needs fleet_redis".into(),
            ));
        }
        if self.stale_window_secs < self.tag_ttl_secs {
            return Err(ConfigError::Invalid(
                "stale_window_secs must be at least tag_ttl_secs".into(),
            ));
        }
        for (name, v) in [
            (
                "upstream_connect_timeout_secs",
                self.upstream_connect_timeout_secs,
            ),
            (
                "upstream_first_byte_timeout_secs",
                self.upstream_first_byte_timeout_secs,
            ),
            (
                "upstream_idle_timeout_secs",
                self.upstream_idle_timeout_secs,
            ),
            (
                "upstream_body_timeout_secs",
                self.upstream_body_timeout_secs,
            ),
        ] {
            // Zero would fail every request; no timeout at all is what
            // these bounds exist to prevent.
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_defaults_and_unknown_keys() {
        let c = GatewayConfig::from_yaml("data_dir: /tmp/x\nupstream: http://127.0.0.1:5000\n")
            .unwrap();
        assert_eq!(c.tag_ttl_secs, 30);
        c.validate().unwrap();
        assert!(GatewayConfig::from_yaml("data_dri: /tmp/x\n").is_err());
        assert!(GatewayConfig::default().validate().is_err());
        let mut c = GatewayConfig::default();
        c.add_registry_flag("127.0.0.1:5000=http://127.0.0.1:5000")
            .unwrap();
        assert!(c.add_registry_flag("nohost").is_err());
        c.validate().unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn tokens_from_files_are_private_trimmed_and_exclusive() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "abc\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = GatewayConfig::from_yaml(&format!(
            "upstream: http://127.0.0.1:5000\napi_listen: 127.0.0.1:1\napi_token_file: {}\n",
            f.display()
        ))
        .unwrap();
        let read = c.with_token_files().unwrap();
        assert_eq!(read.api_token.as_deref(), Some("abc"));
        assert!(read.api_token_file.is_none());
        read.validate().unwrap();
        // Readable by others: refused, naming the fix.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = c.with_token_files().unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        // Inline and file at once: refused.
        c.api_token = Some("x".into());
        assert!(c.validate().is_err());
        // api_listen without any token, audit_hec with a token file.
        let mut c = GatewayConfig::from_yaml("upstream: http://127.0.0.1:5000\n").unwrap();
        c.api_listen = Some("127.0.0.1:1".parse().unwrap());
        assert!(c.validate().is_err());
        c.api_listen = None;
        c.audit_hec = Some("http://127.0.0.1:9/".into());
        assert!(c.validate().is_err());
        c.audit_hec_token_file = Some(f.clone());
        c.validate().unwrap();
        c.audit_hec_token = Some("y".into());
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_scheduler_is_reached_over_https_only() {
        let mut c = GatewayConfig::from_yaml(
            "upstream: http://127.0.0.1:5000\ntls_ca: ca.pem\ntls_cert: g.pem\ntls_key: g.key\nupload_addr: 127.0.0.1:5051\n",
        )
        .unwrap();
        c.scheduler = Some("http://127.0.0.1:5060".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("must be an https:// URL"), "{e}");
        c.scheduler = Some("https://127.0.0.1:5060".into());
        c.validate().unwrap();
        c.listen_tls_cert = Some("gw.pem".into());
        assert!(c.validate().is_err());
        c.listen_tls_key = Some("gw.key".into());
        c.validate().unwrap();
    }
}
