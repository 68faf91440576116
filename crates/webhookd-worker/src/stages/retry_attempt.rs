//! Retry stage 3: the due tasks of one retry message, each made once the retry lane admits it — or, when its
//! event, its webhook or its subscription is gone, closed in the log as dead with the reason; or, when it
//! cannot start now (its organization over its fair share of the retry slots, its webhook at its cap),
//! parked: put back on the delay ladder, due when its webhook is expected to have room.

use std::collections::HashMap;

use uuid::Uuid;
use webhookd_broker::retry_task::now_ms;
use webhookd_broker::RetryTask;
use webhookd_core::actions::UNKNOWN_ACTION;
use webhookd_core::{Event, EventId, Subscription};
use webhookd_store::delivery_log::{AttemptRow, DeliveryKey};

use crate::batcher::Stopped;
use crate::bodies::Bodies;
use crate::context::WorkerContext;
use crate::retry_lane::{Claimant, LaneSlot};
use crate::stages::attempt::{attempt, AttemptInput, AttemptMade, AttemptOrigin};
use crate::stages::load::{load_events, StoredEvent, Unsendable};
use crate::webhook_limits::WebhookPermit;

/// What became of one retry task.
pub(crate) enum RetryOutcome {
    /// Its attempt was made, or it was closed as dead with the reason: either way it is logged.
    Logged(AttemptMade),
    /// It could not start now: back on the ladder, due later (the same attempt).
    Parked(RetryTask),
    /// Neither its event nor its webhook exists, so there is no one to log it for.
    Unloggable {
        /// The task.
        task: RetryTask,
        /// Why it was not made.
        reason: String,
    },
}

/// A task ready to be sent: its webhook, its event and the event's bodies.
struct Ready<'a> {
    webhook: &'a Subscription,
    event: &'a Event,
    bodies: &'a Bodies,
}

/// What lets a task be sent now: a retry slot and room at its webhook; both given back when dropped.
struct Admitted {
    _slot: LaneSlot,
    _room: WebhookPermit,
}

/// Makes (or closes, or parks) each of the `due` tasks, concurrently. The message's events are read in one
/// query first; retry slots are apart from the inline delivery slots, so hanging receivers in the slow lane
/// cannot take those that healthy webhooks need.
pub(crate) async fn retry_attempts(
    ctx: &WorkerContext,
    due: &[RetryTask],
) -> Result<Vec<RetryOutcome>, Stopped> {
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let stored = load_events(ctx, due).await?;
    let webhooks = ctx.cache.snapshot();
    let stored = &stored;
    let attempts = due.iter().map(|task| {
        let webhook = webhooks.get(task.webhook_id).cloned();
        // Boxed: a task still waiting for its slot then holds a pointer, not an attempt's state.
        Box::pin(async move { retry_attempt(ctx, task, webhook.as_deref(), stored).await })
    });
    Ok(futures::future::join_all(attempts).await)
}

/// One due task, top to bottom: ready it (or close it), admit it (or park it), make its attempt.
async fn retry_attempt(
    ctx: &WorkerContext,
    task: &RetryTask,
    webhook: Option<&Subscription>,
    stored: &HashMap<Uuid, StoredEvent>,
) -> RetryOutcome {
    let ready = match ready(ctx, task, webhook, stored) {
        Ok(ready) => ready,
        Err(closed) => return *closed,
    };
    let Some(_admitted) = admit(ctx, ready.webhook).await else {
        return park(ctx, task);
    };
    // Less than one ladder step left: wait it out here so that no attempt is ever early.
    tokio::time::sleep(task.remaining(now_ms())).await;
    let input = AttemptInput {
        webhook: ready.webhook,
        event: ready.event,
        event_id: EventId(task.event_id),
        bodies: ready.bodies,
        chunk: task.chunk.min(ready.bodies.chunks() as u32 - 1),
        number: task.attempt,
        origin: AttemptOrigin::Retry,
    };
    RetryOutcome::Logged(attempt(ctx, input).await)
}

/// The task's webhook, event and bodies; or, when it cannot be sent any more, its outcome (dead with the
/// reason, or unloggable).
fn ready<'a>(
    ctx: &WorkerContext,
    task: &RetryTask,
    webhook: Option<&'a Subscription>,
    stored: &'a HashMap<Uuid, StoredEvent>,
) -> Result<Ready<'a>, Box<RetryOutcome>> {
    let (event, bodies) = match (stored.get(&task.event_id), webhook) {
        (Some(stored), _) => match stored.parsed(ctx, task.event_id) {
            Ok((event, bodies)) => (event, bodies),
            Err(Unsendable {
                organization,
                reason,
            }) => {
                let closed = abandoned(task, *organization, None, UNKNOWN_ACTION, reason);
                return Err(Box::new(closed));
            }
        },
        // Close the delivery in the log so that it does not stay "failed" forever.
        (None, Some(w)) => {
            let reason = format!("event {} is no longer stored", task.event_id);
            let closed = abandoned(task, w.organization, None, UNKNOWN_ACTION, &reason);
            return Err(Box::new(closed));
        }
        (None, None) => {
            let reason = format!("event {} is no longer stored", task.event_id);
            return Err(Box::new(RetryOutcome::Unloggable {
                task: task.clone(),
                reason,
            }));
        }
    };
    let reason = match webhook {
        Some(w) if w.matches(event.organization, event.project_id, &event.action) => {
            if bodies.chunks() > 0 {
                return Ok(Ready {
                    webhook: w,
                    event,
                    bodies,
                });
            }
            "the event's action is no longer in the catalog"
        }
        Some(w) if !w.is_active => "webhook is inactive",
        Some(_) => "webhook no longer subscribes to this event",
        None => "webhook was deleted",
    };
    Err(Box::new(abandon_event(event, task, reason)))
}

/// A retry slot (waiting up to the attempt timeout, if the organization is within its share) and room at the
/// webhook; `None` if the task should be parked.
async fn admit(ctx: &WorkerContext, webhook: &Subscription) -> Option<Admitted> {
    let claimant = Claimant {
        organization: webhook.organization,
        webhook: webhook.id,
    };
    let Some(slot) = ctx.retry_lane.admit(claimant, ctx.settings.timeout).await else {
        webhookd_metrics::RETRY_TASKS_PARKED
            .with_label_values(&["fair_share"])
            .inc();
        return None;
    };
    let Some(room) = ctx.webhook_limits.try_acquire(webhook.id) else {
        webhookd_metrics::RETRY_TASKS_PARKED
            .with_label_values(&["webhook_cap"])
            .inc();
        return None;
    };
    Some(Admitted {
        _slot: slot,
        _room: room,
    })
}

/// The task again, due when its webhook is expected to have room.
fn park(ctx: &WorkerContext, task: &RetryTask) -> RetryOutcome {
    let wait = ctx.webhook_limits.park(task.webhook_id);
    RetryOutcome::Parked(RetryTask {
        due_at_ms: now_ms() + wait.as_millis() as i64,
        ..task.clone()
    })
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
