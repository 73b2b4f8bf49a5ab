//! The runtime half of the admin API (SPEC "Source bindings", "Runtime
//! rules"): `PUT`/`DELETE /v1/sources/<ip>[/<len>]`, `GET /v1/sources`,
//! `GET`/`PUT /v1/rules`. Every bad input is a `400` naming its field, and
//! nothing changes; the table's own validation runs on the result too.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use isogroup_core::group::is_valid_group;
use isogroup_core::RawTable;
use serde_json::{json, Value};

use super::error::ApiError;
use super::Api;
use crate::store::Change;

/// SPEC: a time to live of 1 s to 30 days; none: no expiry.
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/sources", get(list_sources))
        .route("/v1/sources/{ip}", put(bind_host).delete(unbind_host))
        .route("/v1/sources/{ip}/{len}", put(bind_range).delete(unbind_range))
        .route("/v1/rules", get(list_rules).put(set_rules))
}

/// Hands a sources/rules change to the store. A store that cannot keep
/// them (a read-only table file) refuses; say what that means here.
async fn apply(api: &Api, change: Change) -> Result<Arc<crate::store::Snapshot>, ApiError> {
    api.apply(change).await.map_err(|e| match e.code() {
        code @ ("read_only_source" | "managed_by_kubernetes") => {
            ApiError::new(StatusCode::CONFLICT, code, "this store does not keep source bindings and runtime rules")
        }
        _ => e,
    })
}

fn bad(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", detail)
}

/// The range a path names, canonical (`address/len`), or a 400 naming `ip`
/// or `prefix_len`.
pub fn parse_range(ip: &str, len: Option<&str>) -> Result<String, ApiError> {
    let addr: IpAddr = ip.parse().map_err(|_| bad(format!("ip: {ip:?} is not an IP address")))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| bad(format!("prefix_len: {l:?} is not a prefix length 0 to {max}")))?,
    };
    let written = format!("{addr}/{prefix}");
    let cidr =
        isogroup_core::cidr::Cidr::parse_network(&written).map_err(|e| bad(format!("prefix_len: {written}: {e}")))?;
    // An IPv4-mapped address is its IPv4 range, as the filter sees it.
    Ok(format!("{}/{}", cidr.network(), cidr.prefix()))
}

/// `{"group": "…", "ttl_s": 3600}`: (group, ttl), each checked by name.
pub fn parse_binding(body: &[u8]) -> Result<(String, Option<u64>), ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("expected JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected {\"group\": \"…\", \"ttl_s\": …}",
        ));
    };
    if let Some(key) = fields.keys().find(|k| *k != "group" && *k != "ttl_s") {
        return Err(bad(format!("{key}: unknown field (expected group, ttl_s)")));
    }
    let group = match fields.get("group") {
        Some(Value::String(g)) if is_valid_group(g.as_bytes()) => g.clone(),
        Some(Value::String(g)) => return Err(bad(format!("group: {g:?} is not a valid group name"))),
        Some(other) => return Err(bad(format!("group: expected a string, got {other}"))),
        None => return Err(bad("group: missing".into())),
    };
    let ttl = match fields.get("ttl_s") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64().filter(|t| (1..=MAX_TTL_S).contains(t)) {
            Some(t) => Some(t),
            None => return Err(bad(format!("ttl_s: {n} is not 1 to {MAX_TTL_S} seconds (30 days)"))),
        },
        Some(other) => return Err(bad(format!("ttl_s: expected seconds (1 to {MAX_TTL_S}) or null, got {other}"))),
    };
    Ok((group, ttl))
}

async fn bind_host(
    State(api): State<Arc<Api>>,
    Path(ip): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let result = match api.authorized_body(&headers, body, super::MAX_BODY).await {
        Ok(body) => bind(&api, &ip, None, &body).await,
        Err(e) => Err(e),
    };
    api.admin_result("bind_source", result)
}

async fn bind_range(
    State(api): State<Arc<Api>>,
    Path((ip, len)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let result = match api.authorized_body(&headers, body, super::MAX_BODY).await {
        Ok(body) => bind(&api, &ip, Some(&len), &body).await,
        Err(e) => Err(e),
    };
    api.admin_result("bind_source", result)
}

async fn unbind_host(State(api): State<Arc<Api>>, Path(ip): Path<String>, headers: HeaderMap) -> Response {
    let result = unbind(&api, &ip, None, &headers).await;
    api.admin_result("unbind_source", result)
}

async fn unbind_range(
    State(api): State<Arc<Api>>,
    Path((ip, len)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = unbind(&api, &ip, Some(&len), &headers).await;
    api.admin_result("unbind_source", result)
}

async fn bind(api: &Api, ip: &str, len: Option<&str>, body: &[u8]) -> Result<Response, ApiError> {
    // `authorized_body` checked the token before reading the body.
    let cidr = parse_range(ip, len)?;
    let (group, ttl) = parse_binding(body)?;
    let expires_at = ttl.map(|t| crate::store::now_s() + t);
    let change = Change::BindSource { cidr: cidr.clone(), group: group.clone(), expires_at };
    let snap = apply(api, change).await?;
    tracing::info!(%cidr, %group, ?expires_at, version = snap.version, "source bound");
    Ok(Json(json!({
        "version": snap.version, "epoch": snap.epoch, "cidr": cidr, "group": group, "expires_at": expires_at,
    }))
    .into_response())
}

async fn unbind(api: &Api, ip: &str, len: Option<&str>, headers: &HeaderMap) -> Result<Response, ApiError> {
    api.authorize(headers)?;
    let cidr = parse_range(ip, len)?;
    let snap = apply(api, Change::UnbindSource { cidr: cidr.clone() }).await?;
    tracing::info!(%cidr, version = snap.version, "source unbound");
    Ok(Json(json!({ "version": snap.version, "epoch": snap.epoch, "cidr": cidr })).into_response())
}

/// The bindings in force (expired ones, about to be deleted, are left out).
/// Readable like the table itself, which carries them.
async fn list_sources(State(api): State<Arc<Api>>) -> Response {
    if let Some(e) = api.refuse_read() {
        return e.into_response();
    }
    let served = api.store.served();
    let snap = served.current();
    let now = crate::store::now_s();
    let sources: Vec<_> = snap.raw.sources.iter().filter(|s| s.expires_at.is_none_or(|t| now < t)).collect();
    Json(json!({ "version": snap.version, "epoch": snap.epoch, "now": now, "sources": sources })).into_response()
}

async fn list_rules(State(api): State<Arc<Api>>) -> Response {
    if let Some(e) = api.refuse_read() {
        return e.into_response();
    }
    let served = api.store.served();
    let snap = served.current();
    Json(json!({ "version": snap.version, "epoch": snap.epoch, "rules": snap.raw.rules })).into_response()
}

async fn set_rules(State(api): State<Arc<Api>>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let result = match api.authorized_body(&headers, body, super::MAX_BODY).await {
        Ok(body) => put_rules(&api, &body).await,
        Err(e) => Err(e),
    };
    api.admin_result("set_rules", result)
}

/// The body is the whole list; each rule is read with the table's own
/// (strict) parser, so an error names `rules[i].<field>`.
async fn put_rules(api: &Api, body: &[u8]) -> Result<Response, ApiError> {
    // `authorized_body` checked the token before reading the body.
    let mut wrapped = Vec::with_capacity(body.len() + 12);
    wrapped.extend_from_slice(b"{\"rules\":");
    wrapped.extend_from_slice(body);
    wrapped.push(b'}');
    let list: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("rules: expected JSON: {e}")))?;
    if !list.is_array() {
        return Err(bad("rules: expected a list of rules".into()));
    }
    let raw = RawTable::from_json(&wrapped, &api.store.served().limits).map_err(|e| bad(e.to_string()))?;
    let count = raw.rules.len();
    let snap = apply(api, Change::SetRules(raw.rules)).await?;
    tracing::info!(rules = count, version = snap.version, "runtime rules set");
    Ok(Json(json!({ "version": snap.version, "epoch": snap.epoch, "rules": snap.raw.rules })).into_response())
}

#[cfg(test)]
mod tests {
    use super::{parse_binding, parse_range};

    #[test]
    fn ranges() {
        // (ip, len, canonical range or the error's start)
        let cases: &[(&str, Option<&str>, Result<&str, &str>)] = &[
            ("192.0.2.7", None, Ok("192.0.2.7/32")),
            ("10.1.0.0", Some("16"), Ok("10.1.0.0/16")),
            ("0.0.0.0", Some("0"), Ok("0.0.0.0/0")),
            ("2001:db8::", Some("32"), Ok("2001:db8::/32")),
            ("2001:db8::1", None, Ok("2001:db8::1/128")),
            ("10.1.2.3", Some("16"), Err("prefix_len: 10.1.2.3/16: host bits set past the prefix length")),
            ("::ffff:10.0.0.7", None, Ok("10.0.0.7/32")),
            ("10.1.0.0", Some("33"), Err("prefix_len: \"33\" is not a prefix length 0 to 32")),
            ("10.1.0.0", Some("-1"), Err("prefix_len: \"-1\" is not a prefix length")),
            ("10.1.0.0", Some("x"), Err("prefix_len: \"x\" is not")),
            ("300.1.1.1", None, Err("ip: \"300.1.1.1\" is not an IP address")),
            ("<script>", None, Err("ip: \"<script>\" is not an IP address")),
            ("fe80::1%eth0", None, Err("ip: ")),
            ("", None, Err("ip: \"\"")),
        ];
        for &(ip, len, want) in cases {
            match (parse_range(ip, len), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(got), Err(want)) => assert!(got.detail().starts_with(want), "{ip} {len:?}: {}", got.detail()),
                (Ok(got), Err(want)) => unreachable!("{ip} {len:?}: {got}, want {want}"),
                (Err(got), Ok(want)) => unreachable!("{ip} {len:?}: {}, want {want}", got.detail()),
            }
        }
    }

    #[test]
    fn bindings() {
        /// (body, (group, ttl) or the error's start)
        type Case = (&'static str, Result<(&'static str, Option<u64>), &'static str>);
        let cases: &[Case] = &[
            (r#"{"group": "feature-1", "ttl_s": 3600}"#, Ok(("feature-1", Some(3600)))),
            (r#"{"group": "feature-1"}"#, Ok(("feature-1", None))),
            (r#"{"group": "feature-1", "ttl_s": null}"#, Ok(("feature-1", None))),
            (r#"{"group": "g", "ttl_s": 1}"#, Ok(("g", Some(1)))),
            (r#"{"group": "g", "ttl_s": 2592000}"#, Ok(("g", Some(2_592_000)))),
            (r#"{"group": "g", "ttl_s": 2592001}"#, Err("ttl_s: 2592001 is not 1 to 2592000 seconds")),
            (r#"{"group": "g", "ttl_s": 0}"#, Err("ttl_s: 0 is not 1 to")),
            (r#"{"group": "g", "ttl_s": -5}"#, Err("ttl_s: -5 is not 1 to")),
            (r#"{"group": "g", "ttl_s": 1.5}"#, Err("ttl_s: 1.5 is not 1 to")),
            (r#"{"group": "g", "ttl_s": "1h"}"#, Err("ttl_s: expected seconds")),
            (r#"{"group": "<b>x</b>"}"#, Err("group: \"<b>x</b>\" is not a valid group name")),
            (r#"{"group": "Feature"}"#, Err("group: \"Feature\" is not a valid group name")),
            (r#"{"group": 7}"#, Err("group: expected a string")),
            (r#"{"ttl_s": 7}"#, Err("group: missing")),
            (r#"{"group": "g", "until": 7}"#, Err("until: unknown field")),
            (r#"["g"]"#, Err("expected {")),
            ("nope", Err("expected JSON")),
        ];
        for &(body, want) in cases {
            match (parse_binding(body.as_bytes()), want) {
                (Ok((g, t)), Ok((wg, wt))) => assert_eq!((g.as_str(), t), (wg, wt), "{body}"),
                (Err(got), Err(want)) => assert!(got.detail().starts_with(want), "{body}: {}", got.detail()),
                (Ok(got), Err(want)) => unreachable!("{body}: {got:?}, want {want}"),
                (Err(got), Ok(want)) => unreachable!("{body}: {}, want {want:?}", got.detail()),
            }
        }
    }
}
