//! The event-claim writer: stores new events in batches, before their first attempts, so that a re-published
//! event is delivered once and retries can read it back.

use uuid::Uuid;
use webhookd_store::events::{self, Claim, NewEvent};
use webhookd_store::{Pool, StoreError};

use crate::batcher::{record_db_health, Flush};

/// Writes event claims in batches.
pub(crate) struct ClaimWriter(Pool);

impl ClaimWriter {
    /// A writer on `pool` (whose sessions may commit asynchronously: see `Worker::start`).
    pub(crate) fn new(pool: Pool) -> Self {
        Self(pool)
    }
}

impl Flush for ClaimWriter {
    type Req = NewEvent;
    type Resp = Claim;
    async fn flush(&self, batch: &[NewEvent], _: Uuid) -> Result<Vec<Claim>, StoreError> {
        // Claims carry their own tokens, which tell a claim made again from another message's.
        record_db_health(async { events::claim_events(&self.0.get().await?, batch).await }.await)
    }
}
