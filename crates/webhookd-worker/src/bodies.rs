//! The bodies of one event, built once and shared by every webhook and attempt that sends them.

use bytes::Bytes;
use webhookd_core::body::{self, EventBodies};
use webhookd_core::{Catalog, Event};

/// One chunk's two bodies: with the payload, and `{"action": …}` only (for `send_payload = false`).
#[derive(Debug, Clone)]
struct ChunkBodies {
    full: Bytes,
    action_only: Bytes,
}

/// The bodies of every chunk of one event; empty when its action is no longer in the catalog.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bodies(Vec<ChunkBodies>);

impl Bodies {
    /// Builds the bodies of `event`, cutting its instance list into chunks of `batch_size`.
    pub(crate) fn build(catalog: &Catalog, batch_size: usize, event: &Event) -> Self {
        let Some(spec) = catalog.get(&event.action) else {
            return Self::default();
        };
        let EventBodies {
            chunks,
            action_only,
        } = body::build(event, spec, batch_size);
        let action_only = Bytes::from(action_only);
        Self(
            chunks
                .into_iter()
                .map(|c| ChunkBodies {
                    full: Bytes::from(c),
                    action_only: action_only.clone(),
                })
                .collect(),
        )
    }

    /// How many chunks the event has (0: it cannot be sent).
    pub(crate) fn chunks(&self) -> usize {
        self.0.len()
    }

    /// What a webhook receives for `chunk` (clamped to the last one); cheap (shared bytes).
    pub(crate) fn for_webhook(&self, chunk: usize, send_payload: bool) -> Bytes {
        let Some(bodies) = self.0.get(chunk).or_else(|| self.0.last()) else {
            return Bytes::new();
        };
        if send_payload {
            bodies.full.clone()
        } else {
            bodies.action_only.clone()
        }
    }
}
