//! Wire-level domain types that every Customs component agrees on.
//!
//! Layout:
//! - [`digest`]: the `Digest` newtype (`sha256:<hex>`) and a streaming hasher.
//! - [`image_ref`]: image references as users type them.
//! - [`name`]: registry hosts, repository names, tags and references, each
//!   parsed once at the edge and carried in checked form afterwards.
//! - [`manifest`]: what an OCI/docker manifest or index references, which is
//!   what admission binds blobs to.
//! - [`oci_error`]: the OCI distribution error codes, so every component maps
//!   its failures to the same wire errors.
//! - [`piece_manifest`]: gateway-signed piece manifests and their verification.
//! - [`scheduler_proto`]: the scheduler's gRPC protocol.
#![forbid(unsafe_code)]

pub mod digest;
pub mod headers;
pub mod image_ref;
pub mod manifest;
pub mod name;
pub mod oci_error;
pub mod peer_id;
pub mod piece_bitmap;
pub mod piece_manifest;
pub mod quote;
pub mod rendezvous;

/// The generated scheduler gRPC protocol (from `proto/scheduler.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod scheduler_proto {
    tonic::include_proto!("customs.scheduler.v1");
}

/// The one conversion between the wire form of a signed piece manifest
/// and the protocol type (the bytes are carried as they are; checking them
/// is [`piece_manifest::TrustedGatewayKeys::verify`]'s job).
impl From<scheduler_proto::SignedPieceManifest> for piece_manifest::SignedPieceManifest {
    fn from(m: scheduler_proto::SignedPieceManifest) -> Self {
        piece_manifest::SignedPieceManifest {
            payload: m.payload,
            signature: m.signature,
            key_id: m.key_id,
        }
    }
}

impl From<&piece_manifest::SignedPieceManifest> for scheduler_proto::SignedPieceManifest {
    fn from(m: &piece_manifest::SignedPieceManifest) -> Self {
        scheduler_proto::SignedPieceManifest {
            payload: m.payload.clone(),
            signature: m.signature.clone(),
            key_id: m.key_id.clone(),
        }
    }
}

pub use digest::{Digest, DigestError, Sha256Hasher};
pub use image_ref::{ImageRef, ImageRefError};
pub use manifest::{MAX_MANIFEST_BYTES, ManifestError, ManifestKind, ManifestRefs};
pub use name::{ImageName, NameError, Reference, RegistryHost, Repository, Tag};
pub use oci_error::OciErrorCode;
pub use piece_bitmap::PieceBitmap;
