//! The table: `GET /v1/table` with long-poll, and the admin writes
//! (`PUT /v1/table`, `PUT`/`DELETE /v1/services/<s>/groups/<g>`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use isogroup_core::delta::DELTA_CONTENT_TYPE;
use isogroup_core::epoch::Stamp;
use isogroup_core::group::is_valid_group;
use isogroup_core::table::is_valid_service;
use isogroup_core::RawTable;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::error::ApiError;
use super::Api;
use crate::metrics::Metrics;
use crate::store::{Change, ChangeError, Snapshot, Store};

/// The longest hold a poller may ask for.
const MAX_WAIT_S: u64 = 300;
/// The epoch of the table served, beside `ETag: "<version>"`.
pub const EPOCH_HEADER: HeaderName = HeaderName::from_static("x-isogroup-epoch");

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/table", get(get_table).put(put_table))
        .route("/v1/services/{service}/groups/{group}", put(put_group).delete(delete_group))
}

/// A poll's parameters (`after`, `epoch`, `wait`, `delta`); others are
/// ignored. A bad value, or a parameter given twice, is a `400` naming it.
#[derive(Debug, Default, PartialEq)]
struct TableQuery {
    after: Option<u64>,
    epoch: Option<String>,
    wait: Option<u64>,
    delta: bool,
}

/// The longest `epoch` taken: epochs are `"<unix-ms>-<random>"`, far shorter.
const MAX_EPOCH_PARAM: usize = 128;

impl TableQuery {
    fn parse(query: Option<&str>) -> Result<TableQuery, ApiError> {
        let bad = |name: &str, why: &str| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", format!("{name}: {why}"))
        };
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| bad("query", &e.to_string()))?;
        let mut q = TableQuery::default();
        let mut seen = [false; 4];
        for (name, value) in pairs {
            let Some(i) = ["after", "epoch", "wait", "delta"].iter().position(|p| *p == name) else { continue };
            if std::mem::replace(&mut seen[i], true) {
                return Err(bad(&name, "given more than once"));
            }
            let number = |value: &str| value.parse::<u64>().map_err(|_| bad(&name, "expected a whole number"));
            match i {
                0 => q.after = Some(number(&value)?),
                1 if value.len() > MAX_EPOCH_PARAM => return Err(bad(&name, "longer than 128 bytes")),
                1 => q.epoch = Some(value),
                2 => q.wait = Some(number(&value)?),
                _ => {
                    q.delta = match value.as_str() {
                        "1" | "true" => true,
                        "0" | "false" => false,
                        _ => return Err(bad(&name, "expected 1 or 0")),
                    }
                }
            }
        }
        Ok(q)
    }
}

/// What a poller holds, and so which answers are news to it.
struct Poll {
    after: Option<u64>,
    epoch: Option<String>,
    /// It takes a delta onto what it holds.
    delta: bool,
    /// It takes the whole table gzipped (`Accept-Encoding: gzip`).
    gzip: bool,
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

/// The answer to a poll: the delta onto what it holds when it takes one
/// and the snapshot has it, else the whole table. Either body is the
/// snapshot's buffer, shared (`Bytes`), not copied.
fn table_response(snap: &Snapshot, poll: &Poll, metrics: &Metrics) -> Response {
    let mut headers = stamp_headers(snap);
    let delta = match (poll.delta, poll.after) {
        (true, Some(after)) => snap.delta_from(after, poll.epoch.as_deref()),
        _ => None,
    };
    let (content_type, body) = match delta {
        Some(delta) => {
            metrics.delta_answers.inc();
            (DELTA_CONTENT_TYPE, delta.clone())
        }
        None if poll.gzip => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            ("application/json", snap.json_gzip())
        }
        None => ("application/json", snap.json.clone()),
    };
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (headers, body).into_response()
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

/// `GET /v1/table[?after=v[&epoch=e]&wait=s][&delta=1]`: the table (or a
/// delta onto what the poller holds) now when it is news to the poller (see
/// `Poll::wants`), else held up to `wait` s, then 304. A held poll sees new
/// versions paced by the publish interval when it comes from a proxy
/// (`Served::subscribe_held`).
async fn get_table(State(api): State<Arc<Api>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let q = match TableQuery::parse(query.as_deref()) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    if let Some(id) = headers.get("x-isogroup-poller").and_then(|v| v.to_str().ok()) {
        api.metrics.saw_poller(id);
    }
    api.metrics.polls.inc();
    // Subscribed before serving is checked: a step-down in between is
    // not missed.
    let mut serving = api.store.serving();
    if let Some(e) = api.refuse_read() {
        return e.into_response();
    }
    let served = api.store.served();
    // Proxies (which name themselves with `x-isogroup-poller`) are paced
    // by the publish interval; the console and scripts see each write at
    // once. Subscribed before the current snapshot is read: a release
    // between the two is not missed.
    let paced = headers.contains_key("x-isogroup-poller");
    let mut held = if paced { served.subscribe_held() } else { served.subscribe() };
    let current = served.current();
    let poll = Poll {
        after: q.after.or_else(|| if_none_match(&headers)),
        epoch: q.epoch,
        delta: q.delta,
        gzip: accepts_gzip(&headers),
    };
    if let (Some(epoch), Some(after)) = (poll.epoch.as_deref(), poll.after) {
        api.store.saw_poll(epoch, after);
    }
    if poll.wants(&current) {
        return table_response(&current, &poll, &api.metrics);
    }
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_S));
    if wait.is_zero() {
        return not_modified(&current);
    }
    let _held = HeldPoll::new(&api.metrics.held_polls);
    let mut shutdown = api.shutdown.clone();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    // What a 304 names: the newest this poll was shown.
    let mut shown = current;
    loop {
        if serving.as_ref().is_some_and(|serving| !*serving.borrow()) {
            return not_leader(api.store.as_ref());
        }
        // Held polls may lag the current snapshot by the publish interval:
        // never answer with one older than what was current at the start.
        let snap = held.borrow_and_update().clone();
        if snap.stamp() >= shown.stamp() {
            if poll.wants(&snap) {
                return table_response(&snap, &poll, &api.metrics);
            }
            shown = snap;
        }
        tokio::select! {
            // A step-down answers at once, before any table it might lag.
            biased;
            () = stopped_serving(serving.as_mut()) => return not_leader(api.store.as_ref()),
            changed = held.changed() => {
                if changed.is_err() {
                    return not_modified(&shown);
                }
            }
            _ = &mut deadline => return not_modified(&shown),
            _ = shutdown.wait_for(|down| *down) => return not_modified(&shown),
        }
    }
}

/// `503 not_leader`, for a poll held when this replica stepped down.
fn not_leader(store: &dyn Store) -> Response {
    let detail = store.not_serving().unwrap_or_else(|| "this replica stepped down".to_owned());
    ApiError::from(ChangeError::NotLeader(detail)).into_response()
}

/// Ends once this replica no longer serves; never for a store that always
/// does (or once the store is gone).
async fn stopped_serving(serving: Option<&mut watch::Receiver<bool>>) {
    let stopped = match serving {
        Some(serving) => serving.wait_for(|serving| !*serving).await.is_ok(),
        None => false,
    };
    if !stopped {
        std::future::pending::<()>().await;
    }
}

/// `Accept-Encoding` names `gzip` (or `*`) without `q=0`.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let refused = parts.any(|p| p.strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()) == Some(0.0));
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !refused
        },
    )
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
    body: axum::body::Body,
) -> Response {
    let result = match api.authorized_body(&headers, body, super::MAX_BODY).await {
        Ok(body) => admin_put(&api, &service, &group, &body).await,
        Err(e) => Err(e),
    };
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

async fn put_table(State(api): State<Arc<Api>>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let max_table = api.store.served().limits.max_table_bytes;
    let result = match api.authorized_body(&headers, body, max_table).await {
        Ok(body) => admin_put_table(&api, &body).await,
        Err(e) => Err(e),
    };
    api.admin_result("put_table", result)
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

async fn admin_put(api: &Api, service: &str, group: &str, body: &[u8]) -> Result<Response, ApiError> {
    // `authorized_body` checked the token before reading the body.
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
async fn admin_put_table(api: &Api, body: &[u8]) -> Result<Response, ApiError> {
    // `authorized_body` checked the token before reading the body.
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
