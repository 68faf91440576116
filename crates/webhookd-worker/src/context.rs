//! What every message handler shares: the settings, the subscription cache, the writers, the HTTP client and
//! the limits on concurrent attempts; and, per broker session, where handlers publish.

use std::sync::Arc;

use tokio::sync::Semaphore;
use webhookd_broker::ConfirmedPublisher;
use webhookd_dispatch::Dispatcher;
use webhookd_metrics::WriterProgress;
use webhookd_store::Pool;

use crate::batcher::Batcher;
use crate::claim_writer::ClaimWriter;
use crate::log_writer::LogWriter;
use crate::retry_lane::RetryLane;
use crate::retry_scheduler::RetryScheduler;
use crate::settings::WorkerSettings;
use crate::slow_lane::SlowLane;
use crate::subscriptions::SubscriptionCache;
use crate::webhook_limits::WebhookLimits;

/// Inline attempts per delivery slot that may wait for one.
const ATTEMPTS_PER_SLOT: usize = 8;

/// What every message handler shares.
pub(crate) struct WorkerContext {
    /// Settings.
    pub(crate) settings: WorkerSettings,
    /// Webhooks, in memory.
    pub(crate) cache: SubscriptionCache,
    /// Batched event claims.
    pub(crate) claims: Batcher<ClaimWriter>,
    /// Batched delivery-log writes.
    pub(crate) log: Batcher<LogWriter>,
    /// The HTTP client.
    pub(crate) dispatcher: Dispatcher,
    /// Database connections.
    pub(crate) pool: Pool,
    /// Bounds the inline HTTP attempts in flight, so a fan-out to many webhooks cannot open unbounded
    /// requests.
    pub(crate) delivery_slots: Semaphore,
    /// The attempts made from the retry queue at once, apart from the inline ones, shared fairly between
    /// organizations.
    pub(crate) retry_lane: Arc<RetryLane>,
    /// At most so many attempts to one webhook at once, and when a parked retry task is tried again.
    pub(crate) webhook_limits: Arc<WebhookLimits>,
    /// Bounds the inline attempts that exist at once, waiting or sending, so that the memory of a large
    /// fan-out does not grow with the prefetch (an event with more attempts than the whole budget waits
    /// for all of it).
    pub(crate) attempt_budget: Semaphore,
    /// Webhooks whose deliveries are deferred to the retry queue instead of being waited on inline.
    pub(crate) slow_lane: SlowLane,
    /// The stall signal of the retry-task writer (the writer itself lives as long as a broker session).
    pub(crate) retry_progress: Arc<WriterProgress>,
}

impl WorkerContext {
    /// The context of a worker with `settings`, writing through `claims` and `log`.
    pub(crate) fn new(
        settings: WorkerSettings,
        cache: SubscriptionCache,
        pool: Pool,
        claims: Batcher<ClaimWriter>,
        log: Batcher<LogWriter>,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            dispatcher: Dispatcher::new(
                settings.timeout,
                settings.response_excerpt_bytes,
                settings.network_policy.clone(),
            )?,
            claims,
            log,
            cache,
            pool,
            delivery_slots: Semaphore::new(settings.max_concurrent_deliveries.max(1)),
            retry_lane: RetryLane::new(usize::from(settings.retry_prefetch.max(1))),
            webhook_limits: WebhookLimits::new(
                settings.max_concurrent_per_webhook,
                settings.timeout / 2,
            ),
            attempt_budget: Semaphore::new(attempt_budget(&settings)),
            slow_lane: SlowLane::new(settings.timeout),
            retry_progress: WriterProgress::new("retry_task"),
            settings,
        })
    }

    /// Inline attempts that may exist at once.
    pub(crate) fn attempt_budget(&self) -> usize {
        attempt_budget(&self.settings)
    }

    /// The stall signals of the three writers: event claims, the delivery log, retry tasks.
    pub(crate) fn writers(&self) -> Vec<Arc<WriterProgress>> {
        vec![
            self.claims.progress().clone(),
            self.log.progress().clone(),
            self.retry_progress.clone(),
        ]
    }
}

/// Inline attempts that may exist at once: enough to keep every delivery slot busy with work queued behind it.
fn attempt_budget(settings: &WorkerSettings) -> usize {
    settings.max_concurrent_deliveries.max(1) * ATTEMPTS_PER_SLOT
}

/// Where the handlers of one broker session publish.
#[derive(Clone)]
pub(crate) struct Outbox {
    /// Dead letters go out one by one.
    pub(crate) publisher: ConfirmedPublisher,
    /// Retry tasks go out batched.
    pub(crate) retries: RetryScheduler,
}
