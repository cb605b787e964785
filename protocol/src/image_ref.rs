//! Image references as users type them (`registry/repo:tag`,
//! `registry/repo@sha256:…`, Docker Hub short names), for command-line
//! tools such as `customs verify` and `customs preheat`.

use crate::name::{ImageName, NameError, Reference, RegistryHost, Repository, Tag};
use std::fmt;
use std::str::FromStr;

/// A parsed image reference: the image's real name and a tag or digest.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ImageRef {
    /// Registry host and repository.
    pub name: ImageName,
    /// Tag (default `latest`) or digest.
    pub reference: Reference,
}

/// Why an image reference was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageRefError {
    /// A component broke the grammar.
    #[error("image reference {reference:?}: {source}")]
    Name {
        /// What was given (clipped).
        reference: String,
        /// Which part was wrong.
        source: NameError,
    },
    /// Nothing usable was given.
    #[error("image reference {0:?} is empty or has no repository")]
    Empty(String),
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    /// Follows the docker/distribution reference rules: the first segment
    /// is a registry when it contains `.` or `:` or is `localhost`; else the
    /// image is on Docker Hub (`docker.io`, `library/` for single names).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let clip: String = s.chars().take(120).collect();
        let wrap = |source: NameError| ImageRefError::Name {
            reference: clip.clone(),
            source,
        };
        if s.is_empty() || s.starts_with('/') {
            return Err(ImageRefError::Empty(clip));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (s, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (h.to_owned(), p.to_owned())
            }
            Some(_) => ("docker.io".to_owned(), rest.to_owned()),
            None => ("docker.io".to_owned(), format!("library/{rest}")),
        };
        // A tag is after the last ':' of the path (the host's port is gone).
        let (repo, tag) = match path.rsplit_once(':') {
            Some((r, t)) => (r.to_owned(), Some(t.to_owned())),
            None => (path, None),
        };
        if repo.is_empty() {
            return Err(ImageRefError::Empty(clip));
        }
        let registry: RegistryHost = host.parse().map_err(wrap)?;
        let repository: Repository = repo.parse().map_err(wrap)?;
        let reference = match (digest, tag) {
            (Some(d), _) => Reference::Digest(d.parse().map_err(|e| wrap(NameError::Digest(e)))?),
            (None, Some(t)) => Reference::Tag(t.parse::<Tag>().map_err(wrap)?),
            (None, None) => Reference::Tag("latest".parse::<Tag>().map_err(wrap)?),
        };
        Ok(ImageRef {
            name: ImageName {
                registry,
                repository,
            },
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.name),
            Reference::Digest(d) => write!(f, "{}@{d}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_the_usual_forms() {
        let r = parse("127.0.0.1:5000/team/app:v1");
        assert_eq!(r.name.to_string(), "127.0.0.1:5000/team/app");
        assert_eq!(r.reference.to_string(), "v1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("ghcr.io/acme/app:v1@{d}"));
        assert_eq!(r.reference.to_string(), d);
        let r = parse("alpine");
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        let r = parse("acme/app:1");
        assert_eq!(r.to_string(), "docker.io/acme/app:1");
        let r = parse("localhost/app");
        assert_eq!(r.to_string(), "localhost/app:latest");
    }

    #[test]
    fn rejects_hostile_or_broken_references() {
        for bad in [
            "",
            "/abs",
            "reg.io/../etc:v1",
            "reg.io/a//b",
            "reg.io/app:bad tag",
            "reg.io/app@sha256:short",
            "reg.io/",
            "reg.io/APP",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?} was accepted");
        }
    }
}
