//! The mirror's errors and their one mapping to OCI error codes.

use customs_protocol::{NameError, OciErrorCode};
use customs_store::{FetchFailure, FetchFailureKind, StoreError};

/// Why a pull request failed.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// A repository name, tag or digest that does not parse.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The manifest is not known (upstream 404, nothing cached).
    #[error("manifest unknown: {0}")]
    ManifestUnknown(String),
    /// The blob is unknown or not bound to this repository.
    #[error("blob unknown: {0}")]
    BlobUnknown(String),
    /// The manifest is malformed, too large or hashes to another digest.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// Admission denied the manifest.
    #[error("{0}")]
    Denied(String),
    /// No current admission could be had (a node whose gateway has been
    /// unreachable for longer than the fail-static window). Travels as
    /// `DENIED`: a node never serves what it cannot show was admitted.
    #[error("{0}")]
    NotCurrent(String),
    /// The Range header cannot be satisfied.
    #[error("range not satisfiable: {0}")]
    Range(String),
    /// The source failed.
    #[error("{0}")]
    Source(FetchFailure),
    /// Local storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MirrorError {
    /// The OCI error code this error travels as.
    pub fn code(&self) -> OciErrorCode {
        match self {
            MirrorError::Name(_) => OciErrorCode::NameInvalid,
            MirrorError::ManifestUnknown(_) => OciErrorCode::ManifestUnknown,
            MirrorError::BlobUnknown(_) => OciErrorCode::BlobUnknown,
            MirrorError::ManifestInvalid(_) => OciErrorCode::ManifestInvalid,
            MirrorError::Denied(_) | MirrorError::NotCurrent(_) => OciErrorCode::Denied,
            MirrorError::Range(_) => OciErrorCode::RangeInvalid,
            MirrorError::Store(_) => OciErrorCode::Unavailable,
            MirrorError::Source(f) => match f.kind {
                FetchFailureKind::NotFound => OciErrorCode::ManifestUnknown,
                FetchFailureKind::Unauthorized => OciErrorCode::Unauthorized,
                FetchFailureKind::Denied => OciErrorCode::Denied,
                FetchFailureKind::TooManyRequests => OciErrorCode::Toomanyrequests,
                FetchFailureKind::DigestMismatch | FetchFailureKind::SizeMismatch => {
                    OciErrorCode::DigestInvalid
                }
                FetchFailureKind::Unavailable | FetchFailureKind::Io => OciErrorCode::Unavailable,
            },
        }
    }

    /// The source failure as a blob-request error (404 becomes `BLOB_UNKNOWN`).
    pub fn for_blob(f: FetchFailure) -> Self {
        if f.kind == FetchFailureKind::NotFound {
            MirrorError::BlobUnknown(f.message)
        } else {
            MirrorError::Source(f)
        }
    }

    /// The HTTP status. Upstream credential trouble is the gateway's problem,
    /// not the client's: it travels as 502 so containerd does not start an
    /// auth dance with the mirror.
    pub fn status(&self) -> u16 {
        match self {
            MirrorError::Source(f) if f.kind == FetchFailureKind::Unauthorized => 502,
            MirrorError::Source(f)
                if matches!(
                    f.kind,
                    FetchFailureKind::DigestMismatch | FetchFailureKind::SizeMismatch
                ) =>
            {
                502
            }
            MirrorError::Source(f) if f.kind == FetchFailureKind::Unavailable => 502,
            MirrorError::Store(_) => 500,
            other => other.code().status(),
        }
    }
}
