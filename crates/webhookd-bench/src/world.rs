//! One worker-backed run: its own database and RabbitMQ names, a receiver, webhooks, a `webhookd worker`
//! child process (`webhookd serve` when the events are relayed over HTTP), the publishing, the wait for
//! every delivery to be received and logged, the costs, and the clean-up (worker killed, topology deleted,
//! database dropped), which happens whatever went wrong.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::{json, Value};
use tokio::process::Child;
use webhookd_store::api_tokens;
use webhookd_store::webhooks::{self, NewWebhook};

use crate::procstat::{self, Services};
use crate::publish::{self, Plan, Published};
use crate::receiver::{Behavior, Receiver, Snapshot};
use crate::relay::{self, RelayTarget};
use crate::report::{median, round, Percentiles};
use crate::sandbox::{self, Sandbox};
use crate::BoxError;

/// No new delivery for this long means the run is stuck.
const STALL: Duration = Duration::from_secs(60);

/// The organization of the measured stream's events.
pub const MEASURED_ORGANIZATION: i64 = 1;

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Name of the run in the report.
    pub label: String,
    /// One webhook per entry, answered as it says.
    pub hooks: Vec<Behavior>,
    /// The organization of each webhook, by index (as long as `hooks`). Every webhook subscribes to all
    /// its organization's events.
    pub organizations: Vec<i64>,
    /// The webhooks whose deliveries are waited for and measured.
    pub measured: Vec<usize>,
    /// The webhooks whose publish → receive latency is reported (`None`: every webhook).
    pub latency_of: Option<Vec<usize>>,
    /// A webhook whose retries are timed against when they were due (see [`Punctuality`]).
    pub timed: Option<usize>,
    /// Events to publish, for [`MEASURED_ORGANIZATION`].
    pub events: u64,
    /// Events per second, or `None` for as fast as possible.
    pub rate: Option<f64>,
    /// `WEBHOOK_RETRY_SCHEDULE` (the worker's default when `None`).
    pub retry_schedule: Option<String>,
    /// Other worker settings.
    pub worker_env: Vec<(&'static str, String)>,
    /// Publishing channels.
    pub publishers: usize,
    /// Unconfirmed publishes per channel.
    pub window: usize,
    /// A second stream of events, for another organization, published at the same time and not waited
    /// for: the run ends when the measured webhooks have everything, whatever this stream's backlog.
    pub background: Option<Stream>,
    /// Sample the database's size this often during the run (`soak`).
    pub disk_every: Option<Duration>,
    /// Whether every delivery must still be in the log at the end (not under a retention of minutes).
    pub check_logged: bool,
    /// The measured events are POSTed as Label Studio bodies to `POST /api/relay/label-studio/` of a
    /// `webhookd serve` process (API and worker), a new connection each, at `rate`, instead of being
    /// published to RabbitMQ by the bench.
    pub relay: bool,
}

/// The database's size at one moment of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskSample {
    /// Seconds since publishing began.
    pub at_s: f64,
    /// `pg_database_size`.
    pub bytes: i64,
    /// Rows of `events`.
    pub events: i64,
    /// Rows of `delivery_attempts`.
    pub attempts: i64,
    /// Partitions of `delivery_attempts`.
    pub partitions: i64,
}

/// An unmeasured stream of events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stream {
    /// The organization of its events.
    pub organization: i64,
    /// Events to publish.
    pub events: u64,
    /// Events per second.
    pub rate: f64,
}

impl RunSpec {
    /// Deliveries the measured webhooks must receive (one per event each).
    pub fn expected(&self) -> u64 {
        self.events * self.measured.len() as u64
    }

    /// The webhooks whose latency is reported.
    pub fn latency_hooks(&self) -> Vec<usize> {
        self.latency_of
            .clone()
            .unwrap_or_else(|| (0..self.hooks.len()).collect())
    }

    /// The webhooks of `organization`.
    pub fn hooks_of(&self, organization: i64) -> Vec<usize> {
        (0..self.hooks.len())
            .filter(|&i| self.organizations.get(i) == Some(&organization))
            .collect()
    }
}

/// How late the retries of the timed webhook came: for each of its failed attempts with a next attempt
/// due (`next_attempt_at` of the attempt's row in `delivery_attempts`), the wall time at which the receiver
/// got that next attempt (same `webhook-id`, `x-webhookd-attempt` one higher) minus the due time. Negative
/// when it came early: the delay ladder is accurate to 50 ms, and a task with less than that to wait is
/// made at once. Attempts handed over to the slow lane are left out (their repeat is not a scheduled retry).
#[derive(Debug, Clone)]
pub struct Punctuality {
    /// Failed attempts with a next attempt due.
    pub retries: u64,
    /// Of them, those whose next attempt the receiver got.
    pub timed: u64,
    /// Lateness, milliseconds.
    pub lateness: Option<Percentiles>,
}

/// What the unmeasured stream did during the run.
#[derive(Debug, Clone, Copy)]
pub struct BackgroundResult {
    /// Its organization.
    pub organization: i64,
    /// Its events confirmed by the broker.
    pub published: Published,
    /// HTTP requests its organization's webhooks received from the first publish until the measured
    /// webhooks had everything.
    pub requests: u64,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The run's name.
    pub label: String,
    /// Events published.
    pub events: u64,
    /// Deliveries expected at the measured webhooks.
    pub expected: u64,
    /// Distinct deliveries received by them.
    pub deliveries: u64,
    /// Distinct deliveries the worker logged as succeeded for them.
    pub logged: u64,
    /// From the first receipt to the last.
    pub seconds: f64,
    /// `deliveries / seconds`.
    pub per_s: f64,
    /// Publishing.
    pub published: Published,
    /// Publish → receive latency, milliseconds.
    pub latency: Option<Percentiles>,
    /// The receiver's counters.
    pub receiver: Snapshot,
    /// Log rows by outcome (`succeeded`, `failed`, `dead`).
    pub attempts_by_outcome: Vec<(String, i64)>,
    /// Peak RSS of the worker.
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds of the worker from when it was consuming until everything was logged.
    pub worker_cpu_s: Option<f64>,
    /// CPU seconds of the worker's start-up (migrations, topology, subscription cache).
    pub worker_startup_cpu_s: Option<f64>,
    /// The worker's context switches over the same span as `worker_cpu_s`, all its threads.
    pub worker_switches: Option<procstat::Switches>,
    /// Most file descriptors the worker had open (sampled every 0.5 s).
    pub peak_fds: usize,
    /// Messages ready in the retry queue (waiting for a worker's consumer window), sampled every 0.5 s:
    /// the largest and the mean.
    pub retry_queue_ready: (u32, f64),
    /// CPU seconds of PostgreSQL, RabbitMQ and the bench during the run.
    pub services: Services,
    /// From the first publish until everything was logged.
    pub wall_s: f64,
    /// The timed webhook's retries, if the spec names one.
    pub punctuality: Option<Punctuality>,
    /// A paced run's latency split at the event's claim.
    pub split: Option<LatencySplit>,
    /// The unmeasured stream, if the spec has one.
    pub background: Option<BackgroundResult>,
    /// The database's size over the run (`disk_every`), the first sample before publishing.
    pub disk: Vec<DiskSample>,
    /// The relay's response times, milliseconds, when the events were relayed.
    pub relay_response: Option<Percentiles>,
    /// How late relay requests left against their schedule, milliseconds (the load generator's lag).
    pub relay_start_lag: Option<Percentiles>,
}

impl RunResult {
    /// Worker CPU seconds (during the run, start-up excluded) per 10,000 deliveries.
    pub fn cpu_s_per_10k(&self) -> Option<f64> {
        let cpu = self.worker_cpu_s?;
        (self.deliveries > 0).then(|| cpu * 10_000.0 / self.deliveries as f64)
    }

    /// The worker's context switches per delivery: (voluntary, involuntary).
    pub fn switches_per_delivery(&self) -> Option<(f64, f64)> {
        let s = self.worker_switches?;
        let n = self.deliveries as f64;
        (self.deliveries > 0).then(|| (s.voluntary as f64 / n, s.involuntary as f64 / n))
    }

    /// Busy CPU of the machine not accounted to the worker, PostgreSQL, RabbitMQ or the bench: other
    /// work that disturbed the run (plus kernel time on their behalf that /proc does not attribute).
    pub fn other_cpu_s(&self) -> f64 {
        let s = &self.services;
        (s.machine - self.worker_cpu_s.unwrap_or(0.0) - s.postgres - s.rabbitmq - s.bench).max(0.0)
    }

    /// Log rows with `outcome`.
    pub fn attempts(&self, outcome: &str) -> i64 {
        self.attempts_by_outcome
            .iter()
            .find(|(o, _)| o == outcome)
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }

    /// The run as JSON.
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "label": self.label,
            "events": self.events,
            "deliveries": self.deliveries,
            "expected_deliveries": self.expected,
            "logged": self.logged,
            "seconds": round(self.seconds, 3),
            "deliveries_per_s": round(self.per_s, 1),
            "publish_s": round(self.published.seconds, 3),
            "publish_per_s": round(self.published.events as f64 / self.published.seconds.max(1e-9), 1),
            "latency_ms": self.latency.map(Percentiles::to_json),
            "latency_split": self.split.map(LatencySplit::to_json),
            "publisher_lag_ms": self.published.lag.map(Percentiles::to_json),
            "peak_rss_mib": self.peak_rss_mib.map(|v| round(v, 1)),
            "worker_cpu_s": self.worker_cpu_s.map(|v| round(v, 2)),
            "worker_startup_cpu_s": self.worker_startup_cpu_s.map(|v| round(v, 2)),
            "cpu_s_per_10k": self.cpu_s_per_10k().map(|v| round(v, 3)),
            "worker_switches_per_delivery": self.switches_per_delivery().map(|(v, i)| json!({
                "voluntary": round(v, 2),
                "involuntary": round(i, 2),
            })),
            "worker_peak_open_fds": self.peak_fds,
            "retry_queue_ready_peak": self.retry_queue_ready.0,
            "retry_queue_ready_mean": round(self.retry_queue_ready.1, 1),
            "postgres_cpu_s": round(self.services.postgres, 2),
            "rabbitmq_cpu_s": round(self.services.rabbitmq, 2),
            "bench_cpu_s": round(self.services.bench, 2),
            "machine_busy_cpu_s": round(self.services.machine, 2),
            "other_cpu_s": round(self.other_cpu_s(), 2),
            "http_requests": self.receiver.requests,
            "http_500s": self.receiver.failed_on_purpose,
            "held_requests": self.receiver.held,
            "duplicate_deliveries": self.receiver.duplicates,
            "malformed_requests": self.receiver.malformed,
            "mean_body_bytes": round(self.receiver.mean_body_bytes, 1),
            "attempts_succeeded": self.attempts("succeeded"),
            "attempts_failed": self.attempts("failed"),
            "attempts_dead": self.attempts("dead"),
            "wall_s": round(self.wall_s, 3),
        });
        if let Some(obj) = value.as_object_mut() {
            if let Some(p) = &self.punctuality {
                obj.insert(
                    "retry_lateness_ms".into(),
                    json!({
                        "retries": p.retries,
                        "timed": p.timed,
                        "lateness": p.lateness.map(Percentiles::to_json),
                    }),
                );
            }
            if let Some(r) = self.relay_response {
                obj.insert("relay_response_ms".into(), r.to_json());
            }
            if let Some(l) = self.relay_start_lag {
                obj.insert("relay_start_lag_ms".into(), l.to_json());
            }
            if let Some(b) = &self.background {
                obj.insert(
                    "background".into(),
                    json!({
                        "organization": b.organization,
                        "events": b.published.events,
                        "publish_s": round(b.published.seconds, 3),
                        "http_requests": b.requests,
                        "http_requests_per_s": round(b.requests as f64 / self.wall_s.max(1e-9), 1),
                    }),
                );
            }
        }
        value
    }
}

/// The database's size and row counts now, `at_s` seconds into the run.
async fn disk_sample(
    client: &webhookd_store::PooledClient,
    at_s: f64,
) -> Result<DiskSample, BoxError> {
    let row = client
        .query_one(
            "SELECT pg_database_size(current_database()), (SELECT count(*) FROM events),
                    (SELECT count(*) FROM delivery_attempts), (SELECT count(*) FROM webhookd_log_partitions())",
            &[],
        )
        .await?;
    Ok(DiskSample {
        at_s,
        bytes: row.try_get(0)?,
        events: row.try_get(1)?,
        attempts: row.try_get(2)?,
        partitions: row.try_get(3)?,
    })
}

/// Runs `spec` against the worker binary `worker_bin`, cleaning up afterwards whatever happened.
pub async fn run(spec: &RunSpec, worker_bin: &Path) -> Result<RunResult, BoxError> {
    let mut world = World {
        sandbox: Sandbox::new(worker_bin, spec.retry_schedule.clone())?,
        receiver: None,
        worker: None,
    };
    let result = tokio::select! {
        r = world.drive(spec, worker_bin) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    // A failed run says what the worker logged before its database goes.
    let result = match result {
        Err(e) => match world.sandbox.log_summary().await {
            Some(summary) => Err(format!("{e}; the worker's delivery log: {summary}").into()),
            None => Err(e),
        },
        other => other,
    };
    let cleaned = world.teardown().await;
    match (result, cleaned) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(e)) => Err(format!("clean-up failed: {e}").into()),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(format!("{e} (and clean-up failed: {c})").into()),
    }
}

/// Where a paced run's latency went, split at the moment the worker claimed the event (when the claim
/// inserted its row, `events.created_at`): before it, the broker, the consumer, the handler's start and its
/// wait for the claim writer's write before; after it, the claim's commit, the fan-out and the POST.
/// Medians, milliseconds, of every first attempt and of the slowest 1 % of them.
#[derive(Debug, Clone, Copy)]
pub struct LatencySplit {
    /// First attempts split.
    pub samples: usize,
    /// All of them: publish → claimed, claimed → received.
    pub all: (f64, f64),
    /// Those at or above the 99th percentile of publish → received.
    pub slowest: (f64, f64),
    /// How many those are.
    pub slowest_samples: usize,
}

impl LatencySplit {
    /// For the JSON line.
    pub fn to_json(self) -> Value {
        json!({
            "samples": self.samples,
            "all_publish_to_claim_ms": round(self.all.0, 2),
            "all_claim_to_receipt_ms": round(self.all.1, 2),
            "slowest_1pct_samples": self.slowest_samples,
            "slowest_1pct_publish_to_claim_ms": round(self.slowest.0, 2),
            "slowest_1pct_claim_to_receipt_ms": round(self.slowest.1, 2),
        })
    }

    /// From (publish → claimed, claimed → received) pairs in microseconds; `None` without any.
    pub fn of_micros(pairs: &[(i64, i64)]) -> Option<Self> {
        if pairs.is_empty() {
            return None;
        }
        let mut by_total: Vec<(i64, i64)> = pairs.to_vec();
        by_total.sort_by_key(|(a, b)| a + b);
        let cut = (by_total.len() * 99 / 100).min(by_total.len() - 1);
        let medians = |part: &[(i64, i64)]| {
            let ms = |us: i64| us as f64 / 1000.0;
            (
                median(part.iter().map(|p| ms(p.0)).collect()),
                median(part.iter().map(|p| ms(p.1)).collect()),
            )
        };
        Some(Self {
            samples: pairs.len(),
            all: medians(&by_total),
            slowest: medians(&by_total[cut..]),
            slowest_samples: by_total.len() - cut,
        })
    }
}

/// The latency split of the webhooks `hooks` (see [`LatencySplit`]): their first attempts' receipts against
/// the publisher's `sent_at_us` and the event's claim, both read from the stored event.
async fn latency_split(
    client: &tokio_postgres::Client,
    receiver: &Receiver,
    webhook_ids: &[i64],
    hooks: &[usize],
) -> Result<LatencySplit, BoxError> {
    let mut pairs = Vec::new();
    for &hook in hooks {
        let Some(&id) = webhook_ids.get(hook) else {
            continue;
        };
        let arrivals = receiver.attempt_times(hook);
        let rows = client
            .query(
                "SELECT a.delivery_id,
                        (e.body -> 'payload' -> 'project' ->> 'sent_at_us')::int8,
                        (extract(epoch FROM e.created_at) * 1000000)::int8
                   FROM delivery_attempts a JOIN events e ON e.id = a.event_id
                  WHERE a.webhook_id = $1 AND a.attempt = 1",
                &[&id],
            )
            .await?;
        for row in &rows {
            let delivery: uuid::Uuid = row.try_get(0)?;
            let (Some(sent), Some(claimed)) = (
                row.try_get::<_, Option<i64>>(1)?,
                row.try_get::<_, Option<i64>>(2)?,
            ) else {
                continue;
            };
            if let Some(&arrived) = arrivals.get(&(delivery, 1)) {
                pairs.push((claimed - sent, arrived as i64 - claimed));
            }
        }
    }
    LatencySplit::of_micros(&pairs)
        .ok_or_else(|| "no first attempt could be split (none logged and received)".into())
}

/// The timed webhook's retries against their due times (see [`Punctuality`]). The failed rows of at least
/// `deliveries` deliveries are waited for (up to 10 s): each delivery's first attempt failed.
async fn punctuality(
    client: &tokio_postgres::Client,
    receiver: &Receiver,
    webhook_id: i64,
    hook: usize,
    deliveries: u64,
) -> Result<Punctuality, BoxError> {
    let since = Instant::now();
    let rows = loop {
        let rows = client
            .query(
                "SELECT delivery_id, attempt,
                        (extract(epoch FROM next_attempt_at) * 1000000)::int8
                   FROM delivery_attempts
                  WHERE webhook_id = $1 AND outcome = 'failed' AND next_attempt_at IS NOT NULL
                    AND coalesce(error, '') NOT LIKE '%handed over to the slow lane%'",
                &[&webhook_id],
            )
            .await?;
        if rows.len() as u64 >= deliveries || since.elapsed() > Duration::from_secs(10) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let arrivals = receiver.attempt_times(hook);
    let mut lateness_ms = Vec::with_capacity(rows.len());
    for row in &rows {
        let delivery: uuid::Uuid = row.try_get(0)?;
        let attempt: i32 = row.try_get(1)?;
        let due_us: i64 = row.try_get(2)?;
        let next = u32::try_from(attempt).unwrap_or(0).saturating_add(1);
        if let Some(&arrived_us) = arrivals.get(&(delivery, next)) {
            lateness_ms.push((arrived_us as i64 - due_us) as f64 / 1000.0);
        }
    }
    Ok(Punctuality {
        retries: rows.len() as u64,
        timed: lateness_ms.len() as u64,
        lateness: Percentiles::of_millis(lateness_ms),
    })
}

struct World {
    sandbox: Sandbox,
    receiver: Option<Receiver>,
    worker: Option<Child>,
}

impl World {
    async fn drive(&mut self, spec: &RunSpec, worker_bin: &Path) -> Result<RunResult, BoxError> {
        self.sandbox.migrate(&spec.worker_env).await?;
        let mut worker_command = self.sandbox.command(&spec.worker_env);
        let api_base = if spec.relay {
            // `serve`: the API beside the worker, on a port of its own.
            let port = sandbox::free_port()?;
            worker_command
                .arg("serve")
                .env("WEBHOOKD_LISTEN", format!("127.0.0.1:{port}"));
            Some(format!("http://127.0.0.1:{port}"))
        } else {
            worker_command.arg("worker");
            None
        };
        worker_command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if spec.organizations.len() != spec.hooks.len() {
            return Err(format!(
                "the spec gives {} organizations for {} webhooks",
                spec.organizations.len(),
                spec.hooks.len()
            )
            .into());
        }
        // A paced run times its measured webhooks' receipts too, for the split of its latency.
        let mut timed: Vec<usize> = spec.timed.into_iter().collect();
        if spec.rate.is_some() {
            timed.extend(spec.latency_hooks());
        }
        let receiver = self
            .receiver
            .insert(Receiver::start_timing(spec.hooks.clone(), &timed).await?);

        let pool = self.sandbox.pool(2)?;
        let mut client = pool.get().await?;
        let mut webhook_ids = Vec::with_capacity(spec.hooks.len());
        for (index, &organization) in spec.organizations.iter().enumerate() {
            let new = NewWebhook::new(organization, None, receiver.url(index));
            let (id, _secret) = webhooks::create_webhook(&mut client, &new).await?;
            webhook_ids.push(id);
        }
        let relay_target = match &api_base {
            Some(base) => Some(RelayTarget {
                url: format!("{base}/api/relay/label-studio/"),
                token: api_tokens::create_token(&**client, MEASURED_ORGANIZATION, "bench").await?,
            }),
            None => None,
        };
        let measured_ids: Vec<i64> = spec
            .measured
            .iter()
            .filter_map(|&i| webhook_ids.get(i).copied())
            .collect();

        let topology = self.sandbox.topology.clone();
        let tag = self.sandbox.tag.clone();
        let connection: &Connection = self.sandbox.connection().await?;
        let channel = connection.create_channel().await?;
        // Declared by `webhookd migrate` already; again here so that a topology mismatch shows now.
        topology.declare(&channel).await?;

        let worker = self.worker.insert(
            worker_command
                .spawn()
                .map_err(|e| format!("starting {}: {e}", worker_bin.display()))?,
        );
        let pid = worker
            .id()
            .ok_or("the worker exited as soon as it started")?;

        // Wait until the worker consumes the work queue, so that latency counts no start-up.
        let started = Instant::now();
        loop {
            if let Some(status) = worker.try_wait()? {
                return Err(format!("the worker exited during start-up: {status}").into());
            }
            let queue = channel
                .queue_declare(
                    topology.work_queue().as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            if queue.consumer_count() > 0 {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err("the worker did not start consuming within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(base) = &api_base {
            sandbox::wait_ready(base, std::slice::from_mut(worker), Duration::from_secs(60))
                .await?;
        }

        let expected = spec.expected();
        let plan = Plan {
            exchange: topology.exchange.clone(),
            tag: tag.clone(),
            organization: MEASURED_ORGANIZATION,
            events: spec.events,
            rate: spec.rate,
            publishers: spec.publishers,
            window: spec.window,
        };
        let background_plan = spec.background.map(|b| Plan {
            exchange: topology.exchange.clone(),
            tag: format!("{}-org{}", tag, b.organization),
            organization: b.organization,
            events: b.events,
            rate: Some(b.rate),
            publishers: 1,
            window: spec.window,
        });
        let background_hooks = spec
            .background
            .map(|b| spec.hooks_of(b.organization))
            .unwrap_or_default();
        let publish_time = spec.rate.map(|r| spec.events as f64 / r).unwrap_or(0.0);
        let deadline = Duration::from_secs_f64(120.0 + publish_time + expected as f64 * 0.01);
        let before = Services::sample();
        let worker_startup_cpu_s = procstat::cpu_seconds(pid);
        let switches_at_start = procstat::context_switches(pid);
        let t0 = Instant::now();
        let mut disk = Vec::new();
        let mut disk_due = t0;
        if spec.disk_every.is_some() {
            disk.push(disk_sample(&client, 0.0).await?);
        }
        let publishing = async {
            let background = async {
                match &background_plan {
                    Some(p) => publish::publish(connection, p)
                        .await
                        .map(Some)
                        .map_err(|e| format!("the unmeasured stream: {e}")),
                    None => Ok(None),
                }
            };
            let main = async {
                match &relay_target {
                    Some(target) => relay::relay(target, &plan)
                        .await
                        .map(|r| (r.published, Some(r))),
                    None => publish::publish(connection, &plan).await.map(|p| (p, None)),
                }
            };
            let (main, background) = tokio::join!(main, background);
            Ok::<_, BoxError>((main?, background?))
        };
        tokio::pin!(publishing);
        let mut published = None;
        let (mut seen, mut seen_at) = (0u64, Instant::now());
        let mut peak_fds = 0usize;
        let retry_queue = topology.retry_queue();
        let mut retry_ready: Vec<u32> = Vec::new();
        let mut ticks = 0u64;
        let progress = loop {
            ticks += 1;
            if ticks % 10 == 1 {
                peak_fds = peak_fds.max(procstat::open_fds(pid).unwrap_or(0));
                let queue = channel
                    .queue_declare(
                        retry_queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| format!("sampling the retry queue: {e}"))?;
                retry_ready.push(queue.message_count());
            }
            tokio::select! {
                r = &mut publishing, if published.is_none() => { published = Some(r?); }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if let Some(every) = spec.disk_every {
                if Instant::now() >= disk_due {
                    disk_due += every;
                    let sample = disk_sample(&client, t0.elapsed().as_secs_f64()).await?;
                    eprintln!(
                        "bench: {:.0} s: database {:.1} MiB, {} events, {} log rows, {} partitions",
                        sample.at_s,
                        sample.bytes as f64 / 1_048_576.0,
                        sample.events,
                        sample.attempts,
                        sample.partitions
                    );
                    disk.push(sample);
                }
            }
            let p = receiver.progress(&spec.measured);
            if p.distinct >= expected && published.is_some() {
                break p;
            }
            if let Some(status) = worker.try_wait()? {
                return Err(format!(
                    "the worker exited ({status}) after {} of {expected} deliveries",
                    p.distinct
                )
                .into());
            }
            if p.distinct != seen {
                (seen, seen_at) = (p.distinct, Instant::now());
            } else if seen_at.elapsed() > STALL {
                return Err(format!(
                    "stalled: no new delivery for {} s; {} of {expected} received",
                    STALL.as_secs(),
                    p.distinct
                )
                .into());
            }
            if t0.elapsed() > deadline {
                return Err(format!(
                    "deadline of {} s passed; {} of {expected} deliveries received",
                    deadline.as_secs(),
                    p.distinct
                )
                .into());
            }
        };
        let background_requests = receiver.requests(&background_hooks);
        let ((published, relayed), background_published) =
            published.ok_or("publishing did not finish")?;

        // Every received delivery must also be in the log as succeeded (unless retention removes them).
        let logged_since = Instant::now();
        let logged = loop {
            if !spec.check_logged {
                break 0;
            }
            let row = client
                .query_one(
                    "SELECT count(DISTINCT delivery_id) FROM delivery_attempts
                      WHERE outcome = 'succeeded' AND webhook_id = ANY($1)",
                    &[&measured_ids],
                )
                .await?;
            let n: i64 = row.try_get(0)?;
            if n as u64 >= expected {
                break n as u64;
            }
            if logged_since.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "all {expected} deliveries were received but only {n} are logged as succeeded after 60 s"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let wall_s = t0.elapsed().as_secs_f64();
        let punctuality = match spec.timed {
            Some(hook) => {
                let id = webhook_ids
                    .get(hook)
                    .copied()
                    .ok_or_else(|| format!("the timed webhook {hook} does not exist"))?;
                Some(punctuality(&client, receiver, id, hook, spec.events).await?)
            }
            None => None,
        };
        let split = match spec.rate {
            Some(_) => {
                Some(latency_split(&client, receiver, &webhook_ids, &spec.latency_hooks()).await?)
            }
            None => None,
        };
        // Costs, just before the worker is killed.
        let peak_rss_mib = procstat::peak_rss_mib(pid);
        let worker_cpu_s = procstat::cpu_seconds(pid)
            .map(|end| (end - worker_startup_cpu_s.unwrap_or(0.0)).max(0.0));
        let worker_switches = procstat::context_switches(pid)
            .zip(switches_at_start)
            .map(|(end, start)| end.since(start));
        let services = Services::sample().since(&before);

        let attempts_by_outcome = client
            .query(
                "SELECT outcome, count(*) FROM delivery_attempts GROUP BY outcome ORDER BY outcome",
                &[],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, i64>(1)?)))
            .collect::<Result<Vec<_>, BoxError>>()?;
        drop(client);
        pool.close();

        let snapshot = receiver.snapshot(&spec.latency_hooks());
        let seconds = match (progress.first, progress.last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        Ok(RunResult {
            label: spec.label.clone(),
            events: spec.events,
            expected,
            deliveries: progress.distinct,
            logged,
            seconds,
            per_s: if seconds > 0.0 {
                progress.distinct as f64 / seconds
            } else {
                0.0
            },
            published,
            latency: Percentiles::of_micros(snapshot.latencies_us.clone()),
            receiver: snapshot,
            attempts_by_outcome,
            peak_rss_mib,
            worker_cpu_s,
            worker_startup_cpu_s,
            worker_switches,
            peak_fds,
            retry_queue_ready: (
                retry_ready.iter().copied().max().unwrap_or(0),
                retry_ready.iter().map(|&n| f64::from(n)).sum::<f64>()
                    / retry_ready.len().max(1) as f64,
            ),
            services,
            wall_s,
            punctuality,
            split,
            background: background_published.map(|published| BackgroundResult {
                organization: background_plan
                    .as_ref()
                    .map(|p| p.organization)
                    .unwrap_or_default(),
                published,
                requests: background_requests,
            }),
            disk,
            relay_response: relayed.and_then(|r| r.response),
            relay_start_lag: relayed.and_then(|r| r.start_lag),
        })
    }

    /// Kills the worker, stops the receiver, then removes the sandbox's names.
    async fn teardown(&mut self) -> Result<(), BoxError> {
        let mut problems = sandbox::kill_all(self.worker.take()).await;
        if let Some(receiver) = self.receiver.take() {
            receiver.stop().await;
        }
        if let Err(e) = self.sandbox.teardown().await {
            problems.push(e.to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; ").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LatencySplit;

    #[test]
    fn the_split_gives_the_medians_of_all_and_of_the_slowest_hundredth() {
        // 99 fast deliveries (1 ms before the claim, 0.5 ms after) and one slow before its claim.
        let mut pairs = vec![(1_000, 500); 99];
        pairs.push((20_000, 700));
        let split = LatencySplit::of_micros(&pairs).unwrap();
        assert_eq!(split.samples, 100);
        assert_eq!(split.all, (1.0, 0.5));
        assert_eq!(split.slowest_samples, 1);
        assert_eq!(split.slowest, (20.0, 0.7));
        assert!(LatencySplit::of_micros(&[]).is_none());
    }
}
