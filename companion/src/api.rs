//! HTTP API: the table with long-poll, admin writes, resolve, health, metrics.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use isogroup_core::group::is_valid_group;
use isogroup_core::table::is_valid_service;
use isogroup_core::{decide_service, Decision};
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::auth::Token;
use crate::file_source::TableFile;
use crate::metrics::{AdminLabels, Metrics};
use crate::state::{PublishError, Snapshot, Store};

/// The longest hold a poller may ask for.
const MAX_WAIT_S: u64 = 300;
/// Admin bodies are one small JSON object.
const MAX_BODY: usize = 16 * 1024;

pub struct Api {
    pub store: Arc<Store>,
    /// The table file; `None` with the Kubernetes source (no admin writes).
    pub file: Option<Arc<TableFile>>,
    pub token: Option<Token>,
    pub metrics: Arc<Metrics>,
    /// Flips to true on shutdown, releasing held polls at once.
    pub shutdown: watch::Receiver<bool>,
}

pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/v1/table", get(get_table))
        .route("/v1/services/{service}/groups/{group}", put(put_group).delete(delete_group))
        .route("/v1/resolve", get(resolve))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(api)
}

/// `{"error": …, "detail": …}` with a status.
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, error, detail: detail.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error, "detail": self.detail }))).into_response()
    }
}

#[derive(Deserialize)]
struct TableQuery {
    after: Option<u64>,
    wait: Option<u64>,
}

fn etag(snap: &Snapshot) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", snap.version)).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn table_response(snap: &Snapshot) -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (header::ETAG, etag(snap))],
        snap.json.clone(),
    )
        .into_response()
}

/// `304` still names what is served, so a poller (or a cache) can tell.
fn not_modified(snap: &Snapshot) -> Response {
    (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(snap))]).into_response()
}

/// Counts a held poll for as long as it lives: a client that goes away drops
/// the handler's future, and with it this guard.
struct HeldPoll<'a>(&'a Gauge);

impl<'a> HeldPoll<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        HeldPoll(gauge)
    }
}

impl Drop for HeldPoll<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /v1/table[?after=v&wait=s]`: the table now when its version differs
/// from `after`, else held up to `wait` s, then 304.
async fn get_table(State(api): State<Arc<Api>>, Query(q): Query<TableQuery>, headers: HeaderMap) -> Response {
    if let Some(id) = headers.get("x-isogroup-poller").and_then(|v| v.to_str().ok()) {
        api.metrics.saw_poller(id);
    }
    api.metrics.polls.inc();
    let mut rx = api.store.subscribe();
    let snap = rx.borrow_and_update().clone();
    let known = q.after.or_else(|| if_none_match(&headers));
    if known != Some(snap.version) {
        return table_response(&snap);
    }
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_S));
    if wait.is_zero() {
        return not_modified(&snap);
    }
    let _held = HeldPoll::new(&api.metrics.held_polls);
    let mut shutdown = api.shutdown.clone();
    tokio::select! {
        changed = rx.changed() => match changed {
            Ok(()) => table_response(&rx.borrow_and_update().clone()),
            Err(_) => not_modified(&snap),
        },
        _ = tokio::time::sleep(wait) => not_modified(&snap),
        _ = shutdown.wait_for(|down| *down) => not_modified(&snap),
    }
}

fn if_none_match(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::IF_NONE_MATCH)?.to_str().ok()?.trim().trim_matches('"').parse().ok()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    cluster: String,
}

async fn put_group(
    State(api): State<Arc<Api>>,
    Path((service, group)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = admin_put(&api, &service, &group, &headers, &body).await;
    api.admin_result("put", result)
}

async fn delete_group(
    State(api): State<Arc<Api>>,
    Path((service, group)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = admin_delete(&api, &service, &group, &headers).await;
    api.admin_result("delete", result)
}

impl Api {
    fn admin_result(&self, op: &str, result: Result<Response, ApiError>) -> Response {
        let response = result.unwrap_or_else(IntoResponse::into_response);
        self.metrics.admin.get_or_create(&AdminLabels { op: op.into(), status: response.status().as_u16() }).inc();
        response
    }

    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(token) = &self.token else {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "admin_disabled", "no admin token configured"));
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if token.matches(presented.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required"))
        }
    }

    /// Validates, persists, then publishes: a write that cannot be made
    /// durable is not served.
    fn commit(&self, raw: isogroup_core::RawTable) -> Result<Arc<Snapshot>, ApiError> {
        let snap = self.store.prepare(raw).map_err(|e| match e {
            PublishError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_table", e.to_string()),
            PublishError::VersionTooLarge { .. } => {
                ApiError::new(StatusCode::CONFLICT, "version_exhausted", e.to_string())
            }
        })?;
        let file = self.file.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "read_only_source",
                "the Kubernetes source owns the table; register by labelling pods",
            )
        })?;
        file.write(&snap.json)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "write_failed", e.to_string()))?;
        let snap = self.store.install(snap);
        self.metrics.table_updated(snap.version);
        Ok(snap)
    }
}

fn check_names(service: &str, group: &str) -> Result<(), ApiError> {
    if !is_valid_service(service) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_service",
            format!("{service:?} is not a valid service name"),
        ));
    }
    if !is_valid_group(group.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_group",
            format!("{group:?} is not a valid group name"),
        ));
    }
    Ok(())
}

fn unknown_service(service: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_service", format!("no service {service:?} in the table"))
}

async fn admin_put(
    api: &Api,
    service: &str,
    group: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    api.authorize(headers)?;
    check_names(service, group)?;
    let body: PutBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("expected {{\"cluster\": \"…\"}}: {e}"))
    })?;
    let _guard = api.store.writer.lock().await;
    let mut raw = api.store.current().raw.clone();
    let entry = raw.services.get_mut(service).ok_or_else(|| unknown_service(service))?;
    entry.clusters.insert(group.to_owned(), body.cluster.clone());
    let snap = api.commit(raw)?;
    tracing::info!(service, group, cluster = %body.cluster, version = snap.version, "registered");
    Ok(Json(json!({ "version": snap.version, "service": service, "group": group, "cluster": body.cluster }))
        .into_response())
}

async fn admin_delete(api: &Api, service: &str, group: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    api.authorize(headers)?;
    check_names(service, group)?;
    let _guard = api.store.writer.lock().await;
    let current = api.store.current();
    if group == current.table.group_name(current.table.base()) {
        return Err(ApiError::new(StatusCode::CONFLICT, "base_cluster", "the base group's cluster cannot be deleted"));
    }
    let mut raw = current.raw.clone();
    let entry = raw.services.get_mut(service).ok_or_else(|| unknown_service(service))?;
    if entry.clusters.remove(group).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_registered",
            format!("group {group:?} has no instance of {service:?}"),
        ));
    }
    let snap = api.commit(raw)?;
    tracing::info!(service, group, version = snap.version, "unregistered");
    Ok(Json(json!({ "version": snap.version, "service": service, "group": group })).into_response())
}

#[derive(Deserialize)]
struct ResolveQuery {
    service: String,
    group: Option<String>,
    strict: Option<String>,
}

/// The same decision the filter makes, for scripts and queue consumers.
async fn resolve(State(api): State<Arc<Api>>, Query(q): Query<ResolveQuery>) -> Response {
    if let Some(g) = q.group.as_deref().filter(|g| !is_valid_group(g.as_bytes())) {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_group", format!("{g:?} is not a valid group name"))
            .into_response();
    }
    let snap = api.store.current();
    let decision = decide_service(&snap.table, &q.service, q.group.as_deref(), q.strict.as_deref().map(str::as_bytes));
    let body = match decision {
        Decision::PassThrough => return unknown_service(&q.service).into_response(),
        Decision::Route(r) => json!({
            "version": snap.version, "decision": "route", "service": r.service, "group": r.group,
            "serving_group": r.serving, "cluster": r.cluster, "fallback": r.fallback,
        }),
        Decision::FailFast(f) => json!({
            "version": snap.version, "decision": "failfast", "service": f.service, "group": f.group,
            "reason": f.reason.as_str(),
        }),
    };
    Json(body).into_response()
}

async fn healthz(State(api): State<Arc<Api>>) -> Response {
    Json(json!({ "status": "ok", "version": api.store.current().version })).into_response()
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], api.metrics.encode())
        .into_response()
}
