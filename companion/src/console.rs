//! The lane console (`GET /ui/`): static assets compiled into the binary, the
//! JSON it reads beyond the table (`/v1/matrix`, `/v1/console`, `/v1/whoami`),
//! and the security headers every answer carries. The page is plain
//! HTML/CSS/JS: no build step, nothing fetched from anywhere else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use isogroup_core::{decide_service, Decision, RawTable, Table};
use serde_json::{json, Value};

use crate::api::{not_ready, Api};

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
    let served = api.store.served();
    if let Some(e) = not_ready(&served.readiness()) {
        return e.into_response();
    }
    let snap = served.current();
    let mut body = matrix_json(&snap.raw, snap.table());
    body["version"] = json!(snap.version);
    body["epoch"] = json!(snap.epoch);
    Json(body).into_response()
}

/// The JSON of one decision, as `/v1/resolve` answers it (without version).
pub fn decision_json(decision: &Decision<'_>) -> Option<Value> {
    Some(match decision {
        Decision::PassThrough => return None,
        Decision::Route(r) => json!({
            "decision": "route", "service": r.service, "group": r.group,
            "serving_group": r.serving, "cluster": r.cluster, "fallback": r.fallback,
        }),
        Decision::FailFast(f) => json!({
            "decision": "failfast", "service": f.service, "group": f.group, "reason": f.reason.as_str(),
        }),
    })
}

pub fn matrix_json(raw: &RawTable, table: &Table) -> Value {
    let base = table.group_name(table.base()).to_owned();
    let services: Vec<&str> = table.services().map(|(_, s)| s).collect();
    // One row per service, or per port where a service lists several (a
    // `{port}` cluster differs by port).
    let rows: Vec<(&str, Option<u16>)> = table
        .services()
        .flat_map(|(id, s)| match table.ports(id) {
            ports if ports.len() > 1 => ports.iter().map(|p| (s, Some(*p))).collect::<Vec<_>>(),
            _ => vec![(s, None)],
        })
        .collect();
    let mut names: Vec<&str> = table.groups().map(|(_, g)| g).collect();
    // The base group first, then the lanes by name.
    names.sort_by_key(|g| (*g != base, *g));
    let lanes: Vec<Value> = names.iter().map(|g| lane(raw, &base, g)).collect();
    let cells: Vec<Value> = rows
        .iter()
        .flat_map(|row| names.iter().map(move |g| (*row, *g)))
        .filter_map(|((s, port), g)| {
            let mut cell = decision_json(&decide_service(table, s, Some(g), None, port))?;
            cell["port"] = json!(port);
            Some(cell)
        })
        .collect();
    let rows: Vec<Value> = rows.iter().map(|(s, p)| json!({ "service": s, "port": p })).collect();
    json!({ "base_group": base, "services": services, "rows": rows, "groups": lanes, "cells": cells })
}

/// One group: its settings, its own instances and the order it falls back in.
fn lane(raw: &RawTable, base: &str, name: &str) -> Value {
    let group = raw.groups.get(name);
    let instances: serde_json::Map<String, Value> =
        raw.services.iter().filter_map(|(s, entry)| Some((s.clone(), json!(entry.clusters.get(name)?)))).collect();
    json!({
        "name": name,
        "mode": if group.is_some_and(|g| g.mode == isogroup_core::Mode::Strict) { "strict" } else { "permissive" },
        "fallback": group.map(|g| g.fallback.clone()).unwrap_or_default(),
        "chain": chain(raw, base, name),
        "description": group.and_then(|g| g.description.clone()),
        "owner": group.and_then(|g| g.owner.clone()),
        "instances": instances,
    })
}

/// The group, its fallbacks depth first (each once), then the base group:
/// the order `decide` tries (a validated table has no cycles).
fn chain(raw: &RawTable, base: &str, name: &str) -> Vec<String> {
    fn visit(raw: &RawTable, name: &str, out: &mut Vec<String>) {
        if out.iter().any(|g| g == name) {
            return;
        }
        out.push(name.to_owned());
        for next in raw.groups.get(name).map(|g| g.fallback.as_slice()).unwrap_or_default() {
            visit(raw, next, out);
        }
    }
    let mut out = Vec::new();
    visit(raw, name, &mut out);
    if !out.iter().any(|g| g == base) {
        out.push(base.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use isogroup_core::{decide_service, Limits, RawTable, Table};
    use serde_json::json;

    use super::{decision_json, matrix_json};

    const T: &str = r#"{"version": 7, "groups": {"f1": {"fallback": ["ta", "tb"]}, "ta": {"fallback": ["tb"]},
        "tb": {}, "ts": {"mode": "strict"}},
        "services": {"r": {"hosts": ["r"], "clusters": {"base": "r0", "tb": "rb", "ts": "rs"}},
                     "s": {"hosts": ["s"], "clusters": {"base": "s0", "lone": "sl"}},
                     "p": {"hosts": ["p"], "ports": [80, 443], "clusters": {"base": "p0-{port}", "tb": "pb-{port}"}}}}"#;

    #[test]
    fn every_cell_is_the_decision_and_every_lane_its_chain() {
        let raw: RawTable = serde_json::from_str(T).unwrap();
        let table = Table::compile(&raw, "base", &Limits::default()).unwrap();
        let m = matrix_json(&raw, &table);
        let groups: Vec<&str> = m["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        // base first; a group only a cluster names ("lone") is a lane too
        assert_eq!(groups, ["base", "f1", "lone", "ta", "tb", "ts"]);
        assert_eq!(m["services"], json!(["p", "r", "s"]));
        // a service with several ports has a row per port
        assert_eq!(
            m["rows"],
            json!([{"service": "p", "port": 80}, {"service": "p", "port": 443},
                   {"service": "r", "port": null}, {"service": "s", "port": null}])
        );
        let cells = m["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 24);
        for cell in cells.iter().filter(|c| c["port"].is_null()) {
            let (s, g) = (cell["service"].as_str().unwrap(), cell["group"].as_str().unwrap());
            let mut want = decision_json(&decide_service(&table, s, Some(g), None, None)).unwrap();
            want["port"] = json!(null);
            assert_eq!(cell, &want);
        }
        let by = |name: &str| m["groups"].as_array().unwrap().iter().find(|g| g["name"] == name).unwrap().clone();
        assert_eq!(by("f1")["chain"], json!(["f1", "ta", "tb", "base"]));
        assert_eq!(by("f1")["fallback"], json!(["ta", "tb"]));
        assert_eq!(by("ts")["mode"], "strict");
        assert_eq!(by("ts")["instances"], json!({"r": "rs"}));
        assert_eq!(by("base")["chain"], json!(["base"]));
        // the cells the chain predicts
        let cell = |s: &str, g: &str| cells.iter().find(|c| c["service"] == s && c["group"] == g).unwrap().clone();
        assert_eq!(cell("r", "f1")["serving_group"], "tb");
        assert_eq!(cell("r", "f1")["fallback"], true);
        assert_eq!(cell("s", "ts")["decision"], "failfast");
        assert_eq!(cell("s", "ts")["reason"], "strict_group");
        assert_eq!(cell("s", "lone")["cluster"], "sl");
        let port = |p: u16, g: &str| {
            cells.iter().find(|c| c["service"] == "p" && c["port"] == p && c["group"] == g).unwrap().clone()
        };
        assert_eq!(port(443, "ta")["cluster"], "pb-443");
        assert_eq!(port(80, "base")["cluster"], "p0-80");
    }
}
