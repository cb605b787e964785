//! The admission point: one function every manifest digest passes before
//! any of its bytes are served.

use customs_protocol::{Digest, ImageName, ManifestRefs};
use serde::{Deserialize, Serialize};
use std::future::Future;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Serve it.
    Allow,
    /// Refuse it with an OCI `DENIED` error.
    Deny,
}

/// A decision and why it was made. Persisted per (image, digest), so a
/// restart keeps serving what was admitted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The policy mode that produced it (`enforce`, `warn`, `audit`).
    pub mode: String,
    /// Human-readable reasons, one per rule that mattered.
    pub reasons: Vec<String>,
    /// The policy revision (e.g. a Git commit) the decision was made under.
    pub revision: String,
}

/// What admission sees of a manifest.
#[derive(Debug)]
pub struct AdmissionRequest<'a> {
    /// The image, by its real registry and repository.
    pub image: &'a ImageName,
    /// The manifest digest (verified against the bytes).
    pub digest: &'a Digest,
    /// The manifest's references.
    pub manifest: &'a ManifestRefs,
    /// The exact bytes.
    pub bytes: &'a [u8],
    /// The admitted index that lists this manifest, if any.
    pub parent_index: Option<&'a Digest>,
}

/// Admission could not decide now: the peer could not reach its gateway (or
/// the gateway's answer was unusable). Never an "allow": the mirror may only
/// keep serving what was admitted under the newest revision it has seen, for
/// a bounded time (fail static), and refuses everything else.
#[derive(Debug, Clone, thiserror::Error)]
#[error("admission unavailable: {detail}")]
pub struct AdmissionUnavailable {
    /// What went wrong (transport error, status), for logs and the client.
    pub detail: String,
}

/// Why a mirror refused a request, for counting refusals per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Admission (the policy, or the gateway on a node) denied the manifest.
    Denied,
    /// No current admission and none could be obtained in time (the
    /// gateway unreachable beyond the fail-static window).
    NotCurrent,
    /// A blob no currently admitted manifest of the repository references.
    Unbound,
}

/// Decides whether a manifest may be served.
pub trait Admission: Send + Sync + 'static {
    /// The revision decisions are currently made under; a cached decision
    /// from another revision is not reused.
    fn revision(&self) -> String;

    /// Decides, and records the decision (audit) as a side effect; `Err`
    /// when no decision can be had right now (see [`AdmissionUnavailable`]).
    fn admit(
        &self,
        req: AdmissionRequest<'_>,
    ) -> impl Future<Output = Result<Decision, AdmissionUnavailable>> + Send;

    /// A refusal the mirror answered (for metrics); not an audit event.
    fn refused(&self, _image: &ImageName, _refusal: Refusal) {}

    /// A decision answered from the cache. Not an audit event of its own
    /// (the hot path must not turn into durable writes); implementations
    /// count these and record the counts per interval.
    fn cached(&self, _image: &ImageName, _verdict: Verdict) {}
}
