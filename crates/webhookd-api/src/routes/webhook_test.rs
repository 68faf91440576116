//! `POST /api/webhooks/{id}/test/`: sends a signed PING to the webhook now, answers with the outcome, and
//! logs it like any delivery.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use webhookd_core::actions::PING;
use webhookd_core::{python_json, AttemptResult, DeliveryId, EventId};
use webhookd_dispatch::AttemptRequest;
use webhookd_store::delivery_log::{self, AttemptRow, DeliveryKey, DisableRule, Outcome};
use webhookd_store::events::{self, NewEvent};
use webhookd_store::webhooks;

use crate::error::ApiError;
use crate::extract::Principal;
use crate::rate_limit::Limited;
use crate::routes::parse_id;
use crate::state::AppState;

/// The body of a test ping, as Python's `json.dumps` writes it.
pub fn ping_body(webhook_id: i64) -> Vec<u8> {
    python_json::to_vec(&json!({"action": PING, "webhook": {"id": webhook_id}})).unwrap_or_default()
}

/// What the test got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestOutcome {
    pub delivery_id: String,
    pub event_id: String,
    /// `succeeded` (2xx) or `dead` (a test is never retried).
    pub status: String,
    pub http_status: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// Sends a signed PING to the webhook and reports the outcome.
#[utoipa::path(post, path = "/api/webhooks/{id}/test/", tag = "webhooks",
    responses((status = 200, body = TestOutcome), (status = 404),
        (status = 429, description = "the organization's test pings are over their rate; see Retry-After"),
        (status = 503)))]
pub async fn test(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<TestOutcome>, ApiError> {
    let id = parse_id(&id)?;
    state
        .rate_limits
        .check(Limited::TestPing, principal.organization)?;
    let event_id = EventId::new();
    // The webhook is loaded and the ping's event claimed with one connection, which goes back to the pool
    // while the receiver is waited on; the log row is written with another.
    let webhook = {
        let client = state.pool.get().await?;
        let webhook = webhooks::load_subscription(&**client, principal.organization, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        let envelope = json!({"version": 1, "organization": principal.organization, "action": PING,
            "project": null, "payload": {"webhook": {"id": id}}});
        events::claim_events(
            &client,
            &[NewEvent {
                id: event_id.0,
                organization: principal.organization,
                project: None,
                action: PING.to_owned(),
                producer_id: None,
                body: envelope.to_string(),
                claim_token: uuid::Uuid::new_v4(),
            }],
        )
        .await?;
        webhook
    };
    let key = DeliveryKey::new(event_id, id, principal.organization, PING, 0, None);
    let delivery_id = DeliveryId(key.delivery_id);
    let report = state
        .dispatcher
        .send(AttemptRequest {
            webhook: &webhook,
            delivery_id,
            event_id,
            action: PING,
            attempt: 1,
            body: Bytes::from(ping_body(id)),
        })
        .await;
    let succeeded = matches!(
        report.result,
        AttemptResult::Status {
            code: 200..=299,
            ..
        }
    );
    let outcome = if succeeded {
        Outcome::Succeeded
    } else {
        Outcome::Dead
    };
    let shown = TestOutcome {
        delivery_id: delivery_id.to_string(),
        event_id: event_id.to_string(),
        status: outcome.as_str().to_owned(),
        http_status: report.http_status,
        duration_ms: report.duration.as_millis() as u64,
        error: report.error.clone(),
        response_excerpt: report.excerpt.clone(),
    };
    let mut row = AttemptRow::made(key, 1, outcome, report, None);
    // A test ping says nothing of the webhook's health: it neither counts as a failure nor resets the count.
    row.health = None;
    let client = state.pool.get().await?;
    delivery_log::write_attempts(
        &client,
        uuid::Uuid::now_v7(),
        &[&row],
        &[],
        &[],
        DisableRule::NEVER,
    )
    .await?;
    Ok(Json(shown))
}
