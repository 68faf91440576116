//! The scenarios, at two scales, and how each is reported.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::limits;
use crate::receiver::Behavior;
use crate::report::{num, round, Table};
use crate::world::{self, RunResult, RunSpec};
use crate::BoxError;

/// The sizes of every scenario.
#[derive(Debug, Clone)]
pub struct Scale {
    /// `tiny` or `full`.
    pub name: &'static str,
    /// Events of `throughput` (one webhook).
    pub throughput_events: u64,
    /// Rates of `latency`, events per second.
    pub latency_rates: Vec<f64>,
    /// Length of each `latency` run.
    pub latency_secs: f64,
    /// Events of `fanout`.
    pub fanout_events: u64,
    /// Webhooks of `fanout`.
    pub fanout_hooks: usize,
    /// Events of each `slow-endpoint` run (ten webhooks).
    pub slow_events: u64,
    /// Times `slow-endpoint` runs each of its two configurations, alternately.
    pub slow_pairs: usize,
    /// Events of `failing-endpoint` (one webhook).
    pub failing_events: u64,
    /// Length of each `limits` measurement.
    pub limits_secs: f64,
    /// Concurrent requests of the HTTP load generator.
    pub http_concurrency: usize,
    /// Publishing channels.
    pub publishers: usize,
    /// Unconfirmed publishes per channel.
    pub window: usize,
}

impl Scale {
    /// The figures.
    pub fn full() -> Self {
        Self {
            name: "full",
            throughput_events: 50_000,
            latency_rates: vec![500.0, 2000.0],
            latency_secs: 20.0,
            fanout_events: 1_000,
            fanout_hooks: 100,
            slow_events: 20_000,
            slow_pairs: 1,
            failing_events: 10_000,
            limits_secs: 5.0,
            http_concurrency: 64,
            publishers: 2,
            window: 500,
        }
    }

    /// Seconds per scenario, for tests.
    pub fn tiny() -> Self {
        Self {
            name: "tiny",
            throughput_events: 500,
            latency_rates: vec![100.0, 200.0],
            latency_secs: 2.0,
            fanout_events: 20,
            fanout_hooks: 10,
            slow_events: 50,
            slow_pairs: 1,
            failing_events: 200,
            limits_secs: 1.0,
            http_concurrency: 16,
            publishers: 2,
            window: 100,
        }
    }

    fn spec(&self, label: &str, hooks: Vec<Behavior>, events: u64) -> RunSpec {
        RunSpec {
            label: label.to_owned(),
            measured: (0..hooks.len()).collect(),
            hooks,
            events,
            rate: None,
            retry_schedule: None,
            worker_env: Vec::new(),
            publishers: self.publishers,
            window: self.window,
        }
    }
}

/// A scenario's report: its table and its JSON line.
pub struct Report {
    /// For people.
    pub table: Table,
    /// For programs.
    pub json: Value,
}

/// `throughput`: events to one webhook, published as fast as the broker confirms.
pub async fn throughput(scale: &Scale, bin: &Path) -> Result<Report, BoxError> {
    let spec = scale.spec(
        "1 webhook",
        vec![Behavior::Healthy],
        scale.throughput_events,
    );
    let run = logged_run(&spec, bin).await?;
    Ok(single(
        "throughput",
        scale,
        &format!("{} events → 1 webhook", spec.events),
        run,
        Map::new(),
    ))
}

/// `latency`: fixed publishing rates; publish → receive percentiles.
pub async fn latency(scale: &Scale, bin: &Path) -> Result<Report, BoxError> {
    let mut runs = Vec::new();
    for &rate in &scale.latency_rates {
        let mut spec = scale.spec(
            &format!("{rate} ev/s"),
            vec![Behavior::Healthy],
            (rate * scale.latency_secs).round() as u64,
        );
        spec.rate = Some(rate);
        runs.push(logged_run(&spec, bin).await?);
    }
    let mut extra = Map::new();
    extra.insert("seconds_per_rate".into(), json!(scale.latency_secs));
    let mut json_runs = Vec::new();
    for (run, rate) in runs.iter().zip(&scale.latency_rates) {
        let mut j = run.to_json();
        if let Some(obj) = j.as_object_mut() {
            obj.insert("rate_per_s".into(), json!(rate));
        }
        json_runs.push(j);
    }
    Ok(multi(
        "latency",
        scale,
        &format!(
            "{} s at each of {} ev/s → 1 webhook",
            scale.latency_secs,
            scale
                .latency_rates
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        ),
        &runs,
        json_runs,
        extra,
    ))
}

/// `fanout`: every event to many webhooks.
pub async fn fanout(scale: &Scale, bin: &Path) -> Result<Report, BoxError> {
    let spec = scale.spec(
        &format!("{} webhooks", scale.fanout_hooks),
        vec![Behavior::Healthy; scale.fanout_hooks],
        scale.fanout_events,
    );
    let run = logged_run(&spec, bin).await?;
    let mut extra = Map::new();
    extra.insert("webhooks".into(), json!(scale.fanout_hooks));
    Ok(single(
        "fanout",
        scale,
        &format!(
            "{} events → {} webhooks = {} deliveries",
            spec.events,
            scale.fanout_hooks,
            spec.expected()
        ),
        run,
        extra,
    ))
}

/// `slow-endpoint`: nine healthy webhooks and one that never answers (WEBHOOK_TIMEOUT=1.0), against ten
/// healthy ones; the nine's rate in both.
pub async fn slow_endpoint(scale: &Scale, bin: &Path) -> Result<Report, BoxError> {
    let nine: Vec<usize> = (0..9).collect();
    let env = vec![
        ("WEBHOOK_TIMEOUT", "1.0".to_owned()),
        // Keep the slow webhook on for the whole run; by default it would be turned off after 50
        // timeouts in a row, and the run would then measure nine healthy webhooks.
        ("WEBHOOK_MAX_CONSECUTIVE_FAILURES", "0".to_owned()),
    ];
    let mut hooks = vec![Behavior::Healthy; 9];
    hooks.push(Behavior::Hold);
    let mut with_slow = scale.spec("9 healthy + 1 slow", hooks, scale.slow_events);
    with_slow.measured = nine.clone();
    with_slow.worker_env = env.clone();
    let mut healthy = scale.spec("10 healthy", vec![Behavior::Healthy; 10], scale.slow_events);
    healthy.measured = nine;
    healthy.worker_env = env;
    let mut runs = Vec::new();
    for _ in 0..scale.slow_pairs {
        runs.push(logged_run(&with_slow, bin).await?);
        runs.push(logged_run(&healthy, bin).await?);
    }
    let rates = |parity: usize| -> Vec<f64> {
        runs.iter()
            .skip(parity)
            .step_by(2)
            .map(|r| r.per_s)
            .collect()
    };
    let (with, without) = (rates(0), rates(1));
    let ratios: Vec<f64> = with
        .iter()
        .zip(&without)
        .map(|(w, h)| w / h.max(1e-9))
        .collect();
    let mut extra = Map::new();
    extra.insert("pairs".into(), json!(scale.slow_pairs));
    extra.insert("nine_per_s_with_slow".into(), json!(round(median(with), 1)));
    extra.insert(
        "nine_per_s_all_healthy".into(),
        json!(round(median(without), 1)),
    );
    extra.insert(
        "with_slow_over_all_healthy".into(),
        json!(round(median(ratios.clone()), 3)),
    );
    extra.insert(
        "ratio_of_each_pair".into(),
        json!(ratios.iter().map(|r| round(*r, 3)).collect::<Vec<_>>()),
    );
    let json_runs = runs.iter().map(RunResult::to_json).collect();
    let mut report = multi(
        "slow-endpoint",
        scale,
        &format!(
            "{} events → 10 webhooks, the nine healthy ones measured (WEBHOOK_TIMEOUT=1.0), {} pair(s)",
            scale.slow_events, scale.slow_pairs
        ),
        &runs,
        json_runs,
        extra,
    );
    // The headline figures are those of the run with the slow webhook.
    if let Some(obj) = report.json.as_object_mut() {
        obj.insert("deliveries".into(), json!(runs[0].deliveries));
        obj.insert("expected_deliveries".into(), json!(runs[0].expected));
    }
    Ok(report)
}

/// The failing endpoint's schedule: six attempts within about 3 s.
const FAILING_SCHEDULE: &str = "0.1,0.2,0.4,0.8,1.6";

/// `failing-endpoint`: half the attempts answered 500 at random; every delivery still ends delivered.
pub async fn failing_endpoint(scale: &Scale, bin: &Path) -> Result<Report, BoxError> {
    let attempts = FAILING_SCHEDULE.split(',').count() as u32 + 1;
    let mut spec = scale.spec(
        "50% answered 500",
        vec![Behavior::Flaky {
            fail_ratio: 0.5,
            always_ok_from: attempts,
        }],
        scale.failing_events,
    );
    spec.retry_schedule = Some(FAILING_SCHEDULE.to_owned());
    let run = logged_run(&spec, bin).await?;
    let all_delivered = run.deliveries == run.expected && run.attempts("dead") == 0;
    if !all_delivered {
        return Err(format!(
            "not every delivery was delivered: {} of {}, {} dead",
            run.deliveries,
            run.expected,
            run.attempts("dead")
        )
        .into());
    }
    let mut extra = Map::new();
    extra.insert("fail_ratio".into(), json!(0.5));
    extra.insert("retry_schedule".into(), json!(FAILING_SCHEDULE));
    extra.insert("all_delivered".into(), json!(all_delivered));
    let mut report = single(
        "failing-endpoint",
        scale,
        &format!(
            "{} events → 1 webhook answering 500 to 50% of attempts 1-{} at random (the {}th always 200), \
             WEBHOOK_RETRY_SCHEDULE={FAILING_SCHEDULE}",
            spec.events,
            attempts - 1,
            attempts
        ),
        run,
        extra,
    );
    report
        .table
        .row("all delivered", vec![all_delivered.to_string()]);
    Ok(report)
}

/// `limits`: the receiver alone and RabbitMQ alone.
pub async fn limits(scale: &Scale) -> Result<Report, BoxError> {
    eprintln!(
        "bench: limits: HTTP load generator, {} s at concurrency {}",
        scale.limits_secs, scale.http_concurrency
    );
    let http = limits::http(scale.limits_secs, scale.http_concurrency).await?;
    let mut amqp = Vec::new();
    for queue_type in ["quorum", "classic"] {
        eprintln!(
            "bench: limits: RabbitMQ alone, {queue_type} queue, {} s",
            scale.limits_secs
        );
        amqp.push(
            limits::amqp(
                queue_type,
                scale.limits_secs,
                scale.publishers,
                scale.window,
                256,
            )
            .await?,
        );
    }
    let mut table = Table::new(
        format!("limits ({} scale)", scale.name),
        vec!["value".to_owned()],
    );
    table.row(
        &format!(
            "receiver alone: requests/s (concurrency {})",
            http.concurrency
        ),
        vec![num(Some(http.per_s()), 0)],
    );
    table.row("receiver alone: requests", vec![http.requests.to_string()]);
    if let Some(l) = &http.latency {
        table.row(
            "receiver alone: latency p50 / p99 / max ms",
            vec![format!("{:.2} / {:.2} / {:.2}", l.p50, l.p99, l.max)],
        );
    }
    table.row(
        "receiver alone: body bytes",
        vec![http.body_bytes.to_string()],
    );
    for a in &amqp {
        table.row(
            &format!(
                "RabbitMQ {} queue: confirmed publishes/s (≤ 2,000 ahead)",
                a.queue_type
            ),
            vec![num(Some(a.publish_per_s()), 0)],
        );
        table.row(
            &format!("RabbitMQ {} queue: consumed+acked/s", a.queue_type),
            vec![num(Some(a.consume_per_s()), 0)],
        );
    }
    if let Some(a) = amqp.first() {
        table.row("RabbitMQ message bytes", vec![a.message_bytes.to_string()]);
    }
    let quorum = amqp.iter().find(|a| a.queue_type == "quorum");
    let json = json!({
        "scenario": "limits",
        "scale": scale.name,
        "http_requests_per_s": round(http.per_s(), 1),
        "amqp_quorum_publish_per_s": quorum.map(|a| round(a.publish_per_s(), 1)),
        "amqp_quorum_consume_per_s": quorum.map(|a| round(a.consume_per_s(), 1)),
        "http": http.to_json(),
        "amqp": amqp.iter().map(limits::AmqpLimit::to_json).collect::<Vec<_>>(),
    });
    Ok(Report { table, json })
}

async fn logged_run(spec: &RunSpec, bin: &Path) -> Result<RunResult, BoxError> {
    eprintln!(
        "bench: run {:?}: {} events, {} webhooks, expecting {} deliveries{}",
        spec.label,
        spec.events,
        spec.hooks.len(),
        spec.expected(),
        spec.rate
            .map(|r| format!(" at {r} ev/s"))
            .unwrap_or_default()
    );
    let run = world::run(spec, bin)
        .await
        .map_err(|e| format!("run {:?}: {e}", spec.label))?;
    eprintln!(
        "bench: run {:?}: {} deliveries in {:.2} s = {:.0}/s",
        spec.label, run.deliveries, run.seconds, run.per_s
    );
    Ok(run)
}

fn header(scenario: &str, scale: &Scale) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("scenario".into(), json!(scenario));
    m.insert("scale".into(), json!(scale.name));
    m
}

fn single(
    scenario: &str,
    scale: &Scale,
    what: &str,
    run: RunResult,
    extra: Map<String, Value>,
) -> Report {
    let mut m = header(scenario, scale);
    if let Value::Object(fields) = run.to_json() {
        m.extend(fields);
    }
    m.extend(extra);
    let table = run_table(
        &format!("{scenario} ({} scale): {what}", scale.name),
        &[run],
    );
    Report {
        table,
        json: Value::Object(m),
    }
}

fn multi(
    scenario: &str,
    scale: &Scale,
    what: &str,
    runs: &[RunResult],
    json_runs: Vec<Value>,
    extra: Map<String, Value>,
) -> Report {
    let mut m = header(scenario, scale);
    let deliveries: u64 = runs.iter().map(|r| r.deliveries).sum();
    let cpu: f64 = runs.iter().filter_map(|r| r.worker_cpu_s).sum();
    m.insert("deliveries".into(), json!(deliveries));
    m.insert(
        "expected_deliveries".into(),
        json!(runs.iter().map(|r| r.expected).sum::<u64>()),
    );
    m.insert(
        "peak_rss_mib".into(),
        json!(runs
            .iter()
            .filter_map(|r| r.peak_rss_mib)
            .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
            .map(|v| round(v, 1))),
    );
    m.insert(
        "cpu_s_per_10k".into(),
        json!((deliveries > 0).then(|| round(cpu * 10_000.0 / deliveries as f64, 3))),
    );
    m.extend(extra);
    m.insert("runs".into(), Value::Array(json_runs));
    Report {
        table: run_table(&format!("{scenario} ({} scale): {what}", scale.name), runs),
        json: Value::Object(m),
    }
}

fn run_table(title: &str, runs: &[RunResult]) -> Table {
    let mut t = Table::new(title, runs.iter().map(|r| r.label.clone()).collect());
    let mut row = |name: &str, f: &dyn Fn(&RunResult) -> String| {
        t.row(name, runs.iter().map(f).collect());
    };
    row("events published", &|r| r.events.to_string());
    row("deliveries received (distinct)", &|r| {
        format!("{} / {}", r.deliveries, r.expected)
    });
    row("deliveries logged as succeeded", &|r| r.logged.to_string());
    row("first → last receipt, s", &|r| num(Some(r.seconds), 2));
    row("deliveries/s", &|r| num(Some(r.per_s), 0));
    row("publishing, s", &|r| num(Some(r.published.seconds), 2));
    row("publishes confirmed/s", &|r| {
        num(
            Some(r.published.events as f64 / r.published.seconds.max(1e-9)),
            0,
        )
    });
    row("latency p50 ms", &|r| num(r.latency.map(|l| l.p50), 1));
    row("latency p90 ms", &|r| num(r.latency.map(|l| l.p90), 1));
    row("latency p99 ms", &|r| num(r.latency.map(|l| l.p99), 1));
    row("latency max ms", &|r| num(r.latency.map(|l| l.max), 1));
    row("worker peak RSS, MiB", &|r| num(r.peak_rss_mib, 1));
    row("worker peak open fds (0.5 s samples)", &|r| {
        r.peak_fds.to_string()
    });
    row("worker CPU during the run, s", &|r| num(r.worker_cpu_s, 2));
    row("worker CPU at start-up, s", &|r| {
        num(r.worker_startup_cpu_s, 2)
    });
    row("worker CPU s / 10k deliveries", &|r| {
        num(r.cpu_s_per_10k(), 3)
    });
    row("PostgreSQL CPU during the run, s", &|r| {
        num(Some(r.services.postgres), 2)
    });
    row("RabbitMQ CPU during the run, s", &|r| {
        num(Some(r.services.rabbitmq), 2)
    });
    row("bench CPU (receiver + publisher), s", &|r| {
        num(Some(r.services.bench), 2)
    });
    row("machine busy CPU (2 cores), s", &|r| {
        num(Some(r.services.machine), 2)
    });
    row("  of it other processes / unattributed, s", &|r| {
        num(Some(r.other_cpu_s()), 2)
    });
    row("HTTP requests", &|r| r.receiver.requests.to_string());
    row("  answered 500 on purpose", &|r| {
        r.receiver.failed_on_purpose.to_string()
    });
    row("  held (never answered)", &|r| r.receiver.held.to_string());
    row("  duplicate deliveries", &|r| {
        r.receiver.duplicates.to_string()
    });
    row("  malformed (no webhook-id / timestamp)", &|r| {
        r.receiver.malformed.to_string()
    });
    row("log rows succeeded / failed / dead", &|r| {
        format!(
            "{} / {} / {}",
            r.attempts("succeeded"),
            r.attempts("failed"),
            r.attempts("dead")
        )
    });
    row("mean body bytes", &|r| {
        num(Some(r.receiver.mean_body_bytes), 0)
    });
    row("wall time (publish → all logged), s", &|r| {
        num(Some(r.wall_s), 2)
    });
    t
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
