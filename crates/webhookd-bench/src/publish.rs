//! The producer side: events published through webhookd's AMQP contract (topic exchange, routing key =
//! action, persistent, `mandatory`, publisher confirms), from several channels with many unconfirmed
//! publishes in flight on each, so that publishing is not what limits a run.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use lapin::{Confirmation, PublisherConfirm};
use tokio::task::JoinSet;

use crate::report::Percentiles;
use crate::BoxError;

/// The action of every benchmark event: organization-only, so the whole `project` object is the payload.
pub const ACTION: &str = "PROJECT_DELETED";

/// Filler that brings a delivered body to about 300 bytes.
const FILLER: &str = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \
                      incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud \
                      exercitation";

/// What to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The exchange.
    pub exchange: String,
    /// Prefix of the event ids (unique per run and stream).
    pub tag: String,
    /// The organization of every event.
    pub organization: i64,
    /// Number of events.
    pub events: u64,
    /// Events per second, or `None` for as fast as the broker confirms.
    pub rate: Option<f64>,
    /// Channels publishing in parallel.
    pub publishers: usize,
    /// Unconfirmed publishes in flight per channel.
    pub window: usize,
}

/// How publishing went.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Events confirmed.
    pub events: u64,
    /// From the first publish to the last confirm.
    pub seconds: f64,
    /// At a fixed rate: how late each publish left against its schedule, milliseconds (the publisher's own
    /// lag, which the latency from its timestamps does not include).
    pub lag: Option<Percentiles>,
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Event `n` of run `tag` for `organization` as an envelope, stamped with the time of publishing. The
/// worker sends the organization's webhooks `{"action": "PROJECT_DELETED", "project": {...}}`, about 300
/// bytes.
pub fn envelope(tag: &str, organization: i64, n: u64, sent_at_us: u64) -> Vec<u8> {
    format!(
        r#"{{"version":1,"id":"{tag}-{n}","organization":{organization},"action":"{ACTION}","project":null,"payload":{{"project":{{"id":{n},"sent_at_us":{sent_at_us},"title":"Benchmark project {n}","description":"{FILLER}"}}}}}}"#
    )
    .into_bytes()
}

/// The body a webhook receives for event `n` (what the `limits` load generator sends).
pub fn webhook_body(n: u64, sent_at_us: u64) -> Vec<u8> {
    format!(
        r#"{{"action": "{ACTION}", "project": {{"id": {n}, "sent_at_us": {sent_at_us}, "title": "Benchmark project {n}", "description": "{FILLER}"}}}}"#
    )
    .into_bytes()
}

/// Publishes `plan.events` events and waits for every confirm.
pub async fn publish(connection: &Connection, plan: &Plan) -> Result<Published, BoxError> {
    let publishers = plan.publishers.max(1);
    let mut channels = Vec::with_capacity(publishers);
    for _ in 0..publishers {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for (k, channel) in channels.into_iter().enumerate() {
        let plan = plan.clone();
        tasks.spawn(async move {
            publish_share(channel, plan, k as u64, publishers as u64, start).await
        });
    }
    let mut events = 0;
    let mut lags = Vec::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((n, lag))) => {
                events += n;
                lags.extend(lag);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("publisher task failed: {e}").into());
            }
        }
    }
    if let Some(e) = first_error {
        return Err(format!("publishing failed: {e}").into());
    }
    Ok(Published {
        events,
        seconds: start.elapsed().as_secs_f64(),
        lag: Percentiles::of_micros(lags),
    })
}

/// Publishes events `k, k + step, k + 2·step, …` on one channel; returns how many were confirmed and, at a
/// fixed rate, how late each left, microseconds.
async fn publish_share(
    channel: Channel,
    plan: Plan,
    k: u64,
    step: u64,
    start: Instant,
) -> Result<(u64, Vec<u64>), BoxError> {
    let mut lag_us = Vec::new();
    let options = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let mut in_flight: FuturesUnordered<PublisherConfirm> = FuturesUnordered::new();
    let mut confirmed = 0u64;
    let mut n = k;
    while n < plan.events {
        if let Some(rate) = plan.rate {
            let due = start + Duration::from_secs_f64(n as f64 / rate);
            // Collect confirms while waiting for the event's turn.
            while Instant::now() < due {
                tokio::select! {
                    _ = tokio::time::sleep_until(due.into()) => {}
                    Some(c) = in_flight.next(), if !in_flight.is_empty() => {
                        check(c)?;
                        confirmed += 1;
                    }
                }
            }
            lag_us.push(due.elapsed().as_micros() as u64);
        }
        while in_flight.len() >= plan.window.max(1) {
            if let Some(c) = in_flight.next().await {
                check(c)?;
                confirmed += 1;
            }
        }
        let id = format!("{}-{n}", plan.tag);
        let body = envelope(&plan.tag, plan.organization, n, unix_micros());
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into());
        let confirm = channel
            .basic_publish(
                plan.exchange.as_str().into(),
                ACTION.into(),
                options,
                &body,
                props,
            )
            .await?;
        in_flight.push(confirm);
        n += step;
    }
    while let Some(c) = in_flight.next().await {
        check(c)?;
        confirmed += 1;
    }
    let _ = channel.close(200, "done".into()).await;
    Ok((confirmed, lag_us))
}

fn check(confirmation: lapin::Result<Confirmation>) -> Result<(), BoxError> {
    match confirmation? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => {
            Err("a publish was unroutable: no queue is bound to the bench exchange".into())
        }
        Confirmation::Nack(_) => Err("the broker refused a publish (nack)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_is_a_valid_event_with_a_timestamp() {
        let body = envelope("bench-x", 2, 7, 1_700_000_000_000_000);
        let event = webhookd_core::Event::parse(&body, &webhookd_core::Catalog::builtin()).unwrap();
        assert_eq!(event.action, ACTION);
        assert_eq!(event.organization, 2);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], "bench-x-7");
        assert_eq!(
            v["payload"]["project"]["sent_at_us"],
            1_700_000_000_000_000u64
        );
    }

    #[test]
    fn the_worker_sends_the_body_the_load_generator_imitates() {
        let event = envelope("bench-x", 1, 7, 1_700_000_000_000_000);
        let event =
            webhookd_core::Event::parse(&event, &webhookd_core::Catalog::builtin()).unwrap();
        let catalog = webhookd_core::Catalog::builtin();
        let spec = catalog.get(ACTION).unwrap();
        let built = webhookd_core::body::build(&event, spec, 5000);
        assert_eq!(built.chunks, vec![webhook_body(7, 1_700_000_000_000_000)]);
        let len = built.chunks[0].len();
        assert!(
            (280..=320).contains(&len),
            "a delivered body is {len} bytes"
        );
    }
}
