//! Stage 1: the message's body as an event (or retry tasks); a message that can never be processed goes to the
//! dead-letter queue with the reason, and is acknowledged.

use webhookd_broker::inbound::dead_letter;
use webhookd_broker::retry_task;
use webhookd_broker::{Inbound, RetryTask};
use webhookd_core::Event;

use crate::context::{Outbox, WorkerContext};
use crate::stages::HandleError;

/// An event message that parsed.
pub(crate) struct ParsedEvent {
    /// The event; its producer id is the message id when the envelope has none.
    pub(crate) event: Event,
    /// Whether the envelope carried its own id (then the message is stored as published).
    pub(crate) id_in_envelope: bool,
}

/// The event in `message`, or `None` once the message is dead-lettered.
pub(crate) async fn parse_event_or_dead_letter(
    ctx: &WorkerContext,
    outbox: &Outbox,
    message: &Inbound,
) -> Result<Option<ParsedEvent>, HandleError> {
    let settings = &ctx.settings;
    if message.body.len() > settings.max_event_bytes {
        let reason = format!(
            "the event is {} bytes, more than the largest accepted ({} bytes, WEBHOOKD_MAX_EVENT_BYTES)",
            message.body.len(),
            settings.max_event_bytes
        );
        dead_letter(
            &outbox.publisher,
            &settings.topology,
            message,
            &message.body,
            &reason,
        )
        .await?;
        return Ok(None);
    }
    match Event::parse(&message.body, &settings.catalog) {
        Ok(mut event) => {
            let id_in_envelope = event.producer_id.is_some();
            if !id_in_envelope {
                // A producer that set only the AMQP message id still gets exactly-once on re-publish.
                event.producer_id = message.message_id.clone();
            }
            Ok(Some(ParsedEvent {
                event,
                id_in_envelope,
            }))
        }
        Err(reason) => {
            let reason = reason.to_string();
            dead_letter(
                &outbox.publisher,
                &settings.topology,
                message,
                &message.body,
                &reason,
            )
            .await?;
            Ok(None)
        }
    }
}

/// The retry tasks in `message`, or `None` once the message is dead-lettered.
pub(crate) async fn parse_tasks_or_dead_letter(
    ctx: &WorkerContext,
    outbox: &Outbox,
    message: &Inbound,
) -> Result<Option<Vec<RetryTask>>, HandleError> {
    match retry_task::decode(&message.body) {
        Ok(tasks) => Ok(Some(tasks)),
        Err(e) => {
            let reason = format!("retry task is not valid: {e}");
            let topology = &ctx.settings.topology;
            dead_letter(&outbox.publisher, topology, message, &message.body, &reason).await?;
            Ok(None)
        }
    }
}
