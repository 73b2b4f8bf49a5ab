//! Liveness, readiness and metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::error::not_ready;
use super::Api;
use crate::store::Readiness;

pub fn routes() -> Router<Arc<Api>> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
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
    match readiness {
        Readiness::Unreachable(detail) => body["detail"] = json!(detail),
        Readiness::Degraded(detail) => {
            body["status"] = json!("degraded");
            body["detail"] = json!(detail);
        }
        Readiness::Loading(_) | Readiness::Ready => {}
    }
    let warnings = api.store.warnings();
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    Json(body).into_response()
}

async fn metrics(State(api): State<Arc<Api>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], api.metrics.encode())
        .into_response()
}
