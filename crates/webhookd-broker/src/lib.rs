//! RabbitMQ for webhookd: the topology, confirmed publishing, and the retry task message.

pub mod publisher;
pub mod retry_task;
pub mod topology;

pub use publisher::{ConfirmedPublisher, PublishError};
pub use retry_task::RetryTask;
pub use topology::Topology;

/// The largest frame webhookd asks for unless the URL sets `frame_max`. lapin keeps 32 frames of read and
/// of write buffer per connection, so RabbitMQ's default of 128 KiB costs 8 MiB of memory per connection
/// (measured: a quarter of the worker's heap), while event messages are a few hundred bytes; a larger
/// message is sent in several frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// Connects to RabbitMQ at `url` (an `amqp://` URL), naming the connection for the management UI.
pub async fn connect(url: &str, name: &str) -> lapin::Result<lapin::Connection> {
    let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
    let uri =
        amqp_uri(url).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    lapin::Connection::connect_uri(uri, props).await
}

/// `url` parsed, with webhookd's [`FRAME_MAX`] unless the URL sets its own.
fn amqp_uri(url: &str) -> Result<lapin::uri::AMQPUri, String> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e: String| format!("invalid AMQP URL: {e}"))?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}

pub use lapin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_small_unless_the_url_says_otherwise() {
        let uri = amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let uri = amqp_uri("amqp://127.0.0.1:5672/%2f?frame_max=131072").unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
        let err = amqp_uri("http://127.0.0.1").unwrap_err();
        assert!(err.starts_with("invalid AMQP URL"), "{err}");
    }
}
