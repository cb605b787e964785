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
    preheater: &Preheater,
    url: &str,
) -> Result<(customs_protocol::ImageName, Reference), String> {
    let u = url::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
    let host = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        _ => return Err(format!("url {url:?} has no host")),
    };
    let host = match host.as_str() {
        "registry-1.docker.io" | "index.docker.io" => "docker.io".to_owned(),
        _ => host,
    };
    let path = u
        .path()
        .strip_prefix("/v2/")
        .ok_or_else(|| format!("url {url:?} is not a /v2/ manifest URL"))?;
    let (repo, reference) = path
        .rsplit_once("/manifests/")
        .ok_or_else(|| format!("url {url:?} is not a /v2/<name>/manifests/<reference> URL"))?;
    let registry: RegistryHost = preheater
        .registry_for_host(&host)
        .map_err(|e| e.to_string())?;
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
    let req: CreateJob = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("job request: {e}")),
    };
    if req.kind != "preheat" {
        return bad_request(format!(
            "job type {:?} is not supported (only preheat)",
            req.kind
        ));
    }
    let args: PreheatArgs = match serde_json::from_value(req.args.clone()) {
        Ok(a) => a,
        Err(e) => return bad_request(format!("preheat args: {e}")),
    };
    if let Some(k) = &args.kind
        && k != "image"
    {
        return bad_request(format!("preheat type {k:?} is not supported (only image)"));
    }
    let spec = match preheat_spec(&st.preheater, &args) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let job = st.preheater.submit(spec, req.args);
    axum::Json(job_json(&job)).into_response()
}

fn preheat_spec(preheater: &Preheater, args: &PreheatArgs) -> Result<PreheatSpec, String> {
    let (image, reference) = parse_manifest_url(preheater, &args.url)?;
    let scope = Scope::parse(args.scope.as_deref(), args.count, args.percentage)?;
    let platform = match args.platform.as_deref() {
        None | Some("") => PlatformFilter::All,
        Some(p) if p.split('/').count() >= 2 => PlatformFilter::Only(p.to_owned()),
        Some(p) => return Err(format!("platform {p:?} is not os/arch[/variant]")),
    };
    Ok(PreheatSpec {
        image,
        reference,
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
    match st.preheater.job(id) {
        Some(job) => axum::Json(job_json(&job)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"message": format!("job {id} not found")})),
        )
            .into_response(),
    }
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
    let event: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("webhook payload: {e}")),
    };
    let kind = event["type"].as_str().unwrap_or_default().to_owned();
    let data = match kind.as_str() {
        "PUSH_ARTIFACT" => &event["event_data"],
        "harbor.artifact.pushed" => &event["data"],
        other => {
            tracing::info!(event = other, "Harbor event ignored (not a push)");
            return axum::Json(serde_json::json!({"ignored": other})).into_response();
        }
    };
    let Some(resources) = data["resources"].as_array() else {
        return bad_request("push event without resources".into());
    };
    let mut jobs = Vec::new();
    for r in resources {
        let Some(url) = r["resource_url"].as_str() else {
            return bad_request("resource without resource_url".into());
        };
        let digest = r["digest"].as_str().filter(|d| !d.is_empty());
        let tag = r["tag"].as_str().filter(|t| !t.is_empty());
        let spec = match webhook_spec(&st, url, digest, tag) {
            Ok(s) => s,
            Err(e) => return bad_request(e),
        };
        let args = serde_json::json!({"type": "image", "url": url, "scope": format!("{:?}", st.webhook_scope), "source": "harbor-webhook"});
        let job = st.preheater.submit(spec, args);
        jobs.push(job.id);
    }
    tracing::info!(event = %kind, jobs = ?jobs, "Harbor push received");
    axum::Json(serde_json::json!({ "jobs": jobs })).into_response()
}

/// `resource_url` is `HOST/REPO[:TAG][@DIGEST]`; the digest wins.
fn webhook_spec(
    st: &ApiState,
    resource_url: &str,
    digest: Option<&str>,
    tag: Option<&str>,
) -> Result<PreheatSpec, String> {
    let without_digest = resource_url.split('@').next().unwrap_or_default();
    let (host, rest) = without_digest
        .split_once('/')
        .ok_or_else(|| format!("resource_url {resource_url:?} is not HOST/REPOSITORY"))?;
    let repo = match rest.rsplit_once(':') {
        Some((r, _)) => r,
        None => rest,
    };
    let reference = match (digest, tag) {
        (Some(d), _) => d.to_owned(),
        (None, Some(t)) => t.to_owned(),
        (None, None) => return Err(format!("resource {resource_url:?} has no digest or tag")),
    };
    let registry = st
        .preheater
        .registry_for_host(host)
        .map_err(|e| e.to_string())?;
    Ok(PreheatSpec {
        image: customs_protocol::ImageName {
            registry,
            repository: repo.parse().map_err(|e| format!("{e}"))?,
        },
        reference: reference.parse().map_err(|e| format!("{e}"))?,
        platform: PlatformFilter::All,
        scope: st.webhook_scope,
    })
}
