//! An organization's figures at a glance: its attempts over the last hour and day by outcome, and when each of
//! its webhooks last succeeded.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use crate::StoreError;

/// Attempts logged in a window, by outcome. Test pings count: they are requests made like any other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptCounts {
    /// Every attempt.
    pub attempts: i64,
    /// Attempts answered with a 2xx.
    pub succeeded: i64,
    /// Failed attempts with another attempt scheduled.
    pub failed: i64,
    /// Failed attempts that ended their delivery.
    pub dead: i64,
}

/// An organization's attempts over the last hour and the last day (each up to now).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecentAttempts {
    /// The last 60 minutes.
    pub last_hour: AttemptCounts,
    /// The last 24 hours.
    pub last_day: AttemptCounts,
}

/// Counts `organization`'s attempts of the last hour and day. One range of the index on
/// `(organization, created_at DESC, id DESC) INCLUDE (outcome)`, which the count can read alone; the partitions
/// older than a day are skipped.
pub async fn recent_attempts(
    client: &impl GenericClient,
    organization: i64,
) -> Result<RecentAttempts, StoreError> {
    let row = client
        .query_one(
            "WITH recent AS (
                 SELECT created_at >= now() - interval '1 hour' AS in_hour, outcome FROM delivery_attempts
                  WHERE organization = $1 AND created_at >= now() - interval '1 day'
             )
             SELECT count(*) FILTER (WHERE in_hour),
                    count(*) FILTER (WHERE in_hour AND outcome = 'succeeded'),
                    count(*) FILTER (WHERE in_hour AND outcome = 'failed'),
                    count(*) FILTER (WHERE in_hour AND outcome = 'dead'),
                    count(*),
                    count(*) FILTER (WHERE outcome = 'succeeded'),
                    count(*) FILTER (WHERE outcome = 'failed'),
                    count(*) FILTER (WHERE outcome = 'dead')
               FROM recent",
            &[&organization],
        )
        .await?;
    let counts = |from: usize| -> Result<AttemptCounts, StoreError> {
        Ok(AttemptCounts {
            attempts: row.try_get(from)?,
            succeeded: row.try_get(from + 1)?,
            failed: row.try_get(from + 2)?,
            dead: row.try_get(from + 3)?,
        })
    };
    Ok(RecentAttempts {
        last_hour: counts(0)?,
        last_day: counts(4)?,
    })
}

/// For each webhook of `organization`, by id: when an attempt to it last succeeded (test pings included), `None`
/// if none did within the log's retention. One probe of the index on `(webhook_id, outcome, created_at DESC, id
/// DESC)` per webhook.
pub async fn last_successes(
    client: &impl GenericClient,
    organization: i64,
) -> Result<Vec<(i64, Option<DateTime<Utc>>)>, StoreError> {
    let rows = client
        .query(
            "SELECT w.id,
                    (SELECT a.created_at FROM delivery_attempts a
                      WHERE a.webhook_id = w.id AND a.outcome = 'succeeded'
                      ORDER BY a.created_at DESC, a.id DESC LIMIT 1)
               FROM webhooks w WHERE w.organization = $1 ORDER BY w.id",
            &[&organization],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
