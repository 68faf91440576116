//! RabbitMQ for webhookd: the topology, confirmed publishing, and the retry task message.

mod handshake_socket;
pub mod inbound;
pub mod publisher;
pub mod retry_task;
pub mod topology;

use handshake_socket::{AbandonOnDrop, HandshakeSocket};
pub use inbound::{Inbound, QueueKind};
pub use publisher::{ConfirmedPublisher, PublishError};
pub use retry_task::RetryTask;
pub use topology::Topology;

/// The frame size webhookd proposes unless the URL sets `frame_max`.
// lapin keeps 32 frames of read and of write buffer per connection, sized before the handshake, so RabbitMQ's
// default of 128 KiB would cost 8 MiB per connection (measured: the largest single item of the worker's
// heap), while event messages are a few hundred bytes; a larger message is sent in several frames.
pub const FRAME_MAX: u32 = 16 * 1024;

/// AMQP 0-9-1's smallest frame size; a broker refuses a connection that proposes less.
const FRAME_MIN: u32 = 4096;

/// Connects to RabbitMQ at `url` (an `amqp://` URL), naming the connection for the management UI. If the
/// returned future is dropped, or fails, before the handshake is over, the socket is closed (see
/// the `handshake_socket` module): a caller may bound it with a timeout without leaving a connection behind.
pub async fn connect(url: &str, name: &str) -> lapin::Result<lapin::Connection> {
    let props = lapin::ConnectionProperties::default().with_connection_name(name.into());
    let uri =
        parse_url(url).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let socket = HandshakeSocket::new();
    let abandon = AbandonOnDrop::new(&socket);
    let keeper = socket.clone();
    let connection = lapin::Connection::connector(
        uri,
        lapin::runtime::default_runtime()?,
        async move |uri, runtime| {
            use lapin::tcp::AMQPUriTcpExt;
            use std::os::fd::AsFd;
            let stream = uri.connect_async(&runtime).await?;
            let second = match &stream {
                lapin::AsyncTcpStream::Plain(tcp) => tcp.get_ref().as_fd().try_clone_to_owned()?,
                _ => return Err(std::io::Error::other("only plain TCP is built in").into()),
            };
            if !keeper.keep(second.into()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the connect was given up on",
                )
                .into());
            }
            Ok(stream)
        },
        props,
    )
    .await?;
    socket.opened();
    abandon.disarm();
    Ok(connection)
}

/// `url` as [`connect`] uses it: parsed, proposing [`FRAME_MAX`] unless the URL sets `frame_max` (the
/// smaller of the proposal and the broker's limit is used; `frame_max=0` takes the broker's).
pub fn parse_url(url: &str) -> Result<lapin::uri::AMQPUri, String> {
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e: String| format!("invalid AMQP URL: {e}"))?;
    match uri.query.frame_max {
        None => uri.query.frame_max = Some(FRAME_MAX),
        Some(n) if n != 0 && n < FRAME_MIN => {
            return Err(format!(
                "frame_max={n} is below AMQP's minimum of {FRAME_MIN} (0 takes the broker's)"
            ))
        }
        Some(_) => {}
    }
    Ok(uri)
}

pub use lapin;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_small_unless_the_url_says_otherwise() {
        let uri = parse_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(uri.query.frame_max, Some(FRAME_MAX));
        let uri = parse_url("amqp://127.0.0.1:5672/%2f?frame_max=131072").unwrap();
        assert_eq!(uri.query.frame_max, Some(131_072));
        let uri = parse_url("amqp://127.0.0.1:5672/%2f?frame_max=0").unwrap();
        assert_eq!(uri.query.frame_max, Some(0));
    }

    #[test]
    fn a_url_the_broker_would_refuse_is_an_error() {
        for (url, expected) in [
            ("http://127.0.0.1", "invalid AMQP URL"),
            ("amqp://h/%2f?frame_max=16k", "invalid AMQP URL"),
            (
                "amqp://h/%2f?frame_max=100",
                "frame_max=100 is below AMQP's minimum of 4096",
            ),
        ] {
            let err = parse_url(url).unwrap_err();
            assert!(err.starts_with(expected), "{url}: {err}");
        }
    }
}
