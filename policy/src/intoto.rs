//! in-toto Statements (v0.1 and v1): the envelope payload of every
//! attestation. Parsed by hand into `serde_json::Value` for the predicate,
//! since predicates are arbitrary documents that CEL conditions walk.

use customs_protocol::Digest;
use serde::Deserialize;

/// in-toto Statement v1.
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// in-toto Statement v0.1 (still what cosign's legacy attestations carry).
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";

/// A parsed statement.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The predicate type URI.
    pub predicate_type: String,
    /// The predicate document.
    pub predicate: serde_json::Value,
    /// The whole statement, for CEL's `statement`.
    pub raw: serde_json::Value,
    /// sha256 hex digests of the subjects.
    pub subject_sha256: Vec<String>,
}

#[derive(Deserialize)]
struct RawStatement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<RawSubject>,
    #[serde(rename = "predicateType")]
    predicate_type: String,
    #[serde(default)]
    predicate: serde_json::Value,
}

#[derive(Deserialize)]
struct RawSubject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

/// Parses a statement payload. Errors are bounded: they quote the payload.
pub fn parse(payload: &[u8]) -> Result<Statement, String> {
    parse_unbounded(payload).map_err(crate::message::bounded)
}

fn parse_unbounded(payload: &[u8]) -> Result<Statement, String> {
    let raw: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("in-toto statement: {e}"))?;
    let st: RawStatement =
        serde_json::from_value(raw.clone()).map_err(|e| format!("in-toto statement: {e}"))?;
    if st.kind != STATEMENT_V1 && st.kind != STATEMENT_V01 {
        return Err(format!("unknown in-toto statement type {:?}", st.kind));
    }
    if st.subject.is_empty() {
        return Err("in-toto statement has no subject".into());
    }
    Ok(Statement {
        predicate_type: st.predicate_type,
        predicate: if st.predicate.is_null() {
            serde_json::json!({})
        } else {
            st.predicate
        },
        raw,
        subject_sha256: st
            .subject
            .into_iter()
            .filter_map(|s| s.digest.get("sha256").map(|h| h.to_ascii_lowercase()))
            .collect(),
    })
}

impl Statement {
    /// Fails unless a subject is `digest`.
    pub fn check_subject(&self, digest: &Digest) -> Result<(), String> {
        if self.subject_sha256.iter().any(|h| h == digest.hex()) {
            Ok(())
        } else {
            Err(format!("statement subjects do not include {digest}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_binds_subjects() {
        let d = Digest::of(b"x");
        let p = format!(
            r#"{{"_type":"{STATEMENT_V01}","subject":[{{"name":"a","digest":{{"sha256":"{}"}}}}],"predicateType":"t","predicate":{{"k":1}}}}"#,
            d.hex()
        );
        let st = parse(p.as_bytes()).unwrap();
        assert!(st.check_subject(&d).is_ok());
        assert!(st.check_subject(&Digest::of(b"y")).is_err());
        assert_eq!(st.predicate["k"], 1);
    }

    #[test]
    fn rejects_malformed() {
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"_type":"x","subject":[{"digest":{}}],"predicateType":"t"}"#).is_err());
        assert!(
            parse(
                format!(r#"{{"_type":"{STATEMENT_V1}","subject":[],"predicateType":"t"}}"#)
                    .as_bytes()
            )
            .is_err()
        );
    }
}
