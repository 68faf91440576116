//! The API's RabbitMQ connection: opened on first use, reopened after a failure, always confirmed, and never
//! waited on longer than the API's dependency timeout (`WEBHOOKD_API_DEPENDENCY_TIMEOUT`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use webhookd_broker::{ConfirmedPublisher, PublishError, RetryTask, Topology};

/// One open connection and its confirm-mode channel.
struct Session {
    connection: lapin::Connection,
    publisher: ConfirmedPublisher,
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker failed or refused.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The broker did not answer in time; the connection is dropped, the next request opens a new one.
    #[error("RabbitMQ did not {what} within {limit:?}")]
    TimedOut {
        /// What it did not do.
        what: &'static str,
        /// The limit.
        limit: Duration,
    },
}

impl From<lapin::Error> for BrokerError {
    fn from(e: lapin::Error) -> Self {
        BrokerError::Publish(PublishError::Broker(e))
    }
}

/// A lazily (re)connected confirmed publisher.
pub struct Broker {
    amqp_url: String,
    topology: Topology,
    limit: Duration,
    current: Arc<Mutex<Option<Arc<Session>>>>,
}

impl Broker {
    /// A broker handle; nothing connects until the first publish. Connecting (while holding the lock that
    /// makes concurrent requests share one connection) and each confirm take at most `limit`.
    pub fn new(amqp_url: String, topology: Topology, limit: Duration) -> Self {
        Self {
            amqp_url,
            topology,
            limit,
            current: Arc::default(),
        }
    }

    /// The current publisher, connecting (and declaring the topology) first if needed.
    pub async fn connect(&self) -> Result<ConfirmedPublisher, BrokerError> {
        Ok(self.session().await?.publisher.clone())
    }

    /// The current session, or a new one; waiting for the lock counts towards the limit, so a connect that
    /// hangs holds the others back for at most the limit too.
    async fn session(&self) -> Result<Arc<Session>, BrokerError> {
        tokio::time::timeout(self.limit, self.open_or_reuse())
            .await
            .map_err(|_| BrokerError::TimedOut {
                what: "accept a connection",
                limit: self.limit,
            })?
    }

    async fn open_or_reuse(&self) -> Result<Arc<Session>, BrokerError> {
        let mut current = self.current.lock().await;
        if let Some(session) = current.as_ref() {
            if session.connection.status().connected() {
                return Ok(session.clone());
            }
        }
        let connection = webhookd_broker::connect(&self.amqp_url, "webhookd-api").await?;
        let publisher = ConfirmedPublisher::open(&connection).await?;
        self.topology.declare(publisher.channel()).await?;
        let session = Arc::new(Session {
            connection,
            publisher,
        });
        *current = Some(session.clone());
        Ok(session)
    }

    /// Drops `session` (unless it was replaced already) and closes it, in the background: on a connection that
    /// does not answer, even taking the lock or closing could wait, and the request has waited enough.
    fn forget(&self, session: Arc<Session>) {
        let (current, limit) = (self.current.clone(), self.limit);
        tokio::spawn(async move {
            {
                let mut current = current.lock().await;
                if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &session)) {
                    *current = None;
                }
            }
            let close = session.connection.close(200, "forgotten".into());
            let _ = tokio::time::timeout(limit, close).await;
        });
    }

    /// Publishes `body` with confirm; a broker failure or a confirm that does not come within the limit
    /// drops the connection.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        let session = self.session().await?;
        let publish = session
            .publisher
            .publish_json(exchange, routing_key, body, message_id, None);
        match tokio::time::timeout(self.limit, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if matches!(e, PublishError::Broker(_)) {
                    self.forget(session);
                }
                Err(e.into())
            }
            Err(_) => {
                self.forget(session);
                Err(BrokerError::TimedOut {
                    what: "confirm the publish",
                    limit: self.limit,
                })
            }
        }
    }

    /// Publishes an event envelope to the events exchange, as a producer would.
    pub async fn publish_event(
        &self,
        action: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), BrokerError> {
        let exchange = &self.topology.exchange;
        self.publish(exchange, action, body, Some(message_id)).await
    }

    /// Queues attempts of several deliveries, due now, up to `MAX_TASKS_PER_MESSAGE` per message (as the worker
    /// batches its own retries): one confirmed publish per 64 deliveries, not per delivery. Returns how many
    /// were queued when the broker refused one message (the earlier ones stay queued).
    pub async fn publish_retries(
        &self,
        tasks: &[RetryTask],
    ) -> Result<usize, (usize, BrokerError)> {
        let queue = self.topology.retry_queue();
        let mut queued = 0;
        for batch in tasks.chunks(webhookd_broker::retry_task::MAX_TASKS_PER_MESSAGE) {
            let body = webhookd_broker::retry_task::encode(batch);
            self.publish("", &queue, &body, None)
                .await
                .map_err(|e| (queued, e))?;
            queued += batch.len();
        }
        Ok(queued)
    }

    /// Queues an attempt of a delivery, due now.
    pub async fn publish_retry(&self, task: &RetryTask) -> Result<(), BrokerError> {
        let body = webhookd_broker::retry_task::encode(std::slice::from_ref(task));
        let queue = self.topology.retry_queue();
        self.publish("", &queue, &body, None).await
    }
}
