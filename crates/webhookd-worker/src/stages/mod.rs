//! The stages a message passes through, one per file, in order: `parse` (or dead-letter), `claim`, `fan_out`
//! (the slow lane split and the inline attempts), `attempt`, `commit` and `settle`; for retry tasks, `parse`,
//! `load`, `retry_attempt`, `attempt`, `commit` and `settle`.

pub(crate) mod attempt;
pub(crate) mod claim;
pub(crate) mod commit;
pub(crate) mod fan_out;
pub(crate) mod load;
pub(crate) mod parse;
pub(crate) mod retry_attempt;
pub(crate) mod settle;

use webhookd_broker::PublishError;

use crate::batcher::Stopped;
use crate::retry_scheduler::ScheduleError;

/// Why a message could not be finished; it is left for redelivery.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    /// Publishing a dead letter failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Scheduling retry tasks failed.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The worker is shutting down.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}
