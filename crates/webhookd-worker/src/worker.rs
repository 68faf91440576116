//! The worker loop: connect, declare the topology, consume events and retry tasks with a bounded prefetch,
//! handle each message on its own task, reconnect with backoff, and drain in-flight work on shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backoff_forever::{backoff_forever, database_backoff};
use backoff::backoff::Backoff;
use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhookd_broker::{ConfirmedPublisher, PublishError};
use webhookd_store::delivery_log::{self, AttemptRow};
use webhookd_store::events::{self, Claim, NewEvent};
use webhookd_store::{database, migrate, Pool, StoreError};

use crate::acks::Acks;
use crate::batcher::{Batcher, Flush};
use crate::dispatch::Dispatcher;
use crate::pipeline::{handle_event, handle_retry, Outbox};
use crate::retry_scheduler::RetryScheduler;
use crate::settings::WorkerSettings;
use crate::subscriptions::{keep_current, SubscriptionCache};

/// How long a stopping session waits for its last acknowledgements to be sent.
const ACKS_FLUSH: Duration = Duration::from_secs(5);
/// Inline attempts per delivery slot that may wait for one.
const ATTEMPTS_PER_SLOT: usize = 8;
/// Rows per log write and events per claim.
const MAX_BATCH: usize = 1000;
/// How long a log write that is not full waits for more rows. The rows are written after their requests
/// were received, so the wait delays only acks, and at light load it turns one synchronous commit per
/// event into one per few events. (Claims are on the way to the receiver and do not wait.)
const LOG_LINGER: Duration = Duration::from_millis(5);

/// Why the worker could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// A publish failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// A consumer was cancelled or its stream ended.
    #[error("the broker closed the {0} consumer")]
    ConsumerClosed(&'static str),
}

/// What every message handler shares.
pub struct Shared {
    /// Settings.
    pub settings: WorkerSettings,
    /// Webhooks, in memory.
    pub cache: SubscriptionCache,
    /// Batched event claims.
    pub claims: Batcher<ClaimWriter>,
    /// Batched delivery-log writes.
    pub log: Batcher<LogWriter>,
    /// The HTTP client.
    pub dispatcher: Dispatcher,
    /// Database connections.
    pub pool: Pool,
    /// Bounds the inline HTTP attempts in flight, so a fan-out to many webhooks cannot open unbounded
    /// requests.
    pub delivery_slots: tokio::sync::Semaphore,
    /// Bounds the attempts made from the retry queue at once, apart from the inline ones.
    pub retry_slots: tokio::sync::Semaphore,
    /// Bounds the inline attempts that exist at once, waiting or sending, so that the memory of a large
    /// fan-out does not grow with the prefetch (an event with more attempts than the whole budget waits
    /// for all of it).
    pub attempt_budget: tokio::sync::Semaphore,
    /// Webhooks whose deliveries are deferred to the retry queue instead of being waited on inline.
    pub slow_lane: crate::slow_lane::SlowLane,
}

impl Shared {
    /// Reads stored events (id, organization, body; the ones that exist), waiting out database outages.
    pub async fn load_events(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, i64, String)>, crate::batcher::Stopped> {
        let mut backoff = database_backoff();
        loop {
            let result = match self.pool.get().await {
                Ok(client) => events::load_events(&client, ids).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(found) => return Ok(found),
                Err(e) => {
                    let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, "reading events failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// Records how a database write went in the health metrics.
fn noted<T>(result: Result<T, StoreError>) -> Result<T, StoreError> {
    match &result {
        Ok(_) => webhookd_metrics::DATABASE_UP.set(1),
        Err(_) => {
            webhookd_metrics::DATABASE_UP.set(0);
            webhookd_metrics::DB_WRITE_FAILURES.inc();
        }
    }
    result
}

/// Writes event claims in batches.
pub struct ClaimWriter(Pool);

impl Flush for ClaimWriter {
    type Req = NewEvent;
    type Resp = Claim;
    async fn flush(&self, batch: &[NewEvent], _: Uuid) -> Result<Vec<Claim>, StoreError> {
        // Claims carry their own tokens, which tell a claim made again from another message's.
        noted(async { events::claim_events(&self.0.get().await?, batch).await }.await)
    }
}

/// Writes delivery-log rows in batches, with the webhooks' failure counters.
pub struct LogWriter {
    pool: Pool,
    max_consecutive_failures: i32,
}

impl Flush for LogWriter {
    type Req = Vec<AttemptRow>;
    type Resp = ();
    async fn flush(
        &self,
        batch: &[Vec<AttemptRow>],
        write_id: Uuid,
    ) -> Result<Vec<()>, StoreError> {
        let rows: Vec<&AttemptRow> = batch.iter().flatten().collect();
        let disabled = noted(
            async {
                let mut client = self.pool.get().await?;
                delivery_log::write_attempts(
                    &mut client,
                    write_id,
                    &rows,
                    self.max_consecutive_failures,
                )
                .await
            }
            .await,
        )?;
        webhookd_metrics::LOG_ROWS.inc_by(rows.len() as u64);
        webhookd_metrics::LOG_BATCH.observe(rows.len() as f64);
        for d in disabled {
            tracing::warn!(
                webhook_id = d.webhook_id,
                consecutive_failures = d.consecutive_failures,
                "webhook turned off (410 Gone or too many consecutive failures)"
            );
        }
        Ok(vec![(); batch.len()])
    }
}

/// A worker: consumes until told to stop.
pub struct Worker {
    shared: Arc<Shared>,
    background: CancellationToken,
    broker_ready: Arc<AtomicBool>,
}

impl Worker {
    /// Migrates the database, loads the subscriptions and starts the background tasks.
    pub async fn start(settings: WorkerSettings) -> Result<Self, WorkerError> {
        migrate::migrate(&settings.database_url).await?;
        let pool = database::pool(&settings.database_url, settings.pool_size)?;
        // Claims commit without waiting for their WAL flush: the log write that must precede every ack
        // is a synchronous commit later in the same WAL (even when it has no rows), so it makes the claim
        // durable too; a claim lost to a database crash before that was never acked, and is made again on
        // redelivery.
        let claim_pool = database::pool_with_options(
            &settings.database_url,
            2,
            Some("-c synchronous_commit=off"),
        )?;
        let cache = SubscriptionCache::default();
        cache.load_all(&pool).await?;
        let background = CancellationToken::new();
        tokio::spawn(keep_current(
            cache.clone(),
            pool.clone(),
            settings.database_url.clone(),
            background.clone(),
        ));
        tokio::spawn(maintain_log(pool.clone(), background.clone()));
        let shared = Shared {
            dispatcher: Dispatcher::new(
                settings.timeout,
                settings.response_excerpt_bytes,
                settings.network_policy.clone(),
            )?,
            claims: Batcher::spawn("event claim", ClaimWriter(claim_pool), MAX_BATCH),
            log: Batcher::spawn_lingering(
                "delivery log",
                LogWriter {
                    pool: pool.clone(),
                    max_consecutive_failures: settings.max_consecutive_failures,
                },
                MAX_BATCH,
                LOG_LINGER,
            ),
            cache,
            pool,
            delivery_slots: tokio::sync::Semaphore::new(settings.max_concurrent_deliveries.max(1)),
            retry_slots: tokio::sync::Semaphore::new(usize::from(settings.retry_prefetch.max(1))),
            attempt_budget: tokio::sync::Semaphore::new(attempt_budget(&settings)),
            slow_lane: crate::slow_lane::SlowLane::new(settings.timeout),
            settings,
        };
        Ok(Self {
            shared: Arc::new(shared),
            background,
            broker_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// True while the worker is connected, its topology declared and its consumers running.
    pub fn broker_ready(&self) -> Arc<AtomicBool> {
        self.broker_ready.clone()
    }

    /// Its database pool (readiness checks use it).
    pub fn pool(&self) -> &Pool {
        &self.shared.pool
    }

    /// The subscription cache (tests wait on its generation).
    pub fn cache(&self) -> &SubscriptionCache {
        &self.shared.cache
    }

    /// Consumes until `shutdown` is cancelled, reconnecting to the broker with backoff whenever it is lost.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let mut backoff = backoff_forever(Duration::from_millis(200), Duration::from_secs(10));
        let result = loop {
            let started = std::time::Instant::now();
            match self.session(&shutdown).await {
                Ok(()) => break Ok(()),
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(10));
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "broker session ended; reconnecting");
                    tokio::select! {
                        _ = shutdown.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        };
        self.background.cancel();
        result
    }

    async fn session(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let settings = &self.shared.settings;
        let connection = webhookd_broker::connect(&settings.amqp_url, "webhookd-worker").await?;
        let publisher = ConfirmedPublisher::open(&connection).await?;
        settings.topology.declare(publisher.channel()).await?;
        let outbox = Outbox {
            retries: RetryScheduler::spawn(publisher.clone(), settings.topology.clone()),
            publisher,
        };
        let (events_channel, mut events) = consume(
            &connection,
            &settings.topology.work_queue(),
            settings.prefetch,
        )
        .await?;
        let (retries_channel, mut retries) = consume(
            &connection,
            &settings.topology.retry_queue(),
            settings.retry_prefetch,
        )
        .await?;
        tracing::info!(queue = %settings.topology.work_queue(), prefetch = settings.prefetch, "worker consuming");
        webhookd_metrics::BROKER_CONNECTED.set(1);
        self.broker_ready.store(true, Ordering::Release);

        let (event_acks, event_acking) = Acks::spawn(events_channel.clone());
        let (retry_acks, retry_acking) = Acks::spawn(retries_channel.clone());
        let mut tasks = JoinSet::new();
        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                next = events.next() => match next {
                    Some(Ok(d)) => {
                        let pending = event_acks.received(d.delivery_tag);
                        tasks.spawn(handle_event(self.shared.clone(), outbox.clone(), d, pending));
                    }
                    Some(Err(e)) => break Err(WorkerError::Broker(e)),
                    None => break Err(WorkerError::ConsumerClosed("events")),
                },
                next = retries.next() => match next {
                    Some(Ok(d)) => {
                        let pending = retry_acks.received(d.delivery_tag);
                        tasks.spawn(handle_retry(self.shared.clone(), outbox.clone(), d, pending));
                    }
                    Some(Err(e)) => break Err(WorkerError::Broker(e)),
                    None => break Err(WorkerError::ConsumerClosed("retries")),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        if ended.is_ok() {
            // Stop taking messages, let those in flight finish (and be acked), then leave.
            for (channel, tag) in [(&events_channel, "events"), (&retries_channel, "retries")] {
                let _ = channel
                    .basic_cancel(
                        consumer_tag(tag).as_str().into(),
                        BasicCancelOptions::default(),
                    )
                    .await;
            }
            let in_flight = tasks.len();
            let drained = tokio::time::timeout(settings.shutdown_grace, async {
                while tasks.join_next().await.is_some() {}
            })
            .await;
            match drained {
                Ok(()) => tracing::info!(in_flight, "in-flight deliveries finished"),
                Err(_) => tracing::warn!(
                    left = tasks.len(),
                    "shutdown grace over; unfinished messages will be redelivered"
                ),
            }
        }
        self.broker_ready.store(false, Ordering::Release);
        webhookd_metrics::BROKER_CONNECTED.set(0);
        tasks.shutdown().await;
        // The acking tasks send what the finished handlers left them, then end with their last handle.
        drop((event_acks, retry_acks));
        let _ = tokio::time::timeout(ACKS_FLUSH, async {
            let _ = tokio::join!(event_acking, retry_acking);
        })
        .await;
        let _ = connection
            .close(200, "webhookd worker stopping".into())
            .await;
        ended
    }
}

/// Inline attempts that may exist at once: enough to keep every delivery slot busy with work queued behind it.
pub fn attempt_budget(settings: &WorkerSettings) -> usize {
    settings.max_concurrent_deliveries.max(1) * ATTEMPTS_PER_SLOT
}

fn consumer_tag(queue_kind: &str) -> String {
    format!("webhookd-{queue_kind}-{}", std::process::id())
}

async fn consume(
    connection: &Connection,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, Consumer), WorkerError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let kind = if queue.ends_with(".retry") {
        "retries"
    } else {
        "events"
    };
    let consumer = channel
        .basic_consume(
            queue.into(),
            consumer_tag(kind).as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Hourly upkeep of the delivery log: creates tomorrow's partitions ahead of time and forgets old write ids.
async fn maintain_log(pool: Pool, stop: CancellationToken) {
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hourly.tick() => {
                let result = match pool.get().await {
                    Ok(client) => match migrate::ensure_log_partitions(&client).await {
                        Ok(()) => delivery_log::forget_old_writes(&**client).await.map(drop),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "delivery-log upkeep failed; next try in an hour");
                }
            }
        }
    }
}
