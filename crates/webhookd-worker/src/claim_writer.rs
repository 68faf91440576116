//! The event-claim writer: stores new events in batches, before their first attempts, so that a re-published
//! event is delivered once and retries can read it back.

use std::sync::Arc;

use uuid::Uuid;
use webhookd_store::events::{self, Claim, NewEvent};
use webhookd_store::{Pool, StoreError};

use crate::batcher::{record_db_health, Flush};

/// Writes event claims in batches.
pub(crate) struct ClaimWriter(Pool);

impl ClaimWriter {
    /// A writer on `pool` (whose sessions may commit asynchronously: see `Worker::start`).
    pub(crate) fn new(pool: Pool) -> Self {
        Self(pool)
    }
}

impl Flush for ClaimWriter {
    type Req = Arc<NewEvent>;
    type Resp = Claim;

    async fn flush(&self, batch: &[Arc<NewEvent>], _: Uuid) -> Result<Vec<Claim>, StoreError> {
        // Claims carry their own tokens, which tell a claim made again from another message's.
        record_db_health(async { events::claim_events(&self.0.get().await?, batch).await }.await)
    }

    fn bytes(req: &Arc<NewEvent>) -> usize {
        const FIXED: usize = 100;
        FIXED + req.body.len() + req.action.len() + req.producer_id.as_ref().map_or(0, String::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::write_isolating;
    use crate::test_support::{refusing_trigger, TestDb};
    use webhookd_metrics::WriterProgress;
    use webhookd_store::ErrorClass;

    fn event(n: usize) -> Arc<NewEvent> {
        Arc::new(NewEvent {
            id: Uuid::now_v7(),
            organization: 1,
            project: None,
            action: "PROJECT_DELETED".into(),
            producer_id: Some(format!("event-{n}")),
            body: format!(r#"{{"n": {n}}}"#),
            claim_token: Uuid::new_v4(),
        })
    }

    #[tokio::test]
    async fn a_poisoned_event_in_the_middle_of_a_batch_is_refused_alone_and_the_rest_commit() {
        let db = TestDb::new().await;
        db.execute(&refusing_trigger(
            "events",
            "NEW.producer_id = 'event-5'",
            "23514",
        ))
        .await;
        let writer = ClaimWriter::new(db.pool.clone());
        let batch: Vec<Arc<NewEvent>> = (0..10).map(event).collect();
        let results = write_isolating(&writer, &batch, &WriterProgress::new("event_claim")).await;
        for (n, result) in results.iter().enumerate() {
            match (n, result) {
                (5, Err(e)) => {
                    assert_eq!(e.class(), ErrorClass::Permanent);
                    assert_eq!(e.sqlstate(), Some("23514"));
                    assert_eq!(
                        e.to_string(),
                        "database error: ERROR: refused by the test (SQLSTATE 23514)"
                    );
                }
                (5, Ok(_)) => panic!("the poisoned event was stored"),
                (_, Ok(claim)) => assert!(claim.fresh, "event {n}"),
                (_, Err(e)) => panic!("event {n} refused: {e}"),
            }
        }
        assert_eq!(db.count("SELECT count(*) FROM events").await, 9);
    }
}
