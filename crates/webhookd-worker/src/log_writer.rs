//! The delivery-log writer: commits attempt rows in batches, with the webhooks' failure counters, and makes
//! the events they rely on durable.

use std::sync::Arc;

use uuid::Uuid;
use webhookd_store::delivery_log::{self, AttemptRow, DisableRule, LogWritten};
use webhookd_store::events::NewEvent;
use webhookd_store::{Pool, StoreError};

use crate::batcher::{record_db_health, Flush};

/// What one handler logs.
pub(crate) struct LogRequest {
    /// Its attempts' rows (possibly none).
    pub(crate) rows: Vec<AttemptRow>,
    /// The events its rows and retry tasks rely on, stored again if a database crash lost their claim.
    pub(crate) keep: Vec<Arc<NewEvent>>,
}

/// Writes delivery-log rows in batches, with the webhooks' failure counters.
pub(crate) struct LogWriter {
    pool: Pool,
    rule: DisableRule,
}

impl LogWriter {
    /// A writer on `pool` that turns webhooks off by `rule`.
    pub(crate) fn new(pool: Pool, rule: DisableRule) -> Self {
        Self { pool, rule }
    }
}

impl Flush for LogWriter {
    type Req = LogRequest;
    type Resp = ();

    async fn flush(&self, batch: &[LogRequest], write_id: Uuid) -> Result<Vec<()>, StoreError> {
        let rows: Vec<&AttemptRow> = batch.iter().flat_map(|r| &r.rows).collect();
        let keep: Vec<&NewEvent> = batch
            .iter()
            .flat_map(|r| r.keep.iter().map(|e| &**e))
            .collect();
        let written = record_db_health(
            async {
                let client = self.pool.get().await?;
                delivery_log::write_attempts(&client, write_id, &rows, &keep, self.rule).await
            }
            .await,
        )?;
        webhookd_metrics::LOG_ROWS.inc_by(rows.len() as u64);
        webhookd_metrics::LOG_BATCH.observe(rows.len() as f64);
        report(&written);
        Ok(vec![(); batch.len()])
    }

    fn bytes(req: &LogRequest) -> usize {
        const PER_EVENT: usize = 16;
        req.rows.iter().map(AttemptRow::bytes).sum::<usize>() + PER_EVENT * req.keep.len()
    }
}

fn report(written: &LogWritten) {
    for d in &written.disabled {
        tracing::warn!(
            webhook_id = d.webhook_id,
            consecutive_failures = d.consecutive_failures,
            reason = %d.reason,
            "webhook turned off"
        );
    }
    if !written.restored.is_empty() {
        webhookd_metrics::EVENTS_RESTORED.inc_by(written.restored.len() as u64);
        tracing::warn!(events = written.restored.len(), event_ids = ?written.restored,
            "events whose claims a database crash had lost were stored again before their messages were acked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::write_isolating;
    use crate::test_support::{refusing_trigger, TestDb};
    use webhookd_core::{AttemptReport, AttemptResult, EventId};
    use webhookd_metrics::WriterProgress;
    use webhookd_store::delivery_log::{DeliveryKey, Outcome};
    use webhookd_store::events::claim_events;

    fn row(excerpt: &str) -> AttemptRow {
        let report = AttemptReport {
            result: AttemptResult::Status {
                code: 200,
                retry_after: None,
            },
            http_status: Some(200),
            error: None,
            excerpt: Some(excerpt.to_owned()),
            duration: std::time::Duration::from_millis(2),
        };
        let key = DeliveryKey::new(EventId::new(), 1, 1, "PROJECT_DELETED", 0, None);
        AttemptRow::made(key, 1, Outcome::Succeeded, report, None)
    }

    fn request(excerpt: &str) -> LogRequest {
        LogRequest {
            rows: vec![row(excerpt), row(excerpt)],
            keep: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_poisoned_row_in_the_middle_of_a_batch_is_refused_with_its_request_alone() {
        let db = TestDb::new().await;
        let condition = "NEW.response_excerpt LIKE '%poison%'";
        db.execute(&refusing_trigger("delivery_attempts", condition, "22021"))
            .await;
        let writer = LogWriter::new(db.pool.clone(), DisableRule::NEVER);
        let batch: Vec<LogRequest> = (0..7)
            .map(|n| request(if n == 3 { "poison" } else { "fine" }))
            .collect();
        let results = write_isolating(&writer, &batch, &WriterProgress::new("delivery_log")).await;
        let refused: Vec<usize> = (0..7).filter(|n| results[*n].is_err()).collect();
        assert_eq!(refused, [3]);
        assert_eq!(db.count("SELECT count(*) FROM delivery_attempts").await, 12);
        // The rule of the commit stage: the same rows without the answer's text are accepted.
        let why = results[3].as_ref().unwrap_err().to_string();
        let safe = LogRequest {
            rows: request("poison")
                .rows
                .into_iter()
                .map(|r| r.without_network_text(&why))
                .collect(),
            keep: Vec::new(),
        };
        let again = write_isolating(&writer, &[safe], &WriterProgress::new("delivery_log")).await;
        assert!(again[0].is_ok());
        let noted = db
            .count(
                "SELECT count(*) FROM delivery_attempts WHERE response_excerpt IS NULL
                   AND error = '(the answer''s text is not stored: database error: ERROR: refused by the test (SQLSTATE 22021))'",
            )
            .await;
        assert_eq!(noted, 2);
    }

    #[tokio::test]
    async fn a_write_made_again_after_its_commit_changes_nothing_not_even_an_event_deleted_since() {
        let db = TestDb::new().await;
        let event = NewEvent {
            id: uuid::Uuid::now_v7(),
            organization: 1,
            project: None,
            action: "PROJECT_DELETED".into(),
            producer_id: None,
            body: r#"{"version": 1}"#.into(),
            claim_token: uuid::Uuid::new_v4(),
        };
        let client = db.pool.get().await.unwrap();
        claim_events(&client, std::slice::from_ref(&event))
            .await
            .unwrap();
        let (write, fine) = (uuid::Uuid::now_v7(), row("fine"));
        let first =
            delivery_log::write_attempts(&client, write, &[&fine], &[&event], DisableRule::NEVER)
                .await
                .unwrap();
        assert!(first.restored.is_empty());
        // Retention deleted the event since; the same write, made again (its reply was lost), finds its id.
        db.execute(&format!("DELETE FROM events WHERE id = '{}'", event.id))
            .await;
        let again =
            delivery_log::write_attempts(&client, write, &[&fine], &[&event], DisableRule::NEVER)
                .await
                .unwrap();
        assert_eq!(again, LogWritten::default());
        assert_eq!(db.count("SELECT count(*) FROM events").await, 0);
        assert_eq!(db.count("SELECT count(*) FROM delivery_attempts").await, 1);
    }

    #[tokio::test]
    async fn a_failure_counted_while_a_patch_resets_the_webhook_counts_from_the_reset() {
        let db = TestDb::new().await;
        let mut client = db.pool.get().await.unwrap();
        let new = webhookd_store::webhooks::NewWebhook::new(1, None, "http://127.0.0.1:9/x");
        let (id, _) = webhookd_store::webhooks::create_webhook(&mut client, &new)
            .await
            .unwrap();
        db.execute(&format!(
            "UPDATE webhooks SET consecutive_failures = 5, failing_since = now() WHERE id = {id}"
        ))
        .await;
        // A PATCH turning it on again, its transaction still open while a log write counts a failure.
        let mut patch = db.pool.get().await.unwrap();
        let tx = patch.transaction().await.unwrap();
        tx.execute(
            "UPDATE webhooks SET consecutive_failures = 0, failing_since = NULL WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
        let mut failed = row("down");
        failed.key = DeliveryKey::new(EventId::new(), id, 1, "PROJECT_DELETED", 0, None);
        failed.outcome = Outcome::Failed;
        failed.health = Some(webhookd_core::endpoint_health::HealthSignal::Failure);
        let write = tokio::spawn(async move {
            delivery_log::write_attempts(
                &client,
                uuid::Uuid::now_v7(),
                &[&failed],
                &[],
                DisableRule::NEVER,
            )
            .await
            .map(drop)
        });
        // The write waits for the PATCH's row lock, then the PATCH commits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while db
            .count("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()")
            .await
            == 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the write never waited"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        tx.commit().await.unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(
            db.count(&format!(
                "SELECT consecutive_failures::int8 FROM webhooks WHERE id = {id}"
            ))
            .await,
            1,
            "one failure after the reset, not 5 + 1"
        );
    }

    #[tokio::test]
    async fn a_log_write_stores_again_an_event_whose_claim_was_lost() {
        let db = TestDb::new().await;
        let event = Arc::new(NewEvent {
            id: uuid::Uuid::now_v7(),
            organization: 1,
            project: Some(7),
            action: "TASKS_CREATED".into(),
            producer_id: Some("lost".into()),
            body: r#"{"version": 1, "id": "lost"}"#.into(),
            claim_token: uuid::Uuid::new_v4(),
        });
        let kept = Arc::new(NewEvent {
            id: uuid::Uuid::now_v7(),
            producer_id: Some("kept".into()),
            ..(*event).clone()
        });
        {
            let client = db.pool.get().await.unwrap();
            claim_events(&client, std::slice::from_ref(&kept))
                .await
                .unwrap();
        }
        // `event`'s claim is not there, as after a crash that lost its asynchronous commit.
        let writer = LogWriter::new(db.pool.clone(), DisableRule::NEVER);
        let request = LogRequest {
            rows: vec![row("fine")],
            keep: vec![event.clone(), kept.clone()],
        };
        let results =
            write_isolating(&writer, &[request], &WriterProgress::new("delivery_log")).await;
        assert!(results[0].is_ok());
        let stored = db
            .count(&format!(
                "SELECT count(*) FROM events WHERE id IN ('{}', '{}') AND claim_token IS NOT NULL",
                event.id, kept.id
            ))
            .await;
        assert_eq!(stored, 2);
    }
}
