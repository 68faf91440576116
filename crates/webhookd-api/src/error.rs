//! Errors in Label Studio's envelope: `{"id","status_code","version","detail","exc_info","validation_errors"}`.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Field name → messages, as Django REST framework reports validation errors.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 with per-field messages.
    #[error("validation error")]
    Validation(FieldErrors),
    /// 400 with a message.
    #[error("{0}")]
    BadRequest(String),
    /// 401.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 404: absent, or another organization's (never 403, which would reveal that it exists).
    #[error("not found")]
    NotFound,
    /// 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 503: the broker did not confirm.
    #[error("{0}")]
    Unavailable(String),
    /// 500; the detail is logged, not shown.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 for one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(field.to_owned(), vec![message.into()]);
        ApiError::Validation(errors)
    }
}

impl From<webhookd_store::PoolError> for ApiError {
    fn from(e: webhookd_store::PoolError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<webhookd_store::StoreError> for ApiError {
    fn from(e: webhookd_store::StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, detail, validation_errors) = match self {
            ApiError::Validation(errors) => (
                StatusCode::BAD_REQUEST,
                "Validation error".to_owned(),
                json!(errors),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m, json!({})),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.to_owned(), json!({})),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "Not found.".to_owned(), json!({})),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m, json!({})),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m, json!({})),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal server error".to_owned(),
                    json!({}),
                )
            }
        };
        let body = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "status_code": status.as_u16(),
            "version": env!("CARGO_PKG_VERSION"),
            "detail": detail,
            "exc_info": null,
            "validation_errors": validation_errors,
        });
        (status, Json(body)).into_response()
    }
}
