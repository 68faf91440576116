//! Request extractors: the token principal and a JSON body whose errors use the API's envelope.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde_json::Value;
use webhookd_store::api_tokens;

use crate::error::ApiError;
use crate::state::AppState;

/// The organization a request acts for, from `Authorization: Token <key>`.
#[derive(Debug, Clone, Copy)]
pub struct Principal {
    /// The token's organization.
    pub organization: i64,
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::Unauthorized(
                "Authentication credentials were not provided.",
            ))?;
        let key = header
            .strip_prefix("Token ")
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(ApiError::Unauthorized(
                "Invalid token header. Use \"Authorization: Token <key>\".",
            ))?;
        let client = state.pool.get().await?;
        match api_tokens::authenticate(&client, key).await? {
            Some(organization) => Ok(Principal { organization }),
            None => Err(ApiError::Unauthorized("Invalid token.")),
        }
    }
}

/// A route's own body limit, when it is not `WEBHOOKD_MAX_BODY_BYTES` (a request extension, named in the 413).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A JSON request body; too large → 413, malformed → 400, both in the API's envelope.
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(state.settings.max_body_bytes, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("Request body is larger than {limit} bytes."))
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })?;
        if bytes.is_empty() {
            return Ok(JsonBody(Value::Object(Default::default())));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::BadRequest(format!("JSON parse error - {e}")))
    }
}
