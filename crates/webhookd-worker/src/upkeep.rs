//! Background upkeep: retention (the delivery log's partitions, old events, expired idempotency keys and
//! log-write ids; one worker at a time), and the writers' stall signal (every second).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use webhookd_metrics::{
    WriterProgress, RETENTION_LAST_RUN, RETENTION_POSTPONED, RETENTION_REMOVED, RETENTION_RUNS,
};
use webhookd_store::retention::{self, RetentionRun, RetentionSettings};
use webhookd_store::{Pool, StoreError};

/// Runs retention every `settings.every()` until `stop` (the first run at once).
pub(crate) async fn keep_retention(
    pool: Pool,
    settings: RetentionSettings,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        match retention_once(&pool, &settings).await {
            Ok(Some(run)) => report(&run, started.elapsed()),
            Ok(None) => {
                RETENTION_RUNS.with_label_values(&["skipped"]).inc();
                tracing::debug!("retention skipped: another process is running it");
            }
            Err(e) => {
                RETENTION_RUNS.with_label_values(&["failed"]).inc();
                tracing::warn!(error = %e, sqlstate = e.sqlstate(), "retention failed; it runs again later");
            }
        }
    }
}

async fn retention_once(
    pool: &Pool,
    settings: &RetentionSettings,
) -> Result<Option<RetentionRun>, StoreError> {
    let mut client = pool.get().await?;
    retention::run(&mut client, settings).await
}

fn report(run: &RetentionRun, took: Duration) {
    RETENTION_RUNS.with_label_values(&["done"]).inc();
    let removed = [
        ("partitions", run.partitions_dropped.len() as u64),
        ("events", run.events_deleted),
        ("idempotency_keys", run.keys_deleted),
        ("default_rows", run.default_rows_deleted),
    ];
    for (what, n) in removed {
        RETENTION_REMOVED.with_label_values(&[what]).inc_by(n);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    RETENTION_LAST_RUN.set(now);
    if !run.postponed.is_empty() {
        let steps: Vec<&str> = run.postponed.iter().map(|s| s.name()).collect();
        for step in &steps {
            RETENTION_POSTPONED.with_label_values(&[step]).inc();
        }
        tracing::warn!(
            postponed = ?steps,
            lock_wait = retention::PARTITION_LOCK_WAIT,
            "retention postponed changes to the delivery log's partitions to its next run: another \
             transaction held a lock on delivery_attempts for longer than the wait (a long query or an \
             open transaction; see pg_stat_activity)"
        );
    }
    tracing::info!(
        partitions_created = run.partitions_created,
        partitions_dropped = ?run.partitions_dropped,
        events_deleted = run.events_deleted,
        idempotency_keys_deleted = run.keys_deleted,
        default_rows_moved = run.default_rows_moved,
        default_rows_deleted = run.default_rows_deleted,
        log_writes_forgotten = run.writes_forgotten,
        took_ms = took.as_millis() as u64,
        "retention run"
    );
}

/// How often the writers' stall signal is refreshed.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Refreshes the writers' stall series every second until `stop`, and logs when a writer stalls (with the
/// last error it met: the database's message and SQLSTATE) and when it recovers.
pub(crate) async fn watch_writers(
    writers: Vec<Arc<WriterProgress>>,
    after: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(STALL_CHECK);
    let mut stalled: HashSet<&'static str> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for writer in &writers {
            match writer.stall(after, now) {
                Some(stall) if stalled.insert(stall.writer) => tracing::error!(
                    writer = stall.writer,
                    stalled_for_s = stall.for_.as_secs(),
                    last_error = stall.last_error.as_deref(),
                    "writer stalled"
                ),
                Some(_) => {}
                None if stalled.remove(writer.name()) => {
                    tracing::info!(writer = writer.name(), "writer committing again")
                }
                None => {}
            }
        }
    }
}
