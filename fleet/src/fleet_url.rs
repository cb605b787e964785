//! The Redis URL, kept out of logs: it may carry an ACL user's password.

/// A `redis://` or `rediss://` URL (`redis://user:password@host:port/db`
/// for an ACL user). Its `Debug` and `Display` hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetUrl(url::Url);

/// Why a fleet URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL at all.
    #[error("not a URL: {0}")]
    Parse(#[from] url::ParseError),
    /// Another scheme than `redis` or `rediss`.
    #[error("scheme {0:?}: expected redis:// or rediss://")]
    Scheme(String),
    /// No host to connect to.
    #[error("no host")]
    NoHost,
}

impl std::str::FromStr for FleetUrl {
    type Err = UrlError;
    fn from_str(s: &str) -> Result<Self, UrlError> {
        let u = url::Url::parse(s)?;
        if !matches!(u.scheme(), "redis" | "rediss") {
            return Err(UrlError::Scheme(u.scheme().to_owned()));
        }
        if u.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::NoHost);
        }
        Ok(FleetUrl(u))
    }
}

impl<'de> serde::Deserialize<'de> for FleetUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FleetUrl {
    /// The URL with its password, for the Redis client only.
    pub(crate) fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The URL with its password, to hand to a child process's
    /// environment (`customs up`'s fleet); never log it.
    pub fn expose_for_child(&self) -> &str {
        self.expose()
    }

    /// True for `rediss://` (TLS).
    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "rediss"
    }
}

impl std::fmt::Display for FleetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            let _ = shown.set_password(Some("redacted"));
        }
        f.write_str(shown.as_str())
    }
}

impl std::fmt::Debug for FleetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FleetUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_redis_urls_with_a_host_and_the_password_never_shown() {
        let u: FleetUrl = "redis://customs:s3cret@127.0.0.1:6379/0".parse().unwrap();
        assert!(!u.to_string().contains("s3cret"), "{u}");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(u.expose().contains("s3cret"));
        assert!(
            "rediss://r.example:6380"
                .parse::<FleetUrl>()
                .unwrap()
                .is_tls()
        );
        for bad in [
            "http://r:6379",
            "redis://",
            "nonsense",
            "unix:///tmp/r.sock",
        ] {
            assert!(bad.parse::<FleetUrl>().is_err(), "{bad}");
        }
    }
}
