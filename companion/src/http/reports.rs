//! `POST /v1/reports` (the filters' propagation reports) and `GET
//! /v1/propagation` (the last 15 minutes of them, ranked). Each refusal
//! comes before the work it saves: the token (when `--report-token-file`),
//! the instance header, the declared length and the instance's turn all
//! before a byte of the body is read; then at most 16 KiB is read. Nothing
//! here touches the table.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::error::ApiError;
use super::Api;
use crate::metrics::ReasonLabels;
use crate::pollers::MAX_ID;
use crate::propagation::report::{self, MAX_BODY};
use crate::propagation::{now_minute, Refused};

pub const INSTANCE_HEADER: &str = "x-isogroup-poller";

pub fn routes() -> Router<Arc<Api>> {
    Router::new().route("/v1/reports", post(post_report)).route("/v1/propagation", get(propagation))
}

async fn post_report(State(api): State<Arc<Api>>, headers: HeaderMap, body: Body) -> Response {
    match take_report(&api, &headers, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err((reason, e)) => {
            api.metrics.reports_refused.get_or_create(&ReasonLabels { reason }).inc();
            e
        }
    }
}

/// Refusals carry their reason for the metric.
type Refusal = (&'static str, Response);

fn refuse(reason: &'static str, e: ApiError) -> Refusal {
    (reason, e.into_response())
}

async fn take_report(api: &Api, headers: &HeaderMap, body: Body) -> Result<(), Refusal> {
    if let Some(detail) = api.store.not_serving() {
        return Err(refuse("not_leader", ApiError::from(crate::store::ChangeError::NotLeader(detail))));
    }
    let reports = &api.propagation;
    if let Some(token) = &reports.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !token.matches(presented.as_bytes()) {
            let e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "reports need the report bearer token");
            return Err(refuse("unauthorized", e));
        }
    }
    let instance = instance(headers).map_err(|e| refuse("instance", e))?;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(refuse("too_large", too_large()));
    }
    if let Err(Refused::TooFrequent(retry_s)) = reports.admit(instance, Instant::now()) {
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_frequent",
            format!("one report per instance per 5 s; {INSTANCE_HEADER} {instance:?} retries in {retry_s} s"),
        );
        let mut response = e.into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(retry_s));
        return Err(("too_frequent", response));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>()) {
            refuse("too_large", too_large())
        } else {
            let e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body could not be read: {e}"));
            refuse("invalid", e)
        }
    })?;
    let report = report::parse(&bytes)
        .map_err(|bad| refuse("invalid", ApiError::new(StatusCode::BAD_REQUEST, "invalid_report", bad.to_string())))?;
    reports.accept(&report, now_minute());
    Ok(())
}

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("a report is at most {MAX_BODY} bytes"))
}

/// The reporting instance: `x-isogroup-poller`, 1 to 128 bytes of visible ASCII
/// (and spaces), not blank.
fn instance(headers: &HeaderMap) -> Result<&str, ApiError> {
    let bad =
        |why: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_instance", format!("{INSTANCE_HEADER}: {why}"));
    let mut values = headers.get_all(INSTANCE_HEADER).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(bad("required, once (the reporting instance's id)"));
    };
    let id = value.to_str().map_err(|_| bad("must be visible ASCII"))?;
    if id.trim().is_empty() || id.len() > MAX_ID {
        return Err(bad(&format!("1 to {MAX_ID} bytes")));
    }
    Ok(id)
}

/// `GET /v1/propagation`: advisory; a standby (Kubernetes) answers `503
/// not_leader`, as for every read the leader alone holds.
/// `?limit=N` keeps the N worst edges (the console asks for a page's worth).
async fn propagation(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    if let Some(detail) = api.store.not_serving() {
        return ApiError::from(crate::store::ChangeError::NotLeader(detail)).into_response();
    }
    let limit = match limit(query.as_deref().unwrap_or_default()) {
        Ok(limit) => limit,
        Err(e) => return e.into_response(),
    };
    match api.propagation.answer(limit).await {
        Ok(body) => Json(body).into_response(),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e).into_response(),
    }
}

fn limit(query: &str) -> Result<Option<usize>, ApiError> {
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", why);
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| bad(format!("the query could not be read: {e}")))?;
    let mut limit = None;
    for (key, value) in pairs {
        match key.as_str() {
            "limit" => {
                let n = value.parse::<usize>().map_err(|_| bad(format!("limit: {value:?} is not a count")))?;
                limit = Some(n);
            }
            other => return Err(bad(format!("{other}: unknown parameter (known: limit)"))),
        }
    }
    Ok(limit)
}
