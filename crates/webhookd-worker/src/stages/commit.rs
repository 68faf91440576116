//! Stage 5: the attempts' log rows committed and their retry tasks confirmed by the broker — both before the
//! message is acknowledged.
//!
//! The log write comes first when the handler claimed an event and has tasks to publish: its synchronous
//! commit makes the event durable (see `LogRequest::keep`), so no task can exist for an event that a database
//! crash could still lose. Rows the database refuses for good are written again without the text taken from
//! the receiver's answer; refused again, the message goes to the dead-letter queue with the reason.

use std::sync::Arc;

use webhookd_broker::inbound::dead_letter;
use webhookd_broker::{Inbound, RetryTask};
use webhookd_store::delivery_log::AttemptRow;
use webhookd_store::events::NewEvent;

use crate::context::{Outbox, WorkerContext};
use crate::log_writer::LogRequest;
use crate::stages::attempt::AttemptMade;
use crate::stages::HandleError;

/// What a handler commits.
pub(crate) struct Commit {
    /// The attempts made (or closed as dead), each with its row and maybe its next attempt.
    pub(crate) made: Vec<AttemptMade>,
    /// Tasks that go to the ladder without an attempt: deferred first attempts, parked retries.
    pub(crate) passed_on: Vec<RetryTask>,
    /// The event the handler claimed, if it claimed one.
    pub(crate) claimed: Option<Arc<NewEvent>>,
}

/// Commits the log rows of `commit.made` and schedules the retry tasks they ask for (counted as retries
/// scheduled) with the tasks passed on.
pub(crate) async fn commit_attempts(
    ctx: &WorkerContext,
    outbox: &Outbox,
    message: &Inbound,
    commit: Commit,
) -> Result<(), HandleError> {
    let mut rows: Vec<AttemptRow> = Vec::with_capacity(commit.made.len());
    let mut tasks: Vec<RetryTask> = Vec::with_capacity(commit.made.len() + commit.passed_on.len());
    for AttemptMade { row, retry } in commit.made {
        rows.push(row);
        tasks.extend(retry);
    }
    let scheduled = tasks.len() as u64;
    tasks.extend(commit.passed_on);
    let log = LogRequest {
        rows,
        keep: commit.claimed.into_iter().collect(),
    };
    if !log.keep.is_empty() && !tasks.is_empty() {
        write_log(ctx, outbox, message, log).await?;
        outbox.retries.schedule(tasks).await?;
    } else {
        let (written, published) = tokio::join!(
            write_log(ctx, outbox, message, log),
            outbox.retries.schedule(tasks)
        );
        written?;
        published?;
    }
    webhookd_metrics::RETRIES_SCHEDULED.inc_by(scheduled);
    Ok(())
}

/// Writes the handler's rows (a request with no rows and no event to keep is no write at all), following the
/// rule for rows the database refuses.
async fn write_log(
    ctx: &WorkerContext,
    outbox: &Outbox,
    message: &Inbound,
    log: LogRequest,
) -> Result<(), HandleError> {
    if log.rows.is_empty() && log.keep.is_empty() {
        return Ok(());
    }
    let Err(refused) = ctx.log.submit(log).await? else {
        return Ok(());
    };
    let why = refused.error.to_string();
    let LogRequest { rows, keep } = refused.req;
    let rows = rows
        .into_iter()
        .map(|row| row.without_network_text(&why))
        .collect();
    let Err(again) = ctx.log.submit(LogRequest { rows, keep }).await? else {
        return Ok(());
    };
    let reason = format!(
        "the database refused the delivery-log rows of this message: {}",
        again.error
    );
    let topology = &ctx.settings.topology;
    dead_letter(&outbox.publisher, topology, message, &message.body, &reason).await?;
    Ok(())
}
