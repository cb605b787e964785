//! Provisional piece statements: the pipelined cold path.
//!
//! While the gateway is still fetching a cold blob from upstream, it signs
//! the sha256 of each piece it has read so far, so peers can fetch and
//! share those pieces at once instead of waiting for the whole blob. Such a
//! statement is *provisional*: the whole-blob digest has not matched yet.
//! So it
//!
//! - is signed in its own domain ([`PROVISIONAL_DOMAIN`] before the JSON):
//!   a final [`super::PieceManifest`] payload starts with `{`, so neither can
//!   ever pass for the other;
//! - never covers the last piece (the gateway learns it only when the
//!   upstream's body ends, when the digest is checked): no peer can hold
//!   every piece, and so no peer marks a blob complete, before the final
//!   manifest;
//! - names the fetch it belongs to ([`FetchId`]): pieces of one fetch are
//!   never mixed with another's, and a failed fetch is answered as failed;
//! - expires ([`PROVISIONAL_TTL_SECS`] after signing at most): a peer that
//!   has not received the final manifest (or a newer statement) by then
//!   discards what it holds.
//!
//! Its size is the upstream's Content-Length, which the gateway requires to
//! equal the descriptor's size.

use super::{
    AdmissionRef, GatewayKey, MAX_PIECE_LEN, MIN_PIECE_LEN, PieceManifestError,
    SignedPieceManifest, TrustedGatewayKeys, piece_count,
};
use crate::digest::Digest;
use ed25519_dalek::{Signer, Verifier};
use serde::{Deserialize, Serialize};

/// Prefix of every signed provisional statement.
pub const PROVISIONAL_DOMAIN: &[u8] = b"customs-provisional-pieces/v1\n";
/// The longest a provisional statement is valid after it was signed.
pub const PROVISIONAL_TTL_SECS: u64 = 60;
/// How often the gateway signs a fresh statement for a fetch in progress
/// even when no piece completed (a slow upstream): well inside the TTL.
pub const PROVISIONAL_RESIGN_SECS: u64 = 20;
/// Clock difference between the gateway and a verifier that is tolerated:
/// a statement is accepted until `expires_at` plus this, and refused when
/// signed more than this in the verifier's future. Nodes run NTP; a node
/// whose clock is further off takes final manifests only.
pub const MAX_CLOCK_SKEW_SECS: u64 = 30;

/// One upstream fetch of a blob by the gateway: random, so statements of
/// two fetches of one blob (one failed, one retried) never combine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FetchId(String);

impl FetchId {
    /// A fresh random id (128 bits, hex).
    pub fn random() -> Result<Self, PieceManifestError> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| PieceManifestError::Key(e.to_string()))?;
        Ok(FetchId(hex::encode(b)))
    }

    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FetchId {
    type Error = PieceManifestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            Ok(FetchId(s))
        } else {
            Err(PieceManifestError::Malformed(format!(
                "fetch id {:?} is not 32 lower-case hex digits",
                s.chars().take(40).collect::<String>()
            )))
        }
    }
}

impl std::str::FromStr for FetchId {
    type Err = PieceManifestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FetchId::try_from(s.to_owned())
    }
}

impl From<FetchId> for String {
    fn from(f: FetchId) -> String {
        f.0
    }
}

impl std::fmt::Display for FetchId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The content of a provisional statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionalPieces {
    /// The blob's OCI digest (not yet checked whole).
    pub blob: Digest,
    /// The blob's size: the upstream's Content-Length, equal to the
    /// descriptor's.
    pub size: u64,
    /// Bytes per piece (as the final manifest will have).
    pub piece_length: u64,
    /// sha256 of the first `pieces.len()` pieces, in order: never all.
    pub pieces: Vec<Digest>,
    /// The fetch these pieces were read in.
    pub fetch: FetchId,
    /// When it was signed (Unix seconds, gateway clock).
    pub signed_at: u64,
    /// When it stops being valid (Unix seconds).
    pub expires_at: u64,
    /// What admitted the blob (checked before the fetch began).
    pub admission: AdmissionRef,
    /// The signing key's id.
    pub key_id: String,
}

impl ProvisionalPieces {
    /// Number of pieces the blob has (signed or not).
    pub fn piece_count(&self) -> u32 {
        piece_count(self.size, self.piece_length) as u32
    }

    fn check(&self) -> Result<(), PieceManifestError> {
        if !(MIN_PIECE_LEN..=MAX_PIECE_LEN).contains(&self.piece_length) {
            return Err(PieceManifestError::Inconsistent(format!(
                "piece length {}",
                self.piece_length
            )));
        }
        let n = piece_count(self.size, self.piece_length);
        if n > u64::from(u32::MAX) {
            return Err(PieceManifestError::Inconsistent(format!(
                "{n} pieces: more than a piece index can count"
            )));
        }
        if self.pieces.len() as u64 >= n {
            return Err(PieceManifestError::Inconsistent(format!(
                "a provisional statement signs {} of {n} pieces; the last is signed only in the final manifest",
                self.pieces.len()
            )));
        }
        if self.expires_at <= self.signed_at
            || self.expires_at - self.signed_at > PROVISIONAL_TTL_SECS
        {
            return Err(PieceManifestError::Inconsistent(format!(
                "valid from {} to {}: more than {PROVISIONAL_TTL_SECS} s",
                self.signed_at, self.expires_at
            )));
        }
        Ok(())
    }
}

/// A provisional statement whose signature, consistency and expiry were
/// checked. Only [`TrustedGatewayKeys::verify_statement`] makes one.
#[derive(Debug, Clone)]
pub struct VerifiedProvisional {
    content: ProvisionalPieces,
    signed: SignedPieceManifest,
}

impl VerifiedProvisional {
    /// The checked content.
    pub fn content(&self) -> &ProvisionalPieces {
        &self.content
    }

    /// The signed form, to hand on.
    pub fn signed(&self) -> &SignedPieceManifest {
        &self.signed
    }
}

/// What a peer or the scheduler holds for a task: a final manifest, or a
/// provisional statement while the gateway is still fetching.
#[derive(Debug, Clone)]
pub enum Statement {
    /// Signed after the whole-blob digest matched.
    Final(super::VerifiedPieceManifest),
    /// Signed while fetching; never completes a blob.
    Provisional(VerifiedProvisional),
}

impl Statement {
    /// The signed form.
    pub fn signed(&self) -> &SignedPieceManifest {
        match self {
            Statement::Final(m) => m.signed(),
            Statement::Provisional(p) => p.signed(),
        }
    }

    /// The blob it is about.
    pub fn blob(&self) -> &Digest {
        match self {
            Statement::Final(m) => &m.manifest().blob,
            Statement::Provisional(p) => &p.content.blob,
        }
    }

    /// The blob's size.
    pub fn size(&self) -> u64 {
        match self {
            Statement::Final(m) => m.manifest().size,
            Statement::Provisional(p) => p.content.size,
        }
    }

    /// Bytes per piece.
    pub fn piece_length(&self) -> u64 {
        match self {
            Statement::Final(m) => m.manifest().piece_length,
            Statement::Provisional(p) => p.content.piece_length,
        }
    }

    /// Number of pieces of the blob.
    pub fn piece_count(&self) -> u32 {
        piece_count(self.size(), self.piece_length()) as u32
    }

    /// The piece hashes signed so far (all of them when final).
    pub fn pieces(&self) -> &[Digest] {
        match self {
            Statement::Final(m) => &m.manifest().pieces,
            Statement::Provisional(p) => &p.content.pieces,
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl GatewayKey {
    /// Signs a provisional statement (`PROVISIONAL_DOMAIN` + JSON; its
    /// `key_id` is set to this key's).
    pub fn sign_provisional(
        &self,
        mut p: ProvisionalPieces,
    ) -> Result<SignedPieceManifest, PieceManifestError> {
        p.key_id = self.id.clone();
        p.check()?;
        let mut payload = PROVISIONAL_DOMAIN.to_vec();
        serde_json::to_writer(&mut payload, &p)
            .map_err(|e| PieceManifestError::Malformed(e.to_string()))?;
        let signature = self.key.sign(&payload).to_bytes().to_vec();
        Ok(SignedPieceManifest {
            payload,
            signature,
            key_id: self.id.clone(),
        })
    }
}

impl TrustedGatewayKeys {
    /// Checks a statement for `expected_blob`: a final manifest as
    /// [`TrustedGatewayKeys::verify`] does, or a provisional one in its own
    /// domain, which must also not have expired at `now` (Unix seconds).
    pub fn verify_statement(
        &self,
        signed: &SignedPieceManifest,
        expected_blob: &Digest,
        now: u64,
    ) -> Result<Statement, PieceManifestError> {
        let Some(json) = signed.payload.strip_prefix(PROVISIONAL_DOMAIN) else {
            return self.verify(signed, expected_blob).map(Statement::Final);
        };
        let key = self.keys.get(&signed.key_id).ok_or_else(|| {
            PieceManifestError::UntrustedKey(signed.key_id.chars().take(64).collect())
        })?;
        let sig: [u8; 64] = signed
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| PieceManifestError::BadSignature)?;
        key.verify(&signed.payload, &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| PieceManifestError::BadSignature)?;
        let content: ProvisionalPieces = serde_json::from_slice(json)
            .map_err(|e| PieceManifestError::Malformed(e.to_string()))?;
        if content.key_id != signed.key_id {
            return Err(PieceManifestError::Inconsistent(
                "key id differs from the signing key".into(),
            ));
        }
        content.check()?;
        if content.blob != *expected_blob {
            return Err(PieceManifestError::WrongBlob {
                want: expected_blob.clone(),
                got: content.blob,
            });
        }
        if now >= content.expires_at.saturating_add(MAX_CLOCK_SKEW_SECS)
            || content.signed_at > now.saturating_add(MAX_CLOCK_SKEW_SECS)
        {
            return Err(PieceManifestError::Expired {
                expires_at: content.expires_at,
                now,
            });
        }
        Ok(Statement::Provisional(VerifiedProvisional {
            content,
            signed: signed.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::PieceManifest;
    use super::*;

    fn parts() -> (GatewayKey, TrustedGatewayKeys) {
        let key = GatewayKey::generate().unwrap();
        let trusted = TrustedGatewayKeys::from_pems([key.public_pem().unwrap().as_str()]).unwrap();
        (key, trusted)
    }

    fn provisional(signed: usize, now: u64) -> ProvisionalPieces {
        ProvisionalPieces {
            blob: Digest::of(b"blob"),
            size: 3 * MIN_PIECE_LEN + 1,
            piece_length: MIN_PIECE_LEN,
            pieces: (0..signed).map(|i| Digest::of(&[i as u8])).collect(),
            fetch: FetchId::random().unwrap(),
            signed_at: now,
            expires_at: now + PROVISIONAL_TTL_SECS,
            admission: AdmissionRef {
                image: "r.example/team/app".into(),
                manifest_digest: Digest::of(b"m"),
                policy_revision: "rev1".into(),
            },
            key_id: String::new(),
        }
    }

    #[test]
    fn a_provisional_statement_verifies_in_its_own_domain_only() {
        let (key, trusted) = parts();
        let now = unix_now();
        let signed = key.sign_provisional(provisional(2, now)).unwrap();
        let blob = Digest::of(b"blob");
        match trusted.verify_statement(&signed, &blob, now).unwrap() {
            Statement::Provisional(p) => assert_eq!(p.content().pieces.len(), 2),
            Statement::Final(_) => panic!("a provisional statement passed as final"),
        }
        // Never as a final manifest, whatever path checks it.
        assert!(matches!(
            trusted.verify(&signed, &blob),
            Err(PieceManifestError::Malformed(_))
        ));
        // The same JSON signed without the domain is not provisional, and
        // does not parse as a final manifest either.
        let json = signed.payload[PROVISIONAL_DOMAIN.len()..].to_vec();
        let bare = SignedPieceManifest {
            signature: key.key.sign(&json).to_bytes().to_vec(),
            payload: json,
            key_id: key.id().to_owned(),
        };
        assert!(trusted.verify_statement(&bare, &blob, now).is_err());
        // A domain prefix stuck onto a final manifest's signed bytes breaks
        // its signature.
        let fin = key
            .sign(PieceManifest {
                blob: blob.clone(),
                size: 1,
                piece_length: MIN_PIECE_LEN,
                pieces: vec![Digest::of(b"x")],
                admission: provisional(0, now).admission,
                key_id: String::new(),
            })
            .unwrap();
        assert!(matches!(
            trusted.verify_statement(&fin, &blob, now).unwrap(),
            Statement::Final(_)
        ));
        let mut forged = fin.clone();
        forged.payload = [PROVISIONAL_DOMAIN, &fin.payload].concat();
        assert!(trusted.verify_statement(&forged, &blob, now).is_err());
    }

    #[test]
    fn expired_complete_or_overlong_statements_are_refused() {
        let (key, trusted) = parts();
        let now = unix_now();
        let blob = Digest::of(b"blob");
        let signed = key.sign_provisional(provisional(1, now)).unwrap();
        // Valid until its expiry plus the tolerated clock skew, not after.
        let end = now + PROVISIONAL_TTL_SECS + MAX_CLOCK_SKEW_SECS;
        assert!(trusted.verify_statement(&signed, &blob, end - 1).is_ok());
        assert!(matches!(
            trusted.verify_statement(&signed, &blob, end),
            Err(PieceManifestError::Expired { .. })
        ));
        // Signed further in the verifier's future than the skew: refused.
        let future = key
            .sign_provisional(provisional(1, now + MAX_CLOCK_SKEW_SECS + 1))
            .unwrap();
        assert!(trusted.verify_statement(&future, &blob, now).is_err());
        // A size whose piece count no piece index can hold.
        let mut huge = provisional(1, now);
        huge.size = u64::MAX;
        assert!(key.sign_provisional(huge).is_err());
        // Every piece signed provisionally: refused when signing.
        assert!(key.sign_provisional(provisional(4, now)).is_err());
        let mut long = provisional(1, now);
        long.expires_at = now + PROVISIONAL_TTL_SECS + 1;
        assert!(key.sign_provisional(long).is_err());
        assert!(matches!(
            trusted.verify_statement(&signed, &Digest::of(b"other"), now),
            Err(PieceManifestError::WrongBlob { .. })
        ));
    }

    #[test]
    fn fetch_ids_are_checked() {
        assert!(
            "0123456789abcdef0123456789abcdef"
                .parse::<FetchId>()
                .is_ok()
        );
        assert!(
            "0123456789ABCDEF0123456789abcdef"
                .parse::<FetchId>()
                .is_err()
        );
        assert!("short".parse::<FetchId>().is_err());
        assert_ne!(FetchId::random().unwrap(), FetchId::random().unwrap());
    }
}
