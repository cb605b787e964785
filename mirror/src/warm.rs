//! Preheat: pulling an image through a mirror the way a runtime would —
//! manifest, the platform manifests a fleet runs, every blob — so that the
//! mirror's store holds it all, verified, before any node asks. The gateway
//! warms itself this way (admission and whole-blob digest checks included)
//! and a peer warms its own disk the same way (from the swarm, every piece
//! checked against the signed piece manifest).

use crate::admission::Admission;
use crate::error::MirrorError;
use crate::mirror::Mirror;
use crate::source::Source;
use customs_protocol::manifest::ManifestKind;
use customs_protocol::{Digest, ImageName, ManifestRefs, Reference};
use customs_store::{FetchFailure, FetchFailureKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// What a warm-up fetched.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WarmReport {
    /// The digest the reference resolved to.
    pub manifest: String,
    /// Platform manifests included (for an index).
    pub platforms: Vec<String>,
    /// Distinct blobs now held.
    pub blobs: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Which platforms of an index to warm.
#[derive(Debug, Clone, Default)]
pub enum PlatformFilter {
    /// Every platform manifest of the index.
    #[default]
    All,
    /// Only `os/arch[/variant]` (Harbor and Dragonfly's `platform` arg).
    Only(String),
}

/// Pulls `image` at `reference` through `mirror`, draining every blob
/// (the store keeps it; nothing is held in memory). Admission runs as for
/// any client: a denial fails the warm-up with the policy's reason.
pub async fn warm<S: Source, A: Admission>(
    mirror: &Mirror<S, A>,
    image: &ImageName,
    reference: &Reference,
    platforms: &PlatformFilter,
) -> Result<WarmReport, MirrorError> {
    let top = mirror.manifest(image, reference).await?;
    let refs = ManifestRefs::parse(&top.bytes, Some(&top.media_type)).map_err(invalid)?;
    let mut report = WarmReport {
        manifest: top.digest.to_string(),
        ..WarmReport::default()
    };
    let mut images: Vec<(Digest, ManifestRefs)> = Vec::new();
    match refs.kind {
        ManifestKind::Image => images.push((top.digest.clone(), refs)),
        ManifestKind::Index => {
            for child in &refs.children {
                let wanted = match platforms {
                    PlatformFilter::All => true,
                    PlatformFilter::Only(f) => {
                        child.platform.as_ref().is_some_and(|p| p.matches(f))
                    }
                };
                if !wanted {
                    continue;
                }
                let m = mirror
                    .manifest(image, &Reference::Digest(child.digest.clone()))
                    .await?;
                let child_refs =
                    ManifestRefs::parse(&m.bytes, Some(&m.media_type)).map_err(invalid)?;
                if child_refs.kind == ManifestKind::Index {
                    // Nested indexes are legal but not what runtimes pull.
                    continue;
                }
                report.platforms.push(child.digest.to_string());
                images.push((child.digest.clone(), child_refs));
            }
            if images.is_empty() {
                return Err(MirrorError::ManifestInvalid(format!(
                    "{image}@{}: no platform manifest matches {platforms:?}",
                    top.digest
                )));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (_, refs) in &images {
        for b in &refs.blobs {
            if !seen.insert(b.digest.clone()) {
                continue;
            }
            let mut body = mirror.blob(image, &b.digest, None).await?.body;
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                n += chunk
                    .map_err(|e| unavailable(format!("{image}@{}: {e}", b.digest)))?
                    .len() as u64;
            }
            if n != b.size {
                return Err(unavailable(format!(
                    "{image}@{}: got {n} of {} bytes",
                    b.digest, b.size
                )));
            }
            report.blobs += 1;
            report.bytes += n;
        }
    }
    Ok(report)
}

fn unavailable(message: String) -> MirrorError {
    MirrorError::Source(FetchFailure::new(FetchFailureKind::Unavailable, message))
}

fn invalid(e: customs_protocol::ManifestError) -> MirrorError {
    MirrorError::ManifestInvalid(e.to_string())
}
