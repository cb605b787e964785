//! Supply-chain evidence for one manifest digest, as found in registries:
//! cosign legacy signatures (`sha256-<hex>.sig`), cosign legacy attestations
//! (`sha256-<hex>.att`) and Sigstore bundles attached through the OCI 1.1
//! referrers API (oci-client falls back to the `sha256-<hex>` tag schema).
//!
//! The policy crate has no network of its own: the gateway implements
//! [`EvidenceRegistry`] over its upstream clients. Evidence is plain data
//! (serialisable), so `customs verify --record-evidence` can save it and
//! `customs policy test` can replay it.

use base64::Engine as _;
use customs_protocol::{Digest, ImageName};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// Media type of a cosign simple-signing layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Media type of a DSSE envelope layer.
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// Prefix of Sigstore bundle media types (v0.1 … v0.3).
pub const BUNDLE_MEDIA_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";
/// Annotation carrying a cosign signature (base64).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Annotation carrying a Fulcio certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// Annotation carrying the certificate chain (PEM).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// Annotation carrying the Rekor SET bundle (JSON).
pub const REKOR_BUNDLE_ANNOTATION: &str = "dev.sigstore.cosign/bundle";

/// Largest evidence layer read (an SBOM can be large; a signature is not).
pub const MAX_LAYER_BYTES: u64 = 16 * 1024 * 1024;
/// Most layers read from one signature or attestation manifest.
pub const MAX_LAYERS: usize = 64;
/// Most referrers considered per digest.
pub const MAX_REFERRERS: usize = 64;

/// Bytes carried as base64 in recorded evidence files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct B64(pub Vec<u8>);

impl Serialize for B64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(B64)
            .map_err(serde::de::Error::custom)
    }
}

/// Keyless material cosign stores beside a legacy layer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeylessAnnotations {
    /// Fulcio leaf certificate, PEM.
    pub certificate: Option<String>,
    /// Intermediate and root certificates, PEM.
    pub chain: Option<String>,
    /// Rekor SET bundle JSON (`{"SignedEntryTimestamp":…,"Payload":{…}}`).
    pub rekor_bundle: Option<String>,
}

/// One piece of evidence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum EvidenceItem {
    /// A cosign legacy signature layer.
    #[serde(rename_all = "camelCase")]
    SimpleSigning {
        /// Where it was found (`registry/repo:tag#layer`).
        location: String,
        /// The simple-signing payload, byte for byte.
        payload: B64,
        /// The `dev.cosignproject.cosign/signature` annotation (base64).
        signature: String,
        /// Keyless material, if any.
        #[serde(default)]
        keyless: KeylessAnnotations,
    },
    /// A cosign legacy attestation layer: a DSSE envelope.
    #[serde(rename_all = "camelCase")]
    DsseLayer {
        /// Where it was found.
        location: String,
        /// The envelope JSON, byte for byte.
        envelope: B64,
        /// Keyless material, if any.
        #[serde(default)]
        keyless: KeylessAnnotations,
    },
    /// A Sigstore bundle (cosign v3, GitHub artifact attestations).
    #[serde(rename_all = "camelCase")]
    Bundle {
        /// Where it was found.
        location: String,
        /// The bundle JSON, byte for byte.
        bundle: B64,
    },
}

impl EvidenceItem {
    /// Where the item was found.
    pub fn location(&self) -> &str {
        match self {
            EvidenceItem::SimpleSigning { location, .. }
            | EvidenceItem::DsseLayer { location, .. }
            | EvidenceItem::Bundle { location, .. } => location,
        }
    }
}

/// Everything found for one digest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Evidence {
    /// The manifest digest the evidence was looked up for.
    pub digest: String,
    /// What was found.
    pub items: Vec<EvidenceItem>,
    /// Layers that were skipped, and why (malformed, too large…).
    #[serde(default)]
    pub problems: Vec<String>,
}

impl Evidence {
    /// Records why something was skipped, bounded (problems often quote
    /// what a hostile registry sent).
    pub fn problem(&mut self, msg: String) {
        self.problems.push(crate::message::bounded(msg));
    }
}

/// A referrer descriptor, as the referrers API lists it.
#[derive(Debug, Clone)]
pub struct Referrer {
    /// The referring manifest's digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its artifact type, if any.
    pub artifact_type: Option<String>,
}

/// Why evidence could not be read. Any of these makes a decision fail
/// closed: absence of evidence is only concluded from a clean "not found".
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct RegistryError(pub String);

/// Read access to a registry, as evidence collection needs it.
pub trait EvidenceRegistry: Send + Sync {
    /// A manifest by tag or digest; `Ok(None)` when it does not exist.
    fn manifest(
        &self,
        repo: &ImageName,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, RegistryError>> + Send;

    /// The referrers of `digest` (the OCI 1.1 API or its tag-schema fallback).
    fn referrers(
        &self,
        repo: &ImageName,
        digest: &Digest,
    ) -> impl Future<Output = Result<Vec<Referrer>, RegistryError>> + Send;

    /// A blob, refused when larger than `max_bytes`.
    fn blob(
        &self,
        repo: &ImageName,
        digest: &Digest,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Vec<u8>, RegistryError>> + Send;
}

#[derive(Deserialize)]
struct LayerDesc {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ArtifactManifest {
    #[serde(default)]
    layers: Vec<LayerDesc>,
}

/// The cosign tag for `digest` with `suffix` (`sig`, `att`).
pub fn cosign_tag(digest: &Digest, suffix: &str) -> String {
    format!("{}-{}.{suffix}", digest.algorithm(), digest.hex())
}

/// Collects the evidence for `digest` from each repository in `repos`
/// (the image's own and any signature repositories a policy names).
pub async fn collect<R: EvidenceRegistry>(
    registry: &R,
    repos: &[ImageName],
    digest: &Digest,
) -> Result<Evidence, RegistryError> {
    let mut ev = Evidence {
        digest: digest.to_string(),
        ..Evidence::default()
    };
    for repo in repos {
        collect_tag(registry, repo, &cosign_tag(digest, "sig"), &mut ev).await?;
        collect_tag(registry, repo, &cosign_tag(digest, "att"), &mut ev).await?;
        collect_referrers(registry, repo, digest, &mut ev).await?;
    }
    Ok(ev)
}

async fn collect_tag<R: EvidenceRegistry>(
    registry: &R,
    repo: &ImageName,
    tag: &str,
    ev: &mut Evidence,
) -> Result<(), RegistryError> {
    let Some(bytes) = registry.manifest(repo, tag).await? else {
        return Ok(());
    };
    let at = format!("{repo}:{tag}");
    collect_layers(registry, repo, &at, &bytes, ev).await
}

async fn collect_layers<R: EvidenceRegistry>(
    registry: &R,
    repo: &ImageName,
    at: &str,
    manifest: &[u8],
    ev: &mut Evidence,
) -> Result<(), RegistryError> {
    let m: ArtifactManifest = match serde_json::from_slice(manifest) {
        Ok(m) => m,
        Err(e) => {
            ev.problem(format!("{at}: not an image manifest: {e}"));
            return Ok(());
        }
    };
    if m.layers.len() > MAX_LAYERS {
        ev.problem(format!(
            "{at}: {} layers, only the first {MAX_LAYERS} read",
            m.layers.len()
        ));
    }
    for (i, layer) in m.layers.into_iter().take(MAX_LAYERS).enumerate() {
        let location = format!("{at}#{i}");
        let kind = if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE {
            0
        } else if layer.media_type == DSSE_MEDIA_TYPE {
            1
        } else if layer.media_type.starts_with(BUNDLE_MEDIA_TYPE_PREFIX) {
            2
        } else {
            continue;
        };
        if layer.size > MAX_LAYER_BYTES {
            ev.problem(format!(
                "{location}: {} bytes exceeds the {MAX_LAYER_BYTES}-byte evidence limit",
                layer.size
            ));
            continue;
        }
        let digest: Digest = match layer.digest.parse() {
            Ok(d) => d,
            Err(e) => {
                ev.problem(format!("{location}: bad digest: {e}"));
                continue;
            }
        };
        let bytes = registry.blob(repo, &digest, MAX_LAYER_BYTES).await?;
        if Digest::of(&bytes) != digest {
            ev.problem(format!(
                "{location}: content does not match its digest {digest}"
            ));
            continue;
        }
        let mut annotations = layer.annotations;
        let keyless = KeylessAnnotations {
            certificate: annotations.remove(CERTIFICATE_ANNOTATION),
            chain: annotations.remove(CHAIN_ANNOTATION),
            rekor_bundle: annotations.remove(REKOR_BUNDLE_ANNOTATION),
        };
        ev.items.push(match kind {
            0 => {
                let Some(signature) = annotations.remove(SIGNATURE_ANNOTATION) else {
                    ev.problem(format!(
                        "{location}: simple-signing layer without a signature"
                    ));
                    continue;
                };
                EvidenceItem::SimpleSigning {
                    location,
                    payload: B64(bytes),
                    signature,
                    keyless,
                }
            }
            1 => EvidenceItem::DsseLayer {
                location,
                envelope: B64(bytes),
                keyless,
            },
            _ => EvidenceItem::Bundle {
                location,
                bundle: B64(bytes),
            },
        });
    }
    Ok(())
}

async fn collect_referrers<R: EvidenceRegistry>(
    registry: &R,
    repo: &ImageName,
    digest: &Digest,
    ev: &mut Evidence,
) -> Result<(), RegistryError> {
    let referrers = registry.referrers(repo, digest).await?;
    for r in referrers.into_iter().take(MAX_REFERRERS) {
        // Some clients drop artifactType from the listing: fetch those and
        // look at their layers.
        if r.artifact_type
            .as_deref()
            .is_some_and(|t| !t.starts_with(BUNDLE_MEDIA_TYPE_PREFIX))
        {
            continue;
        }
        let reference = r.digest.to_string();
        let Some(bytes) = registry.manifest(repo, &reference).await? else {
            continue;
        };
        if Digest::of(&bytes) != r.digest {
            ev.problem(format!(
                "{repo}@{reference}: referrer does not match its digest"
            ));
            continue;
        }
        collect_layers(registry, repo, &format!("{repo}@{reference}"), &bytes, ev).await?;
    }
    Ok(())
}
