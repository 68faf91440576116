//! Stage 4: one attempt of one delivery — the signed POST, watched by the slow lane — and what follows from
//! it: the verdict of the retry policy, the log row and, if it failed, the retry task.

use std::time::Duration;

use chrono::{DateTime, Utc};
use webhookd_broker::retry_task::now_ms;
use webhookd_broker::RetryTask;
use webhookd_core::{AttemptReport, Event, EventId, Subscription, Verdict};
use webhookd_dispatch::AttemptRequest;
use webhookd_metrics::Held;
use webhookd_store::delivery_log::{AttemptRow, DeliveryKey, Outcome};

use crate::bodies::Bodies;
use crate::context::WorkerContext;

/// Where an attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptOrigin {
    /// Inside its event's handler, which waits for it.
    Inline,
    /// From the retry queue.
    Retry,
}

/// What one attempt needs.
pub(crate) struct AttemptInput<'a> {
    /// The webhook to send to.
    pub(crate) webhook: &'a Subscription,
    /// The event.
    pub(crate) event: &'a Event,
    /// Its id.
    pub(crate) event_id: EventId,
    /// Its bodies.
    pub(crate) bodies: &'a Bodies,
    /// Which chunk of its instance list.
    pub(crate) chunk: u32,
    /// The attempt's number, 1 = the first.
    pub(crate) number: u32,
    /// Where it is made.
    pub(crate) origin: AttemptOrigin,
    /// The replay that made the delivery, if one did.
    pub(crate) replay: Option<uuid::Uuid>,
}

/// An attempt made: its log row and, if it failed and may be tried again, its retry task.
pub(crate) struct AttemptMade {
    /// What the log records.
    pub(crate) row: AttemptRow,
    /// The next attempt, if there is to be one.
    pub(crate) retry: Option<RetryTask>,
}

/// Makes the attempt and decides what follows.
pub(crate) async fn attempt(ctx: &WorkerContext, input: AttemptInput<'_>) -> AttemptMade {
    let key = DeliveryKey::new(
        input.event_id,
        input.webhook.id,
        input.webhook.organization,
        &input.event.action,
        input.chunk,
        input.replay,
    );
    let report = send_watching_the_slow_lane(ctx, &input, &key).await;
    ctx.slow_lane
        .observe(input.webhook.id, report.result, report.duration);
    let verdict =
        ctx.settings
            .retry_policy
            .decide(input.number, report.result, &mut rand::thread_rng());
    let (outcome, retry) = follow(verdict, &input);
    log_attempt(&input, &key, outcome, &report);
    webhookd_metrics::attempt(outcome.as_str(), &input.event.action, report.duration);
    let next_attempt_at = retry
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.due_at_ms));
    AttemptMade {
        row: AttemptRow::made(key, input.number, outcome, report, next_attempt_at),
        retry,
    }
}

/// Sends the request. An attempt still waiting at half the timeout puts its webhook in the slow lane right
/// away, so that events arriving meanwhile do not wait on it too. An inline one is also handed over: its next
/// attempt is made at once from the retry queue, with the full timeout, and its event is not held any longer.
async fn send_watching_the_slow_lane(
    ctx: &WorkerContext,
    input: &AttemptInput<'_>,
    key: &DeliveryKey,
) -> AttemptReport {
    let _held = Held::new(&webhookd_metrics::IN_FLIGHT);
    // Boxed: a waiting attempt (a large fan-out queues thousands) then holds a pointer, not the whole HTTP
    // request state, until it gets its slot.
    let mut sending = Box::pin(
        ctx.dispatcher.send(AttemptRequest {
            webhook: input.webhook,
            delivery_id: webhookd_core::DeliveryId(key.delivery_id),
            event_id: input.event_id,
            action: &input.event.action,
            attempt: input.number,
            body: input
                .bodies
                .for_webhook(input.chunk as usize, input.webhook.send_payload),
        }),
    );
    let threshold = ctx.slow_lane.threshold();
    match tokio::time::timeout(threshold, &mut sending).await {
        Ok(report) => report,
        // `observe` marks the webhook slow.
        Err(_) if input.origin == AttemptOrigin::Inline => AttemptReport::handed_over(threshold),
        Err(_) => {
            ctx.slow_lane.mark(input.webhook.id);
            sending.await
        }
    }
}

/// The outcome the log records for `verdict`, and the next attempt's task if there is one.
fn follow(verdict: Verdict, input: &AttemptInput<'_>) -> (Outcome, Option<RetryTask>) {
    let next = |attempt: u32, wait: Duration| RetryTask {
        event_id: input.event_id.0,
        webhook_id: input.webhook.id,
        chunk: input.chunk,
        attempt,
        due_at_ms: now_ms() + wait.as_millis() as i64,
        replay: input.replay,
    };
    match verdict {
        Verdict::Succeeded => (Outcome::Succeeded, None),
        Verdict::Retry(wait) => (Outcome::Failed, Some(next(input.number + 1, wait))),
        Verdict::Repeat => (Outcome::Failed, Some(next(input.number, Duration::ZERO))),
        Verdict::Dead | Verdict::Gone => (Outcome::Dead, None),
    }
}

fn log_attempt(
    input: &AttemptInput<'_>,
    key: &DeliveryKey,
    outcome: Outcome,
    report: &AttemptReport,
) {
    tracing::info!(
        event_id = %input.event_id,
        delivery_id = %webhookd_core::DeliveryId(key.delivery_id),
        webhook_id = input.webhook.id,
        organization = input.event.organization,
        project = input.event.project_id,
        action = %input.event.action,
        attempt = input.number,
        outcome = outcome.as_str(),
        http_status = report.http_status,
        duration_ms = report.duration.as_millis() as u64,
        error = report.error.as_deref(),
        "delivery attempt"
    );
}
