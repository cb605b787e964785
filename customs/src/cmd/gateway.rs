//! `customs gateway`.

use crate::shutdown;
use anyhow::Context;
use clap::Args;
use customs_gateway::{Gateway, GatewayConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Flags shared by `customs gateway` and `customs up`; each overrides the
/// config file's value when given.
#[derive(Args, Clone)]
pub struct GatewayFlags {
    /// YAML config file (flags override it).
    #[arg(long, env = "CUSTOMS_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (store, index, audit log).
    #[arg(long, env = "CUSTOMS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The OCI endpoint (containerd's `server`, the pull-through path for
    /// nodes without a peer). Plain HTTP unless --listen-tls-cert is given:
    /// keep it on loopback then.
    #[arg(long, env = "CUSTOMS_LISTEN", default_value = "127.0.0.1:5050")]
    pub listen: SocketAddr,
    /// Serve --listen over HTTPS with this certificate chain (PEM); clients
    /// (containerd) need no certificate, only the CA (`customs
    /// containerd-config --ca`). Use it whenever --listen is reachable from
    /// the network.
    #[arg(long, env = "CUSTOMS_LISTEN_TLS_CERT", requires = "listen_tls_key")]
    pub listen_tls_cert: Option<PathBuf>,
    /// Private key of --listen-tls-cert.
    #[arg(long, env = "CUSTOMS_LISTEN_TLS_KEY", requires = "listen_tls_cert")]
    pub listen_tls_key: Option<PathBuf>,
    /// Default upstream registry URL, used when a request carries no `ns`.
    #[arg(long, env = "CUSTOMS_UPSTREAM")]
    pub upstream: Option<String>,
    /// Extra upstream: `HOST=URL` maps containerd's `ns=HOST` to URL. Repeatable.
    #[arg(long = "registry", value_name = "HOST=URL")]
    pub registries: Vec<String>,
    /// docker config.json with upstream credentials.
    #[arg(long, env = "CUSTOMS_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// PEM file of extra CAs for upstream TLS.
    #[arg(long)]
    pub extra_ca: Option<PathBuf>,
    /// Store size limit in bytes (LRU eviction beyond it).
    #[arg(long)]
    pub max_cache_bytes: Option<u64>,
    /// Seconds a tag resolution is reused.
    #[arg(long)]
    pub tag_ttl_secs: Option<u64>,
    /// Seconds a cached tag is served while the upstream is down.
    #[arg(long)]
    pub stale_window_secs: Option<u64>,
    /// Cap on everything the gateway sends (peers and direct clients), bytes/s.
    #[arg(long)]
    pub upload_limit: Option<u64>,
    /// Scheduler URL (https://host:port): enables seeding the swarm.
    #[arg(long, env = "CUSTOMS_SCHEDULER")]
    pub scheduler: Option<String>,
    /// mTLS endpoint for peers (OCI API, tasks, pieces).
    #[arg(long)]
    pub upload_listen: Option<SocketAddr>,
    /// Ed25519 PKCS#8 key that signs piece manifests (created if missing).
    #[arg(long)]
    pub signing_key: Option<PathBuf>,
    /// Policy directory (ImagePolicy YAML files, keys, trusted roots).
    /// Without it every image is admitted in audit mode.
    #[arg(long, env = "CUSTOMS_POLICY", conflicts_with = "policy_git")]
    pub policy: Option<PathBuf>,
    /// Policy Git repository (path, file://, https:// or ssh:// URL), polled;
    /// each new commit is validated as a whole before it takes effect.
    #[arg(long, env = "CUSTOMS_POLICY_GIT")]
    pub policy_git: Option<String>,
    /// Branch, tag or commit of `--policy-git` (default `main`).
    #[arg(long, env = "CUSTOMS_POLICY_REF", requires = "policy_git")]
    pub policy_ref: Option<String>,
    /// Seconds between polls of the policy source (default 10).
    #[arg(long)]
    pub policy_poll_secs: Option<u64>,
    /// Operator API: Dragonfly-compatible preheat jobs (`/oapi/v1/jobs`),
    /// Harbor's webhook (`/webhooks/harbor`), `/healthy` and `/metrics`.
    /// Needs --api-token or --api-token-file.
    #[arg(long, env = "CUSTOMS_API_LISTEN")]
    pub api_listen: Option<SocketAddr>,
    /// Bearer token for jobs and webhooks (what Harbor sends).
    #[arg(long, env = "CUSTOMS_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Scope of webhook-triggered preheats: all_peers (default),
    /// single_peer, single_seed_peer, all_seed_peers.
    #[arg(long)]
    pub webhook_scope: Option<String>,
    /// Seconds between aggregate audit events (decision cache hits and
    /// refused connections are counted, not logged one by one; default 60).
    #[arg(long)]
    pub audit_aggregate_secs: Option<u64>,
    /// Export the audit log to syslog: tcp://HOST:PORT (LF framing), tls://
    /// (octet counting; needs --audit-syslog-ca) or udp:// (best effort).
    #[arg(long, env = "CUSTOMS_AUDIT_SYSLOG")]
    pub audit_syslog: Option<String>,
    /// CA bundle (PEM) for tls:// syslog.
    #[arg(long)]
    pub audit_syslog_ca: Option<PathBuf>,
    /// Export payload: json (default), ocsf, or cef (syslog only).
    #[arg(long)]
    pub audit_format: Option<String>,
    /// Export to Splunk HEC at this URL (with --audit-hec-token or
    /// --audit-hec-token-file).
    #[arg(long)]
    pub audit_hec: Option<String>,
    /// Splunk HEC token.
    #[arg(long, env = "CUSTOMS_AUDIT_HEC_TOKEN", hide_env_values = true)]
    pub audit_hec_token: Option<String>,
    /// File holding the bearer token for jobs and webhooks (read at start,
    /// trailing newline trimmed; must not be group/other readable): keeps
    /// the token out of `/proc/*/cmdline`. Exclusive with --api-token.
    #[arg(long, env = "CUSTOMS_API_TOKEN_FILE", conflicts_with = "api_token")]
    pub api_token_file: Option<PathBuf>,
    /// File holding the Splunk HEC token (as --api-token-file). Exclusive
    /// with --audit-hec-token.
    #[arg(
        long,
        env = "CUSTOMS_AUDIT_HEC_TOKEN_FILE",
        conflicts_with = "audit_hec_token"
    )]
    pub audit_hec_token_file: Option<PathBuf>,
    /// Export JSON arrays of events to this HTTP(S) URL.
    #[arg(long)]
    pub audit_http: Option<String>,
    /// Export JSON lines to this file (`-` for stdout).
    #[arg(long)]
    pub audit_file: Option<PathBuf>,
    /// Seconds to wait for a connection to an upstream (default 10).
    #[arg(long)]
    pub upstream_connect_timeout_secs: Option<u64>,
    /// Seconds to wait for an upstream's response headers (default 30).
    #[arg(long)]
    pub upstream_first_byte_timeout_secs: Option<u64>,
    /// Seconds an upstream body may stay silent before the transfer is cut
    /// off and its clients get an error (default 30).
    #[arg(long)]
    pub upstream_idle_timeout_secs: Option<u64>,
    /// Seconds a whole upstream manifest, referrers index or token may take
    /// (default 60).
    #[arg(long)]
    pub upstream_body_timeout_secs: Option<u64>,
    #[command(flatten)]
    pub tls: super::flags::TlsFlags,
    #[command(flatten)]
    pub fleet: super::flags::FleetFlags,
    /// This gateway's id in the fleet (default: host name and --listen port).
    #[arg(long, env = "CUSTOMS_GATEWAY_ID")]
    pub gateway_id: Option<String>,
    /// This gateway's zone in the fleet: gateways of one zone share blobs
    /// among themselves, and only one of them fetches each blob from
    /// another zone.
    #[arg(long, env = "CUSTOMS_ZONE")]
    pub zone: Option<String>,
    /// Kubernetes labels file (downward API `key="value"` lines): the zone
    /// from `topology.kubernetes.io/zone` unless --zone is given.
    #[arg(long, env = "CUSTOMS_TOPOLOGY_LABELS")]
    pub topology_labels: Option<PathBuf>,
}

impl GatewayFlags {
    /// Defaults < the file < `CUSTOMS_GATEWAY__*` < flags (see
    /// [`crate::layered`]).
    pub fn config(&self) -> anyhow::Result<GatewayConfig> {
        crate::layered::load(self.config.as_deref(), "CUSTOMS_GATEWAY__", self.overlay()?)
    }

    /// The keys the given flags set.
    fn overlay(&self) -> anyhow::Result<crate::layered::Overlay> {
        use std::time::Duration;
        let secs = |n: Option<u64>| {
            n.map(|n| humantime::format_duration(Duration::from_secs(n)).to_string())
        };
        let mut o = crate::layered::Overlay::default();
        o.set("data_dir", self.data_dir.as_ref())?;
        o.set("upstream.url", self.upstream.as_ref())?;
        let mut registries = std::collections::BTreeMap::new();
        for r in &self.registries {
            let (host, url) = r
                .split_once('=')
                .with_context(|| format!("--registry {r:?} must be HOST=URL"))?;
            registries.insert(host.trim().to_owned(), url.trim().to_owned());
        }
        o.set(
            "upstream.registries",
            (!registries.is_empty()).then_some(registries),
        )?;
        o.set("upstream.docker_config", self.docker_config.as_ref())?;
        o.set("upstream.extra_ca", self.extra_ca.as_ref())?;
        o.set("upstream.tag_ttl", secs(self.tag_ttl_secs))?;
        o.set("upstream.stale_window", secs(self.stale_window_secs))?;
        o.set(
            "upstream.connect_timeout",
            secs(self.upstream_connect_timeout_secs),
        )?;
        o.set(
            "upstream.first_byte_timeout",
            secs(self.upstream_first_byte_timeout_secs),
        )?;
        o.set(
            "upstream.idle_timeout",
            secs(self.upstream_idle_timeout_secs),
        )?;
        o.set(
            "upstream.body_timeout",
            secs(self.upstream_body_timeout_secs),
        )?;
        o.set("store.max_cache_bytes", self.max_cache_bytes)?;
        o.set("swarm.scheduler", self.scheduler.as_ref())?;
        o.set(
            "swarm.upload_addr",
            self.upload_listen.map(|a| a.to_string()),
        )?;
        o.set("swarm.upload_limit", self.upload_limit)?;
        o.set("swarm.signing_key", self.signing_key.as_ref())?;
        self.tls.overlay(&mut o)?;
        o.set("tls.listen_cert", self.listen_tls_cert.as_ref())?;
        o.set("tls.listen_key", self.listen_tls_key.as_ref())?;
        o.set("policy.dir", self.policy.as_ref())?;
        o.set("policy.git", self.policy_git.as_ref())?;
        o.set("policy.ref", self.policy_ref.as_ref())?;
        o.set("policy.poll", secs(self.policy_poll_secs))?;
        o.set("api.listen", self.api_listen)?;
        o.set("api.token", self.api_token.as_ref())?;
        o.set("api.token_file", self.api_token_file.as_ref())?;
        o.set("api.webhook_scope", self.webhook_scope.as_ref())?;
        o.set("audit.aggregate", secs(self.audit_aggregate_secs))?;
        o.set("audit.format", self.audit_format.as_ref())?;
        o.set("audit.syslog", self.audit_syslog.as_ref())?;
        o.set("audit.syslog_ca", self.audit_syslog_ca.as_ref())?;
        o.set("audit.hec", self.audit_hec.as_ref())?;
        o.set("audit.hec_token", self.audit_hec_token.as_ref())?;
        o.set("audit.hec_token_file", self.audit_hec_token_file.as_ref())?;
        o.set("audit.http", self.audit_http.as_ref())?;
        o.set("audit.file", self.audit_file.as_ref())?;
        self.fleet.overlay(&mut o)?;
        o.set("fleet.id", self.gateway_id.as_ref())?;
        let zone = match (&self.zone, &self.topology_labels) {
            (Some(z), _) => Some(z.clone()),
            (None, Some(path)) => Some(customs_swarm::topology::Topology::from_file(path)?.zone),
            (None, None) => None,
        };
        o.set("fleet.zone", zone)?;
        Ok(o)
    }
}

/// `customs gateway` flags.
#[derive(Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    flags: GatewayFlags,
    #[command(flatten)]
    process: shutdown::ProcessFlags,
}

impl GatewayArgs {
    /// Trace export as `customs-gateway`.
    pub fn otlp(&self) -> Option<crate::telemetry::OtlpTarget> {
        self.process
            .otlp("customs-gateway", self.flags.gateway_id.as_deref())
    }
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    let cfg = args.flags.config()?;
    if args.process.print_config {
        return crate::layered::print(&cfg);
    }
    cfg.validate()?;
    let gw = Gateway::build(&cfg)?;
    let listener = tokio::net::TcpListener::bind(args.flags.listen)
        .await
        .with_context(|| format!("binding {}", args.flags.listen))?;
    let upload = match args.flags.upload_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a}"))?,
        ),
        None => None,
    };
    let sup = args.process.supervisor();
    tracing::info!(gateway = %args.flags.listen, "customs gateway ready");
    gw.serve(listener, upload, sup.clone()).await?;
    sup.drained().await;
    tracing::info!("customs gateway stopped");
    Ok(())
}
