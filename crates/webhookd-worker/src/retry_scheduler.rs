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

use webhookd_metrics::WriterProgress;

use crate::batcher::{BatchLimits, Batcher, Flush, Stopped};

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
    /// Starts scheduling through `publisher` onto the ladder and retry queue of `topology`; `progress` is
    /// the stall signal of the retry-task writer.
    pub(crate) fn spawn(
        publisher: ConfirmedPublisher,
        topology: Topology,
        progress: Arc<WriterProgress>,
    ) -> Self {
        let limits = BatchLimits {
            requests: MAX_REQUESTS,
            bytes: usize::MAX,
            linger: LINGER,
        };
        let publisher = TaskPublisher {
            publisher,
            topology,
        };
        Self {
            tasks: Batcher::spawn(publisher, limits, progress),
        }
    }

    /// Puts `tasks` on the delay ladder (or straight on the retry queue when due) and returns once the
    /// broker has confirmed every one of them. Another handler's tasks in a message that failed do not fail
    /// these.
    pub(crate) async fn schedule(&self, tasks: Vec<RetryTask>) -> Result<(), ScheduleError> {
        if tasks.is_empty() {
            return Ok(());
        }
        match self.tasks.submit(tasks).await? {
            Ok(published) => published.map_err(ScheduleError::Publish),
            // Publishing refuses nothing for good: a failed message is its handlers' to handle.
            Err(refused) => Err(ScheduleError::Publish(Arc::new(PublishError::Nacked)))
                .inspect_err(|_| tracing::warn!(error = %refused.error, "retry tasks refused")),
        }
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
        // A failed publish is the callers' to handle (their messages go back to the queue): retrying on a
        // channel that failed would only stall every handler. Each caller hears of the messages that hold its
        // own tasks only.
        let messages = messages(&self.topology, batch, now_ms());
        let published = futures::future::join_all(messages.iter().map(|m| {
            self.publisher
                .publish_json("", &m.queue, &m.body, None, None)
        }))
        .await;
        let mut results: Vec<Self::Resp> = vec![Ok(()); batch.len()];
        for (message, result) in messages.iter().zip(published) {
            if let Err(e) = result {
                let e = Arc::new(e);
                for &request in &message.requests {
                    results[request] = Err(e.clone());
                }
            }
        }
        Ok(results)
    }
}

/// One retry message: the queue it goes to, its body, and the requests whose tasks it carries.
#[derive(Debug)]
struct Message {
    queue: String,
    body: Vec<u8>,
    requests: Vec<usize>,
}

/// The messages that carry the tasks of `batch` at time `now_ms`, each up to `MAX_TASKS_PER_MESSAGE` tasks
/// that wait on the same queue.
fn messages(topology: &Topology, batch: &[Vec<RetryTask>], now_ms: i64) -> Vec<Message> {
    let mut by_queue: BTreeMap<Option<u32>, Vec<(usize, &RetryTask)>> = BTreeMap::new();
    for (request, tasks) in batch.iter().enumerate() {
        for task in tasks {
            by_queue
                .entry(topology.rung_for(task.remaining(now_ms)))
                .or_default()
                .push((request, task));
        }
    }
    let mut messages = Vec::new();
    for (rung, tasks) in by_queue {
        let queue = match rung {
            Some(rung) => topology.delay_queue(rung),
            None => topology.retry_queue(),
        };
        for chunk in tasks.chunks(MAX_TASKS_PER_MESSAGE) {
            let body: Vec<RetryTask> = chunk.iter().map(|(_, t)| (*t).clone()).collect();
            let mut requests: Vec<usize> = chunk.iter().map(|(r, _)| *r).collect();
            requests.dedup();
            messages.push(Message {
                queue: queue.clone(),
                body: retry_task::encode(&body),
                requests,
            });
        }
    }
    messages
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
            replay: None,
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
        let messages = messages(&topology, &[tasks.clone()], now);
        let summary: Vec<(String, usize)> = messages
            .iter()
            .map(|m| (m.queue.clone(), retry_task::decode(&m.body).unwrap().len()))
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
            .flat_map(|m| retry_task::decode(&m.body).unwrap())
            .collect();
        assert_eq!(all.len(), tasks.len(), "no task is dropped or repeated");
    }

    #[tokio::test]
    async fn a_message_the_broker_refuses_fails_only_the_handlers_whose_tasks_it_held() {
        use crate::test_support::AMQP_URL;
        use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
        let name = format!("whunit_{}", &Uuid::new_v4().simple().to_string()[..12]);
        let topology = Topology::new(format!("{name}.events"), name, Duration::from_secs(60));
        let connection = webhookd_broker::connect(AMQP_URL, "webhookd-unit-test")
            .await
            .unwrap();
        let publisher = ConfirmedPublisher::open(&connection).await.unwrap();
        let channel = publisher.channel().clone();
        topology.declare(&channel).await.unwrap();
        // The queue that 5-second waits go to is gone: a message for it is unroutable.
        let rung = topology.rung_for(Duration::from_secs(5)).unwrap();
        channel
            .queue_delete(
                topology.delay_queue(rung).as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await
            .unwrap();
        let scheduler = RetryScheduler::spawn(
            publisher.clone(),
            topology.clone(),
            WriterProgress::new("retry_task"),
        );
        let now = now_ms();
        let (late, due) = tokio::join!(
            scheduler.schedule(vec![task(1, now + 5_000)]),
            scheduler.schedule(vec![task(2, now)])
        );
        let retry_depth = channel
            .queue_declare(
                topology.retry_queue().as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap()
            .message_count();
        let _ = topology.delete(&channel).await;
        let _ = connection.close(200, "done".into()).await;
        let late = late.unwrap_err().to_string();
        assert!(late.starts_with("no queue is bound"), "{late}");
        assert!(
            due.is_ok(),
            "the other handler's task was confirmed: {due:?}"
        );
        assert_eq!(retry_depth, 1);
    }
}
