//! The HTTP face: the table with long-poll and its admin writes (`table`),
//! resolve, health and metrics, source bindings and runtime rules
//! (`runtime`), propagation reports (`reports`), the console (`console`, assets in `ui/`). Every handler takes
//! the one `Api`; admin writes become `store::Change`s, and nothing here
//! knows which store holds the table.

pub mod auth;
mod console;
pub mod error;
mod health;
mod render;
mod reports;
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
pub(crate) const MAX_BODY: usize = 16 * 1024;

pub struct Api {
    pub store: Arc<dyn Store>,
    pub token: Option<Token>,
    pub metrics: Arc<Metrics>,
    /// The gateway's join URL (`serve --gateway-url`), for the console's links.
    pub gateway_url: Option<String>,
    /// Flips to true on shutdown, releasing held polls at once.
    pub shutdown: watch::Receiver<bool>,
    /// Propagation reports (`POST /v1/reports`, `GET /v1/propagation`).
    pub propagation: Arc<crate::propagation::Propagation>,
    /// `/v1/matrix` costs services × groups decisions: built once per
    /// served (epoch, version), whoever asks how often.
    matrix: render::Cached,
}

pub fn router(api: Arc<Api>) -> Router {
    let router = Router::new()
        .merge(table::routes())
        .merge(resolve::routes())
        .merge(health::routes())
        .merge(console::routes())
        .merge(runtime::routes())
        .merge(reports::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(console::security_headers));
    with_panic_barrier(router, api.metrics.clone()).with_state(api)
}

/// A handler that panics answers `500` and is counted; the process and
/// every other request go on (the server profile unwinds, see Cargo.toml).
fn with_panic_barrier<S: Clone + Send + Sync + 'static>(router: Router<S>, metrics: Arc<Metrics>) -> Router<S> {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(move |_: Box<dyn std::any::Any + Send>| {
        metrics.handler_panics.inc();
        tracing::error!("a request handler panicked; answered 500");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request failed inside the companion")
            .into_response()
    }))
}

impl Api {
    pub fn new(
        store: Arc<dyn Store>,
        token: Option<Token>,
        metrics: Arc<Metrics>,
        gateway_url: Option<String>,
        shutdown: watch::Receiver<bool>,
    ) -> Api {
        let propagation = Arc::new(crate::propagation::Propagation::new(metrics.clone(), None, None));
        Api { store, token, metrics, gateway_url, shutdown, propagation, matrix: render::Cached::default() }
    }

    /// With `propagation` instead of a local one without a token.
    pub fn with_propagation(mut self, propagation: Arc<crate::propagation::Propagation>) -> Api {
        self.propagation = propagation;
        self
    }

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

    /// Checks the token, then reads the body, up to `limit` bytes: a client
    /// without the token never makes this companion read or buffer what it
    /// sends (a `PUT /v1/table` may be 64 MiB).
    pub(crate) async fn authorized_body(
        &self,
        headers: &HeaderMap,
        body: axum::body::Body,
        limit: usize,
    ) -> Result<axum::body::Bytes, ApiError> {
        self.authorize(headers)?;
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            let too_large =
                std::error::Error::source(&e).is_some_and(|inner| inner.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("the body is over {limit} bytes"),
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body could not be read: {e}"))
            }
        })
    }

    /// Why a table-derived read (`/v1/table`, `/v1/resolve`, `/v1/matrix`,
    /// `/v1/sources`, `/v1/rules`) is refused: the replica is loading, or
    /// it does not serve (a standby: `503 not_leader`).
    pub(crate) fn refuse_read(&self) -> Option<ApiError> {
        if let Some(e) = not_ready(&self.store.served().readiness()) {
            return Some(e);
        }
        self.store.not_serving().map(|detail| ApiError::from(crate::store::ChangeError::NotLeader(detail)))
    }

    /// Hands `change` to the store once the replica is ready.
    pub(crate) async fn apply(&self, change: Change) -> Result<Arc<Snapshot>, ApiError> {
        if let Some(e) = not_ready(&self.store.served().readiness()) {
            return Err(e);
        }
        Ok(self.store.apply(change).await?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;

    use axum::routing::get;
    use axum::Router;

    use crate::metrics::Metrics;

    fn boom() -> &'static str {
        panic!("a bug")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_server_goes_on() {
        let metrics = Arc::new(Metrics::new());
        let app: Router = Router::new().route("/boom", get(|| async { boom() })).route("/ok", get(|| async { "fine" }));
        let app = super::with_panic_barrier(app, metrics.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let boom = client.get(format!("{url}/boom")).send().await.unwrap();
            assert_eq!(boom.status(), 500);
            let body: serde_json::Value = boom.json().await.unwrap();
            assert_eq!(body["error"], "internal");
            let ok = client.get(format!("{url}/ok")).send().await.unwrap();
            assert_eq!(ok.text().await.unwrap(), "fine");
        }
        assert_eq!(metrics.handler_panics.get(), 3);
    }
}
