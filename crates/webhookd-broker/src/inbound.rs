//! Messages taken from webhookd's queues: consumed with a bounded prefetch, turned into [`Inbound`] before any
//! handler sees them, and dead-lettered with the reason when they can never be processed.

use chrono::Utc;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};

use crate::{ConfirmedPublisher, PublishError, Topology};

/// Which of webhookd's queues a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    /// The work queue: events from producers.
    Events,
    /// The retry queue: retry tasks that are due.
    Retries,
}

impl QueueKind {
    /// The queue's name in `topology`.
    pub fn queue(self, topology: &Topology) -> String {
        match self {
            QueueKind::Events => topology.work_queue(),
            QueueKind::Retries => topology.retry_queue(),
        }
    }

    /// This process's consumer tag on the queue.
    pub fn consumer_tag(self) -> String {
        let kind = match self {
            QueueKind::Events => "events",
            QueueKind::Retries => "retries",
        };
        format!("webhookd-{kind}-{}", std::process::id())
    }
}

/// Starts consuming `kind`'s queue on a channel of its own, with `prefetch` messages unacknowledged at most.
pub async fn consume(
    connection: &Connection,
    topology: &Topology,
    kind: QueueKind,
    prefetch: u16,
) -> lapin::Result<(Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            kind.queue(topology).as_str().into(),
            kind.consumer_tag().as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// Stops delivering `kind`'s messages on `channel` (those in flight stay to be acked).
pub async fn stop_consuming(channel: &Channel, kind: QueueKind) -> lapin::Result<()> {
    channel
        .basic_cancel(
            kind.consumer_tag().as_str().into(),
            BasicCancelOptions::default(),
        )
        .await
}

/// A message as the handlers see it: its body, the properties they read, and what a dead letter keeps.
#[derive(Debug)]
pub struct Inbound {
    /// The channel's tag for the message (what acks name).
    pub delivery_tag: u64,
    /// The body.
    pub body: Vec<u8>,
    /// The AMQP `message-id`, if the producer set one.
    pub message_id: Option<String>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Whether the broker delivered it before (to this or another consumer).
    pub redelivered: bool,
    properties: BasicProperties,
}

impl From<Delivery> for Inbound {
    fn from(d: Delivery) -> Self {
        Self {
            delivery_tag: d.delivery_tag,
            message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
            routing_key: d.routing_key.to_string(),
            redelivered: d.redelivered,
            body: d.data,
            properties: d.properties,
        }
    }
}

impl Inbound {
    /// A message built by hand (tests).
    pub fn new(body: Vec<u8>, routing_key: &str, properties: BasicProperties) -> Self {
        Self {
            delivery_tag: 0,
            message_id: properties.message_id().as_ref().map(|m| m.to_string()),
            routing_key: routing_key.to_owned(),
            redelivered: false,
            body,
            properties,
        }
    }
}

/// Moves `body` (the whole message or the part of it that can never be processed) to the dead-letter queue,
/// with the properties of `message` and `reason` in the `x-webhookd-reason` header, and waits for the confirm.
pub async fn dead_letter(
    publisher: &ConfirmedPublisher,
    topology: &Topology,
    message: &Inbound,
    body: &[u8],
    reason: &str,
) -> Result<(), PublishError> {
    tracing::warn!(reason, routing_key = %message.routing_key, redelivered = message.redelivered,
        "message moved to the dead-letter queue");
    let props = dead_letter_properties(message, reason, &Utc::now().to_rfc3339());
    publisher
        .publish("", &topology.dead_queue(), body, props)
        .await?;
    webhookd_metrics::DEAD_LETTERS.inc();
    Ok(())
}

/// The properties of a dead letter: the message's own (message id, content type, headers) so that it can be
/// replayed as is, without the broker's delivery counter and the expiration (a dead letter stays until someone
/// looks at it), plus the reason, the routing key and the time.
fn dead_letter_properties(message: &Inbound, reason: &str, at: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = message.properties.headers() {
        for (k, v) in old.inner() {
            if k.as_str() != "x-delivery-count" {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    for (name, value) in [
        ("x-webhookd-reason", reason),
        ("x-webhookd-routing-key", message.routing_key.as_str()),
        ("x-webhookd-dead-at", at),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    kept_properties(&message.properties)
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// The properties to keep on a dead letter: all but the headers (rebuilt by the caller) and the expiration.
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
        let mut old_headers = FieldTable::default();
        old_headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(3));
        old_headers.insert("x-producer".into(), AMQPValue::LongString("p".into()));
        let original = BasicProperties::default()
            .with_message_id("evt-1".into())
            .with_content_type("application/json".into())
            .with_expiration("60000".into())
            .with_priority(3)
            .with_timestamp(1_700_000_000)
            .with_headers(old_headers);
        let message = Inbound::new(b"{}".to_vec(), "TASKS_CREATED", original);
        let kept = dead_letter_properties(&message, "bad", "2026-01-01T00:00:00Z");
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
        assert_eq!(*kept.delivery_mode(), Some(2));
        let headers = kept.headers().clone().unwrap_or_default();
        let h = headers.inner();
        assert!(!h.contains_key("x-delivery-count"));
        assert!(h.contains_key("x-producer"));
        assert_eq!(
            h.get("x-webhookd-reason"),
            Some(&AMQPValue::LongString("bad".into()))
        );
        assert_eq!(
            h.get("x-webhookd-routing-key"),
            Some(&AMQPValue::LongString("TASKS_CREATED".into()))
        );
    }
}
