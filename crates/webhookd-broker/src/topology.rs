//! The RabbitMQ topology: names, arguments and declaration of every exchange and queue webhookd uses.
//!
//! ```text
//! producers ──▶ <exchange> (topic) ──#──▶ <prefix>.work ──▶ worker
//!                                           │ delivery limit exceeded
//!                                           ▼
//!                                        <prefix>.dead   ◀── malformed messages (reason in a header)
//! worker ──retry task──▶ <prefix>.delay.<ms> (TTL) ──expires──▶ <prefix>.retry ──▶ worker
//! ```
//! A retry waits in the broker, never in a worker: the ladder of delay queues has TTLs of 50 ms × 2^k; a
//! task goes to the longest step that fits its remaining wait and comes back through `<prefix>.retry`, where
//! the worker either sends it (due) or moves it down the ladder. Every queue is a quorum queue.

use std::time::Duration;

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

/// The shortest rung of the delay ladder; retry times are accurate to this.
pub const LADDER_STEP: Duration = Duration::from_millis(50);
/// The most rungs: RabbitMQ refuses a queue TTL above 2^32 − 1 ms, and 50 ms × 2^26 is the last that fits.
/// Longer waits take the top rung more than once.
pub const MAX_RUNGS: u32 = 27;
/// Redeliveries of one message after which the broker dead-letters it (a message that keeps crashing workers).
pub const DELIVERY_LIMIT: i64 = 20;

/// The names of webhookd's exchanges and queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The topic exchange producers publish to (routing key = action).
    pub exchange: String,
    /// Prefix of every queue name.
    pub prefix: String,
    /// Number of rungs in the delay ladder.
    pub ladder_rungs: u32,
}

impl Topology {
    /// The topology for `exchange` and queue `prefix`, with a ladder long enough for `longest_wait`.
    pub fn new(
        exchange: impl Into<String>,
        prefix: impl Into<String>,
        longest_wait: Duration,
    ) -> Self {
        let mut rungs = 1;
        while LADDER_STEP.saturating_mul(1 << rungs) <= longest_wait && rungs < MAX_RUNGS {
            rungs += 1;
        }
        Self {
            exchange: exchange.into(),
            prefix: prefix.into(),
            ladder_rungs: rungs,
        }
    }

    /// The queue workers consume events from.
    pub fn work_queue(&self) -> String {
        format!("{}.work", self.prefix)
    }

    /// The queue retry tasks come back to when their wait is over.
    pub fn retry_queue(&self) -> String {
        format!("{}.retry", self.prefix)
    }

    /// The dead-letter queue: malformed messages, and messages that exceeded the delivery limit.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// The exchange the work queue dead-letters to.
    pub fn dead_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// The delay queue of rung `rung` (a TTL of 50 ms × 2^rung).
    pub fn delay_queue(&self, rung: u32) -> String {
        format!("{}.delay.{}", self.prefix, rung_ttl(rung).as_millis())
    }

    /// The rung a task that must still wait `remaining` goes to, or `None` if it is due now.
    pub fn rung_for(&self, remaining: Duration) -> Option<u32> {
        if remaining < LADDER_STEP {
            return None;
        }
        let units = remaining.as_millis() / LADDER_STEP.as_millis();
        let rung = (127 - units.leading_zeros()).min(self.ladder_rungs - 1);
        Some(rung)
    }

    /// Declares every exchange, queue and binding (idempotent; safe from many processes at once).
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_exchange().as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            )
            .await?;

        declare_queue(channel, &self.dead_queue(), quorum()).await?;
        channel
            .queue_bind(
                self.dead_queue().as_str().into(),
                self.dead_exchange().as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut work = dead_lettering(quorum(), &self.dead_exchange(), None);
        work.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        declare_queue(channel, &self.work_queue(), work.clone()).await?;
        channel
            .queue_bind(
                self.work_queue().as_str().into(),
                self.exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        declare_queue(channel, &self.retry_queue(), work).await?;

        for rung in 0..self.ladder_rungs {
            let mut args = dead_lettering(quorum(), "", Some(&self.retry_queue()));
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(rung_ttl(rung).as_millis() as i64),
            );
            declare_queue(channel, &self.delay_queue(rung), args).await?;
        }
        Ok(())
    }

    /// Deletes every queue and exchange (used by tests and benchmarks that made their own topology).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        let mut queues = vec![self.work_queue(), self.retry_queue(), self.dead_queue()];
        queues.extend((0..self.ladder_rungs).map(|r| self.delay_queue(r)));
        for q in queues {
            channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        for x in [self.exchange.clone(), self.dead_exchange()] {
            channel
                .exchange_delete(x.as_str().into(), Default::default())
                .await?;
        }
        Ok(())
    }
}

fn rung_ttl(rung: u32) -> Duration {
    LADDER_STEP.saturating_mul(1 << rung)
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// At-least-once dead-lettering (RabbitMQ ≥ 3.10): the broker keeps a message until the target confirms it.
fn dead_lettering(mut args: FieldTable, exchange: &str, routing_key: Option<&str>) -> FieldTable {
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(exchange.into()),
    );
    if let Some(key) = routing_key {
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(key.into()),
        );
    }
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

async fn declare_queue(channel: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(ShortString::from(name), options, args)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_is_as_long_as_the_longest_wait_needs() {
        let t = Topology::new("x", "p", Duration::from_secs(86_400));
        assert_eq!(t.ladder_rungs, 21);
        assert_eq!(t.delay_queue(0), "p.delay.50");
        assert_eq!(t.delay_queue(20), "p.delay.52428800");
        let short = Topology::new("x", "p", Duration::from_millis(960));
        assert_eq!(short.ladder_rungs, 5);
        let years = Topology::new("x", "p", Duration::from_secs(10 * 365 * 86_400));
        assert_eq!(years.ladder_rungs, MAX_RUNGS);
        assert!(rung_ttl(MAX_RUNGS - 1).as_millis() <= u32::MAX as u128);
    }

    #[test]
    fn a_wait_takes_the_longest_rung_that_fits() {
        let t = Topology::new("x", "p", Duration::from_secs(10));
        assert_eq!(t.rung_for(Duration::from_millis(49)), None);
        assert_eq!(t.rung_for(Duration::from_millis(50)), Some(0));
        assert_eq!(t.rung_for(Duration::from_millis(99)), Some(0));
        assert_eq!(t.rung_for(Duration::from_millis(100)), Some(1));
        assert_eq!(t.rung_for(Duration::from_millis(5000)), Some(6));
        assert_eq!(
            t.rung_for(Duration::from_secs(3600)),
            Some(t.ladder_rungs - 1)
        );
    }
}
