//! Content digests in their canonical `algorithm:hex` form.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::str::FromStr;

/// Why a string is not a digest Customs accepts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    /// The string has no `algorithm:` prefix.
    #[error("digest {0:?} has no algorithm prefix")]
    MissingAlgorithm(String),
    /// Customs only verifies sha256: accepting other algorithms would mean
    /// serving content it cannot check.
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    UnsupportedAlgorithm(String),
    /// The hex part has the wrong length or characters.
    #[error("digest {0:?} must be sha256: followed by 64 lowercase hex digits")]
    BadHex(String),
}

/// A sha256 content digest, always stored in canonical lowercase form.
///
/// Digests are the identity of everything Customs serves, so they are parsed
/// once and carried as this type; a `String` never stands for a digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// The digest of a byte slice (small payloads such as manifests).
    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Sha256Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// The 64 hex digits without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The algorithm name (always `sha256` for now).
    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(truncate(s)))?;
        if alg != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(truncate(alg)));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::BadHex(truncate(s)));
        }
        Ok(Digest {
            hex: hex.to_owned(),
        })
    }
}

/// Keeps hostile input out of error messages and logs at a bounded size.
fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> Self {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// Incremental sha256 for streamed bodies: blobs are hashed as they pass
/// through, never buffered whole.
#[derive(Default, Clone)]
pub struct Sha256Hasher {
    inner: Sha256,
    len: u64,
}

impl Sha256Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.inner.update(chunk);
        self.len += chunk.len() as u64;
    }

    /// How many bytes were hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been hashed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.inner.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_canonical_sha256() {
        let s = format!("sha256:{}", "a".repeat(64));
        let d: Digest = s.parse().unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex(), "a".repeat(64));
    }

    #[test]
    fn rejects_bad_digests() {
        assert!(matches!(
            "abc".parse::<Digest>(),
            Err(DigestError::MissingAlgorithm(_))
        ));
        assert!(matches!(
            format!("sha512:{}", "a".repeat(128)).parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            format!("sha256:{}", "A".repeat(64)).parse::<Digest>(),
            Err(DigestError::BadHex(_))
        ));
        assert!(matches!(
            format!("sha256:{}", "a".repeat(63)).parse::<Digest>(),
            Err(DigestError::BadHex(_))
        ));
        assert!(matches!(
            format!("sha256:{}/../x", "a".repeat(64)).parse::<Digest>(),
            Err(DigestError::BadHex(_))
        ));
    }

    #[test]
    fn hashes_known_vector() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = Sha256Hasher::new();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.len(), 3);
        assert_eq!(h.finish(), Digest::of(b"abc"));
    }

    #[test]
    fn serde_round_trip_and_rejects_garbage() {
        let d = Digest::of(b"x");
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Digest>(&j).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:zz\"").is_err());
    }
}
