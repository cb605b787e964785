//! Logs and traces: `tracing` to stderr (text or JSON) and, with
//! `--otlp-endpoint`, OpenTelemetry spans exported over OTLP/gRPC.
//!
//! Every process names itself in its resource (`service.name`
//! `customs-gateway`, `customs-peer` or `customs-scheduler`;
//! `service.instance.id` its node id), and installs the W3C Trace Context
//! propagator that `customs_runtime::trace_context` uses on internal calls.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use std::path::PathBuf;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// How long one OTLP export may take: a collector that is down costs the
/// process at most this per batch, in the exporter's own thread.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and as whom a process exports its spans.
#[derive(Debug, Clone)]
pub struct OtlpTarget {
    /// `http://host:4317` (plaintext, e.g. a collector on the node) or
    /// `https://…` (then `ca` names the collector's CA).
    pub endpoint: String,
    /// PEM CA bundle for an `https://` endpoint.
    pub ca: Option<PathBuf>,
    /// `service.name`: `customs-gateway`, `customs-peer`, `customs-scheduler`.
    pub service: &'static str,
    /// `service.instance.id`: the node id.
    pub instance: String,
}

/// The running exporter, flushed on [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (bounded by [`EXPORT_TIMEOUT`]).
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            // The SDK flushes from its own thread and blocks until done:
            // never on a runtime worker.
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = p.shutdown_with_timeout(EXPORT_TIMEOUT) {
                    eprintln!("customs: flushing traces: {e}");
                }
            })
            .await;
        }
    }
}

/// Starts logging (`RUST_LOG` filters, default `info`) and, with `otlp`,
/// trace export. Must run inside the tokio runtime (the gRPC channel lives
/// on it).
pub fn init(format: &str, otlp: Option<OtlpTarget>) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal: log files and SIEM pipelines get plain text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let (otel, provider) = match otlp {
        Some(t) => {
            let provider = provider(&t)?;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("customs"))
                // Exported spans are the request and call spans; the
                // filter below keeps per-piece debug spans out of them.
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .context("starting tracing")?;
    Ok(Telemetry { provider })
}

use tracing_subscriber::Layer as _;

fn provider(t: &OtlpTarget) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(t.endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT);
    if let Some(rest) = t.endpoint.strip_prefix("https://") {
        let ca = t.ca.as_ref().with_context(|| {
            format!("--otlp-endpoint https://{rest} needs --otlp-ca (the collector's CA, PEM)")
        })?;
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        builder = builder.with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        );
    } else if !t.endpoint.starts_with("http://") {
        anyhow::bail!(
            "--otlp-endpoint {}: expected http://HOST:PORT or https://HOST:PORT (OTLP/gRPC)",
            t.endpoint
        );
    }
    let exporter = builder.build().context("building the OTLP exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(t.service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            t.instance.clone(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// This host's name (the default node id), from the kernel.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
