//! RabbitMQ for webhookd: the topology, confirmed publishing, and the retry task message.

pub mod publisher;
pub mod retry_task;
pub mod topology;

pub use publisher::{ConfirmedPublisher, PublishError};
pub use retry_task::RetryTask;
pub use topology::Topology;

/// Connects to RabbitMQ at `url` (an `amqp://` URL), naming the connection for the management UI.
pub async fn connect(url: &str, name: &str) -> lapin::Result<lapin::Connection> {
    let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
    lapin::Connection::connect(url, props).await
}

pub use lapin;
