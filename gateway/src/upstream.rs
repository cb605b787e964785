//! Upstream registries, reached through oci-client.
//!
//! One `oci_client::Client` per upstream: oci-client stores credentials per
//! registry host with the first ones winning, so sharing a client between
//! credential sets would mix them up.

use crate::credentials::Credentials;
use customs_mirror::{FetchedManifest, Source};
use customs_protocol::{
    Digest, ImageName, Reference, RegistryHost, manifest::MANIFEST_MEDIA_TYPES,
};
use customs_store::inflight::ByteStream;
use customs_store::{FetchFailure, FetchFailureKind};
use futures_util::TryStreamExt;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode as UpErr};
use oci_client::secrets::RegistryAuth;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
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
}

/// One upstream registry.
struct Upstream {
    /// host[:port] as oci-client addresses it.
    host: String,
    client: oci_client::Client,
    auth: RegistryAuth,
}

/// Every configured upstream, keyed by the registry identity it serves.
pub struct Upstreams {
    by_registry: HashMap<RegistryHost, Arc<Upstream>>,
    /// Blob bytes received from upstreams (the egress a P2P mirror saves).
    fetched: Arc<std::sync::atomic::AtomicU64>,
}

/// How to reach the upstreams.
#[derive(Debug, Clone, Default)]
pub struct UpstreamSettings {
    /// PEM bundle of extra CAs trusted for upstream TLS (on top of system roots).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Upstream request timeout for connecting.
    pub connect_timeout: Option<Duration>,
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
        let mut by_registry = HashMap::new();
        for (registry, url) in entries {
            let host = url_host(url)?;
            let protocol = if url.starts_with("http://") {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            };
            let extra_root_certificates = settings
                .extra_ca_pem
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect();
            let client = oci_client::Client::new(ClientConfig {
                protocol,
                extra_root_certificates,
                connect_timeout: settings.connect_timeout.or(Some(Duration::from_secs(10))),
                ..Default::default()
            });
            let auth = match creds.for_registry(registry, &host) {
                Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
                None => RegistryAuth::Anonymous,
            };
            tracing::info!(%registry, url, authenticated = !matches!(auth, RegistryAuth::Anonymous), "upstream configured");
            by_registry.insert(registry.clone(), Arc::new(Upstream { host, client, auth }));
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

    fn get(&self, registry: &RegistryHost) -> Result<Arc<Upstream>, FetchFailure> {
        self.by_registry.get(registry).cloned().ok_or_else(|| {
            FetchFailure::new(
                FetchFailureKind::Denied,
                format!("registry {registry} is not configured on this gateway"),
            )
        })
    }
}

impl Upstreams {
    /// The referrers index of `digest` (OCI 1.1 API, else the tag schema;
    /// oci-client falls back by itself).
    pub async fn referrers_index(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<Vec<oci_client::manifest::ImageIndexEntry>, FetchFailure> {
        let up = self.get(&image.registry)?;
        let r = oci_ref(&up, image, &Reference::Digest(digest.clone()));
        up.client
            .pull_referrers(&r, None)
            .await
            .map(|i| i.manifests)
            .map_err(classify)
    }
}

/// Maps oci-client's errors to fetch failure classes.
fn classify(e: OciDistributionError) -> FetchFailure {
    use FetchFailureKind as K;
    let kind = match &e {
        OciDistributionError::RegistryError { envelope, .. } => match envelope
            .errors
            .first()
            .map(|x| &x.code)
        {
            Some(
                UpErr::ManifestUnknown | UpErr::BlobUnknown | UpErr::NameUnknown | UpErr::NotFound,
            ) => K::NotFound,
            Some(UpErr::Denied) => K::Denied,
            Some(UpErr::Unauthorized) => K::Unauthorized,
            Some(UpErr::Toomanyrequests) => K::TooManyRequests,
            _ => K::Unavailable,
        },
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => K::NotFound,
        OciDistributionError::ServerError { code: 429, .. } => K::TooManyRequests,
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        }
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => K::Unauthorized,
        OciDistributionError::DigestError(_) => K::DigestMismatch,
        _ => K::Unavailable,
    };
    FetchFailure::new(kind, format!("upstream: {e}"))
}

fn oci_ref(up: &Upstream, image: &ImageName, reference: &Reference) -> oci_client::Reference {
    let repo = image.repository.as_str().to_owned();
    match reference {
        Reference::Tag(t) => {
            oci_client::Reference::with_tag(up.host.clone(), repo, t.as_str().to_owned())
        }
        Reference::Digest(d) => {
            oci_client::Reference::with_digest(up.host.clone(), repo, d.to_string())
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
        let r = oci_ref(&up, image, reference);
        // oci-client checks the body against a requested digest and the
        // Docker-Content-Digest header; the mirror checks again on its own
        // terms, so neither is trusted alone.
        let (bytes, digest) = up
            .client
            .pull_manifest_raw(&r, &up.auth, &MANIFEST_MEDIA_TYPES)
            .await
            .map_err(classify)?;
        Ok(FetchedManifest {
            bytes,
            media_type: None,
            declared_digest: digest.parse::<Digest>().ok(),
        })
    }

    fn blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static {
        let up = self.get(&image.registry);
        let image = image.clone();
        let digest = digest.clone();
        let fetched = self.fetched.clone();
        async move {
            let up = up?;
            let r = oci_ref(&up, &image, &Reference::Digest(digest.clone()));
            let d = digest.to_string();
            tracing::info!(%image, %digest, "fetching blob from upstream");
            // oci-client's stream verifies the digest too; the store's own
            // hash is the one that decides. Hashing twice costs ~2.5% of a
            // core at upstream speeds and keeps both checks independent.
            let sized = up
                .client
                .pull_blob_stream(&r, d.as_str())
                .await
                .map_err(classify)?;
            let counted = sized
                .stream
                .map_err(std::io::Error::other)
                .inspect_ok(move |b| {
                    fetched.fetch_add(b.len() as u64, std::sync::atomic::Ordering::Relaxed);
                });
            Ok(Box::pin(counted) as ByteStream)
        }
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
