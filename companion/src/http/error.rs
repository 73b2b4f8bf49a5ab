//! Every error answer: `{"error": …, "detail": …}` with a status, and how
//! a store's refusal maps onto one.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::store::{ChangeError, Readiness};

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
            ChangeError::TooLarge(_) => (StatusCode::BAD_REQUEST, "value_too_large"),
            ChangeError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ChangeError::Unreadable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unreadable"),
            ChangeError::WriteFailed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "write_failed"),
        };
        ApiError::new(status, error, e.to_string())
    }
}

pub(crate) fn not_ready(readiness: &Readiness) -> Option<ApiError> {
    match readiness {
        Readiness::Loading(detail) => Some(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", detail.clone())),
        Readiness::Ready | Readiness::Degraded(_) | Readiness::Unreachable(_) => None,
    }
}
