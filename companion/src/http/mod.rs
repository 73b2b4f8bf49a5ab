//! The HTTP face: the table with long-poll and its admin writes (`table`),
//! resolve, health and metrics, source bindings and runtime rules
//! (`runtime`), the console (`console`, assets in `ui/`). Every handler takes
//! the one `Api`; admin writes become `store::Change`s, and nothing here
//! knows which store holds the table.

pub mod auth;
mod console;
pub mod error;
mod health;
mod render;
mod resolve;
pub mod runtime;
pub mod table;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::watch;

use crate::metrics::{AdminLabels, Metrics};
use crate::store::{Change, Snapshot, Store};
use auth::Token;
use error::{not_ready, ApiError};

/// Admin bodies are one small JSON object (`PUT /v1/table` excepted).
const MAX_BODY: usize = 16 * 1024;

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
        .merge(table::routes(max_table))
        .merge(resolve::routes())
        .merge(health::routes())
        .merge(console::routes())
        .merge(runtime::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(console::security_headers))
        .with_state(api)
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
