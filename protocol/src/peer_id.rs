//! Node (peer) ids.
//!
//! A peer id is what a node calls itself on the scheduler protocol, and it
//! must be exactly the name its certificate carries as its identity SAN
//! `<id>.node.customs.internal`. The grammar is one lower-case DNS label
//! with no dots or wildcards, so an id can never reach into another part of
//! a DNS name (a role SAN such as `peer.customs.internal`) and two spellings
//! of one name (`Peer-1`, `peer-1`: DNS matching ignores case) can never be
//! two scheduler keys.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest peer id accepted: one DNS label (RFC 1035: 63 octets).
pub const MAX_PEER_ID_LEN: usize = 63;

/// Why a peer id was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerIdError {
    /// The id is empty.
    #[error("peer id is empty")]
    Empty,
    /// The id is longer than one DNS label.
    #[error("peer id is {0} bytes long; at most 63 are allowed")]
    TooLong(usize),
    /// The id has a byte outside `[a-z0-9-]`.
    #[error("peer id {0:?} may contain only a-z, 0-9 and '-'")]
    Invalid(String),
}

/// A checked node id: 1 to 63 bytes of `[a-z0-9-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerId(String);

impl PeerId {
    /// Checks `s` against the node id grammar.
    pub fn parse(s: &str) -> Result<Self, PeerIdError> {
        if s.is_empty() {
            return Err(PeerIdError::Empty);
        }
        if s.len() > MAX_PEER_ID_LEN {
            return Err(PeerIdError::TooLong(s.len()));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(PeerIdError::Invalid(s.chars().take(80).collect()));
        }
        Ok(PeerId(s.to_owned()))
    }

    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerId::parse(s)
    }
}

impl TryFrom<String> for PeerId {
    type Error = PeerIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PeerId::parse(&s)
    }
}

impl From<PeerId> for String {
    fn from(p: PeerId) -> String {
        p.0
    }
}

impl AsRef<str> for PeerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels_only() {
        for ok in ["peer-1", "gateway", "a", "0", "node-0a-9", &"x".repeat(63)] {
            assert_eq!(PeerId::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(PeerId::parse(""), Err(PeerIdError::Empty));
        assert_eq!(
            PeerId::parse(&"x".repeat(64)),
            Err(PeerIdError::TooLong(64))
        );
        for bad in [
            "Peer-1",
            "peer.customs",
            "peer-1.node",
            "*",
            "peer 1",
            "peer_1",
            "pe\u{0435}r",
            "peer\0",
            "peer/1",
        ] {
            assert!(
                matches!(PeerId::parse(bad), Err(PeerIdError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn every_byte_outside_the_grammar_is_refused() {
        for b in 0u8..=255 {
            let s = format!("a{}", char::from(b));
            let ok = b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
            assert_eq!(PeerId::parse(&s).is_ok(), ok, "byte {b}");
        }
    }

    #[test]
    fn serde_round_trips_and_checks() {
        let p: PeerId = serde_json::from_str("\"peer-2\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"peer-2\"");
        assert!(serde_json::from_str::<PeerId>("\"peer.customs.internal\"").is_err());
    }
}
