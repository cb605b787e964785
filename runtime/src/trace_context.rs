//! W3C trace context across components: a pull's spans on the peer, the
//! gateway and the upstream fetch share one trace.
//!
//! Outgoing internal calls carry `traceparent` (and `tracestate`) from the
//! span they are made in ([`inject`]); servers start their request span as
//! a child of the caller's ([`server_span`]). The propagator is the
//! process-wide one the binary installs (W3C Trace Context); without an
//! exporter the spans carry no OpenTelemetry context and nothing is sent.

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Writes `span`'s trace context into `headers`.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

/// `span`'s trace context as headers, for request builders that take a
/// whole map (reqwest's `headers`).
pub fn headers_for(span: &tracing::Span) -> HeaderMap {
    let mut h = HeaderMap::new();
    inject(span, &mut h);
    h
}

/// Makes `span` a child of the trace context in `headers`, if any.
pub fn adopt_parent(span: &tracing::Span, headers: &HeaderMap) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    // A request without (or with an unparseable) traceparent starts its
    // own trace: the extracted context is then empty and setting it is a
    // no-op.
    let _ = span.set_parent(parent);
}

/// What an OCI or Customs request is, for span names: a bounded set (the
/// path's digests and repository names go to attributes, never names).
pub fn request_kind(path: &str) -> &'static str {
    if path.contains("/blobs/") {
        "blob"
    } else if path.contains("/manifests/") {
        "manifest"
    } else if path.contains("/referrers/") {
        "referrers"
    } else if path.starts_with("/customs/v1/tasks") {
        "task"
    } else if path.starts_with("/customs/v1/pieces") || path.contains("/pieces/") {
        "piece"
    } else if path == "/v2/" || path == "/v2" {
        "ping"
    } else {
        "other"
    }
}

/// The server span of one incoming HTTP request, child of the caller's
/// trace context when the request carries one.
pub fn server_span(method: &http::Method, path: &str, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "http request",
        otel.name = format!("{method} {}", request_kind(path)),
        otel.kind = "server",
        http.request.method = %method,
        url.path = %path,
        http.response.status_code = tracing::field::Empty,
    );
    adopt_parent(&span, headers);
    span
}

/// The server span of one gRPC call (`method`, e.g. `RegisterTask`),
/// child of the caller's trace context in its metadata (`headers`); none
/// when the call carries no trace context. Only calls made once per blob
/// are traced: the per-piece and per-refresh calls (ten a second per
/// download) would drown a trace.
pub fn grpc_server_span(method: &'static str, headers: &HeaderMap) -> tracing::Span {
    // Only calls that belong to a trace: an untraced call would start a
    // trace of its own per call.
    if !headers.contains_key("traceparent") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "grpc call",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
    );
    adopt_parent(&span, headers);
    span
}

/// The client span of one outgoing HTTP request to `target` (another
/// Customs component's base URL or an upstream registry's host): `what`
/// names it (`gateway`, `upstream`).
pub fn client_span(what: &'static str, target: &str) -> tracing::Span {
    tracing::info_span!(
        "http call",
        otel.name = what,
        otel.kind = "client",
        server.address = %redact_query(target),
        http.response.status_code = tracing::field::Empty,
    )
}

/// `url` without its query (a query may carry tokens).
fn redact_query(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

/// Applies [`server_span`] to every request of an axum router: the handler
/// and everything it awaits run inside it; the status is recorded.
pub fn traced(router: axum::Router) -> axum::Router {
    use tracing::Instrument as _;
    router.layer(axum::middleware::from_fn(
        |req: axum::extract::Request, next: axum::middleware::Next| async move {
            let span = server_span(req.method(), req.uri().path(), req.headers());
            let resp = next.run(req).instrument(span.clone()).await;
            span.record("http.response.status_code", resp.status().as_u16());
            resp
        },
    ))
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_names_stay_a_small_set() {
        assert_eq!(request_kind("/v2/library/app/blobs/sha256:abc"), "blob");
        assert_eq!(request_kind("/v2/a/b/manifests/v1"), "manifest");
        assert_eq!(request_kind("/customs/v1/tasks"), "task");
        assert_eq!(request_kind("/v2/"), "ping");
        assert_eq!(request_kind("/anything/else"), "other");
        assert_eq!(
            redact_query("https://h/v2/x?token=secret"),
            "https://h/v2/x"
        );
    }

    proptest::proptest! {
        /// Whoever calls a component sets `traceparent` and `tracestate`
        /// (containerd, any pod on the node): any bytes are parsed without
        /// a panic, and only a well-formed value names a remote parent.
        #[test]
        fn hostile_trace_headers_never_panic(
            parent in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            state in ".{0,300}",
        ) {
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_bytes(&parent) {
                h.insert("traceparent", v);
            }
            if let Ok(v) = HeaderValue::from_str(&state) {
                h.insert("tracestate", v);
            }
            let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&h)));
            use opentelemetry::trace::TraceContextExt as _;
            let remote = cx.span().span_context().is_valid();
            let well_formed = std::str::from_utf8(&parent).is_ok_and(|p| {
                let f: Vec<&str> = p.split('-').collect();
                f.len() >= 4 && f[1].len() == 32 && f[2].len() == 16
            });
            proptest::prop_assert!(!remote || well_formed);
            let _ = server_span(&http::Method::GET, "/v2/x/blobs/y", &h);
            let _ = grpc_server_span("RegisterTask", &h);
        }
    }
}
