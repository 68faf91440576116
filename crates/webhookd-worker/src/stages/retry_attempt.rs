//! Retry stage 3: the due tasks of one retry message, each made in a retry slot of its own once it is due —
//! or, when its event, its webhook or its subscription is gone, closed in the log as dead with the reason.

use std::collections::HashMap;

use uuid::Uuid;
use webhookd_broker::retry_task::now_ms;
use webhookd_broker::RetryTask;
use webhookd_core::actions::UNKNOWN_ACTION;
use webhookd_core::{Event, EventId, Subscription};
use webhookd_store::delivery_log::{AttemptRow, DeliveryKey};

use crate::batcher::Stopped;
use crate::context::WorkerContext;
use crate::stages::attempt::{attempt, AttemptInput, AttemptMade, AttemptOrigin};
use crate::stages::load::{load_events, StoredEvent, Unsendable};

/// What became of one retry task.
pub(crate) enum RetryOutcome {
    /// Its attempt was made, or it was closed as dead with the reason: either way it is logged.
    Logged(AttemptMade),
    /// Neither its event nor its webhook exists, so there is no one to log it for.
    Unloggable {
        /// The task.
        task: RetryTask,
        /// Why it was not made.
        reason: String,
    },
}

/// Makes the attempts of the `due` tasks, each once it has a retry slot. The message's events are read in one
/// query once its first task has a slot. Retry slots are apart from the inline delivery slots, so hanging
/// receivers in the slow lane cannot take those that healthy webhooks need.
pub(crate) async fn retry_attempts(
    ctx: &WorkerContext,
    due: &[RetryTask],
) -> Result<Vec<RetryOutcome>, Stopped> {
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let mut first_slot = ctx.retry_slots.acquire().await.ok();
    let stored = load_events(ctx, due).await?;
    let webhooks = ctx.cache.snapshot();
    let stored = &stored;
    let attempts = due.iter().map(|task| {
        let slot = first_slot.take();
        let webhook = webhooks.get(task.webhook_id).cloned();
        async move {
            let _slot = match slot {
                Some(slot) => Some(slot),
                None => ctx.retry_slots.acquire().await.ok(),
            };
            // Less than one ladder step left: wait it out here so that no attempt is ever early.
            tokio::time::sleep(task.remaining(now_ms())).await;
            // Boxed: a task still waiting for its slot then holds a pointer, not an attempt's state.
            Box::pin(retry_attempt(ctx, task, webhook.as_deref(), stored)).await
        }
    });
    Ok(futures::future::join_all(attempts).await)
}

/// One due task: its attempt, or the reason it will not be made.
async fn retry_attempt(
    ctx: &WorkerContext,
    task: &RetryTask,
    webhook: Option<&Subscription>,
    stored: &HashMap<Uuid, StoredEvent>,
) -> RetryOutcome {
    let (event, bodies) = match (stored.get(&task.event_id), webhook) {
        (Some(stored), _) => match stored.parsed(ctx, task.event_id) {
            Ok(found) => found,
            Err(Unsendable {
                organization,
                reason,
            }) => return abandoned(task, *organization, None, UNKNOWN_ACTION, reason),
        },
        // Close the delivery in the log so that it does not stay "failed" forever.
        (None, Some(w)) => {
            let reason = format!("event {} is no longer stored", task.event_id);
            return abandoned(task, w.organization, None, UNKNOWN_ACTION, &reason);
        }
        (None, None) => {
            let reason = format!("event {} is no longer stored", task.event_id);
            return RetryOutcome::Unloggable {
                task: task.clone(),
                reason,
            };
        }
    };
    let reason = match webhook {
        Some(w) if w.matches(event.organization, event.project_id, &event.action) => {
            if bodies.chunks() == 0 {
                "the event's action is no longer in the catalog"
            } else {
                let input = AttemptInput {
                    webhook: w,
                    event,
                    event_id: EventId(task.event_id),
                    bodies,
                    chunk: task.chunk.min(bodies.chunks() as u32 - 1),
                    number: task.attempt,
                    origin: AttemptOrigin::Retry,
                };
                return RetryOutcome::Logged(attempt(ctx, input).await);
            }
        }
        Some(w) if !w.is_active => "webhook is inactive",
        Some(_) => "webhook no longer subscribes to this event",
        None => "webhook was deleted",
    };
    abandon_event(event, task, reason)
}

/// A task of `event` that will not be made: logged as dead with the reason.
fn abandon_event(event: &Event, task: &RetryTask, reason: &str) -> RetryOutcome {
    abandoned(
        task,
        event.organization,
        event.project_id,
        &event.action,
        reason,
    )
}

fn abandoned(
    task: &RetryTask,
    organization: i64,
    project: Option<i64>,
    action: &str,
    reason: &str,
) -> RetryOutcome {
    let event_id = EventId(task.event_id);
    let key = DeliveryKey::new(event_id, task.webhook_id, organization, action, task.chunk);
    tracing::info!(event_id = %event_id, delivery_id = %webhookd_core::DeliveryId(key.delivery_id),
        webhook_id = task.webhook_id, organization, project, action, attempt = task.attempt,
        outcome = "dead", error = reason, "delivery attempt");
    RetryOutcome::Logged(AttemptMade {
        row: AttemptRow::abandoned(key, task.attempt, reason),
        retry: None,
    })
}
