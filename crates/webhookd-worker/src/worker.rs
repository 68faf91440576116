//! The worker loop: connect, declare the topology, consume events and retry tasks with a bounded prefetch,
//! handle each message on its own task, reconnect with backoff, and drain in-flight work on shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use futures::StreamExt;
use lapin::Connection;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use webhookd_broker::inbound::{consume, stop_consuming};
use webhookd_broker::{ConfirmedPublisher, Inbound, PublishError, QueueKind};
use webhookd_metrics::WriterProgress;
use webhookd_store::delivery_log::DisableRule;
use webhookd_store::retention;
use webhookd_store::{database, migrate, Pool, StoreError};

use crate::acks::Acks;
use crate::backoff_forever::backoff_forever;
use crate::batcher::{BatchLimits, Batcher};
use crate::claim_writer::ClaimWriter;
use crate::context::{Outbox, WorkerContext};
use crate::event_path::handle_event;
use crate::log_writer::{apply_deferred, Deferred, LogWriter};
use crate::replay_runner::run_replays;
use crate::retry_path::handle_retry;
use crate::retry_scheduler::RetryScheduler;
use crate::settings::WorkerSettings;
use crate::subscriptions::{keep_current, SubscriptionCache};
use crate::upkeep::{keep_retention, watch_writers};

/// How long a stopping session waits for its last acknowledgements to be sent.
const ACKS_FLUSH: Duration = Duration::from_secs(5);
/// How long opening a broker session (connection, handshake, channels, topology, consumers) may take before
/// it is abandoned and tried again: a broker that accepts the connection but never answers (a hung node, or
/// one behind a load balancer that would send the next connection to a healthy node) must not hold the
/// worker for ever. RabbitMQ gives a client 10 s for its side of the handshake.
const OPEN_LIMIT: Duration = Duration::from_secs(20);
/// How long a stopping session waits for the broker's answer to a consumer's cancel or to the connection's
/// close: a broker that keeps the connection open but answers nothing must not keep a worker from stopping,
/// or from reconnecting.
const BROKER_ANSWER: Duration = Duration::from_secs(2);
/// Events per claim: on the way to the receiver, so written at once, without waiting for more.
const CLAIMS: BatchLimits = BatchLimits {
    requests: 1000,
    bytes: MAX_WRITE_BYTES,
    linger: Duration::ZERO,
};
/// Handlers' rows per log write. A write that is not full waits up to 5 ms for more: the rows are written
/// after their requests were received, so the wait delays only acks, and at light load it turns one
/// synchronous commit per event into one per few events.
const LOG: BatchLimits = BatchLimits {
    requests: 1000,
    bytes: MAX_WRITE_BYTES,
    linger: Duration::from_millis(5),
};
/// The most bytes of parameters in one claim or log write: far below the 1 GB a PostgreSQL message or
/// array may hold, and large enough that a batch of ordinary events is never cut short.
const MAX_WRITE_BYTES: usize = 32 << 20;

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
    /// The broker did not let a session open in time.
    #[error("the broker did not open the session (connection, channels, consumers) within {0:?}")]
    OpenTimedOut(Duration),
}

/// A worker: consumes until told to stop.
pub struct Worker {
    ctx: Arc<WorkerContext>,
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
        // The delivery log's partitions exist before anything is logged; retention keeps them ahead. While
        // another transaction holds a lock on the log (a backup, a long report), the worker starts without
        // waiting for it: rows for a range without a partition wait in the default one, and retention makes
        // the partitions and moves those rows once it can.
        {
            let client = pool.get().await.map_err(StoreError::from)?;
            let r = &settings.retention;
            match retention::ensure_partitions(&**client, r.partitions_ahead(), r.partition_span)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_lock_not_available() => tracing::warn!(
                    error = %e,
                    sqlstate = e.sqlstate(),
                    "the delivery log's partitions were not created at start-up: another transaction holds \
                     a lock on delivery_attempts (see pg_stat_activity); retention creates them later"
                ),
                Err(e) => return Err(e.into()),
            }
        }
        let claims = Batcher::spawn(
            ClaimWriter::new(claim_pool),
            CLAIMS,
            WriterProgress::new("event_claim"),
        );
        let rule = DisableRule {
            max_consecutive_failures: settings.max_consecutive_failures,
            disable_after: settings.disable_after,
        };
        let log_writer = LogWriter::new(pool.clone(), rule);
        let deferred = log_writer.deferred();
        let log = Batcher::spawn(log_writer, LOG, WriterProgress::new("delivery_log"));
        let ctx = Arc::new(WorkerContext::new(settings, cache, pool, claims, log)?);
        let background = CancellationToken::new();
        spawn_background(&ctx, deferred, &background);
        Ok(Self {
            ctx,
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
        &self.ctx.pool
    }

    /// The stall signals of its writers (event claims, the delivery log, retry tasks), for `/readyz`.
    pub fn writers(&self) -> Vec<Arc<WriterProgress>> {
        self.ctx.writers()
    }

    /// The subscription cache (tests wait on its generation).
    pub fn cache(&self) -> &SubscriptionCache {
        &self.ctx.cache
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

    /// One broker connection: consume both queues until `shutdown` or a broker failure, then drain.
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let settings = &self.ctx.settings;
        let Opened {
            connection,
            outbox,
            events_channel,
            mut events,
            retries_channel,
            mut retries,
        } = tokio::select! {
            // A broker that accepts the connection but never finishes the handshake must not keep a
            // stopping worker waiting.
            _ = shutdown.cancelled() => return Ok(()),
            opened = tokio::time::timeout(OPEN_LIMIT, self.open()) => match opened {
                Ok(opened) => opened?,
                Err(_) => return Err(WorkerError::OpenTimedOut(OPEN_LIMIT)),
            },
        };
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
                        let message = Inbound::from(d);
                        let pending = event_acks.received(message.delivery_tag);
                        tasks.spawn(handle_event(self.ctx.clone(), outbox.clone(), message, pending));
                    }
                    Some(Err(e)) => break Err(WorkerError::Broker(e)),
                    None => break Err(WorkerError::ConsumerClosed("events")),
                },
                next = retries.next() => match next {
                    Some(Ok(d)) => {
                        let message = Inbound::from(d);
                        let pending = retry_acks.received(message.delivery_tag);
                        tasks.spawn(handle_retry(self.ctx.clone(), outbox.clone(), message, pending));
                    }
                    Some(Err(e)) => break Err(WorkerError::Broker(e)),
                    None => break Err(WorkerError::ConsumerClosed("retries")),
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        };
        if ended.is_ok() {
            // Stop taking messages, let those in flight finish (and be acked), then leave.
            stop(&events_channel, &retries_channel).await;
            drain(&mut tasks, settings.shutdown_grace).await;
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
        close(connection).await;
        ended
    }
}

/// A broker session's connection, publisher and consumers.
struct Opened {
    connection: Connection,
    outbox: Outbox,
    events_channel: lapin::Channel,
    events: lapin::Consumer,
    retries_channel: lapin::Channel,
    retries: lapin::Consumer,
}

impl Worker {
    /// Connects, declares the topology, and starts consuming both queues.
    async fn open(&self) -> Result<Opened, WorkerError> {
        let settings = &self.ctx.settings;
        let topology = &settings.topology;
        let connection = webhookd_broker::connect(&settings.amqp_url, "webhookd-worker").await?;
        let publisher = ConfirmedPublisher::open(&connection).await?;
        topology.declare(publisher.channel()).await?;
        let retries = RetryScheduler::spawn(
            publisher.clone(),
            topology.clone(),
            self.ctx.retry_progress.clone(),
        );
        let (events_channel, events) =
            consume(&connection, topology, QueueKind::Events, settings.prefetch).await?;
        // Twice the retry slots: messages whose tasks all run hold at most the slots' worth of the window, so
        // the broker can always hand over more, and other organizations' due tasks are seen.
        let retry_window = settings.retry_prefetch.saturating_mul(2);
        let (retries_channel, retry_messages) =
            consume(&connection, topology, QueueKind::Retries, retry_window).await?;
        Ok(Opened {
            connection,
            outbox: Outbox { publisher, retries },
            events_channel,
            events,
            retries_channel,
            retries: retry_messages,
        })
    }
}

/// The tasks that run beside the consumers until `stop`: the subscription cache's listener, retention, the
/// replay runner, the writers' stall signal, and the writer of the log's `deferred` counter changes.
fn spawn_background(ctx: &Arc<WorkerContext>, deferred: Deferred, stop: &CancellationToken) {
    tokio::spawn(apply_deferred(ctx.log.clone(), deferred, stop.clone()));
    let settings = &ctx.settings;
    tokio::spawn(keep_current(
        ctx.cache.clone(),
        ctx.pool.clone(),
        settings.database_url.clone(),
        stop.clone(),
    ));
    tokio::spawn(keep_retention(
        ctx.pool.clone(),
        settings.retention,
        stop.clone(),
    ));
    tokio::spawn(run_replays(
        ctx.pool.clone(),
        Arc::new(settings.clone()),
        stop.clone(),
    ));
    tokio::spawn(watch_writers(
        ctx.writers(),
        settings.stall_after,
        stop.clone(),
    ));
}

/// Waits up to `grace` for the handlers in flight to finish.
async fn drain(tasks: &mut JoinSet<()>, grace: Duration) {
    let in_flight = tasks.len();
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    match drained {
        Ok(()) => tracing::info!(in_flight, "in-flight deliveries finished"),
        Err(_) => tracing::warn!(
            left = tasks.len(),
            "shutdown grace over; unfinished messages will be redelivered"
        ),
    }
}

/// Cancels both consumers, so that the broker sends no more; waits at most `BROKER_ANSWER` for its answers.
async fn stop(events: &lapin::Channel, retries: &lapin::Channel) {
    let cancels = futures::future::join(
        stop_consuming(events, QueueKind::Events),
        stop_consuming(retries, QueueKind::Retries),
    );
    if tokio::time::timeout(BROKER_ANSWER, cancels).await.is_err() {
        tracing::warn!(
            wait_ms = BROKER_ANSWER.as_millis() as u64,
            "the broker did not confirm the consumers' cancel; finishing the messages in flight anyway"
        );
    }
}

/// Closes the connection; waits at most `BROKER_ANSWER` for the broker's answer (whatever it has not acked
/// is redelivered once the connection is gone).
async fn close(connection: Connection) {
    let closing = connection.close(200, "webhookd worker stopping".into());
    if tokio::time::timeout(BROKER_ANSWER, closing).await.is_err() {
        tracing::warn!(
            wait_ms = BROKER_ANSWER.as_millis() as u64,
            "the broker did not answer the connection's close; leaving it"
        );
    }
}
