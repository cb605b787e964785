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
pub mod piece_manifest;
pub mod quote;

/// The generated scheduler gRPC protocol (from `proto/scheduler.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod scheduler_proto {
    tonic::include_proto!("customs.scheduler.v1");
}

pub use digest::{Digest, DigestError, Sha256Hasher};
pub use image_ref::{ImageRef, ImageRefError};
pub use manifest::{MAX_MANIFEST_BYTES, ManifestError, ManifestKind, ManifestRefs};
pub use name::{ImageName, NameError, Reference, RegistryHost, Repository, Tag};
pub use oci_error::OciErrorCode;
