//! Typed identifiers, so that a delivery id cannot be passed where an event id belongs.

use uuid::Uuid;

/// Namespace of the name-based (v5) event ids of events that carry a producer id.
const EVENT_NAMESPACE: Uuid = Uuid::from_u128(0x0c4e_2b7a_91d3_4f60_8e15_7a9b_c2d4_e6f1);
/// Namespace of the name-based (v5) delivery ids.
const DELIVERY_NAMESPACE: Uuid = Uuid::from_u128(0x6f0c_8a1e_52b4_4f7d_9c59_2a3c_1b5e_d4a7);

/// webhookd's id of an event (time-ordered UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub Uuid);

/// The id of one delivery: one event's batch to one webhook. It is the `webhook-id` header, the same on
/// every attempt and on every redelivery of the same event, so receivers can deduplicate on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub Uuid);

impl EventId {
    /// A new time-ordered event id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl EventId {
    /// The id of the event a producer identified as `producer_id` in `organization`: the same on every
    /// re-publish and every redelivery, so its deliveries keep their `webhook-id`.
    pub fn for_producer(organization: i64, producer_id: &str) -> Self {
        let mut name = organization.to_be_bytes().to_vec();
        name.extend_from_slice(producer_id.as_bytes());
        Self(Uuid::new_v5(&EVENT_NAMESPACE, &name))
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliveryId {
    /// The delivery of batch `chunk` of `event` to webhook `webhook`; deterministic.
    pub fn derive(event: EventId, webhook: i64, chunk: u32) -> Self {
        let mut name = [0u8; 28];
        name[..16].copy_from_slice(event.0.as_bytes());
        name[16..24].copy_from_slice(&webhook.to_be_bytes());
        name[24..].copy_from_slice(&chunk.to_be_bytes());
        Self(Uuid::new_v5(&DELIVERY_NAMESPACE, &name))
    }
}

impl DeliveryId {
    /// The delivery of batch `chunk` of `event` to webhook `webhook` made by replay `replay`: a new delivery,
    /// apart from the event's first one (and from another replay's), with its own `webhook-id`; deterministic,
    /// so that a replay task sent twice is one delivery to the receiver.
    pub fn for_replay(event: EventId, webhook: i64, chunk: u32, replay: Uuid) -> Self {
        let mut name = [0u8; 44];
        name[..16].copy_from_slice(event.0.as_bytes());
        name[16..24].copy_from_slice(&webhook.to_be_bytes());
        name[24..28].copy_from_slice(&chunk.to_be_bytes());
        name[28..].copy_from_slice(replay.as_bytes());
        Self(Uuid::new_v5(&DELIVERY_NAMESPACE, &name))
    }

    /// The delivery of `chunk` of `event` to `webhook`: the event's own, or a replay's.
    pub fn of(event: EventId, webhook: i64, chunk: u32, replay: Option<Uuid>) -> Self {
        match replay {
            Some(replay) => Self::for_replay(event, webhook, chunk, replay),
            None => Self::derive(event, webhook, chunk),
        }
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "msg_{}", self.0.simple())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_event_ids_are_stable_per_organization() {
        assert_eq!(EventId::for_producer(1, "a"), EventId::for_producer(1, "a"));
        assert_ne!(EventId::for_producer(1, "a"), EventId::for_producer(2, "a"));
        assert_ne!(EventId::for_producer(1, "a"), EventId::for_producer(1, "b"));
    }

    #[test]
    fn delivery_ids_are_stable_and_distinct() {
        let e = EventId::new();
        assert_eq!(DeliveryId::derive(e, 1, 0), DeliveryId::derive(e, 1, 0));
        assert_ne!(DeliveryId::derive(e, 1, 0), DeliveryId::derive(e, 2, 0));
        assert_ne!(DeliveryId::derive(e, 1, 0), DeliveryId::derive(e, 1, 1));
        let replay = Uuid::now_v7();
        assert_eq!(
            DeliveryId::for_replay(e, 1, 0, replay),
            DeliveryId::of(e, 1, 0, Some(replay))
        );
        assert_ne!(
            DeliveryId::for_replay(e, 1, 0, replay),
            DeliveryId::derive(e, 1, 0)
        );
        assert_ne!(
            DeliveryId::for_replay(e, 1, 0, replay),
            DeliveryId::for_replay(e, 1, 0, Uuid::now_v7())
        );
        let shown = DeliveryId::derive(e, 1, 0).to_string();
        assert!(shown.starts_with("msg_") && !shown.contains('.') && shown.len() == 36);
    }
}
