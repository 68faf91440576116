//! The delivery path, top to bottom: AMQP message → event → subscribers → signed POSTs → verdicts →
//! log rows and retry tasks → ack. A message is acknowledged only after its log rows are committed and
//! its retry tasks confirmed by the broker; anything less and it is redelivered.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use webhookd_broker::retry_task::{self, now_ms};
use webhookd_broker::{ConfirmedPublisher, PublishError, RetryTask, Topology};
use webhookd_core::body::{self, EventBodies};
use webhookd_core::endpoint_health::HealthSignal;
use webhookd_core::{AttemptResult, DeliveryId, Event, EventId, Subscription, Verdict};
use webhookd_store::delivery_log::{AttemptRow, Outcome};
use webhookd_store::events::NewEvent;

use crate::acks::{Pending, Settle};
use crate::batcher::Stopped;
use crate::dispatch::{Attempt, AttemptReport};
use crate::retry_scheduler::{RetryScheduler, ScheduleError};
use crate::worker::{attempt_budget, Shared};
use webhookd_metrics::Held;

/// How long a handler that could not finish waits before returning its message, so that a broker
/// problem does not turn into a redelivery loop.
const NACK_DELAY: Duration = Duration::from_secs(1);

/// Why a message could not be finished; it is left for redelivery.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Publishing a dead letter failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Scheduling retry tasks failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The worker is shutting down.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

/// What handlers send through their broker session.
#[derive(Clone)]
pub struct Outbox {
    /// Dead letters go out one by one.
    pub publisher: ConfirmedPublisher,
    /// Retry tasks go out batched.
    pub retries: RetryScheduler,
}

/// Handles one message from the work queue and acknowledges it when done.
pub async fn handle_event(
    shared: Arc<Shared>,
    outbox: Outbox,
    delivery: Delivery,
    pending: Pending,
) {
    let _held = Held::new(&webhookd_metrics::MESSAGES_IN_FLIGHT);
    let result = process_event(&shared, &outbox, &delivery).await;
    settle(pending, result).await;
}

/// Handles one message of retry tasks from the retry queue and acknowledges it when done.
pub async fn handle_retry(
    shared: Arc<Shared>,
    outbox: Outbox,
    delivery: Delivery,
    pending: Pending,
) {
    let _held = Held::new(&webhookd_metrics::MESSAGES_IN_FLIGHT);
    let result = process_retry(&shared, &outbox, &delivery).await;
    settle(pending, result).await;
}

async fn settle(pending: Pending, result: Result<(), HandleError>) {
    match result {
        Ok(()) => pending.settle(Settle::Ack),
        Err(e) => {
            tracing::warn!(error = %e, "message not finished; returning it to the queue");
            // Whatever failed (the broker, most likely) gets a moment before the message comes back.
            tokio::time::sleep(NACK_DELAY).await;
            pending.settle(Settle::Requeue);
        }
    }
}

async fn process_event(
    shared: &Shared,
    outbox: &Outbox,
    delivery: &Delivery,
) -> Result<(), HandleError> {
    let settings = &shared.settings;
    let mut event = match Event::parse(&delivery.data, &settings.catalog) {
        Ok(event) => event,
        Err(reason) => {
            consumed("malformed");
            return dead_letter(outbox, &settings.topology, delivery, &reason.to_string()).await;
        }
    };
    // The stored envelope is the message itself unless webhookd had to fill in the id.
    let as_published = event.producer_id.is_some();
    if event.producer_id.is_none() {
        // A producer that set only the AMQP message id still gets exactly-once on re-publish.
        event.producer_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
    }
    let subscribers =
        shared
            .cache
            .snapshot()
            .matching(event.organization, event.project_id, &event.action);
    if subscribers.is_empty() {
        tracing::debug!(organization = event.organization, action = %event.action, "event has no subscriber");
        consumed("no_subscribers");
        return Ok(());
    }
    let claim = shared
        .claims
        .submit(NewEvent {
            id: event
                .producer_id
                .as_deref()
                .map(|p| EventId::for_producer(event.organization, p))
                .unwrap_or_default()
                .0,
            organization: event.organization,
            project: event.project_id,
            action: event.action.clone(),
            producer_id: event.producer_id.clone(),
            body: match as_published {
                true => String::from_utf8_lossy(&delivery.data).into_owned(),
                false => event.to_envelope().to_string(),
            },
            claim_token: uuid::Uuid::new_v4(),
        })
        .await?;
    if !claim.fresh && !delivery.redelivered {
        tracing::info!(event_id = %claim.event_id, producer_id = ?event.producer_id,
            "event was published again; already delivered");
        consumed("duplicate");
        return Ok(());
    }
    let event_id = EventId(claim.event_id);
    let bodies = build_bodies(shared, &event);
    let deferral = |webhook: &Subscription, chunk: usize| RetryTask {
        event_id: event_id.0,
        webhook_id: webhook.id,
        chunk: chunk as u32,
        attempt: 1,
        due_at_ms: now_ms(),
    };
    let (slow, inline): (Vec<_>, Vec<_>) = subscribers
        .iter()
        .partition(|w| shared.slow_lane.is_slow(w.id));
    let mut deferred: Vec<RetryTask> = slow
        .iter()
        .flat_map(|w| (0..bodies.len()).map(|chunk| deferral(w, chunk)))
        .collect();
    // Taken before the attempts exist; an event wanting more than the whole budget waits for all of it
    // (and then builds its attempts beyond it, alone).
    let wanted = (inline.len() * bodies.len()).min(attempt_budget(&shared.settings));
    let budget = match wanted {
        0 => None,
        n => shared.attempt_budget.acquire_many(n as u32).await.ok(),
    };
    let (event, bodies) = (&event, &bodies);
    let attempts = inline.iter().flat_map(|&webhook| {
        (0..bodies.len()).map(move |chunk| async move {
            // Inline attempts share the worker's delivery slots.
            let _slot = shared.delivery_slots.acquire().await.ok();
            // The webhook may have turned slow while this attempt waited for its turn.
            if shared.slow_lane.is_slow(webhook.id) {
                return Err(deferral(webhook, chunk));
            }
            Ok(attempt(
                shared,
                webhook,
                event,
                event_id,
                chunk,
                1,
                bodies,
                Mode::Inline,
            )
            .await)
        })
    });
    let mut done = Vec::new();
    for result in futures::future::join_all(attempts).await {
        match result {
            Ok(made) => done.push(made),
            Err(task) => deferred.push(task),
        }
    }
    drop(budget);
    // A deferred first attempt is logged when it is made, from the retry queue.
    let deferrals = deferred.len() as u64;
    finish(shared, outbox, done, deferred).await?;
    webhookd_metrics::RETRIES_SCHEDULED.inc_by(deferrals);
    consumed("delivered");
    Ok(())
}

fn consumed(result: &str) {
    webhookd_metrics::EVENTS_CONSUMED
        .with_label_values(&[result])
        .inc();
}

async fn process_retry(
    shared: &Shared,
    outbox: &Outbox,
    delivery: &Delivery,
) -> Result<(), HandleError> {
    let topology = &shared.settings.topology;
    let tasks = match retry_task::decode(&delivery.data) {
        Ok(tasks) => tasks,
        Err(e) => {
            let reason = format!("retry task is not valid: {e}");
            return dead_letter(outbox, topology, delivery, &reason).await;
        }
    };
    // Tasks not due yet take one more step down the delay ladder, at once; the others are made here.
    let now = now_ms();
    let (later, due): (Vec<RetryTask>, Vec<RetryTask>) = tasks
        .into_iter()
        .partition(|t| topology.rung_for(t.remaining(now)).is_some());
    let (moved, made) = tokio::join!(outbox.retries.schedule(later), retry_attempts(shared, &due));
    moved?;
    let mut done = Vec::new();
    let mut unlogged = Vec::new();
    for result in made? {
        match result {
            Ok(made) => done.push(made),
            Err(lost) => unlogged.push(lost),
        }
    }
    if !unlogged.is_empty() {
        // Nothing tells whose they were: kept as dead letters for an operator.
        let (tasks, reasons): (Vec<RetryTask>, Vec<String>) = unlogged.into_iter().unzip();
        let body = retry_task::encode(&tasks);
        dead_letter_body(outbox, topology, delivery, &body, &reasons.join("; ")).await?;
    }
    finish(shared, outbox, done, Vec::new()).await
}

/// Makes the attempts of `due` tasks, each once it has a retry slot. The message's events are read in one
/// query once its first task has a slot, and each is parsed when the first of its attempts starts (the
/// others of the message share it). Retry slots are apart
/// from the inline delivery slots, so hanging receivers in the slow lane cannot take those that healthy
/// webhooks need.
async fn retry_attempts(
    shared: &Shared,
    due: &[RetryTask],
) -> Result<Vec<Result<(AttemptRow, Option<RetryTask>), (RetryTask, String)>>, HandleError> {
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let mut first_slot = shared.retry_slots.acquire().await.ok();
    let stored = load_events(shared, due).await?;
    let webhooks = shared.cache.snapshot();
    let attempts = due.iter().map(|task| {
        let slot = first_slot.take();
        let webhook = webhooks.get(task.webhook_id).cloned();
        let stored = stored.get(&task.event_id);
        async move {
            let _slot = match slot {
                Some(slot) => Some(slot),
                None => shared.retry_slots.acquire().await.ok(),
            };
            let event = stored.map(|(organization, body, parsed)| {
                parsed.get_or_init(|| parse_stored(shared, task, *organization, body))
            });
            // Less than one ladder step left: wait it out here so that no attempt is ever early.
            tokio::time::sleep(task.remaining(now_ms())).await;
            // Boxed: a task still waiting for its slot then holds a pointer, not an attempt's state.
            Box::pin(retry_attempt(shared, task, webhook.as_deref(), event)).await
        }
    });
    Ok(futures::future::join_all(attempts).await)
}

/// A stored event: its organization, its envelope, and the envelope parsed once a task needs it.
type Stored = (i64, String, OnceLock<Loaded>);

/// Reads the stored events of `tasks` in one query, by id.
async fn load_events(
    shared: &Shared,
    tasks: &[RetryTask],
) -> Result<HashMap<uuid::Uuid, Stored>, HandleError> {
    let mut ids: Vec<uuid::Uuid> = tasks.iter().map(|t| t.event_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let stored = shared.load_events(&ids).await?;
    Ok(stored
        .into_iter()
        .map(|(id, organization, body)| (id, (organization, body, OnceLock::new())))
        .collect())
}

/// A stored event as the retry path needs it: parsed, with its bodies; or why it cannot be sent, with the
/// organization it belongs to.
type Loaded = Result<(Event, Vec<(Bytes, Bytes)>), (i64, String)>;

/// A stored event parsed, with its bodies; or why it cannot be sent.
fn parse_stored(shared: &Shared, task: &RetryTask, organization: i64, body: &str) -> Loaded {
    match Event::parse(body.as_bytes(), &shared.settings.catalog) {
        Ok(event) => {
            let bodies = build_bodies(shared, &event);
            Ok((event, bodies))
        }
        Err(e) => Err((
            organization,
            format!("stored event {} is no longer valid: {e}", task.event_id),
        )),
    }
}

/// One task from the retry queue: its attempt, or the reason it will not be made (logged as dead); `Err`
/// when there is no one to log it for.
async fn retry_attempt(
    shared: &Shared,
    task: &RetryTask,
    webhook: Option<&Subscription>,
    event: Option<&Loaded>,
) -> Result<(AttemptRow, Option<RetryTask>), (RetryTask, String)> {
    let event_id = EventId(task.event_id);
    let (event, bodies) = match (event, webhook) {
        (Some(Ok(found)), _) => found,
        (Some(Err((organization, reason))), _) => {
            return Ok(dead_row(event_id, *organization, None, "", task, reason))
        }
        // Close the delivery in the log so that it does not stay "failed" forever.
        (None, Some(w)) => {
            let reason = format!("event {} is no longer stored", task.event_id);
            return Ok(abandon_unknown_event(w, task, &reason));
        }
        (None, None) => {
            let reason = format!("event {} is no longer stored", task.event_id);
            return Err((task.clone(), reason));
        }
    };
    let reason = match webhook {
        Some(w) if w.matches(event.organization, event.project_id, &event.action) => {
            if bodies.is_empty() {
                "the event's action is no longer in the catalog"
            } else {
                let chunk = (task.chunk as usize).min(bodies.len() - 1);
                let made = attempt(
                    shared,
                    w,
                    event,
                    event_id,
                    chunk,
                    task.attempt,
                    bodies,
                    Mode::Retry,
                )
                .await;
                return Ok(made);
            }
        }
        Some(w) if !w.is_active => "webhook is inactive",
        Some(_) => "webhook no longer subscribes to this event",
        None => "webhook was deleted",
    };
    Ok(abandon(event, event_id, task, reason))
}

fn build_bodies(shared: &Shared, event: &Event) -> Vec<(Bytes, Bytes)> {
    let Some(spec) = shared.settings.catalog.get(&event.action) else {
        return Vec::new();
    };
    let EventBodies {
        chunks,
        action_only,
    } = body::build(event, spec, shared.settings.batch_size);
    let action_only = Bytes::from(action_only);
    chunks
        .into_iter()
        .map(|c| (Bytes::from(c), action_only.clone()))
        .collect()
}

/// Where an attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Inside its event's handler, which waits for it.
    Inline,
    /// From the retry queue.
    Retry,
}

/// The report of an inline attempt that had no answer at the slow lane's threshold and was handed over.
fn handed_over(threshold: Duration) -> AttemptReport {
    AttemptReport {
        result: AttemptResult::HandedOver,
        http_status: None,
        error: Some(format!(
            "no answer within {} ms; handed over to the slow lane",
            threshold.as_millis()
        )),
        excerpt: None,
        duration: threshold,
    }
}

/// One attempt of one delivery, and what follows from it: its log row and, if it failed, its retry task.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    shared: &Shared,
    webhook: &Subscription,
    event: &Event,
    event_id: EventId,
    chunk: usize,
    number: u32,
    bodies: &[(Bytes, Bytes)],
    mode: Mode,
) -> (AttemptRow, Option<RetryTask>) {
    let delivery_id = DeliveryId::derive(event_id, webhook.id, chunk as u32);
    let (full, action_only) = &bodies[chunk];
    let body = if webhook.send_payload {
        full.clone()
    } else {
        action_only.clone()
    };
    let held = Held::new(&webhookd_metrics::IN_FLIGHT);
    // Boxed: a waiting attempt (a large fan-out queues thousands) then holds a pointer, not the whole
    // HTTP request state, until it gets its slot.
    let mut sending = Box::pin(shared.dispatcher.send(Attempt {
        webhook,
        delivery_id,
        event_id,
        action: &event.action,
        attempt: number,
        body,
    }));
    // An attempt still waiting at half the timeout puts its webhook in the slow lane right away, so that
    // events arriving meanwhile do not wait on it too. An inline one is also handed over: its next attempt
    // is made at once from the retry queue, with the full timeout, and its event is not held any longer.
    let threshold = shared.slow_lane.threshold();
    let policy = &shared.settings.retry_policy;
    let report = match tokio::time::timeout(threshold, &mut sending).await {
        Ok(report) => report,
        // `observe` below marks the webhook slow.
        Err(_) if mode == Mode::Inline => handed_over(threshold),
        Err(_) => {
            shared.slow_lane.mark(webhook.id);
            (&mut sending).await
        }
    };
    drop((sending, held));
    shared
        .slow_lane
        .observe(webhook.id, report.result, report.duration);
    let verdict = policy.decide(number, report.result, &mut rand::thread_rng());
    let next = |attempt: u32, wait: Duration| RetryTask {
        event_id: event_id.0,
        webhook_id: webhook.id,
        chunk: chunk as u32,
        attempt,
        due_at_ms: now_ms() + wait.as_millis() as i64,
    };
    let (outcome, retry) = match verdict {
        Verdict::Succeeded => (Outcome::Succeeded, None),
        Verdict::Retry(wait) => (Outcome::Failed, Some(next(number + 1, wait))),
        Verdict::Repeat => (Outcome::Failed, Some(next(number, Duration::ZERO))),
        Verdict::Dead | Verdict::Gone => (Outcome::Dead, None),
    };
    let health = HealthSignal::of(report.result);
    log_attempt(
        webhook,
        event,
        event_id,
        delivery_id,
        number,
        outcome,
        &report,
    );
    webhookd_metrics::attempt(outcome.as_str(), &event.action, report.duration);
    let row = AttemptRow {
        delivery_id: delivery_id.0,
        event_id: event_id.0,
        webhook_id: webhook.id,
        organization: webhook.organization,
        action: event.action.clone(),
        chunk: chunk as i32,
        attempt: number as i32,
        outcome,
        http_status: report.http_status.map(|s| s as i16),
        duration_ms: report.duration.as_millis().min(i32::MAX as u128) as i32,
        error: report.error,
        response_excerpt: report.excerpt,
        next_attempt_at: retry
            .as_ref()
            .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.due_at_ms)),
        health,
    };
    (row, retry)
}

/// A pending retry that will not be made: logged as dead with the reason.
fn abandon(
    event: &Event,
    event_id: EventId,
    task: &RetryTask,
    reason: &str,
) -> (AttemptRow, Option<RetryTask>) {
    dead_row(
        event_id,
        event.organization,
        event.project_id,
        &event.action,
        task,
        reason,
    )
}

/// A pending retry whose event has been pruned: logged as dead on the webhook's organization.
fn abandon_unknown_event(
    webhook: &Subscription,
    task: &RetryTask,
    reason: &str,
) -> (AttemptRow, Option<RetryTask>) {
    dead_row(
        EventId(task.event_id),
        webhook.organization,
        None,
        "",
        task,
        reason,
    )
}

fn dead_row(
    event_id: EventId,
    organization: i64,
    project: Option<i64>,
    action: &str,
    task: &RetryTask,
    reason: &str,
) -> (AttemptRow, Option<RetryTask>) {
    let delivery_id = DeliveryId::derive(event_id, task.webhook_id, task.chunk);
    tracing::info!(event_id = %event_id, delivery_id = %delivery_id, webhook_id = task.webhook_id,
        organization, project, action, attempt = task.attempt, outcome = "dead", error = reason,
        "delivery attempt");
    let row = AttemptRow {
        delivery_id: delivery_id.0,
        event_id: event_id.0,
        webhook_id: task.webhook_id,
        organization,
        action: action.to_owned(),
        chunk: task.chunk as i32,
        attempt: task.attempt as i32,
        outcome: Outcome::Dead,
        http_status: None,
        duration_ms: 0,
        error: Some(reason.to_owned()),
        response_excerpt: None,
        next_attempt_at: None,
        health: None,
    };
    (row, None)
}

fn log_attempt(
    webhook: &Subscription,
    event: &Event,
    event_id: EventId,
    delivery_id: DeliveryId,
    attempt: u32,
    outcome: Outcome,
    report: &AttemptReport,
) {
    tracing::info!(
        event_id = %event_id,
        delivery_id = %delivery_id,
        webhook_id = webhook.id,
        organization = event.organization,
        project = event.project_id,
        action = %event.action,
        attempt,
        outcome = outcome.as_str(),
        http_status = report.http_status,
        duration_ms = report.duration.as_millis() as u64,
        error = report.error.as_deref(),
        "delivery attempt"
    );
}

/// Commits the log rows and schedules the retry tasks: those the attempts asked for (counted as retries
/// scheduled) and `moved`, tasks passed on without an attempt. Both must succeed before the ack.
async fn finish(
    shared: &Shared,
    outbox: &Outbox,
    done: Vec<(AttemptRow, Option<RetryTask>)>,
    moved: Vec<RetryTask>,
) -> Result<(), HandleError> {
    let (rows, retries): (Vec<AttemptRow>, Vec<Option<RetryTask>>) = done.into_iter().unzip();
    let retries: Vec<RetryTask> = retries.into_iter().flatten().collect();
    let scheduled = retries.len() as u64;
    let tasks: Vec<RetryTask> = retries.into_iter().chain(moved).collect();
    let (written, published) =
        tokio::join!(shared.log.submit(rows), outbox.retries.schedule(tasks));
    written?;
    published?;
    webhookd_metrics::RETRIES_SCHEDULED.inc_by(scheduled);
    Ok(())
}

/// Moves a message that can never be processed to the dead-letter queue, with the reason in a header.
async fn dead_letter(
    outbox: &Outbox,
    topology: &Topology,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), HandleError> {
    dead_letter_body(outbox, topology, delivery, &delivery.data, reason).await
}

/// Dead-letters `body` (the whole message or the part of it that cannot be processed) with the
/// properties of `delivery` and the reason in a header.
async fn dead_letter_body(
    outbox: &Outbox,
    topology: &Topology,
    delivery: &Delivery,
    body: &[u8],
    reason: &str,
) -> Result<(), HandleError> {
    tracing::warn!(reason, routing_key = %delivery.routing_key, redelivered = delivery.redelivered,
        "malformed message moved to the dead-letter queue");
    // Keep the message as it was (message id, content type, headers) so it can be replayed as is; the
    // broker's own delivery counter is dropped.
    let mut headers = FieldTable::default();
    if let Some(old) = delivery.properties.headers() {
        for (k, v) in old.inner() {
            if k.as_str() != "x-delivery-count" {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    headers.insert(
        "x-webhookd-reason".into(),
        AMQPValue::LongString(reason.into()),
    );
    headers.insert(
        "x-webhookd-routing-key".into(),
        AMQPValue::LongString(delivery.routing_key.as_str().into()),
    );
    headers.insert(
        "x-webhookd-dead-at".into(),
        AMQPValue::LongString(Utc::now().to_rfc3339().into()),
    );
    let props = kept_properties(&delivery.properties)
        .with_headers(headers)
        .with_delivery_mode(2);
    outbox
        .publisher
        .publish("", &topology.dead_queue(), body, props)
        .await?;
    webhookd_metrics::DEAD_LETTERS.inc();
    Ok(())
}

/// The properties of a message to keep on its dead letter: all but the headers (rebuilt by the caller) and
/// the expiration, so that a dead letter stays until someone looks at it.
fn kept_properties(p: &BasicProperties) -> BasicProperties {
    let mut kept = BasicProperties::default();
    let copy = |kept: BasicProperties,
                value: &Option<ShortString>,
                set: fn(BasicProperties, ShortString) -> BasicProperties| match value
    {
        Some(v) => set(kept, v.clone()),
        None => kept,
    };
    kept = copy(kept, p.content_type(), BasicProperties::with_content_type);
    kept = copy(
        kept,
        p.content_encoding(),
        BasicProperties::with_content_encoding,
    );
    kept = copy(
        kept,
        p.correlation_id(),
        BasicProperties::with_correlation_id,
    );
    kept = copy(kept, p.reply_to(), BasicProperties::with_reply_to);
    kept = copy(kept, p.message_id(), BasicProperties::with_message_id);
    kept = copy(kept, p.kind(), BasicProperties::with_type);
    kept = copy(kept, p.user_id(), BasicProperties::with_user_id);
    kept = copy(kept, p.app_id(), BasicProperties::with_app_id);
    kept = copy(kept, p.cluster_id(), BasicProperties::with_cluster_id);
    if let Some(priority) = *p.priority() {
        kept = kept.with_priority(priority);
    }
    if let Some(timestamp) = *p.timestamp() {
        kept = kept.with_timestamp(timestamp);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_letter_keeps_the_message_properties_but_not_its_expiration() {
        let original = BasicProperties::default()
            .with_message_id("evt-1".into())
            .with_content_type("application/json".into())
            .with_expiration("60000".into())
            .with_priority(3)
            .with_timestamp(1_700_000_000);
        let kept = kept_properties(&original);
        assert_eq!(
            kept.message_id().as_ref().map(|m| m.as_str()),
            Some("evt-1")
        );
        assert_eq!(
            kept.content_type().as_ref().map(|m| m.as_str()),
            Some("application/json")
        );
        assert_eq!(*kept.priority(), Some(3));
        assert_eq!(*kept.timestamp(), Some(1_700_000_000));
        assert_eq!(*kept.expiration(), None);
    }
}
