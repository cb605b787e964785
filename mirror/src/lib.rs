//! The OCI distribution pull API shared by the gateway and the peer.
//!
//! Both components answer containerd the same way; they differ only in where
//! content comes from (the gateway: upstream registries; the peer: the
//! gateway or other peers) and in who decides admission. So the pull logic
//! lives here once, generic over a [`Source`] and an [`Admission`].
//!
//! Layout:
//! - [`source`]: the next hop content is fetched from.
//! - [`admission`]: the single function every manifest digest passes.
//! - [`mirror`]: tag cache, manifest verification, admission and blob
//!   bindings, blob serving through the single-flight store.
//! - [`rate`]: the node-wide upload rate limiter and byte counter.
//! - [`http`]: the axum routes, range parsing and the mapping of
//!   [`MirrorError`] to OCI error responses.
#![forbid(unsafe_code)]

pub mod admission;
pub mod error;
pub mod http;
pub mod mirror;
pub mod range;
pub mod rate;
pub mod source;
pub mod warm;

pub use admission::{
    Admission, AdmissionRequest, AdmissionUnavailable, Decision, Refusal, Verdict,
};
pub use error::MirrorError;
pub use mirror::{Admitter, Binding, BlobBody, Mirror, MirrorConfig, ServedManifest, UnboundBlobs};
pub use source::{FetchedManifest, Source};
