//! Endpoint health: Label Studio's `consecutive_failures`, summarized per batch of attempts.

use std::collections::BTreeMap;

/// What one attempt says about its webhook's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthSignal {
    /// A 2xx: resets the counter.
    Success,
    /// A failed HTTP attempt: increments it.
    Failure,
    /// A 410 Gone: a failure that turns the webhook off at once.
    Gone,
}

/// The net effect of a batch of attempts on one webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChange {
    /// The webhook.
    pub webhook_id: i64,
    /// A success happened: the counter restarts from `failures`.
    pub reset: bool,
    /// Failures after the last success (or in all, without one).
    pub failures: i32,
    /// A 410 was seen: turn the webhook off.
    pub gone: bool,
}

/// Folds attempts, in the order they happened, into one change per webhook (ordered by id, which is also
/// the order rows are locked in, so concurrent writers cannot deadlock each other).
pub fn summarize(signals: impl IntoIterator<Item = (i64, HealthSignal)>) -> Vec<HealthChange> {
    let mut by_id: BTreeMap<i64, HealthChange> = BTreeMap::new();
    for (webhook_id, signal) in signals {
        let change = by_id.entry(webhook_id).or_insert(HealthChange {
            webhook_id,
            reset: false,
            failures: 0,
            gone: false,
        });
        match signal {
            HealthSignal::Success => {
                change.reset = true;
                change.failures = 0;
            }
            HealthSignal::Failure => change.failures += 1,
            HealthSignal::Gone => {
                change.failures += 1;
                change.gone = true;
            }
        }
    }
    by_id.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthSignal::*;

    #[test]
    fn a_success_resets_and_later_failures_count() {
        let changes = summarize([
            (1, Failure),
            (2, Success),
            (1, Success),
            (1, Failure),
            (3, Gone),
        ]);
        assert_eq!(
            changes,
            [
                HealthChange {
                    webhook_id: 1,
                    reset: true,
                    failures: 1,
                    gone: false
                },
                HealthChange {
                    webhook_id: 2,
                    reset: true,
                    failures: 0,
                    gone: false
                },
                HealthChange {
                    webhook_id: 3,
                    reset: false,
                    failures: 1,
                    gone: true
                },
            ]
        );
    }
}
