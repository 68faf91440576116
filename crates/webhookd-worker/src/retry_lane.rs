//! The retry lane: the worker's retry slots (`WEBHOOKD_RETRY_PREFETCH` attempts from the retry queue at once),
//! shared fairly between organizations, and between the webhooks of each.
//!
//! A due task takes a free slot at once, but for the last few (the *reserve*, a sixteenth of the slots): those
//! only go to an organization that holds less than its share would be if one more organization came, so that
//! an organization with nothing under way finds a slot at once even while another fills the lane. When every
//! slot is busy, a task waits for one only if its organization holds less than its fair share (the slots
//! divided by the organizations with retries under way or waiting) and its webhook less than its share of
//! that; freed slots go round-robin to the organizations waiting. A task over its share, or that has waited
//! `max_wait`, is refused: the caller puts it back on the delay ladder, due when its organization is expected
//! to have room (`park`), so that it holds neither a slot nor, for long, its message. One organization's slow
//! or failing receivers therefore do not delay another organization's due retries (until the reserve is used
//! up, and then by about one attempt's duration at most).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::webhook_limits::{MAX_PARK, MIN_PARK};

use tokio::sync::oneshot;

/// Who a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Claimant {
    /// The webhook's organization.
    pub(crate) organization: i64,
    /// The webhook.
    pub(crate) webhook: i64,
}

#[derive(Default)]
struct Lane {
    free: usize,
    /// Slots held, by organization, and by webhook (with its organization).
    held_by_org: HashMap<i64, usize>,
    held_by_webhook: HashMap<i64, (i64, usize)>,
    /// Waiting tasks, first in first out, by organization.
    waiting: HashMap<i64, VecDeque<Waiter>>,
    /// Organizations with waiting tasks, in the order their turns come.
    turns: VecDeque<i64>,
    next_id: u64,
    /// Until when each organization's parked tasks are booked (see `park`).
    booked: HashMap<i64, Instant>,
}

struct Waiter {
    id: u64,
    claimant: Claimant,
    granted: oneshot::Sender<()>,
}

/// The retry slots of one worker.
pub(crate) struct RetryLane {
    slots: usize,
    reserve: usize,
    lane: Mutex<Lane>,
}

/// A retry slot; given back (to the next organization's turn) when dropped.
pub(crate) struct LaneSlot {
    lane: Arc<RetryLane>,
    claimant: Claimant,
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        self.lane.release(self.claimant);
    }
}

impl RetryLane {
    /// A lane of `slots` slots.
    pub(crate) fn new(slots: usize) -> Arc<Self> {
        let slots = slots.max(1);
        Arc::new(Self {
            slots,
            reserve: slots / 16 + usize::from((4..16).contains(&slots)),
            lane: Mutex::new(Lane {
                free: slots.max(1),
                ..Lane::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lane> {
        self.lane.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `claimant`: at once if one is free, after waiting (up to `max_wait`) if its organization and
    /// webhook are within their shares, or `None`: the task should go back on the ladder.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        claimant: Claimant,
        max_wait: Duration,
    ) -> Option<LaneSlot> {
        let (id, granted) = {
            let mut lane = self.lock();
            if lane.free > 0 && lane.turns.is_empty() {
                if lane.free <= self.reserve && !lane.below_share_of_one_more(claimant, self.slots)
                {
                    return None;
                }
                lane.take(claimant);
                return Some(self.slot(claimant));
            }
            if !lane.within_share(claimant, self.slots) {
                return None;
            }
            lane.enqueue(claimant)
        };
        let waited = tokio::time::timeout(max_wait, granted).await;
        if matches!(waited, Ok(Ok(()))) {
            return Some(self.slot(claimant));
        }
        // Timed out: leave the queue, unless a slot was granted meanwhile (grants are made under the lock).
        let mut lane = self.lock();
        if lane.withdraw(claimant.organization, id) {
            None
        } else {
            drop(lane);
            Some(self.slot(claimant))
        }
    }

    /// How long a task of `claimant` that was refused should wait before it is tried again: until after the
    /// organization's tasks parked before it, each `average / share` apart (its attempts' average duration over
    /// the slots it may expect), between [`MIN_PARK`] and [`MAX_PARK`]. Books its turn.
    pub(crate) fn park(&self, claimant: Claimant, average: Duration) -> Duration {
        let now = Instant::now();
        let mut lane = self.lock();
        let share = self.slots / lane.organizations(claimant).len().max(1);
        let spacing = average / share.max(1) as u32;
        if lane.booked.len() > 1024 {
            lane.booked.retain(|_, until| *until > now);
        }
        let booked = lane.booked.entry(claimant.organization).or_insert(now);
        let turn = (*booked).max(now) + spacing;
        *booked = turn.min(now + MAX_PARK);
        (turn - now).clamp(MIN_PARK, MAX_PARK)
    }

    fn slot(self: &Arc<Self>, claimant: Claimant) -> LaneSlot {
        LaneSlot {
            lane: self.clone(),
            claimant,
        }
    }

    fn release(&self, claimant: Claimant) {
        let mut lane = self.lock();
        lane.give_back(claimant);
        lane.grant_turns();
    }
}

impl Lane {
    fn take(&mut self, c: Claimant) {
        self.free -= 1;
        *self.held_by_org.entry(c.organization).or_default() += 1;
        self.held_by_webhook
            .entry(c.webhook)
            .or_insert((c.organization, 0))
            .1 += 1;
    }

    fn give_back(&mut self, c: Claimant) {
        self.free += 1;
        if let Some(n) = self.held_by_org.get_mut(&c.organization) {
            *n -= 1;
            if *n == 0 {
                self.held_by_org.remove(&c.organization);
            }
        }
        if let Some((_, n)) = self.held_by_webhook.get_mut(&c.webhook) {
            *n -= 1;
            if *n == 0 {
                self.held_by_webhook.remove(&c.webhook);
            }
        }
    }

    /// Whether `c`'s organization holds less than its share of `slots` (among the organizations holding or
    /// waiting for slots, itself included), and its webhook less than its share of the organization's (among
    /// the organization's webhooks holding or waiting for slots).
    fn within_share(&self, c: Claimant, slots: usize) -> bool {
        let org_share = (slots / self.organizations(c).len()).max(1);
        let mut webhooks: Vec<i64> = self
            .held_by_webhook
            .iter()
            .filter(|(_, (org, _))| *org == c.organization)
            .map(|(webhook, _)| *webhook)
            .chain(
                self.waiting
                    .get(&c.organization)
                    .into_iter()
                    .flatten()
                    .map(|w| w.claimant.webhook),
            )
            .chain([c.webhook])
            .collect();
        webhooks.sort_unstable();
        webhooks.dedup();
        let webhook_share = (org_share / webhooks.len()).max(1);
        let org_held = self.held_by_org.get(&c.organization).copied().unwrap_or(0);
        let webhook_held = self.held_by_webhook.get(&c.webhook).map_or(0, |(_, n)| *n);
        org_held < org_share && webhook_held < webhook_share
    }

    /// The organizations holding or waiting for slots, and `c`'s.
    fn organizations(&self, c: Claimant) -> Vec<i64> {
        let mut organizations: Vec<i64> = self
            .held_by_org
            .keys()
            .chain(self.waiting.keys())
            .copied()
            .chain([c.organization])
            .collect();
        organizations.sort_unstable();
        organizations.dedup();
        organizations
    }

    /// Whether `c`'s organization holds less than its share would be if one more organization came: only then
    /// may it take a reserved slot.
    fn below_share_of_one_more(&self, c: Claimant, slots: usize) -> bool {
        let share = slots / (self.organizations(c).len() + 1);
        self.held_by_org.get(&c.organization).copied().unwrap_or(0) < share
    }

    fn enqueue(&mut self, claimant: Claimant) -> (u64, oneshot::Receiver<()>) {
        let (granted, rx) = oneshot::channel();
        let id = self.next_id;
        self.next_id += 1;
        let queue = self.waiting.entry(claimant.organization).or_default();
        if queue.is_empty() {
            self.turns.push_back(claimant.organization);
        }
        queue.push_back(Waiter {
            id,
            claimant,
            granted,
        });
        (id, rx)
    }

    /// Removes waiter `id` of `organization`; false if it is not waiting any more (it was granted a slot).
    fn withdraw(&mut self, organization: i64, id: u64) -> bool {
        let Some(queue) = self.waiting.get_mut(&organization) else {
            return false;
        };
        let Some(at) = queue.iter().position(|w| w.id == id) else {
            return false;
        };
        queue.remove(at);
        if queue.is_empty() {
            self.waiting.remove(&organization);
            self.turns.retain(|o| *o != organization);
        }
        true
    }

    /// Grants free slots to waiting tasks, one organization's turn at a time.
    fn grant_turns(&mut self) {
        while self.free > 0 {
            let Some(organization) = self.turns.pop_front() else {
                return;
            };
            let Some(queue) = self.waiting.get_mut(&organization) else {
                continue;
            };
            let Some(waiter) = queue.pop_front() else {
                self.waiting.remove(&organization);
                continue;
            };
            if queue.is_empty() {
                self.waiting.remove(&organization);
            } else {
                self.turns.push_back(organization);
            }
            // A waiter that is gone (its handler ended) takes nothing.
            if waiter.granted.send(()).is_ok() {
                self.take(waiter.claimant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(organization: i64, webhook: i64) -> Claimant {
        Claimant {
            organization,
            webhook,
        }
    }

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn free_slots_are_taken_at_once_and_given_back_when_dropped() {
        let lane = RetryLane::new(2);
        let a = lane.admit(of(1, 1), WAIT).await.unwrap();
        let _b = lane.admit(of(1, 2), WAIT).await.unwrap();
        drop(a);
        assert!(lane.admit(of(1, 1), Duration::ZERO).await.is_some());
    }

    #[tokio::test]
    async fn the_reserve_keeps_a_slot_for_an_organization_with_nothing_under_way() {
        let lane = RetryLane::new(4);
        let mut held: Vec<LaneSlot> = Vec::new();
        for w in 0..3 {
            held.push(lane.admit(of(1, w), WAIT).await.unwrap());
        }
        assert!(
            lane.admit(of(1, 3), WAIT).await.is_none(),
            "the last slot is not for an organization that holds the others"
        );
        let _two = lane.admit(of(2, 9), Duration::ZERO).await;
        assert!(_two.is_some(), "organization 2 finds a slot at once");
        // Every slot busy. Organization 3 is within its share (0 of 1): it waits, and gets the first slot given
        // back; organization 1, over its share, is refused at once.
        let waiting = tokio::spawn({
            let lane = lane.clone();
            async move { lane.admit(of(3, 7), WAIT).await.is_some() }
        });
        tokio::task::yield_now().await;
        assert!(lane.admit(of(1, 5), WAIT).await.is_none());
        held.pop();
        assert!(waiting.await.unwrap(), "organization 3 got the freed slot");
    }

    #[test]
    fn an_organizations_parked_tasks_are_spread_by_its_attempts_over_its_share() {
        let lane = RetryLane::new(4);
        let second = Duration::from_secs(1);
        // Alone, the organization may expect the 4 slots: 250 ms apart.
        let waits: Vec<u128> = (0..3)
            .map(|_| lane.park(of(1, 1), second).as_millis())
            .collect();
        for (n, wait) in waits.iter().enumerate() {
            let expected = 250 * (n as u128 + 1);
            assert!((expected - 5..=expected).contains(wait), "{waits:?}");
        }
        assert!(
            lane.park(of(2, 2), second).as_millis() >= 245,
            "its own bookings"
        );
        assert_eq!(lane.park(of(3, 3), Duration::from_millis(1)), MIN_PARK);
    }

    #[tokio::test]
    async fn freed_slots_go_round_robin_between_the_organizations_waiting() {
        let lane = RetryLane::new(6);
        let mut held: Vec<LaneSlot> = Vec::new();
        for w in 0..5 {
            held.push(lane.admit(of(9, w), WAIT).await.unwrap());
        }
        // The reserved slot, to an organization with nothing under way.
        held.push(lane.admit(of(8, 0), WAIT).await.unwrap());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (org, webhook) in [(1, 10), (1, 11), (2, 20), (2, 21)] {
            let (lane, tx) = (lane.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = lane.admit(of(org, webhook), WAIT).await;
                let _ = tx.send(org);
                // Keep the slot until the test ends.
                std::future::pending::<()>().await;
                drop(slot);
            });
            tokio::task::yield_now().await;
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            held.pop();
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, [1, 2, 1, 2]);
    }

    #[tokio::test]
    async fn a_task_that_waits_too_long_is_refused_and_leaves_the_queue() {
        let lane = RetryLane::new(1);
        let held = lane.admit(of(1, 1), WAIT).await.unwrap();
        assert!(lane
            .admit(of(2, 2), Duration::from_millis(20))
            .await
            .is_none());
        drop(held);
        assert!(
            lane.admit(of(3, 3), Duration::ZERO).await.is_some(),
            "the slot was not given to the task that left"
        );
    }
}
