//! Subcommands.

mod audit;
mod bench;
mod bench_load;
mod certs;
mod containerd_config;
mod containerd_toml;
mod flags;
mod gateway;
mod gc;
mod node_init;
mod peer;
mod policy;
mod preheat;
mod scheduler;
mod scheduler_config;
mod status;
mod up;
mod up_fleet;
mod verify;
mod verify_bundle;

use clap::{Parser, Subcommand};

/// Customs: a peer-to-peer registry mirror that verifies before it distributes.
#[derive(Parser)]
#[command(name = "customs", version, about)]
pub struct Cli {
    /// Log format: `text` or `json`.
    #[arg(
        long,
        global = true,
        env = "CUSTOMS_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway and the scheduler in one process on embedded storage.
    Up(up::UpArgs),
    /// Run the gateway (seed peer and policy gate) on its own.
    Gateway(gateway::GatewayArgs),
    /// Run a node peer on its own.
    Peer(peer::PeerArgs),
    /// Run the scheduler on its own.
    Scheduler(scheduler::SchedulerArgs),
    /// Write containerd hosts.toml files that route pulls through Customs.
    ContainerdConfig(containerd_config::ContainerdConfigArgs),
    /// Prepare a node (the DaemonSet's init container): hosts.toml files
    /// in the host's certs.d, containerd's config_path checked.
    NodeInit(node_init::NodeInitArgs),
    /// Evict least-recently-used blobs from a stopped node's store.
    Gc(gc::GcArgs),
    /// Create a development CA and mTLS certificates for components.
    Certs(certs::CertsArgs),
    /// Verify a Sigstore bundle for a file or a digest, offline.
    VerifyBundle(verify_bundle::VerifyBundleArgs),
    /// The policy decision for one image (exit 0 allow, 1 deny).
    Verify(verify::VerifyArgs),
    /// Verify an image and warm it into the fleet through a gateway's API.
    Preheat(preheat::PreheatArgs),
    /// What the gateway and peers are doing, on one screen.
    Status(status::StatusArgs),
    /// Audit-log tools: `verify`.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Policy-repository tools: `test`, `check`.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Benchmarks that need no cluster: `fleet-sim`, `scheduler-load`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

impl Cli {
    /// Where this process exports traces, if it is a long-running
    /// component with `--otlp-endpoint`.
    pub fn otlp_target(&self) -> Option<crate::telemetry::OtlpTarget> {
        match &self.command {
            // `customs up` is the gateway (and the scheduler) in one process.
            Command::Up(a) => a
                .process
                .otlp("customs-gateway", a.gateway.gateway_id.as_deref()),
            Command::Gateway(a) => a.otlp(),
            Command::Peer(a) => a.otlp(),
            Command::Scheduler(a) => a.otlp(),
            _ => None,
        }
    }
}

/// A check that ran but said no (a denial, a failed test) exits 1 without
/// an error message of its own: the command already printed why.
fn exit_on_false(ok: bool) -> anyhow::Result<()> {
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(a) => up::run(a).await,
        Command::Gateway(a) => gateway::run(a).await,
        Command::Peer(a) => peer::run(a).await,
        Command::Scheduler(a) => scheduler::run(a).await,
        Command::ContainerdConfig(a) => containerd_config::run(a),
        Command::NodeInit(a) => node_init::run(a),
        Command::Gc(a) => gc::run(a).await,
        Command::Certs(a) => certs::run(a),
        Command::VerifyBundle(a) => verify_bundle::run(a),
        Command::Verify(a) => exit_on_false(verify::run(a).await?),
        Command::Policy(c) => exit_on_false(policy::run(c)?),
        Command::Bench(c) => bench::run(c).await,
        Command::Preheat(a) => exit_on_false(preheat::run(a).await?),
        Command::Audit(c) => exit_on_false(audit::run(c)?),
        Command::Status(a) => exit_on_false(status::run(a).await?),
    }
}
