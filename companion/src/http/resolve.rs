//! `GET /v1/resolve`: the decision the filter makes, for scripts and queue
//! consumers, by group or by client address.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use isogroup_core::client::{resolve_client, PickedBy};
use isogroup_core::decide_service;
use isogroup_core::group::is_valid_group;
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::render::decision_json;
use super::Api;

pub fn routes() -> Router<Arc<Api>> {
    Router::new().route("/v1/resolve", get(resolve))
}

fn unknown_service(service: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_service", format!("no service {service:?} in the table"))
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
    if let Some(e) = api.refuse_read() {
        return e.into_response();
    }
    let served = api.store.served();
    let snap = served.current();
    let picked = match (&q.group, client) {
        (None, Some(ip)) => resolve_client(snap.table(), ip, crate::store::now_s()),
        _ => None,
    };
    let group = q.group.as_deref().or(picked.as_ref().map(|p| p.group.as_str()));
    let strict = q.strict.as_deref().map(str::as_bytes);
    let decision = decide_service(snap.table(), &q.service, group, strict, port);
    let Some(mut body) = decision_json(&decision) else {
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
