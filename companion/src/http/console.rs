//! The lane console (`GET /ui/`): static assets compiled into the binary, the
//! JSON it reads beyond the table (`/v1/matrix`, `/v1/console`, `/v1/whoami`),
//! and the security headers every answer carries. The page is plain
//! HTML/CSS/JS: no build step, nothing fetched from anywhere else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::render::matrix_json;
use super::Api;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Same-origin only: no inline script or style, no frames, no plugins.
/// Cross-site pages can neither frame the console nor read its answers (no
/// CORS headers anywhere), and writes need a bearer header they cannot set.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/ui/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/ui/app.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/v1/matrix", get(matrix))
        .route("/v1/console", get(console))
        .route("/v1/whoami", get(whoami))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Added to every answer (JSON included: a browser that is tricked into
/// rendering one still runs nothing).
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    response
}

/// What the page needs to know about this companion.
async fn console(State(api): State<Arc<Api>>) -> Response {
    let snap = api.store.served().current();
    let base = snap.table().group_name(snap.table().base());
    Json(json!({ "admin": api.token.is_some(), "gateway_url": api.gateway_url, "base_group": base })).into_response()
}

/// The caller's address as this companion sees it (the direct peer: behind a
/// proxy, the proxy's), for "bind my machine".
async fn whoami(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    Json(json!({ "address": ip.to_string() })).into_response()
}

/// `GET /v1/matrix`: every service × every group, each cell the decision
/// `/v1/resolve` gives, plus each group's lane (instances, chain).
async fn matrix(State(api): State<Arc<Api>>) -> Response {
    if let Some(e) = api.refuse_read() {
        return e.into_response();
    }
    let served = api.store.served();
    let snap = served.current();
    let body = api.matrix.get_or_build((snap.epoch.clone(), snap.version), || {
        let mut body = matrix_json(&snap.raw, snap.table());
        body["version"] = json!(snap.version);
        body["epoch"] = json!(snap.epoch);
        Bytes::from(body.to_string())
    });
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
