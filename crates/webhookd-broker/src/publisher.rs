//! Publishing with publisher confirms: a publish returns only once the broker has taken the message.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker connection or channel failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the message (nack), e.g. a full queue.
    #[error("the broker refused the message (nack)")]
    Nacked,
    /// No queue is bound for the routing key, so the broker would have dropped it.
    #[error("no queue is bound to exchange {exchange:?} for routing key {routing_key:?}; is webhookd's topology declared (run `webhookd migrate` or start a worker)?")]
    Unroutable {
        /// The exchange.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
}

/// A channel in confirm mode; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct ConfirmedPublisher {
    channel: Channel,
}

impl ConfirmedPublisher {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// The underlying channel (for declarations).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes a persistent JSON message and waits for the broker's confirm; unroutable is an error.
    pub async fn publish_json(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
        headers: Option<FieldTable>,
    ) -> Result<(), PublishError> {
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        if let Some(headers) = headers {
            props = props.with_headers(headers);
        }
        self.publish(exchange, routing_key, body, props).await
    }

    /// Publishes with the given properties and waits for the broker's confirm; unroutable is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let result = self
            .confirmed(exchange, routing_key, options, body, props)
            .await;
        let label = if result.is_ok() {
            "confirmed"
        } else {
            "failed"
        };
        webhookd_metrics::PUBLISHES
            .with_label_values(&[label])
            .inc();
        result
    }

    async fn confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        options: BasicPublishOptions,
        body: &[u8],
        props: BasicProperties,
    ) -> Result<(), PublishError> {
        let confirm = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), options, body, props)
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }
}

/// A header table with one string header.
pub fn string_header(name: &str, value: &str) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(name.into(), AMQPValue::LongString(value.into()));
    table
}
