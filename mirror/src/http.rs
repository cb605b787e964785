//! The OCI pull API over HTTP: routes, headers, range responses, and the one
//! place where [`MirrorError`] becomes an OCI error response.

use crate::admission::Admission;
use crate::error::MirrorError;
use crate::mirror::Mirror;
use crate::rate::RateLimiter;
use crate::source::Source;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use customs_protocol::oci_error::error_body;
use customs_protocol::{Digest, ImageName, OciErrorCode, Reference, RegistryHost, Repository};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Which registry a request without `?ns=` means.
#[derive(Debug, Clone)]
pub struct RegistryResolver {
    /// The default registry (`--upstream`'s host).
    pub default: RegistryHost,
}

impl RegistryResolver {
    /// The real registry an `ns` value names. containerd names Docker Hub
    /// `docker.io`; Customs keeps that spelling as the image's identity.
    pub fn resolve(&self, ns: Option<&str>) -> Result<RegistryHost, MirrorError> {
        match ns {
            None | Some("") => Ok(self.default.clone()),
            Some(ns) => Ok(ns.parse()?),
        }
    }
}

struct AppState<S, A> {
    mirror: Arc<Mirror<S, A>>,
    registries: RegistryResolver,
    limiter: Option<Arc<RateLimiter>>,
}

/// The `/v2/` router for a mirror. With a limiter, every blob body it sends
/// is paced and counted (the gateway's upload limit covers its direct
/// clients); a peer's delivery to its own containerd passes `None`.
pub fn router<S: Source, A: Admission>(
    mirror: Arc<Mirror<S, A>>,
    registries: RegistryResolver,
    limiter: Option<Arc<RateLimiter>>,
) -> Router {
    let state = Arc::new(AppState {
        mirror,
        registries,
        limiter,
    });
    Router::new()
        .route("/v2", axum::routing::any(base))
        .route("/v2/", axum::routing::any(base))
        .route("/v2/{*rest}", axum::routing::any(dispatch::<S, A>))
        .with_state(state)
}

async fn base(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return oci_error(
            MirrorError::ManifestInvalid("unsupported".into()),
            Some(OciErrorCode::Unsupported),
        );
    }
    let mut r = axum::Json(serde_json::json!({})).into_response();
    r.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

/// What a `/v2/...` path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/v2/<name>/manifests/<reference>`
    Manifest(Repository, Reference),
    /// `/v2/<name>/blobs/<digest>`
    Blob(Repository, Digest),
}

/// Parses the part after `/v2/`. Names contain `/`, so the last two
/// segments decide; everything else is validated by the name grammar.
pub fn parse_target(rest: &str) -> Result<Target, MirrorError> {
    let unknown = || {
        MirrorError::Name(customs_protocol::NameError::Repository(
            rest.chars().take(80).collect(),
        ))
    };
    let (head, reference) = rest.rsplit_once('/').ok_or_else(unknown)?;
    let (name, kind) = head.rsplit_once('/').ok_or_else(unknown)?;
    let repo: Repository = name.parse()?;
    match kind {
        "manifests" => Ok(Target::Manifest(repo, reference.parse()?)),
        "blobs" => Ok(Target::Blob(
            repo,
            reference
                .parse()
                .map_err(customs_protocol::NameError::from)?,
        )),
        _ => Err(unknown()),
    }
}

#[derive(Deserialize)]
struct NsQuery {
    ns: Option<String>,
}

async fn dispatch<S: Source, A: Admission>(
    State(st): State<Arc<AppState<S, A>>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let ns = NsQuery {
        ns: q.get("ns").cloned(),
    };
    if method != Method::GET && method != Method::HEAD {
        return oci_error(
            MirrorError::ManifestInvalid(format!(
                "{method} is not supported: Customs is a read-only mirror"
            )),
            Some(OciErrorCode::Unsupported),
        );
    }
    let rest = uri.path().trim_start_matches("/v2/");
    let result = async {
        let target = parse_target(rest)?;
        let registry = st.registries.resolve(ns.ns.as_deref())?;
        match target {
            Target::Manifest(repository, reference) => {
                let image = ImageName {
                    registry,
                    repository,
                };
                let m = st.mirror.manifest(&image, &reference).await?;
                let mut r = if method == Method::HEAD {
                    Response::new(Body::empty())
                } else {
                    Response::new(Body::from(m.bytes.clone()))
                };
                let h = r.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(m.bytes.len()));
                insert(h, header::CONTENT_TYPE.as_str(), &m.media_type);
                insert(h, "Docker-Content-Digest", &m.digest.to_string());
                Ok::<_, MirrorError>(r)
            }
            Target::Blob(repository, digest) => {
                let image = ImageName {
                    registry,
                    repository,
                };
                if method == Method::HEAD {
                    let size = st.mirror.blob_size(&image, &digest).await?;
                    let mut r = Response::new(Body::empty());
                    blob_headers(r.headers_mut(), &digest, size);
                    return Ok(r);
                }
                let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
                let b = st.mirror.blob(&image, &digest, range).await?;
                let body = match &st.limiter {
                    Some(l) => l.limit(b.body),
                    None => b.body,
                };
                let mut r = Response::new(Body::from_stream(body));
                blob_headers(r.headers_mut(), &digest, b.size);
                if let Some(rg) = b.range {
                    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                    r.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from(rg.end - rg.start));
                    insert(
                        r.headers_mut(),
                        header::CONTENT_RANGE.as_str(),
                        &format!("bytes {}-{}/{}", rg.start, rg.end - 1, b.size),
                    );
                }
                Ok(r)
            }
        }
    }
    .await;
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(path = %uri.path(), ns = ?ns.ns, code = e.code().as_str(), error = %e, "pull request refused");
            oci_error(e, None)
        }
    }
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest, size: u64) {
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    insert(h, "Docker-Content-Digest", &digest.to_string());
}

fn insert(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// The OCI error response for an error (the only place errors become HTTP).
pub fn oci_error(e: MirrorError, code_override: Option<OciErrorCode>) -> Response {
    let code = code_override.unwrap_or_else(|| e.code());
    let status = if code_override.is_some() {
        code.status()
    } else {
        e.status()
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = e.to_string();
    let mut r = (status, axum::Json(error_body(code, &message))).into_response();
    // A HEAD response has no body, and containerd resolves with HEAD: its
    // error output quotes the status line, so the reason goes there too.
    if let Some(phrase) = reason_phrase(status, code, &message) {
        r.extensions_mut().insert(phrase);
    }
    if code == OciErrorCode::RangeInvalid {
        r.headers_mut()
            .insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes */*"));
    }
    r
}

/// Longest reason phrase sent; the full message is in the JSON body.
const MAX_REASON_PHRASE: usize = 400;

/// `Forbidden (DENIED: …)`: the standard phrase, then the OCI code and
/// message, cut to printable ASCII (a reason phrase allows no control
/// characters) and bounded.
fn reason_phrase(
    status: StatusCode,
    code: OciErrorCode,
    message: &str,
) -> Option<hyper::ext::ReasonPhrase> {
    let standard = status.canonical_reason().unwrap_or("Error");
    let mut text = format!("{standard} ({}: ", code.as_str());
    for c in message.chars() {
        if text.len() >= MAX_REASON_PHRASE {
            text.push_str("...");
            break;
        }
        text.push(if c == ' ' || c.is_ascii_graphic() {
            c
        } else {
            '?'
        });
    }
    text.push(')');
    hyper::ext::ReasonPhrase::try_from(text.into_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_phrase_carries_a_clean_bounded_message() {
        let p = reason_phrase(
            StatusCode::FORBIDDEN,
            OciErrorCode::Denied,
            "policy release: signatures: no signature\r\nX-Evil: 1",
        )
        .expect("a valid phrase");
        let text = std::str::from_utf8(p.as_bytes()).unwrap();
        assert_eq!(
            text,
            "Forbidden (DENIED: policy release: signatures: no signature??X-Evil: 1)"
        );
        let long = reason_phrase(
            StatusCode::FORBIDDEN,
            OciErrorCode::Denied,
            &"x".repeat(5000),
        )
        .expect("a valid phrase");
        assert!(long.as_bytes().len() < MAX_REASON_PHRASE + 10);
    }

    #[test]
    fn targets() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse_target("library/alpine/manifests/latest").unwrap(),
            Target::Manifest(
                "library/alpine".parse().unwrap(),
                Reference::Tag("latest".parse().unwrap())
            )
        );
        assert!(matches!(
            parse_target(&format!("a/b/blobs/{d}")).unwrap(),
            Target::Blob(..)
        ));
        // A repository may itself contain "manifests".
        assert!(matches!(
            parse_target("x/manifests/manifests/v1").unwrap(),
            Target::Manifest(..)
        ));
        for bad in [
            "../etc/manifests/latest".to_string(),
            "a/../b/manifests/latest".into(),
            "UPPER/manifests/latest".into(),
            format!("{}/manifests/latest", "a".repeat(300)),
            "a/tags/list".into(),
            "a/blobs/sha256:short".into(),
            "manifests/latest".into(),
        ] {
            assert!(parse_target(&bad).is_err(), "{bad}");
        }
    }
}
