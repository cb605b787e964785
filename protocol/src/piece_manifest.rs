//! Gateway-signed piece manifests.
//!
//! The gateway builds one per blob only after the whole blob's sha256
//! matched its OCI digest. It lists the sha256 of every piece, binds them to
//! the blob digest and size and to the admission they belong to, and is
//! signed with the gateway's Ed25519 key. Peers verify every piece they
//! receive against it, so no peer can introduce or alter a byte.

use crate::digest::Digest;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Smallest piece: small blobs still split into enough pieces to swarm.
/// Much smaller than Dragonfly's 4 MiB because a piece must be whole and
/// verified before it can be re-shared, so piece size adds to every hop's
/// latency (the swarm bench at N=16: 1 MiB 1.33·S/B, 512 KiB 1.22, 256 KiB
/// 1.14, 128 KiB 1.15 at p50).
pub const MIN_PIECE_LEN: u64 = 256 * 1024;
/// Largest piece: bounds the work lost to one bad piece.
pub const MAX_PIECE_LEN: u64 = 64 * 1024 * 1024;
/// The piece count a blob is split into, at most, before pieces grow.
const TARGET_PIECES: u64 = 256;

/// Why a piece manifest was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PieceManifestError {
    /// Signed by a key that is not trusted.
    #[error("piece manifest signed by untrusted key {0:?}")]
    UntrustedKey(String),
    /// The signature does not verify over the payload.
    #[error("piece manifest signature is invalid")]
    BadSignature,
    /// The payload is not a piece manifest.
    #[error("piece manifest payload is malformed: {0}")]
    Malformed(String),
    /// It describes another blob than the one asked for.
    #[error("piece manifest is for {got}, not {want}")]
    WrongBlob {
        /// The blob expected.
        want: Digest,
        /// The blob it names.
        got: Digest,
    },
    /// Piece count or length inconsistent with the size.
    #[error("piece manifest is inconsistent: {0}")]
    Inconsistent(String),
    /// A key file could not be used.
    #[error("gateway key: {0}")]
    Key(String),
    /// A provisional statement past its validity.
    #[error("provisional piece statement expired at {expires_at} (now {now})")]
    Expired {
        /// When it expired (Unix seconds).
        expires_at: u64,
        /// The time it was checked at.
        now: u64,
    },
}

mod provisional;
pub use provisional::{
    FetchId, PROVISIONAL_DOMAIN, PROVISIONAL_RESIGN_SECS, PROVISIONAL_TTL_SECS, ProvisionalPieces,
    Statement, VerifiedProvisional, unix_now,
};

/// Where a blob's pieces lie: what a peer needs to place and read pieces,
/// whichever statement (final or provisional) signs their hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceGeometry {
    /// The blob's size.
    pub size: u64,
    /// Bytes per piece (the last may be shorter).
    pub piece_length: u64,
}

impl PieceGeometry {
    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        piece_count(self.size, self.piece_length) as u32
    }

    /// Byte range `start..end` of piece `i`.
    pub fn piece_range(&self, i: u32) -> Option<(u64, u64)> {
        if i >= self.piece_count() {
            return None;
        }
        let start = u64::from(i) * self.piece_length;
        Some((start, (start + self.piece_length).min(self.size)))
    }
}

/// The admission a task belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionRef {
    /// `registry/repository` the manifest was admitted for.
    pub image: String,
    /// The admitted manifest's digest.
    pub manifest_digest: Digest,
    /// The policy revision of the decision.
    pub policy_revision: String,
}

/// The content of a piece manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PieceManifest {
    /// The blob's OCI digest (verified whole by the gateway).
    pub blob: Digest,
    /// The blob's size.
    pub size: u64,
    /// Bytes per piece (the last piece may be shorter).
    pub piece_length: u64,
    /// sha256 of each piece, in order.
    pub pieces: Vec<Digest>,
    /// What admitted it.
    pub admission: AdmissionRef,
    /// The signing key's id.
    pub key_id: String,
}

/// The piece length the gateway uses for a blob of `size` bytes: a power
/// of two between 1 MiB and 64 MiB giving at most ~256 pieces.
pub fn piece_length_for(size: u64) -> u64 {
    let want = size.div_ceil(TARGET_PIECES).max(1).next_power_of_two();
    want.clamp(MIN_PIECE_LEN, MAX_PIECE_LEN)
}

/// How many pieces a blob has.
pub fn piece_count(size: u64, piece_length: u64) -> u64 {
    if size == 0 {
        1
    } else {
        size.div_ceil(piece_length)
    }
}

impl PieceManifest {
    /// Byte range `start..end` of piece `i`.
    pub fn piece_range(&self, i: u32) -> Option<(u64, u64)> {
        let start = u64::from(i) * self.piece_length;
        if (i as usize) >= self.pieces.len() || (start >= self.size && self.size > 0) {
            return None;
        }
        Some((start, (start + self.piece_length).min(self.size)))
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.pieces.len() as u32
    }

    /// Where its pieces lie.
    pub fn geometry(&self) -> PieceGeometry {
        PieceGeometry {
            size: self.size,
            piece_length: self.piece_length,
        }
    }

    fn check(&self) -> Result<(), PieceManifestError> {
        if !(MIN_PIECE_LEN..=MAX_PIECE_LEN).contains(&self.piece_length) {
            return Err(PieceManifestError::Inconsistent(format!(
                "piece length {}",
                self.piece_length
            )));
        }
        let n = piece_count(self.size, self.piece_length);
        if self.pieces.len() as u64 != n {
            return Err(PieceManifestError::Inconsistent(format!(
                "{} pieces listed, {n} expected for {} bytes",
                self.pieces.len(),
                self.size
            )));
        }
        Ok(())
    }
}

/// A manifest as it travels: the exact signed bytes and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPieceManifest {
    /// JSON of a [`PieceManifest`], exactly as signed.
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// Ed25519 signature over `payload`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// Which key signed it.
    pub key_id: String,
}

impl SignedPieceManifest {
    /// The blob the statement (final or provisional) says it is about,
    /// read from its payload without checking the signature: to know which
    /// key, task or scheduler it concerns before verifying it against that
    /// blob. `None` when the payload names no valid digest.
    pub fn claimed_blob(&self) -> Option<Digest> {
        #[derive(Deserialize)]
        struct Claim {
            blob: String,
        }
        let json = self
            .payload
            .strip_prefix(PROVISIONAL_DOMAIN)
            .unwrap_or(&self.payload);
        serde_json::from_slice::<Claim>(json)
            .ok()?
            .blob
            .parse()
            .ok()
    }
}

mod b64 {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// A manifest whose signature and consistency were checked. Only
/// [`TrustedGatewayKeys::verify`] makes one, so holding one proves it.
#[derive(Debug, Clone)]
pub struct VerifiedPieceManifest {
    manifest: PieceManifest,
    signed: SignedPieceManifest,
}

impl VerifiedPieceManifest {
    /// The checked content.
    pub fn manifest(&self) -> &PieceManifest {
        &self.manifest
    }

    /// The signed form, to hand on to others (who verify it themselves).
    pub fn signed(&self) -> &SignedPieceManifest {
        &self.signed
    }
}

fn key_id_of(key: &VerifyingKey) -> String {
    let d = Digest::of(key.as_bytes());
    format!("ed25519:{}", &d.hex()[..16])
}

/// The gateway's signing key.
pub struct GatewayKey {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for GatewayKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl GatewayKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, PieceManifestError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| PieceManifestError::Key(e.to_string()))?;
        Ok(Self::from_signing_key(SigningKey::from_bytes(&seed)))
    }

    fn from_signing_key(key: SigningKey) -> Self {
        let id = key_id_of(&key.verifying_key());
        GatewayKey { key, id }
    }

    /// Loads a PKCS#8 PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, PieceManifestError> {
        SigningKey::from_pkcs8_pem(pem)
            .map(Self::from_signing_key)
            .map_err(|e| PieceManifestError::Key(e.to_string()))
    }

    /// The private key as PKCS#8 PEM (for writing the key file).
    pub fn to_pem(&self) -> Result<String, PieceManifestError> {
        self.key
            .to_pkcs8_pem(Default::default())
            .map(|z| z.to_string())
            .map_err(|e| PieceManifestError::Key(e.to_string()))
    }

    /// The public key as SPKI PEM (what peers are configured to trust).
    pub fn public_pem(&self) -> Result<String, PieceManifestError> {
        self.key
            .verifying_key()
            .to_public_key_pem(Default::default())
            .map_err(|e| PieceManifestError::Key(e.to_string()))
    }

    /// The key id written into manifests.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Signs a manifest (its `key_id` is set to this key's).
    pub fn sign(
        &self,
        mut manifest: PieceManifest,
    ) -> Result<SignedPieceManifest, PieceManifestError> {
        manifest.key_id = self.id.clone();
        manifest.check()?;
        let payload = serde_json::to_vec(&manifest)
            .map_err(|e| PieceManifestError::Malformed(e.to_string()))?;
        let signature = self.key.sign(&payload).to_bytes().to_vec();
        Ok(SignedPieceManifest {
            payload,
            signature,
            key_id: self.id.clone(),
        })
    }
}

/// Prefix of every signed audit checkpoint message. Piece manifest payloads
/// are JSON objects, so a checkpoint signature can never pass for one.
pub const CHECKPOINT_DOMAIN: &[u8] = b"customs-audit-checkpoint/v1\n";

impl GatewayKey {
    /// Signs an audit checkpoint (`CHECKPOINT_DOMAIN` + `message`).
    pub fn sign_checkpoint(&self, message: &[u8]) -> Vec<u8> {
        let mut m = CHECKPOINT_DOMAIN.to_vec();
        m.extend_from_slice(message);
        self.key.sign(&m).to_bytes().to_vec()
    }
}

/// The gateway public keys a peer or the scheduler trusts (several, for
/// rotation).
#[derive(Debug, Clone, Default)]
pub struct TrustedGatewayKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl TrustedGatewayKeys {
    /// Trusts the given SPKI PEM public keys.
    pub fn from_pems<'a>(
        pems: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, PieceManifestError> {
        let mut keys = HashMap::new();
        for pem in pems {
            let k = VerifyingKey::from_public_key_pem(pem)
                .map_err(|e| PieceManifestError::Key(e.to_string()))?;
            keys.insert(key_id_of(&k), k);
        }
        Ok(TrustedGatewayKeys { keys })
    }

    /// True when no key is trusted (then nothing verifies).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks an audit checkpoint signature made by [`GatewayKey::sign_checkpoint`].
    pub fn verify_checkpoint(
        &self,
        key_id: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), PieceManifestError> {
        let key = self
            .keys
            .get(key_id)
            .ok_or_else(|| PieceManifestError::UntrustedKey(key_id.chars().take(64).collect()))?;
        let sig: [u8; 64] = signature
            .try_into()
            .map_err(|_| PieceManifestError::BadSignature)?;
        let mut m = CHECKPOINT_DOMAIN.to_vec();
        m.extend_from_slice(message);
        key.verify(&m, &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| PieceManifestError::BadSignature)
    }

    /// Checks the signature with a trusted key, then the content, then that
    /// it describes `expected_blob`.
    pub fn verify(
        &self,
        signed: &SignedPieceManifest,
        expected_blob: &Digest,
    ) -> Result<VerifiedPieceManifest, PieceManifestError> {
        let key = self.keys.get(&signed.key_id).ok_or_else(|| {
            PieceManifestError::UntrustedKey(signed.key_id.chars().take(64).collect())
        })?;
        let sig_bytes: [u8; 64] = signed
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| PieceManifestError::BadSignature)?;
        key.verify(
            &signed.payload,
            &ed25519_dalek::Signature::from_bytes(&sig_bytes),
        )
        .map_err(|_| PieceManifestError::BadSignature)?;
        let manifest: PieceManifest = serde_json::from_slice(&signed.payload)
            .map_err(|e| PieceManifestError::Malformed(e.to_string()))?;
        if manifest.key_id != signed.key_id {
            return Err(PieceManifestError::Inconsistent(
                "key id differs from the signing key".into(),
            ));
        }
        manifest.check()?;
        if manifest.blob != *expected_blob {
            return Err(PieceManifestError::WrongBlob {
                want: expected_blob.clone(),
                got: manifest.blob,
            });
        }
        Ok(VerifiedPieceManifest {
            manifest,
            signed: signed.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
