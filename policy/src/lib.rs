//! Customs policy: admission decisions for image manifests from operator
//! policy files kept in Git — cosign signatures (legacy `.sig`, keyed and
//! keyless), attestations (legacy `.att` DSSE and Sigstore bundles), SLSA
//! provenance rules, SBOM presence and CEL conditions — verified offline
//! against configured keys and Sigstore trusted roots.
//!
//! No network of its own: the gateway supplies an [`EvidenceRegistry`].
#![forbid(unsafe_code)]

pub mod authority;
pub mod bundle_check;
pub mod compile;
pub mod conditions;
pub mod decision;
pub mod engine;
pub mod error;
pub mod evidence;
pub mod glob;
pub mod intoto;
pub mod keys;
pub mod layout;
pub mod legacy_bundle;
pub mod message;
pub mod slsa;
pub mod snapshot;
pub mod spec;
pub mod testing;
pub mod verify;

pub use compile::{PolicySet, compile};
pub use decision::PolicyDecision;
pub use error::{LoadError, LoadErrors};
pub use evidence::{Evidence, EvidenceRegistry, RegistryError};
pub use snapshot::Snapshot;
pub use spec::Mode;
