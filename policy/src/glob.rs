//! Image scope globs: `registry/repository` patterns where `*` matches
//! within one path segment and `**` across segments.
//!
//! Written by hand over `regex` (rather than `globset`) because the matched
//! strings are image names, not paths: `:` in `host:port` is literal and the
//! two wildcard kinds are all the syntax there is.

use regex::Regex;

/// A compiled image glob.
#[derive(Debug, Clone)]
pub struct ImageGlob {
    source: String,
    re: Regex,
}

/// Why a glob is unusable.
#[derive(Debug, thiserror::Error)]
pub enum GlobError {
    /// Empty pattern.
    #[error("an image glob must not be empty")]
    Empty,
    /// A segment mixes `**` with other characters, or `***`.
    #[error("`**` must be a whole path segment in {0:?}")]
    BadDoubleStar(String),
    /// Characters no image name contains.
    #[error(
        "image glob {0:?} contains characters no image name has (allowed: a-z 0-9 . _ - / : * and @ is not)"
    )]
    BadChar(String),
}

impl std::fmt::Display for ImageGlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

impl ImageGlob {
    /// Compiles a pattern such as `registry.example.com/team/**`.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if !pattern.chars().all(|c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, '.' | '_' | '-' | '/' | ':' | '*')
        }) {
            return Err(GlobError::BadChar(pattern.to_owned()));
        }
        Self::path(pattern)
    }

    /// Compiles a glob over any `/`-separated string (Git refs).
    pub fn path(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut re = String::from("^");
        let segments: Vec<&str> = pattern.split('/').collect();
        for (i, seg) in segments.iter().enumerate() {
            if i > 0 {
                re.push('/');
            }
            if seg.contains("**") {
                if *seg != "**" {
                    return Err(GlobError::BadDoubleStar(pattern.to_owned()));
                }
                if i > 0 && i + 1 == segments.len() {
                    // `team/**` also matches `team` itself.
                    re.pop();
                    re.push_str("(/.*)?");
                } else {
                    re.push_str(".*");
                }
                continue;
            }
            for part in seg.split('*').enumerate() {
                if part.0 > 0 {
                    re.push_str("[^/]*");
                }
                re.push_str(&regex::escape(part.1));
            }
        }
        re.push('$');
        let re = Regex::new(&re).map_err(|_| GlobError::BadChar(pattern.to_owned()))?;
        Ok(ImageGlob {
            source: pattern.to_owned(),
            re,
        })
    }

    /// Whether `registry/repository` matches.
    pub fn matches(&self, image: &str) -> bool {
        self.re.is_match(image)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_double_stars() {
        let g = ImageGlob::new("registry.example.com/team/*").unwrap();
        assert!(g.matches("registry.example.com/team/app"));
        assert!(!g.matches("registry.example.com/team/app/sub"));
        assert!(!g.matches("registry.example.com/teamx/app"));
        let g = ImageGlob::new("registry.example.com/team/**").unwrap();
        assert!(g.matches("registry.example.com/team/app/sub"));
        assert!(g.matches("registry.example.com/team"));
        assert!(!g.matches("registry.example.com/teams/app"));
        assert!(!g.matches("evil.com/registry.example.com/team/app"));
        let g = ImageGlob::new("**").unwrap();
        assert!(g.matches("127.0.0.1:5000/a/b"));
        let g = ImageGlob::new("*.example.com/app").unwrap();
        assert!(g.matches("eu.example.com/app"));
        assert!(!g.matches("eu.evil.com/x.example.com/app"));
    }

    #[test]
    fn dots_are_literal() {
        let g = ImageGlob::new("registry.example.com/app").unwrap();
        assert!(!g.matches("registryxexample.com/app"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(ImageGlob::new("").is_err());
        assert!(ImageGlob::new("a/**b").is_err());
        assert!(ImageGlob::new("a/(b|c)").is_err());
        assert!(ImageGlob::new("A/b").is_err());
    }
}
