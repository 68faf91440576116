//! The path of one retry message, top to bottom: parse (or dead-letter) → move the tasks not yet due down the
//! delay ladder, and make the due ones (load their events; each admitted by the retry lane and its webhook's
//! cap, or parked back on the ladder; one attempt each) → dead-letter what no one can be logged for → commit
//! attempts (and the parked tasks) → settle.

use std::sync::Arc;

use webhookd_broker::inbound::dead_letter;
use webhookd_broker::retry_task::{self, now_ms};
use webhookd_broker::{Inbound, RetryTask, Topology};
use webhookd_metrics::Held;

use crate::acks::Pending;
use crate::context::{Outbox, WorkerContext};
use crate::stages::attempt::AttemptMade;
use crate::stages::commit::{commit_attempts, Commit};
use crate::stages::parse::parse_tasks_or_dead_letter;
use crate::stages::retry_attempt::{retry_attempts, RetryOutcome};
use crate::stages::settle::settle;
use crate::stages::HandleError;

/// Handles one message of retry tasks from the retry queue and settles it.
pub(crate) async fn handle_retry(
    ctx: Arc<WorkerContext>,
    outbox: Outbox,
    message: Inbound,
    pending: Pending,
) {
    let _held = Held::new(&webhookd_metrics::MESSAGES_IN_FLIGHT);
    let result = retry_tasks(&ctx, &outbox, &message).await;
    settle(pending, result).await;
}

async fn retry_tasks(
    ctx: &WorkerContext,
    outbox: &Outbox,
    message: &Inbound,
) -> Result<(), HandleError> {
    let Some(tasks) = parse_tasks_or_dead_letter(ctx, outbox, message).await? else {
        return Ok(());
    };
    let (later, due) = split_by_due(&ctx.settings.topology, tasks);
    let (moved, outcomes) = tokio::join!(outbox.retries.schedule(later), retry_attempts(ctx, &due));
    moved?;
    let mut logged: Vec<AttemptMade> = Vec::new();
    let mut parked: Vec<RetryTask> = Vec::new();
    let mut unloggable: Vec<(RetryTask, String)> = Vec::new();
    for outcome in outcomes? {
        match outcome {
            RetryOutcome::Logged(made) => logged.push(made),
            RetryOutcome::Parked(task) => parked.push(task),
            RetryOutcome::Unloggable { task, reason } => unloggable.push((task, reason)),
        }
    }
    dead_letter_unloggable(ctx, outbox, message, unloggable).await?;
    let commit = Commit {
        made: logged,
        passed_on: parked,
        claimed: None,
    };
    commit_attempts(ctx, outbox, message, commit).await
}

/// Tasks not due yet take one more step down the delay ladder, at once; the others are made here.
fn split_by_due(topology: &Topology, tasks: Vec<RetryTask>) -> (Vec<RetryTask>, Vec<RetryTask>) {
    let now = now_ms();
    tasks
        .into_iter()
        .partition(|t| topology.rung_for(t.remaining(now)).is_some())
}

/// Tasks whose event and webhook are both gone: nothing tells whose they were, so they are kept as a dead
/// letter for an operator.
async fn dead_letter_unloggable(
    ctx: &WorkerContext,
    outbox: &Outbox,
    message: &Inbound,
    unloggable: Vec<(RetryTask, String)>,
) -> Result<(), HandleError> {
    if unloggable.is_empty() {
        return Ok(());
    }
    let (tasks, reasons): (Vec<RetryTask>, Vec<String>) = unloggable.into_iter().unzip();
    let body = retry_task::encode(&tasks);
    let topology = &ctx.settings.topology;
    dead_letter(
        &outbox.publisher,
        topology,
        message,
        &body,
        &reasons.join("; "),
    )
    .await?;
    Ok(())
}
