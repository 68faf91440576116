//! What a worker needs to know: where the services are and how to deliver.

use std::sync::Arc;
use std::time::Duration;

use webhookd_broker::Topology;
use webhookd_core::{Catalog, NetworkPolicy, RetryPolicy};
use webhookd_store::retention::RetentionSettings;

/// Worker settings (built from the environment by the binary, or directly by tests and benchmarks).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `postgres://` URL.
    pub database_url: String,
    /// `amqp://` URL.
    pub amqp_url: String,
    /// Exchange and queue names.
    pub topology: Topology,
    /// Known actions.
    pub catalog: Arc<Catalog>,
    /// Instances per POST (`WEBHOOK_BATCH_SIZE`).
    pub batch_size: usize,
    /// Per-attempt timeout (`WEBHOOK_TIMEOUT`).
    pub timeout: Duration,
    /// Retry schedule and rules.
    pub retry_policy: RetryPolicy,
    /// Auto-disable threshold; ≤ 0 never disables (`WEBHOOK_MAX_CONSECUTIVE_FAILURES`).
    pub max_consecutive_failures: i32,
    /// How long a webhook must have been failing, with no success, before it is turned off
    /// (`WEBHOOK_DISABLE_AFTER`).
    pub disable_after: Duration,
    /// Events in flight (`WEBHOOKD_PREFETCH`).
    pub prefetch: u16,
    /// Retry messages unacknowledged, and attempts from the retry queue at once (`WEBHOOKD_RETRY_PREFETCH`).
    pub retry_prefetch: u16,
    /// HTTP attempts in flight at once, across all messages (`WEBHOOKD_MAX_CONCURRENT_DELIVERIES`).
    pub max_concurrent_deliveries: usize,
    /// HTTP attempts to one webhook in flight at once, inline and retries together
    /// (`WEBHOOKD_MAX_CONCURRENT_PER_WEBHOOK`).
    pub max_concurrent_per_webhook: usize,
    /// Bytes of each response kept in the log.
    pub response_excerpt_bytes: usize,
    /// Database connections.
    pub pool_size: usize,
    /// How long shutdown waits for in-flight deliveries.
    pub shutdown_grace: Duration,
    /// Which addresses webhooks may reach (SSRF protection).
    pub network_policy: NetworkPolicy,
    /// The largest event message accepted, in bytes (`WEBHOOKD_MAX_EVENT_BYTES`); larger ones are
    /// dead-lettered.
    pub max_event_bytes: usize,
    /// How long a writer may hold work it has not committed before it counts as stalled
    /// (`WEBHOOKD_STALL_AFTER`).
    pub stall_after: Duration,
    /// What is kept, and for how long.
    pub retention: RetentionSettings,
    /// Events a replay queues per second (`WEBHOOKD_REPLAY_RATE`).
    pub replay_rate: f64,
}
