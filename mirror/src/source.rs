//! Where a mirror gets content it does not have.

use bytes::Bytes;
use customs_protocol::{Digest, ImageName, Reference};
use customs_store::FetchFailure;
use customs_store::inflight::{ByteStream, SourceBody};
use std::future::Future;

/// A manifest as the source sent it. The bytes are kept exactly: any
/// re-serialisation would change the digest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The body, byte for byte.
    pub bytes: Bytes,
    /// The `Content-Type` the source declared, if any.
    pub media_type: Option<String>,
    /// The `Docker-Content-Digest` the source declared, if any. Checked
    /// against the bytes by the mirror, never trusted on its own.
    pub declared_digest: Option<Digest>,
}

/// The next hop: upstream registries for the gateway, the gateway (and
/// later the swarm) for a peer.
pub trait Source: Send + Sync + 'static {
    /// Fetches a manifest by tag or digest.
    fn manifest(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> impl Future<Output = Result<FetchedManifest, FetchFailure>> + Send;

    /// Opens a blob stream. The returned future is detached from the request
    /// (it runs in the single-flight task), so it owns what it needs.
    fn blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static;

    /// Opens a blob for the store: by default the [`Source::blob`] stream,
    /// which the store hashes as it writes it. A source that assembles and
    /// verifies the blob itself (the swarm) hands over its file instead.
    /// `size` is the descriptor's: a source that learns the blob's length
    /// before its bytes (an upstream's Content-Length) refuses a blob of
    /// another length at once.
    fn blob_body(
        &self,
        image: &ImageName,
        digest: &Digest,
        size: u64,
    ) -> impl Future<Output = Result<SourceBody, FetchFailure>> + Send + 'static {
        let _ = size;
        let stream = self.blob(image, digest);
        async move { stream.await.map(SourceBody::Stream) }
    }

    /// [`Source::blob_body`] for a blob that `via`, a manifest (or index)
    /// of `image` admitted now, references: a source that asks another
    /// enforcing mirror (a gateway asking the blob's owner in a fleet)
    /// names it, so that mirror can check the admission and binding
    /// itself. By default `via` is not needed.
    fn blob_body_via(
        &self,
        image: &ImageName,
        digest: &Digest,
        size: u64,
        via: Option<&Digest>,
    ) -> impl Future<Output = Result<SourceBody, FetchFailure>> + Send + 'static {
        let _ = via;
        self.blob_body(image, digest, size)
    }

    /// The size of a blob that no local manifest binds, when the source is
    /// itself an enforcing mirror that can be asked (the peer asks the
    /// gateway). Upstream registries are never asked: the gateway refuses
    /// unbound blobs instead.
    fn blob_size(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl Future<Output = Result<u64, FetchFailure>> + Send;
}
