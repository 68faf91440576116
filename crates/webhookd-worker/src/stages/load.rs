//! Retry stage 2: the stored events of a retry message's due tasks, read in one query, each parsed (with its
//! bodies) when the first of its attempts starts.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use backoff::backoff::Backoff;
use uuid::Uuid;
use webhookd_broker::RetryTask;
use webhookd_core::Event;
use webhookd_store::{events, replays};

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

/// What the due tasks of one retry message need from the database.
pub(crate) struct Loaded {
    /// Their stored events, by id; an event that is not stored is absent.
    pub(crate) events: HashMap<Uuid, StoredEvent>,
    /// The replays among theirs that were cancelled.
    pub(crate) cancelled_replays: HashSet<Uuid>,
}

/// The stored events of `tasks` (and which of their replays were cancelled). Database outages are waited out
/// (the message stays unacknowledged meanwhile); the first failure of an outage is a warning, the next ones
/// debug lines, since every waiting retry message says the same.
pub(crate) async fn load_events(
    ctx: &WorkerContext,
    tasks: &[RetryTask],
) -> Result<Loaded, Stopped> {
    let mut ids: Vec<Uuid> = tasks.iter().map(|t| t.event_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut replays: Vec<Uuid> = tasks.iter().filter_map(|t| t.replay).collect();
    replays.sort_unstable();
    replays.dedup();
    let mut backoff = database_backoff();
    let mut failures = 0u32;
    let (found, cancelled) = loop {
        let result = match ctx.pool.get().await {
            Ok(client) => read(&client, &ids, &replays).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(found) => break found,
            Err(e) => {
                let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, sqlstate = e.sqlstate(), "reading events failed; retrying");
                } else {
                    tracing::debug!(error = %e, failures, "reading events failed again; retrying");
                }
                tokio::time::sleep(wait).await;
            }
        }
    };
    let events = found
        .into_iter()
        .map(|(id, organization, envelope)| {
            let stored = StoredEvent {
                organization,
                envelope,
                parsed: OnceLock::new(),
            };
            (id, stored)
        })
        .collect();
    Ok(Loaded {
        events,
        cancelled_replays: cancelled.into_iter().collect(),
    })
}

type Found = (Vec<(Uuid, i64, String)>, Vec<Uuid>);

async fn read(
    client: &webhookd_store::PooledClient,
    ids: &[Uuid],
    replay_ids: &[Uuid],
) -> Result<Found, webhookd_store::StoreError> {
    let found = events::load_events(client, ids).await?;
    let cancelled = match replay_ids.is_empty() {
        true => Vec::new(),
        false => replays::cancelled_among(client, replay_ids).await?,
    };
    Ok((found, cancelled))
}
