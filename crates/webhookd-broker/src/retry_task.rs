//! The retry task: what waits on the delay ladder until a delivery's next attempt is due. One message
//! carries up to `MAX_TASKS_PER_MESSAGE` of them.

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
    /// The replay that made the delivery, if a replay did (its delivery ids derive from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Uuid>,
}

impl RetryTask {
    /// The wait left before the task is due, at `now_ms` (zero once due).
    pub fn remaining(&self, now_ms: i64) -> std::time::Duration {
        std::time::Duration::from_millis((self.due_at_ms - now_ms).max(0) as u64)
    }
}

/// The current time in Unix milliseconds, the clock of `due_at_ms`.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Most tasks in one retry message: enough to make deferring a slow webhook's deliveries cheap for the
/// broker, few enough that the retry tasks a worker holds unacknowledged stay small.
pub const MAX_TASKS_PER_MESSAGE: usize = 64;

/// The body of a retry message: a JSON array of tasks.
pub fn encode(tasks: &[RetryTask]) -> Vec<u8> {
    serde_json::to_vec(tasks).unwrap_or_default()
}

/// Reads a retry message: a JSON array of tasks, or one task object (the format of earlier versions,
/// which may still wait on the ladder after an upgrade).
pub fn decode(body: &[u8]) -> Result<Vec<RetryTask>, serde_json::Error> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body),
        _ => serde_json::from_slice(body).map(|task| vec![task]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(attempt: u32) -> RetryTask {
        RetryTask {
            event_id: Uuid::nil(),
            webhook_id: 7,
            chunk: 0,
            attempt,
            due_at_ms: 1_700_000_000_000,
            replay: None,
        }
    }

    #[test]
    fn a_message_holds_several_tasks_and_a_single_task_still_reads() {
        let tasks = vec![task(2), task(3)];
        assert_eq!(decode(&encode(&tasks)).unwrap(), tasks);
        let single = serde_json::to_vec(&task(4)).unwrap();
        assert_eq!(decode(&single).unwrap(), vec![task(4)]);
        let err = decode(b"[{\"event_id\": 1}]").unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
        assert!(decode(b"not json").is_err());
    }
}
