//! Retry stage 2: the stored events of a retry message's due tasks, read in one query, each parsed (with its
//! bodies) when the first of its attempts starts.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use backoff::backoff::Backoff;
use uuid::Uuid;
use webhookd_broker::RetryTask;
use webhookd_core::Event;
use webhookd_store::events;

use crate::backoff_forever::database_backoff;
use crate::batcher::Stopped;
use crate::bodies::Bodies;
use crate::context::WorkerContext;

/// A stored event: its organization, its envelope, and the envelope parsed once a task needs it.
pub(crate) struct StoredEvent {
    organization: i64,
    envelope: String,
    parsed: OnceLock<LoadedEvent>,
}

/// A stored event as the retry path needs it: parsed, with its bodies; or why it cannot be sent.
pub(crate) type LoadedEvent = Result<(Event, Bodies), Unsendable>;

/// A stored event that cannot be sent any more, and the organization it belongs to (to log it for).
pub(crate) struct Unsendable {
    pub(crate) organization: i64,
    pub(crate) reason: String,
}

impl StoredEvent {
    /// The event parsed, with its bodies (parsed on the first call, shared by the later ones).
    pub(crate) fn parsed(&self, ctx: &WorkerContext, id: Uuid) -> &LoadedEvent {
        self.parsed.get_or_init(|| {
            let settings = &ctx.settings;
            match Event::parse(self.envelope.as_bytes(), &settings.catalog) {
                Ok(event) => {
                    let bodies = Bodies::build(&settings.catalog, settings.batch_size, &event);
                    Ok((event, bodies))
                }
                Err(e) => Err(Unsendable {
                    organization: self.organization,
                    reason: format!("stored event {id} is no longer valid: {e}"),
                }),
            }
        })
    }
}

/// The stored events of `tasks`, by id; an event that is not stored is absent. Database outages are waited
/// out (the message stays unacknowledged meanwhile).
pub(crate) async fn load_events(
    ctx: &WorkerContext,
    tasks: &[RetryTask],
) -> Result<HashMap<Uuid, StoredEvent>, Stopped> {
    let mut ids: Vec<Uuid> = tasks.iter().map(|t| t.event_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut backoff = database_backoff();
    let found = loop {
        let result = match ctx.pool.get().await {
            Ok(client) => events::load_events(&client, &ids).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(found) => break found,
            Err(e) => {
                let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, "reading events failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    };
    Ok(found
        .into_iter()
        .map(|(id, organization, envelope)| {
            let stored = StoredEvent {
                organization,
                envelope,
                parsed: OnceLock::new(),
            };
            (id, stored)
        })
        .collect())
}
