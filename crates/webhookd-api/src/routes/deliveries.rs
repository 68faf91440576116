//! The delivery log: a webhook's attempts (keyset-paginated), one delivery with all its attempts, and
//! redelivery of one delivery or of everything that failed since a time.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;
use webhookd_broker::retry_task::now_ms;
use webhookd_broker::RetryTask;
use webhookd_core::{body, DeliveryId, Event};
use webhookd_store::delivery_log::{self, AttemptQuery, AttemptRecord, LogScope};
use webhookd_store::{events, webhooks};

use crate::error::ApiError;
use crate::extract::{JsonBody, Principal};
use crate::rate_limit::Limited;
use crate::routes::webhook_test::ping_body;
use crate::routes::{drf_time, parse_id};
use crate::state::AppState;
use webhookd_core::actions::PING;

/// Most redeliveries one recover request queues.
pub const RECOVER_LIMIT: i64 = 10_000;

/// One attempt in the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub id: i64,
    /// The delivery (the `webhook-id` header the receiver saw).
    pub delivery_id: String,
    pub event_id: String,
    pub webhook: i64,
    pub action: String,
    pub attempt: i32,
    /// `succeeded`, `failed` (another attempt is scheduled) or `dead`.
    pub status: String,
    pub http_status: Option<i16>,
    pub duration_ms: i32,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
}

impl From<&AttemptRecord> for Attempt {
    fn from(r: &AttemptRecord) -> Self {
        Self {
            id: r.id,
            delivery_id: DeliveryId(r.delivery_id).to_string(),
            event_id: r.event_id.to_string(),
            webhook: r.webhook_id,
            action: r.action.clone(),
            attempt: r.attempt,
            status: r.outcome.clone(),
            http_status: r.http_status,
            duration_ms: r.duration_ms,
            error: r.error.clone(),
            response_excerpt: r.response_excerpt.clone(),
            next_attempt_at: r.next_attempt_at.map(drf_time),
            created_at: drf_time(r.created_at),
        }
    }
}

/// A page of the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptPage {
    pub results: Vec<Attempt>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next: Option<String>,
}

/// Filters of the log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// `succeeded`, `failed` or `dead`.
    pub status: Option<String>,
    /// An action name.
    pub action: Option<String>,
    /// RFC 3339 time: attempts at or after it.
    pub since: Option<String>,
    /// RFC 3339 time: attempts before it.
    pub until: Option<String>,
    /// From the previous page's `next`.
    pub cursor: Option<String>,
    /// Page size, 1 to 200 (default 50).
    pub limit: Option<String>,
}

pub(crate) fn parse_time(
    field: &str,
    raw: Option<&str>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.filter(|s| !s.is_empty())
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::field(
                        field,
                        "Datetime has wrong format. Use RFC 3339, e.g. 2026-01-31T12:00:00Z.",
                    )
                })
        })
        .transpose()
}

fn encode_cursor(r: &AttemptRecord) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", r.created_at.timestamp_micros(), r.id))
}

fn decode_cursor(raw: &str) -> Result<(DateTime<Utc>, i64), ApiError> {
    let bad = || ApiError::field("cursor", "Invalid cursor.");
    let text = URL_SAFE_NO_PAD
        .decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let (micros, id) = text.split_once(':').ok_or_else(bad)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

/// The page of `scope`'s log that `q` asks for, newest first. The query is checked before anything is read; a
/// webhook's log is then shown only if the webhook is `organization`'s (404 otherwise).
async fn page(
    state: &AppState,
    organization: i64,
    scope: LogScope,
    q: &LogQuery,
) -> Result<AttemptPage, ApiError> {
    if let Some(s) = q.status.as_deref() {
        if !["succeeded", "failed", "dead"].contains(&s) {
            return Err(ApiError::field(
                "status",
                format!("\"{s}\" is not a valid choice (succeeded, failed, dead)."),
            ));
        }
    }
    let limit = match q.limit.as_deref() {
        None => 50,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| {
                ApiError::field("limit", "Ensure this value is an integer from 1 to 200.")
            })?,
    };
    let query = AttemptQuery {
        outcome: q.status.clone(),
        action: q.action.clone().filter(|a| !a.is_empty()),
        since: parse_time("since", q.since.as_deref())?,
        until: parse_time("until", q.until.as_deref())?,
        before: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: limit + 1,
    };
    let client = state.pool.get().await?;
    if let LogScope::Webhook(id) = scope {
        webhooks::get_webhook(&**client, organization, id)
            .await?
            .ok_or(ApiError::NotFound)?;
    }
    let mut rows = delivery_log::list_attempts(&**client, scope, &query).await?;
    let next = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(encode_cursor)
    } else {
        None
    };
    Ok(AttemptPage {
        results: rows.iter().map(Attempt::from).collect(),
        next,
    })
}

/// A webhook's delivery attempts, newest first.
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries/", tag = "deliveries", params(LogQuery),
    responses((status = 200, body = AttemptPage), (status = 400), (status = 404)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<AttemptPage>, ApiError> {
    let scope = LogScope::Webhook(parse_id(&id)?);
    Ok(Json(page(&state, principal.organization, scope, &q).await?))
}

/// The organization's delivery attempts across its webhooks (deleted ones included), newest first.
#[utoipa::path(get, path = "/api/deliveries/", tag = "deliveries", params(LogQuery),
    responses((status = 200, body = AttemptPage), (status = 400)))]
pub async fn list_organization(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<LogQuery>,
) -> Result<Json<AttemptPage>, ApiError> {
    let scope = LogScope::Organization(principal.organization);
    Ok(Json(page(&state, principal.organization, scope, &q).await?))
}

fn parse_delivery_id(raw: &str) -> Result<Uuid, ApiError> {
    let hex = raw.strip_prefix("msg_").unwrap_or(raw);
    Uuid::parse_str(hex).map_err(|_| ApiError::NotFound)
}

/// Header names whose values are never shown.
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "auth",
        "token",
        "secret",
        "key",
        "password",
        "cookie",
        "signature",
        "credential",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// One delivery: the request webhookd sends (secrets redacted) and every attempt.
#[utoipa::path(get, path = "/api/deliveries/{id}/", tag = "deliveries",
    responses((status = 200, body = Object), (status = 404)))]
pub async fn detail(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let delivery_id = parse_delivery_id(&id)?;
    let client = state.pool.get().await?;
    let attempts =
        delivery_log::delivery_attempts(&**client, principal.organization, delivery_id).await?;
    let (Some(first), Some(last)) = (attempts.first(), attempts.last()) else {
        return Err(ApiError::NotFound);
    };
    let webhook =
        webhooks::get_webhook(&**client, principal.organization, first.webhook_id).await?;
    let send_payload = webhook.as_ref().is_none_or(|w| w.send_payload);
    let body = match events::load_event(&**client, first.event_id).await? {
        Some(_) if first.action == PING => {
            Some(String::from_utf8_lossy(&ping_body(first.webhook_id)).into_owned())
        }
        Some((_, stored)) => Event::parse(stored.as_bytes(), &state.settings.catalog)
            .ok()
            .and_then(|event| {
                let spec = state.settings.catalog.get(&event.action)?;
                let bodies = body::build(&event, spec, state.settings.batch_size);
                let chunk =
                    (first.chunk.max(0) as usize).min(bodies.chunks.len().saturating_sub(1));
                Some(String::from_utf8_lossy(bodies.body(chunk, send_payload)).into_owned())
            }),
        None => None,
    };
    // The order the worker builds them in: defaults, then the webhook's static headers (which may replace
    // Content-Type and User-Agent), then webhookd's own, which nothing replaces.
    let mut headers = Map::new();
    headers.insert("content-type".into(), json!("application/json"));
    headers.insert(
        "user-agent".into(),
        json!(webhookd_dispatch::DEFAULT_USER_AGENT),
    );
    if let Some(w) = &webhook {
        for (k, v) in &w.headers {
            let lower = k.to_ascii_lowercase();
            if lower == "content-type" || lower == "user-agent" {
                headers.remove(&lower);
            }
            let shown = if is_secret_header(k) {
                json!("<redacted>")
            } else {
                v.clone()
            };
            headers.insert(k.clone(), shown);
        }
    }
    for (k, v) in [
        ("webhook-id", json!(DeliveryId(delivery_id).to_string())),
        ("webhook-timestamp", json!("<the attempt's Unix time>")),
        ("webhook-signature", json!("<redacted>")),
        ("x-webhookd-action", json!(first.action)),
        ("x-webhookd-webhook-id", json!(first.webhook_id.to_string())),
        ("x-webhookd-event-id", json!(first.event_id.to_string())),
        ("x-webhookd-attempt", json!("<the attempt number>")),
    ] {
        headers.insert(k.to_owned(), v);
    }
    Ok(Json(json!({
        "id": DeliveryId(delivery_id).to_string(),
        "event_id": first.event_id.to_string(),
        "webhook": first.webhook_id,
        "action": first.action,
        "status": last.outcome,
        "request": {"url": webhook.as_ref().map(|w| w.url.clone()), "headers": headers, "body": body},
        "attempts": attempts.iter().map(Attempt::from).collect::<Vec<_>>(),
    })))
}

fn task_for(r: &AttemptRecord, attempt: i32) -> RetryTask {
    RetryTask {
        event_id: r.event_id,
        webhook_id: r.webhook_id,
        chunk: r.chunk.max(0) as u32,
        attempt: attempt.max(1) as u32,
        due_at_ms: now_ms(),
        replay: r.replay_id,
    }
}

/// Queues a new attempt of a delivery, through the broker like any retry.
#[utoipa::path(post, path = "/api/deliveries/{id}/redeliver/", tag = "deliveries",
    responses((status = 202, body = Object), (status = 400), (status = 404),
        (status = 429, description = "the organization's redeliveries are over their rate; see Retry-After"),
        (status = 503)))]
pub async fn redeliver(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let delivery_id = parse_delivery_id(&id)?;
    state
        .rate_limits
        .check(Limited::Redeliver, principal.organization)?;
    // The connection goes back to the pool before the broker is waited on.
    let attempts = {
        let client = state.pool.get().await?;
        delivery_log::delivery_attempts(&**client, principal.organization, delivery_id).await?
    };
    let last = attempts
        .iter()
        .max_by_key(|a| a.attempt)
        .ok_or(ApiError::NotFound)?;
    if last.action == PING {
        return Err(ApiError::BadRequest(
            "A test delivery is not redelivered; send a new test instead.".into(),
        ));
    }
    let task = task_for(last, last.attempt + 1);
    state
        .broker
        .publish_retry(&task)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"delivery_id": DeliveryId(delivery_id).to_string(), "attempt": task.attempt, "status": "queued"}),
        ),
    ))
}

/// Redelivers every delivery of the webhook whose latest attempt since `since` is dead, or failed with its retry
/// over a minute overdue; a failed delivery whose retry is still pending is skipped, so it is not sent twice.
#[utoipa::path(post, path = "/api/webhooks/{id}/recover/", tag = "deliveries",
    request_body(content = Object, description = "{\"since\": \"<RFC 3339 time>\"}"),
    responses((status = 202, body = Object), (status = 400), (status = 404),
        (status = 429, description = "the organization's recover requests are over their rate; see Retry-After"),
        (status = 503)))]
pub async fn recover(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let id = parse_id(&id)?;
    state
        .rate_limits
        .check(Limited::Recover, principal.organization)?;
    let since = match body.get("since") {
        None | Some(Value::Null) => {
            return Err(ApiError::field("since", "This field is required."))
        }
        Some(Value::String(s)) => parse_time("since", Some(s))?
            .ok_or_else(|| ApiError::field("since", "This field is required."))?,
        Some(_) => {
            return Err(ApiError::field(
                "since",
                "Datetime has wrong format. Use RFC 3339, e.g. 2026-01-31T12:00:00Z.",
            ))
        }
    };
    // The connection goes back to the pool before the broker is waited on.
    let failed = {
        let client = state.pool.get().await?;
        webhooks::get_webhook(&**client, principal.organization, id)
            .await?
            .ok_or(ApiError::NotFound)?;
        delivery_log::unsuccessful_deliveries(&**client, id, since, RECOVER_LIMIT).await?
    };
    let tasks: Vec<RetryTask> = failed
        .iter()
        .filter(|r| r.action != PING)
        .map(|last| task_for(last, last.attempt + 1))
        .collect();
    let queued = state
        .broker
        .publish_retries(&tasks)
        .await
        .map_err(|(queued, e)| ApiError::Unavailable(format!("{e} (after queueing {queued})")))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"redelivered": queued}))))
}
