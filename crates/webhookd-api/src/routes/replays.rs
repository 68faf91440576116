//! Replays and backfills: `POST /api/webhooks/{id}/replay/` sends the stored events of a window that match the
//! webhook's subscription again, as new deliveries, in event order, paced; `GET /api/replays/{id}/` follows it;
//! `DELETE /api/replays/{id}/` cancels it; `GET /api/webhooks/{id}/replays/` lists a webhook's.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;
use webhookd_store::replays::{self, CreateReplayError, NewReplay, ReplayRecord};

use crate::error::{ApiError, FieldErrors};
use crate::extract::{JsonBody, Principal};
use crate::routes::deliveries::parse_time;
use crate::routes::{drf_time, parse_id};
use crate::state::AppState;

/// Most replays a webhook's list shows.
const LIST_LIMIT: i64 = 50;

/// A replay and how far it got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replay {
    pub id: String,
    pub webhook: i64,
    pub since: String,
    pub until: String,
    /// The actions asked for; null: every action the webhook subscribes to.
    pub actions: Option<Vec<String>>,
    /// `running`, `done` (every event queued), `cancelled` or `failed`.
    pub state: String,
    pub error: Option<String>,
    /// Events in the window that match the webhook's subscription, counted when the replay was created.
    pub total: i64,
    /// Events queued so far.
    pub queued: i64,
    /// Deliveries that succeeded.
    pub sent: i64,
    /// Deliveries that ended dead.
    pub failed: i64,
    /// Deliveries not finished: queued and not ended, plus one per event not queued yet (none once cancelled).
    pub left: i64,
    pub created_at: String,
    pub finished_at: Option<String>,
}

impl From<&ReplayRecord> for Replay {
    fn from(r: &ReplayRecord) -> Self {
        Self {
            id: r.id.to_string(),
            webhook: r.webhook_id,
            since: drf_time(r.since),
            until: drf_time(r.until),
            actions: r.actions.clone(),
            state: r.state.clone(),
            error: r.error.clone(),
            total: r.total,
            queued: r.events_queued,
            sent: r.succeeded,
            failed: r.dead,
            left: r.left(),
            created_at: drf_time(r.created_at),
            finished_at: r.finished_at.map(drf_time),
        }
    }
}

/// What a replay request asks for: the window and the actions.
struct ReplayRequest {
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    actions: Option<Vec<String>>,
}

/// What a replay request asks for, each field checked and every bad one reported.
fn parse_request(body: &Value, state: &AppState) -> Result<ReplayRequest, ApiError> {
    let mut errors = FieldErrors::new();
    let mut fail = |field: &str, msg: String| errors.entry(field.to_owned()).or_default().push(msg);
    let time = |field: &str, required: bool| -> Result<Option<DateTime<Utc>>, String> {
        match body.get(field) {
            None | Some(Value::Null) if required => Err("This field is required.".into()),
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => parse_time(field, Some(s)).map_err(|_| {
                "Datetime has wrong format. Use RFC 3339, e.g. 2026-01-31T12:00:00Z.".to_owned()
            }),
            Some(_) => {
                Err("Datetime has wrong format. Use RFC 3339, e.g. 2026-01-31T12:00:00Z.".into())
            }
        }
    };
    let since = time("since", true).unwrap_or_else(|m| {
        fail("since", m);
        None
    });
    let until = time("until", false).unwrap_or_else(|m| {
        fail("until", m);
        None
    });
    let until = until.unwrap_or_else(Utc::now);
    if let Some(since) = since {
        if since >= until {
            fail("until", "Must be later than since.".into());
        }
    }
    let actions = match body.get("actions") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut actions = Vec::with_capacity(items.len());
            for item in items {
                match item.as_str() {
                    Some(a) if state.settings.catalog.get(a).is_some() => {
                        actions.push(a.to_owned())
                    }
                    _ => fail("actions", format!("{item} is not a valid choice.")),
                }
            }
            Some(actions)
        }
        Some(_) => {
            fail("actions", "Expected a list of items.".into());
            None
        }
    };
    match (errors.is_empty(), since) {
        (true, Some(since)) => Ok(ReplayRequest {
            since,
            until,
            actions,
        }),
        _ => Err(ApiError::Validation(errors)),
    }
}

/// Starts a replay of the webhook's stored events of `since`..`until` (default: now), optionally only `actions`.
#[utoipa::path(post, path = "/api/webhooks/{id}/replay/", tag = "replays",
    request_body(content = Object, description = "{\"since\": RFC 3339, \"until\": RFC 3339 (optional), \"actions\": [...] (optional)}"),
    responses((status = 202, body = Replay), (status = 400), (status = 404),
        (status = 409, description = "a replay to this webhook is running")))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Replay>), ApiError> {
    let id = parse_id(&id)?;
    let asked = parse_request(&body, &state)?;
    let new = NewReplay {
        organization: principal.organization,
        webhook_id: id,
        since: asked.since,
        until: asked.until,
        actions: asked.actions,
    };
    let mut client = state.pool.get().await?;
    match replays::create(&mut client, &new).await {
        Ok(created) => Ok((StatusCode::ACCEPTED, Json(Replay::from(&created)))),
        Err(CreateReplayError::NotFound) => Err(ApiError::NotFound),
        Err(CreateReplayError::Inactive) => Err(ApiError::BadRequest(
            "The webhook is inactive: turn it on (\"is_active\": true) before replaying events to it.".into(),
        )),
        Err(CreateReplayError::Running(running)) => Err(ApiError::Conflict(format!(
            "Replay {running} to this webhook is running; wait for it or cancel it (DELETE /api/replays/{running}/)."
        ))),
        Err(CreateReplayError::Store(e)) => Err(e.into()),
    }
}

/// What to do with one replay.
enum Op {
    Read,
    Cancel,
}

/// Replay `raw` of the organization, after `op`; 404 if it is not the organization's.
async fn one(
    state: &AppState,
    organization: i64,
    raw: &str,
    op: Op,
) -> Result<Json<Replay>, ApiError> {
    let id = Uuid::parse_str(raw).map_err(|_| ApiError::NotFound)?;
    let client = state.pool.get().await?;
    let replay = match op {
        Op::Read => replays::get(&**client, organization, id).await?,
        Op::Cancel => replays::cancel(&**client, organization, id).await?,
    };
    Ok(Json(Replay::from(&replay.ok_or(ApiError::NotFound)?)))
}

/// A replay and its progress.
#[utoipa::path(get, path = "/api/replays/{id}/", tag = "replays",
    responses((status = 200, body = Replay), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Replay>, ApiError> {
    one(&state, principal.organization, &id, Op::Read).await
}

/// Cancels a running replay: nothing more is queued, and what was queued and not yet sent is closed as dead.
#[utoipa::path(delete, path = "/api/replays/{id}/", tag = "replays",
    responses((status = 200, body = Replay), (status = 404)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Replay>, ApiError> {
    one(&state, principal.organization, &id, Op::Cancel).await
}

/// A webhook's replays, newest first (at most 50).
#[utoipa::path(get, path = "/api/webhooks/{id}/replays/", tag = "replays",
    responses((status = 200, body = [Replay]), (status = 404)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Vec<Replay>>, ApiError> {
    let id = parse_id(&id)?;
    let client = state.pool.get().await?;
    webhookd_store::webhooks::get_webhook(&**client, principal.organization, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let list = replays::list(&**client, principal.organization, id, LIST_LIMIT).await?;
    Ok(Json(list.iter().map(Replay::from).collect()))
}
