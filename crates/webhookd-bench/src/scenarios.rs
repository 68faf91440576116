//! The scenarios, at two scales, and how each is reported.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::limits;
use crate::receiver::Behavior;
use crate::report::{median, num, round, Table};
use crate::world::{self, DiskSample, RunResult, RunSpec, Stream, MEASURED_ORGANIZATION};
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
    /// Times `slow-endpoint` and `noisy-neighbour` run each of their two configurations, alternately.
    pub pairs: usize,
    /// Events of `failing-endpoint` (one webhook).
    pub failing_events: u64,
    /// `noisy-neighbour`: organization B's publishing rate, events per second (each to its 5 webhooks).
    pub noisy_b_rate: f64,
    /// `noisy-neighbour`: organization A's publishing rate, events per second (each to its 10 webhooks).
    pub noisy_a_rate: f64,
    /// `noisy-neighbour`: how long both publish.
    pub noisy_secs: f64,
    /// `relay`: Label Studio bodies relayed per second.
    pub relay_rate: f64,
    /// `relay`: how long they are relayed.
    pub relay_secs: f64,
    /// Length of each `limits` measurement.
    pub limits_secs: f64,
    /// `soak`: events per second.
    pub soak_rate: f64,
    /// `soak`: how long it publishes.
    pub soak_secs: f64,
    /// `soak`: the retention window it sets (`WEBHOOKD_LOG_RETENTION_DAYS`, in seconds here).
    pub soak_keep_secs: f64,
    /// `soak`: how often it samples the database's size.
    pub soak_sample_secs: f64,
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
            pairs: 1,
            failing_events: 10_000,
            noisy_b_rate: 100.0,
            noisy_a_rate: 30.0,
            noisy_secs: 20.0,
            relay_rate: 200.0,
            relay_secs: 20.0,
            limits_secs: 5.0,
            soak_rate: 500.0,
            soak_secs: 1800.0,
            soak_keep_secs: 300.0,
            soak_sample_secs: 30.0,
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
            pairs: 1,
            failing_events: 200,
            noisy_b_rate: 50.0,
            noisy_a_rate: 20.0,
            noisy_secs: 2.0,
            relay_rate: 50.0,
            relay_secs: 2.0,
            limits_secs: 1.0,
            // Retention runs every 10 s at the least: the run outlasts one run after the start's.
            soak_rate: 50.0,
            soak_secs: 12.0,
            soak_keep_secs: 2.0,
            soak_sample_secs: 1.0,
            http_concurrency: 16,
            publishers: 2,
            window: 100,
        }
    }

    fn spec(&self, label: &str, hooks: Vec<Behavior>, events: u64) -> RunSpec {
        RunSpec {
            label: label.to_owned(),
            measured: (0..hooks.len()).collect(),
            organizations: vec![MEASURED_ORGANIZATION; hooks.len()],
            hooks,
            latency_of: None,
            timed: None,
            events,
            rate: None,
            retry_schedule: None,
            worker_env: Vec::new(),
            publishers: self.publishers,
            window: self.window,
            background: None,
            disk_every: None,
            check_logged: true,
            relay: false,
        }
    }
}

/// A scenario's report: its table (and a summary of it, if any) and its JSON line.
pub struct Report {
    /// For people.
    pub table: Table,
    /// For people, after the table: what the runs add up to.
    pub summary: Option<Table>,
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
    let mut floors = Vec::new();
    for &rate in &scale.latency_rates {
        let mut spec = scale.spec(
            &format!("{rate} ev/s"),
            vec![Behavior::Healthy],
            (rate * scale.latency_secs).round() as u64,
        );
        spec.rate = Some(rate);
        runs.push(logged_run(&spec, bin).await?);
        // The floor under the run's figures, right after it: the broker alone, at the same rate.
        eprintln!(
            "bench: latency: RabbitMQ alone at {rate} ev/s, {} s",
            scale.latency_secs
        );
        floors.push(limits::amqp_latency(rate, scale.latency_secs).await?);
    }
    let mut extra = Map::new();
    extra.insert("seconds_per_rate".into(), json!(scale.latency_secs));
    extra.insert(
        "rabbitmq_alone".into(),
        floors.iter().map(limits::AmqpLatency::to_json).collect(),
    );
    let mut json_runs = Vec::new();
    for (run, rate) in runs.iter().zip(&scale.latency_rates) {
        let mut j = run.to_json();
        if let Some(obj) = j.as_object_mut() {
            obj.insert("rate_per_s".into(), json!(rate));
        }
        json_runs.push(j);
    }
    let mut report = multi(
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
    );
    let split = |pick: fn(&world::LatencySplit) -> (f64, f64)| -> Vec<String> {
        runs.iter()
            .map(|r| match &r.split {
                Some(s) => {
                    let (before, after) = pick(s);
                    format!("{before:.2} / {after:.2}")
                }
                None => "-".to_owned(),
            })
            .collect()
    };
    report.table.row(
        "split at the claim, median ms: publish → claimed / claimed → received",
        split(|s| s.all),
    );
    report
        .table
        .row("… of the slowest 1 %", split(|s| s.slowest));
    report.table.row(
        "RabbitMQ alone: latency p50 / p99 / max ms",
        floors
            .iter()
            .map(|f| match f.latency {
                Some(l) => format!("{:.2} / {:.2} / {:.2}", l.p50, l.p99, l.max),
                None => "-".to_owned(),
            })
            .collect(),
    );
    // What consuming and acking alone costs a lapin consumer process at the same rate: the floor under
    // the worker's CPU per 10k and context switches per delivery above.
    report.table.row(
        "RabbitMQ alone: consumer CPU-s per 10k messages",
        floors.iter().map(|f| num(f.cpu_s_per_10k(), 3)).collect(),
    );
    report.table.row(
        "RabbitMQ alone: consumer context switches / message, voluntary / involuntary",
        floors
            .iter()
            .map(|f| match f.switches_per_message() {
                Some((v, i)) => format!("{v:.2} / {i:.2}"),
                None => "-".to_owned(),
            })
            .collect(),
    );
    Ok(report)
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
    for _ in 0..scale.pairs {
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
    extra.insert("pairs".into(), json!(scale.pairs));
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
            scale.slow_events, scale.pairs
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

/// `soak`: a long run at a steady rate with retention set to minutes; the database's size sampled over it must
/// level off once retention runs (events and 1-minute delivery-log partitions past the window removed).
pub async fn soak(scale: &Scale, bin: &Path) -> Result<Report, BoxError> {
    let events = (scale.soak_rate * scale.soak_secs).round() as u64;
    let mut spec = scale.spec(
        &format!("{} ev/s for {} s", scale.soak_rate, scale.soak_secs),
        vec![Behavior::Healthy],
        events,
    );
    spec.rate = Some(scale.soak_rate);
    spec.disk_every = Some(Duration::from_secs_f64(scale.soak_sample_secs));
    spec.check_logged = false;
    spec.worker_env = vec![
        (
            "WEBHOOKD_LOG_RETENTION_DAYS",
            format!("{:.9}", scale.soak_keep_secs / 86_400.0),
        ),
        ("WEBHOOKD_LOG_PARTITION_MINUTES", "1".to_owned()),
    ];
    let run = logged_run(&spec, bin).await?;
    let steady = steady_state(&run.disk, scale.soak_keep_secs);
    let mut extra = Map::new();
    extra.insert("rate_per_s".into(), json!(scale.soak_rate));
    extra.insert("keep_s".into(), json!(scale.soak_keep_secs));
    extra.insert(
        "disk".into(),
        json!(run
            .disk
            .iter()
            .map(
                |d| json!({"at_s": round(d.at_s, 1), "bytes": d.bytes, "events": d.events,
                "attempts": d.attempts, "partitions": d.partitions})
            )
            .collect::<Vec<_>>()),
    );
    if let Some(s) = &steady {
        extra.insert("steady_state".into(), s.to_json());
    }
    let mut report = single(
        "soak",
        scale,
        &format!(
            "{events} events at {} ev/s → 1 webhook, WEBHOOKD_LOG_RETENTION_DAYS = {} s, 1-minute partitions",
            scale.soak_rate, scale.soak_keep_secs
        ),
        run.clone(),
        extra,
    );
    let mut disk = Table::new(
        "soak: the database over the run",
        vec![
            "database MiB".into(),
            "events".into(),
            "log rows".into(),
            "partitions".into(),
        ],
    );
    for d in &run.disk {
        disk.row(
            &format!("{:.0} s", d.at_s),
            vec![
                format!("{:.1}", d.bytes as f64 / 1048576.0),
                d.events.to_string(),
                d.attempts.to_string(),
                d.partitions.to_string(),
            ],
        );
    }
    if let Some(s) = steady {
        disk.row(
            "steady state: growth, MiB per 10 min",
            vec![format!("{:+.2}", s.growth_mib_per_10_min)],
        );
        disk.row(
            "steady state: MiB per million events kept",
            vec![format!("{:.0}", s.mib_per_million)],
        );
    }
    report.summary = Some(disk);
    Ok(report)
}

/// The soak's steady state: from twice the retention window on, once retention has removed what is older.
struct SteadyState {
    /// How much the database grew per 10 minutes over the steady state (least squares).
    growth_mib_per_10_min: f64,
    /// The database's size above its size before the run, per million events kept (events rows).
    mib_per_million: f64,
}

impl SteadyState {
    fn to_json(&self) -> Value {
        json!({"growth_mib_per_10_min": round(self.growth_mib_per_10_min, 3),
            "mib_per_million_events": round(self.mib_per_million, 1)})
    }
}

fn steady_state(disk: &[DiskSample], keep_secs: f64) -> Option<SteadyState> {
    let base = disk.first()?;
    let steady: Vec<&DiskSample> = disk
        .iter()
        .filter(|d| d.at_s >= 2.0 * keep_secs + 60.0)
        .collect();
    if steady.len() < 3 {
        return None;
    }
    let n = steady.len() as f64;
    let mean_t = steady.iter().map(|d| d.at_s).sum::<f64>() / n;
    let mean_b = steady.iter().map(|d| d.bytes as f64).sum::<f64>() / n;
    let cov: f64 = steady
        .iter()
        .map(|d| (d.at_s - mean_t) * (d.bytes as f64 - mean_b))
        .sum();
    let var: f64 = steady.iter().map(|d| (d.at_s - mean_t).powi(2)).sum();
    let slope = if var > 0.0 { cov / var } else { 0.0 };
    let mean_events = steady.iter().map(|d| d.events as f64).sum::<f64>() / n;
    Some(SteadyState {
        growth_mib_per_10_min: slope * 600.0 / 1048576.0,
        mib_per_million: (mean_b - base.bytes as f64) / 1048576.0 / (mean_events / 1e6).max(1e-9),
    })
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

/// `noisy-neighbour`: the retry schedule of both organizations (four attempts within about 3.5 s).
const NOISY_SCHEDULE: &str = "0.5,1,2";
/// `noisy-neighbour`: organization A's webhooks answer after this long: within `WEBHOOK_TIMEOUT` (1.0 s),
/// past the slow lane's threshold (0.5 s), so that all their attempts are made from the retry lane.
const NOISY_DELAY: Duration = Duration::from_millis(900);
/// `noisy-neighbour`: organization A.
const NOISY_ORGANIZATION: i64 = 2;
/// `noisy-neighbour`: B's webhooks, by index: four healthy ones, then the one that fails first attempts.
const B_HEALTHY: usize = 4;
/// `noisy-neighbour`: A's webhooks: this many answer 200 after `NOISY_DELAY`, as many 500.
const A_EACH: usize = 5;

/// One figure of `noisy-neighbour`'s comparison.
struct Figure {
    name: &'static str,
    key: &'static str,
    /// Is a larger value better (a rate), or a smaller (a latency)?
    higher_is_better: bool,
    /// Judged against the target (10 %), or only shown.
    judged: bool,
    value: fn(&RunResult) -> Option<f64>,
}

const NOISY_FIGURES: [Figure; 6] = [
    Figure {
        name: "B deliveries/s",
        key: "deliveries_per_s",
        higher_is_better: true,
        judged: true,
        value: |r| Some(r.per_s),
    },
    Figure {
        name: "B latency p50 ms (4 healthy)",
        key: "latency_p50_ms",
        higher_is_better: false,
        judged: true,
        value: |r| r.latency.map(|l| l.p50),
    },
    Figure {
        name: "B latency p99 ms (4 healthy)",
        key: "latency_p99_ms",
        higher_is_better: false,
        judged: true,
        value: |r| r.latency.map(|l| l.p99),
    },
    Figure {
        name: "B retry lateness p50 ms",
        key: "retry_lateness_p50_ms",
        higher_is_better: false,
        judged: true,
        value: |r| r.punctuality.as_ref()?.lateness.map(|l| l.p50),
    },
    Figure {
        name: "B retry lateness p99 ms",
        key: "retry_lateness_p99_ms",
        higher_is_better: false,
        judged: true,
        value: |r| r.punctuality.as_ref()?.lateness.map(|l| l.p99),
    },
    Figure {
        name: "B retry lateness max ms",
        key: "retry_lateness_max_ms",
        higher_is_better: false,
        judged: false,
        value: |r| r.punctuality.as_ref()?.lateness.map(|l| l.max),
    },
];

/// `noisy-neighbour`: organization B (4 healthy webhooks and one whose first attempts fail) at a fixed
/// rate, alone and next to organization A (10 webhooks answering in 0.9 s, half of them 500), whose
/// attempts overwhelm the retry lane. B's rate, latency and retry punctuality with A against alone.
pub async fn noisy_neighbour(scale: &Scale, bin: &Path) -> Result<Report, BoxError> {
    let events = (scale.noisy_b_rate * scale.noisy_secs).round() as u64;
    let mut b_hooks = vec![Behavior::Healthy; B_HEALTHY];
    // The first attempt of every delivery answered 500, the later ones 200: one retry each.
    b_hooks.push(Behavior::Flaky {
        fail_ratio: 1.0,
        always_ok_from: 2,
    });
    let mut alone = scale.spec("B alone", b_hooks, events);
    alone.rate = Some(scale.noisy_b_rate);
    alone.latency_of = Some((0..B_HEALTHY).collect());
    alone.timed = Some(B_HEALTHY);
    alone.retry_schedule = Some(NOISY_SCHEDULE.to_owned());
    alone.worker_env = vec![
        ("WEBHOOK_TIMEOUT", "1.0".to_owned()),
        // A's failing webhooks stay on (by default 50 failures in a row would turn them off).
        ("WEBHOOK_MAX_CONSECUTIVE_FAILURES", "0".to_owned()),
    ];
    let mut with = alone.clone();
    with.label = "B with A".to_owned();
    for fail in [false, true] {
        for _ in 0..A_EACH {
            with.hooks.push(Behavior::Slow {
                delay: NOISY_DELAY,
                fail,
            });
            with.organizations.push(NOISY_ORGANIZATION);
        }
    }
    let a_events = (scale.noisy_a_rate * scale.noisy_secs).round() as u64;
    with.background = Some(Stream {
        organization: NOISY_ORGANIZATION,
        events: a_events,
        rate: scale.noisy_a_rate,
    });

    let mut runs = Vec::new();
    for _ in 0..scale.pairs {
        runs.push(logged_run(&alone, bin).await?);
        runs.push(logged_run(&with, bin).await?);
    }
    let (alone_runs, with_runs): (Vec<&RunResult>, Vec<&RunResult>) = (
        runs.iter().step_by(2).collect(),
        runs.iter().skip(1).step_by(2).collect(),
    );
    for r in &runs {
        if let Some(p) = &r.punctuality {
            if p.timed < events {
                return Err(format!(
                    "run {:?}: the next attempt of only {} of the failing webhook's {events} deliveries \
                     was timed ({} failed attempts with a next attempt due)",
                    r.label, p.timed, p.retries
                )
                .into());
            }
        }
    }

    let mut summary = Table::new(
        format!(
            "noisy-neighbour ({} scale): medians of {} pair(s); the ratio and the difference are the \
             medians of each pair's",
            scale.name, scale.pairs
        ),
        [
            "B alone",
            "B with A",
            "with / alone, per pair",
            "with − alone, per pair",
            "within 10 %",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let mut comparison = Map::new();
    let mut medians_alone = Map::new();
    let mut medians_with = Map::new();
    for figure in &NOISY_FIGURES {
        let of = |rs: &[&RunResult]| -> Option<f64> {
            let values: Vec<f64> = rs.iter().filter_map(|r| (figure.value)(r)).collect();
            (!values.is_empty()).then(|| median(values))
        };
        let (a, w) = (of(&alone_runs), of(&with_runs));
        let pairs: Vec<(f64, f64)> = alone_runs
            .iter()
            .zip(&with_runs)
            .filter_map(|(a, w)| Some(((figure.value)(a)?, (figure.value)(w)?)))
            .collect();
        // A ratio only against a positive base: lateness may be negative (early).
        let ratios: Vec<f64> = pairs
            .iter()
            .filter(|(a, _)| *a > 0.0)
            .map(|(a, w)| w / a)
            .collect();
        // Rounded as shown, so that the verdict agrees with the figure printed beside it.
        let ratio = (!ratios.is_empty()).then(|| round(median(ratios.clone()), 3));
        let difference =
            (!pairs.is_empty()).then(|| median(pairs.iter().map(|(a, w)| w - a).collect()));
        let within = match (figure.judged, ratio) {
            (false, _) | (_, None) => None,
            (true, Some(r)) if figure.higher_is_better => Some(r >= 0.9),
            (true, Some(r)) => Some(r <= 1.1),
        };
        let digits = if figure.higher_is_better { 0 } else { 1 };
        summary.row(
            figure.name,
            vec![
                num(a, digits),
                num(w, digits),
                num(ratio, 3),
                difference
                    .map(|d| format!("{d:+.1}"))
                    .unwrap_or_else(|| "-".to_owned()),
                match within {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "no".to_owned(),
                    None => "-".to_owned(),
                },
            ],
        );
        medians_alone.insert(figure.key.into(), json!(a.map(|v| round(v, 2))));
        medians_with.insert(figure.key.into(), json!(w.map(|v| round(v, 2))));
        comparison.insert(
            figure.key.into(),
            json!({
                "with_over_alone": ratio.map(|v| round(v, 3)),
                "ratio_of_each_pair": ratios.iter().map(|v| round(*v, 3)).collect::<Vec<_>>(),
                "difference": difference.map(|v| round(v, 2)),
                "within_10_percent": within,
            }),
        );
    }
    let a_requests_per_s: Vec<f64> = with_runs
        .iter()
        .filter_map(|r| r.background.map(|b| b.requests as f64 / r.wall_s.max(1e-9)))
        .collect();
    let a_first_attempts_per_s = scale.noisy_a_rate * (2 * A_EACH) as f64;
    summary.row(
        "A: first attempts offered/s; HTTP requests/s made",
        vec![
            "-".to_owned(),
            format!(
                "{:.0}; {}",
                a_first_attempts_per_s,
                num(
                    (!a_requests_per_s.is_empty()).then(|| median(a_requests_per_s.clone())),
                    0
                )
            ),
            String::new(),
            String::new(),
            String::new(),
        ],
    );

    let mut extra = Map::new();
    extra.insert("pairs".into(), json!(scale.pairs));
    extra.insert("b_rate_per_s".into(), json!(scale.noisy_b_rate));
    extra.insert("a_rate_per_s".into(), json!(scale.noisy_a_rate));
    extra.insert("seconds".into(), json!(scale.noisy_secs));
    extra.insert("retry_schedule".into(), json!(NOISY_SCHEDULE));
    extra.insert(
        "a_first_attempts_offered_per_s".into(),
        json!(a_first_attempts_per_s),
    );
    extra.insert(
        "a_http_requests_per_s".into(),
        json!((!a_requests_per_s.is_empty()).then(|| round(median(a_requests_per_s), 1))),
    );
    extra.insert("b_alone".into(), Value::Object(medians_alone));
    extra.insert("b_with_a".into(), Value::Object(medians_with));
    extra.insert("comparison".into(), Value::Object(comparison));
    let json_runs = runs.iter().map(RunResult::to_json).collect();
    let mut report = multi(
        "noisy-neighbour",
        scale,
        &format!(
            "B (organization 1): {} events at {} ev/s → 4 healthy webhooks + 1 failing first attempts; \
             A (organization 2, 'with A' only): {a_events} events at {} ev/s → 10 webhooks answering in \
             {:.1} s, 5 of them 500; WEBHOOK_RETRY_SCHEDULE={NOISY_SCHEDULE}, WEBHOOK_TIMEOUT=1.0; \
             latency of B's 4 healthy webhooks; {} pair(s)",
            events,
            scale.noisy_b_rate,
            scale.noisy_a_rate,
            NOISY_DELAY.as_secs_f64(),
            scale.pairs
        ),
        &runs,
        json_runs,
        extra,
    );
    // The headline figures are B's in the (first) run with A.
    if let (Some(obj), Some(first_with)) = (report.json.as_object_mut(), with_runs.first()) {
        obj.insert("deliveries".into(), json!(first_with.deliveries));
        obj.insert("expected_deliveries".into(), json!(first_with.expected));
    }
    report.summary = Some(summary);
    Ok(report)
}

/// `relay`'s target: the relay sits inside Label Studio's user requests, which wait for it.
const RELAY_TARGET_P99_MS: f64 = 10.0;

/// `relay`: Label Studio's webhook calls, at a fixed rate, each on a new connection, to
/// `POST /api/relay/label-studio/` of a `webhookd serve` process, which delivers them to one webhook. The
/// relay's response time against the target, and every relayed event delivered.
pub async fn relay(scale: &Scale, bin: &Path) -> Result<Report, BoxError> {
    let events = (scale.relay_rate * scale.relay_secs).round() as u64;
    let mut spec = scale.spec(
        &format!("{} ev/s relayed", scale.relay_rate),
        vec![Behavior::Healthy],
        events,
    );
    spec.rate = Some(scale.relay_rate);
    spec.relay = true;
    let run = logged_run(&spec, bin).await?;
    let response = run.relay_response;
    let lag = run.relay_start_lag;
    let met = response.is_some_and(|r| r.p99 <= RELAY_TARGET_P99_MS);
    let mut extra = Map::new();
    extra.insert("rate_per_s".into(), json!(scale.relay_rate));
    extra.insert("seconds".into(), json!(scale.relay_secs));
    extra.insert("target_p99_ms".into(), json!(RELAY_TARGET_P99_MS));
    extra.insert("target_met".into(), json!(met));
    let mut report = single(
        "relay",
        scale,
        &format!(
            "{events} Label Studio bodies at {} ev/s, a new connection each, → POST /api/relay/label-studio/ \
             of webhookd serve → 1 webhook",
            scale.relay_rate
        ),
        run,
        extra,
    );
    report.table.row(
        "relay response p50 / p90 / p99 / max ms",
        vec![response
            .map(|r| format!("{:.2} / {:.2} / {:.2} / {:.2}", r.p50, r.p90, r.p99, r.max))
            .unwrap_or_else(|| "-".to_owned())],
    );
    report.table.row(
        "load generator lag p99 / max ms",
        vec![lag
            .map(|l| format!("{:.2} / {:.2}", l.p99, l.max))
            .unwrap_or_else(|| "-".to_owned())],
    );
    report.table.row(
        &format!("relay p99 ≤ {RELAY_TARGET_P99_MS} ms"),
        vec![if met { "met" } else { "missed" }.to_owned()],
    );
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
    Ok(Report {
        table,
        summary: None,
        json,
    })
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
    if let Some(b) = &spec.background {
        eprintln!(
            "bench: run {:?}: and, unmeasured, {} events of organization {} at {} ev/s → its {} webhooks",
            spec.label,
            b.events,
            b.organization,
            b.rate,
            spec.hooks_of(b.organization).len()
        );
    }
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
        summary: None,
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
        summary: None,
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
    row(
        "publisher's lag p50 / p99 / max ms",
        &|r| match r.published.lag {
            Some(l) => format!("{:.2} / {:.2} / {:.2}", l.p50, l.p99, l.max),
            None => "-".to_owned(),
        },
    );
    row("worker peak RSS, MiB", &|r| num(r.peak_rss_mib, 1));
    row("worker peak open fds (0.5 s samples)", &|r| {
        r.peak_fds.to_string()
    });
    row("retry queue: messages ready, peak / mean (0.5 s)", &|r| {
        format!("{} / {:.1}", r.retry_queue_ready.0, r.retry_queue_ready.1)
    });
    row("worker CPU during the run, s", &|r| num(r.worker_cpu_s, 2));
    row("worker CPU at start-up, s", &|r| {
        num(r.worker_startup_cpu_s, 2)
    });
    row("worker CPU s / 10k deliveries", &|r| {
        num(r.cpu_s_per_10k(), 3)
    });
    row(
        "worker context switches / delivery, voluntary / involuntary",
        &|r| match r.switches_per_delivery() {
            Some((v, i)) => format!("{v:.2} / {i:.2}"),
            None => "-".into(),
        },
    );
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
    if runs.iter().any(|r| r.punctuality.is_some()) {
        row("timed retries: next attempt received / due", &|r| {
            r.punctuality
                .as_ref()
                .map(|p| format!("{} / {}", p.timed, p.retries))
                .unwrap_or_else(|| "-".to_owned())
        });
        row("retry lateness p50 / p99 / max ms", &|r| match r
            .punctuality
            .as_ref()
            .and_then(|p| p.lateness)
        {
            Some(l) => format!("{:.1} / {:.1} / {:.1}", l.p50, l.p99, l.max),
            None => "-".to_owned(),
        });
    }
    if runs.iter().any(|r| r.background.is_some()) {
        row("unmeasured stream: events confirmed", &|r| {
            r.background
                .map(|b| b.published.events.to_string())
                .unwrap_or_else(|| "-".to_owned())
        });
        row("unmeasured stream: its webhooks' HTTP requests", &|r| {
            r.background
                .map(|b| b.requests.to_string())
                .unwrap_or_else(|| "-".to_owned())
        });
    }
    row("wall time (publish → all logged), s", &|r| {
        num(Some(r.wall_s), 2)
    });
    t
}
