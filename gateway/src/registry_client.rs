//! A bounded HTTP client for one upstream registry.
//!
//! The gateway is the only component that talks to upstreams, and an
//! upstream may be hostile or broken, so every request here is bounded:
//!
//! - connect ([`CONNECT_TIMEOUT`]), first byte of the response
//!   ([`FIRST_BYTE_TIMEOUT`]) and every read of the body
//!   ([`IDLE_READ_TIMEOUT`]) time out, for manifests, blobs, referrers and
//!   tokens alike;
//! - bodies read into memory (manifests, referrers indexes, tokens, error
//!   bodies) have a hard cap enforced while streaming, so a larger body is
//!   cut off, never buffered, and a whole-body deadline ([`BODY_TIMEOUT`]) so
//!   one byte a second cannot hold a request forever;
//! - blobs are streamed, never buffered; the store hashes them.
//!
//! Authentication is the distribution token flow: a request is sent with
//! what is known for its repository; on `401` the `WWW-Authenticate`
//! challenge says how to retry once: `Bearer realm=…,service=…` fetches a
//! pull token for `repository:<name>:pull` (with the gateway's credentials
//! for this registry, if any), `Basic` resends with those credentials.
//! Tokens are cached per repository until shortly before they expire.
//! Redirects (blob storage on another host) are followed by reqwest, which
//! drops `Authorization` when the host changes.

use crate::credentials::BasicCredentials;
use bytes::{Bytes, BytesMut};
use customs_protocol::Repository;
use customs_store::inflight::ByteStream;
use customs_store::{FetchFailure, FetchFailureKind};
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Time to establish a TCP (and TLS) connection to an upstream. A registry
/// on a healthy network connects in well under a second; ten leaves room for
/// a slow TLS handshake across continents and still fails fast when a host
/// blackholes SYNs.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from sending a request to the response headers (including the
/// connection). Registries answer within a few seconds even when they must
/// look up a blob in cold object storage; thirty bounds how long a client's
/// request waits on an upstream that accepted the connection and says
/// nothing.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest silence allowed between two reads of a response body. TCP
/// retransmissions recover within seconds; thirty seconds without a byte is a
/// stalled transfer, and every client waiting on it is freed with an error
/// instead of a 200 that never ends.
pub const IDLE_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a body read into memory (a manifest, referrers index, token
/// or error body, at most 4 MiB) may take as a whole. At sixty seconds a
/// full-size manifest still arrives at 70 KB/s; an upstream trickling a byte
/// at a time never trips the idle timeout, so this is what stops it.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest token response read. Real registry tokens (JWTs with scopes)
/// are a few KiB.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// The largest error body read to classify a failure; the rest is dropped.
pub const MAX_ERROR_BYTES: usize = 64 * 1024;
/// Tokens cached per upstream. Each requested repository gets one, and
/// unauthenticated clients choose the repository names, so the cache is
/// bounded: when full, expired tokens go first, then all of them.
const MAX_CACHED_TOKENS: usize = 1024;
/// Token lifetime when the token service does not say (the distribution
/// spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are dropped this long before they expire, so a request never
/// carries a token that lapses in flight.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// `n` bytes as operators write limits (`4 MiB`, `64 KiB`), so an error
/// names the cap in the units the documentation uses.
fn human_size(n: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

/// How long upstream requests may take; see the constants for the defaults
/// and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP and TLS connection.
    pub connect: Duration,
    /// Request sent to response headers.
    pub first_byte: Duration,
    /// Longest silence between two body reads.
    pub idle_read: Duration,
    /// A whole body read into memory (manifests, referrers, tokens).
    pub body: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: CONNECT_TIMEOUT,
            first_byte: FIRST_BYTE_TIMEOUT,
            idle_read: IDLE_READ_TIMEOUT,
            body: BODY_TIMEOUT,
        }
    }
}

impl Timeouts {
    /// The timeouts a gateway configuration asks for.
    pub fn from_config(cfg: &crate::GatewayConfig) -> Self {
        Timeouts {
            connect: cfg.upstream.connect_timeout,
            first_byte: cfg.upstream.first_byte_timeout,
            idle_read: cfg.upstream.idle_timeout,
            body: cfg.upstream.body_timeout,
        }
    }

    /// The idle timeout for the blob store's single-flight fetches on the
    /// gateway: a little above every upstream bound, so a stalled upstream
    /// is reported by the upstream client's more specific error, and the
    /// store's own check only catches what slips past it.
    pub fn store_backstop(&self) -> Duration {
        self.first_byte.max(self.idle_read) + Duration::from_secs(5)
    }
}

/// What the upstream said the authentication scheme is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    /// `Bearer realm="…",service="…"`: get a token from the realm.
    Bearer {
        realm: String,
        service: Option<String>,
    },
    /// `Basic realm="…"`: send the credentials with every request.
    Basic,
}

/// A cached pull token.
struct Token {
    value: String,
    expires: Instant,
}

#[derive(Default)]
struct AuthState {
    /// The upstream asked for Basic: send credentials up front.
    basic: bool,
    /// Pull tokens by repository.
    tokens: HashMap<String, Token>,
}

/// One upstream registry's HTTP endpoint with its credentials.
pub(crate) struct RegistryClient {
    /// `scheme://host[:port]`.
    base: String,
    /// host[:port], for messages.
    host: String,
    http: reqwest::Client,
    creds: Option<BasicCredentials>,
    timeouts: Timeouts,
    auth: std::sync::Mutex<AuthState>,
    /// Whether a `401` challenge is answered (upstreams). A fleet gateway
    /// is never asked for tokens: a compromised one could name any realm
    /// for this gateway to call.
    answers_challenges: bool,
}

/// The OCI error envelope, as far as classifying a failure needs it.
#[derive(Deserialize)]
struct ErrorEnvelope {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

fn unavailable(message: String) -> FetchFailure {
    FetchFailure::new(FetchFailureKind::Unavailable, message)
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f32())
}

impl RegistryClient {
    /// A client for the upstream at `base` (`scheme://host[:port]`).
    pub(crate) fn new(
        base: String,
        host: String,
        creds: Option<BasicCredentials>,
        extra_roots: Vec<reqwest::Certificate>,
        timeouts: Timeouts,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .tls_certs_merge(extra_roots)
            .user_agent(concat!("customs-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RegistryClient {
            base,
            host,
            http,
            creds,
            timeouts,
            auth: std::sync::Mutex::default(),
            answers_challenges: true,
        })
    }

    /// A client for another gateway of the fleet at `base`
    /// (`https://host:port`, its mTLS peer endpoint), presenting this
    /// gateway's certificate and accepting only `tls`'s server check (the
    /// gateway role and the member's name). No credentials: the other
    /// gateway authenticates the certificate, and upstream credentials
    /// never leave the gateway that holds them.
    pub(crate) fn fleet_member(
        base: String,
        name: String,
        tls: rustls::ClientConfig,
        timeouts: Timeouts,
    ) -> Result<Self, reqwest::Error> {
        // No redirects and https only: an answer from another gateway can
        // never send this one to a third address.
        let http = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .user_agent(concat!("customs-gateway/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(RegistryClient {
            base,
            host: name,
            http,
            creds: None,
            timeouts,
            auth: std::sync::Mutex::default(),
            answers_challenges: false,
        })
    }

    /// Whether credentials are configured (for the startup log).
    pub(crate) fn authenticated(&self) -> bool {
        self.creds.is_some()
    }

    /// `GET {base}{path}` for `repo`, authenticating as the upstream asks.
    /// Any status comes back; only transport failures and timeouts are
    /// errors here.
    pub(crate) async fn get(
        &self,
        repo: &Repository,
        path: &str,
        accept: &str,
    ) -> Result<reqwest::Response, FetchFailure> {
        self.get_from(repo, path, accept, 0).await
    }

    /// [`RegistryClient::get`] of the bytes from offset `from` on (a
    /// `Range` request when `from > 0`; see [`check_resumed`]).
    pub(crate) async fn get_from(
        &self,
        repo: &Repository,
        path: &str,
        accept: &str,
        from: u64,
    ) -> Result<reqwest::Response, FetchFailure> {
        let url = format!("{}{path}", self.base);
        let mut retried = false;
        loop {
            let mut req = self.http.get(&url).header(ACCEPT, accept);
            if from > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            if let Some(h) = self.authorization(repo) {
                req = req.header(AUTHORIZATION, h);
            }
            let resp = self.send(req).await?;
            if resp.status() != StatusCode::UNAUTHORIZED || retried || !self.answers_challenges {
                return Ok(resp);
            }
            retried = true;
            match parse_challenge(resp.headers()) {
                Some(Challenge::Bearer { realm, service }) => {
                    drop(resp);
                    self.fetch_token(repo, &realm, service.as_deref()).await?;
                }
                Some(Challenge::Basic) if self.creds.is_some() => {
                    drop(resp);
                    self.lock_auth().basic = true;
                }
                _ => return Ok(resp),
            }
        }
    }

    /// The host (or fleet member) this client reaches, for messages.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Sends a request within the first-byte timeout.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, FetchFailure> {
        use tracing::Instrument as _;
        let span = customs_runtime::trace_context::client_span("upstream", &self.host);
        let req = req.headers(customs_runtime::trace_context::headers_for(&span));
        let sent =
            tokio::time::timeout(self.timeouts.first_byte, req.send()).instrument(span.clone());
        match sent.await {
            Err(_) => Err(unavailable(format!(
                "upstream {} sent no response within {} (upstream first-byte timeout)",
                self.host,
                secs(self.timeouts.first_byte)
            ))),
            Ok(Err(e)) if e.is_connect() && e.is_timeout() => Err(unavailable(format!(
                "upstream {} did not accept a connection within {} (upstream connect timeout)",
                self.host,
                secs(self.timeouts.connect)
            ))),
            Ok(Err(e)) => Err(unavailable(format!("upstream {}: {e}", self.host))),
            Ok(Ok(resp)) => {
                span.record("http.response.status_code", resp.status().as_u16());
                Ok(resp)
            }
        }
    }

    fn lock_auth(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `Authorization` header for `repo`, if one is known.
    fn authorization(&self, repo: &Repository) -> Option<HeaderValue> {
        let auth = self.lock_auth();
        if let Some(t) = auth.tokens.get(repo.as_str())
            && t.expires > Instant::now()
        {
            return HeaderValue::from_str(&format!("Bearer {}", t.value)).ok();
        }
        if auth.basic {
            let c = self.creds.as_ref()?;
            return HeaderValue::from_str(&basic_header(c)).ok();
        }
        None
    }

    /// Gets a pull token for `repo` from the challenge's realm and caches it.
    async fn fetch_token(
        &self,
        repo: &Repository,
        realm: &str,
        service: Option<&str>,
    ) -> Result<(), FetchFailure> {
        let unauthorized = |m: String| FetchFailure::new(FetchFailureKind::Unauthorized, m);
        let mut url = url::Url::parse(realm)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                unauthorized(format!(
                    "upstream {} names an unusable token realm {realm:?}",
                    self.host
                ))
            })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &format!("repository:{}:pull", repo.as_str()));
        }
        let mut req = self.http.get(url);
        if let Some(c) = &self.creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = self.send(req).await?;
        let status = resp.status();
        let body = self.read_capped(resp, MAX_TOKEN_BYTES, "token").await?;
        if !status.is_success() {
            return Err(unauthorized(format!(
                "upstream {}: the token service answered {status}",
                self.host
            )));
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            unauthorized(format!(
                "upstream {}: unreadable token response: {e}",
                self.host
            ))
        })?;
        let value = t
            .token
            .or(t.access_token)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                unauthorized(format!(
                    "upstream {}: token response without a token",
                    self.host
                ))
            })?;
        let lifetime = t
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME)
            .saturating_sub(TOKEN_EXPIRY_MARGIN)
            .max(Duration::from_secs(1));
        let mut auth = self.lock_auth();
        if auth.tokens.len() >= MAX_CACHED_TOKENS {
            let now = Instant::now();
            auth.tokens.retain(|_, t| t.expires > now);
            if auth.tokens.len() >= MAX_CACHED_TOKENS {
                auth.tokens.clear();
            }
        }
        auth.tokens.insert(
            repo.as_str().to_owned(),
            Token {
                value,
                expires: Instant::now() + lifetime,
            },
        );
        Ok(())
    }

    /// Reads a whole body of at most `cap` bytes: a declared or actual
    /// larger body is cut off unread, and the read is bounded by the idle
    /// and whole-body timeouts.
    pub(crate) async fn read_capped(
        &self,
        mut resp: reqwest::Response,
        cap: usize,
        what: &str,
    ) -> Result<Bytes, FetchFailure> {
        let too_large = || {
            unavailable(format!(
                "upstream {}: the {what} is larger than the {cap}-byte limit ({}; cut off)",
                self.host,
                human_size(cap)
            ))
        };
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(too_large());
        }
        let deadline = tokio::time::Instant::now() + self.timeouts.body;
        let mut buf = BytesMut::new();
        loop {
            let idle_until = tokio::time::Instant::now() + self.timeouts.idle_read;
            let chunk = match tokio::time::timeout_at(idle_until.min(deadline), resp.chunk()).await
            {
                Err(_) if idle_until < deadline => {
                    return Err(unavailable(format!(
                        "upstream {} sent nothing for {} while sending the {what} (upstream idle-read timeout)",
                        self.host,
                        secs(self.timeouts.idle_read)
                    )));
                }
                Err(_) => {
                    return Err(unavailable(format!(
                        "upstream {} did not finish sending the {what} within {} (upstream body timeout)",
                        self.host,
                        secs(self.timeouts.body)
                    )));
                }
                Ok(Err(e)) => {
                    return Err(unavailable(format!(
                        "upstream {} broke off the {what}: {e}",
                        self.host
                    )));
                }
                Ok(Ok(None)) => return Ok(buf.freeze()),
                Ok(Ok(Some(c))) => c,
            };
            if buf.len() + chunk.len() > cap {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
    }

    /// A streamed body whose reads fail after the idle timeout.
    pub(crate) fn idle_bounded_stream(&self, resp: reqwest::Response) -> ByteStream {
        let idle = self.timeouts.idle_read;
        let host = self.host.clone();
        let inner = Box::pin(resp.bytes_stream());
        Box::pin(futures_util::stream::unfold(Some(inner), move |state| {
            let host = host.clone();
            async move {
                let mut inner = state?;
                match tokio::time::timeout(idle, inner.next()).await {
                    Err(_) => Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "upstream {host} sent nothing for {} (upstream idle-read timeout)",
                                secs(idle)
                            ),
                        )),
                        None,
                    )),
                    Ok(None) => None,
                    Ok(Some(Ok(b))) => Some((Ok(b), Some(inner))),
                    Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                }
            }
        }))
    }

    /// The failure an unsuccessful response stands for, from its status and
    /// OCI error code (the body is read capped).
    pub(crate) async fn failure(&self, resp: reqwest::Response, what: &str) -> FetchFailure {
        use FetchFailureKind as K;
        let status = resp.status();
        let body = self
            .read_capped(resp, MAX_ERROR_BYTES, "error body")
            .await
            .unwrap_or_default();
        let first = serde_json::from_slice::<ErrorEnvelope>(&body)
            .ok()
            .and_then(|e| e.errors.into_iter().next());
        let code = first.as_ref().map(|e| e.code.as_str()).unwrap_or_default();
        let kind = match (code, status) {
            ("MANIFEST_UNKNOWN" | "BLOB_UNKNOWN" | "NAME_UNKNOWN" | "NOT_FOUND", _)
            | (_, StatusCode::NOT_FOUND) => K::NotFound,
            ("DENIED", _) => K::Denied,
            ("TOOMANYREQUESTS", _) | (_, StatusCode::TOO_MANY_REQUESTS) => K::TooManyRequests,
            ("UNAUTHORIZED", _) | (_, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                K::Unauthorized
            }
            _ => K::Unavailable,
        };
        let detail: String = first
            .map(|e| e.message)
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        FetchFailure::new(
            kind,
            format!("upstream {}: {what}: {status} {detail}", self.host)
                .trim_end()
                .to_owned(),
        )
    }
}

fn basic_header(c: &BasicCredentials) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Parses the first usable `WWW-Authenticate` challenge.
fn parse_challenge(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_challenge_value)
}

fn parse_challenge_value(v: &str) -> Option<Challenge> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = auth_params(rest);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
    })
}

/// `key="quoted, value",key2=token` → map (keys lowercased).
fn auth_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &q[end.min(q.len())..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.insert(key, value);
        rest = next.trim_start().trim_start_matches(',').trim_start();
    }
    out
}

#[cfg(test)]
mod tests;

/// Checks that a response to [`RegistryClient::get_from`] continues a blob
/// of `size` bytes at `from`: `206` with `Content-Range: bytes from-(size-1)/size`
/// (or a plain `200` when `from` is 0). A source that ignores the range,
/// or answers another one, would splice foreign bytes into the stream the
/// store hashes; the digest check would catch it, but only after the
/// whole blob, so it is refused here at once.
pub(crate) fn check_resumed(
    resp: &reqwest::Response,
    from: u64,
    size: u64,
    who: &str,
) -> Result<(), FetchFailure> {
    let refuse = |why: String| {
        Err(FetchFailure::new(
            FetchFailureKind::Unavailable,
            format!("{who}: {why}"),
        ))
    };
    if from == 0 {
        return match resp.content_length() {
            Some(got) if got != size => Err(FetchFailure::new(
                FetchFailureKind::SizeMismatch,
                format!("{who} sends {got} bytes; the descriptor says {size}"),
            )),
            _ => Ok(()),
        };
    }
    if resp.status() != StatusCode::PARTIAL_CONTENT {
        return refuse(format!(
            "answered {} to a request for the bytes from {from} on",
            resp.status()
        ));
    }
    let want = format!("bytes {from}-{}/{size}", size.saturating_sub(1));
    match resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        Some(got) if got == want => Ok(()),
        got => refuse(format!("answered range {got:?}, asked for {want:?}")),
    }
}
