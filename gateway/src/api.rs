//! The operator API (`--api-listen`): a preheat job API compatible with
//! Dragonfly's manager, so Harbor's built-in Dragonfly P2P provider works
//! unchanged; Harbor's push webhook; and, without a token, `/healthy` and
//! `/metrics`.
//!
//! Jobs and webhooks require `Authorization: Bearer TOKEN` (compared in
//! constant time); anything else is 401.

use crate::metrics::Metrics;
use crate::preheat::{Job, PreheatSpec, Preheater, Scope};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use customs_mirror::warm::PlatformFilter;
use customs_protocol::{Reference, RegistryHost};
use serde::Deserialize;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Largest request body accepted (webhooks and job requests are small).
const MAX_BODY: usize = 1024 * 1024;

use customs_protocol::quote::clip;

/// How a parser learns the registry a host names (the preheater's
/// resolver in the server; any resolver in tests).
type ResolveHost<'a> = &'a dyn Fn(&str) -> Result<RegistryHost, String>;

struct ApiState {
    token: String,
    preheater: Arc<Preheater>,
    metrics: Arc<Metrics>,
    webhook_scope: Scope,
}

/// The API router.
pub fn router(
    token: String,
    preheater: Arc<Preheater>,
    metrics: Arc<Metrics>,
    webhook_scope: Scope,
) -> Router {
    Router::new()
        .route("/healthy", get(|| async { "OK" }))
        .route("/metrics", get(metrics_text))
        .route("/oapi/v1/jobs", post(create_job))
        .route("/oapi/v1/jobs/{id}", get(get_job))
        .route("/webhooks/harbor", post(harbor_webhook))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(Arc::new(ApiState {
            token,
            preheater,
            metrics,
            webhook_scope,
        }))
}

async fn metrics_text(State(st): State<Arc<ApiState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

fn authorized(st: &ApiState, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(given) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    !st.token.is_empty() && bool::from(given.trim().as_bytes().ct_eq(st.token.as_bytes()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        axum::Json(serde_json::json!({"message": "a valid bearer token is required"})),
    )
        .into_response()
}

fn bad_request(message: String) -> Response {
    tracing::warn!(error = %message, "API request refused");
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "message": message })),
    )
        .into_response()
}

/// `POST /oapi/v1/jobs` as Harbor's Dragonfly provider sends it.
#[derive(Debug, Deserialize)]
struct CreateJob {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    args: serde_json::Value,
}

/// The preheat arguments we read (the rest is echoed back untouched).
#[derive(Debug, Deserialize)]
struct PreheatArgs {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    url: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    percentage: Option<u64>,
}

/// Parses `http(s)://HOST/v2/REPO/manifests/REF` into a preheat target.
fn parse_manifest_url(
    registry_for_host: ResolveHost<'_>,
    url: &str,
) -> Result<(customs_protocol::ImageName, Reference), String> {
    let quoted = clip(url);
    let u = url::Url::parse(url).map_err(|e| format!("url {quoted:?}: {e}"))?;
    // The port as written: `url` drops a scheme's default port
    // (`http://reg:80/`), and a registry is named with the port it was
    // configured with.
    let explicit_port = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .and_then(|authority| {
            authority
                .rsplit_once('@')
                .map_or(Some(authority), |(_, h)| Some(h))
        })
        .and_then(|hostport| hostport.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let host = match (u.host_str(), u.port().or(explicit_port)) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => return Err(format!("url {quoted:?} has no host")),
    };
    let host = match host.as_str() {
        "registry-1.docker.io" | "index.docker.io" => "docker.io".to_owned(),
        _ => host,
    };
    let path = u
        .path()
        .strip_prefix("/v2/")
        .ok_or_else(|| format!("url {quoted:?} is not a /v2/ manifest URL"))?;
    let (repo, reference) = path
        .rsplit_once("/manifests/")
        .ok_or_else(|| format!("url {quoted:?} is not a /v2/<name>/manifests/<reference> URL"))?;
    let registry: RegistryHost = registry_for_host(&host)?;
    Ok((
        customs_protocol::ImageName {
            registry,
            repository: repo.parse().map_err(|e| format!("{e}"))?,
        },
        reference.parse().map_err(|e| format!("{e}"))?,
    ))
}

async fn create_job(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let resolve = |h: &str| st.preheater.registry_for_host(h).map_err(|e| e.to_string());
    let (spec, args) = match parse_job_request(&resolve, &body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    match st.preheater.submit(spec, args).await {
        Ok(job) => axum::Json(job_json(&job)).into_response(),
        Err(e) => job_error(e),
    }
}

/// Parses a `POST /oapi/v1/jobs` body into the preheat it asks for and the
/// args to keep with the job. Public (hidden) so property tests can feed it
/// hostile bodies without a server; errors quote input clipped.
#[doc(hidden)]
pub fn parse_job_request(
    registry_for_host: ResolveHost<'_>,
    body: &[u8],
) -> Result<(PreheatSpec, serde_json::Value), String> {
    let req: CreateJob = serde_json::from_slice(body)
        .map_err(|e| format!("job request: {}", clip(&e.to_string())))?;
    if req.kind != "preheat" {
        return Err(format!(
            "job type {:?} is not supported (only preheat)",
            clip(&req.kind)
        ));
    }
    let args: PreheatArgs = serde_json::from_value(req.args.clone())
        .map_err(|e| format!("preheat args: {}", clip(&e.to_string())))?;
    if let Some(k) = &args.kind
        && k != "image"
    {
        return Err(format!(
            "preheat type {:?} is not supported (only image)",
            clip(k)
        ));
    }
    Ok((preheat_spec(registry_for_host, &args)?, req.args))
}

fn preheat_spec(
    registry_for_host: ResolveHost<'_>,
    args: &PreheatArgs,
) -> Result<PreheatSpec, String> {
    let (image, reference) = parse_manifest_url(registry_for_host, &args.url)?;
    let scope = Scope::parse(args.scope.as_deref(), args.count, args.percentage)?;
    let platform = match args.platform.as_deref() {
        None | Some("") => PlatformFilter::All,
        Some(p) if p.split('/').count() >= 2 => PlatformFilter::Only(p.to_owned()),
        Some(p) => return Err(format!("platform {:?} is not os/arch[/variant]", clip(p))),
    };
    Ok(PreheatSpec {
        image,
        reference,
        tag: None,
        platform,
        scope,
    })
}

async fn get_job(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let Ok(id) = id.parse::<u64>() else {
        return bad_request(format!("job id {id:?} is not an integer"));
    };
    match st.preheater.job(id).await {
        Err(e) => job_error(e),
        Ok(Some(job)) => axum::Json(job_json(&job)).into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"message": format!("job {id} not found")})),
        )
            .into_response(),
    }
}

/// A job the fleet store cannot create or read: 503 while Redis is
/// unreachable (Harbor retries), 502 for a record this gateway did not
/// write; the reason is in `message`, as for every other API error.
fn job_error(e: crate::preheat::JobError) -> Response {
    let status = match e {
        crate::preheat::JobError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        crate::preheat::JobError::Malformed { .. } => StatusCode::BAD_GATEWAY,
    };
    tracing::warn!(error = %e, "preheat job request failed");
    (
        status,
        axum::Json(serde_json::json!({"message": e.to_string()})),
    )
        .into_response()
}

/// A job in Dragonfly's shape: integer `id`, RFC 3339 times, `state`
/// PENDING/SUCCESS/FAILURE, and `result.job_states[]` with `state` and
/// `error` per task (Harbor reads the errors on failure).
pub fn job_json(job: &Job) -> serde_json::Value {
    let job_states: Vec<serde_json::Value> = job
        .nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "task_name": format!("preheat {}", n.node),
                "state": n.state,
                "error": n.error,
                "results": n.report.as_ref().map(|r| vec![r]).unwrap_or_default(),
                "created_at": job.created(),
                "updated_at": job.updated(),
            })
        })
        .collect();
    let mut job_states = job_states;
    if !job.error.is_empty() && job.nodes.iter().all(|n| n.error.is_empty()) {
        job_states.push(serde_json::json!({
            "task_name": "preheat",
            "state": job.state,
            "error": job.error,
            "results": [],
            "created_at": job.created(),
            "updated_at": job.updated(),
        }));
    }
    serde_json::json!({
        "id": job.id,
        "created_at": job.created(),
        "updated_at": job.updated(),
        "type": "preheat",
        "state": job.state,
        "args": job.args,
        "bio": format!("preheat {}", job.image),
        "result": {
            "state": job.state,
            "created_at": job.created(),
            "updated_at": job.updated(),
            "job_states": job_states,
        },
        "customs": {
            "image": job.image,
            "targets": job.targets,
            "error": job.error,
        },
    })
}

/// Harbor's push webhook, Default or CloudEvents format.
async fn harbor_webhook(
    State(st): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&st, &headers) {
        return unauthorized();
    }
    let resolve = |h: &str| st.preheater.registry_for_host(h).map_err(|e| e.to_string());
    let (kind, pushed) = match parse_webhook(&resolve, st.webhook_scope, &body) {
        Ok(WebhookRequest::Ignored(other)) => {
            tracing::info!(event = %other, "Harbor event ignored (not a push)");
            return axum::Json(serde_json::json!({"ignored": other})).into_response();
        }
        Ok(WebhookRequest::Push { kind, pushed }) => (kind, pushed),
        Err(e) => return bad_request(e),
    };
    let mut jobs = Vec::new();
    for (spec, url) in pushed {
        let args = serde_json::json!({"type": "image", "url": url, "scope": format!("{:?}", st.webhook_scope), "source": "harbor-webhook"});
        match st.preheater.submit(spec, args).await {
            Ok(job) => jobs.push(job.id),
            Err(e) => return job_error(e),
        }
    }
    tracing::info!(event = %kind, jobs = ?jobs, "Harbor push received");
    axum::Json(serde_json::json!({ "jobs": jobs })).into_response()
}

/// What a Harbor webhook body asks for.
#[doc(hidden)]
#[derive(Debug)]
pub enum WebhookRequest {
    /// Not a push event (its type, clipped): acknowledged, nothing done.
    Ignored(String),
    /// A push: its event type and, per resource, the preheat and its URL.
    Push {
        /// `PUSH_ARTIFACT` or `harbor.artifact.pushed`.
        kind: String,
        /// One preheat per pushed resource, with its `resource_url`.
        pushed: Vec<(PreheatSpec, String)>,
    },
}

/// Parses a Harbor webhook body (Default or CloudEvents format). Every
/// resource is checked before any job starts. Public (hidden) so property
/// tests can feed it hostile bodies without a server.
#[doc(hidden)]
pub fn parse_webhook(
    registry_for_host: ResolveHost<'_>,
    scope: Scope,
    body: &[u8],
) -> Result<WebhookRequest, String> {
    let event: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("webhook payload: {}", clip(&e.to_string())))?;
    let kind = event["type"].as_str().unwrap_or_default();
    let data = match kind {
        "PUSH_ARTIFACT" => &event["event_data"],
        "harbor.artifact.pushed" => &event["data"],
        other => return Ok(WebhookRequest::Ignored(clip(other))),
    };
    let resources = data["resources"]
        .as_array()
        .ok_or("push event without resources")?;
    let mut pushed = Vec::new();
    for r in resources {
        let url = r["resource_url"]
            .as_str()
            .ok_or("resource without resource_url")?;
        let digest = r["digest"].as_str().filter(|d| !d.is_empty());
        let tag = r["tag"].as_str().filter(|t| !t.is_empty());
        pushed.push((
            webhook_spec(registry_for_host, scope, url, digest, tag)?,
            url.to_owned(),
        ));
    }
    Ok(WebhookRequest::Push {
        kind: kind.to_owned(),
        pushed,
    })
}

/// `resource_url` is `HOST/REPO[:TAG][@DIGEST]`; the digest wins.
fn webhook_spec(
    registry_for_host: ResolveHost<'_>,
    scope: Scope,
    resource_url: &str,
    digest: Option<&str>,
    tag: Option<&str>,
) -> Result<PreheatSpec, String> {
    let without_digest = resource_url.split('@').next().unwrap_or_default();
    let (host, rest) = without_digest.split_once('/').ok_or_else(|| {
        format!(
            "resource_url {:?} is not HOST/REPOSITORY",
            clip(resource_url)
        )
    })?;
    let repo = match rest.rsplit_once(':') {
        Some((r, _)) => r,
        None => rest,
    };
    let reference = match (digest, tag) {
        (Some(d), _) => d.to_owned(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => {
            return Err(format!(
                "resource {:?} has no digest or tag",
                clip(resource_url)
            ));
        }
    };
    let registry = registry_for_host(host)?;
    Ok(PreheatSpec {
        image: customs_protocol::ImageName {
            registry,
            repository: repo.parse().map_err(|e| format!("{e}"))?,
        },
        reference: reference.parse().map_err(|e| format!("{e}"))?,
        // Pushed by digest with a tag: the tag is warmed too (checked
        // against the upstream when the job runs).
        tag: match (digest, tag) {
            (Some(_), Some(t)) => Some(t.parse().map_err(|e| format!("{e}"))?),
            _ => None,
        },
        platform: PlatformFilter::All,
        scope,
    })
}
