//! The delivery-log writer: commits attempt rows in batches, with the webhooks' failure counters, and makes
//! the events they rely on durable.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use webhookd_core::endpoint_health::{fold, HealthChange};
use webhookd_store::delivery_log::{self, AttemptRow, DisableRule, LogWritten};
use webhookd_store::events::NewEvent;
use webhookd_store::{ErrorClass, Pool, StoreError};

use crate::batcher::{record_db_health, Batcher, Flush};

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
    carried: Arc<Mutex<Carried>>,
}

/// Counter changes a write deferred because another transaction held the webhook's row: the next write makes
/// them (one change per webhook, however long the row stays held).
#[derive(Default)]
struct Carried {
    /// For the next write.
    waiting: Vec<HealthChange>,
    /// Given to a write that failed transiently: for its retry (same write id) alone, so that a retry whose
    /// first run did commit does not make them twice.
    in_flight: HashMap<Uuid, Vec<HealthChange>>,
}

impl LogWriter {
    /// A writer on `pool` that turns webhooks off by `rule`.
    pub(crate) fn new(pool: Pool, rule: DisableRule) -> Self {
        Self {
            pool,
            rule,
            carried: Arc::default(),
        }
    }

    /// Whether changes wait for a write: the worker submits an empty request when they do and no traffic
    /// comes (see `apply_deferred`).
    pub(crate) fn deferred(&self) -> Deferred {
        Deferred(self.carried.clone())
    }

    fn carried(&self) -> MutexGuard<'_, Carried> {
        lock(&self.carried)
    }

    /// The changes write `write_id` makes before its rows': those its failed first run had, or else all those
    /// waiting.
    fn take_carried(&self, write_id: Uuid) -> Vec<HealthChange> {
        let mut carried = self.carried();
        match carried.in_flight.remove(&write_id) {
            Some(changes) => changes,
            None => std::mem::take(&mut carried.waiting),
        }
    }

    /// Puts `changes`, older than those waiting, back for the next write.
    fn defer(&self, changes: Vec<HealthChange>) {
        if changes.is_empty() {
            return;
        }
        let mut carried = self.carried();
        let waiting = std::mem::take(&mut carried.waiting);
        carried.waiting = fold(changes, waiting);
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
        let carried = self.take_carried(write_id);
        let written = record_db_health(
            async {
                let client = self.pool.get().await?;
                delivery_log::write_attempts(&client, write_id, &rows, &keep, &carried, self.rule)
                    .await
            }
            .await,
        );
        let mut written = match written {
            Ok(written) => written,
            Err(e) => {
                if e.class() == ErrorClass::Transient {
                    self.carried().in_flight.insert(write_id, carried);
                } else {
                    self.defer(carried);
                }
                return Err(e);
            }
        };
        if !written.deferred.is_empty() {
            tracing::debug!(webhooks = written.deferred.len(),
                "webhook rows held by another transaction; their failure counters are updated by a later write");
        }
        self.defer(std::mem::take(&mut written.deferred));
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

fn lock(carried: &Mutex<Carried>) -> MutexGuard<'_, Carried> {
    carried.lock().unwrap_or_else(|e| e.into_inner())
}

/// A view of the changes a `LogWriter` deferred.
#[derive(Clone)]
pub(crate) struct Deferred(Arc<Mutex<Carried>>);

impl Deferred {
    fn waiting(&self) -> bool {
        !lock(&self.0).waiting.is_empty()
    }
}

/// How often deferred counter changes are looked for when no traffic writes them.
const DEFERRED_CHECK: Duration = Duration::from_secs(1);

/// Until `stop`: every second, if changes wait and nothing wrote them, submits a write of no rows to `log`,
/// which makes them (or defers them again while their rows are still held). Without it a webhook whose row
/// was held would keep stale counters until its next attempt.
pub(crate) async fn apply_deferred(
    log: Batcher<LogWriter>,
    deferred: Deferred,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(DEFERRED_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if deferred.waiting() {
            let empty = LogRequest {
                rows: Vec::new(),
                keep: Vec::new(),
            };
            if log.submit(empty).await.is_err() {
                return;
            }
        }
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
    use webhookd_core::endpoint_health::HealthSignal;
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
        let (rows, keep) = ([&fine], [&event]);
        let write_it =
            || delivery_log::write_attempts(&client, write, &rows, &keep, &[], DisableRule::NEVER);
        let first = write_it().await.unwrap();
        assert!(first.restored.is_empty());
        // Retention deleted the event since; the same write, made again (its reply was lost), finds its id.
        db.execute(&format!("DELETE FROM events WHERE id = '{}'", event.id))
            .await;
        let again = write_it().await.unwrap();
        assert_eq!(again, LogWritten::default());
        assert_eq!(db.count("SELECT count(*) FROM events").await, 0);
        assert_eq!(db.count("SELECT count(*) FROM delivery_attempts").await, 1);
    }

    /// A row of `webhook` whose attempt says `signal`.
    fn attempt_of(webhook: i64, signal: HealthSignal) -> LogRequest {
        let mut row = row("answer");
        row.key = DeliveryKey::new(EventId::new(), webhook, 1, "PROJECT_DELETED", 0, None);
        if signal != HealthSignal::Success {
            row.outcome = Outcome::Failed;
        }
        row.health = Some(signal);
        LogRequest {
            rows: vec![row],
            keep: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_webhook_row_held_by_another_transaction_holds_up_no_write_and_is_counted_once_free()
    {
        let db = TestDb::new().await;
        let mut client = db.pool.get().await.unwrap();
        let new = webhookd_store::webhooks::NewWebhook::new(1, None, "http://127.0.0.1:9/x");
        let mut ids = Vec::new();
        for _ in 0..2 {
            let (id, _) = webhookd_store::webhooks::create_webhook(&mut client, &new)
                .await
                .unwrap();
            ids.push(id);
        }
        let (held, other) = (ids[0], ids[1]);
        for id in [held, other] {
            db.execute(&format!(
                "UPDATE webhooks SET consecutive_failures = 5, failing_since = now() WHERE id = {id}"
            ))
            .await;
        }
        // A PATCH turning `held` on again, its transaction open (a slow client, an operator's session, a
        // client lost mid-transaction) while failures of both webhooks are logged.
        let mut patch = db.pool.get().await.unwrap();
        let tx = patch.transaction().await.unwrap();
        tx.execute(
            "UPDATE webhooks SET consecutive_failures = 0, failing_since = NULL WHERE id = $1",
            &[&held],
        )
        .await
        .unwrap();
        let writer = LogWriter::new(db.pool.clone(), DisableRule::NEVER);
        let progress = WriterProgress::new("delivery_log");
        let batch = [
            attempt_of(held, HealthSignal::Failure),
            attempt_of(other, HealthSignal::Failure),
        ];
        let written = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            write_isolating(&writer, &batch, &progress),
        )
        .await
        .expect("the write waited for the held row");
        assert!(written.iter().all(Result::is_ok));
        assert_eq!(db.count("SELECT count(*) FROM delivery_attempts").await, 2);
        let failures = |id: i64| {
            let db = &db;
            async move {
                db.count(&format!(
                    "SELECT consecutive_failures::int8 FROM webhooks WHERE id = {id}"
                ))
                .await
            }
        };
        assert_eq!(failures(other).await, 6, "the free row is counted at once");
        // Once the PATCH commits, the next write counts the deferred failure after its reset: 0 + 1 + 1, even
        // though its first run fails (a serialization failure, retried under the same write id).
        tx.commit().await.unwrap();
        db.execute("CREATE SEQUENCE flaky").await;
        let once = "NEW.response_excerpt = 'flaky' AND nextval('flaky') = 1";
        db.execute(&refusing_trigger("delivery_attempts", once, "40001"))
            .await;
        let mut next = attempt_of(held, HealthSignal::Failure);
        next.rows[0].response_excerpt = Some("flaky".into());
        assert!(write_isolating(&writer, &[next], &progress).await[0].is_ok());
        assert_eq!(
            db.count("SELECT last_value FROM flaky").await,
            2,
            "the first run failed"
        );
        assert_eq!(
            failures(held).await,
            2,
            "counted from the PATCH's reset, each failure once"
        );
        assert_eq!(failures(other).await, 6);
    }

    #[tokio::test]
    async fn a_retry_whose_first_run_committed_makes_its_carried_changes_no_more_and_leaves_the_others(
    ) {
        let db = TestDb::new().await;
        let mut client = db.pool.get().await.unwrap();
        let new = webhookd_store::webhooks::NewWebhook::new(1, None, "http://127.0.0.1:9/x");
        let (id, _) = webhookd_store::webhooks::create_webhook(&mut client, &new)
            .await
            .unwrap();
        let failures = |n| HealthChange {
            webhook_id: id,
            reset: false,
            failures: n,
            gone: false,
        };
        let writer = LogWriter::new(db.pool.clone(), DisableRule::NEVER);
        let batch = [attempt_of(id, HealthSignal::Failure)];
        let write = uuid::Uuid::now_v7();
        // The first run commits (its reply lost, as the retry below assumes): one failure.
        writer.flush(&batch, write).await.unwrap();
        // Its retry holds what the first run carried (already made), and 5 more wait for the next write.
        writer.carried().in_flight.insert(write, vec![failures(1)]);
        writer.defer(vec![failures(5)]);
        writer.flush(&batch, write).await.unwrap();
        let query = format!("SELECT consecutive_failures::int8 FROM webhooks WHERE id = {id}");
        let counted = || db.count(&query);
        assert_eq!(counted().await, 1, "the retry made nothing again");
        assert_eq!(writer.carried().waiting, vec![failures(5)]);
        writer.flush(&[], uuid::Uuid::now_v7()).await.unwrap();
        assert_eq!(counted().await, 6, "the next write made the waiting ones");
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
