//! Retention: what is kept and for how long. One worker at a time (a PostgreSQL advisory lock) creates the
//! delivery log's partitions ahead, moves rows that landed in its default partition into partitions of their
//! own, drops the partitions past the retention window, deletes the events past it (unless a pending retry or
//! a running replay still needs them), expired idempotency keys and old log-write ids, and vacuums the tables
//! it deleted from.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use tokio_postgres::GenericClient;

use crate::StoreError;

/// The advisory lock that makes one worker at a time run retention.
const LOCK: i64 = 7_310_663;
/// Rows deleted per statement, so that no statement holds locks or builds up WAL for long.
const BATCH: i64 = 10_000;
/// How long the ids of committed log writes are kept (at most: never longer than the retention window): a write
/// whose commit is in doubt is made again within seconds, or once the database is back after an outage.
pub const WRITE_IDS_KEPT: Duration = Duration::from_secs(3600);
/// How long after its due time a failed attempt's retry counts as pending (its event is kept meanwhile).
pub const PENDING_GRACE: Duration = Duration::from_secs(3600);
/// How long a step that changes the delivery log's partitions waits for its lock before it is postponed to the
/// next run: PostgreSQL queues every later log write behind a waiting DDL, so this is also the longest that
/// retention can hold the log's writes, and every ack with them, while something else reads the log. (The same
/// value is set on the partition functions by migration V8.)
pub const PARTITION_LOCK_WAIT: &str = "200ms";

/// A step of retention that changes the delivery log's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionStep {
    /// Moving rows out of the default partition into partitions of their own.
    AdoptDefaultRows,
    /// Creating the partitions ahead.
    CreatePartitions,
    /// Dropping the partitions past the retention window.
    DropPartitions,
}

impl PartitionStep {
    /// The step's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            PartitionStep::AdoptDefaultRows => "adopt_default_rows",
            PartitionStep::CreatePartitions => "create_partitions",
            PartitionStep::DropPartitions => "drop_partitions",
        }
    }
}

/// What to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetentionSettings {
    /// How long delivery-log rows and events are kept (`WEBHOOKD_LOG_RETENTION_DAYS`).
    pub keep: Duration,
    /// The span of one delivery-log partition (`WEBHOOKD_LOG_PARTITION_MINUTES`), a divisor of a day.
    pub partition_span: Duration,
    /// How long idempotency keys are kept (`WEBHOOKD_IDEMPOTENCY_KEY_HOURS`).
    pub idempotency_keys: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            keep: Duration::from_secs(30 * 86_400),
            partition_span: Duration::from_secs(86_400),
            idempotency_keys: Duration::from_secs(86_400),
        }
    }
}

impl RetentionSettings {
    /// How far ahead partitions exist: a week of daily ones, or at least a few spans and an hour.
    pub fn partitions_ahead(&self) -> Duration {
        (self.partition_span * 4)
            .max(Duration::from_secs(3600))
            .min(Duration::from_secs(7 * 86_400))
            .max(self.partition_span)
    }

    /// How often retention runs: every hour, or every quarter of the partition span or of the retention
    /// window when that is shorter, but not more than every 10 seconds.
    pub fn every(&self) -> Duration {
        Duration::from_secs(3600)
            .min(self.partition_span / 4)
            .min(self.keep / 4)
            .max(Duration::from_secs(10))
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionRun {
    /// Partitions created ahead.
    pub partitions_created: i32,
    /// Partitions dropped (past the window).
    pub partitions_dropped: Vec<String>,
    /// Rows found in the default partition and moved to a partition of their own.
    pub default_rows_moved: u64,
    /// Rows of the default partition past the window, deleted.
    pub default_rows_deleted: u64,
    /// Events deleted.
    pub events_deleted: u64,
    /// Idempotency keys deleted.
    pub keys_deleted: u64,
    /// Log-write ids forgotten.
    pub writes_forgotten: u64,
    /// Steps put off to the next run because another transaction held a lock on the delivery log for longer
    /// than [`PARTITION_LOCK_WAIT`] (a long query or an open transaction that read or wrote it).
    pub postponed: Vec<PartitionStep>,
}

/// The plain client behind a pooled one.
fn pg(client: &Client) -> &tokio_postgres::Client {
    client
}

/// Runs retention once, unless another process is running it (`Ok(None)`).
pub async fn run(
    client: &mut Client,
    settings: &RetentionSettings,
) -> Result<Option<RetentionRun>, StoreError> {
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&LOCK])
        .await?
        .try_get(0)?;
    if !locked {
        return Ok(None);
    }
    let result = run_locked(client, settings).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK])
        .await;
    let run = result?;
    unlocked?;
    Ok(Some(run))
}

async fn run_locked(
    client: &mut Client,
    settings: &RetentionSettings,
) -> Result<RetentionRun, StoreError> {
    let now: DateTime<Utc> = client.query_one("SELECT now()", &[]).await?.try_get(0)?;
    let cutoff = now - chrono::Duration::from_std(settings.keep).unwrap_or(chrono::Duration::MAX);
    let mut run = RetentionRun {
        default_rows_deleted: delete_expired_default_rows(pg(client), cutoff).await?,
        ..RetentionRun::default()
    };
    let moved = adopt_default_rows(client, settings.partition_span).await;
    if let Some(moved) = run.unless_busy(PartitionStep::AdoptDefaultRows, moved)? {
        run.default_rows_moved = moved;
    }
    let created = ensure_partitions(
        pg(client),
        settings.partitions_ahead(),
        settings.partition_span,
    )
    .await;
    if let Some(created) = run.unless_busy(PartitionStep::CreatePartitions, created)? {
        run.partitions_created = created;
    }
    let dropped = drop_partitions_before(pg(client), cutoff).await;
    if let Some(dropped) = run.unless_busy(PartitionStep::DropPartitions, dropped)? {
        run.partitions_dropped = dropped;
    }
    run.events_deleted = delete_events(pg(client), cutoff).await?;
    let keys_cutoff = now
        - chrono::Duration::from_std(settings.idempotency_keys).unwrap_or(chrono::Duration::MAX);
    run.keys_deleted = delete_in_batches(
        pg(client),
        "DELETE FROM idempotency_keys WHERE ctid IN
             (SELECT ctid FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
        keys_cutoff,
    )
    .await?;
    let writes_kept = WRITE_IDS_KEPT.min(settings.keep);
    let writes_cutoff =
        now - chrono::Duration::from_std(writes_kept).unwrap_or(chrono::Duration::MAX);
    run.writes_forgotten = delete_in_batches(
        pg(client),
        "DELETE FROM log_writes WHERE ctid IN
             (SELECT ctid FROM log_writes WHERE created_at < $1 LIMIT $2)",
        writes_cutoff,
    )
    .await?;
    vacuum_what_shrank(pg(client), &run).await?;
    Ok(run)
}

impl RetentionRun {
    /// A step's result, or `None` when it was postponed because its lock was busy (recorded in `postponed`).
    fn unless_busy<T>(
        &mut self,
        step: PartitionStep,
        result: Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_lock_not_available() => {
                self.postponed.push(step);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Drops the delivery log's partitions whose range ends before `cutoff`; returns their names.
async fn drop_partitions_before(
    client: &impl GenericClient,
    cutoff: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    client
        .query("SELECT webhookd_drop_log_partitions_before($1)", &[&cutoff])
        .await?
        .iter()
        .map(|r| r.try_get(0).map_err(StoreError::from))
        .collect()
}

/// Vacuums the tables this run deleted from, so that their space is reused by the next rows rather than the
/// tables growing, whatever autovacuum's settings (it may be off, or behind on a busy table). A plain `VACUUM`
/// takes no lock that stops writes, and skips the pages the visibility map says have nothing to clean.
async fn vacuum_what_shrank(
    client: &impl GenericClient,
    run: &RetentionRun,
) -> Result<(), StoreError> {
    for (table, deleted) in [
        ("events", run.events_deleted),
        ("idempotency_keys", run.keys_deleted),
        ("log_writes", run.writes_forgotten),
    ] {
        if deleted > 0 {
            client.batch_execute(&format!("VACUUM {table}")).await?;
        }
    }
    Ok(())
}

/// Creates the delivery log's partitions from the current one to `ahead` from now, each `span` long; returns
/// how many it made. Gives up with SQLSTATE 55P03 ([`StoreError::is_lock_not_available`]) when another transaction holds a
/// lock on the delivery log for longer than [`PARTITION_LOCK_WAIT`], rather than hold every log write.
pub async fn ensure_partitions(
    client: &impl GenericClient,
    ahead: Duration,
    span: Duration,
) -> Result<i32, StoreError> {
    Ok(client
        .query_one(
            "SELECT webhookd_ensure_log_partitions(make_interval(secs => $1), make_interval(secs => $2))",
            &[&ahead.as_secs_f64(), &span.as_secs_f64()],
        )
        .await?
        .try_get(0)?)
}

/// Deletes the rows of the default partition past the window (rows land there when no partition covers
/// their time); returns how many.
async fn delete_expired_default_rows(
    client: &impl GenericClient,
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    delete_in_batches(
        client,
        "DELETE FROM delivery_attempts_default WHERE ctid IN
             (SELECT ctid FROM delivery_attempts_default WHERE created_at < $1 LIMIT $2)",
        cutoff,
    )
    .await
}

/// The other rows in the default partition, which would stop the creation of the partition their time belongs
/// to, move in one transaction to a new partition of their span, attached in place. Returns how many moved.
async fn adopt_default_rows(client: &mut Client, span: Duration) -> Result<u64, StoreError> {
    let any: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM delivery_attempts_default)",
            &[],
        )
        .await?
        .try_get(0)?;
    if !any {
        return Ok(0);
    }
    let span_s = span.as_secs_f64();
    let tx = client.transaction().await?;
    // No row may land in the default partition while its rows move out. The lock, and the ATTACH's on the
    // delivery log, are waited for no longer than the partition functions' (see PARTITION_LOCK_WAIT).
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{PARTITION_LOCK_WAIT}';
         LOCK TABLE delivery_attempts_default IN ACCESS EXCLUSIVE MODE"
    ))
    .await?;
    let ranges = tx
        .query(
            "SELECT DISTINCT date_bin(make_interval(secs => $1), created_at, timestamptz '2000-01-01 00:00:00+00')
               FROM delivery_attempts_default ORDER BY 1",
            &[&span_s],
        )
        .await?;
    let mut moved = 0;
    for row in ranges {
        let start: DateTime<Utc> = row.try_get(0)?;
        let end = start + chrono::Duration::from_std(span).unwrap_or(chrono::Duration::MAX);
        let name = format!("delivery_attempts_{}", start.format("%Y%m%d_%H%M%S_moved"));
        let sql = format!(
            "CREATE TABLE \"{name}\" (LIKE delivery_attempts INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
             WITH moved AS (DELETE FROM delivery_attempts_default
                             WHERE created_at >= '{start}' AND created_at < '{end}' RETURNING *)
             INSERT INTO \"{name}\" SELECT * FROM moved;
             ALTER TABLE delivery_attempts ATTACH PARTITION \"{name}\" FOR VALUES FROM ('{start}') TO ('{end}');",
            start = start.to_rfc3339(),
            end = end.to_rfc3339(),
        );
        tx.batch_execute(&sql).await?;
        let n: i64 = tx
            .query_one(&format!("SELECT count(*) FROM \"{name}\""), &[])
            .await?
            .try_get(0)?;
        moved += n as u64;
    }
    tx.commit().await?;
    if moved > 0 {
        tracing::warn!(
            rows = moved,
            "delivery-log rows found in the default partition were moved to partitions of their own"
        );
    }
    Ok(moved)
}

/// Deletes events past `cutoff`, in batches, but those whose retries are still pending (a failed attempt due
/// in the future or within [`PENDING_GRACE`]) and those a running replay may still send.
async fn delete_events(
    client: &impl GenericClient,
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let grace = PENDING_GRACE.as_secs_f64();
    let mut total = 0;
    loop {
        let n = client
            .execute(
                "WITH pending AS (
                     SELECT DISTINCT event_id FROM delivery_attempts
                      WHERE outcome = 'failed' AND next_attempt_at > now() - make_interval(secs => $3)
                 )
                 DELETE FROM events WHERE id IN (
                     SELECT e.id FROM events e
                      WHERE e.created_at < $1
                        AND e.id NOT IN (SELECT event_id FROM pending)
                        AND NOT EXISTS (SELECT 1 FROM replays r
                                         WHERE r.state = 'running' AND r.organization = e.organization
                                           AND e.created_at >= r.since)
                      LIMIT $2)",
                &[&cutoff, &BATCH, &grace],
            )
            .await?;
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

/// Runs a `DELETE … LIMIT $2` statement taking the cutoff as `$1` until it deletes less than a batch.
async fn delete_in_batches(
    client: &impl GenericClient,
    sql: &str,
    cutoff: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let n = client.execute(sql, &[&cutoff, &BATCH]).await?;
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_functions_wait_for_their_lock_as_long_as_the_move_out_of_the_default_partition(
    ) {
        let migration = include_str!("../../../migrations/V8__partition_lock_wait.sql");
        let set = format!("SET lock_timeout = '{PARTITION_LOCK_WAIT}'");
        assert_eq!(migration.matches(&set).count(), 2, "{migration}");
    }

    #[test]
    fn partitions_exist_ahead_and_retention_runs_often_enough_for_its_spans() {
        let daily = RetentionSettings::default();
        assert_eq!(daily.partitions_ahead(), Duration::from_secs(4 * 86_400));
        assert_eq!(daily.every(), Duration::from_secs(3600));
        let minutes = RetentionSettings {
            keep: Duration::from_secs(300),
            partition_span: Duration::from_secs(60),
            idempotency_keys: Duration::from_secs(60),
        };
        assert_eq!(minutes.partitions_ahead(), Duration::from_secs(3600));
        assert_eq!(minutes.every(), Duration::from_secs(15));
    }
}
