//! The path of one event message, top to bottom: parse (or dead-letter) → claim (every event is stored; one the
//! database refuses is dead-lettered) → fan out (slow lane split, inline attempts) → commit attempts → settle. The message is acknowledged only after its log rows are
//! committed and its retry tasks confirmed by the broker; anything less and it is redelivered.

use std::sync::Arc;

use webhookd_broker::inbound::dead_letter;
use webhookd_broker::Inbound;
use webhookd_metrics::Held;

use crate::acks::Pending;
use crate::bodies::Bodies;
use crate::context::{Outbox, WorkerContext};
use crate::stages::claim::{claim, ClaimOutcome, ClaimedEvent};
use crate::stages::commit::{commit_attempts, Commit};
use crate::stages::fan_out::{fan_out, FanOut};
use crate::stages::parse::parse_event_or_dead_letter;
use crate::stages::settle::settle;
use crate::stages::HandleError;

/// How an event message ended, as `webhookd_events_consumed_total` counts it.
#[derive(Debug, Clone, Copy)]
enum Consumed {
    Malformed,
    NoSubscribers,
    Duplicate,
    Unstorable,
    Delivered,
}

impl Consumed {
    fn label(self) -> &'static str {
        match self {
            Consumed::Malformed => "malformed",
            Consumed::NoSubscribers => "no_subscribers",
            Consumed::Duplicate => "duplicate",
            Consumed::Unstorable => "unstorable",
            Consumed::Delivered => "delivered",
        }
    }
}

/// Handles one message from the work queue and settles it.
pub(crate) async fn handle_event(
    ctx: Arc<WorkerContext>,
    outbox: Outbox,
    message: Inbound,
    pending: Pending,
) {
    let _held = Held::new(&webhookd_metrics::MESSAGES_IN_FLIGHT);
    let result = deliver_event(&ctx, &outbox, &message).await;
    if let Ok(consumed) = result {
        webhookd_metrics::EVENTS_CONSUMED
            .with_label_values(&[consumed.label()])
            .inc();
    }
    settle(pending, result.map(drop)).await;
}

async fn deliver_event(
    ctx: &WorkerContext,
    outbox: &Outbox,
    message: &Inbound,
) -> Result<Consumed, HandleError> {
    let Some(parsed) = parse_event_or_dead_letter(ctx, outbox, message).await? else {
        return Ok(Consumed::Malformed);
    };
    let ClaimedEvent {
        event_id,
        subscribers,
        stored,
    } = match claim(ctx, message, &parsed).await? {
        ClaimOutcome::NoSubscribers(stored) => {
            // Nothing to send, but the event is kept (for replays) as durably as any other.
            let commit = Commit {
                made: Vec::new(),
                passed_on: Vec::new(),
                claimed: Some(stored),
            };
            commit_attempts(ctx, outbox, message, commit).await?;
            return Ok(Consumed::NoSubscribers);
        }
        ClaimOutcome::AlreadyDelivered => return Ok(Consumed::Duplicate),
        ClaimOutcome::Unstorable(reason) => {
            let topology = &ctx.settings.topology;
            dead_letter(&outbox.publisher, topology, message, &message.body, &reason).await?;
            return Ok(Consumed::Unstorable);
        }
        ClaimOutcome::Claimed(claimed) => claimed,
    };
    let event = &parsed.event;
    let bodies = Bodies::build(&ctx.settings.catalog, ctx.settings.batch_size, event);
    let FanOut { made, deferred } = fan_out(ctx, event, event_id, &subscribers, &bodies).await;
    let deferrals = deferred.len() as u64;
    let commit = Commit {
        made,
        passed_on: deferred,
        claimed: Some(stored),
    };
    commit_attempts(ctx, outbox, message, commit).await?;
    webhookd_metrics::RETRIES_SCHEDULED.inc_by(deferrals);
    Ok(Consumed::Delivered)
}
