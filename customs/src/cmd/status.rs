//! `customs status`: one screen an operator can read — the gateway's policy
//! revision, traffic and refusals, and each peer's swarm traffic — from the
//! components' status endpoints.

use anyhow::Context;
use std::time::Duration;

/// Arguments.
#[derive(clap::Args)]
pub struct StatusArgs {
    /// The gateway's OCI endpoint (`--listen`), e.g. http://127.0.0.1:5050.
    #[arg(
        long,
        env = "CUSTOMS_GATEWAY_URL",
        default_value = "http://127.0.0.1:5050"
    )]
    gateway: String,
    /// A peer's containerd-facing endpoint. Repeatable.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Print the raw JSON instead.
    #[arg(long)]
    json: bool,
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

async fn get(http: &reqwest::Client, base: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}/customs/v1/status", base.trim_end_matches('/'));
    http.get(&url)
        .send()
        .await
        .with_context(|| format!("contacting {url}"))?
        .error_for_status()?
        .json()
        .await
        .with_context(|| format!("reading {url}"))
}

/// Prints the status; Ok(false) when a component did not answer.
pub async fn run(a: StatusArgs) -> anyhow::Result<bool> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut ok = true;
    let gw = get(&http, &a.gateway).await;
    let mut peers = Vec::new();
    for p in &a.peers {
        peers.push((p, get(&http, p).await));
    }
    if a.json {
        let doc = serde_json::json!({
            "gateway": gw.as_ref().map_err(|e| e.to_string()).ok(),
            "peers": peers.iter().map(|(p, s)| serde_json::json!({"url": p, "status": s.as_ref().ok()})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(gw.is_ok() && peers.iter().all(|(_, s)| s.is_ok()));
    }
    match gw {
        Ok(s) => {
            let u64_of = |k: &str| s[k].as_u64().unwrap_or(0);
            println!("gateway {}", a.gateway);
            println!(
                "  policy revision     {}",
                s["policy_revision"]
                    .as_str()
                    .unwrap_or("none (no policy: everything allowed in audit mode)")
            );
            println!("  served              {}", bytes(u64_of("served_bytes")));
            println!("  fetched upstream    {}", bytes(u64_of("upstream_bytes")));
            println!("  active transfers    {}", u64_of("active_transfers"));
            println!("  refused connections {}", u64_of("refused_connections"));
        }
        Err(e) => {
            ok = false;
            println!("gateway {}: DOWN ({e:#})", a.gateway);
        }
    }
    for (url, s) in peers {
        match s {
            Ok(s) => {
                let received = s["received_bytes_by_parent"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let from_gw = received
                    .get("gateway")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                let from_peers: u64 = received
                    .iter()
                    .filter(|(k, _)| k.as_str() != "gateway")
                    .filter_map(|(_, v)| v.as_u64())
                    .sum();
                println!(
                    "peer {} ({}): received {} from the gateway, {} from peers; uploaded {}",
                    s["peer_id"].as_str().unwrap_or("?"),
                    url,
                    bytes(from_gw),
                    bytes(from_peers),
                    bytes(s["uploaded_bytes"].as_u64().unwrap_or(0))
                );
            }
            Err(e) => {
                ok = false;
                println!("peer {url}: DOWN ({e:#})");
            }
        }
    }
    Ok(ok)
}
