//! webhookd's management REST API: Label Studio-compatible `/api/webhooks/`, the delivery log, test pings,
//! redelivery, secret rotation and HTTP event ingest, with token authentication scoped to an organization; and
//! the web console over it, under `/console/`.

pub mod broker;
pub mod console;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod ops;
pub mod rate_limit;
pub mod routes;
pub mod state;
pub mod validation;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Json, Router};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use webhookd_dispatch::Dispatcher;
use webhookd_store::{database, migrate, StoreError};

pub use state::{ApiSettings, AppState};

use crate::extract::BodyLimit;
use crate::routes::{
    deliveries, events, info, relay, replays, secrets, stats, webhook_test, webhooks,
};

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiStartError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Migrates the database and builds the state every route shares.
pub async fn state(settings: ApiSettings) -> Result<AppState, ApiStartError> {
    migrate::migrate(&settings.database_url).await?;
    let pool = database::pool_with_timeouts(
        &settings.database_url,
        settings.pool_size,
        settings.dependency_timeout,
    )?;
    let dispatcher = Dispatcher::new(
        settings.timeout,
        settings.response_excerpt_bytes,
        settings.network_policy.clone(),
    )
    .map_err(|e| ApiStartError::Http(e.to_string()))?;
    let broker = broker::Broker::new(
        settings.amqp_url.clone(),
        settings.topology.clone(),
        settings.dependency_timeout,
    );
    Ok(AppState {
        rate_limits: Arc::new(rate_limit::RateLimits::new(settings.rate_limits)),
        settings: Arc::new(settings),
        pool,
        broker: Arc::new(broker),
        dispatcher,
    })
}

/// Adds `path` and its form without the trailing slash (Label Studio's clients send the slash).
fn route(
    router: Router<AppState>,
    path: &str,
    handler: MethodRouter<AppState>,
) -> Router<AppState> {
    router
        .route(path, handler.clone())
        .route(path.trim_end_matches('/'), handler)
}

/// Every route of the API, and the web console.
pub fn router(state: AppState) -> Router {
    let mut r = Router::new();
    r = route(
        r,
        "/api/webhooks/",
        get(webhooks::list).post(webhooks::create),
    );
    r = route(r, "/api/webhooks/info/", get(info::info));
    r = route(
        r,
        "/api/webhooks/{id}/",
        get(webhooks::get)
            .put(webhooks::put)
            .patch(webhooks::patch)
            .delete(webhooks::delete),
    );
    r = route(r, "/api/webhooks/{id}/deliveries/", get(deliveries::list));
    r = route(r, "/api/webhooks/{id}/recover/", post(deliveries::recover));
    r = route(r, "/api/webhooks/{id}/test/", post(webhook_test::test));
    r = route(r, "/api/webhooks/{id}/secret/", get(secrets::get));
    r = route(
        r,
        "/api/webhooks/{id}/secret/rotate/",
        post(secrets::rotate),
    );
    r = route(r, "/api/webhooks/{id}/replay/", post(replays::create));
    r = route(r, "/api/webhooks/{id}/replays/", get(replays::list));
    r = route(
        r,
        "/api/replays/{id}/",
        get(replays::get).delete(replays::cancel),
    );
    r = route(r, "/api/deliveries/", get(deliveries::list_organization));
    r = route(r, "/api/deliveries/{id}/", get(deliveries::detail));
    r = route(
        r,
        "/api/deliveries/{id}/redeliver/",
        post(deliveries::redeliver),
    );
    r = route(r, "/api/stats/", get(stats::stats));
    // An event's body must reach the WEBHOOKD_MAX_EVENT_BYTES check, which names the limit, even when that is
    // larger than WEBHOOKD_MAX_BODY_BYTES.
    let ingest_limit = events::body_limit(&state.settings);
    let with_event_limit = |handler: MethodRouter<AppState>| {
        handler
            .layer::<_, Infallible>(DefaultBodyLimit::max(ingest_limit))
            .layer::<_, Infallible>(Extension(BodyLimit(ingest_limit)))
    };
    r = route(r, "/api/events/", with_event_limit(post(events::ingest)));
    r = route(
        r,
        "/api/relay/label-studio/",
        with_event_limit(post(relay::label_studio)),
    );
    r = r.route(
        "/api/openapi.json",
        get(|| async { Json(openapi::ApiDoc::openapi()) }),
    );
    r = r.merge(console::router());
    let limit = state.settings.max_body_bytes;
    r.fallback(|| async { error::ApiError::NotFound })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds `settings.listen`.
pub async fn bind(settings: &ApiSettings) -> Result<tokio::net::TcpListener, ApiStartError> {
    tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ApiStartError::Listen {
            addr: settings.listen,
            source,
        })
}
