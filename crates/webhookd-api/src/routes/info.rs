//! `GET /api/webhooks/info/`: the action catalog, as Label Studio shows it (no token needed).

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::state::AppState;

/// Query of the info endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct InfoQuery {
    /// `true`: only organization-only actions; any other value: only the others; absent: all.
    #[serde(rename = "organization-only")]
    pub organization_only: Option<String>,
}

/// Every action with its name, description, key and organization-only flag, in Label Studio's order.
#[utoipa::path(get, path = "/api/webhooks/info/", tag = "webhooks", params(InfoQuery), security(()),
    responses((status = 200, description = "Actions by name", body = Object)))]
pub async fn info(State(state): State<AppState>, Query(q): Query<InfoQuery>) -> Json<Value> {
    let wanted = q.organization_only.map(|v| v == "true");
    let mut out = Map::new();
    for spec in state.settings.catalog.iter() {
        if wanted.is_some_and(|w| w != spec.organization_only) {
            continue;
        }
        out.insert(
            spec.action.clone(),
            json!({"name": spec.name, "description": spec.description, "key": spec.key,
                   "organization-only": spec.organization_only}),
        );
    }
    Json(Value::Object(out))
}
