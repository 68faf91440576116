//! Replays run by workers: a worker takes the lease of a running replay and queues its events, in event order,
//! as retry tasks due now (attempt 1 of new deliveries whose ids derive from the replay), a page at a time: at
//! most `WEBHOOKD_REPLAY_RATE` events a second and 64 a page (one retry message, whose replay tasks the retry
//! path makes one after another, in order), the next page once the last one's first attempts are logged. It
//! renews its lease with each page. The tasks go through the retry lane, fairly shared with other
//! organizations and within each webhook's cap, so that live traffic keeps its latency. A worker that stops
//! leaves the lease to expire: another one resumes after the last page recorded (a page queued twice is
//! delivered twice, under the same `webhook-id`s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use webhookd_broker::retry_task::{self, now_ms, MAX_TASKS_PER_MESSAGE};
use webhookd_broker::{ConfirmedPublisher, RetryTask};
use webhookd_core::{body, Event};
use webhookd_store::replays::{self, Lease, ReplayedEvent};
use webhookd_store::{ErrorClass, Pool};

use crate::settings::WorkerSettings;

/// How often a worker looks for a replay to run.
const POLL: Duration = Duration::from_secs(1);
/// How long a lease lasts unless renewed (each page renews it).
const LEASE: Duration = Duration::from_secs(30);
/// How long a runner waits for its last page's first attempts while none gets logged, before it goes on.
const STUCK: Duration = Duration::from_secs(300);
/// How often a runner looks whether its last page's first attempts are logged.
const LOGGED_POLL: Duration = Duration::from_millis(50);

/// Runs replays until `stop`.
pub(crate) async fn run_replays(
    pool: Pool,
    settings: Arc<WorkerSettings>,
    stop: CancellationToken,
) {
    let mut broker: Option<(lapin::Connection, ConfirmedPublisher)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
        let lease = match pool.get().await {
            Ok(client) => replays::lease_next(&**client, LEASE.as_secs_f64()).await,
            Err(e) => Err(e.into()),
        };
        let lease = match lease {
            Ok(Some(lease)) => lease,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "looking for a replay to run failed");
                continue;
            }
        };
        let publisher = match connected(&mut broker, &settings).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, replay_id = %lease.id, "replay waits for the broker");
                continue;
            }
        };
        tracing::info!(replay_id = %lease.id, webhook_id = lease.webhook_id, "replay running");
        if let Err(e) = run_lease(&pool, &settings, &publisher, lease, &stop).await {
            tracing::warn!(error = %e, "replay interrupted; it resumes from its last page");
            broker = None;
        }
    }
    if let Some((connection, _)) = broker {
        let _ = connection
            .close(200, "webhookd replays stopping".into())
            .await;
    }
}

/// The replay runner's broker connection, opened if needed.
async fn connected(
    broker: &mut Option<(lapin::Connection, ConfirmedPublisher)>,
    settings: &WorkerSettings,
) -> Result<ConfirmedPublisher, lapin::Error> {
    if let Some((connection, publisher)) = broker.as_ref() {
        if connection.status().connected() {
            return Ok(publisher.clone());
        }
    }
    let connection = webhookd_broker::connect(&settings.amqp_url, "webhookd-replays").await?;
    let publisher = ConfirmedPublisher::open(&connection).await?;
    *broker = Some((connection, publisher.clone()));
    Ok(publisher)
}

/// Why a lease was given up.
#[derive(Debug, thiserror::Error)]
enum Interrupted {
    #[error(transparent)]
    Store(#[from] webhookd_store::StoreError),
    #[error(transparent)]
    Pool(#[from] webhookd_store::PoolError),
    #[error(transparent)]
    Publish(#[from] webhookd_broker::PublishError),
}

/// Queues the leased replay's events, page by page, until it is done, cancelled, or `stop`.
async fn run_lease(
    pool: &Pool,
    settings: &WorkerSettings,
    publisher: &ConfirmedPublisher,
    mut lease: Lease,
    stop: &CancellationToken,
) -> Result<(), Interrupted> {
    let page = settings
        .replay_rate
        .ceil()
        .clamp(1.0, MAX_TASKS_PER_MESSAGE as f64) as i64;
    let pace = Duration::from_secs_f64(page as f64 / settings.replay_rate);
    loop {
        let started = Instant::now();
        let events = {
            let client = pool.get().await?;
            replays::next_page(&**client, &lease, page).await?
        };
        let Some(last) = events.last() else {
            let client = pool.get().await?;
            replays::finish(&**client, lease.id, None).await?;
            tracing::info!(replay_id = %lease.id, "replay done: every event queued");
            return Ok(());
        };
        lease.cursor = (last.created_at, last.id);
        let tasks = tasks(settings, &lease, &events);
        for chunk in tasks.chunks(MAX_TASKS_PER_MESSAGE) {
            let body = retry_task::encode(chunk);
            let queue = settings.topology.retry_queue();
            publisher
                .publish_json("", &queue, &body, None, None)
                .await?;
        }
        let advanced = {
            let client = pool.get().await?;
            let (n, t) = (events.len() as i64, tasks.len() as i64);
            replays::advance(&**client, &lease, n, t, LEASE.as_secs_f64()).await
        };
        if !still_running(pool, &lease, advanced).await? {
            return Ok(());
        }
        if !first_attempts_logged(pool, &lease, &tasks, stop).await? {
            return Ok(());
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pace.saturating_sub(started.elapsed())) => {}
        }
    }
}

/// Whether the replay is still running after a lease renewal that returned `advanced`; a permanent error fails
/// the replay.
async fn still_running(
    pool: &Pool,
    lease: &Lease,
    advanced: Result<bool, webhookd_store::StoreError>,
) -> Result<bool, Interrupted> {
    match advanced {
        Ok(true) => Ok(true),
        Ok(false) => {
            tracing::info!(replay_id = %lease.id, "replay cancelled");
            Ok(false)
        }
        Err(e) if e.class() == ErrorClass::Permanent => {
            let client = pool.get().await?;
            replays::finish(&**client, lease.id, Some(&e.to_string())).await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Waits until the first attempts of `tasks` are all logged, renewing the lease meanwhile; false if the replay
/// was cancelled or the worker is stopping.
async fn first_attempts_logged(
    pool: &Pool,
    lease: &Lease,
    tasks: &[RetryTask],
    stop: &CancellationToken,
) -> Result<bool, Interrupted> {
    let deliveries: Vec<uuid::Uuid> = tasks
        .iter()
        .map(|t| {
            let event = webhookd_core::EventId(t.event_id);
            webhookd_core::DeliveryId::for_replay(event, t.webhook_id, t.chunk, lease.id).0
        })
        .collect();
    let mut renewed = Instant::now();
    let (mut last, mut moved) = (-1, Instant::now());
    loop {
        let logged = {
            let client = pool.get().await?;
            replays::deliveries_logged(&**client, &deliveries).await?
        };
        if logged as usize >= deliveries.len() {
            return Ok(true);
        }
        if logged != last {
            (last, moved) = (logged, Instant::now());
        } else if moved.elapsed() >= STUCK {
            tracing::warn!(replay_id = %lease.id, logged, of = deliveries.len(),
                "a replay page's first attempts are not all logged after 5 minutes; queueing the next page");
            return Ok(true);
        }
        if renewed.elapsed() >= LEASE / 3 {
            let advanced = {
                let client = pool.get().await?;
                replays::advance(&**client, lease, 0, 0, LEASE.as_secs_f64()).await
            };
            if !still_running(pool, lease, advanced).await? {
                return Ok(false);
            }
            renewed = Instant::now();
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(LOGGED_POLL) => {}
        }
    }
}

/// The retry tasks of `events`: one per chunk of each, attempt 1, due now. An event that no longer parses
/// still gets one task, which the retry path closes as dead with the reason.
fn tasks(settings: &WorkerSettings, lease: &Lease, events: &[ReplayedEvent]) -> Vec<RetryTask> {
    let now = now_ms();
    events
        .iter()
        .flat_map(|e| {
            let chunks = Event::parse(e.body.as_bytes(), &settings.catalog)
                .ok()
                .and_then(|event| {
                    let spec = settings.catalog.get(&event.action)?;
                    Some(body::chunk_count(&event, spec, settings.batch_size))
                })
                .unwrap_or(1);
            (0..chunks as u32).map(move |chunk| RetryTask {
                event_id: e.id,
                webhook_id: lease.webhook_id,
                chunk,
                attempt: 1,
                due_at_ms: now,
                replay: Some(lease.id),
            })
        })
        .collect()
}
