//! The delivery-log writer: commits attempt rows in batches, with the webhooks' failure counters.

use uuid::Uuid;
use webhookd_store::delivery_log::{self, AttemptRow};
use webhookd_store::{Pool, StoreError};

use crate::batcher::{record_db_health, Flush};

/// Writes delivery-log rows in batches, with the webhooks' failure counters.
pub(crate) struct LogWriter {
    pool: Pool,
    max_consecutive_failures: i32,
}

impl LogWriter {
    /// A writer on `pool` that turns a webhook off after `max_consecutive_failures` (≤ 0: never).
    pub(crate) fn new(pool: Pool, max_consecutive_failures: i32) -> Self {
        Self {
            pool,
            max_consecutive_failures,
        }
    }
}

impl Flush for LogWriter {
    type Req = Vec<AttemptRow>;
    type Resp = ();
    async fn flush(
        &self,
        batch: &[Vec<AttemptRow>],
        write_id: Uuid,
    ) -> Result<Vec<()>, StoreError> {
        let rows: Vec<&AttemptRow> = batch.iter().flatten().collect();
        let disabled = record_db_health(
            async {
                let mut client = self.pool.get().await?;
                delivery_log::write_attempts(
                    &mut client,
                    write_id,
                    &rows,
                    self.max_consecutive_failures,
                )
                .await
            }
            .await,
        )?;
        webhookd_metrics::LOG_ROWS.inc_by(rows.len() as u64);
        webhookd_metrics::LOG_BATCH.observe(rows.len() as f64);
        for d in disabled {
            tracing::warn!(
                webhook_id = d.webhook_id,
                consecutive_failures = d.consecutive_failures,
                "webhook turned off (410 Gone or too many consecutive failures)"
            );
        }
        Ok(vec![(); batch.len()])
    }
}
