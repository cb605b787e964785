//! `customs gc`: run LRU eviction by hand on a stopped node's store.

use anyhow::Context;
use clap::Args;
use customs_store::{BlobStore, StoreConfig};
use std::path::PathBuf;

/// `customs gc` flags.
#[derive(Args)]
pub struct GcArgs {
    /// The node's data directory (gateway or peer).
    #[arg(long)]
    data_dir: PathBuf,
    /// Evict until at most this many bytes remain.
    #[arg(long)]
    max_bytes: u64,
}

pub async fn run(args: GcArgs) -> anyhow::Result<()> {
    let store = BlobStore::open(StoreConfig {
        root: args.data_dir.join("store"),
        max_bytes: u64::MAX,
    })
    .with_context(|| {
        format!(
            "opening the store in {} (is the node still running?)",
            args.data_dir.display()
        )
    })?;
    let r = store.gc(args.max_bytes).await?;
    println!(
        "evicted {} blobs, freed {} bytes, {} bytes remain ({} in use, skipped)",
        r.evicted, r.freed, r.remaining, r.skipped_in_use
    );
    Ok(())
}
