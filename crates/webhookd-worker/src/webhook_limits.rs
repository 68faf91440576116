//! Per-webhook limits: at most `WEBHOOKD_MAX_CONCURRENT_PER_WEBHOOK` attempts to one webhook at once, across
//! the inline and retry lanes; and, for a retry task that cannot start now, when its webhook is expected to
//! have room (the webhook's attempts spread by its average duration divided by the cap).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The shortest a parked task waits: one step of the delay ladder, so that a task never spins through the
/// retry queue.
pub(crate) const MIN_PARK: Duration = Duration::from_millis(50);
/// The longest a parked task waits before it is tried again.
pub(crate) const MAX_PARK: Duration = Duration::from_secs(60);
/// How much of the previous average a new attempt's duration replaces.
const SMOOTHING: f64 = 0.2;

/// The per-webhook state, kept while the webhook has attempts or bookings.
struct Entry {
    permits: Arc<Semaphore>,
    average: Duration,
    booked_until: Instant,
}

/// Per-webhook concurrency caps and pacing.
pub(crate) struct WebhookLimits {
    cap: usize,
    /// The duration an attempt to a webhook not yet seen is expected to take.
    expected: Duration,
    entries: Mutex<HashMap<i64, Entry>>,
}

/// One attempt's share of its webhook's cap; gives it back, and records how long the attempt took, when
/// dropped.
pub(crate) struct WebhookPermit {
    limits: Arc<WebhookLimits>,
    webhook: i64,
    started: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Drop for WebhookPermit {
    fn drop(&mut self) {
        self.limits.record(self.webhook, self.started.elapsed());
    }
}

impl WebhookLimits {
    /// Limits of `cap` attempts at once per webhook; an attempt to a webhook not yet seen is expected to take
    /// `expected`.
    pub(crate) fn new(cap: usize, expected: Duration) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            expected,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn permits(&self, webhook: i64) -> Arc<Semaphore> {
        let mut entries = self.entries();
        if entries.len() > 1024 {
            self.forget_idle(&mut entries);
        }
        entries
            .entry(webhook)
            .or_insert_with(|| Entry {
                permits: Arc::new(Semaphore::new(self.cap)),
                average: self.expected,
                booked_until: Instant::now(),
            })
            .permits
            .clone()
    }

    /// Drops the state of webhooks with no attempt in flight and no booking ahead.
    fn forget_idle(&self, entries: &mut HashMap<i64, Entry>) {
        let now = Instant::now();
        entries.retain(|_, e| {
            e.permits.available_permits() < self.cap
                || Arc::strong_count(&e.permits) > 1
                || e.booked_until > now
        });
    }

    /// Waits for room to send to `webhook` (inline attempts).
    pub(crate) async fn acquire(self: &Arc<Self>, webhook: i64) -> Option<WebhookPermit> {
        let permit = self.permits(webhook).acquire_owned().await.ok()?;
        Some(self.permit(webhook, permit))
    }

    /// Room to send to `webhook` now, if it has any (retry tasks, which go back to the ladder otherwise).
    pub(crate) fn try_acquire(self: &Arc<Self>, webhook: i64) -> Option<WebhookPermit> {
        let permit = self.permits(webhook).try_acquire_owned().ok()?;
        Some(self.permit(webhook, permit))
    }

    fn permit(self: &Arc<Self>, webhook: i64, permit: OwnedSemaphorePermit) -> WebhookPermit {
        WebhookPermit {
            limits: self.clone(),
            webhook,
            started: Instant::now(),
            _permit: permit,
        }
    }

    /// How long attempts to `webhook` have taken lately (what one not yet seen is expected to take).
    pub(crate) fn average(&self, webhook: i64) -> Duration {
        self.entries()
            .get(&webhook)
            .map_or(self.expected, |e| e.average)
    }

    fn record(&self, webhook: i64, took: Duration) {
        if let Some(entry) = self.entries().get_mut(&webhook) {
            entry.average = entry.average.mul_f64(1.0 - SMOOTHING) + took.mul_f64(SMOOTHING);
        }
    }

    /// How long a task for `webhook` that cannot start now should wait: until after the tasks booked for the
    /// webhook before it, each `average / cap` apart, between [`MIN_PARK`] and [`MAX_PARK`]. Books its turn.
    pub(crate) fn park(&self, webhook: i64) -> Duration {
        let now = Instant::now();
        let mut entries = self.entries();
        let entry = entries.entry(webhook).or_insert_with(|| Entry {
            permits: Arc::new(Semaphore::new(self.cap)),
            average: self.expected,
            booked_until: now,
        });
        let spacing = entry.average / self.cap as u32;
        let turn = entry.booked_until.max(now) + spacing;
        entry.booked_until = turn.min(now + MAX_PARK);
        (turn - now).clamp(MIN_PARK, MAX_PARK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_webhook_has_at_most_its_cap_of_attempts_at_once() {
        let limits = WebhookLimits::new(2, Duration::from_millis(100));
        let a = limits.try_acquire(1).unwrap();
        let _b = limits.try_acquire(1).unwrap();
        assert!(limits.try_acquire(1).is_none(), "the third attempt waits");
        assert!(
            limits.try_acquire(2).is_some(),
            "other webhooks are not affected"
        );
        drop(a);
        assert!(limits.try_acquire(1).is_some());
        let waiting = tokio::spawn({
            let limits = limits.clone();
            async move { limits.acquire(1).await.is_some() }
        });
        drop(_b);
        assert!(waiting.await.unwrap());
    }

    #[test]
    fn parked_tasks_of_one_webhook_are_spread_by_its_average_duration_over_the_cap() {
        let limits = WebhookLimits::new(4, Duration::from_secs(1));
        let waits: Vec<u128> = (0..4).map(|_| limits.park(9).as_millis()).collect();
        // 250 ms apart (1 s / 4), each booking after the last; a few ms of slack for the clock.
        for (n, wait) in waits.iter().enumerate() {
            let expected = 250 * (n as u128 + 1);
            assert!((expected - 5..=expected).contains(wait), "{waits:?}");
        }
        assert!(
            limits.park(10).as_millis() >= 245,
            "each webhook has its own bookings"
        );
        let fast = WebhookLimits::new(64, Duration::from_millis(2));
        assert_eq!(fast.park(1), MIN_PARK, "never less than one ladder step");
        let slow = WebhookLimits::new(1, Duration::from_secs(600));
        assert_eq!(slow.park(1), MAX_PARK);
    }
}
