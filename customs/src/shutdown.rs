//! Signal handling: SIGTERM or Ctrl-C begins the supervisor's shutdown,
//! which every component watches (see [`customs_runtime::Supervisor`]).

use clap::Args;
use customs_runtime::Supervisor;
use std::time::Duration;

/// Flags every long-running component takes (`gateway`, `peer`,
/// `scheduler`, `up`): how it stops.
#[derive(Args, Clone, Debug)]
pub struct ProcessFlags {
    /// Seconds in-flight transfers get to finish after SIGTERM before the
    /// process cuts them, writes its final audit checkpoint and exits 0.
    /// Keep it below the pod's terminationGracePeriodSeconds (default 30).
    #[arg(long, env = "CUSTOMS_DRAIN_SECS", default_value_t = customs_runtime::DEFAULT_DRAIN.as_secs())]
    pub drain_secs: u64,
    /// Stop when standard input closes (used by `customs up` for its fleet).
    #[arg(long)]
    pub exit_on_stdin_eof: bool,
    /// Export traces over OTLP/gRPC to this collector: `http://HOST:4317`
    /// or `https://HOST:4317` (with --otlp-ca). `customs up` passes it on
    /// to the processes it starts.
    #[arg(long, env = "CUSTOMS_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Print the effective configuration (defaults < --config file <
    /// CUSTOMS_<COMPONENT>__* environment < flags; secrets redacted) as
    /// JSON and exit without starting.
    #[arg(long)]
    pub print_config: bool,
    /// PEM CA bundle of an https:// --otlp-endpoint.
    #[arg(long, env = "CUSTOMS_OTLP_CA", requires = "otlp_endpoint")]
    pub otlp_ca: Option<std::path::PathBuf>,
}

impl ProcessFlags {
    /// Where this process exports traces, as `service` on node `instance`
    /// (the host name when none is configured).
    pub fn otlp(
        &self,
        service: &'static str,
        instance: Option<&str>,
    ) -> Option<crate::telemetry::OtlpTarget> {
        let endpoint = self.otlp_endpoint.clone()?;
        Some(crate::telemetry::OtlpTarget {
            endpoint,
            ca: self.otlp_ca.clone(),
            service,
            instance: instance.map_or_else(crate::telemetry::host_name, str::to_owned),
        })
    }

    /// `cmd` (a child of `customs up`) with these settings, passed in its
    /// environment: the same drain deadline and trace collector.
    pub fn pass_on<'a>(
        &self,
        cmd: &'a mut tokio::process::Command,
    ) -> &'a mut tokio::process::Command {
        cmd.env("CUSTOMS_DRAIN_SECS", self.drain_secs.to_string());
        if let Some(e) = &self.otlp_endpoint {
            cmd.env("CUSTOMS_OTLP_ENDPOINT", e);
        }
        if let Some(ca) = &self.otlp_ca {
            cmd.env("CUSTOMS_OTLP_CA", ca);
        }
        cmd
    }

    /// The drain deadline.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }

    /// A supervisor that begins shutting down on SIGTERM, SIGINT and (with
    /// --exit-on-stdin-eof) the end of standard input.
    pub fn supervisor(&self) -> Supervisor {
        let sup = Supervisor::new(self.drain());
        on_signal(sup.clone());
        if self.exit_on_stdin_eof {
            on_stdin_eof(sup.clone());
        }
        sup
    }
}

/// Begins `sup`'s shutdown on SIGTERM or SIGINT. The SIGTERM handler is
/// installed before this returns, so a SIGTERM sent as soon as the process
/// says it is ready is never the default (immediate death without cleanup).
fn on_signal(sup: Supervisor) {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    tokio::spawn(async move {
        let term = async {
            match term {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await
                }
            }
        };
        tokio::select! {
            _ = term => tracing::info!(drain_secs = sup.drain().as_secs(), "SIGTERM: draining, then shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!(drain_secs = sup.drain().as_secs(), "interrupt: draining, then shutting down"),
        }
        sup.begin_shutdown();
    });
}

/// Begins `sup`'s shutdown when standard input closes: `customs up` holds
/// the write end of every child's stdin, so its fleet stops with it even
/// when it is killed outright.
fn on_stdin_eof(sup: Supervisor) {
    tokio::spawn(async move {
        let mut sink = tokio::io::sink();
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut sink).await;
        tracing::info!("parent went away: shutting down");
        sup.begin_shutdown();
    });
}
