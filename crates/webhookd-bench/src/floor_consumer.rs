//! `webhookd-bench floor-consumer`: the consumer of `latency`'s "RabbitMQ alone" run, in a process of its
//! own, so that what consuming and acking costs through lapin, with nothing else to do, is measured as the
//! worker is: CPU time and context switches from `/proc`, per message. It is the floor under the worker's
//! CPU at a fixed rate, as its latency is the floor under the worker's latency.
//!
//! The protocol with the bench, on stdout: one line `ready` once the consumer is registered (the bench
//! publishes only then), then one JSON line when `count` messages have been consumed and acked:
//! `{"latencies_us": [...], "cpu_s": f64, "voluntary": u64, "involuntary": u64}`. The connection is made as
//! the worker makes its own (`webhookd_broker::connect`), on a runtime built as the worker's is (tokio's
//! default: a thread per core, or `TOKIO_WORKER_THREADS`), with prefetch 256 and manual acks, sent as the
//! worker's are: an ack waits up to 5 ms (the worker's delivery-log linger) for later ones to share its
//! frame (`multiple`). So the difference between the two is what the worker does with an event: the
//! claim, the POST, the delivery log.

use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use serde_json::json;
use tokio::time::Instant;

use crate::procstat;
use crate::publish::unix_micros;
use crate::sandbox::AMQP_URL;
use crate::BoxError;

/// The consumer's tag and connection name.
const NAME: &str = "webhookd-bench-latency-floor";

/// How long an ack may wait for the acks of later messages to go in the same frame: the worker's, whose
/// acks follow its delivery-log writes, which wait up to 5 ms for more rows.
const ACK_LINGER: Duration = Duration::from_millis(5);

/// The line that tells the bench the consumer is registered.
pub const READY: &str = "ready";

/// Consumes and acks `count` messages from `queue`, then prints what they cost (see the module's docs).
pub async fn run(queue: &str, count: u64) -> Result<(), BoxError> {
    let connection = webhookd_broker::connect(AMQP_URL, NAME)
        .await
        .map_err(|e| format!("connecting to RabbitMQ: {e}"))?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(256, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            NAME.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| format!("consuming from {queue}: {e}"))?;
    let pid = std::process::id();
    let cpu_at_start =
        procstat::cpu_seconds(pid).ok_or("cannot read this process's CPU time from /proc")?;
    let switches_at_start = procstat::context_switches(pid)
        .ok_or("cannot read this process's context switches from /proc")?;
    say(READY)?;
    let mut latencies = Vec::with_capacity(usize::try_from(count.min(1 << 20)).unwrap_or(0));
    let mut consumed = 0;
    // The newest tag not acked yet, and when the ack that covers it is due.
    let mut unacked: Option<(u64, Instant)> = None;
    while consumed < count || unacked.is_some() {
        let due = unacked.map(|(_, due)| due);
        tokio::select! {
            next = consumer.next(), if consumed < count => {
                let delivery = next.ok_or("the broker cancelled the consumer")??;
                consumed += 1;
                if let Some(sent) = crate::limits::sent_at_us(&delivery.data) {
                    latencies.push(unix_micros().saturating_sub(sent));
                }
                let due = due.unwrap_or_else(|| Instant::now() + ACK_LINGER);
                unacked = Some((delivery.delivery_tag, due));
            }
            () = sleep_until_some(due) => {
                if let Some((tag, _)) = unacked.take() {
                    channel
                        .basic_ack(tag, BasicAckOptions { multiple: true })
                        .await?;
                }
            }
        }
    }
    let cpu_s = procstat::cpu_seconds(pid).ok_or("cannot read this process's CPU time")?;
    let switches = procstat::context_switches(pid)
        .ok_or("cannot read this process's context switches")?
        .since(switches_at_start);
    say(&json!({
        "latencies_us": latencies,
        "cpu_s": (cpu_s - cpu_at_start).max(0.0),
        "voluntary": switches.voluntary,
        "involuntary": switches.involuntary,
    })
    .to_string())?;
    let _ = connection.close(200, "bench done".into()).await;
    Ok(())
}

/// Sleeps until `due`, or for ever without one.
async fn sleep_until_some(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

fn say(line: &str) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
