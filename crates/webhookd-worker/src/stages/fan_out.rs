//! Stage 3: the event's deliveries — those of webhooks in the slow lane deferred to the retry queue, the others
//! attempted inline, concurrently, within the worker's delivery slots, its attempt budget and each webhook's
//! concurrency cap.

use std::sync::Arc;

use webhookd_broker::retry_task::now_ms;
use webhookd_broker::RetryTask;
use webhookd_core::{Event, EventId, Subscription};

use crate::bodies::Bodies;
use crate::context::WorkerContext;
use crate::stages::attempt::{attempt, AttemptInput, AttemptMade, AttemptOrigin};

/// The event's deliveries after the fan-out.
pub(crate) struct FanOut {
    /// The inline attempts made.
    pub(crate) made: Vec<AttemptMade>,
    /// First attempts deferred to the retry queue (their webhook is in the slow lane); each is logged when
    /// it is made.
    pub(crate) deferred: Vec<RetryTask>,
}

/// Makes or defers the first attempt of every (webhook, chunk) of the event.
pub(crate) async fn fan_out(
    ctx: &WorkerContext,
    event: &Event,
    event_id: EventId,
    subscribers: &[Arc<Subscription>],
    bodies: &Bodies,
) -> FanOut {
    let chunks = bodies.chunks() as u32;
    let deferral = |webhook: &Subscription, chunk: u32| RetryTask {
        event_id: event_id.0,
        webhook_id: webhook.id,
        chunk,
        attempt: 1,
        due_at_ms: now_ms(),
        replay: None,
    };
    let (slow, inline): (Vec<_>, Vec<_>) = subscribers
        .iter()
        .partition(|w| ctx.slow_lane.is_slow(w.id));
    let mut deferred: Vec<RetryTask> = slow
        .iter()
        .flat_map(|w| (0..chunks).map(|chunk| deferral(w, chunk)))
        .collect();
    // Taken before the attempts exist; an event wanting more than the whole budget waits for all of it (and
    // then builds its attempts beyond it, alone).
    let wanted = (inline.len() * chunks as usize).min(ctx.attempt_budget());
    let budget = match wanted {
        0 => None,
        n => ctx.attempt_budget.acquire_many(n as u32).await.ok(),
    };
    let attempts = inline.iter().flat_map(|&webhook| {
        (0..chunks).map(move |chunk| async move {
            // At most so many attempts to one webhook at once (waiting holds no delivery slot) ...
            let _room = ctx.webhook_limits.acquire(webhook.id).await;
            // ... and inline attempts share the worker's delivery slots.
            let _slot = ctx.delivery_slots.acquire().await.ok();
            // The webhook may have turned slow while this attempt waited for its turn.
            if ctx.slow_lane.is_slow(webhook.id) {
                return Err(deferral(webhook, chunk));
            }
            let input = AttemptInput {
                webhook,
                event,
                event_id,
                bodies,
                chunk,
                number: 1,
                origin: AttemptOrigin::Inline,
                replay: None,
            };
            Ok(attempt(ctx, input).await)
        })
    });
    let mut made = Vec::new();
    for result in futures::future::join_all(attempts).await {
        match result {
            Ok(attempt) => made.push(attempt),
            Err(task) => deferred.push(task),
        }
    }
    drop(budget);
    FanOut { made, deferred }
}
