//! Stage 2: the event's claim, and the webhooks that receive it. Every event is stored (those that no webhook
//! receives too, so that they can be replayed), before its first attempt, so that a re-published event is
//! delivered once and its retries can read it back.

use std::sync::Arc;

use webhookd_broker::Inbound;
use webhookd_core::{EventId, Subscription};
use webhookd_store::events::NewEvent;

use crate::batcher::Stopped;
use crate::context::WorkerContext;
use crate::stages::parse::ParsedEvent;

/// What the claim stage found.
pub(crate) enum ClaimOutcome {
    /// No active webhook receives the event: it is stored, nothing is sent.
    NoSubscribers(Arc<NewEvent>),
    /// The event was published again and delivered already (its producer id is stored).
    AlreadyDelivered,
    /// The event is stored and its deliveries are this handler's to make.
    Claimed(ClaimedEvent),
    /// The database refused to store the event for good (the reason says why).
    Unstorable(String),
}

/// A claimed event: its id, the webhooks it goes to, and its stored row.
pub(crate) struct ClaimedEvent {
    /// The id every delivery of the event derives from.
    pub(crate) event_id: EventId,
    /// The webhooks that receive it, in id order.
    pub(crate) subscribers: Vec<Arc<Subscription>>,
    /// The row its claim stored: the log write checks it is still there (see `LogRequest::keep`).
    pub(crate) stored: Arc<NewEvent>,
}

/// Matches the event against the subscription cache and claims it.
pub(crate) async fn claim(
    ctx: &WorkerContext,
    message: &Inbound,
    parsed: &ParsedEvent,
) -> Result<ClaimOutcome, Stopped> {
    let event = &parsed.event;
    let subscribers =
        ctx.cache
            .snapshot()
            .matching(event.organization, event.project_id, &event.action);
    let stored = Arc::new(new_event(message, parsed));
    let claim = match ctx.claims.submit(stored.clone()).await? {
        Ok(claim) => claim,
        Err(refused) => {
            let reason = format!("the event could not be stored: {}", refused.error);
            return Ok(ClaimOutcome::Unstorable(reason));
        }
    };
    if subscribers.is_empty() {
        tracing::debug!(organization = event.organization, action = %event.action, "event has no subscriber");
        return Ok(ClaimOutcome::NoSubscribers(stored));
    }
    if !claim.fresh && !message.redelivered {
        tracing::info!(event_id = %claim.event_id, producer_id = ?event.producer_id,
            "event was published again; already delivered");
        return Ok(ClaimOutcome::AlreadyDelivered);
    }
    Ok(ClaimOutcome::Claimed(ClaimedEvent {
        event_id: EventId(claim.event_id),
        subscribers,
        stored,
    }))
}

/// The row that stores the event: the message as published, unless webhookd filled in its id.
fn new_event(message: &Inbound, parsed: &ParsedEvent) -> NewEvent {
    let event = &parsed.event;
    NewEvent {
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
        body: match parsed.id_in_envelope {
            true => String::from_utf8_lossy(&message.body).into_owned(),
            false => event.to_envelope().to_string(),
        },
        claim_token: uuid::Uuid::new_v4(),
    }
}
