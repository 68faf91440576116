//! Retry stage 3: the due tasks of one retry message, each made once the retry lane admits it — or, when its
//! event, its webhook or its subscription is gone, closed in the log as dead with the reason; or, when it
//! cannot start now (its organization over its fair share of the retry slots, its webhook at its cap),
//! parked: put back on the delay ladder, due when its webhook is expected to have room.

use webhookd_broker::retry_task::now_ms;
use webhookd_broker::RetryTask;
use webhookd_core::actions::UNKNOWN_ACTION;
use webhookd_core::{Event, EventId, Subscription, SubscriptionIndex};
use webhookd_store::delivery_log::{AttemptRow, DeliveryKey};

use crate::batcher::Stopped;
use crate::bodies::Bodies;
use crate::context::WorkerContext;
use crate::retry_lane::{Claimant, LaneSlot};
use crate::stages::attempt::{attempt, AttemptInput, AttemptMade, AttemptOrigin};
use crate::stages::load::{load_events, Loaded, Unsendable};
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

/// Makes (or closes, or parks) each of the `due` tasks, concurrently — but the first attempts of a replay,
/// which it queues in event order, one after another, in that order. The message's events are read in one
/// query first; retry slots are apart from the inline delivery slots, so hanging receivers in the slow lane
/// cannot take those that healthy webhooks need.
pub(crate) async fn retry_attempts(
    ctx: &WorkerContext,
    due: &[RetryTask],
) -> Result<Vec<RetryOutcome>, Stopped> {
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let loaded = load_events(ctx, due).await?;
    let webhooks = ctx.cache.snapshot();
    let stored = &loaded;
    let webhooks = &*webhooks;
    let one = |task| retry_attempt(ctx, task, webhooks, stored);
    let (ordered, apart): (Vec<&RetryTask>, Vec<&RetryTask>) = due
        .iter()
        .partition(|t| t.replay.is_some() && t.attempt == 1);
    // Boxed: a task still waiting for its slot then holds a pointer, not an attempt's state.
    let concurrent = futures::future::join_all(apart.into_iter().map(|t| Box::pin(one(t))));
    let in_order = Box::pin(async {
        let mut outcomes = Vec::with_capacity(ordered.len());
        let mut tasks = ordered.into_iter();
        while let Some(task) = tasks.next() {
            match one(task).await {
                // The rest wait with it, so that they come back together, still in order.
                RetryOutcome::Parked(parked) => {
                    let due_at_ms = parked.due_at_ms;
                    outcomes.push(RetryOutcome::Parked(parked));
                    outcomes.extend(tasks.by_ref().map(|t| {
                        RetryOutcome::Parked(RetryTask {
                            due_at_ms,
                            ..t.clone()
                        })
                    }));
                }
                outcome => outcomes.push(outcome),
            }
        }
        outcomes
    });
    let (mut outcomes, in_order) = tokio::join!(concurrent, in_order);
    outcomes.extend(in_order);
    Ok(outcomes)
}

/// One due task, top to bottom: ready it (or close it), admit it (or park it), make its attempt.
async fn retry_attempt(
    ctx: &WorkerContext,
    task: &RetryTask,
    webhooks: &SubscriptionIndex,
    stored: &Loaded,
) -> RetryOutcome {
    let webhook = webhooks.get(task.webhook_id).map(|w| &**w);
    let ready = match ready(ctx, task, webhook, stored) {
        Ok(ready) => ready,
        Err(closed) => return *closed,
    };
    let _admitted = match admit(ctx, ready.webhook).await {
        Ok(admitted) => admitted,
        Err(refused) => return park(ctx, task, refused),
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
        replay: task.replay,
    };
    RetryOutcome::Logged(attempt(ctx, input).await)
}

/// The task's webhook, event and bodies; or, when it cannot be sent any more, its outcome (dead with the
/// reason, or unloggable).
fn ready<'a>(
    ctx: &WorkerContext,
    task: &RetryTask,
    webhook: Option<&'a Subscription>,
    stored: &'a Loaded,
) -> Result<Ready<'a>, Box<RetryOutcome>> {
    let (event, bodies) = match (stored.events.get(&task.event_id), webhook) {
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
    if let Some(replay) = task.replay.filter(|r| stored.cancelled_replays.contains(r)) {
        let reason = format!("replay {replay} was cancelled");
        return Err(Box::new(abandon_event(event, task, &reason)));
    }
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

/// Why a task could not start now.
enum Refused {
    /// Its organization is over its share of the retry slots (or none freed up in time).
    FairShare(Claimant),
    /// Its webhook has its cap of attempts in flight.
    WebhookCap,
}

/// A retry slot (waiting up to the attempt timeout, if the organization is within its share) and room at the
/// webhook; or why the task should be parked.
async fn admit(ctx: &WorkerContext, webhook: &Subscription) -> Result<Admitted, Refused> {
    let claimant = Claimant {
        organization: webhook.organization,
        webhook: webhook.id,
    };
    let slot = ctx
        .retry_lane
        .admit(claimant, ctx.settings.timeout)
        .await
        .ok_or(Refused::FairShare(claimant))?;
    let room = ctx
        .webhook_limits
        .try_acquire(webhook.id)
        .ok_or(Refused::WebhookCap)?;
    Ok(Admitted {
        _slot: slot,
        _room: room,
    })
}

/// The task again, due when its organization (over its share) or its webhook (at its cap) is expected to have
/// room.
fn park(ctx: &WorkerContext, task: &RetryTask, refused: Refused) -> RetryOutcome {
    let (reason, wait) = match refused {
        Refused::FairShare(claimant) => {
            let average = ctx.webhook_limits.average(task.webhook_id);
            ("fair_share", ctx.retry_lane.park(claimant, average))
        }
        Refused::WebhookCap => ("webhook_cap", ctx.webhook_limits.park(task.webhook_id)),
    };
    webhookd_metrics::RETRY_TASKS_PARKED
        .with_label_values(&[reason])
        .inc();
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
    let key = DeliveryKey::new(
        event_id,
        task.webhook_id,
        organization,
        action,
        task.chunk,
        task.replay,
    );
    tracing::info!(event_id = %event_id, delivery_id = %webhookd_core::DeliveryId(key.delivery_id),
        webhook_id = task.webhook_id, organization, project, action, attempt = task.attempt,
        outcome = "dead", error = reason, "delivery attempt");
    RetryOutcome::Logged(AttemptMade {
        row: AttemptRow::abandoned(key, task.attempt, reason),
        retry: None,
    })
}
