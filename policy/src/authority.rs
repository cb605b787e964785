//! Compiled authorities: who may sign, and how their signatures verify.

use crate::keys::PublicKey;
use crate::spec::TlogPolicy;
use customs_protocol::ImageName;
use regex::Regex;
use sigstore_verify::Verifier;
use sigstore_verify::crypto::CertificateInfo;
use std::sync::Arc;

/// A named signer from a policy.
pub struct Authority {
    /// The name rules refer to.
    pub name: String,
    /// How its signatures verify.
    pub kind: AuthorityKind,
    /// Where its signatures live, if not beside the image.
    pub signature_repository: Option<ImageName>,
}

/// A trust root, prepared once per policy revision.
pub struct TrustRoot {
    /// Where it came from (a file in the policy source, or `embedded`).
    pub source: String,
    /// The prepared verifier.
    pub verifier: Verifier,
}

impl std::fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustRoot")
            .field("source", &self.source)
            .finish()
    }
}

/// Key or keyless.
pub enum AuthorityKind {
    /// A public key.
    Key {
        /// The key.
        key: PublicKey,
        /// Whether a Rekor entry is demanded.
        tlog: TlogPolicy,
        /// The root whose Rekor keys check entries.
        root: Arc<TrustRoot>,
    },
    /// Fulcio certificates for the listed identities.
    Keyless {
        /// Fulcio CAs, Rekor, CT and TSA keys.
        root: Arc<TrustRoot>,
        /// Accepted identities (any one).
        identities: Vec<Identity>,
    },
}

/// A string matcher: exact or an unanchored RE2 regex.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Equal.
    Exact(String),
    /// `regex::Regex::is_match`.
    Regex(Regex),
}

impl Matcher {
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(e) => e == s,
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

/// GitHub workflow claims that must match exactly.
#[derive(Debug, Clone, Default)]
pub struct GithubClaims {
    /// `owner/repo`.
    pub repository: Option<String>,
    /// `refs/…`.
    pub git_ref: Option<String>,
    /// Commit SHA.
    pub sha: Option<String>,
    /// Trigger event.
    pub trigger: Option<String>,
}

/// One accepted certificate identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// OIDC issuer.
    pub issuer: Matcher,
    /// Certificate SAN.
    pub subject: Matcher,
    /// Extra GitHub claims.
    pub github: Option<GithubClaims>,
}

impl Identity {
    /// Whether a verified certificate's claims satisfy this identity.
    pub fn accepts(&self, subject: &str, issuer: &str, cert: Option<&CertificateInfo>) -> bool {
        if !self.issuer.matches(issuer) || !self.subject.matches(subject) {
            return false;
        }
        let Some(gh) = &self.github else {
            return true;
        };
        let Some(c) = cert.map(|c| &c.ci_claims) else {
            return false;
        };
        let eq = |want: &Option<String>, got: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| got.as_deref() == Some(w.as_str()))
        };
        let repo_uri = gh
            .repository
            .as_ref()
            .map(|r| format!("https://github.com/{r}"));
        eq(&repo_uri, &c.source_repository_uri)
            && eq(&gh.git_ref, &c.source_repository_ref)
            && eq(&gh.sha, &c.source_repository_digest)
            && eq(&gh.trigger, &c.build_trigger)
    }
}
