//! The ceilings a worker run is measured against, on this machine: the receiver alone under an in-process
//! keep-alive HTTP load generator, and RabbitMQ alone (persistent publishes with confirms, consumed with
//! acks, on a throwaway queue). Both share the machine's cores with the bench itself, as the worker does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection};
use serde_json::{json, Value};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::procstat;
use crate::publish::{envelope, unix_micros, webhook_body};
use crate::receiver::{Behavior, Receiver};
use crate::report::{round, Percentiles};
use crate::sandbox::AMQP_URL;
use crate::BoxError;

/// The receiver under load.
#[derive(Debug, Clone)]
pub struct HttpLimit {
    /// Concurrent requests.
    pub concurrency: usize,
    /// Requests answered 200.
    pub requests: u64,
    /// Time taken.
    pub seconds: f64,
    /// Request → response time, milliseconds.
    pub latency: Option<Percentiles>,
    /// Mean body size sent.
    pub body_bytes: usize,
}

impl HttpLimit {
    /// Requests per second.
    pub fn per_s(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "concurrency": self.concurrency,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "requests_per_s": round(self.per_s(), 1),
            "latency_ms": self.latency.map(Percentiles::to_json),
            "body_bytes": self.body_bytes,
        })
    }
}

/// POSTs ~300-byte bodies to the receiver from `concurrency` keep-alive connections for `secs` seconds.
pub async fn http(secs: f64, concurrency: usize) -> Result<HttpLimit, BoxError> {
    let receiver = Receiver::start(vec![Behavior::Healthy]).await?;
    let result = http_load(&receiver, secs, concurrency).await;
    receiver.stop().await;
    result
}

async fn http_load(
    receiver: &Receiver,
    secs: f64,
    concurrency: usize,
) -> Result<HttpLimit, BoxError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()?;
    let url = receiver.url(0);
    let body_bytes = webhook_body(0, unix_micros()).len();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = JoinSet::new();
    for task in 0..concurrency {
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while Instant::now() < end {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", format!("msg_load_{task}_{i}"))
                    .body(webhook_body(i, unix_micros()))
                    .send()
                    .await?;
                let status = response.status();
                response.bytes().await?;
                if !status.is_success() {
                    return Err(format!("the receiver answered {status}").into());
                }
                latencies.push(sent.elapsed().as_micros() as u64);
                i += 1;
            }
            Ok::<_, BoxError>(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.map_err(|e| format!("load task failed: {e}"))??);
    }
    let seconds = start.elapsed().as_secs_f64();
    let progress = receiver.progress(&[0]);
    if progress.distinct != all.len() as u64 {
        return Err(format!(
            "the receiver counted {} distinct requests, the client {}",
            progress.distinct,
            all.len()
        )
        .into());
    }
    Ok(HttpLimit {
        concurrency,
        requests: all.len() as u64,
        seconds,
        latency: Percentiles::of_micros(all),
        body_bytes,
    })
}

/// RabbitMQ alone on one queue type.
#[derive(Debug, Clone)]
pub struct AmqpLimit {
    /// `quorum` or `classic`.
    pub queue_type: String,
    /// Publishes confirmed within the window.
    pub published: u64,
    /// Messages consumed and acked within the window.
    pub consumed: u64,
    /// The window.
    pub seconds: f64,
    /// Message size.
    pub message_bytes: usize,
}

impl AmqpLimit {
    /// Confirmed publishes per second.
    pub fn publish_per_s(&self) -> f64 {
        self.published as f64 / self.seconds.max(1e-9)
    }

    /// Acked messages per second.
    pub fn consume_per_s(&self) -> f64 {
        self.consumed as f64 / self.seconds.max(1e-9)
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "queue_type": self.queue_type,
            "published": self.published,
            "consumed": self.consumed,
            "seconds": round(self.seconds, 3),
            "publish_per_s": round(self.publish_per_s(), 1),
            "consume_per_s": round(self.consume_per_s(), 1),
            "message_bytes": self.message_bytes,
        })
    }
}

/// Messages published but not yet consumed beyond which publishers wait: the measurement is of a
/// sustained flow (as in the pipeline, every message is published once and consumed once), not of a
/// backlog piling up while publishers starve the consumer.
const MAX_BACKLOG: u64 = 2_000;

/// Publishes persistent messages with confirms (`publishers` channels, `window` unconfirmed each) while
/// one consumer with `prefetch` acks them one by one, for `secs` seconds, on a throwaway queue; the
/// publishers keep at most [`MAX_BACKLOG`] messages ahead of the consumer.
pub async fn amqp(
    queue_type: &str,
    secs: f64,
    publishers: usize,
    window: usize,
    prefetch: u16,
) -> Result<AmqpLimit, BoxError> {
    let connection = webhookd_broker::connect(AMQP_URL, "webhookd-bench-limits")
        .await
        .map_err(|e| format!("connecting to RabbitMQ: {e}"))?;
    let queue = format!(
        "webhookd_bench_{}.limits.{queue_type}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let result = amqp_load(
        &connection,
        &queue,
        queue_type,
        secs,
        publishers,
        window,
        prefetch,
    )
    .await;
    // The load's connection may have been closed under it as its channels closed with confirms and
    // deliveries still in flight (lapin then reports "invalid connection state"): the measurement stands,
    // and the throwaway queue is deleted through a connection of its own.
    let _ = within(CLOSE, "closing the load's connection", async {
        connection.close(200, "bench done".into()).await
    })
    .await;
    let deleted = within(CLEANUP, "deleting the throwaway queue", async {
        let cleanup = webhookd_broker::connect(AMQP_URL, "webhookd-bench-limits-cleanup").await?;
        let channel = cleanup.create_channel().await?;
        let deleted = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = within(CLOSE, "closing the cleanup connection", async {
            cleanup.close(200, "bench done".into()).await
        })
        .await;
        deleted.map(drop).map_err(BoxError::from)
    })
    .await
    .and_then(|deleted| deleted);
    match (result, deleted) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(e)) => Err(format!("deleting queue {queue}: {e}").into()),
        (Err(e), _) => Err(e),
    }
}

async fn amqp_load(
    connection: &Connection,
    queue: &str,
    queue_type: &str,
    secs: f64,
    publishers: usize,
    window: usize,
    prefetch: u16,
) -> Result<AmqpLimit, BoxError> {
    let channel = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;

    let consumer_channel = connection.create_channel().await?;
    consumer_channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = consumer_channel
        .basic_consume(
            queue.into(),
            "webhookd-bench-limits".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumed = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let consuming = {
        let (consumed, stop) = (consumed.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            delivery.acker.ack(BasicAckOptions::default()).await?;
                            consumed.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(Err(e)) => return Err(e),
                        None => return Ok(()),
                    }
                }
            }
        })
    };

    let sent = Arc::new(AtomicU64::new(0));
    let message_bytes = envelope("bench-limits", 1, 0, unix_micros()).len();
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = JoinSet::new();
    for k in 0..publishers.max(1) {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let queue = queue.to_owned();
        let (sent, consumed) = (sent.clone(), consumed.clone());
        tasks.spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            let mut confirmed = 0u64;
            let mut n = 0u64;
            let options = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            while Instant::now() < end {
                while in_flight.len() >= window.max(1) {
                    if let Some(c) = in_flight.next().await {
                        confirmed += settle(c)?;
                    }
                }
                while sent.load(Ordering::Relaxed) >= consumed.load(Ordering::Relaxed) + MAX_BACKLOG
                    && Instant::now() < end
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                let body = envelope(&format!("bench-limits-{k}"), 1, n, unix_micros());
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2);
                let publish =
                    channel.basic_publish("".into(), queue.as_str().into(), options, &body, props);
                in_flight.push(within(CLOSE, "a publish", publish).await??);
                n += 1;
            }
            // Only confirms that arrive within the window count.
            while let Ok(Some(c)) = tokio::time::timeout_at(end.into(), in_flight.next()).await {
                confirmed += settle(c)?;
            }
            let _ = within(CLOSE, "closing a publisher's channel", async {
                channel.close(200, "done".into()).await
            })
            .await;
            Ok::<_, BoxError>(confirmed)
        });
    }
    let mut published = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(n)) => published += n,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("publisher task failed: {e}").into());
            }
        }
    }
    tokio::time::sleep_until(end.into()).await;
    let consumed_in_window = consumed.load(Ordering::Relaxed);
    stop.cancel();
    let stopping = consuming.abort_handle();
    let consumer_result = within(CLOSE, "stopping the consumer", consuming).await;
    let _ = within(CLOSE, "closing the consumer's channel", async {
        consumer_channel.close(200, "done".into()).await
    })
    .await;
    if let Some(e) = first_error {
        return Err(format!("publishing to {queue}: {e}").into());
    }
    match consumer_result {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("consuming from {queue}: {e}").into()),
        Ok(Err(e)) => return Err(format!("consumer task failed: {e}").into()),
        // Stuck in an ack on a connection that is gone: what it counted in the window stands.
        Err(e) => {
            stopping.abort();
            eprintln!("bench: limits: {e}; the {consumed_in_window} messages consumed in the window stand");
        }
    }
    Ok(AmqpLimit {
        queue_type: queue_type.to_owned(),
        published,
        consumed: consumed_in_window,
        seconds: secs,
        message_bytes,
    })
}

/// How long closing a channel or a connection, stopping the consumer, or one publish may take.
const CLOSE: Duration = Duration::from_secs(5);
/// How long deleting a throwaway queue (connecting included) may take.
const CLEANUP: Duration = Duration::from_secs(15);

/// `fut`, or an error naming `what` once `limit` has passed: a lapin future can stay pending for good
/// once its connection is gone (seen: `limits` waited with no connection open after its load connection
/// was closed under it), and the bench must end with a reason instead.
async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> Result<T, BoxError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| format!("{what}: not done within {limit:?}").into())
}

fn settle(confirmation: lapin::Result<Confirmation>) -> Result<u64, BoxError> {
    match confirmation? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(1),
        Confirmation::Ack(Some(_)) => Err("a publish to the throwaway queue was unroutable".into()),
        Confirmation::Nack(_) => Err("the broker refused a publish (nack)".into()),
    }
}

/// RabbitMQ alone at a fixed rate: how long a persistent message takes from the publisher's timestamp to a
/// consumer, with nothing else in between — the floor under the worker's `latency` figures.
#[derive(Debug, Clone)]
pub struct AmqpLatency {
    /// Messages per second offered.
    pub rate: f64,
    /// Messages received.
    pub received: u64,
    /// Publisher's timestamp → consumer, milliseconds.
    pub latency: Option<Percentiles>,
    /// The consumer process's CPU time from its `ready` to its last ack, seconds.
    pub consumer_cpu_s: f64,
    /// The consumer process's context switches over the same span, all its threads.
    pub consumer_switches: procstat::Switches,
}

impl AmqpLatency {
    /// The consumer's CPU seconds per 10,000 messages: the floor under the worker's CPU per 10,000
    /// deliveries at the same rate.
    pub fn cpu_s_per_10k(&self) -> Option<f64> {
        (self.received > 0).then(|| self.consumer_cpu_s * 10_000.0 / self.received as f64)
    }

    /// The consumer's context switches per message: (voluntary, involuntary).
    pub fn switches_per_message(&self) -> Option<(f64, f64)> {
        let n = self.received as f64;
        (self.received > 0).then(|| {
            (
                self.consumer_switches.voluntary as f64 / n,
                self.consumer_switches.involuntary as f64 / n,
            )
        })
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "rate": self.rate,
            "received": self.received,
            "latency_ms": self.latency.map(Percentiles::to_json),
            "consumer_cpu_s": round(self.consumer_cpu_s, 3),
            "consumer_cpu_s_per_10k": self.cpu_s_per_10k().map(|v| round(v, 3)),
            "consumer_switches_per_message": self.switches_per_message().map(|(v, i)| json!({
                "voluntary": round(v, 2),
                "involuntary": round(i, 2),
            })),
        })
    }
}

/// Publishes `rate` persistent messages a second for `secs` seconds (the bench's publisher, the workers'
/// message size) through a throwaway fanout exchange to a throwaway quorum queue, as the worker's work
/// queue is, and times each from its timestamp to its arrival at one consumer (prefetch 256, acks). The
/// consumer runs in a child process (`webhookd-bench floor-consumer`, see [`crate::floor_consumer`]) whose
/// CPU time and context switches are measured as the worker's are.
pub async fn amqp_latency(rate: f64, secs: f64) -> Result<AmqpLatency, BoxError> {
    let connection = webhookd_broker::connect(AMQP_URL, "webhookd-bench-latency-floor")
        .await
        .map_err(|e| format!("connecting to RabbitMQ: {e}"))?;
    let name = format!(
        "webhookd_bench_{}.latency_floor",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let result = latency_load(&connection, &name, rate, secs).await;
    let deleted = within(
        CLEANUP,
        "deleting the throwaway queue and exchange",
        async {
            let channel = connection.create_channel().await?;
            channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await?;
            channel
                .exchange_delete(name.as_str().into(), Default::default())
                .await?;
            Ok::<_, BoxError>(())
        },
    )
    .await
    .and_then(|deleted| deleted);
    let _ = within(CLOSE, "closing the connection", async {
        connection.close(200, "bench done".into()).await
    })
    .await;
    match (result, deleted) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(e)) => Err(format!("deleting queue and exchange {name}: {e}").into()),
        (Err(e), _) => Err(e),
    }
}

async fn latency_load(
    connection: &Connection,
    name: &str,
    rate: f64,
    secs: f64,
) -> Result<AmqpLatency, BoxError> {
    let channel = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .exchange_declare(
            name.into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    let events = (rate * secs).round().max(1.0) as u64;
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let mut child = Command::new(exe)
        .arg("floor-consumer")
        .arg("--queue")
        .arg(name)
        .arg("--count")
        .arg(events.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("starting the latency floor's consumer process: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the latency floor's consumer has no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = within(
        Duration::from_secs(20),
        "the latency floor's consumer registering",
        lines.next_line(),
    )
    .await??;
    if ready.as_deref() != Some(crate::floor_consumer::READY) {
        let status = child.wait().await;
        return Err(format!(
            "the latency floor's consumer did not start (it said {ready:?}, and ended: {status:?})"
        )
        .into());
    }
    let plan = crate::publish::Plan {
        exchange: name.to_owned(),
        tag: name.to_owned(),
        organization: 1,
        events,
        rate: Some(rate),
        publishers: 1,
        window: 256,
    };
    crate::publish::publish(connection, &plan).await?;
    let line = within(
        Duration::from_secs(30),
        "the latency floor's consumer getting every message",
        lines.next_line(),
    )
    .await??
    .ok_or("the latency floor's consumer ended without its figures")?;
    let status = within(CLOSE, "the latency floor's consumer exiting", child.wait()).await??;
    if !status.success() {
        return Err(format!("the latency floor's consumer failed: {status}").into());
    }
    let figures = FloorFigures::parse(&line).ok_or_else(|| {
        format!("the latency floor's consumer's figures are not as expected: {line:.200}")
    })?;
    Ok(AmqpLatency {
        rate,
        received: figures.latencies_us.len() as u64,
        latency: Percentiles::of_micros(figures.latencies_us),
        consumer_cpu_s: figures.cpu_s,
        consumer_switches: figures.switches,
    })
}

/// What `webhookd-bench floor-consumer` prints when done.
#[derive(Debug, PartialEq)]
struct FloorFigures {
    latencies_us: Vec<u64>,
    cpu_s: f64,
    switches: procstat::Switches,
}

impl FloorFigures {
    fn parse(line: &str) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        let latencies_us = v["latencies_us"]
            .as_array()?
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()?;
        Some(FloorFigures {
            latencies_us,
            cpu_s: v["cpu_s"].as_f64()?,
            switches: procstat::Switches {
                voluntary: v["voluntary"].as_u64()?,
                involuntary: v["involuntary"].as_u64()?,
            },
        })
    }
}

/// The `sent_at_us` stamp of a bench envelope.
pub fn sent_at_us(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"sent_at_us\":";
    let at = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: &[u8] = &body[at..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_consumers_figures_are_read_back() {
        let line = r#"{"latencies_us":[1200,900],"cpu_s":0.25,"voluntary":7,"involuntary":3}"#;
        assert_eq!(
            FloorFigures::parse(line),
            Some(FloorFigures {
                latencies_us: vec![1200, 900],
                cpu_s: 0.25,
                switches: procstat::Switches {
                    voluntary: 7,
                    involuntary: 3
                },
            })
        );
        assert_eq!(
            FloorFigures::parse(r#"{"latencies_us":[1],"cpu_s":0.1}"#),
            None
        );
        assert_eq!(FloorFigures::parse("ready"), None);
    }

    #[test]
    fn the_stamp_is_read_from_an_envelope() {
        let body = envelope("bench-x", 1, 3, 1_700_000_000_123_456);
        assert_eq!(sent_at_us(&body), Some(1_700_000_000_123_456));
        assert_eq!(sent_at_us(b"{}"), None);
    }

    #[tokio::test]
    async fn a_broker_call_that_never_answers_ends_with_what_it_was() {
        let limit = Duration::from_millis(20);
        let stuck = within(
            limit,
            "closing the load's connection",
            std::future::pending::<()>(),
        );
        let error = stuck.await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "closing the load's connection: not done within 20ms"
        );
        assert_eq!(within(CLOSE, "a publish", async { 7 }).await.unwrap(), 7);
    }
}
