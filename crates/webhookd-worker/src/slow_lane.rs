//! The slow lane: a webhook whose last attempt took half the timeout or more is not waited on inline. Its
//! deliveries of new events go to the retry queue as attempt 1 instead, so one unresponsive receiver
//! cannot hold every event's ack for the whole timeout and starve the healthy webhooks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use webhookd_core::AttemptResult;

/// How long a webhook stays in the slow lane after a slow attempt (unless a quick success ends it sooner).
pub(crate) const SLOW_FOR: Duration = Duration::from_secs(30);

/// Webhooks currently in the slow lane.
#[derive(Debug)]
pub(crate) struct SlowLane {
    timeout: Duration,
    until: Mutex<HashMap<i64, Instant>>,
}

impl SlowLane {
    /// A lane for attempts limited to `timeout`.
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            until: Mutex::new(HashMap::new()),
        }
    }

    /// Whether deliveries to `webhook` should be deferred now.
    pub(crate) fn is_slow(&self, webhook: i64) -> bool {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        match until.get(&webhook) {
            Some(t) if *t > Instant::now() => true,
            Some(_) => {
                until.remove(&webhook);
                false
            }
            None => false,
        }
    }

    /// How long an attempt may take before its webhook counts as slow: half the timeout.
    pub(crate) fn threshold(&self) -> Duration {
        self.timeout / 2
    }

    /// Puts `webhook` in the slow lane now.
    pub(crate) fn mark(&self, webhook: i64) {
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        until.insert(webhook, Instant::now() + SLOW_FOR);
    }

    /// Records how an attempt to `webhook` went: slow (at least half the timeout) marks it, a quick
    /// answer clears it.
    pub(crate) fn observe(&self, webhook: i64, result: AttemptResult, took: Duration) {
        let slow = took >= self.threshold();
        let answered = matches!(result, AttemptResult::Status { .. });
        let mut until = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if slow {
            until.insert(webhook, Instant::now() + SLOW_FOR);
        } else if answered {
            until.remove(&webhook);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_attempt_marks_and_a_quick_answer_clears() {
        let lane = SlowLane::new(Duration::from_secs(1));
        assert!(!lane.is_slow(1));
        lane.observe(1, AttemptResult::Transport, Duration::from_millis(1000));
        assert!(lane.is_slow(1));
        assert!(!lane.is_slow(2));
        lane.observe(1, AttemptResult::Transport, Duration::from_millis(3));
        assert!(
            lane.is_slow(1),
            "a quick connection error does not prove the receiver is fast"
        );
        let ok = AttemptResult::Status {
            code: 200,
            retry_after: None,
        };
        lane.observe(1, ok, Duration::from_millis(3));
        assert!(!lane.is_slow(1));
    }
}
