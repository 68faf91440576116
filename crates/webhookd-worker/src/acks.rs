//! Coalesced acknowledgements: handlers report finished messages to one task per channel, which settles
//! every finished message below the oldest unfinished one with a single `basic.ack multiple` frame. The
//! broker then handles one frame (one quorum-queue settle command) per batch instead of one per message.
//! A finished message above an unfinished one is held briefly in case the gap closes, then acked alone,
//! so that a slow message never holds the acks, and so the prefetch window, of the others. (Messages
//! rarely finish in order, so under load a part of the acks still goes out one by one.)

use std::collections::BTreeSet;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Channel;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How long a finished message may wait for an older one before it is acked on its own.
const HOLD: Duration = Duration::from_millis(5);

/// What to do with a finished message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done: remove it from the queue.
    Ack,
    /// Not done: put it back for redelivery.
    Requeue,
}

enum Report {
    Received(u64),
    Finished(u64, Settle),
}

/// A handle to the acknowledging task of one channel.
#[derive(Clone)]
pub(crate) struct Acks {
    tx: mpsc::UnboundedSender<Report>,
}

impl Acks {
    /// Starts the task for `channel`; it stops, after settling what it was told, once every handle is gone.
    pub(crate) fn spawn(channel: Channel) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(channel, rx)))
    }

    /// Records that the message `tag` was delivered; call it before the message's handler starts, and
    /// hand the handler what it returns.
    pub(crate) fn received(&self, tag: u64) -> Pending {
        let _ = self.tx.send(Report::Received(tag));
        Pending {
            acks: self.clone(),
            tag,
            settled: false,
        }
    }
}

/// A message being handled. Dropped unsettled (its handler panicked or was aborted), it is requeued, so
/// that it neither holds a prefetch slot nor keeps the acks of the messages after it waiting.
pub(crate) struct Pending {
    acks: Acks,
    tag: u64,
    settled: bool,
}

impl Pending {
    /// Settles the message.
    pub(crate) fn settle(mut self, settle: Settle) {
        self.send(settle);
    }

    fn send(&mut self, settle: Settle) {
        self.settled = true;
        // If the task is gone, so is the channel: the broker redelivers the message.
        let _ = self.acks.tx.send(Report::Finished(self.tag, settle));
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.settled {
            self.send(Settle::Requeue);
        }
    }
}

/// Which finished messages can go out now, and how.
#[derive(Debug, Default)]
struct Ledger {
    unfinished: BTreeSet<u64>,
    held: BTreeSet<u64>,
    held_since: Option<Instant>,
    requeue: Vec<u64>,
}

/// The frames to send, in order: requeues first, so that a multiple ack never covers one of them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Frames {
    requeue: Vec<u64>,
    ack_up_to: Option<u64>,
    ack_each: Vec<u64>,
}

impl Ledger {
    fn record(&mut self, report: Report, now: Instant) {
        match report {
            Report::Received(tag) => {
                self.unfinished.insert(tag);
            }
            Report::Finished(tag, settle) => {
                self.unfinished.remove(&tag);
                match settle {
                    Settle::Ack => {
                        self.held.insert(tag);
                        self.held_since.get_or_insert(now);
                    }
                    Settle::Requeue => self.requeue.push(tag),
                }
            }
        }
    }

    /// The frames due at `now`; with `all`, every finished message goes out (the channel is closing).
    fn frames(&mut self, now: Instant, all: bool) -> Frames {
        let oldest_unfinished = self.unfinished.first().copied().unwrap_or(u64::MAX);
        let above = self.held.split_off(&oldest_unfinished);
        let below = std::mem::replace(&mut self.held, above);
        let mut frames = Frames {
            requeue: std::mem::take(&mut self.requeue),
            ack_up_to: below.last().copied(),
            ack_each: Vec::new(),
        };
        let overdue = self.held_since.is_some_and(|t| now >= t + HOLD);
        if all || overdue {
            frames.ack_each = std::mem::take(&mut self.held).into_iter().collect();
        }
        if self.held.is_empty() {
            self.held_since = None;
        }
        frames
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.held_since.map(|t| t + HOLD)
    }
}

async fn run(channel: Channel, mut rx: mpsc::UnboundedReceiver<Report>) {
    let mut ledger = Ledger::default();
    loop {
        let next = match ledger.next_deadline() {
            Some(deadline) => tokio::select! {
                r = rx.recv() => r.map(Some),
                _ = tokio::time::sleep_until(deadline) => Some(None),
            },
            None => rx.recv().await.map(Some),
        };
        let closing = next.is_none();
        let now = Instant::now();
        if let Some(Some(report)) = next {
            ledger.record(report, now);
            while let Ok(more) = rx.try_recv() {
                ledger.record(more, now);
            }
        }
        if send(&channel, ledger.frames(now, closing)).await.is_err() || closing {
            return;
        }
    }
}

async fn send(channel: &Channel, frames: Frames) -> Result<(), lapin::Error> {
    for tag in frames.requeue {
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        channel.basic_nack(tag, requeue).await?;
    }
    if let Some(tag) = frames.ack_up_to {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await?;
    }
    for tag in frames.ack_each {
        channel
            .basic_ack(tag, BasicAckOptions { multiple: false })
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(received: impl IntoIterator<Item = u64>) -> Ledger {
        let mut l = Ledger::default();
        for tag in received {
            l.record(Report::Received(tag), Instant::now());
        }
        l
    }

    #[test]
    fn a_message_dropped_unsettled_is_requeued_and_a_settled_one_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let acks = Acks { tx };
        drop(acks.received(7));
        acks.received(8).settle(Settle::Ack);
        let reports: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| match r {
                Report::Received(t) => (t, None),
                Report::Finished(t, s) => (t, Some(s)),
            })
            .collect();
        assert_eq!(
            reports,
            [
                (7, None),
                (7, Some(Settle::Requeue)),
                (8, None),
                (8, Some(Settle::Ack))
            ]
        );
    }

    #[test]
    fn finished_messages_below_the_oldest_unfinished_go_in_one_frame() {
        let mut l = ledger(1..=5);
        let now = Instant::now();
        for tag in [2, 1, 3] {
            l.record(Report::Finished(tag, Settle::Ack), now);
        }
        assert_eq!(
            l.frames(now, false),
            Frames {
                ack_up_to: Some(3),
                ..Frames::default()
            }
        );
        assert_eq!(l.frames(now, false), Frames::default());
    }

    #[test]
    fn a_message_above_an_unfinished_one_waits_then_goes_alone() {
        let mut l = ledger(1..=3);
        let now = Instant::now();
        l.record(Report::Finished(3, Settle::Ack), now);
        assert_eq!(l.frames(now, false), Frames::default());
        assert_eq!(l.next_deadline(), Some(now + HOLD));
        assert_eq!(
            l.frames(now + HOLD, false),
            Frames {
                ack_each: vec![3],
                ..Frames::default()
            }
        );
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn the_gap_closing_acks_everything_at_once() {
        let mut l = ledger(1..=3);
        let now = Instant::now();
        l.record(Report::Finished(3, Settle::Ack), now);
        l.record(Report::Finished(2, Settle::Ack), now);
        assert_eq!(l.frames(now, false), Frames::default());
        l.record(Report::Finished(1, Settle::Ack), now);
        assert_eq!(
            l.frames(now, false),
            Frames {
                ack_up_to: Some(3),
                ..Frames::default()
            }
        );
    }

    #[test]
    fn requeues_go_first_and_alone_and_are_not_covered_by_a_multiple_ack() {
        let mut l = ledger(1..=4);
        let now = Instant::now();
        l.record(Report::Finished(1, Settle::Ack), now);
        l.record(Report::Finished(2, Settle::Requeue), now);
        l.record(Report::Finished(3, Settle::Ack), now);
        let frames = l.frames(now, false);
        assert_eq!(
            frames,
            Frames {
                requeue: vec![2],
                ack_up_to: Some(3),
                ack_each: vec![]
            },
            "the requeue frame goes out before the ack that spans its tag"
        );
    }

    #[test]
    fn closing_settles_everything_finished() {
        let mut l = ledger(1..=3);
        let now = Instant::now();
        l.record(Report::Finished(2, Settle::Ack), now);
        l.record(Report::Finished(3, Settle::Ack), now);
        assert_eq!(
            l.frames(now, true),
            Frames {
                ack_each: vec![2, 3],
                ..Frames::default()
            }
        );
    }
}
