//! Upstream credentials from a docker `config.json`-style file.
//!
//! Hand-written because the format is a few lines of JSON and the crates
//! that read it (docker_credential) shell out to credential helpers, which a
//! gateway must not do implicitly.

use base64::Engine as _;
use customs_protocol::RegistryHost;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;

/// A username and password whose `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// The user name.
    pub username: String,
    /// The password or token (never logged).
    pub password: String,
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructure so that a new field breaks the build instead of leaking.
        let BasicCredentials {
            username,
            password: _,
        } = self;
        f.debug_struct("BasicCredentials")
            .field("username", username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a docker config.json.
    #[error("credentials file {path} is malformed: {source}")]
    Parse {
        /// Which file.
        path: String,
        /// Why.
        source: serde_json::Error,
    },
    /// An `auth` entry is not base64 of `user:password`.
    #[error("credentials for {0} have a malformed auth field")]
    BadAuth(String),
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Credentials per registry host.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    by_host: HashMap<String, BasicCredentials>,
}

impl Credentials {
    /// Reads a docker config.json. Keys may be bare hosts or URLs
    /// (`https://index.docker.io/v1/` is Docker Hub).
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
            path: p.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseFailure::Json(source) => CredentialsError::Parse { path: p, source },
            ParseFailure::Auth(h) => CredentialsError::BadAuth(h),
        })
    }

    fn parse(text: &str) -> Result<Self, ParseFailure> {
        let file: ConfigFile = serde_json::from_str(text).map_err(ParseFailure::Json)?;
        let mut by_host = HashMap::new();
        for (key, entry) in file.auths {
            let host = normalise_key(&key);
            let creds = if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| ParseFailure::Auth(host.clone()))?;
                let s = String::from_utf8(raw).map_err(|_| ParseFailure::Auth(host.clone()))?;
                let (u, p) = s
                    .split_once(':')
                    .ok_or_else(|| ParseFailure::Auth(host.clone()))?;
                BasicCredentials {
                    username: u.to_owned(),
                    password: p.to_owned(),
                }
            } else if let (Some(u), Some(p)) = (entry.username, entry.password) {
                BasicCredentials {
                    username: u,
                    password: p,
                }
            } else {
                continue;
            };
            by_host.insert(host, creds);
        }
        Ok(Credentials { by_host })
    }

    /// The credentials for a registry, looked up by its identity host and
    /// then by the upstream URL's host.
    pub fn for_registry(
        &self,
        registry: &RegistryHost,
        url_host: &str,
    ) -> Option<&BasicCredentials> {
        let docker_alias = matches!(
            registry.as_str(),
            "docker.io" | "registry-1.docker.io" | "index.docker.io"
        );
        self.by_host
            .get(registry.as_str())
            .or_else(|| self.by_host.get(url_host))
            .or_else(|| {
                docker_alias
                    .then(|| self.by_host.get("index.docker.io"))
                    .flatten()
            })
    }
}

#[derive(Debug)]
enum ParseFailure {
    Json(serde_json::Error),
    Auth(String),
}

fn normalise_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k.split('/').next().unwrap_or(k);
    k.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config() {
        let c = Credentials::parse(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        let hub: RegistryHost = "docker.io".parse().unwrap();
        assert_eq!(
            c.for_registry(&hub, "registry-1.docker.io")
                .unwrap()
                .username,
            "user"
        );
        let local: RegistryHost = "127.0.0.1:5000".parse().unwrap();
        let creds = c.for_registry(&local, "x").unwrap();
        assert_eq!(creds.password, "b");
        assert!(!format!("{creds:?}").contains('b') || !format!("{creds:?}").contains("\"b\""));
        assert!(format!("{creds:?}").contains("redacted"));
    }

    #[test]
    fn rejects_malformed() {
        assert!(matches!(
            Credentials::parse("{"),
            Err(ParseFailure::Json(_))
        ));
        assert!(matches!(
            Credentials::parse(r#"{"auths":{"h":{"auth":"bm9jb2xvbg=="}}}"#),
            Err(ParseFailure::Auth(_))
        ));
    }
}
