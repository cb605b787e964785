//! Registry hosts, repository names, tags and references.
//!
//! Every name that arrives over the wire is hostile until parsed here: the
//! grammar follows the OCI distribution spec, which also rules out path
//! tricks (`..`, empty segments, absolute paths) before a name gets near a
//! file path or an upstream URL.

use crate::digest::{Digest, DigestError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest repository name accepted (distribution's own limit).
pub const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag accepted (OCI spec: 128 characters).
pub const MAX_TAG_LEN: usize = 128;
/// Longest registry host accepted (DNS name plus port).
pub const MAX_HOST_LEN: usize = 262;

/// Why a name, tag or reference was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The repository name breaks the OCI grammar.
    #[error(
        "invalid repository name {0:?}: must match [a-z0-9]+([._-][a-z0-9]+)*(/...)* and be at most 255 characters"
    )]
    Repository(String),
    /// The tag breaks the OCI grammar.
    #[error("invalid tag {0:?}: must match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}")]
    Tag(String),
    /// The registry host is not a host[:port].
    #[error("invalid registry host {0:?}")]
    Host(String),
    /// A digest reference that does not parse.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

use crate::quote::clip;

/// A repository path inside a registry, e.g. `library/alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Repository(String);

impl Repository {
    /// The name as the registry spells it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for Repository {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_REPOSITORY_LEN || !s.split('/').all(valid_component) {
            return Err(NameError::Repository(clip(s)));
        }
        Ok(Repository(s.to_owned()))
    }
}

impl TryFrom<String> for Repository {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
impl From<Repository> for String {
    fn from(r: Repository) -> Self {
        r.0
    }
}
impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A registry's identity: its host and optional port, e.g. `docker.io` or
/// `127.0.0.1:5000`. This is how an image is named in policies and audit
/// events — never by the address of the mirror that served it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RegistryHost(String);

impl RegistryHost {
    /// The host[:port] string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RegistryHost {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s_l = s.to_ascii_lowercase();
        let (host, port) = match s_l.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
            _ => (s_l.as_str(), None),
        };
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && (host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }) || (host.starts_with('[')
                && host.ends_with(']')
                && host[1..host.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok()));
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
        if !host_ok || !port_ok || s.len() > MAX_HOST_LEN {
            return Err(NameError::Host(clip(s)));
        }
        Ok(RegistryHost(s_l))
    }
}

impl TryFrom<String> for RegistryHost {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
impl From<RegistryHost> for String {
    fn from(r: RegistryHost) -> Self {
        r.0
    }
}
impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A fully qualified image name: real registry host plus repository. This is
/// the key admission decisions and blob bindings are stored under, so an
/// image admitted in one repository never unlocks content in another.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
pub struct ImageName {
    /// Where the image really lives.
    pub registry: RegistryHost,
    /// The repository within that registry.
    pub repository: Repository,
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)
    }
}

/// A tag such as `latest` or `v1.2.3`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    /// The tag text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_TAG_LEN
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(NameError::Tag(clip(s)))
        }
    }
}
impl TryFrom<String> for Tag {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}
impl From<Tag> for String {
    fn from(t: Tag) -> Self {
        t.0
    }
}
impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What a manifest request names: a mutable tag or an immutable digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    /// Resolved through the upstream (or the tag cache).
    Tag(Tag),
    /// Content-addressed; verified against the bytes.
    Digest(Digest),
}

impl FromStr for Reference {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_repositories() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c",
            "my-app",
            "my__app",
            "a.b_c--d/e0",
            "x1",
        ] {
            assert!(ok.parse::<Repository>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_hostile_repositories() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "../etc",
            "a/../b",
            "a//b",
            "/a",
            "a/",
            "Upper",
            "a/B",
            "a..b",
            "a___b",
            "-a",
            "a-",
            ".",
            "a/./b",
            "a%2fb",
            "a\\b",
            long.as_str(),
        ] {
            assert!(bad.parse::<Repository>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tags_and_references() {
        assert!("latest".parse::<Tag>().is_ok());
        assert!("v1.2.3-rc_1".parse::<Tag>().is_ok());
        assert!(".hidden".parse::<Tag>().is_err());
        assert!("a/b".parse::<Tag>().is_err());
        assert!("x".repeat(129).parse::<Tag>().is_err());
        assert!(matches!(
            "latest".parse::<Reference>(),
            Ok(Reference::Tag(_))
        ));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!("sha256:nothex".parse::<Reference>().is_err());
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(
            "Docker.IO".parse::<RegistryHost>().unwrap().as_str(),
            "docker.io"
        );
        assert!("127.0.0.1:5000".parse::<RegistryHost>().is_ok());
        assert!("[::1]:5000".parse::<RegistryHost>().is_ok());
        for bad in ["", "a/b", "host:99999", "ho st", "a..b", "host:"] {
            assert!(bad.parse::<RegistryHost>().is_err(), "{bad:?} accepted");
        }
    }
}
