//! `POST /api/relay/label-studio/`: the body Label Studio sends to a webhook, published as the version-1
//! event it stands for, so that Label Studio's webhook can point at webhookd (with `Authorization: Token
//! <key>` as a static header) and webhookd delivers it, retried and signed, to the organization's webhooks,
//! with the body Label Studio would have sent them.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};
use webhookd_core::relay::event_from_label_studio;

use crate::error::ApiError;
use crate::extract::{JsonBody, Principal};
use crate::routes::events::{envelope_within_limit, event_error, publish_confirmed};
use crate::state::AppState;

/// Publishes the event of a body Label Studio sent to a webhook, for the token's organization.
#[utoipa::path(post, path = "/api/relay/label-studio/", tag = "events",
    request_body(content = Object, description = "The body Label Studio sends to a webhook: \
        {\"action\": …, \"project\": {…}, …} (docs/api.md)"),
    responses((status = 202, body = Object, description = "{\"id\": event id}: the broker has it"),
        (status = 400), (status = 401), (status = 413), (status = 503)))]
pub async fn label_studio(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    refuse_own_deliveries(&headers)?;
    let mut event = event_from_label_studio(body, principal.organization, &state.settings.catalog)
        .map_err(event_error)?;
    // Label Studio sends each action once and never retries, so there is nothing to deduplicate: every
    // request is a new event.
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = envelope_within_limit(&mut event, &id, state.settings.max_event_bytes)?;
    publish_confirmed(
        &state,
        &event.action,
        &envelope,
        &id,
        "Retry the request to publish it.",
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"id": id}))))
}

/// Refuses a request that is one of webhookd's own deliveries. Its body is exactly a body the relay takes, so
/// a webhookd webhook pointed at the relay would publish a new event for every delivery it gets, and be sent
/// that event again, without end. Label Studio sends none of these headers.
fn refuse_own_deliveries(headers: &HeaderMap) -> Result<(), ApiError> {
    const OWN: [&str; 3] = ["webhook-id", "webhook-signature", "x-webhookd-attempt"];
    match OWN.iter().find(|h| headers.contains_key(**h)) {
        Some(h) => Err(ApiError::BadRequest(format!(
            "this request carries webhookd's own delivery header `{h}`: a webhookd webhook points at the \
             relay, which would relay its deliveries back to it without end; point that webhook elsewhere"
        ))),
        None => Ok(()),
    }
}
