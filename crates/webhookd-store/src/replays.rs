//! Replays and backfills: the stored events of a window that match a webhook's subscription, sent again as new
//! deliveries. A job row says what to send and how far it got; a worker holding its lease queues the events in
//! order (`next_page`, `advance`), and its counts come from the delivery log.

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::StoreError;

/// What a replay sends.
#[derive(Debug, Clone, PartialEq)]
pub struct NewReplay {
    /// The organization asking.
    pub organization: i64,
    /// Its webhook to send to.
    pub webhook_id: i64,
    /// Events stored at or after this time ...
    pub since: DateTime<Utc>,
    /// ... and before this one.
    pub until: DateTime<Utc>,
    /// Only these actions (of those the webhook subscribes to); `None`: all of them.
    pub actions: Option<Vec<String>>,
}

/// A replay, with its progress.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayRecord {
    /// Its id.
    pub id: Uuid,
    /// Its organization.
    pub organization: i64,
    /// The webhook it sends to.
    pub webhook_id: i64,
    /// The window's start.
    pub since: DateTime<Utc>,
    /// The window's end.
    pub until: DateTime<Utc>,
    /// The actions it was asked for (`None`: all the webhook subscribes to).
    pub actions: Option<Vec<String>>,
    /// `running`, `done`, `cancelled` or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Events it sends, counted when it was created.
    pub total: i64,
    /// Events queued so far.
    pub events_queued: i64,
    /// Deliveries queued so far (an event cut into chunks is one delivery per chunk).
    pub tasks_queued: i64,
    /// Deliveries that succeeded.
    pub succeeded: i64,
    /// Deliveries that ended dead.
    pub dead: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Done, cancelled or failed.
    pub finished_at: Option<DateTime<Utc>>,
}

impl ReplayRecord {
    /// Deliveries not finished yet: those queued and not ended, and one per event not queued yet.
    pub fn left(&self) -> i64 {
        let not_queued = (self.total - self.events_queued).max(0);
        let in_flight = (self.tasks_queued - self.succeeded - self.dead).max(0);
        match self.state.as_str() {
            "cancelled" | "failed" => in_flight,
            _ => not_queued + in_flight,
        }
    }
}

/// Why a replay was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateReplayError {
    /// The webhook is not the organization's.
    #[error("not found")]
    NotFound,
    /// The webhook is off: nothing would be sent.
    #[error("the webhook is inactive")]
    Inactive,
    /// A replay to the same webhook is running.
    #[error("replay {0} to this webhook is running")]
    Running(Uuid),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The webhook's subscription as a replay filters events by it: project and listed actions.
struct Filter {
    project: Option<i64>,
    actions: Option<Vec<String>>,
}

const SELECT_REPLAYS: &str = "
    SELECT r.id, r.organization, r.webhook_id, r.since, r.until, r.actions, r.state, r.error,
           coalesce(r.total, 0) AS total, r.queued, r.tasks_queued, r.created_at, r.finished_at,
           coalesce(c.succeeded, 0) AS succeeded, coalesce(c.dead, 0) AS dead
      FROM replays r
      LEFT JOIN LATERAL (
          SELECT count(*) FILTER (WHERE outcome = 'succeeded') AS succeeded,
                 count(*) FILTER (WHERE outcome = 'dead') AS dead
            FROM (SELECT DISTINCT ON (a.delivery_id) a.outcome FROM delivery_attempts a
                   WHERE a.replay_id = r.id ORDER BY a.delivery_id, a.created_at DESC, a.id DESC) latest
      ) c ON true";

fn record(row: &Row) -> Result<ReplayRecord, StoreError> {
    Ok(ReplayRecord {
        id: row.try_get("id")?,
        organization: row.try_get("organization")?,
        webhook_id: row.try_get("webhook_id")?,
        since: row.try_get("since")?,
        until: row.try_get("until")?,
        actions: row.try_get("actions")?,
        state: row.try_get("state")?,
        error: row.try_get("error")?,
        total: row.try_get("total")?,
        events_queued: row.try_get("queued")?,
        tasks_queued: row.try_get("tasks_queued")?,
        succeeded: row.try_get("succeeded")?,
        dead: row.try_get("dead")?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

/// Creates a replay of the organization's webhook, counting the events it will send.
pub async fn create(
    client: &mut tokio_postgres::Client,
    new: &NewReplay,
) -> Result<ReplayRecord, CreateReplayError> {
    let tx = client.transaction().await.map_err(StoreError::from)?;
    // Locks the webhook row: two replays of one webhook cannot be created at once.
    let webhook = tx
        .query_opt(
            "SELECT w.project, w.is_active, w.send_for_all_actions,
                    ARRAY(SELECT a.action FROM webhook_actions a WHERE a.webhook_id = w.id) AS listed
               FROM webhooks w WHERE w.organization = $1 AND w.id = $2 FOR UPDATE",
            &[&new.organization, &new.webhook_id],
        )
        .await
        .map_err(StoreError::from)?
        .ok_or(CreateReplayError::NotFound)?;
    if !webhook
        .try_get::<_, bool>("is_active")
        .map_err(StoreError::from)?
    {
        return Err(CreateReplayError::Inactive);
    }
    let running = tx
        .query_opt(
            "SELECT id FROM replays WHERE webhook_id = $1 AND state = 'running'",
            &[&new.webhook_id],
        )
        .await
        .map_err(StoreError::from)?;
    if let Some(row) = running {
        return Err(CreateReplayError::Running(
            row.try_get(0).map_err(StoreError::from)?,
        ));
    }
    let filter = filter(&webhook, new.actions.as_deref()).map_err(CreateReplayError::Store)?;
    let total: i64 = tx
        .query_one(
            "SELECT count(*) FROM events
              WHERE organization = $1 AND created_at >= $2 AND created_at < $3
                AND ($4::int8 IS NULL OR project = $4) AND ($5::text[] IS NULL OR action = ANY($5))",
            &[
                &new.organization,
                &new.since,
                &new.until,
                &filter.project,
                &filter.actions,
            ],
        )
        .await
        .map_err(StoreError::from)?
        .try_get(0)
        .map_err(StoreError::from)?;
    let id = Uuid::now_v7();
    tx.execute(
        "INSERT INTO replays (id, organization, webhook_id, since, until, actions, project_filter,
                              actions_filter, total)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &id,
            &new.organization,
            &new.webhook_id,
            &new.since,
            &new.until,
            &new.actions,
            &filter.project,
            &filter.actions,
            &total,
        ],
    )
    .await
    .map_err(StoreError::from)?;
    let created = get(&tx, new.organization, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("replay {id} vanished")))?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(created)
}

/// The events a replay of `webhook` sends: its project's (all, for an organization-level webhook), of the
/// actions it subscribes to, narrowed to `asked` if given.
fn filter(webhook: &Row, asked: Option<&[String]>) -> Result<Filter, StoreError> {
    let project: Option<i64> = webhook.try_get("project")?;
    let all: bool = webhook.try_get("send_for_all_actions")?;
    let listed: Vec<String> = webhook.try_get("listed")?;
    let actions = match (all, asked) {
        (true, None) => None,
        (true, Some(asked)) => Some(asked.to_vec()),
        (false, None) => Some(listed),
        (false, Some(asked)) => Some(
            asked
                .iter()
                .filter(|a| listed.contains(a))
                .cloned()
                .collect(),
        ),
    };
    Ok(Filter { project, actions })
}

/// Replay `id` of `organization`, with its progress.
pub async fn get(
    client: &impl GenericClient,
    organization: i64,
    id: Uuid,
) -> Result<Option<ReplayRecord>, StoreError> {
    let sql = format!("{SELECT_REPLAYS} WHERE r.id = $1 AND r.organization = $2");
    let row = client.query_opt(&sql, &[&id, &organization]).await?;
    row.as_ref().map(record).transpose()
}

/// The replays of a webhook of `organization`, newest first, at most `limit`.
pub async fn list(
    client: &impl GenericClient,
    organization: i64,
    webhook_id: i64,
    limit: i64,
) -> Result<Vec<ReplayRecord>, StoreError> {
    let sql = format!(
        "{SELECT_REPLAYS} WHERE r.webhook_id = $1 AND r.organization = $2
          ORDER BY r.created_at DESC LIMIT $3"
    );
    let rows = client
        .query(&sql, &[&webhook_id, &organization, &limit])
        .await?;
    rows.iter().map(record).collect()
}

/// Cancels replay `id` of `organization` if it is running; returns it (`None` if it is not the organization's).
pub async fn cancel(
    client: &impl GenericClient,
    organization: i64,
    id: Uuid,
) -> Result<Option<ReplayRecord>, StoreError> {
    client
        .execute(
            "UPDATE replays SET state = 'cancelled', finished_at = now(), updated_at = now(),
                                leased_until = NULL
              WHERE id = $1 AND organization = $2 AND state = 'running'",
            &[&id, &organization],
        )
        .await?;
    get(client, organization, id).await
}

/// The replays among `ids` that were cancelled.
pub async fn cancelled_among(
    client: &impl deadpool_postgres::GenericClient,
    ids: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    let rows = client
        .query(
            "SELECT id FROM replays WHERE id = ANY($1) AND state = 'cancelled'",
            &[&ids],
        )
        .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// A replay a worker runs: where it is, and what it sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    /// The replay.
    pub id: Uuid,
    /// Its organization.
    pub organization: i64,
    /// Its webhook.
    pub webhook_id: i64,
    /// The window's end.
    pub until: DateTime<Utc>,
    /// Only this project's events (a project webhook's).
    pub project: Option<i64>,
    /// Only these actions.
    pub actions: Option<Vec<String>>,
    /// The last event queued, (created_at, id); at first, just before the window.
    pub cursor: (DateTime<Utc>, Uuid),
}

/// Takes the lease of the oldest running replay that no worker holds (or whose holder stopped renewing it),
/// for `secs` seconds.
pub async fn lease_next(
    client: &impl GenericClient,
    secs: f64,
) -> Result<Option<Lease>, StoreError> {
    let row = client
        .query_opt(
            "UPDATE replays SET leased_until = now() + make_interval(secs => $1), updated_at = now()
              WHERE id = (SELECT id FROM replays
                           WHERE state = 'running' AND (leased_until IS NULL OR leased_until < now())
                           ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)
              RETURNING id, organization, webhook_id, since, until, project_filter, actions_filter,
                        cursor_at, cursor_id",
            &[&secs],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let since: DateTime<Utc> = row.try_get("since")?;
    let cursor = match (
        row.try_get::<_, Option<DateTime<Utc>>>("cursor_at")?,
        row.try_get::<_, Option<Uuid>>("cursor_id")?,
    ) {
        (Some(at), Some(id)) => (at, id),
        // Before every event of the window: at its start, below every id.
        _ => (since, Uuid::nil()),
    };
    Ok(Some(Lease {
        id: row.try_get("id")?,
        organization: row.try_get("organization")?,
        webhook_id: row.try_get("webhook_id")?,
        until: row.try_get("until")?,
        project: row.try_get("project_filter")?,
        actions: row.try_get("actions_filter")?,
        cursor,
    }))
}

/// A stored event as a replay sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayedEvent {
    /// Its id.
    pub id: Uuid,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
    /// Its envelope.
    pub body: String,
}

/// The next `limit` events of the lease after its cursor, in event order.
pub async fn next_page(
    client: &impl GenericClient,
    lease: &Lease,
    limit: i64,
) -> Result<Vec<ReplayedEvent>, StoreError> {
    let rows = client
        .query(
            "SELECT id, created_at, body::text FROM events
              WHERE organization = $1 AND (created_at, id) > ($2, $3) AND created_at < $4
                AND ($5::int8 IS NULL OR project = $5) AND ($6::text[] IS NULL OR action = ANY($6))
              ORDER BY created_at, id LIMIT $7",
            &[
                &lease.organization,
                &lease.cursor.0,
                &lease.cursor.1,
                &lease.until,
                &lease.project,
                &lease.actions,
                &limit,
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(ReplayedEvent {
                id: r.try_get(0)?,
                created_at: r.try_get(1)?,
                body: r.try_get(2)?,
            })
        })
        .collect()
}

/// Records that the events up to `cursor` are queued (`events` more, as `tasks` deliveries) and renews the
/// lease for `secs`; false if the replay is no longer running (it was cancelled).
pub async fn advance(
    client: &impl GenericClient,
    lease: &Lease,
    events: i64,
    tasks: i64,
    secs: f64,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE replays SET queued = queued + $2, tasks_queued = tasks_queued + $3,
                                cursor_at = $4, cursor_id = $5,
                                leased_until = now() + make_interval(secs => $6), updated_at = now()
              WHERE id = $1 AND state = 'running'",
            &[
                &lease.id,
                &events,
                &tasks,
                &lease.cursor.0,
                &lease.cursor.1,
                &secs,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// How many of `deliveries` have an attempt in the log.
pub async fn deliveries_logged(
    client: &impl GenericClient,
    deliveries: &[Uuid],
) -> Result<i64, StoreError> {
    Ok(client
        .query_one(
            "SELECT count(DISTINCT delivery_id) FROM delivery_attempts WHERE delivery_id = ANY($1)",
            &[&deliveries],
        )
        .await?
        .try_get(0)?)
}

/// Marks the replay done (everything queued), or failed with `error`.
pub async fn finish(
    client: &impl GenericClient,
    id: Uuid,
    error: Option<&str>,
) -> Result<(), StoreError> {
    let state = if error.is_some() { "failed" } else { "done" };
    client
        .execute(
            "UPDATE replays SET state = $2, error = $3, finished_at = now(), updated_at = now(),
                                leased_until = NULL
              WHERE id = $1 AND state = 'running'",
            &[&id, &state, &error],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(
        state: &str,
        total: i64,
        events: i64,
        tasks: i64,
        ok: i64,
        dead: i64,
    ) -> ReplayRecord {
        ReplayRecord {
            id: Uuid::nil(),
            organization: 1,
            webhook_id: 1,
            since: Utc::now(),
            until: Utc::now(),
            actions: None,
            state: state.into(),
            error: None,
            total,
            events_queued: events,
            tasks_queued: tasks,
            succeeded: ok,
            dead,
            created_at: Utc::now(),
            finished_at: None,
        }
    }

    #[test]
    fn left_counts_what_is_not_queued_and_what_is_queued_but_not_ended() {
        assert_eq!(replay("running", 10, 4, 4, 2, 1).left(), 6 + 1);
        assert_eq!(replay("done", 10, 10, 12, 11, 1).left(), 0);
        assert_eq!(
            replay("cancelled", 10, 4, 4, 3, 0).left(),
            1,
            "what was not queued is not left"
        );
    }
}
