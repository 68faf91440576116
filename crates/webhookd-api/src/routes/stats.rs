//! `GET /api/stats/`: the organization at a glance: its attempts over the last hour and day, and the health of
//! each of its webhooks, with those failing now marked.

use std::collections::HashMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use webhookd_store::stats::{self, AttemptCounts};
use webhookd_store::webhooks::{self, ProjectFilter};

use crate::error::ApiError;
use crate::extract::Principal;
use crate::routes::drf_time;
use crate::state::AppState;

/// Attempts in a window, by outcome (test pings included).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Counts {
    /// Every attempt.
    pub attempts: i64,
    /// Answered with a 2xx.
    pub succeeded: i64,
    /// Failed, with another attempt scheduled.
    pub failed: i64,
    /// Failed for good.
    pub dead: i64,
}

impl From<AttemptCounts> for Counts {
    fn from(c: AttemptCounts) -> Self {
        Self {
            attempts: c.attempts,
            succeeded: c.succeeded,
            failed: c.failed,
            dead: c.dead,
        }
    }
}

/// One webhook's health.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookHealth {
    pub id: i64,
    pub url: String,
    pub project: Option<i64>,
    pub is_active: bool,
    pub consecutive_failures: i32,
    pub failing_since: Option<String>,
    pub disabled_reason: Option<String>,
    /// When an attempt to it last succeeded (test pings included); null if none did within the log's retention.
    pub last_success_at: Option<String>,
    /// Failing now: its latest attempts failed (`consecutive_failures` > 0), or webhookd turned it off for
    /// failing (`disabled_reason` set while it is off).
    pub failing: bool,
}

/// The organization at a glance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// The token's organization.
    pub organization: i64,
    /// Attempts of the last 60 minutes.
    pub last_hour: Counts,
    /// Attempts of the last 24 hours.
    pub last_day: Counts,
    /// Every webhook of the organization, by id.
    pub webhooks: Vec<WebhookHealth>,
}

/// The organization's attempts over the last hour and day, and each webhook's health.
#[utoipa::path(get, path = "/api/stats/", tag = "deliveries",
    responses((status = 200, body = Stats)))]
pub async fn stats(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Stats>, ApiError> {
    let organization = principal.organization;
    let client = state.pool.get().await?;
    let recent = stats::recent_attempts(&**client, organization).await?;
    let hooks = webhooks::list_webhooks(&**client, organization, ProjectFilter::Any).await?;
    let successes: HashMap<i64, _> = stats::last_successes(&**client, organization)
        .await?
        .into_iter()
        .collect();
    let webhooks = hooks
        .into_iter()
        .map(|w| {
            let last_success = successes.get(&w.id).copied().flatten();
            WebhookHealth {
                failing: w.consecutive_failures > 0
                    || (!w.is_active && w.disabled_reason.is_some()),
                id: w.id,
                url: w.url,
                project: w.project,
                is_active: w.is_active,
                consecutive_failures: w.consecutive_failures,
                failing_since: w.failing_since.map(drf_time),
                disabled_reason: w.disabled_reason,
                last_success_at: last_success.map(drf_time),
            }
        })
        .collect();
    Ok(Json(Stats {
        organization,
        last_hour: recent.last_hour.into(),
        last_day: recent.last_day.into(),
        webhooks,
    }))
}
