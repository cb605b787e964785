//! The `customs` binary: parses flags, loads configuration, starts tracing
//! and calls into the component crates. No pull, policy or storage logic
//! lives here.
#![forbid(unsafe_code)]

mod cmd;
mod shutdown;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    cmd::init_tracing(&cli.log_format);
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
    match rt.block_on(cmd::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("customs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
