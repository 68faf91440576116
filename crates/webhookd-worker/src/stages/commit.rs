//! Stage 5: the attempts' log rows committed and their retry tasks confirmed by the broker — both before the
//! message is acknowledged.

use webhookd_broker::RetryTask;
use webhookd_store::delivery_log::AttemptRow;

use crate::context::{Outbox, WorkerContext};
use crate::stages::attempt::AttemptMade;
use crate::stages::HandleError;

/// Commits the log rows of `made` and schedules the retry tasks they ask for (counted as retries scheduled)
/// together with `passed_on`, tasks that go to the ladder without an attempt.
pub(crate) async fn commit_attempts(
    ctx: &WorkerContext,
    outbox: &Outbox,
    made: Vec<AttemptMade>,
    passed_on: Vec<RetryTask>,
) -> Result<(), HandleError> {
    let mut rows: Vec<AttemptRow> = Vec::with_capacity(made.len());
    let mut tasks: Vec<RetryTask> = Vec::with_capacity(made.len() + passed_on.len());
    for AttemptMade { row, retry } in made {
        rows.push(row);
        tasks.extend(retry);
    }
    let scheduled = tasks.len() as u64;
    tasks.extend(passed_on);
    let (written, published) = tokio::join!(ctx.log.submit(rows), outbox.retries.schedule(tasks));
    written?;
    published?;
    webhookd_metrics::RETRIES_SCHEDULED.inc_by(scheduled);
    Ok(())
}
