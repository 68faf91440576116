//! The delivery log: one row per attempt, written in batches together with the webhooks' failure counters.

use chrono::{DateTime, Utc};
use deadpool_postgres::Client;
use uuid::Uuid;
use webhookd_core::actions::{PING, UNKNOWN_ACTION};
use webhookd_core::endpoint_health::{fold, summarize, HealthChange, HealthSignal};
use webhookd_core::{AttemptReport, DeliveryId, EventId};

use crate::events::{self, NewEvent};
use crate::StoreError;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered (2xx).
    Succeeded,
    /// Failed; another attempt is scheduled.
    Failed,
    /// Failed for good: the dead-letter state.
    Dead,
}

impl Outcome {
    /// The name stored in the log and shown by the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Dead => "dead",
        }
    }
}

/// The delivery an attempt belongs to: the columns every attempt of it shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryKey {
    /// The delivery (the `webhook-id` header).
    pub delivery_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// The webhook.
    pub webhook_id: i64,
    /// The webhook's organization.
    pub organization: i64,
    /// The action.
    pub action: String,
    /// The chunk of the event's instance list.
    pub chunk: i32,
    /// The replay that made the delivery, if one did.
    pub replay_id: Option<Uuid>,
}

impl DeliveryKey {
    /// The key of chunk `chunk` of `event_id` to `webhook_id` (made by `replay`, if a replay made it), whose
    /// delivery id is derived from them.
    pub fn new(
        event_id: EventId,
        webhook_id: i64,
        organization: i64,
        action: &str,
        chunk: u32,
        replay: Option<Uuid>,
    ) -> Self {
        Self {
            delivery_id: DeliveryId::of(event_id, webhook_id, chunk, replay).0,
            event_id: event_id.0,
            webhook_id,
            organization,
            action: action.to_owned(),
            chunk: chunk as i32,
            replay_id: replay,
        }
    }
}

/// One attempt, as logged.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    /// The delivery.
    pub key: DeliveryKey,
    /// Attempt number, 1 = first.
    pub attempt: i32,
    /// How it ended.
    pub outcome: Outcome,
    /// The response status, if any.
    pub http_status: Option<i16>,
    /// How long it took.
    pub duration_ms: i32,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// The start of the response body.
    pub response_excerpt: Option<String>,
    /// When the next attempt is due, for `Failed`.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// What the attempt says of the webhook's health; `None` if no request was made.
    pub health: Option<HealthSignal>,
}

impl AttemptRow {
    /// The row with the text taken from the receiver's answer (error and response excerpt) replaced by a note
    /// that says why it is not stored: what a log write does when the database refused the row as it was.
    pub fn without_network_text(mut self, why: &str) -> Self {
        self.response_excerpt = None;
        self.error = Some(format!("(the answer's text is not stored: {why})"));
        self
    }

    /// About how many bytes the row adds to a log write.
    pub fn bytes(&self) -> usize {
        const FIXED: usize = 160;
        FIXED
            + self.key.action.len()
            + self.error.as_ref().map_or(0, String::len)
            + self.response_excerpt.as_ref().map_or(0, String::len)
    }

    /// The row of attempt number `attempt`, made and answered as `report` says, ending as `outcome`.
    pub fn made(
        key: DeliveryKey,
        attempt: u32,
        outcome: Outcome,
        report: AttemptReport,
        next_attempt_at: Option<DateTime<Utc>>,
    ) -> Self {
        Self {
            key,
            attempt: attempt as i32,
            outcome,
            http_status: report.http_status.map(|s| s as i16),
            duration_ms: report.duration_ms(),
            health: HealthSignal::of(report.result),
            error: report.error,
            response_excerpt: report.excerpt,
            next_attempt_at,
        }
    }

    /// The row of attempt number `attempt` that will not be made: dead, with the reason.
    pub fn abandoned(key: DeliveryKey, attempt: u32, reason: &str) -> Self {
        Self {
            key,
            attempt: attempt as i32,
            outcome: Outcome::Dead,
            http_status: None,
            duration_ms: 0,
            error: Some(reason.to_owned()),
            response_excerpt: None,
            next_attempt_at: None,
            health: None,
        }
    }
}

/// Webhooks turned off by a batch: after a 410, or after failing long enough.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// The webhook.
    pub webhook_id: i64,
    /// Its consecutive failures after the batch.
    pub consecutive_failures: i32,
    /// Why, as the API shows it.
    pub reason: String,
}

/// When failures turn a webhook off: after at least `max_consecutive_failures` failed attempts in a row
/// (`WEBHOOK_MAX_CONSECUTIVE_FAILURES`, ≤ 0: never) that span at least `disable_after` with no success in between
/// (`WEBHOOK_DISABLE_AFTER`). A 410 Gone turns it off at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisableRule {
    /// Failed attempts in a row needed.
    pub max_consecutive_failures: i32,
    /// How long the failures must have lasted.
    pub disable_after: std::time::Duration,
}

impl DisableRule {
    /// Never turn a webhook off for its failures (a 410 still does).
    pub const NEVER: Self = Self {
        max_consecutive_failures: 0,
        disable_after: std::time::Duration::ZERO,
    };
}

/// What a log write did besides storing its rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogWritten {
    /// Webhooks it turned off.
    pub disabled: Vec<Disabled>,
    /// Events it stored again because they were missing (a database crash lost their claim).
    pub restored: Vec<Uuid>,
    /// Counter changes it did not make because another transaction held the webhook's row: for a later
    /// write to make (passed as its `carried`), so that no row lock holds up the log.
    pub deferred: Vec<HealthChange>,
}

/// Writes `rows` and updates the webhooks' `consecutive_failures` and `failing_since` (turning off those that
/// meet `rule`, and those that answered 410, with the reason and time) in one statement, so one round trip
/// and one synchronous commit, once per `write_id`: the same write made again (its first commit's reply was
/// lost) changes nothing.
///
/// `carried` are counter changes earlier writes deferred (`LogWritten::deferred`), made before these rows'.
/// A webhook row that another transaction holds (a PATCH, an operator's open transaction, a client lost
/// mid-transaction) is not waited for: the rows are written, and its change is deferred, so that one row
/// cannot stall the log, and with it every delivery's ack. A write made again after a lost reply
/// (`write_id` already committed) returns no deferred changes: those its first run deferred are lost.
///
/// `keep` are the events the rows, and the retry tasks that follow them, rely on. Their claims may have been
/// committed without waiting for the WAL flush, and a database crash can lose such a commit after the claim's
/// reply; the statement checks that each is stored and writes nothing if one is not. Those are then stored
/// again (a synchronous commit, which flushes every earlier commit of the same server too) and the statement
/// runs once more, so that once it returns every one of them is durable.
pub async fn write_attempts(
    client: &Client,
    write_id: Uuid,
    rows: &[&AttemptRow],
    keep: &[&NewEvent],
    carried: &[HealthChange],
    rule: DisableRule,
) -> Result<LogWritten, StoreError> {
    let changes = fold(
        carried.iter().copied(),
        summarize(
            rows.iter()
                .filter_map(|r| r.health.map(|h| (r.key.webhook_id, h))),
        ),
    );
    let (disabled, deferred) =
        match write_once(client, write_id, rows, keep, &changes, rule).await? {
            Once::Written(written) => written,
            Once::AlreadyWritten => return Ok(LogWritten::default()),
            Once::Missing(missing) => {
                let lost: Vec<&NewEvent> = keep
                    .iter()
                    .copied()
                    .filter(|e| missing.contains(&e.id))
                    .collect();
                // Those this insert stored (by their claim tokens): not one whose producer id another event has.
                let stored: Vec<Uuid> = events::insert_events(client, &lost)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<_, Uuid>(0))
                    .collect::<Result<_, _>>()?;
                let restored = lost
                    .iter()
                    .filter(|e| stored.contains(&e.claim_token))
                    .map(|e| e.id)
                    .collect();
                let (disabled, deferred) =
                    match write_once(client, write_id, rows, &[], &changes, rule).await? {
                        Once::Written(written) => written,
                        Once::AlreadyWritten | Once::Missing(_) => Default::default(),
                    };
                return Ok(LogWritten {
                    disabled,
                    restored,
                    deferred,
                });
            }
        };
    Ok(LogWritten {
        disabled,
        deferred,
        restored: Vec::new(),
    })
}

/// What one run of the log statement did.
enum Once {
    /// The rows are written; these webhooks were turned off, and these changes deferred.
    Written((Vec<Disabled>, Vec<HealthChange>)),
    /// A write with this id was committed before: nothing changed.
    AlreadyWritten,
    /// These events of `keep` are not stored: nothing was written.
    Missing(Vec<Uuid>),
}

/// The log statement: checks `keep`, marks the write id, inserts the rows and updates the webhooks' counters,
/// each step only if the ones before it let it (data-modifying CTEs: one statement, one implicit transaction).
const WRITE_ATTEMPTS: &str = "
WITH already AS (
    SELECT 1 FROM log_writes WHERE id = $1
), missing AS (
    -- Not for a write already committed: what it relied on may have been deleted since, by retention.
    SELECT u.id FROM unnest($2::uuid[]) AS u(id)
     WHERE NOT EXISTS (SELECT 1 FROM already)
       AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = u.id)
), mark AS (
    -- Always a write when the rows are written, so the commit is a synchronous one even without rows.
    INSERT INTO log_writes (id) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM missing)
    ON CONFLICT DO NOTHING RETURNING 1
), inserted AS (
    INSERT INTO delivery_attempts (delivery_id, event_id, webhook_id, organization, action, chunk,
        attempt, outcome, http_status, duration_ms, error, response_excerpt, next_attempt_at, replay_id)
    SELECT * FROM unnest($3::uuid[], $4::uuid[], $5::int8[], $6::int8[], $7::text[], $8::int4[],
        $9::int4[], $10::text[], $11::int2[], $12::int4[], $13::text[], $14::text[], $15::timestamptz[],
        $16::uuid[])
     WHERE EXISTS (SELECT 1 FROM mark)
), changes AS (
    SELECT * FROM unnest($17::int8[], $18::bool[], $19::int4[], $20::bool[]) AS u(id, reset, failures, gone)
     WHERE EXISTS (SELECT 1 FROM mark)
), counted AS (
    SELECT c.*, w.is_active AS was_active,
           CASE WHEN c.reset THEN c.failures ELSE w.consecutive_failures + c.failures END AS counter,
           -- When the current run of failures began: failures after the batch's last success begin a new
           -- one now.
           CASE WHEN c.failures = 0 THEN NULL
                WHEN c.reset THEN now()
                ELSE coalesce(w.failing_since, now()) END AS since
      FROM changes c JOIN webhooks w ON w.id = c.id
     WHERE c.failures > 0 OR c.gone OR w.consecutive_failures <> 0 OR w.failing_since IS NOT NULL
     ORDER BY w.id
    -- Locked, so the counters are computed from the row as another transaction (a PATCH that turns the webhook
    -- on again and resets them, another worker's write) left it, not from the statement's snapshot. A row
    -- another transaction holds is skipped, not waited for: its change is deferred to a later write.
       FOR NO KEY UPDATE OF w SKIP LOCKED
), deferred AS (
    SELECT c.id FROM changes c JOIN webhooks w ON w.id = c.id
     WHERE (c.failures > 0 OR c.gone OR w.consecutive_failures <> 0 OR w.failing_since IS NOT NULL)
       AND c.id NOT IN (SELECT id FROM counted)
), n AS (
    SELECT counted.*,
           was_active AND (gone OR ($21::int4 > 0 AND counter >= $21
               AND since <= now() - make_interval(secs => $22::float8))) AS turned_off
      FROM counted
), updated AS (
    UPDATE webhooks w
       SET consecutive_failures = n.counter,
           failing_since = n.since,
           is_active = w.is_active AND NOT n.turned_off,
           disabled_reason = CASE WHEN NOT n.turned_off THEN w.disabled_reason
               WHEN n.gone THEN 'the receiver answered 410 Gone'
               ELSE format('%s failed attempts in a row since %s, with no success in between',
                           n.counter, to_char(n.since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'))
               END,
           disabled_at = CASE WHEN n.turned_off THEN now() ELSE w.disabled_at END
      FROM n
     WHERE w.id = n.id
 RETURNING w.id, w.consecutive_failures, n.turned_off, w.disabled_reason
)
SELECT EXISTS (SELECT 1 FROM mark), ARRAY(SELECT id FROM missing), off.ids, off.counts, off.reasons,
       ARRAY(SELECT id FROM deferred)
  FROM (SELECT coalesce(array_agg(id ORDER BY id), '{}'),
               coalesce(array_agg(consecutive_failures ORDER BY id), '{}'),
               coalesce(array_agg(coalesce(disabled_reason, '') ORDER BY id), '{}')
          FROM updated WHERE turned_off) AS off(ids, counts, reasons)";

async fn write_once(
    client: &Client,
    write_id: Uuid,
    rows: &[&AttemptRow],
    keep: &[&NewEvent],
    changes: &[HealthChange],
    rule: DisableRule,
) -> Result<Once, StoreError> {
    let keep_ids: Vec<Uuid> = keep.iter().map(|e| e.id).collect();
    let delivery_ids: Vec<Uuid> = rows.iter().map(|r| r.key.delivery_id).collect();
    let event_ids: Vec<Uuid> = rows.iter().map(|r| r.key.event_id).collect();
    let webhook_ids: Vec<i64> = rows.iter().map(|r| r.key.webhook_id).collect();
    let orgs: Vec<i64> = rows.iter().map(|r| r.key.organization).collect();
    let actions: Vec<&str> = rows.iter().map(|r| r.key.action.as_str()).collect();
    let chunks: Vec<i32> = rows.iter().map(|r| r.key.chunk).collect();
    let replays: Vec<Option<Uuid>> = rows.iter().map(|r| r.key.replay_id).collect();
    let attempts: Vec<i32> = rows.iter().map(|r| r.attempt).collect();
    let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome.as_str()).collect();
    let statuses: Vec<Option<i16>> = rows.iter().map(|r| r.http_status).collect();
    let durations: Vec<i32> = rows.iter().map(|r| r.duration_ms).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|r| r.error.as_deref()).collect();
    let excerpts: Vec<Option<&str>> = rows.iter().map(|r| r.response_excerpt.as_deref()).collect();
    let next: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.next_attempt_at).collect();
    let ids: Vec<i64> = changes.iter().map(|c| c.webhook_id).collect();
    let resets: Vec<bool> = changes.iter().map(|c| c.reset).collect();
    let failures: Vec<i32> = changes.iter().map(|c| c.failures).collect();
    let gones: Vec<bool> = changes.iter().map(|c| c.gone).collect();
    let max = rule.max_consecutive_failures;
    let after = rule.disable_after.as_secs_f64();
    let statement = client.prepare_cached(WRITE_ATTEMPTS).await?;
    let row = client
        .query_one(
            &statement,
            &[
                &write_id,
                &keep_ids,
                &delivery_ids,
                &event_ids,
                &webhook_ids,
                &orgs,
                &actions,
                &chunks,
                &attempts,
                &outcomes,
                &statuses,
                &durations,
                &errors,
                &excerpts,
                &next,
                &replays,
                &ids,
                &resets,
                &failures,
                &gones,
                &max,
                &after,
            ],
        )
        .await?;
    let (marked, missing): (bool, Vec<Uuid>) = (row.try_get(0)?, row.try_get(1)?);
    if !missing.is_empty() {
        return Ok(Once::Missing(missing));
    }
    if !marked {
        return Ok(Once::AlreadyWritten);
    }
    let off_ids: Vec<i64> = row.try_get(2)?;
    let off_counts: Vec<i32> = row.try_get(3)?;
    let off_reasons: Vec<String> = row.try_get(4)?;
    let deferred_ids: Vec<i64> = row.try_get(5)?;
    let disabled = off_ids
        .into_iter()
        .zip(off_counts)
        .zip(off_reasons)
        .map(|((webhook_id, consecutive_failures), reason)| Disabled {
            webhook_id,
            consecutive_failures,
            reason,
        })
        .collect();
    let deferred = changes
        .iter()
        .filter(|c| deferred_ids.contains(&c.webhook_id))
        .copied()
        .collect();
    Ok(Once::Written((disabled, deferred)))
}

/// One logged attempt, as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// The row id.
    pub id: i64,
    /// The delivery.
    pub delivery_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// The webhook.
    pub webhook_id: i64,
    /// The webhook's organization.
    pub organization: i64,
    /// The action.
    pub action: String,
    /// The batch.
    pub chunk: i32,
    /// Attempt number.
    pub attempt: i32,
    /// `succeeded`, `failed` or `dead`.
    pub outcome: String,
    /// Response status.
    pub http_status: Option<i16>,
    /// Duration.
    pub duration_ms: i32,
    /// Error text.
    pub error: Option<String>,
    /// Start of the response body.
    pub response_excerpt: Option<String>,
    /// When the next attempt is due.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the attempt was logged.
    pub created_at: DateTime<Utc>,
    /// The replay that made the delivery, if one did.
    pub replay_id: Option<Uuid>,
}

const ATTEMPT_COLUMNS: &str =
    "id, delivery_id, event_id, webhook_id, organization, action, chunk, attempt,
    outcome, http_status, duration_ms, error, response_excerpt, next_attempt_at, created_at, replay_id";

fn attempt_from_row(r: &tokio_postgres::Row) -> Result<AttemptRecord, StoreError> {
    Ok(AttemptRecord {
        id: r.try_get(0)?,
        delivery_id: r.try_get(1)?,
        event_id: r.try_get(2)?,
        webhook_id: r.try_get(3)?,
        organization: r.try_get(4)?,
        action: r.try_get(5)?,
        chunk: r.try_get(6)?,
        attempt: r.try_get(7)?,
        outcome: r.try_get(8)?,
        http_status: r.try_get(9)?,
        duration_ms: r.try_get(10)?,
        error: r.try_get(11)?,
        response_excerpt: r.try_get(12)?,
        next_attempt_at: r.try_get(13)?,
        created_at: r.try_get(14)?,
        replay_id: r.try_get(15)?,
    })
}

/// Whose attempts a page of the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogScope {
    /// One webhook's.
    Webhook(i64),
    /// Every attempt of an organization, across its webhooks (deleted ones too).
    Organization(i64),
}

impl LogScope {
    /// The column the scope filters on, and its value.
    fn column(self) -> (&'static str, i64) {
        match self {
            LogScope::Webhook(id) => ("webhook_id", id),
            LogScope::Organization(id) => ("organization", id),
        }
    }
}

/// Filters and position of one page of the log.
#[derive(Debug, Clone, Default)]
pub struct AttemptQuery {
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only this action.
    pub action: Option<String>,
    /// Only attempts at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only attempts before this time.
    pub until: Option<DateTime<Utc>>,
    /// Keyset cursor: only attempts older than this (created_at, id).
    pub before: Option<(DateTime<Utc>, i64)>,
    /// Page size.
    pub limit: i64,
}

/// A page of the attempts of `scope`, newest first. A webhook's page reads the index on
/// `(webhook_id, created_at DESC, id DESC)`, an organization's the one on `(organization, created_at DESC, id DESC)`.
/// The cursor also bounds `created_at` alone, which the planner prunes partitions with (it does not with the
/// row comparison): a deep page reads the partitions from the cursor's back, not every newer one.
pub async fn list_attempts(
    client: &impl tokio_postgres::GenericClient,
    scope: LogScope,
    q: &AttemptQuery,
) -> Result<Vec<AttemptRecord>, StoreError> {
    let rows = query_attempts(client, scope, q, "").await?;
    rows.iter().map(attempt_from_row).collect()
}

/// The plan PostgreSQL runs [`list_attempts`] with, as `EXPLAIN (ANALYZE, COSTS OFF)` prints it (it runs the
/// query): for benchmarks and for operators who want to see which indexes and partitions a page reads.
pub async fn explain_list_attempts(
    client: &impl tokio_postgres::GenericClient,
    scope: LogScope,
    q: &AttemptQuery,
) -> Result<Vec<String>, StoreError> {
    let rows = query_attempts(client, scope, q, "EXPLAIN (ANALYZE, COSTS OFF) ").await?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(StoreError::from))
        .collect()
}

async fn query_attempts(
    client: &impl tokio_postgres::GenericClient,
    scope: LogScope,
    q: &AttemptQuery,
    prefix: &str,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let (before_at, before_id) = match q.before {
        Some((at, id)) => (Some(at), Some(id)),
        None => (None, None),
    };
    let (column, owner) = scope.column();
    let sql = format!(
        "{prefix}SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts WHERE {column} = $1
            AND ($2::text IS NULL OR outcome = $2) AND ($3::text IS NULL OR action = $3)
            AND ($4::timestamptz IS NULL OR created_at >= $4) AND ($5::timestamptz IS NULL OR created_at < $5)
            AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::int8))
            AND ($6::timestamptz IS NULL OR created_at <= $6)
          ORDER BY created_at DESC, id DESC LIMIT $8"
    );
    Ok(client
        .query(
            &sql,
            &[
                &owner, &q.outcome, &q.action, &q.since, &q.until, &before_at, &before_id, &q.limit,
            ],
        )
        .await?)
}

/// Every attempt of one delivery of `organization`, oldest first.
pub async fn delivery_attempts(
    client: &impl tokio_postgres::GenericClient,
    organization: i64,
    delivery_id: Uuid,
) -> Result<Vec<AttemptRecord>, StoreError> {
    let sql = format!(
        "SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts
          WHERE delivery_id = $1 AND organization = $2 ORDER BY created_at, id"
    );
    let rows = client.query(&sql, &[&delivery_id, &organization]).await?;
    rows.iter().map(attempt_from_row).collect()
}

/// The latest attempt of each delivery of `webhook_id` since `since` that is dead, or failed with its
/// retry overdue by a minute (a pending retry is left alone), oldest first, at most `limit`. Test pings
/// and attempts whose event was pruned are not redeliverable and are left out.
///
/// It reads only the unsuccessful attempts (the index on `(webhook_id, outcome, created_at)`) and keeps those
/// that no later attempt of the same delivery follows (the index on `delivery_id`, in the partitions from the
/// attempt's on), rather than the latest attempt of every delivery since `since`: a log of millions of
/// successful rows costs it nothing.
pub async fn unsuccessful_deliveries(
    client: &impl tokio_postgres::GenericClient,
    webhook_id: i64,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<AttemptRecord>, StoreError> {
    let rows = query_unsuccessful(client, webhook_id, since, limit, "").await?;
    rows.iter().map(attempt_from_row).collect()
}

/// The plan of [`unsuccessful_deliveries`], as `EXPLAIN (ANALYZE, COSTS OFF)` prints it (it runs the query).
pub async fn explain_unsuccessful_deliveries(
    client: &impl tokio_postgres::GenericClient,
    webhook_id: i64,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>, StoreError> {
    let rows = query_unsuccessful(
        client,
        webhook_id,
        since,
        limit,
        "EXPLAIN (ANALYZE, COSTS OFF) ",
    )
    .await?;
    rows.iter()
        .map(|r| r.try_get::<_, String>(0).map_err(StoreError::from))
        .collect()
}

async fn query_unsuccessful(
    client: &impl tokio_postgres::GenericClient,
    webhook_id: i64,
    since: DateTime<Utc>,
    limit: i64,
    prefix: &str,
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let sql = format!(
        "{prefix}SELECT {ATTEMPT_COLUMNS} FROM delivery_attempts a
          WHERE a.webhook_id = $1 AND a.created_at >= $2 AND a.outcome IN ('dead', 'failed')
            AND (a.outcome = 'dead' OR a.next_attempt_at < now() - interval '1 minute')
            AND a.action <> ALL($4)
            AND NOT EXISTS (SELECT 1 FROM delivery_attempts later
                             WHERE later.delivery_id = a.delivery_id AND later.created_at >= a.created_at
                               AND (later.created_at, later.id) > (a.created_at, a.id))
          ORDER BY a.created_at, a.id LIMIT $3"
    );
    let not_redeliverable = [PING, UNKNOWN_ACTION];
    Ok(client
        .query(
            &sql,
            &[&webhook_id, &since, &limit, &&not_redeliverable[..]],
        )
        .await?)
}
