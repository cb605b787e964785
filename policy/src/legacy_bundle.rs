//! Turns a cosign legacy keyless layer (certificate, chain and Rekor SET in
//! annotations) into a Sigstore bundle v0.1, so `sigstore-verify` checks the
//! certificate chain at the logged time, the SET and the entry's consistency
//! with the signature — instead of hand-written chain and SET code.

use crate::evidence::KeylessAnnotations;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Why annotations cannot form a bundle.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LegacyBundleError(String);

fn err(m: impl Into<String>) -> LegacyBundleError {
    LegacyBundleError(m.into())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RekorBundle {
    signed_entry_timestamp: String,
    payload: RekorPayload,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RekorPayload {
    body: String,
    integrated_time: i64,
    log_index: i64,
    #[serde(rename = "logID")]
    log_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntryHead {
    kind: String,
    api_version: String,
}

/// What the bundle signs.
pub enum LegacyContent<'a> {
    /// A simple-signing payload and its base64 signature.
    Message {
        /// The payload bytes.
        payload: &'a [u8],
        /// The signature, base64.
        signature_b64: &'a str,
    },
    /// A DSSE envelope (JSON).
    Dsse(&'a serde_json::Value),
}

/// The PEM certificates of leaf + chain as base64 DER, leaf first.
fn certificates(k: &KeylessAnnotations) -> Result<Vec<String>, LegacyBundleError> {
    let leaf = k
        .certificate
        .as_deref()
        .ok_or_else(|| err("no certificate annotation"))?;
    let mut out = Vec::new();
    for text in [Some(leaf), k.chain.as_deref()].into_iter().flatten() {
        for block in text.split("-----END CERTIFICATE-----") {
            let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
                continue;
            };
            let body: String = block[start + 27..]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            B64.decode(body.as_bytes())
                .map_err(|e| err(format!("certificate PEM is not base64: {e}")))?;
            out.push(body);
        }
    }
    if out.is_empty() {
        return Err(err("certificate annotation holds no PEM certificate"));
    }
    Ok(out)
}

/// Builds the bundle JSON. `certs` false builds a public-key bundle (for a
/// key authority that demands a Rekor entry).
pub fn build(
    keyless: &KeylessAnnotations,
    content: LegacyContent<'_>,
    with_certificates: bool,
) -> Result<String, LegacyBundleError> {
    let rekor = keyless
        .rekor_bundle
        .as_deref()
        .ok_or_else(|| err("no Rekor bundle annotation (dev.sigstore.cosign/bundle)"))?;
    let rekor: RekorBundle =
        serde_json::from_str(rekor).map_err(|e| err(format!("Rekor bundle annotation: {e}")))?;
    let body = B64
        .decode(rekor.payload.body.as_bytes())
        .map_err(|e| err(format!("Rekor entry body is not base64: {e}")))?;
    let head: EntryHead =
        serde_json::from_slice(&body).map_err(|e| err(format!("Rekor entry body: {e}")))?;
    let log_id = hex::decode(&rekor.payload.log_id)
        .map_err(|e| err(format!("Rekor logID is not hex: {e}")))?;
    let material = if with_certificates {
        let certs: Vec<_> = certificates(keyless)?
            .into_iter()
            .map(|c| json!({ "rawBytes": c }))
            .collect();
        json!({ "x509CertificateChain": { "certificates": certs } })
    } else {
        json!({ "publicKey": { "hint": "" } })
    };
    let mut material = material;
    material["tlogEntries"] = json!([{
        "logIndex": rekor.payload.log_index.to_string(),
        "logId": { "keyId": B64.encode(log_id) },
        "kindVersion": { "kind": head.kind, "version": head.api_version },
        "integratedTime": rekor.payload.integrated_time.to_string(),
        "inclusionPromise": { "signedEntryTimestamp": rekor.signed_entry_timestamp },
        "canonicalizedBody": rekor.payload.body,
    }]);
    let mut bundle = json!({
        "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.1",
        "verificationMaterial": material,
    });
    match content {
        LegacyContent::Message {
            payload,
            signature_b64,
        } => {
            bundle["messageSignature"] = json!({
                "messageDigest": { "algorithm": "SHA2_256", "digest": B64.encode(Sha256::digest(payload)) },
                "signature": signature_b64,
            });
        }
        LegacyContent::Dsse(envelope) => {
            bundle["dsseEnvelope"] = envelope.clone();
        }
    }
    serde_json::to_string(&bundle).map_err(|e| err(e.to_string()))
}
