//! What a manifest references.
//!
//! Admission binds blobs to repositories through the manifests that reference
//! them, so this is the one place that reads those references: the config and
//! layers of an image manifest, the child manifests of an index.

use crate::digest::Digest;
use serde::Deserialize;

/// containerd refuses manifests over about 4 MiB; so do we, before parsing.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The media types Customs serves as manifests, in preference order for
/// `Accept` headers sent upstream.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

use crate::quote::clip;

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is {0} bytes, over the 4 MiB limit")]
    TooLarge(usize),
    /// Not JSON or not the expected shape. serde quotes offending strings
    /// in full, so the message is clipped.
    #[error("manifest is malformed: {}", clip(&.0.to_string()))]
    Malformed(#[from] serde_json::Error),
    /// Docker schema 1 and unknown media types are refused: they cannot be
    /// verified the way schema 2 and OCI manifests are. Holds the media
    /// type clipped.
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    /// Neither layers nor manifests: nothing Customs knows how to serve.
    #[error("manifest has neither layers nor manifests")]
    UnknownShape,
}

/// Whether a manifest is a single image or an index of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest: config plus layers.
    Image,
    /// An index / manifest list: child manifests.
    Index,
}

/// A descriptor as found in manifests (only the fields admission needs).
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// For index entries: the platform the child manifest is for.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An index entry's platform (`os`/`architecture`[/`variant`]), which
/// preheat uses to pick the manifests a fleet will run.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`…
    #[serde(default)]
    pub os: String,
    /// `amd64`, `arm64`…
    #[serde(default)]
    pub architecture: String,
    /// `v8`, `v7`…
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Whether `self` satisfies a filter written `os/arch[/variant]`.
    pub fn matches(&self, filter: &str) -> bool {
        let mut parts = filter.split('/');
        let os = parts.next().unwrap_or_default();
        let arch = parts.next().unwrap_or_default();
        let variant = parts.next();
        self.os == os
            && self.architecture == arch
            && variant.is_none_or(|v| self.variant.as_deref() == Some(v))
    }
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
}

/// The parsed references of one manifest.
#[derive(Debug, Clone)]
pub struct ManifestRefs {
    /// Image or index.
    pub kind: ManifestKind,
    /// The media type to serve it with.
    pub media_type: String,
    /// Config and layers (image) — the blobs this manifest unlocks.
    pub blobs: Vec<Descriptor>,
    /// Child manifests (index).
    pub children: Vec<Descriptor>,
}

impl ManifestRefs {
    /// Parses a manifest body. `declared` is the Content-Type the source sent,
    /// used when the body itself carries no `mediaType` (allowed by OCI).
    pub fn parse(bytes: &[u8], declared: Option<&str>) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let raw: RawManifest = serde_json::from_slice(bytes)?;
        if raw.schema_version != Some(2) {
            return Err(ManifestError::UnsupportedMediaType(format!(
                "schemaVersion {:?}",
                raw.schema_version
            )));
        }
        let declared = declared
            .map(|d| d.split(';').next().unwrap_or(d).trim().to_owned())
            .filter(|d| MANIFEST_MEDIA_TYPES.contains(&d.as_str()));
        let (kind, default_type) = match (&raw.layers, &raw.manifests) {
            (Some(_), None) => (ManifestKind::Image, OCI_MANIFEST),
            (None, Some(_)) => (ManifestKind::Index, OCI_INDEX),
            _ => return Err(ManifestError::UnknownShape),
        };
        let media_type = raw
            .media_type
            .clone()
            .or(declared)
            .unwrap_or_else(|| default_type.to_owned());
        let expected: &[&str] = match kind {
            ManifestKind::Image => &[OCI_MANIFEST, DOCKER_MANIFEST],
            ManifestKind::Index => &[OCI_INDEX, DOCKER_LIST],
        };
        if !expected.contains(&media_type.as_str()) {
            return Err(ManifestError::UnsupportedMediaType(clip(&media_type)));
        }
        let mut blobs = Vec::new();
        if kind == ManifestKind::Image {
            let config = raw.config.ok_or(ManifestError::UnknownShape)?;
            blobs.push(config);
            blobs.extend(raw.layers.unwrap_or_default());
        }
        Ok(ManifestRefs {
            kind,
            media_type,
            blobs,
            children: raw.manifests.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quote::MAX_QUOTED;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn image_manifest_refs() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{}","size":3}},"layers":[{{"mediaType":"y","digest":"{}","size":5}}]}}"#,
            d('a'),
            d('b')
        );
        let r = ManifestRefs::parse(m.as_bytes(), None).unwrap();
        assert_eq!(r.kind, ManifestKind::Image);
        assert_eq!(r.blobs.len(), 2);
        assert_eq!(r.blobs[1].size, 5);
    }

    #[test]
    fn index_without_media_type_uses_declared() {
        let m = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{}","size":9}}]}}"#,
            d('c')
        );
        let r = ManifestRefs::parse(
            m.as_bytes(),
            Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
        )
        .unwrap();
        assert_eq!(r.kind, ManifestKind::Index);
        assert_eq!(r.media_type, DOCKER_LIST);
        assert_eq!(r.children.len(), 1);
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            ManifestRefs::parse(b"{", None),
            Err(ManifestError::Malformed(_))
        ));
        assert!(ManifestRefs::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).is_err());
        assert!(matches!(
            ManifestRefs::parse(br#"{"schemaVersion":2}"#, None),
            Err(ManifestError::UnknownShape)
        ));
        let bad_digest =
            r#"{"schemaVersion":2,"config":{"digest":"sha256:../../etc","size":1},"layers":[]}"#;
        assert!(matches!(
            ManifestRefs::parse(bad_digest.as_bytes(), None),
            Err(ManifestError::Malformed(_))
        ));
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        assert!(matches!(
            ManifestRefs::parse(&big, None),
            Err(ManifestError::TooLarge(_))
        ));
        let wrong_type = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","config":{{"digest":"{}","size":1}},"layers":[]}}"#,
            d('a')
        );
        assert!(matches!(
            ManifestRefs::parse(wrong_type.as_bytes(), None),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn errors_quote_hostile_values_clipped() {
        // A hostile upstream puts a 1 MiB string where the media type or a
        // size belongs; the error (logged, sent to clients) stays small.
        let big = "A".repeat(1 << 20);
        let media = format!(
            r#"{{"schemaVersion":2,"mediaType":"{big}","config":{{"digest":"{}","size":1}},"layers":[]}}"#,
            d('a')
        );
        let e = ManifestRefs::parse(media.as_bytes(), None).unwrap_err();
        assert!(matches!(&e, ManifestError::UnsupportedMediaType(m) if m.len() < 2 * MAX_QUOTED));
        assert!(
            e.to_string().len() < 2 * MAX_QUOTED,
            "{} bytes",
            e.to_string().len()
        );
        let size = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}","size":"{big}"}},"layers":[]}}"#,
            d('a')
        );
        let e = ManifestRefs::parse(size.as_bytes(), None).unwrap_err();
        assert!(matches!(e, ManifestError::Malformed(_)));
        let text = e.to_string();
        assert!(text.len() < 2 * MAX_QUOTED, "{} bytes", text.len());
        assert!(
            text.starts_with("manifest is malformed: invalid type"),
            "{text}"
        );
    }
}
