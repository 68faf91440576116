//! The API's RabbitMQ connection: opened on first use, reopened after a failure, always confirmed.

use tokio::sync::Mutex;
use webhookd_broker::{ConfirmedPublisher, PublishError, RetryTask, Topology};

/// A lazily (re)connected confirmed publisher.
pub struct Broker {
    amqp_url: String,
    topology: Topology,
    current: Mutex<Option<(lapin::Connection, ConfirmedPublisher)>>,
}

impl Broker {
    /// A broker handle; nothing connects until the first publish.
    pub fn new(amqp_url: String, topology: Topology) -> Self {
        Self {
            amqp_url,
            topology,
            current: Mutex::new(None),
        }
    }

    /// The current publisher, connecting (and declaring the topology) first if needed.
    pub async fn connect(&self) -> Result<ConfirmedPublisher, PublishError> {
        let mut current = self.current.lock().await;
        if let Some((connection, publisher)) = current.as_ref() {
            if connection.status().connected() {
                return Ok(publisher.clone());
            }
        }
        let connection = webhookd_broker::connect(&self.amqp_url, "webhookd-api").await?;
        let publisher = ConfirmedPublisher::open(&connection).await?;
        self.topology.declare(publisher.channel()).await?;
        *current = Some((connection, publisher.clone()));
        Ok(publisher)
    }

    async fn forget(&self) {
        *self.current.lock().await = None;
    }

    /// Publishes an event envelope to the events exchange, as a producer would.
    pub async fn publish_event(
        &self,
        action: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), PublishError> {
        let publisher = self.connect().await?;
        let result = publisher
            .publish_json(
                &self.topology.exchange,
                action,
                body,
                Some(message_id),
                None,
            )
            .await;
        if matches!(result, Err(PublishError::Broker(_))) {
            self.forget().await;
        }
        result
    }

    /// Queues an attempt of a delivery, due now.
    pub async fn publish_retry(&self, task: &RetryTask) -> Result<(), PublishError> {
        let publisher = self.connect().await?;
        let body = webhookd_broker::retry_task::encode(std::slice::from_ref(task));
        let result = publisher
            .publish_json("", &self.topology.retry_queue(), &body, None, None)
            .await;
        if matches!(result, Err(PublishError::Broker(_))) {
            self.forget().await;
        }
        result
    }
}
