//! The gateway's configuration: a YAML file, overridden by flags.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Gateway settings, in sections. Every field has a default so a file only
/// names what it changes; unknown keys are an error so a typo never
/// silently does nothing. Durations are humantime strings (`30s`, `6h`).
///
/// Serializable so `customs up` can hand each gateway of a local fleet its
/// file and `--print-config` can show it; secrets serialize redacted and
/// the fleet URL (which may carry a password) is never written out.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where blobs, the index and the audit log live.
    pub data_dir: PathBuf,
    /// The registries the gateway fetches from, and how long it waits.
    pub upstream: UpstreamConfig,
    /// The blob store.
    pub store: StoreConfig,
    /// Seeding the swarm.
    pub swarm: SwarmConfig,
    /// Certificates: mTLS between components, HTTPS for containerd.
    pub tls: TlsConfig,
    /// Where policies come from.
    pub policy: PolicyConfig,
    /// The operator API.
    pub api: ApiConfig,
    /// The audit log's aggregation and export.
    pub audit: AuditConfig,
    /// Several gateways and schedulers on one Redis.
    pub fleet: FleetConfig,
}

/// `upstream:` — the registries and the bounds on talking to them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// The default upstream registry URL (requests without `?ns=`).
    pub url: Option<String>,
    /// Extra upstreams: registry host (as containerd's `ns` names it) → URL.
    pub registries: BTreeMap<String, String>,
    /// A docker `config.json` with upstream credentials.
    pub docker_config: Option<PathBuf>,
    /// PEM file of extra CAs trusted for upstream TLS.
    pub extra_ca: Option<PathBuf>,
    /// How long a tag resolution is reused without asking upstream.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// How long a cached tag keeps being served while upstream is down.
    #[serde(with = "humantime_serde")]
    pub stale_window: Duration,
    /// Wait for a TCP/TLS connection to an upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// From an upstream request to its response headers.
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    /// How long an upstream response body may stay silent before the
    /// transfer is cut off and its clients get an error.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a whole manifest, referrers index or token may take.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: None,
            registries: BTreeMap::new(),
            docker_config: None,
            extra_ca: None,
            tag_ttl: Duration::from_secs(30),
            stale_window: Duration::from_secs(6 * 3600),
            connect_timeout: crate::registry_client::CONNECT_TIMEOUT,
            first_byte_timeout: crate::registry_client::FIRST_BYTE_TIMEOUT,
            idle_timeout: crate::registry_client::IDLE_READ_TIMEOUT,
            body_timeout: crate::registry_client::BODY_TIMEOUT,
        }
    }
}

/// `store:` — the local blob store.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Size limit in bytes (LRU eviction beyond it).
    pub max_cache_bytes: Option<u64>,
}

/// `swarm:` — seeding the peer-to-peer swarm.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwarmConfig {
    /// The scheduler's URL (`https://host:port`); with it the gateway seeds the swarm.
    pub scheduler: Option<String>,
    /// The address peers reach the gateway's mTLS endpoint at (host:port).
    pub upload_addr: Option<String>,
    /// Everything the gateway sends, in bytes per second (0 = unlimited).
    pub upload_limit: u64,
    /// PKCS#8 PEM Ed25519 key that signs piece manifests (created if missing).
    pub signing_key: Option<PathBuf>,
}

/// `tls:` — certificates.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// mTLS CA file.
    pub ca: Option<PathBuf>,
    /// mTLS certificate file (must carry the gateway role).
    pub cert: Option<PathBuf>,
    /// mTLS key file.
    pub key: Option<PathBuf>,
    /// Certificate chain (PEM) for serving the OCI endpoint (`--listen`)
    /// over HTTPS to containerd; without it that endpoint is plain HTTP.
    pub listen_cert: Option<PathBuf>,
    /// Private key of `listen_cert`.
    pub listen_key: Option<PathBuf>,
}

/// `policy:` — the policy source.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Policy directory; without one (and without `git`) everything is
    /// allowed in audit mode.
    pub dir: Option<PathBuf>,
    /// Policy Git repository (URL or path), polled.
    pub git: Option<String>,
    /// Branch, tag or commit of `git`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Time between polls of the policy source.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            dir: None,
            git: None,
            git_ref: "main".to_owned(),
            poll: Duration::from_secs(10),
        }
    }
}

/// Which nodes a Harbor push webhook preheats (Dragonfly's scope names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WebhookScope {
    /// Every live peer.
    #[default]
    AllPeers,
    /// One peer.
    SinglePeer,
    /// The gateway only.
    SingleSeedPeer,
    /// The gateways only.
    AllSeedPeers,
}

impl WebhookScope {
    /// Its name in flags and files.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookScope::AllPeers => "all_peers",
            WebhookScope::SinglePeer => "single_peer",
            WebhookScope::SingleSeedPeer => "single_seed_peer",
            WebhookScope::AllSeedPeers => "all_seed_peers",
        }
    }

    /// The preheat scope it means.
    pub fn scope(self) -> crate::preheat::Scope {
        use crate::preheat::Scope;
        match self {
            WebhookScope::AllPeers => Scope::AllPeers,
            WebhookScope::SinglePeer => Scope::SinglePeer,
            WebhookScope::SingleSeedPeer | WebhookScope::AllSeedPeers => Scope::SeedPeers,
        }
    }
}

/// `api:` — the operator API (preheat jobs, Harbor webhook, /metrics).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Its address.
    pub listen: Option<std::net::SocketAddr>,
    /// Bearer token the API requires for jobs and webhooks.
    pub token: Option<customs_runtime::Secret>,
    /// File holding `token` (0600; read at start, trailing newline
    /// trimmed), so the token stays out of the command line. Exclusive
    /// with `token`.
    pub token_file: Option<PathBuf>,
    /// Scope of preheats triggered by Harbor push webhooks.
    pub webhook_scope: WebhookScope,
}

/// `audit:` — aggregation and export of the audit log.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Time between aggregate audit events (cache hits, refused connections).
    #[serde(with = "humantime_serde")]
    pub aggregate: Duration,
    /// Export payload: `json` (Customs' own, default), `ocsf` (OCSF 1.1
    /// events, every sink) or `cef` (syslog only; other sinks send JSON).
    pub format: crate::audit_export::Format,
    /// Syslog export target: `tcp://`, `udp://` or `tls://HOST:PORT`.
    pub syslog: Option<String>,
    /// CA bundle trusted for `tls://` syslog.
    pub syslog_ca: Option<PathBuf>,
    /// Splunk HEC URL.
    pub hec: Option<String>,
    /// Splunk HEC token.
    pub hec_token: Option<customs_runtime::Secret>,
    /// File holding `hec_token` (as `api.token_file`).
    pub hec_token_file: Option<PathBuf>,
    /// Generic HTTP(S) endpoint receiving JSON arrays of events.
    pub http: Option<String>,
    /// JSON-lines file (`-` for stdout).
    pub file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            aggregate: Duration::from_secs(60),
            format: crate::audit_export::Format::Json,
            syslog: None,
            syslog_ca: None,
            hec: None,
            hec_token: None,
            hec_token_file: None,
            http: None,
            file: None,
        }
    }
}

/// `fleet:` — several gateways and schedulers on one Redis.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// The fleet's Redis (`redis://` or `rediss://`, with `user:password@`
    /// for an ACL user): membership and shared preheat jobs. Without it
    /// everything stays embedded.
    #[serde(skip_serializing)]
    pub redis: Option<customs_fleet::FleetUrl>,
    /// PEM CAs trusted for a `rediss://` fleet Redis (system roots
    /// otherwise).
    pub redis_ca: Option<PathBuf>,
    /// This gateway's id in the fleet (default: the host name and the
    /// `--listen` port).
    pub id: Option<String>,
    /// This gateway's zone in the fleet (empty: none). A gateway asks the
    /// owner among its own zone's gateways first; only each zone's owner
    /// fetches across zones, so at most one copy of a blob enters a zone.
    pub zone: String,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            data_dir: PathBuf::from("/var/lib/customs/gateway"),
            upstream: UpstreamConfig::default(),
            store: StoreConfig::default(),
            swarm: SwarmConfig::default(),
            tls: TlsConfig::default(),
            policy: PolicyConfig::default(),
            api: ApiConfig::default(),
            audit: AuditConfig::default(),
            fleet: FleetConfig::default(),
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
    /// The configured policy source, if any (`policy.git` wins over
    /// `policy.dir`; `validate` refuses both at once).
    pub fn policy_source(&self) -> Option<crate::policy_source::PolicySource> {
        use crate::policy_source::PolicySource;
        match (&self.policy.git, &self.policy.dir) {
            (Some(url), _) => Some(PolicySource::Git {
                url: url.clone(),
                reference: self.policy.git_ref.clone(),
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
        self.upstream
            .registries
            .insert(host.trim().to_owned(), url.trim().to_owned());
        Ok(())
    }

    /// The configuration with `api.token_file` and `audit.hec_token_file`
    /// read into `api.token` and `audit.hec_token`. Each file must not be
    /// group/other accessible (the error names the `chmod` that fixes it);
    /// a token given both inline and as a file is an error.
    pub fn with_token_files(&self) -> Result<Self, ConfigError> {
        self.validate()?;
        let mut cfg = self.clone();
        for (name, file, token) in [
            (
                "api.token_file",
                &mut cfg.api.token_file,
                &mut cfg.api.token,
            ),
            (
                "audit.hec_token_file",
                &mut cfg.audit.hec_token_file,
                &mut cfg.audit.hec_token,
            ),
        ] {
            if let Some(path) = file.take() {
                let read = customs_tls::read_token(&path)
                    .map_err(|e| ConfigError::Invalid(format!("{name}: {e}")))?;
                *token = Some(customs_runtime::Secret::new(read));
            }
        }
        Ok(cfg)
    }

    /// Checks ranges and required values after all overlays; each error
    /// names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.upstream.url.is_none() && self.upstream.registries.is_empty() {
            return invalid(
                "no upstream registry: set upstream.url (--upstream) or upstream.registries".into(),
            );
        }
        let (tls, swarm) = (&self.tls, &self.swarm);
        if swarm.scheduler.is_some()
            && (tls.ca.is_none()
                || tls.cert.is_none()
                || tls.key.is_none()
                || swarm.upload_addr.is_none())
        {
            return invalid(
                "swarm.scheduler needs tls.ca, tls.cert, tls.key and swarm.upload_addr".into(),
            );
        }
        if let Some(s) = &swarm.scheduler
            && !s.starts_with("https://")
        {
            return invalid(format!(
                "swarm.scheduler {s:?} must be an https:// URL: the gateway verifies over mTLS that it holds the scheduler role"
            ));
        }
        if tls.listen_cert.is_some() != tls.listen_key.is_some() {
            return invalid("tls.listen_cert and tls.listen_key go together".into());
        }
        let audit = &self.audit;
        if let Some(t) = &audit.syslog {
            crate::audit_export::Sink::syslog(t)
                .map_err(|e| ConfigError::Invalid(format!("audit.syslog: {e}")))?;
            if t.starts_with("tls://") && audit.syslog_ca.is_none() {
                return invalid(
                    "audit.syslog tls:// needs audit.syslog_ca (the CA that issued the receiver's certificate)".into(),
                );
            }
        }
        let api = &self.api;
        if api.token.is_some() && api.token_file.is_some() {
            return invalid(
                "api.token and api.token_file are exclusive: give the token one way".into(),
            );
        }
        if audit.hec_token.is_some() && audit.hec_token_file.is_some() {
            return invalid(
                "audit.hec_token and audit.hec_token_file are exclusive: give the token one way"
                    .into(),
            );
        }
        if api.listen.is_some() && api.token.is_none() && api.token_file.is_none() {
            return invalid(
                "api.listen needs api.token or api.token_file (jobs and webhooks are authenticated)"
                    .into(),
            );
        }
        let hec_token = audit.hec_token.is_some() || audit.hec_token_file.is_some();
        if audit.hec.is_some() != hec_token {
            return invalid(
                "audit.hec and audit.hec_token (or audit.hec_token_file) go together".into(),
            );
        }
        if self.policy.dir.is_some() && self.policy.git.is_some() {
            return invalid(
                "policy.dir and policy.git are exclusive: choose one policy source".into(),
            );
        }
        if let Some(id) = &self.fleet.id {
            id.parse::<customs_fleet::MemberId>()
                .map_err(|e| ConfigError::Invalid(format!("fleet.id: {e}")))?;
        }
        if self.fleet.redis_ca.is_some() && self.fleet.redis.is_none() {
            return invalid("fleet.redis_ca needs fleet.redis".into());
        }
        let up = &self.upstream;
        if up.stale_window < up.tag_ttl {
            return invalid("upstream.stale_window must be at least upstream.tag_ttl".into());
        }
        // Zero would fail every request, and no bound at all is what these
        // exist to prevent; beyond an hour a stuck upstream holds clients
        // for longer than any of them waits.
        for (name, v) in [
            ("upstream.connect_timeout", up.connect_timeout),
            ("upstream.first_byte_timeout", up.first_byte_timeout),
            ("upstream.idle_timeout", up.idle_timeout),
            ("upstream.body_timeout", up.body_timeout),
            ("policy.poll", self.policy.poll),
            ("audit.aggregate", audit.aggregate),
        ] {
            in_range(name, v, Duration::from_secs(1), Duration::from_secs(3600))?;
        }
        Ok(())
    }
}

/// `v` within `min..=max`, else an error naming `key`.
pub fn in_range(key: &str, v: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(ConfigError::Invalid(format!(
            "{key} is {}: it must be between {} and {}",
            humantime_serde::re::humantime::format_duration(v),
            humantime_serde::re::humantime::format_duration(min),
            humantime_serde::re::humantime::format_duration(max)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_defaults_and_unknown_keys() {
        let c = GatewayConfig::from_yaml(
            "data_dir: /tmp/x\nupstream:\n  url: http://127.0.0.1:5000\n  tag_ttl: 45s\n",
        )
        .unwrap();
        assert_eq!(c.upstream.tag_ttl, Duration::from_secs(45));
        assert_eq!(c.policy.poll, Duration::from_secs(10));
        c.validate().unwrap();
        assert!(GatewayConfig::from_yaml("data_dri: /tmp/x\n").is_err());
        assert!(GatewayConfig::from_yaml("policy:\n  pol: 3s\n").is_err());
        assert!(GatewayConfig::from_yaml("policy:\n  poll: soon\n").is_err());
        assert!(GatewayConfig::from_yaml("audit:\n  format: xml\n").is_err());
        assert!(GatewayConfig::default().validate().is_err());
        let mut c = GatewayConfig::default();
        c.add_registry_flag("127.0.0.1:5000=http://127.0.0.1:5000")
            .unwrap();
        assert!(c.add_registry_flag("nohost").is_err());
        c.validate().unwrap();
        c.policy.poll = Duration::from_millis(10);
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("policy.poll") && e.contains("between 1s and 1h"),
            "{e}"
        );
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
            "upstream:\n  url: http://127.0.0.1:5000\napi:\n  listen: 127.0.0.1:1\n  token_file: {}\n",
            f.display()
        ))
        .unwrap();
        let read = c.with_token_files().unwrap();
        assert_eq!(read.api.token.as_ref().map(|t| t.expose()), Some("abc"));
        assert!(read.api.token_file.is_none());
        read.validate().unwrap();
        // Never printed.
        assert!(!format!("{read:?}").contains("abc"));
        // Readable by others: refused, naming the fix.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = c.with_token_files().unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
        // Inline and file at once: refused.
        c.api.token = Some(customs_runtime::Secret::new("x"));
        assert!(c.validate().is_err());
        // api.listen without any token, audit.hec with a token file.
        let mut c = GatewayConfig::from_yaml("upstream:\n  url: http://127.0.0.1:5000\n").unwrap();
        c.api.listen = Some("127.0.0.1:1".parse().unwrap());
        assert!(c.validate().is_err());
        c.api.listen = None;
        c.audit.hec = Some("http://127.0.0.1:9/".into());
        assert!(c.validate().is_err());
        c.audit.hec_token_file = Some(f.clone());
        c.validate().unwrap();
        c.audit.hec_token = Some(customs_runtime::Secret::new("y"));
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_scheduler_is_reached_over_https_only() {
        let mut c = GatewayConfig::from_yaml(
            "upstream:\n  url: http://127.0.0.1:5000\ntls:\n  ca: ca.pem\n  cert: g.pem\n  key: g.key\nswarm:\n  upload_addr: 127.0.0.1:5051\n",
        )
        .unwrap();
        c.swarm.scheduler = Some("http://127.0.0.1:5060".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("must be an https:// URL"), "{e}");
        c.swarm.scheduler = Some("https://127.0.0.1:5060".into());
        c.validate().unwrap();
        c.tls.listen_cert = Some("gw.pem".into());
        assert!(c.validate().is_err());
        c.tls.listen_key = Some("gw.key".into());
        c.validate().unwrap();
    }
}
