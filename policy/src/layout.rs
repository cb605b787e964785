//! Evidence from an OCI image layout on disk (what `cosign save` writes):
//! lets `customs verify` and tests decide offline. Signatures and
//! attestations saved by cosign are index entries annotated
//! `kind: dev.cosignproject.cosign/sigs|atts`; they answer for the
//! `sha256-<hex>.sig|.att` tags of the layout's image. Entries with an
//! `org.opencontainers.image.ref.name` answer for that tag.

use crate::evidence::{EvidenceRegistry, Referrer, RegistryError};
use customs_protocol::{Digest, ImageName};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// An OCI layout directory.
pub struct Layout {
    dir: PathBuf,
    tags: BTreeMap<String, Digest>,
    /// The image the layout holds (the `imageIndex` / `image` entry).
    pub image: Option<Digest>,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    digest: Digest,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Layout {
    /// Reads `index.json`.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read(dir.join("index.json"))
            .map_err(|e| RegistryError(format!("{}: {e}", dir.display())))?;
        let index: Index = serde_json::from_slice(&text)
            .map_err(|e| RegistryError(format!("{}/index.json: {e}", dir.display())))?;
        let image = index
            .manifests
            .iter()
            .find(|e| {
                matches!(
                    e.annotations.get("kind").map(String::as_str),
                    Some("dev.cosignproject.cosign/imageIndex" | "dev.cosignproject.cosign/image")
                )
            })
            .map(|e| e.digest.clone());
        let mut tags = BTreeMap::new();
        for e in &index.manifests {
            if let Some(name) = e.annotations.get("org.opencontainers.image.ref.name") {
                tags.insert(name.clone(), e.digest.clone());
            }
            let suffix = match e.annotations.get("kind").map(String::as_str) {
                Some("dev.cosignproject.cosign/sigs") => "sig",
                Some("dev.cosignproject.cosign/atts") => "att",
                _ => continue,
            };
            if let Some(img) = &image {
                tags.insert(crate::evidence::cosign_tag(img, suffix), e.digest.clone());
            }
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
            tags,
            image,
        })
    }

    fn read(&self, digest: &Digest, max: u64) -> Result<Vec<u8>, RegistryError> {
        let path = self
            .dir
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex());
        let meta = std::fs::metadata(&path)
            .map_err(|e| RegistryError(format!("{}: {e}", path.display())))?;
        if meta.len() > max {
            return Err(RegistryError(format!(
                "{digest} is larger than {max} bytes"
            )));
        }
        let bytes =
            std::fs::read(&path).map_err(|e| RegistryError(format!("{}: {e}", path.display())))?;
        if Digest::of(&bytes) != *digest {
            return Err(RegistryError(format!(
                "{} does not match its digest",
                path.display()
            )));
        }
        Ok(bytes)
    }
}

impl EvidenceRegistry for Layout {
    async fn manifest(
        &self,
        _repo: &ImageName,
        reference: &str,
    ) -> Result<Option<Vec<u8>>, RegistryError> {
        let digest = match reference.parse::<Digest>() {
            Ok(d) => d,
            Err(_) => match self.tags.get(reference) {
                Some(d) => d.clone(),
                None => return Ok(None),
            },
        };
        match self.read(&digest, 4 * 1024 * 1024) {
            Ok(b) => Ok(Some(b)),
            Err(_) => Ok(None),
        }
    }

    async fn referrers(
        &self,
        _repo: &ImageName,
        _digest: &Digest,
    ) -> Result<Vec<Referrer>, RegistryError> {
        Ok(Vec::new())
    }

    async fn blob(
        &self,
        _repo: &ImageName,
        digest: &Digest,
        max_bytes: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        self.read(digest, max_bytes)
    }
}
