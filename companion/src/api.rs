//! HTTP API: the table with long-poll, admin writes, resolve, readiness,
//! health, metrics. Admin writes become `store::Change`s; nothing here knows
//! which store holds the table.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use isogroup_core::client::{resolve_client, PickedBy};
use isogroup_core::epoch::Stamp;
use isogroup_core::group::is_valid_group;
use isogroup_core::table::is_valid_service;
use isogroup_core::{decide_service, RawTable};
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::auth::Token;
use crate::metrics::{AdminLabels, Metrics};
use crate::store::{Change, ChangeError, Readiness, Snapshot, Store};

/// The longest hold a poller may ask for.
const MAX_WAIT_S: u64 = 300;
/// Admin bodies are one small JSON object (`PUT /v1/table` excepted).
const MAX_BODY: usize = 16 * 1024;
/// The epoch of the table served, beside `ETag: "<version>"`.
pub const EPOCH_HEADER: HeaderName = HeaderName::from_static("x-isogroup-epoch");

pub struct Api {
    pub store: Arc<dyn Store>,
    pub token: Option<Token>,
    pub metrics: Arc<Metrics>,
    /// The gateway's join URL (`serve --gateway-url`), for the console's links.
    pub gateway_url: Option<String>,
    /// Flips to true on shutdown, releasing held polls at once.
    pub shutdown: watch::Receiver<bool>,
}

pub fn router(api: Arc<Api>) -> Router {
    let max_table = api.store.served().limits.max_table_bytes;
    Router::new()
        .route("/v1/table", get(get_table).put(put_table).layer(DefaultBodyLimit::max(max_table)))
        .route("/v1/services/{service}/groups/{group}", put(put_group).delete(delete_group))
        .route("/v1/resolve", get(resolve))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(crate::console::routes())
        .merge(crate::runtime_api::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(crate::console::security_headers))
        .with_state(api)
}

/// `{"error": …, "detail": …}` with a status.
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError { status, error, detail: detail.into() }
    }

    pub(crate) fn code(&self) -> &'static str {
        self.error
    }

    #[cfg(test)]
    pub(crate) fn detail(&self) -> &str {
        &self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.error, "detail": self.detail }))).into_response()
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        let (status, error) = match &e {
            ChangeError::UnknownService { .. } => (StatusCode::NOT_FOUND, "unknown_service"),
            ChangeError::NotRegistered { .. } => (StatusCode::NOT_FOUND, "not_registered"),
            ChangeError::BaseCluster { .. } => (StatusCode::CONFLICT, "base_cluster"),
            ChangeError::UnknownGroup { .. } => (StatusCode::BAD_REQUEST, "unknown_group"),
            ChangeError::NotBound { .. } => (StatusCode::NOT_FOUND, "not_bound"),
            ChangeError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_table"),
            ChangeError::Version(_) => (StatusCode::CONFLICT, "version_exhausted"),
            ChangeError::ManagedByKubernetes => (StatusCode::CONFLICT, "managed_by_kubernetes"),
            ChangeError::NotLeader(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
            ChangeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ChangeError::Unreadable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unreadable"),
            ChangeError::WriteFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "write_failed"),
        };
        ApiError::new(status, error, e.to_string())
    }
}

#[derive(Deserialize)]
struct TableQuery {
    after: Option<u64>,
    epoch: Option<String>,
    wait: Option<u64>,
}

/// What a poller holds, and so which answers are news to it.
struct Poll {
    after: Option<u64>,
    epoch: Option<String>,
}

impl Poll {
    /// With `epoch`: only a table newer in the (epoch, version) order. Without
    /// (the first-round rule): any version other than the one it has.
    fn wants(&self, snap: &Snapshot) -> bool {
        match &self.epoch {
            Some(epoch) => snap.stamp() > Stamp::new(Some(epoch), self.after.unwrap_or(0)),
            None => self.after != Some(snap.version),
        }
    }
}

/// `ETag` and, when the table has one, `X-Isogroup-Epoch`.
fn stamp_headers(snap: &Snapshot) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", snap.version)) {
        headers.insert(header::ETAG, etag);
    }
    if let Some(epoch) = snap.epoch.as_deref().and_then(|e| HeaderValue::from_str(e).ok()) {
        headers.insert(EPOCH_HEADER, epoch);
    }
    headers
}

fn table_response(snap: &Snapshot) -> Response {
    let mut headers = stamp_headers(snap);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    (headers, snap.json.clone()).into_response()
}

/// `304` still names what is served, so a poller (or a cache) can tell.
fn not_modified(snap: &Snapshot) -> Response {
    (StatusCode::NOT_MODIFIED, stamp_headers(snap)).into_response()
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

pub(crate) fn not_ready(readiness: &Readiness) -> Option<ApiError> {
    match readiness {
        Readiness::Loading(detail) => Some(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", detail.clone())),
        Readiness::Ready | Readiness::Unreachable(_) => None,
    }
}

/// `GET /v1/table[?after=v[&epoch=e]&wait=s]`: the table now when it is news
/// to the poller (see `Poll::wants`), else held up to `wait` s, then 304.
async fn get_table(State(api): State<Arc<Api>>, Query(q): Query<TableQuery>, headers: HeaderMap) -> Response {
    if let Some(id) = headers.get("x-isogroup-poller").and_then(|v| v.to_str().ok()) {
        api.metrics.saw_poller(id);
    }
    api.metrics.polls.inc();
    let served = api.store.served();
    if let Some(e) = not_ready(&served.readiness()) {
        return e.into_response();
    }
    if let Some(detail) = api.store.not_serving() {
        return ApiError::from(ChangeError::NotLeader(detail)).into_response();
    }
    let mut rx = served.subscribe();
    let mut snap = rx.borrow_and_update().clone();
    let poll = Poll { after: q.after.or_else(|| if_none_match(&headers)), epoch: q.epoch };
    if poll.wants(&snap) {
        return table_response(&snap);
    }
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_S));
    if wait.is_zero() {
        return not_modified(&snap);
    }
    let _held = HeldPoll::new(&api.metrics.held_polls);
    let mut shutdown = api.shutdown.clone();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return not_modified(&snap);
                }
                snap = rx.borrow_and_update().clone();
                if poll.wants(&snap) {
                    return table_response(&snap);
                }
            }
            _ = &mut deadline => return not_modified(&snap),
            _ = shutdown.wait_for(|down| *down) => return not_modified(&snap),
        }
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

async fn put_table(State(api): State<Arc<Api>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let result = admin_put_table(&api, &headers, &body).await;
    api.admin_result("put_table", result)
}

impl Api {
    pub(crate) fn admin_result(&self, op: &str, result: Result<Response, ApiError>) -> Response {
        let response = result.unwrap_or_else(IntoResponse::into_response);
        self.metrics.admin.get_or_create(&AdminLabels { op: op.into(), status: response.status().as_u16() }).inc();
        response
    }

    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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

    /// Hands `change` to the store once the replica is ready.
    pub(crate) async fn apply(&self, change: Change) -> Result<Arc<Snapshot>, ApiError> {
        if let Some(e) = not_ready(&self.store.served().readiness()) {
            return Err(e);
        }
        Ok(self.store.apply(change).await?)
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
    let change = Change::Register { service: service.into(), group: group.into(), cluster: body.cluster.clone() };
    let snap = api.apply(change).await?;
    tracing::info!(service, group, cluster = %body.cluster, version = snap.version, "registered");
    Ok(Json(json!({
        "version": snap.version, "epoch": snap.epoch, "service": service, "group": group, "cluster": body.cluster,
    }))
    .into_response())
}

async fn admin_delete(api: &Api, service: &str, group: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    api.authorize(headers)?;
    check_names(service, group)?;
    let snap = api.apply(Change::Unregister { service: service.into(), group: group.into() }).await?;
    tracing::info!(service, group, version = snap.version, "unregistered");
    Ok(Json(json!({ "version": snap.version, "epoch": snap.epoch, "service": service, "group": group }))
        .into_response())
}

/// `PUT /v1/table`: replaces services, groups and the base group with a
/// validated table (its `version` and `epoch` are ignored).
async fn admin_put_table(api: &Api, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    api.authorize(headers)?;
    let limits = api.store.served().limits;
    let raw = RawTable::from_json(body, &limits)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_table", e.to_string()))?;
    // Sources and rules are replaced only when the body names them (even
    // as an empty list), which the parsed table cannot tell.
    let present: Present = serde_json::from_slice(body).unwrap_or_default();
    let change = Change::ReplaceTable {
        table: Box::new(raw),
        with_sources: present.sources.is_some(),
        with_rules: present.rules.is_some(),
    };
    let snap = api.apply(change).await?;
    tracing::info!(version = snap.version, services = snap.table().service_count(), "table replaced");
    Ok(Json(json!({ "version": snap.version, "epoch": snap.epoch })).into_response())
}

/// Which optional parts a `PUT /v1/table` body has.
#[derive(Deserialize, Default)]
struct Present {
    sources: Option<serde::de::IgnoredAny>,
    rules: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ResolveQuery {
    service: String,
    group: Option<String>,
    strict: Option<String>,
    /// A client address: its source binding, else the table's address-only
    /// rules, pick the group (`group=` wins).
    client: Option<String>,
    /// The port a `{port}` cluster is for (the service's default without it).
    port: Option<String>,
}

/// The same decision the filter makes, for scripts and queue consumers.
async fn resolve(State(api): State<Arc<Api>>, Query(q): Query<ResolveQuery>) -> Response {
    if let Some(g) = q.group.as_deref().filter(|g| !is_valid_group(g.as_bytes())) {
        return ApiError::new(StatusCode::BAD_REQUEST, "invalid_group", format!("{g:?} is not a valid group name"))
            .into_response();
    }
    let client = match q.client.as_deref().map(str::parse::<std::net::IpAddr>) {
        None => None,
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => {
            let detail = format!("client: {:?} is not an IP address", q.client.as_deref().unwrap_or_default());
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_client", detail).into_response();
        }
    };
    let port = match q.port.as_deref().map(str::parse::<u16>) {
        None => None,
        Some(Ok(p)) if p > 0 => Some(p),
        Some(_) => {
            let detail = format!("port: {:?} is not a port (1 to 65535)", q.port.as_deref().unwrap_or_default());
            return ApiError::new(StatusCode::BAD_REQUEST, "invalid_port", detail).into_response();
        }
    };
    let served = api.store.served();
    if let Some(e) = not_ready(&served.readiness()) {
        return e.into_response();
    }
    let snap = served.current();
    let picked = match (&q.group, client) {
        (None, Some(ip)) => resolve_client(snap.table(), ip, crate::runtime_api::now_s()),
        _ => None,
    };
    let group = q.group.as_deref().or(picked.as_ref().map(|p| p.group.as_str()));
    let strict = q.strict.as_deref().map(str::as_bytes);
    let decision = decide_service(snap.table(), &q.service, group, strict, port);
    let Some(mut body) = crate::console::decision_json(&decision) else {
        return unknown_service(&q.service).into_response();
    };
    body["version"] = json!(snap.version);
    if let Some(ip) = client {
        body["client"] = json!(ip.to_string());
        body["picked_by"] = match (&q.group, picked.map(|p| p.by)) {
            (Some(_), _) => json!({ "by": "group" }),
            (None, Some(PickedBy::Binding { index, expires_at })) => json!({
                "by": "source", "field": format!("sources[{index}]"),
                "cidr": snap.raw.sources.get(index).map(|s| s.cidr.as_str()), "expires_at": expires_at,
            }),
            (None, Some(PickedBy::Rule { index })) => json!({ "by": "rule", "field": format!("rules[{index}]") }),
            (None, None) => json!({ "by": "none" }),
        };
    }
    Json(body).into_response()
}

/// Liveness: the process answers.
async fn healthz(State(api): State<Arc<Api>>) -> Response {
    Json(json!({ "status": "ok", "version": api.store.served().current().version })).into_response()
}

/// Readiness: 503 until the whole state is loaded; once loaded, ready even
/// while the store is unreachable (the detail says so).
async fn readyz(State(api): State<Arc<Api>>) -> Response {
    let served = api.store.served();
    let readiness = served.readiness();
    if let Some(e) = not_ready(&readiness) {
        return e.into_response();
    }
    let snap = served.current();
    let mut body = json!({ "status": "ready", "version": snap.version, "epoch": snap.epoch });
    if let Readiness::Unreachable(detail) = readiness {
        body["detail"] = json!(detail);
    }
    Json(body).into_response()
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], api.metrics.encode())
        .into_response()
}
