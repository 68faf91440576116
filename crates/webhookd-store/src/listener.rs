//! LISTEN for webhook changes, so that workers reload an organization's subscriptions within milliseconds.

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::database::{parse_url, with_keepalives};
use crate::StoreError;

/// The notification channel the schema's triggers notify on; the payload is the organization id.
pub const CHANNEL: &str = "webhookd_webhooks";

/// A dedicated connection listening for webhook changes.
pub struct ChangeListener {
    _client: tokio_postgres::Client,
    changes: mpsc::UnboundedReceiver<i64>,
}

impl ChangeListener {
    /// Connects and starts listening.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let (client, mut connection) = with_keepalives(parse_url(url)?).connect(NoTls).await?;
        let (tx, changes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if let Ok(org) = n.payload().parse::<i64>() {
                            if tx.send(org).is_err() {
                                break;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook change listener lost its connection");
                        break;
                    }
                }
            }
        });
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        Ok(Self {
            _client: client,
            changes,
        })
    }

    /// The next organization whose webhooks changed; `None` once the connection is lost.
    pub async fn next(&mut self) -> Option<i64> {
        self.changes.recv().await
    }

    /// An organization already waiting, without blocking.
    pub fn try_next(&mut self) -> Option<i64> {
        self.changes.try_recv().ok()
    }
}
