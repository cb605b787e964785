//! Upstream registries, reached through a bounded HTTP client.
//!
//! One [`RegistryClient`] per upstream, each with its own credentials and
//! token cache. Every request has connect, first-byte and idle-read
//! timeouts, and everything read into memory (manifests, referrers indexes,
//! tokens) is capped while it streams; see [`crate::registry_client`].

use crate::credentials::Credentials;
use crate::registry_client::{RegistryClient, Timeouts};
use customs_mirror::{FetchedManifest, Source};
use customs_protocol::manifest::{MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES, OCI_INDEX};
use customs_protocol::{Digest, ImageName, Reference, RegistryHost};
use customs_store::inflight::{ByteStream, SourceBody};
use customs_store::{FetchFailure, FetchFailureKind};
use futures_util::TryStreamExt;
use reqwest::StatusCode;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use url::Url;

/// Why an upstream could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL is not `http(s)://host[:port]`.
    #[error("upstream URL {0:?} must be http(s)://host[:port] with no path")]
    BadUrl(String),
    /// The extra CA file could not be read.
    #[error("cannot read CA file {path}: {source}")]
    Ca {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The extra CA file is not a PEM certificate bundle.
    #[error("extra CA bundle: {0}")]
    BadCa(String),
    /// The HTTP client could not be built (TLS setup).
    #[error("upstream HTTP client: {0}")]
    Client(String),
}

/// Every configured upstream, keyed by the registry identity it serves.
pub struct Upstreams {
    by_registry: HashMap<RegistryHost, Arc<RegistryClient>>,
    /// Blob bytes received from upstreams (the egress a P2P mirror saves).
    fetched: Arc<std::sync::atomic::AtomicU64>,
}

/// How to reach the upstreams.
#[derive(Debug, Clone, Default)]
pub struct UpstreamSettings {
    /// PEM bundle of extra CAs trusted for upstream TLS (on top of system roots).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Connect, first-byte, idle-read and whole-body timeouts.
    pub timeouts: Timeouts,
}

/// An entry of a referrers index (OCI 1.1 API or its tag-schema fallback).
#[derive(Debug, Clone, Deserialize)]
pub struct ReferrerEntry {
    /// The referrer manifest's digest, as the upstream wrote it.
    pub digest: String,
    /// Its media type.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// Its artifact type, when the upstream lists it.
    #[serde(rename = "artifactType", default)]
    pub artifact_type: Option<String>,
}

#[derive(Deserialize)]
struct ReferrersIndex {
    #[serde(default)]
    manifests: Option<Vec<ReferrerEntry>>,
}

/// The registry identity of an upstream URL: Docker Hub's API host is
/// known to clients as `docker.io`.
pub fn registry_identity(url: &str) -> Result<RegistryHost, UpstreamError> {
    let host = url_host(url)?;
    let id = match host.as_str() {
        "registry-1.docker.io" | "index.docker.io" => "docker.io".to_owned(),
        h => h.to_owned(),
    };
    id.parse()
        .map_err(|_| UpstreamError::BadUrl(url.to_owned()))
}

fn url_host(url: &str) -> Result<String, UpstreamError> {
    let bad = || UpstreamError::BadUrl(url.to_owned());
    let u = Url::parse(url).map_err(|_| bad())?;
    if !matches!(u.scheme(), "http" | "https")
        || !u.path().trim_end_matches('/').is_empty()
        || u.query().is_some()
    {
        return Err(bad());
    }
    let host = u.host_str().ok_or_else(bad)?;
    Ok(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    })
}

impl Upstreams {
    /// Builds clients for `registry → URL` pairs.
    pub fn new(
        entries: &[(RegistryHost, String)],
        creds: &Credentials,
        settings: &UpstreamSettings,
    ) -> Result<Self, UpstreamError> {
        let extra_roots = match &settings.extra_ca_pem {
            Some(pem) => reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| UpstreamError::BadCa(e.to_string()))?,
            None => Vec::new(),
        };
        let mut by_registry = HashMap::new();
        for (registry, url) in entries {
            let host = url_host(url)?;
            let scheme = if url.starts_with("http://") {
                "http"
            } else {
                "https"
            };
            let client = RegistryClient::new(
                format!("{scheme}://{host}"),
                host.clone(),
                creds.for_registry(registry, &host).cloned(),
                extra_roots.clone(),
                settings.timeouts,
            )
            .map_err(|e| UpstreamError::Client(e.to_string()))?;
            tracing::info!(%registry, url, authenticated = client.authenticated(), "upstream configured");
            by_registry.insert(registry.clone(), Arc::new(client));
        }
        Ok(Upstreams {
            by_registry,
            fetched: Arc::default(),
        })
    }

    /// Blob bytes received from upstreams so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.fetched.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn get(&self, registry: &RegistryHost) -> Result<Arc<RegistryClient>, FetchFailure> {
        self.by_registry.get(registry).cloned().ok_or_else(|| {
            FetchFailure::new(
                FetchFailureKind::Denied,
                format!("registry {registry} is not configured on this gateway"),
            )
        })
    }
}

/// The path part of a manifest URL.
fn manifest_path(image: &ImageName, reference: &Reference) -> String {
    let r = match reference {
        Reference::Tag(t) => t.as_str().to_owned(),
        Reference::Digest(d) => d.to_string(),
    };
    format!("/v2/{}/manifests/{r}", image.repository.as_str())
}

impl Upstreams {
    /// The referrers of `digest`: the OCI 1.1 referrers API, or the tag
    /// schema (`sha256-<hex>`) when the upstream answers 404 to it; no
    /// referrers when neither exists. Read capped like a manifest.
    pub async fn referrers_index(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<Vec<ReferrerEntry>, FetchFailure> {
        let up = self.get(&image.registry)?;
        let path = format!("/v2/{}/referrers/{digest}", image.repository.as_str());
        let resp = up.get(&image.repository, &path, OCI_INDEX).await?;
        let bytes = match resp.status() {
            StatusCode::OK => {
                up.read_capped(resp, MAX_MANIFEST_BYTES, "referrers index")
                    .await?
            }
            StatusCode::NOT_FOUND => {
                drop(resp);
                let tag = format!("{}-{}", digest.algorithm(), digest.hex())
                    .parse()
                    .map_err(|e| {
                        FetchFailure::new(FetchFailureKind::Unavailable, format!("{e}"))
                    })?;
                match self.manifest(image, &Reference::Tag(tag)).await {
                    Ok(m) => m.bytes,
                    Err(f) if f.kind == FetchFailureKind::NotFound => return Ok(Vec::new()),
                    Err(f) => return Err(f),
                }
            }
            _ => return Err(up.failure(resp, "referrers").await),
        };
        let index: ReferrersIndex = serde_json::from_slice(&bytes).map_err(|e| {
            FetchFailure::new(
                FetchFailureKind::Unavailable,
                format!("referrers of {image}@{digest}: not an image index: {e}"),
            )
        })?;
        index.manifests.ok_or_else(|| {
            FetchFailure::new(
                FetchFailureKind::Unavailable,
                format!("referrers of {image}@{digest}: not an image index"),
            )
        })
    }
}

impl Upstreams {
    /// Opens a blob; with `expect`, one whose Content-Length (when sent)
    /// is not that size is refused unread. With `from > 0` (and `expect`)
    /// only the bytes from `from` on: a fleet gateway resuming a transfer
    /// its owner broke off.
    pub(crate) fn open_blob(
        &self,
        image: &ImageName,
        digest: &Digest,
        expect: Option<u64>,
        from: u64,
    ) -> impl std::future::Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static {
        let up = self.get(&image.registry);
        let image = image.clone();
        let digest = digest.clone();
        let fetched = self.fetched.clone();
        async move {
            let up = up?;
            tracing::info!(%image, %digest, from, "fetching blob from upstream");
            let path = format!("/v2/{}/blobs/{digest}", image.repository.as_str());
            let from = if expect.is_some() { from } else { 0 };
            let resp = up.get_from(&image.repository, &path, "*/*", from).await?;
            if !(resp.status() == StatusCode::OK
                || (from > 0 && resp.status() == StatusCode::PARTIAL_CONTENT))
            {
                return Err(up.failure(resp, "blob").await);
            }
            if let Some(size) = expect {
                crate::registry_client::check_resumed(
                    &resp,
                    from,
                    size,
                    &format!("upstream for {digest}"),
                )?;
            }
            // The store hashes the stream and decides; every read of it is
            // bounded by the idle timeout.
            let counted = up.idle_bounded_stream(resp).inspect_ok(move |b| {
                fetched.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
            });
            Ok(Box::pin(counted) as ByteStream)
        }
    }
}

impl Source for Upstreams {
    async fn manifest(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> Result<FetchedManifest, FetchFailure> {
        let up = self.get(&image.registry)?;
        let accept = MANIFEST_MEDIA_TYPES.join(", ");
        let resp = up
            .get(&image.repository, &manifest_path(image, reference), &accept)
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(up.failure(resp, "manifest").await);
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let media_type = header("content-type");
        // Checked against the bytes by the mirror, never trusted alone.
        let declared_digest = header("docker-content-digest").and_then(|d| d.parse().ok());
        // Capped while streaming: an endless or oversized manifest is cut
        // off at the limit, never buffered.
        let bytes = up.read_capped(resp, MAX_MANIFEST_BYTES, "manifest").await?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            declared_digest,
        })
    }

    fn blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static {
        self.open_blob(image, digest, None, 0)
    }

    /// The upstream's blob with its Content-Length checked against the
    /// descriptor's size before a byte is read: the gateway's seed signs
    /// pieces of the blob while it still arrives, for a blob of that size.
    fn blob_body(
        &self,
        image: &ImageName,
        digest: &Digest,
        size: u64,
    ) -> impl std::future::Future<Output = Result<SourceBody, FetchFailure>> + Send + 'static {
        let opened = self.open_blob(image, digest, Some(size), 0);
        async move { opened.await.map(SourceBody::Stream) }
    }

    async fn blob_size(&self, image: &ImageName, digest: &Digest) -> Result<u64, FetchFailure> {
        Err(FetchFailure::new(
            FetchFailureKind::NotFound,
            format!("{digest} is not referenced by an admitted manifest of {image}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        assert_eq!(
            registry_identity("https://registry-1.docker.io")
                .unwrap()
                .as_str(),
            "docker.io"
        );
        assert_eq!(
            registry_identity("http://127.0.0.1:5000").unwrap().as_str(),
            "127.0.0.1:5000"
        );
        assert!(registry_identity("ftp://x").is_err());
        assert!(registry_identity("https://x/some/path").is_err());
        assert!(registry_identity("not a url").is_err());
    }

    #[tokio::test]
    async fn unconfigured_registry_is_denied_not_fetched() {
        let ups =
            Upstreams::new(&[], &Credentials::default(), &UpstreamSettings::default()).unwrap();
        let image = ImageName {
            registry: "evil.example".parse().unwrap(),
            repository: "x".parse().unwrap(),
        };
        let e = ups
            .manifest(&image, &Reference::Tag("latest".parse().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(e.kind, FetchFailureKind::Denied);
    }
}
