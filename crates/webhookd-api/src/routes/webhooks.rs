//! `/api/webhooks/`: list, create, read, update and delete webhooks, as Label Studio's API does.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use webhookd_store::webhooks::{self, CreateError, NewWebhook, ProjectFilter, WebhookRecord};

use crate::error::ApiError;
use crate::extract::{JsonBody, Principal};
use crate::routes::{drf_time, parse_id};
use crate::state::AppState;
use crate::validation::{check_actions_fit_project, check_url_reachable, parse_webhook};

/// A webhook, with Label Studio's fields in its order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: i64,
    pub organization: i64,
    pub project: Option<i64>,
    pub url: String,
    pub send_payload: bool,
    pub send_for_all_actions: bool,
    #[schema(value_type = Object)]
    pub headers: Map<String, Value>,
    pub is_active: bool,
    /// Failed attempts in a row; a success resets it (read-only).
    pub consecutive_failures: i32,
    /// When the current run of failures began; null after a success (read-only).
    pub failing_since: Option<String>,
    /// Why webhookd turned the webhook off, while it is off for that (read-only).
    pub disabled_reason: Option<String>,
    /// When webhookd turned it off (read-only).
    pub disabled_at: Option<String>,
    pub actions: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<WebhookRecord> for Webhook {
    fn from(r: WebhookRecord) -> Self {
        Self {
            id: r.id,
            organization: r.organization,
            project: r.project,
            url: r.url,
            send_payload: r.send_payload,
            send_for_all_actions: r.send_for_all_actions,
            headers: r.headers,
            is_active: r.is_active,
            consecutive_failures: r.consecutive_failures,
            failing_since: r.failing_since.map(drf_time),
            disabled_reason: r.disabled_reason,
            disabled_at: r.disabled_at.map(drf_time),
            actions: r.actions,
            created_at: drf_time(r.created_at),
            updated_at: drf_time(r.updated_at),
        }
    }
}

/// What a create or update may send (all optional on PATCH; `url` required on POST and PUT).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct WebhookWrite {
    pub project: Option<i64>,
    pub url: Option<String>,
    pub send_payload: Option<bool>,
    pub send_for_all_actions: Option<bool>,
    #[schema(value_type = Object)]
    pub headers: Option<Map<String, Value>>,
    pub is_active: Option<bool>,
    pub actions: Option<Vec<String>>,
}

/// Query of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// A project id, or `isnull` for organization-level webhooks.
    pub project: Option<String>,
}

/// The organization's webhooks (not paginated, as in Label Studio).
#[utoipa::path(get, path = "/api/webhooks/", tag = "webhooks", params(ListQuery),
    responses((status = 200, body = [Webhook]), (status = 400), (status = 401)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<Webhook>>, ApiError> {
    let filter = match q.project.as_deref() {
        None | Some("") => ProjectFilter::Any,
        Some("isnull") => ProjectFilter::OrganizationLevel,
        Some(p) => match p.parse::<i64>() {
            Ok(id) => ProjectFilter::Project(id),
            Err(_) => {
                return Err(ApiError::field(
                    "project",
                    "Select a valid choice. That choice is not one of the available choices.",
                ))
            }
        },
    };
    let client = state.pool.get().await?;
    let records = webhooks::list_webhooks(&**client, principal.organization, filter).await?;
    Ok(Json(records.into_iter().map(Webhook::from).collect()))
}

/// Creates a webhook; without `project` it is organization-level.
#[utoipa::path(post, path = "/api/webhooks/", tag = "webhooks", request_body = WebhookWrite,
    responses((status = 201, body = Webhook), (status = 400), (status = 401), (status = 413)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Webhook>), ApiError> {
    let catalog = &state.settings.catalog;
    let input = parse_webhook(&body, catalog)?;
    if input.fields.url.is_none() {
        return Err(ApiError::field("url", "This field is required."));
    }
    let new =
        NewWebhook::new(principal.organization, input.project.flatten(), "").with(input.fields);
    check_actions_fit_project(new.project, &new.actions, catalog)?;
    let settings = &state.settings;
    check_url_reachable(
        &new.url,
        &settings.network_policy,
        settings.dependency_timeout,
    )
    .await?;
    let mut client = state.pool.get().await?;
    let record = webhooks::create_webhook_limited(
        &mut client,
        &new,
        state.settings.max_webhooks_per_organization,
    )
    .await
    .map_err(|e| match e {
        CreateError::Limit { .. } => ApiError::BadRequest(format!("{e}.")),
        CreateError::Store(s) => s.into(),
    })?;
    Ok((StatusCode::CREATED, Json(record.into())))
}

/// One webhook.
#[utoipa::path(get, path = "/api/webhooks/{id}/", tag = "webhooks",
    responses((status = 200, body = Webhook), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, ApiError> {
    let id = parse_id(&id)?;
    let client = state.pool.get().await?;
    let record = webhooks::get_webhook(&**client, principal.organization, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(record.into()))
}

/// Changes only the fields sent; `project` is write-once and ignored.
#[utoipa::path(patch, path = "/api/webhooks/{id}/", tag = "webhooks", request_body = WebhookWrite,
    responses((status = 200, body = Webhook), (status = 400), (status = 404)))]
pub async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Webhook>, ApiError> {
    update(state, principal, id, body, false).await
}

/// Replaces the webhook: `url` is required and absent fields take their defaults; `project` is ignored.
#[utoipa::path(put, path = "/api/webhooks/{id}/", tag = "webhooks", request_body = WebhookWrite,
    responses((status = 200, body = Webhook), (status = 400), (status = 404)))]
pub async fn put(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Webhook>, ApiError> {
    update(state, principal, id, body, true).await
}

async fn update(
    state: AppState,
    principal: Principal,
    id: String,
    body: Value,
    replace: bool,
) -> Result<Json<Webhook>, ApiError> {
    let id = parse_id(&id)?;
    let catalog = &state.settings.catalog;
    // The connection goes back to the pool while the new URL's host is resolved.
    let existing = {
        let client = state.pool.get().await?;
        webhooks::get_webhook(&**client, principal.organization, id)
            .await?
            .ok_or(ApiError::NotFound)?
    };
    let mut changes = parse_webhook(&body, catalog)?.fields;
    if replace {
        if changes.url.is_none() {
            return Err(ApiError::field("url", "This field is required."));
        }
        // A PUT sets every field: what it leaves out goes back to Label Studio's default.
        changes = NewWebhook::new(principal.organization, existing.project, "")
            .with(changes)
            .into();
    }
    let actions = changes.actions.as_deref().unwrap_or(&existing.actions);
    check_actions_fit_project(existing.project, actions, catalog)?;
    if let Some(url) = changes.url.as_deref().filter(|u| *u != existing.url) {
        let settings = &state.settings;
        check_url_reachable(url, &settings.network_policy, settings.dependency_timeout).await?;
    }
    let mut client = state.pool.get().await?;
    let record = webhooks::update_webhook(&mut client, principal.organization, id, &changes)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(record.into()))
}

/// Deletes a webhook (its delivery log stays).
#[utoipa::path(delete, path = "/api/webhooks/{id}/", tag = "webhooks",
    responses((status = 204), (status = 404)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let client = state.pool.get().await?;
    if webhooks::delete_webhook(&**client, principal.organization, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
