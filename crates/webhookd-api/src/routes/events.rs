//! `POST /api/events/`: HTTP ingest for producers without AMQP — the same envelope, validated, published
//! with confirm, answered only once the broker has it.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use webhookd_core::{Event, EventError};
use webhookd_store::events::{self, KeyState};

use crate::error::ApiError;
use crate::extract::{JsonBody, Principal};
use crate::state::{ApiSettings, AppState};

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// What a request body may add to the envelope it becomes (whitespace, escapes), on top of
/// `WEBHOOKD_MAX_EVENT_BYTES`, and still reach the size check.
const BODY_SLACK: usize = 64 * 1024;

/// The body limit of `POST /api/events/`: room for the largest event and some formatting, and never less
/// than `WEBHOOKD_MAX_BODY_BYTES`. A body beyond it gets the generic 413.
pub fn body_limit(settings: &ApiSettings) -> usize {
    settings
        .max_event_bytes
        .saturating_add(BODY_SLACK)
        .max(settings.max_body_bytes)
}

/// The envelope of `event` as published under `id`, or a 413 naming the limit if it is larger.
pub(crate) fn envelope_within_limit(
    event: &mut Event,
    id: &str,
    max: usize,
) -> Result<String, ApiError> {
    event.producer_id = Some(id.to_owned());
    let envelope = event.to_envelope().to_string();
    if envelope.len() > max {
        return Err(ApiError::PayloadTooLarge(format!(
            "The event is {} bytes as published, larger than the {max} bytes allowed (WEBHOOKD_MAX_EVENT_BYTES).",
            envelope.len()
        )));
    }
    Ok(envelope)
}

/// A 400 for an invalid event, under the name of the field at fault.
pub(crate) fn event_error(e: EventError) -> ApiError {
    let field = match &e {
        EventError::Field { field, .. } => *field,
        EventError::Version(_) => "version",
        EventError::UnknownAction(_) => "action",
        EventError::OrganizationOnly(_) => "project",
        EventError::PayloadShape { .. } => "payload",
        EventError::NotJson(_) | EventError::NotObject => "non_field_errors",
    };
    ApiError::field(field, e.to_string())
}

/// Publishes `envelope` (event `id`) and returns once the broker has confirmed it; otherwise a 503 with
/// `Retry-After` whose detail says why and ends with `retry`, what the client should do.
pub(crate) async fn publish_confirmed(
    state: &AppState,
    action: &str,
    envelope: &str,
    id: &str,
    retry: &str,
) -> Result<(), ApiError> {
    state
        .broker
        .publish_event(action, envelope.as_bytes(), id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("The event was not published: {e}. {retry}")))
}

/// Publishes one event (version-1 envelope; `organization` defaults to the token's).
#[utoipa::path(post, path = "/api/events/", tag = "events",
    request_body(content = Object, description = "A version-1 event envelope (docs/events.md)"),
    params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key publishes once")),
    responses((status = 202, body = Object, description = "{\"id\": event id}: the broker has it"),
        (status = 400), (status = 401), (status = 413), (status = 503)))]
pub async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(mut body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(obj) = body.as_object_mut() else {
        return Err(event_error(EventError::NotObject));
    };
    match obj.get("organization") {
        None | Some(Value::Null) => {
            obj.insert("organization".into(), json!(principal.organization));
        }
        Some(v) if v.as_i64() == Some(principal.organization) => {}
        Some(_) => {
            return Err(ApiError::field(
                "organization",
                format!(
                    "must be your token's organization ({}) or left out",
                    principal.organization
                ),
            ))
        }
    }
    let mut event = Event::from_value(body, &state.settings.catalog).map_err(event_error)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => Some(k.to_owned()),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "The Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters."
                )))
            }
        },
    };
    // A new id unless the envelope has one; with a key, the id is recorded with it, and a retry of the request
    // within the key's window publishes that same id again.
    let mut id = event
        .producer_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let max = state.settings.max_event_bytes;
    // Checked before the key is claimed, so that a refused event leaves no pending key behind.
    let mut envelope = envelope_within_limit(&mut event, &id, max)?;
    // No database connection is held while the broker is waited on: the key is claimed with one, which goes
    // back to the pool before the publish, and marked published with another.
    if let Some(key) = &key {
        let client = state.pool.get().await?;
        let ttl = state.settings.idempotency_key_ttl;
        match events::claim_idempotency_key(&**client, principal.organization, key, &id, ttl)
            .await?
        {
            KeyState::New => {}
            KeyState::Pending(earlier) => {
                id = earlier;
                envelope = envelope_within_limit(&mut event, &id, max)?;
            }
            KeyState::Published(earlier) => {
                return Ok((StatusCode::ACCEPTED, Json(json!({"id": earlier}))))
            }
        }
    }
    publish_confirmed(
        &state,
        &event.action,
        &envelope,
        &id,
        "Retry the request (with the same Idempotency-Key) to publish it.",
    )
    .await?;
    if let Some(key) = &key {
        let client = state.pool.get().await?;
        events::mark_key_published(&**client, principal.organization, key).await?;
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id}))))
}
