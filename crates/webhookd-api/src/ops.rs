//! Operations endpoints: `/healthz` (the process is alive), `/readyz` (database and broker reachable,
//! topology declared, no writer stalled) and `/metrics` (Prometheus text).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use webhookd_metrics::WriterProgress;
use webhookd_store::Pool;

use crate::broker::Broker;

/// How long one readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` checks.
pub struct Readiness {
    /// The database.
    pub pool: Pool,
    /// A worker's "connected and consuming" flag, when this process runs one.
    pub worker_broker: Option<Arc<AtomicBool>>,
    /// The API's broker connection, when this process runs the API.
    pub api_broker: Option<Arc<Broker>>,
    /// The worker's batching writers, when this process runs one: a writer that has held work it has not
    /// committed for `stall_after` makes the process unready.
    pub writers: Vec<Arc<WriterProgress>>,
    /// `WEBHOOKD_STALL_AFTER`.
    pub stall_after: Duration,
}

/// The three endpoints.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        webhookd_metrics::render(),
    )
}

async fn ready(State(r): State<Arc<Readiness>>) -> impl IntoResponse {
    let database = tokio::time::timeout(CHECK_TIMEOUT, async {
        let client = r.pool.get().await.map_err(|e| e.to_string())?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    webhookd_metrics::DATABASE_UP.set(i64::from(database.is_ok()));
    let mut broker: Result<(), String> = Ok(());
    if let Some(flag) = &r.worker_broker {
        if !flag.load(Ordering::Acquire) {
            broker = Err("the worker is not connected and consuming".into());
        }
    }
    if let Some(api_broker) = &r.api_broker {
        if broker.is_ok() {
            broker = tokio::time::timeout(CHECK_TIMEOUT, api_broker.connect())
                .await
                .map_err(|_| "timed out".to_owned())
                .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()));
        }
    }
    let now = std::time::Instant::now();
    let stalls: Vec<String> = r
        .writers
        .iter()
        .filter_map(|w| w.stall(r.stall_after, now))
        .map(|stall| stall.to_string())
        .collect();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!("ok"),
        Err(e) => json!(e),
    };
    let status = if database.is_ok() && broker.is_ok() && stalls.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"database": show(&database), "broker": show(&broker)});
    if !r.writers.is_empty() {
        body["writers"] = match stalls.is_empty() {
            true => json!("ok"),
            false => json!(stalls.join("; ")),
        };
    }
    (status, Json(body))
}
