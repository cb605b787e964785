//! The gateway as a content source.
//!
//! The peer relays the real registry in `?ns=` so the gateway identifies the
//! image by its real registry, and relays the gateway's OCI errors (a
//! policy denial stays a `DENIED` with its reason).

use crate::revision::{Observed, RevisionTracker};
use bytes::Bytes;
use customs_mirror::{FetchedManifest, Source};
use customs_protocol::manifest::MANIFEST_MEDIA_TYPES;
use customs_protocol::{Digest, ImageName, MAX_MANIFEST_BYTES, OciErrorCode, Reference};
use customs_runtime::trace_context;
use customs_store::inflight::ByteStream;
use customs_store::{FetchFailure, FetchFailureKind};
use customs_swarm::members::{FleetDoc, Gateways};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

/// Longest wait for a gateway answer on a manifest or admission check (a
/// blob body has its own pacing): past it the gateway counts as
/// unreachable and the node fails static.
pub const GATEWAY_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest fleet document read from a gateway (256 members of each kind
/// fit many times over).
const MAX_FLEET_DOC: usize = 256 * 1024;

/// Fetches from a gateway's OCI endpoint.
#[derive(Clone)]
pub struct GatewaySource {
    /// The gateways, tried in order: one that cannot be reached passes the
    /// turn to the next.
    gateways: Arc<Gateways>,
    http: reqwest::Client,
    /// Learns the gateway's policy revision from every response.
    revisions: Option<Arc<RevisionTracker>>,
}

/// The gateway's answer to "is this manifest admitted for this repository
/// now?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAnswer {
    /// Admitted, under this policy revision.
    Admitted {
        /// The revision the gateway decided under.
        revision: String,
    },
    /// Refused (policy `DENIED`, an unconfigured registry, or a manifest
    /// the gateway does not know): final, never "unavailable".
    Refused {
        /// The gateway's reason.
        reason: String,
    },
}

impl GatewaySource {
    /// A source for the gateway at `base` (e.g. `http://127.0.0.1:5050`, or
    /// the gateway's mTLS endpoint with a client that presents the peer's
    /// certificate).
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        Self::over(Arc::new(Gateways::new(vec![base.to_owned()])), http)
    }

    /// A source over several gateways (`--gateway`, repeatable, and the
    /// ones learned from the fleet).
    pub fn over(gateways: Arc<Gateways>, http: reqwest::Client) -> Self {
        GatewaySource {
            gateways,
            http,
            revisions: None,
        }
    }

    /// The gateways this source asks.
    pub fn gateways(&self) -> &Arc<Gateways> {
        &self.gateways
    }

    /// Sends the request `build` makes for a gateway base URL to the
    /// current gateway, passing to the next while one cannot be reached
    /// (connection refused or timed out); any answer is returned.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, FetchFailure> {
        let mut turns = self.gateways.len().max(1);
        loop {
            let base = self.gateways.current();
            let span = trace_context::client_span("gateway", &base);
            let req = build(&base).headers(trace_context::headers_for(&span));
            match req.send().instrument(span.clone()).await {
                Ok(r) => {
                    span.record("http.response.status_code", r.status().as_u16());
                    return Ok(r);
                }
                Err(e) if turns > 1 && (e.is_connect() || e.is_timeout()) => {
                    self.gateways.failed(&base);
                    turns -= 1;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    }

    /// The fleet as the current gateway sees it (`/customs/v1/fleet`, at
    /// most 256 KiB), for learning the other gateways and the schedulers.
    pub async fn fleet(&self) -> Result<FleetDoc, FetchFailure> {
        let resp = self
            .send(|b| {
                self.http
                    .get(format!("{b}/customs/v1/fleet"))
                    .timeout(GATEWAY_TIMEOUT)
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(relay_error(resp).await);
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(unavailable)?;
            if body.len() + chunk.len() > MAX_FLEET_DOC {
                return Err(unavailable("fleet document over 256 KiB"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| unavailable(format!("fleet document: {e}")))
    }

    /// Feeds every response's policy revision to `revisions`.
    pub fn with_revisions(mut self, revisions: Arc<RevisionTracker>) -> Self {
        self.revisions = Some(revisions);
        self
    }

    fn observe(&self, resp: &reqwest::Response) -> Observed {
        match &self.revisions {
            Some(r) => r.observe(resp.headers()),
            None => Observed::Current,
        }
    }

    /// Asks the gateway for its current revision (`GET /v2/`); the answer's
    /// headers update the tracker.
    pub async fn poll_revision(&self) -> Result<(), FetchFailure> {
        let resp = self
            .send(|b| self.http.get(format!("{b}/v2/")).timeout(GATEWAY_TIMEOUT))
            .await?;
        self.observe(&resp);
        Ok(())
    }

    /// Whether the gateway admits manifest `digest` for `image` now: it
    /// answers a manifest request only for a manifest it admitted for that
    /// repository under its current revision, which it names in a header.
    /// `Err` only when the gateway could not be asked (unreachable, or an
    /// answer without a revision).
    pub async fn admission_of(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> Result<GatewayAnswer, FetchFailure> {
        match self
            .get_manifest(image, &Reference::Digest(digest.clone()))
            .await
        {
            Ok((m, revision)) => {
                if Digest::of(&m.bytes) != *digest {
                    return Err(unavailable(format!(
                        "the gateway answered {digest} with other bytes"
                    )));
                }
                let revision = revision
                    .ok_or_else(|| unavailable("the gateway's answer names no policy revision"))?;
                Ok(GatewayAnswer::Admitted { revision })
            }
            Err(f)
                if matches!(
                    f.kind,
                    FetchFailureKind::Denied | FetchFailureKind::NotFound
                ) =>
            {
                Ok(GatewayAnswer::Refused { reason: f.message })
            }
            Err(f) => Err(f),
        }
    }

    /// The path (and `ns` query) of a request for `image`.
    fn path(image: &ImageName, kind: &str, reference: &str) -> String {
        format!(
            "/v2/{}/{kind}/{reference}?ns={}",
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

impl GatewaySource {
    /// A manifest and the policy revision the gateway served it under.
    async fn get_manifest(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> Result<(FetchedManifest, Option<String>), FetchFailure> {
        let path = Self::path(image, "manifests", &reference.to_string());
        let resp = self
            .send(|b| {
                self.http
                    .get(format!("{b}{path}"))
                    .header("Accept", MANIFEST_MEDIA_TYPES.join(", "))
                    .timeout(GATEWAY_TIMEOUT)
            })
            .await?;
        // A gateway behind the newest revision this node has seen (a
        // fleet member that has not pulled the policy commit yet) is not
        // asked to decide: it could re-admit what that revision revoked.
        if self.observe(&resp) == Observed::Stale {
            return Err(unavailable(
                "the gateway answers under an older policy revision than the newest this node has seen",
            ));
        }
        let revision = resp
            .headers()
            .get(customs_protocol::headers::POLICY_REVISION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
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
        Ok((
            FetchedManifest {
                bytes: Bytes::from(body),
                media_type,
                declared_digest,
            },
            revision,
        ))
    }
}

impl Source for GatewaySource {
    async fn manifest(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> Result<FetchedManifest, FetchFailure> {
        self.get_manifest(image, reference).await.map(|(m, _)| m)
    }

    fn blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static {
        let path = Self::path(image, "blobs", &digest.to_string());
        let source = self.clone();
        async move {
            let resp = source
                .send(|b| source.http.get(format!("{b}{path}")))
                .await?;
            source.observe(&resp);
            if resp.status() != StatusCode::OK {
                return Err(relay_error(resp).await);
            }
            Ok(Box::pin(resp.bytes_stream().map_err(std::io::Error::other)) as ByteStream)
        }
    }

    async fn blob_size(&self, image: &ImageName, digest: &Digest) -> Result<u64, FetchFailure> {
        let path = Self::path(image, "blobs", &digest.to_string());
        let resp = self
            .send(|b| {
                self.http
                    .head(format!("{b}{path}"))
                    .timeout(GATEWAY_TIMEOUT)
            })
            .await?;
        self.observe(&resp);
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
