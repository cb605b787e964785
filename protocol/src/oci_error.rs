//! OCI distribution error codes and the HTTP status each one travels with.

use serde::Serialize;

/// The error codes of the OCI distribution spec that Customs emits. Every
/// component maps its own error enum onto these at the HTTP edge, so clients
/// see the same codes whichever component answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OciErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Manifest unknown.
    ManifestUnknown,
    /// Manifest invalid (malformed, too large, wrong digest).
    ManifestInvalid,
    /// Provided digest did not match content.
    DigestInvalid,
    /// Invalid repository name.
    NameInvalid,
    /// Repository (or registry) not known.
    NameUnknown,
    /// Requested access to the resource is denied (policy).
    Denied,
    /// Authentication required.
    Unauthorized,
    /// The operation is unsupported (e.g. pushes to a mirror).
    Unsupported,
    /// Too many requests.
    Toomanyrequests,
    /// Range not satisfiable (not an OCI code; used with 416).
    RangeInvalid,
    /// The upstream or a dependency failed.
    Unavailable,
}

impl OciErrorCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            OciErrorCode::BlobUnknown
            | OciErrorCode::ManifestUnknown
            | OciErrorCode::NameUnknown => 404,
            OciErrorCode::ManifestInvalid
            | OciErrorCode::DigestInvalid
            | OciErrorCode::NameInvalid => 400,
            OciErrorCode::Denied => 403,
            OciErrorCode::Unauthorized => 401,
            OciErrorCode::Unsupported => 405,
            OciErrorCode::Toomanyrequests => 429,
            OciErrorCode::RangeInvalid => 416,
            OciErrorCode::Unavailable => 503,
        }
    }

    /// The wire spelling, e.g. `MANIFEST_UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            OciErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            OciErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            OciErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            OciErrorCode::DigestInvalid => "DIGEST_INVALID",
            OciErrorCode::NameInvalid => "NAME_INVALID",
            OciErrorCode::NameUnknown => "NAME_UNKNOWN",
            OciErrorCode::Denied => "DENIED",
            OciErrorCode::Unauthorized => "UNAUTHORIZED",
            OciErrorCode::Unsupported => "UNSUPPORTED",
            OciErrorCode::Toomanyrequests => "TOOMANYREQUESTS",
            OciErrorCode::RangeInvalid => "RANGE_INVALID",
            OciErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// Parses the wire spelling (used by the peer to relay the gateway's errors).
    pub fn parse(s: &str) -> Option<Self> {
        use OciErrorCode::*;
        [
            BlobUnknown,
            ManifestUnknown,
            ManifestInvalid,
            DigestInvalid,
            NameInvalid,
            NameUnknown,
            Denied,
            Unauthorized,
            Unsupported,
            Toomanyrequests,
            RangeInvalid,
            Unavailable,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// The JSON body of an OCI error response.
pub fn error_body(code: OciErrorCode, message: &str) -> serde_json::Value {
    serde_json::json!({"errors": [{"code": code.as_str(), "message": message, "detail": null}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in [
            OciErrorCode::Denied,
            OciErrorCode::BlobUnknown,
            OciErrorCode::Toomanyrequests,
        ] {
            assert_eq!(OciErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(OciErrorCode::Denied.status(), 403);
        let b = error_body(OciErrorCode::ManifestUnknown, "nope");
        assert_eq!(b["errors"][0]["code"], "MANIFEST_UNKNOWN");
    }
}
