//! The retry task: the small message that waits on the delay ladder until a delivery's next attempt is due.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One pending attempt of one delivery. The event body stays in PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryTask {
    /// The event to deliver.
    pub event_id: Uuid,
    /// The webhook to deliver it to.
    pub webhook_id: i64,
    /// Which batch of the event.
    pub chunk: u32,
    /// The number of the attempt to make (2 = the first retry).
    pub attempt: u32,
    /// When the attempt is due, in Unix milliseconds.
    pub due_at_ms: i64,
}

/// The current time in Unix milliseconds, the clock of `due_at_ms`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
