//! Verifies one evidence item against one authority: the signature, the
//! certificate chain at signing time and the Rekor entry (through
//! `sigstore-verify`), then the binding to the manifest digest.

use crate::authority::{Authority, AuthorityKind, TrustRoot};
use crate::evidence::{EvidenceItem, KeylessAnnotations};
use crate::intoto::{self, Statement};
use crate::legacy_bundle::{self, LegacyContent};
use crate::spec::TlogPolicy;
use base64::Engine as _;
use customs_protocol::Digest;
use serde::{Deserialize, Serialize};
use sigstore_verify::types::{Artifact, Bundle, Sha256Hash, SignatureContent};
use sigstore_verify::{PublicKeyVerificationPolicy, VerificationPolicy, VerificationResult};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The predicate type cosign v3 uses for an image signature in a bundle.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// The payload type of an in-toto DSSE envelope.
pub const INTOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// What a verified item says.
#[derive(Debug, Clone)]
pub enum Claim {
    /// The manifest digest is signed.
    ImageSignature,
    /// An in-toto statement about the manifest digest.
    Statement(Statement),
}

/// The evidence used: who signed, where it was found, its Rekor entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceUsed {
    /// The authority that accepted it.
    pub authority: String,
    /// `key sha256:…` or `<issuer> <subject>`.
    pub signer: String,
    /// Where it was found.
    pub location: String,
    /// The Rekor log index, when an entry was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rekor_log_index: Option<i64>,
}

/// A verified item.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Who and where.
    pub used: EvidenceUsed,
    /// What it says.
    pub claim: Claim,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
struct SimpleSigning {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: CriticalImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct CriticalImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

fn sha256_of(digest: &Digest) -> Result<Sha256Hash, String> {
    Sha256Hash::from_hex(digest.hex()).map_err(|e| format!("digest {digest}: {e}"))
}

/// Checks a simple-signing payload names `digest`.
fn check_simple_signing(payload: &[u8], digest: &Digest) -> Result<(), String> {
    let p: SimpleSigning = serde_json::from_slice(payload)
        .map_err(|e| format!("simple-signing payload is malformed: {e}"))?;
    if p.critical.kind != "cosign container image signature" {
        return Err(format!(
            "simple-signing payload has type {:?}",
            p.critical.kind
        ));
    }
    if p.critical.image.digest != digest.to_string() {
        return Err(format!(
            "signature is for {}, not {digest}",
            p.critical.image.digest
        ));
    }
    Ok(())
}

fn keyless_signer(authority: &Authority, result: &VerificationResult) -> Result<String, String> {
    let AuthorityKind::Keyless { identities, .. } = &authority.kind else {
        return Err("not a keyless authority".into());
    };
    let subject = result
        .identity()
        .map(|i| i.as_str().to_owned())
        .ok_or("certificate has no identity")?;
    let issuer = result.issuer().ok_or("certificate has no OIDC issuer")?;
    if !result.certificate_verified() {
        return Err("certificate was not verified".into());
    }
    if identities
        .iter()
        .any(|id| id.accepts(&subject, issuer, result.certificate()))
    {
        Ok(format!("{issuer} {subject}"))
    } else {
        Err(format!(
            "certificate identity {subject} (issuer {issuer}) is not accepted by authority {}",
            authority.name
        ))
    }
}

fn log_index(bundle: &Bundle) -> Option<i64> {
    bundle
        .verification_material
        .tlog_entries
        .first()
        .map(|e| e.log_index.as_i64())
}

/// Verifies a bundle for a key authority, with or without Rekor.
fn verify_bundle_with_key(
    root: &TrustRoot,
    key: &crate::keys::PublicKey,
    tlog: TlogPolicy,
    artifact: Artifact<'_>,
    bundle: &Bundle,
) -> Result<(), String> {
    let mut policy = PublicKeyVerificationPolicy::new(key.der().clone());
    if tlog == TlogPolicy::Optional && bundle.verification_material.tlog_entries.is_empty() {
        policy = policy.skip_tlog_unsafe();
    }
    root.verifier
        .verify(artifact, bundle, &policy)
        .map(|_| ())
        .map_err(|e| format!("bundle does not verify with key {}: {e}", key.id()))
}

fn parse_bundle(json: &str) -> Result<Bundle, String> {
    Bundle::from_json(json).map_err(|e| format!("malformed Sigstore bundle: {e}"))
}

/// Verifies `item` as `authority`'s signature or attestation over `digest`.
/// `Err` says why it does not count (for the decision's reasons).
pub fn verify_item(
    authority: &Authority,
    item: &EvidenceItem,
    digest: &Digest,
) -> Result<Verified, String> {
    verify_item_unbounded(authority, item, digest).map_err(crate::message::bounded)
}

/// [`verify_item`] before its error is bounded (errors quote signer input).
fn verify_item_unbounded(
    authority: &Authority,
    item: &EvidenceItem,
    digest: &Digest,
) -> Result<Verified, String> {
    let location = item.location().to_owned();
    let (signer, rekor_log_index, claim) = match item {
        EvidenceItem::SimpleSigning {
            payload,
            signature,
            keyless,
            ..
        } => {
            let (signer, idx) = verify_simple_signing(authority, &payload.0, signature, keyless)?;
            check_simple_signing(&payload.0, digest)?;
            (signer, idx, Claim::ImageSignature)
        }
        EvidenceItem::DsseLayer {
            envelope, keyless, ..
        } => {
            let (signer, idx, payload) =
                verify_dsse_layer(authority, &envelope.0, keyless, digest)?;
            let st = intoto::parse(&payload)?;
            st.check_subject(digest)?;
            let claim = if st.predicate_type == COSIGN_SIGN_PREDICATE {
                Claim::ImageSignature
            } else {
                Claim::Statement(st)
            };
            (signer, idx, claim)
        }
        EvidenceItem::Bundle { bundle, .. } => {
            let json = std::str::from_utf8(&bundle.0).map_err(|_| "bundle is not UTF-8")?;
            let bundle = parse_bundle(json)?;
            // What it would claim, before spending a verification on it.
            bundle_claim(&bundle.content, digest)?;
            let artifact = Artifact::from(sha256_of(digest)?);
            let signer = match &authority.kind {
                AuthorityKind::Key { key, tlog, root } => {
                    verify_bundle_with_key(root, key, *tlog, artifact, &bundle)?;
                    format!("key {}", key.id())
                }
                AuthorityKind::Keyless { root, .. } => {
                    let r = root
                        .verifier
                        .verify(artifact, &bundle, &VerificationPolicy::any_identity())
                        .map_err(|e| format!("bundle does not verify: {e}"))?;
                    keyless_signer(authority, &r)?
                }
            };
            let claim = bundle_claim(&bundle.content, digest)?;
            (signer, log_index(&bundle), claim)
        }
    };
    Ok(Verified {
        used: EvidenceUsed {
            authority: authority.name.clone(),
            signer,
            location,
            rekor_log_index,
        },
        claim,
    })
}

/// What a bundle's content claims about image `digest`. Only a DSSE in-toto
/// statement naming the digest counts: with predicate
/// `https://sigstore.dev/cosign/sign/v1` as the image signature (cosign v3),
/// otherwise as an attestation. A message signature (`cosign sign-blob`)
/// signs some bytes whose hash happens to be the digest; it says nothing
/// about the image as an image, so it is never an image signature.
fn bundle_claim(content: &SignatureContent, digest: &Digest) -> Result<Claim, String> {
    match content {
        SignatureContent::MessageSignature(_) => {
            Err("a message-signature bundle (cosign sign-blob) is not an image signature".into())
        }
        SignatureContent::DsseEnvelope(env) => {
            if env.payload_type != INTOTO_PAYLOAD_TYPE {
                return Err(format!("DSSE payload type {:?}", env.payload_type));
            }
            let st = intoto::parse(env.payload.as_bytes())?;
            st.check_subject(digest)?;
            Ok(if st.predicate_type == COSIGN_SIGN_PREDICATE {
                Claim::ImageSignature
            } else {
                Claim::Statement(st)
            })
        }
        _ => Err("unsupported bundle content".into()),
    }
}

fn verify_simple_signing(
    authority: &Authority,
    payload: &[u8],
    signature_b64: &str,
    keyless: &KeylessAnnotations,
) -> Result<(String, Option<i64>), String> {
    match &authority.kind {
        AuthorityKind::Key { key, tlog, root } => {
            let sig = B64
                .decode(signature_b64.trim().as_bytes())
                .map_err(|e| format!("signature annotation is not base64: {e}"))?;
            if !key.verify(payload, &sig) {
                return Err(format!("signature does not verify with key {}", key.id()));
            }
            let mut idx = None;
            if *tlog == TlogPolicy::Required {
                let json = legacy_bundle::build(
                    keyless,
                    LegacyContent::Message {
                        payload,
                        signature_b64: signature_b64.trim(),
                    },
                    false,
                )
                .map_err(|e| format!("a Rekor entry is required: {e}"))?;
                let bundle = parse_bundle(&json)?;
                verify_bundle_with_key(
                    root,
                    key,
                    TlogPolicy::Required,
                    Artifact::from_blob(payload),
                    &bundle,
                )?;
                idx = log_index(&bundle);
            }
            Ok((format!("key {}", key.id()), idx))
        }
        AuthorityKind::Keyless { root, .. } => {
            let json = legacy_bundle::build(
                keyless,
                LegacyContent::Message {
                    payload,
                    signature_b64: signature_b64.trim(),
                },
                true,
            )
            .map_err(|e| format!("keyless signature: {e}"))?;
            let bundle = parse_bundle(&json)?;
            let r = root
                .verifier
                .verify(
                    Artifact::from_blob(payload),
                    &bundle,
                    &VerificationPolicy::any_identity(),
                )
                .map_err(|e| format!("keyless signature does not verify: {e}"))?;
            Ok((keyless_signer(authority, &r)?, log_index(&bundle)))
        }
    }
}

/// Verifies a legacy DSSE layer; returns the signer, log index and payload.
fn verify_dsse_layer(
    authority: &Authority,
    envelope_json: &[u8],
    keyless: &KeylessAnnotations,
    digest: &Digest,
) -> Result<(String, Option<i64>, Vec<u8>), String> {
    let env: Envelope = serde_json::from_slice(envelope_json)
        .map_err(|e| format!("malformed DSSE envelope: {e}"))?;
    if env.payload_type != INTOTO_PAYLOAD_TYPE {
        return Err(format!(
            "DSSE payload type {:?} is not in-toto",
            env.payload_type
        ));
    }
    let payload = B64
        .decode(env.payload.as_bytes())
        .map_err(|e| format!("DSSE payload is not base64: {e}"))?;
    match &authority.kind {
        AuthorityKind::Key { key, tlog, root } => {
            let pae = sigstore_verify::types::pae(&env.payload_type, &payload);
            let ok = env.signatures.iter().any(|s| {
                B64.decode(s.sig.as_bytes())
                    .is_ok_and(|sig| key.verify(&pae, &sig))
            });
            if !ok {
                return Err(format!("no DSSE signature verifies with key {}", key.id()));
            }
            let mut idx = None;
            if *tlog == TlogPolicy::Required {
                let value: serde_json::Value = serde_json::from_slice(envelope_json)
                    .map_err(|e| format!("malformed DSSE envelope: {e}"))?;
                let json = legacy_bundle::build(keyless, LegacyContent::Dsse(&value), false)
                    .map_err(|e| format!("a Rekor entry is required: {e}"))?;
                let bundle = parse_bundle(&json)?;
                verify_bundle_with_key(
                    root,
                    key,
                    TlogPolicy::Required,
                    Artifact::from(sha256_of(digest)?),
                    &bundle,
                )?;
                idx = log_index(&bundle);
            }
            Ok((format!("key {}", key.id()), idx, payload))
        }
        AuthorityKind::Keyless { root, .. } => {
            let value: serde_json::Value = serde_json::from_slice(envelope_json)
                .map_err(|e| format!("malformed DSSE envelope: {e}"))?;
            let json = legacy_bundle::build(keyless, LegacyContent::Dsse(&value), true)
                .map_err(|e| format!("keyless attestation: {e}"))?;
            let bundle = parse_bundle(&json)?;
            let r = root
                .verifier
                .verify(
                    Artifact::from(sha256_of(digest)?),
                    &bundle,
                    &VerificationPolicy::any_identity(),
                )
                .map_err(|e| format!("keyless attestation does not verify: {e}"))?;
            Ok((keyless_signer(authority, &r)?, log_index(&bundle), payload))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `cosign sign-blob` bundle over bytes hashing to the manifest digest
    /// is never an image signature, however well it verifies.
    #[test]
    fn a_message_signature_bundle_is_not_an_image_signature() {
        let digest = Digest::of(b"some manifest");
        let hash = base64::engine::general_purpose::STANDARD
            .encode(hex::decode(digest.hex()).expect("hex"));
        let json = serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"publicKey": {"hint": "k"}, "tlogEntries": []},
            "messageSignature": {
                "messageDigest": {"algorithm": "SHA2_256", "digest": hash},
                "signature": "c2ln"
            }
        })
        .to_string();
        let bundle = parse_bundle(&json).expect("a well-formed bundle");
        let err = bundle_claim(&bundle.content, &digest).expect_err("must not count");
        assert!(err.contains("not an image signature"), "{err}");
    }
}
