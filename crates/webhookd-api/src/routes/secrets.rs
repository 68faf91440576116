//! A webhook's signing secret: read it, rotate it (the old one keeps signing for a grace period).

use axum::extract::{Path, State};
use axum::Json;
use serde::Serialize;
use webhookd_store::webhooks;

use crate::error::ApiError;
use crate::extract::Principal;
use crate::routes::{drf_time, parse_id};
use crate::state::AppState;

/// A signing secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Secret {
    /// `whsec_…`: verify `webhook-signature` with it (any Standard Webhooks library).
    pub key: String,
    /// After a rotation: until when the previous secret still signs too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_valid_until: Option<String>,
}

/// The webhook's current signing secret.
#[utoipa::path(get, path = "/api/webhooks/{id}/secret/", tag = "secrets",
    responses((status = 200, body = Secret), (status = 404)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Secret>, ApiError> {
    let id = parse_id(&id)?;
    let client = state.pool.get().await?;
    let key = webhooks::webhook_secret(&**client, principal.organization, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(Secret {
        key,
        previous_valid_until: None,
    }))
}

/// Replaces the secret; requests are signed with both until the grace period ends.
#[utoipa::path(post, path = "/api/webhooks/{id}/secret/rotate/", tag = "secrets",
    responses((status = 200, body = Secret), (status = 404)))]
pub async fn rotate(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Secret>, ApiError> {
    let id = parse_id(&id)?;
    let grace = state.settings.secret_grace;
    let mut client = state.pool.get().await?;
    let key = webhooks::rotate_secret(&mut client, principal.organization, id, grace)
        .await?
        .ok_or(ApiError::NotFound)?;
    let until = chrono::Utc::now() + chrono::Duration::from_std(grace).unwrap_or_default();
    Ok(Json(Secret {
        key,
        previous_valid_until: Some(drf_time(until)),
    }))
}
