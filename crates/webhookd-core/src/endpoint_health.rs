//! Endpoint health: Label Studio's `consecutive_failures`, summarized per batch of attempts.

use std::collections::BTreeMap;

use crate::retry_policy::AttemptResult;

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

impl HealthSignal {
    /// What an attempt that ended with `result` says: nothing when nothing was sent, or no answer came yet.
    pub fn of(result: AttemptResult) -> Option<Self> {
        match result {
            AttemptResult::Unsendable | AttemptResult::HandedOver => None,
            AttemptResult::Status {
                code: 200..=299, ..
            } => Some(Self::Success),
            AttemptResult::Status { code: 410, .. } => Some(Self::Gone),
            AttemptResult::Status { .. } | AttemptResult::Transport => Some(Self::Failure),
        }
    }
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

impl HealthChange {
    /// This change followed by `later`, a change from attempts made after this one's: one change with the
    /// effect of both, as `summarize` would give for the attempts of both.
    pub fn then(self, later: HealthChange) -> HealthChange {
        HealthChange {
            webhook_id: self.webhook_id,
            reset: self.reset || later.reset,
            failures: if later.reset {
                later.failures
            } else {
                self.failures.saturating_add(later.failures)
            },
            gone: self.gone || later.gone,
        }
    }
}

/// The changes `earlier` followed by the changes `later`: one change per webhook, ordered by id (see
/// `summarize`).
pub fn fold(
    earlier: impl IntoIterator<Item = HealthChange>,
    later: impl IntoIterator<Item = HealthChange>,
) -> Vec<HealthChange> {
    let mut by_id: BTreeMap<i64, HealthChange> = BTreeMap::new();
    for change in earlier.into_iter().chain(later) {
        by_id
            .entry(change.webhook_id)
            .and_modify(|c| *c = c.then(change))
            .or_insert(change);
    }
    by_id.into_values().collect()
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
    fn answers_say_success_failure_or_gone_and_no_answer_yet_says_nothing() {
        let status = |code| AttemptResult::Status {
            code,
            retry_after: None,
        };
        assert_eq!(HealthSignal::of(status(204)), Some(Success));
        assert_eq!(HealthSignal::of(status(500)), Some(Failure));
        assert_eq!(HealthSignal::of(status(302)), Some(Failure));
        assert_eq!(HealthSignal::of(status(410)), Some(Gone));
        assert_eq!(HealthSignal::of(AttemptResult::Transport), Some(Failure));
        assert_eq!(HealthSignal::of(AttemptResult::HandedOver), None);
        assert_eq!(HealthSignal::of(AttemptResult::Unsendable), None);
    }

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

    #[test]
    fn changes_folded_in_order_are_the_change_of_all_their_attempts() {
        // Every sequence of up to 5 signals, alternating between two webhooks, cut in two at every point.
        let all = [Success, Failure, Gone];
        let sequences = (0..=5u32).flat_map(|len| {
            (0..3usize.pow(len)).map(move |mut n| {
                (0..len)
                    .map(|_| {
                        let s = all[n % 3];
                        n /= 3;
                        s
                    })
                    .collect::<Vec<_>>()
            })
        });
        for seq in sequences {
            let signals: Vec<(i64, HealthSignal)> = seq
                .iter()
                .enumerate()
                .map(|(n, s)| (1 + (n as i64 % 2), *s))
                .collect();
            for cut in 0..=signals.len() {
                let (earlier, later) = signals.split_at(cut);
                assert_eq!(
                    fold(
                        summarize(earlier.iter().copied()),
                        summarize(later.iter().copied())
                    ),
                    summarize(signals.iter().copied()),
                    "{signals:?} cut at {cut}"
                );
            }
        }
    }
}
