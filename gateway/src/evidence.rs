//! Evidence lookups (signatures, attestations, referrers) against the
//! upstream registries, for the policy gate. Same clients and credentials as
//! content; sizes bounded; a failure other than "not found" fails closed.

use crate::upstream::Upstreams;
use customs_policy::evidence::{EvidenceRegistry, Referrer, RegistryError};
use customs_protocol::{Digest, ImageName, Reference};
use customs_store::FetchFailureKind;
use futures_util::StreamExt;

impl EvidenceRegistry for Upstreams {
    async fn manifest(
        &self,
        repo: &ImageName,
        reference: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let r: Reference = reference
            .parse()
            .map_err(|e| RegistryError(format!("{reference:?}: {e}")))?;
        match customs_mirror::Source::manifest(self, repo, &r).await {
            Ok(m) if m.bytes.len() > customs_protocol::manifest::MAX_MANIFEST_BYTES => Err(
                RegistryError(format!("{repo}:{reference}: manifest over the 4 MiB limit")),
            ),
            Ok(m) => Ok(Some(m.bytes.to_vec())),
            Err(f) if f.kind == FetchFailureKind::NotFound => Ok(None),
            Err(f) => Err(RegistryError(format!("{repo}:{reference}: {}", f.message))),
        }
    }

    async fn referrers(
        &self,
        repo: &ImageName,
        digest: &Digest,
    ) -> Result<Vec<Referrer>, RegistryError> {
        let index = self
            .referrers_index(repo, digest)
            .await
            .map_err(|f| RegistryError(format!("referrers of {repo}@{digest}: {}", f.message)))?;
        Ok(index
            .into_iter()
            .filter_map(|e| {
                Some(Referrer {
                    digest: e.digest.parse().ok()?,
                    media_type: e.media_type,
                    artifact_type: None,
                })
            })
            .collect())
    }

    async fn blob(
        &self,
        repo: &ImageName,
        digest: &Digest,
        max_bytes: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut stream = customs_mirror::Source::blob(self, repo, digest)
            .await
            .map_err(|f| RegistryError(format!("{repo}@{digest}: {}", f.message)))?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RegistryError(format!("{repo}@{digest}: {e}")))?;
            if out.len() as u64 + chunk.len() as u64 > max_bytes {
                return Err(RegistryError(format!(
                    "{repo}@{digest} is larger than {max_bytes} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}
