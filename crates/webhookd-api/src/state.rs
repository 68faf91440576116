//! What every handler shares.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use webhookd_broker::Topology;
use webhookd_core::{Catalog, NetworkPolicy};
use webhookd_dispatch::Dispatcher;
use webhookd_store::Pool;

use crate::broker::Broker;
use crate::rate_limit::{RateLimitSettings, RateLimits};

/// API settings (built from the environment by the binary, or directly by tests).
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Where to listen (`WEBHOOKD_LISTEN`).
    pub listen: SocketAddr,
    /// `postgres://` URL.
    pub database_url: String,
    /// `amqp://` URL.
    pub amqp_url: String,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Known actions.
    pub catalog: Arc<Catalog>,
    /// `WEBHOOK_MAX_PER_ORGANIZATION`.
    pub max_webhooks_per_organization: i64,
    /// How long an `Idempotency-Key` is remembered (`WEBHOOKD_IDEMPOTENCY_KEY_HOURS`).
    pub idempotency_key_ttl: Duration,
    /// `WEBHOOKD_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `WEBHOOKD_MAX_EVENT_BYTES`: the largest envelope `POST /api/events/` publishes.
    pub max_event_bytes: usize,
    /// SSRF protection for webhook URLs.
    pub network_policy: NetworkPolicy,
    /// How long a rotated-out secret keeps signing (`WEBHOOKD_SECRET_ROTATION_GRACE`).
    pub secret_grace: Duration,
    /// Per-attempt timeout of test pings (`WEBHOOK_TIMEOUT`).
    pub timeout: Duration,
    /// Bytes of a test ping's response kept.
    pub response_excerpt_bytes: usize,
    /// Instances per POST, to show a delivery's body.
    pub batch_size: usize,
    /// Database connections.
    pub pool_size: usize,
    /// The longest a request waits on each dependency step (`WEBHOOKD_API_DEPENDENCY_TIMEOUT`): a free
    /// database connection, a broker connection, a broker confirm, a DNS lookup. Past it the answer is a 503.
    pub dependency_timeout: Duration,
    /// Per-organization rates of test pings, redeliveries and recover requests.
    pub rate_limits: RateLimitSettings,
}

/// The state behind every route.
#[derive(Clone)]
pub struct AppState {
    /// Settings.
    pub settings: Arc<ApiSettings>,
    /// Database connections.
    pub pool: Pool,
    /// Confirmed publishing (ingest, redelivery).
    pub broker: Arc<Broker>,
    /// The HTTP client of test pings.
    pub dispatcher: Dispatcher,
    /// The limiters of the routes that send requests.
    pub rate_limits: Arc<RateLimits>,
}
