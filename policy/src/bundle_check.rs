//! Verifies one Sigstore bundle for a blob or a digest, as the Sigstore
//! clients' conformance CLI does (`customs verify-bundle`).

use crate::keys::PublicKey;
use sigstore_verify::trust_root::{SIGSTORE_PRODUCTION_TRUSTED_ROOT, TrustedRoot};
use sigstore_verify::types::{Artifact, Bundle, Sha256Hash};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, Verifier};

/// What the bundle must be for.
pub enum BundleArtifact {
    /// The artifact's bytes.
    Blob(Vec<u8>),
    /// Its sha256, hex.
    Sha256(String),
}

/// Who must have signed.
pub enum BundleSigner {
    /// A Fulcio certificate for this SAN and OIDC issuer (exact).
    Identity {
        /// Certificate SAN.
        identity: String,
        /// OIDC issuer.
        issuer: String,
    },
    /// A public key.
    Key(PublicKey),
}

/// Verifies; `Ok` describes the signer, `Err` says why not.
pub fn verify_bundle(
    bundle_json: &str,
    artifact: &BundleArtifact,
    signer: &BundleSigner,
    trusted_root_json: Option<&str>,
) -> Result<String, String> {
    let root =
        TrustedRoot::from_json(trusted_root_json.unwrap_or(SIGSTORE_PRODUCTION_TRUSTED_ROOT))
            .map_err(|e| format!("trusted root: {e}"))?;
    let verifier = Verifier::new(&root).map_err(|e| format!("trusted root: {e}"))?;
    let bundle = Bundle::from_json(bundle_json).map_err(|e| format!("malformed bundle: {e}"))?;
    let artifact = match artifact {
        BundleArtifact::Blob(b) => Artifact::from_blob(b),
        BundleArtifact::Sha256(h) => {
            Artifact::from(Sha256Hash::from_hex(h).map_err(|e| format!("digest: {e}"))?)
        }
    };
    match signer {
        BundleSigner::Identity { identity, issuer } => {
            let r = verifier
                .verify(
                    artifact,
                    &bundle,
                    &VerificationPolicy::new(identity.as_str(), issuer.as_str()),
                )
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "{} {}",
                r.issuer().unwrap_or_default(),
                r.identity()
                    .map(|i| i.as_str().to_owned())
                    .unwrap_or_default()
            ))
        }
        BundleSigner::Key(key) => {
            verifier
                .verify(
                    artifact,
                    &bundle,
                    &PublicKeyVerificationPolicy::new(key.der().clone()),
                )
                .map_err(|e| e.to_string())?;
            Ok(format!("key {}", key.id()))
        }
    }
}
