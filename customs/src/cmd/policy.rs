//! `customs policy`: tools for the policy repository's own CI.

use super::verify::load;
use anyhow::Context;
use std::path::PathBuf;

/// Subcommands.
#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// Run the `ImagePolicyTest` cases in DIR (exit 0 when all pass).
    Test {
        /// The policy source.
        dir: PathBuf,
        /// `text` (default) or `json`.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Validate DIR as the gateway would (file:line errors; exit 0 when valid).
    Check {
        /// The policy source.
        dir: PathBuf,
    },
}

/// Ok(true) when everything passed.
pub fn run(cmd: PolicyCommand) -> anyhow::Result<bool> {
    match cmd {
        PolicyCommand::Check { dir } => {
            let set = load(&dir)?;
            println!(
                "policy source {} is valid: revision {}, {} policies, {} test suites",
                dir.display(),
                set.revision,
                set.policies.len(),
                set.tests.len()
            );
            Ok(true)
        }
        PolicyCommand::Test { dir, output } => {
            let snap = customs_policy::Snapshot::from_dir(&dir)
                .with_context(|| format!("reading policy source {}", dir.display()))?;
            let set = customs_policy::compile(&snap)
                .map_err(|e| anyhow::anyhow!("policy source {} refused:\n{e}", dir.display()))?;
            let outcomes = customs_policy::testing::run_tests(&set, &snap);
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            if output == "json" {
                println!("{}", serde_json::to_string_pretty(&outcomes)?);
            } else {
                for o in &outcomes {
                    let mark = if o.passed { "ok  " } else { "FAIL" };
                    println!("{mark} {}: {}", o.name, o.detail);
                }
                println!(
                    "{} cases, {} passed, {failed} failed (policy revision {})",
                    outcomes.len(),
                    outcomes.len() - failed,
                    set.revision
                );
            }
            if outcomes.is_empty() {
                anyhow::bail!("no ImagePolicyTest cases found in {}", dir.display());
            }
            Ok(failed == 0)
        }
    }
}
