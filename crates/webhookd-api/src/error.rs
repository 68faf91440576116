//! Errors in Label Studio's envelope: `{"id","status_code","version","detail","exc_info","validation_errors"}`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
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
    /// 409: the request conflicts with what is under way.
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 503 with `Retry-After`: a dependency (the database pool, the broker, DNS) failed or did not answer in
    /// time.
    #[error("{0}")]
    Unavailable(String),
    /// 429 with `Retry-After`: the organization's rate limit of a route that sends requests.
    #[error("{detail}")]
    RateLimited {
        /// What was limited, and at what rate.
        detail: String,
        /// When the next request would be allowed.
        retry_after: Duration,
    },
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

/// The `Retry-After` of a 503, in seconds.
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

impl From<webhookd_store::PoolError> for ApiError {
    fn from(e: webhookd_store::PoolError) -> Self {
        match e {
            webhookd_store::PoolError::Timeout(_) => ApiError::Unavailable(
                "The database did not provide a connection in time (all are busy or it is not answering). \
                 Retry the request."
                    .into(),
            ),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<webhookd_store::StoreError> for ApiError {
    fn from(e: webhookd_store::StoreError) -> Self {
        // The pool's sessions wait for a lock no longer than the dependency limit (`lock_timeout`).
        if e.is_lock_not_available() {
            tracing::warn!(error = %e, sqlstate = e.sqlstate(), "API request gave up waiting for a lock");
            return ApiError::Unavailable(
                "Another transaction holds the rows this request needs, and did not release them in time. \
                 Retry the request."
                    .into(),
            );
        }
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER_SECS),
            // Whole seconds, rounded up: a client that waits that long is let through.
            ApiError::RateLimited { retry_after, .. } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            _ => None,
        };
        let (status, detail, validation_errors) = match self {
            ApiError::Validation(errors) => (
                StatusCode::BAD_REQUEST,
                "Validation error".to_owned(),
                json!(errors),
            ),
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m, json!({})),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.to_owned(), json!({})),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "Not found.".to_owned(), json!({})),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m, json!({})),
            ApiError::PayloadTooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, m, json!({})),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m, json!({})),
            ApiError::RateLimited { detail, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, detail, json!({}))
            }
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
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
