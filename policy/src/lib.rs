//! Customs policy: admission decisions for manifests from operator policy
//! files (signatures, SBOMs, SLSA provenance).
//!
//! Not implemented yet: until it is, the gateway's admission point allows
//! everything in audit mode and says so in every decision (see the gateway's
//! `admission` module and SECURITY.md).
#![forbid(unsafe_code)]
