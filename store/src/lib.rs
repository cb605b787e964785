//! The content-addressed store every Customs node keeps on local disk.
//!
//! Layout:
//! - [`index`]: the redb index (blob sizes and media types, tag cache, the
//!   repository bindings that admission writes), durable on commit.
//! - [`blobs`]: blob files under `blobs/sha256/<hex>`, written to `tmp/`
//!   first and renamed into place only after their sha256 matched, with an
//!   LRU size limit that never evicts a blob being served.
//! - [`audit`]: the durable JSON-lines audit log every component appends to.
//! - [`inflight`]: single-flight fetches: one upstream transfer per blob,
//!   however many clients miss on it at once, each of them streamed the bytes
//!   as they land on disk.
#![forbid(unsafe_code)]

pub mod audit;
pub mod blobs;
pub mod index;
pub mod inflight;

pub use blobs::{BlobReader, BlobStore, GcReport, StoreConfig};
pub use index::{Index, IndexError, Table};
pub use inflight::{FetchFailure, FetchFailureKind, TailReader};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Filesystem trouble (disk full, permissions).
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The index database failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A background task panicked or was cancelled.
    #[error("store task failed: {0}")]
    Task(String),
    /// An assembled blob's name no longer points at the file that was
    /// verified (its source dropped it, and another file took the name):
    /// nothing was kept.
    #[error("{0}: no longer the verified file; not stored")]
    NotAdopted(std::path::PathBuf),
}
