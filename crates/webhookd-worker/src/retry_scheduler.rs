//! Scheduling retry tasks: the tasks that concurrent handlers schedule while one publish is being confirmed
//! go out together, grouped by the delay queue each one needs, as a few messages of up to
//! `MAX_TASKS_PER_MESSAGE` tasks. Deferring a slow webhook's deliveries then costs the broker one message
//! per batch, not one per event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use webhookd_broker::retry_task::{self, now_ms, MAX_TASKS_PER_MESSAGE};
use webhookd_broker::{ConfirmedPublisher, PublishError, RetryTask, Topology};
use webhookd_store::StoreError;

use crate::batcher::{Batcher, Flush, Stopped};

/// Requests (each one handler's tasks) taken into one publish at most.
const MAX_REQUESTS: usize = 1000;
/// How long a publish waits for more tasks: its callers also wait for their log write, which takes as
/// long, so the wait costs little latency and makes the messages fuller.
const LINGER: Duration = Duration::from_millis(5);

/// Why scheduled tasks were not confirmed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    /// The broker did not confirm a message holding some of them.
    #[error(transparent)]
    Publish(Arc<PublishError>),
    /// The scheduler has stopped (the broker session is ending).
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

/// Hands retry tasks to the broker, batched; cheap to clone.
#[derive(Clone)]
pub(crate) struct RetryScheduler {
    tasks: Batcher<TaskPublisher>,
}

impl RetryScheduler {
    /// Starts scheduling through `publisher` onto the ladder and retry queue of `topology`.
    pub(crate) fn spawn(publisher: ConfirmedPublisher, topology: Topology) -> Self {
        let tasks = Batcher::spawn_lingering(
            "retry task",
            TaskPublisher {
                publisher,
                topology,
            },
            MAX_REQUESTS,
            LINGER,
        );
        Self { tasks }
    }

    /// Puts `tasks` on the delay ladder (or straight on the retry queue when due) and returns once the
    /// broker has confirmed every one of them.
    pub(crate) async fn schedule(&self, tasks: Vec<RetryTask>) -> Result<(), ScheduleError> {
        if tasks.is_empty() {
            return Ok(());
        }
        self.tasks
            .submit(tasks)
            .await?
            .map_err(ScheduleError::Publish)
    }
}

struct TaskPublisher {
    publisher: ConfirmedPublisher,
    topology: Topology,
}

impl Flush for TaskPublisher {
    type Req = Vec<RetryTask>;
    type Resp = Result<(), Arc<PublishError>>;

    async fn flush(
        &self,
        batch: &[Vec<RetryTask>],
        _: Uuid,
    ) -> Result<Vec<Self::Resp>, StoreError> {
        // A failed publish is the caller's to handle (its message goes back to the queue): retrying on a
        // channel that failed would only stall every handler.
        let messages = messages(&self.topology, batch.iter().flatten(), now_ms());
        let published = futures::future::try_join_all(
            messages
                .iter()
                .map(|(queue, body)| self.publisher.publish_json("", queue, body, None, None)),
        )
        .await
        .map(drop)
        .map_err(Arc::new);
        Ok(vec![published; batch.len()])
    }
}

/// The messages that carry `tasks` at time `now_ms`: (queue, body), each body up to
/// `MAX_TASKS_PER_MESSAGE` tasks that wait on the same queue.
fn messages<'a>(
    topology: &Topology,
    tasks: impl Iterator<Item = &'a RetryTask>,
    now_ms: i64,
) -> Vec<(String, Vec<u8>)> {
    let mut by_queue: BTreeMap<Option<u32>, Vec<RetryTask>> = BTreeMap::new();
    for task in tasks {
        by_queue
            .entry(topology.rung_for(task.remaining(now_ms)))
            .or_default()
            .push(task.clone());
    }
    by_queue
        .into_iter()
        .flat_map(|(rung, tasks)| {
            let queue = match rung {
                Some(rung) => topology.delay_queue(rung),
                None => topology.retry_queue(),
            };
            tasks
                .chunks(MAX_TASKS_PER_MESSAGE)
                .map(|chunk| (queue.clone(), retry_task::encode(chunk)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(webhook_id: i64, due_at_ms: i64) -> RetryTask {
        RetryTask {
            event_id: Uuid::nil(),
            webhook_id,
            chunk: 0,
            attempt: 2,
            due_at_ms,
        }
    }

    #[test]
    fn tasks_share_messages_by_the_queue_they_wait_on() {
        let topology = Topology::new("x", "p", Duration::from_secs(3600));
        let now = 1_000_000;
        let due_now = MAX_TASKS_PER_MESSAGE as i64 + 4;
        let mut tasks: Vec<RetryTask> = (0..due_now).map(|w| task(w, now)).collect();
        tasks.push(task(100, now + 5_000));
        tasks.push(task(101, now + 5_100));
        tasks.push(task(102, now - 10));
        let messages = messages(&topology, tasks.iter(), now);
        let summary: Vec<(String, usize)> = messages
            .iter()
            .map(|(q, body)| (q.clone(), retry_task::decode(body).unwrap().len()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("p.retry".to_owned(), MAX_TASKS_PER_MESSAGE),
                ("p.retry".to_owned(), 5),
                ("p.delay.3200".to_owned(), 2),
            ]
        );
        let all: Vec<RetryTask> = messages
            .iter()
            .flat_map(|(_, body)| retry_task::decode(body).unwrap())
            .collect();
        assert_eq!(all.len(), tasks.len(), "no task is dropped or repeated");
    }
}
