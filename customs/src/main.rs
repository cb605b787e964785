//! The `customs` binary: parses flags, loads configuration, starts tracing
//! and calls into the component crates. No pull, policy or storage logic
//! lives here.
#![forbid(unsafe_code)]

mod cmd;
mod layered;
mod shutdown;
mod telemetry;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("customs: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Inside the runtime: the OTLP exporter's channel lives on it.
        let telemetry = telemetry::init(&cli.log_format, cli.otlp_target())?;
        let result = cmd::run(cli).await;
        telemetry.shutdown().await;
        result
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("customs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
