//! The last stage: the message acknowledged when its handling finished, or returned to the queue.

use std::time::Duration;

use crate::acks::{Pending, Settle};
use crate::stages::HandleError;

/// How long a handler that could not finish waits before returning its message, so that a broker problem
/// does not turn into a redelivery loop.
const NACK_DELAY: Duration = Duration::from_secs(1);

/// Acks the message if `result` is `Ok`, else requeues it after a moment.
pub(crate) async fn settle(pending: Pending, result: Result<(), HandleError>) {
    match result {
        Ok(()) => pending.settle(Settle::Ack),
        Err(e) => {
            tracing::warn!(error = %e, "message not finished; returning it to the queue");
            // Whatever failed (the broker, most likely) gets a moment before the message comes back.
            tokio::time::sleep(NACK_DELAY).await;
            pending.settle(Settle::Requeue);
        }
    }
}
