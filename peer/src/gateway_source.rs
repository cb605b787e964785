//! The gateway as a content source.
//!
//! The peer relays the real registry in `?ns=` so the gateway identifies the
//! image by its real registry, and relays the gateway's OCI errors (a
//! policy denial stays a `DENIED` with its reason).

use bytes::Bytes;
use customs_mirror::{FetchedManifest, Source};
use customs_protocol::manifest::MANIFEST_MEDIA_TYPES;
use customs_protocol::{Digest, ImageName, MAX_MANIFEST_BYTES, OciErrorCode, Reference};
use customs_store::inflight::ByteStream;
use customs_store::{FetchFailure, FetchFailureKind};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::StatusCode;

/// Fetches from a gateway's OCI endpoint.
#[derive(Clone)]
pub struct GatewaySource {
    base: String,
    http: reqwest::Client,
}

impl GatewaySource {
    /// A source for the gateway at `base` (e.g. `http://127.0.0.1:5050`, or
    /// the gateway's mTLS endpoint with a client that presents the peer's
    /// certificate).
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        GatewaySource {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    fn url(&self, image: &ImageName, kind: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{reference}?ns={}",
            self.base,
            image.repository,
            image.registry.as_str().replace(':', "%3A")
        )
    }
}

fn unavailable(e: impl std::fmt::Display) -> FetchFailure {
    FetchFailure::new(FetchFailureKind::Unavailable, format!("gateway: {e}"))
}

/// Turns a gateway error response into a failure, keeping its OCI code and
/// message so the client sees the gateway's reason.
async fn relay_error(resp: reqwest::Response) -> FetchFailure {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    let parsed: Option<(String, String)> =
        serde_json::from_slice::<serde_json::Value>(&body[..body.len().min(64 * 1024)])
            .ok()
            .and_then(|v| {
                let e = v.get("errors")?.get(0)?;
                Some((
                    e.get("code")?.as_str()?.to_owned(),
                    e.get("message")?.as_str().unwrap_or("").to_owned(),
                ))
            });
    let code = parsed.as_ref().and_then(|(c, _)| OciErrorCode::parse(c));
    let message = parsed
        .map(|(_, m)| m)
        .unwrap_or_else(|| format!("gateway answered {status}"));
    let kind = match (code, status) {
        (Some(OciErrorCode::Denied), _) => FetchFailureKind::Denied,
        (
            Some(
                OciErrorCode::ManifestUnknown
                | OciErrorCode::BlobUnknown
                | OciErrorCode::NameUnknown,
            ),
            _,
        )
        | (_, StatusCode::NOT_FOUND) => FetchFailureKind::NotFound,
        (Some(OciErrorCode::Toomanyrequests), _) | (_, StatusCode::TOO_MANY_REQUESTS) => {
            FetchFailureKind::TooManyRequests
        }
        (Some(OciErrorCode::DigestInvalid), _) => FetchFailureKind::DigestMismatch,
        _ => FetchFailureKind::Unavailable,
    };
    FetchFailure::new(kind, message)
}

impl Source for GatewaySource {
    async fn manifest(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> Result<FetchedManifest, FetchFailure> {
        let resp = self
            .http
            .get(self.url(image, "manifests", &reference.to_string()))
            .header("Accept", MANIFEST_MEDIA_TYPES.join(", "))
            .send()
            .await
            .map_err(unavailable)?;
        if resp.status() != StatusCode::OK {
            return Err(relay_error(resp).await);
        }
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let media_type = header("content-type");
        let declared_digest =
            header("docker-content-digest").and_then(|d| d.parse::<Digest>().ok());
        // Read at most the manifest limit, whatever Content-Length claims.
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(unavailable)?;
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(FetchFailure::new(
                    FetchFailureKind::Unavailable,
                    "gateway sent a manifest over 4 MiB",
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(FetchedManifest {
            bytes: Bytes::from(body),
            media_type,
            declared_digest,
        })
    }

    fn blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static {
        let req = self.http.get(self.url(image, "blobs", &digest.to_string()));
        async move {
            let resp = req.send().await.map_err(unavailable)?;
            if resp.status() != StatusCode::OK {
                return Err(relay_error(resp).await);
            }
            Ok(Box::pin(resp.bytes_stream().map_err(std::io::Error::other)) as ByteStream)
        }
    }

    async fn blob_size(&self, image: &ImageName, digest: &Digest) -> Result<u64, FetchFailure> {
        let resp = self
            .http
            .head(self.url(image, "blobs", &digest.to_string()))
            .send()
            .await
            .map_err(unavailable)?;
        if resp.status() != StatusCode::OK {
            return Err(relay_error(resp).await);
        }
        resp.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| unavailable("HEAD without Content-Length"))
    }
}
