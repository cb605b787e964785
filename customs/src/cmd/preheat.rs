//! `customs preheat IMAGE_REF`: asks a running gateway's operator API to
//! verify an image and warm it into the fleet, and shows the job's progress
//! until every targeted node holds it (exit 0) or the job failed (exit 1).

use anyhow::{Context, bail};
use customs_protocol::ImageRef;
use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// Arguments.
#[derive(clap::Args)]
pub struct PreheatArgs {
    /// The image: `registry/repository:tag` or `…@sha256:<hex>`.
    image: String,
    /// The gateway's operator API (`--api-listen`), e.g. http://127.0.0.1:5060.
    #[arg(long, env = "CUSTOMS_API")]
    api: String,
    /// The API's bearer token.
    #[arg(long, env = "CUSTOMS_API_TOKEN", hide_env_values = true)]
    token: String,
    /// single_peer, all_peers (default), count, percentage,
    /// single_seed_peer, all_seed_peers.
    #[arg(long, default_value = "all_peers")]
    scope: String,
    /// For scope `count`.
    #[arg(long)]
    count: Option<u64>,
    /// For scope `percentage`.
    #[arg(long)]
    percentage: Option<u64>,
    /// Only this platform of an index (`os/arch[/variant]`).
    #[arg(long)]
    platform: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
}

/// Ok(true) when the job succeeded.
pub async fn run(a: PreheatArgs) -> anyhow::Result<bool> {
    let image: ImageRef = a.image.parse()?;
    let url = format!(
        "https://{}/v2/{}/manifests/{}",
        image.name.registry, image.name.repository, image.reference
    );
    let mut args = serde_json::json!({"type": "image", "url": url, "scope": a.scope});
    if let Some(p) = &a.platform {
        args["platform"] = p.clone().into();
    }
    if let Some(n) = a.count {
        args["count"] = n.into();
    }
    if let Some(p) = a.percentage {
        args["percentage"] = p.into();
    }
    let api = a.api.trim_end_matches('/');
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let resp = http
        .post(format!("{api}/oapi/v1/jobs"))
        .bearer_auth(&a.token)
        .json(&serde_json::json!({"type": "preheat", "args": args}))
        .send()
        .await
        .with_context(|| format!("contacting {api}"))?;
    let status = resp.status();
    let job: serde_json::Value = resp.json().await.context("reading the job")?;
    if !status.is_success() {
        bail!("job refused ({status}): {}", job["message"]);
    }
    let id = job["id"].as_u64().context("the job has no id")?;
    let bar = ProgressBar::new(1);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} nodes {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("job {id}: {image}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(a.timeout_secs);
    loop {
        let job: serde_json::Value = http
            .get(format!("{api}/oapi/v1/jobs/{id}"))
            .bearer_auth(&a.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let targets = job["customs"]["targets"].as_u64().unwrap_or(0) + 1;
        let states = job["result"]["job_states"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let done = states.iter().filter(|s| s["state"] == "SUCCESS").count() as u64;
        bar.set_length(targets);
        bar.set_position(done.min(targets));
        match job["state"].as_str() {
            Some("SUCCESS") => {
                bar.finish_with_message(format!("job {id}: {image} is on every targeted node"));
                return Ok(true);
            }
            Some("FAILURE") => {
                bar.abandon_with_message(format!("job {id} failed"));
                for s in states.iter().filter(|s| s["state"] == "FAILURE") {
                    eprintln!(
                        "  {}: {}",
                        s["task_name"].as_str().unwrap_or("?"),
                        s["error"].as_str().unwrap_or("")
                    );
                }
                return Ok(false);
            }
            _ => {}
        }
        if tokio::time::Instant::now() > deadline {
            bar.abandon_with_message(format!("job {id}: timed out"));
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
