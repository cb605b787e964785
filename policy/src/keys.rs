//! Public-key authorities: PEM `PUBLIC KEY` files (ECDSA P-256/P-384,
//! Ed25519, RSA), verified with sigstore-crypto over aws-lc-rs.

use sha2::{Digest as _, Sha256};
use sigstore_verify::crypto::{KeyAlgorithm, SigningScheme, VerificationKey};
use sigstore_verify::types::{DerPublicKey, SignatureBytes};

/// A trusted public key with the schemes cosign signs with for its type.
#[derive(Debug, Clone)]
pub struct PublicKey {
    der: DerPublicKey,
    algorithm: KeyAlgorithm,
    id: String,
}

/// Why a key file is unusable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl PublicKey {
    /// Parses a PEM SubjectPublicKeyInfo.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = DerPublicKey::from_pem(pem)
            .map_err(|e| KeyError(format!("not a PEM public key: {e}")))?;
        let algorithm = KeyAlgorithm::from_spki(&der)
            .map_err(|e| KeyError(format!("unsupported public key: {e}")))?;
        if !matches!(
            algorithm,
            KeyAlgorithm::EcdsaP256
                | KeyAlgorithm::EcdsaP384
                | KeyAlgorithm::Ed25519
                | KeyAlgorithm::Rsa
        ) {
            return Err(KeyError(format!("unsupported key algorithm {algorithm:?}")));
        }
        let id = format!("sha256:{}", hex::encode(Sha256::digest(der.as_bytes())));
        Ok(PublicKey { der, algorithm, id })
    }

    /// `sha256:` of the DER SubjectPublicKeyInfo: how decisions name the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The DER SubjectPublicKeyInfo.
    pub fn der(&self) -> &DerPublicKey {
        &self.der
    }

    /// The schemes a signature by this key may use, cosign's first.
    fn schemes(&self) -> &'static [SigningScheme] {
        match self.algorithm {
            KeyAlgorithm::EcdsaP256 => &[SigningScheme::EcdsaP256Sha256],
            KeyAlgorithm::EcdsaP384 => &[
                SigningScheme::EcdsaP384Sha384,
                SigningScheme::EcdsaP384Sha256,
            ],
            KeyAlgorithm::Ed25519 => &[SigningScheme::Ed25519],
            _ => &[SigningScheme::RsaPkcs1Sha256, SigningScheme::RsaPssSha256],
        }
    }

    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let sig = SignatureBytes::new(signature.to_vec());
        self.schemes().iter().any(|scheme| {
            VerificationKey::from_der(&self.der, *scheme)
                .and_then(|k| k.verify(message, &sig))
                .is_ok()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_private_keys() {
        assert!(PublicKey::from_pem("hello").is_err());
        assert!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
    }
}
