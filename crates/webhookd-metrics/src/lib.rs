//! Every Prometheus series webhookd exports, defined once; `/metrics` renders them in the text format.

mod progress;

pub use progress::{Stall, WriterProgress};

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry behind `/metrics`.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(c: C) -> C {
    // Registration fails only for a duplicate name, which would be a bug caught by the tests.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|_| unreachable!("valid metric {name}"));
    register(c)
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).unwrap_or_else(|_| unreachable!("valid metric {name}")))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).unwrap_or_else(|_| unreachable!("valid metric {name}")))
}

/// Messages taken from the work queue, by what became of them: delivered, no_subscribers, duplicate,
/// malformed, unstorable (the database refused to store the event).
pub static EVENTS_CONSUMED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "webhookd_events_consumed_total",
        "Events taken from the work queue, by result.",
        &["result"],
    )
});

/// Delivery attempts by outcome (succeeded, failed, dead) and action.
pub static ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "webhookd_delivery_attempts_total",
        "Delivery attempts, by outcome and action.",
        &["outcome", "action"],
    )
});

/// How long attempts take, by outcome.
pub static ATTEMPT_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "webhookd_attempt_duration_seconds",
        "Duration of delivery attempts.",
    )
    .buckets(vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]);
    register(
        HistogramVec::new(opts, &["outcome"]).unwrap_or_else(|_| unreachable!("valid histogram")),
    )
});

/// Retry tasks put on the delay ladder.
pub static RETRIES_SCHEDULED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "webhookd_retries_scheduled_total",
        "Retries scheduled on the broker's delay ladder.",
    )
});

/// Messages moved to the dead-letter queue.
pub static DEAD_LETTERS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "webhookd_dead_letters_total",
        "Messages moved to the dead-letter queue.",
    )
});

/// Attempts in flight right now.
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "webhookd_deliveries_in_flight",
        "Delivery attempts in flight.",
    )
});

/// Messages being handled right now.
pub static MESSAGES_IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "webhookd_messages_in_flight",
        "Broker messages being handled (not yet acked).",
    )
});

/// Publishes by result: confirmed, failed.
pub static PUBLISHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "webhookd_publishes_total",
        "Publishes to RabbitMQ, by result (confirmed or failed).",
        &["result"],
    )
});

/// Delivery-log rows committed.
pub static LOG_ROWS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "webhookd_log_rows_written_total",
        "Delivery-log rows committed.",
    )
});

/// Rows per delivery-log write.
pub static LOG_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    let opts = HistogramOpts::new("webhookd_log_batch_rows", "Rows per delivery-log write.")
        .buckets(vec![
            1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
        ]);
    register(Histogram::with_opts(opts).unwrap_or_else(|_| unreachable!("valid histogram")))
});

/// Database writes that failed and are being retried.
pub static DB_WRITE_FAILURES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "webhookd_database_write_failures_total",
        "Failed database writes (retried).",
    )
});

/// 1 while the worker holds a broker connection.
pub static BROKER_CONNECTED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "webhookd_broker_connected",
        "1 while connected to RabbitMQ.",
    )
});

/// 1 while the last database operation succeeded.
pub static DATABASE_UP: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("webhookd_database_up", "1 while the database answers."));

/// Webhooks in the subscription cache.
pub static CACHED_WEBHOOKS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "webhookd_cached_webhooks",
        "Webhooks in the worker's subscription cache.",
    )
});

/// How long the subscription cache took to re-read and install webhooks, by `scope`: `all` (start-up, the
/// minutely safety net, after a lost listener) or `organizations` (after a change notification).
pub static SUBSCRIPTION_REFRESH: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new(
        "webhookd_subscription_refresh_seconds",
        "Time to re-read and install webhooks in the subscription cache, by scope.",
    )
    .buckets(vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]);
    register(
        HistogramVec::new(opts, &["scope"]).unwrap_or_else(|_| unreachable!("valid histogram")),
    )
});

/// The writers whose stall is watched (their `writer` label).
pub const WRITERS: [&str; 3] = ["event_claim", "delivery_log", "retry_task"];

/// Seconds each batching writer has held work it has not committed (0 while it keeps up).
pub static WRITER_STALL_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "webhookd_writer_stall_seconds",
        "Seconds a batching writer has held work it has not committed (0 while it keeps up).",
    );
    register(GaugeVec::new(opts, &["writer"]).unwrap_or_else(|_| unreachable!("valid gauge")))
});

/// 1 while a batching writer has held uncommitted work for `WEBHOOKD_STALL_AFTER` or longer.
pub static WRITER_STALLED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let opts = Opts::new(
        "webhookd_writer_stalled",
        "1 while a batching writer has committed nothing for WEBHOOKD_STALL_AFTER or longer.",
    );
    register(IntGaugeVec::new(opts, &["writer"]).unwrap_or_else(|_| unreachable!("valid gauge")))
});

/// Requests a writer isolated from its batch because the database refused them for good.
pub static WRITES_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "webhookd_writes_refused_total",
        "Requests a batching writer isolated because the database refused them for good (permanent errors).",
        &["writer"],
    )
});

/// Due retry tasks put back on the delay ladder because they could not start now, by reason: `fair_share`
/// (their organization held its share of the retry slots while others waited, or none freed up in time) or
/// `webhook_cap` (their webhook had `WEBHOOKD_MAX_CONCURRENT_PER_WEBHOOK` attempts in flight).
pub static RETRY_TASKS_PARKED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "webhookd_retry_tasks_parked_total",
        "Due retry tasks put back on the delay ladder because they could not start now, by reason.",
        &["reason"],
    )
});

/// Retention runs, by result: `done`, `skipped` (another process holds the lock), `failed`.
pub static RETENTION_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "webhookd_retention_runs_total",
        "Retention runs, by result (done, skipped: another process ran it, failed).",
        &["result"],
    )
});

/// What retention removed, by kind: `partitions`, `events`, `idempotency_keys`, `default_rows`.
pub static RETENTION_REMOVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "webhookd_retention_removed_total",
        "What retention removed: delivery-log partitions, events, idempotency keys, rows of the default partition.",
        &["what"],
    )
});

/// Changes to the delivery log's partitions that retention put off to its next run because another
/// transaction held a lock on the log for too long, by step: `adopt_default_rows`, `create_partitions`,
/// `drop_partitions`.
pub static RETENTION_POSTPONED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "webhookd_retention_postponed_total",
        "Retention steps put off to the next run because another transaction held a lock on the delivery log.",
        &["step"],
    )
});

/// When this process last completed a retention run (Unix seconds; 0: never).
pub static RETENTION_LAST_RUN: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "webhookd_retention_last_run_timestamp_seconds",
        "When this process last completed a retention run, in Unix seconds (0: never).",
    )
});

/// Events a delivery-log write stored again because they were missing (lost in a database crash).
pub static EVENTS_RESTORED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "webhookd_events_restored_total",
        "Events a delivery-log write stored again because a database crash had lost their claim.",
    )
});

/// Counts one unit in `gauge` for as long as it lives, so that a task aborted midway still gives it back.
pub struct Held(&'static IntGauge);

impl Held {
    /// Adds one to `gauge` until dropped.
    pub fn new(gauge: &'static IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records one attempt.
pub fn attempt(outcome: &str, action: &str, duration: Duration) {
    ATTEMPTS.with_label_values(&[outcome, action]).inc();
    ATTEMPT_DURATION
        .with_label_values(&[outcome])
        .observe(duration.as_secs_f64());
}

/// Every series, in Prometheus's text format.
pub fn render() -> String {
    // Touch the lazies so that every series shows from the start (a dashboard needs zeroes, not gaps).
    for c in [
        &*RETRIES_SCHEDULED,
        &*DEAD_LETTERS,
        &*LOG_ROWS,
        &*DB_WRITE_FAILURES,
        &*EVENTS_RESTORED,
    ] {
        c.inc_by(0);
    }
    for g in [
        &*IN_FLIGHT,
        &*MESSAGES_IN_FLIGHT,
        &*BROKER_CONNECTED,
        &*DATABASE_UP,
        &*CACHED_WEBHOOKS,
    ] {
        g.add(0);
    }
    for r in ["confirmed", "failed"] {
        PUBLISHES.with_label_values(&[r]).inc_by(0);
    }
    for r in ["done", "skipped", "failed"] {
        RETENTION_RUNS.with_label_values(&[r]).inc_by(0);
    }
    for w in ["partitions", "events", "idempotency_keys", "default_rows"] {
        RETENTION_REMOVED.with_label_values(&[w]).inc_by(0);
    }
    for s in ["adopt_default_rows", "create_partitions", "drop_partitions"] {
        RETENTION_POSTPONED.with_label_values(&[s]).inc_by(0);
    }
    RETENTION_LAST_RUN.add(0);
    for r in ["fair_share", "webhook_cap"] {
        RETRY_TASKS_PARKED.with_label_values(&[r]).inc_by(0);
    }
    for w in WRITERS {
        WRITER_STALL_SECONDS.with_label_values(&[w]).add(0.0);
        WRITER_STALLED.with_label_values(&[w]).add(0);
        WRITES_REFUSED.with_label_values(&[w]).inc_by(0);
    }
    for r in [
        "delivered",
        "no_subscribers",
        "duplicate",
        "malformed",
        "unstorable",
    ] {
        EVENTS_CONSUMED.with_label_values(&[r]).inc_by(0);
    }
    // A labelled series shows once it has a child: one per outcome here. (`webhookd_delivery_attempts_total`
    // is also labelled by action, an open set, so it shows with the first attempt.)
    for o in ["succeeded", "failed", "dead"] {
        ATTEMPT_DURATION.with_label_values(&[o]);
    }
    for scope in ["all", "organizations"] {
        SUBSCRIPTION_REFRESH.with_label_values(&[scope]);
    }
    LazyLock::force(&LOG_BATCH);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_gauge_is_given_back_when_dropped() {
        let before = IN_FLIGHT.get();
        let held = Held::new(&IN_FLIGHT);
        assert_eq!(IN_FLIGHT.get(), before + 1);
        drop(held);
        assert_eq!(IN_FLIGHT.get(), before);
    }

    #[test]
    fn every_series_renders() {
        attempt("succeeded", "TASKS_CREATED", Duration::from_millis(3));
        let text = render();
        for name in [
            "webhookd_events_consumed_total",
            "webhookd_delivery_attempts_total{action=\"TASKS_CREATED\",outcome=\"succeeded\"} 1",
            "webhookd_attempt_duration_seconds_bucket",
            "webhookd_retries_scheduled_total 0",
            "webhookd_dead_letters_total",
            "webhookd_deliveries_in_flight",
            "webhookd_publishes_total{result=\"confirmed\"}",
            "webhookd_broker_connected",
            "webhookd_database_up",
            "webhookd_writer_stall_seconds{writer=\"delivery_log\"} 0",
            "webhookd_writer_stalled{writer=\"event_claim\"} 0",
            "webhookd_writes_refused_total{writer=\"retry_task\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
