//! `scale` (issue 12): how the cost grows with the number of webhooks, with a backlog, and with the size of the
//! delivery log. Three parts, each usable alone (`scale webhooks`, `scale backlog`, `scale log`), each with its
//! own sandbox (database and RabbitMQ names), removed afterwards whatever happened.
//!
//! - *webhooks*: N webhooks over 1,000 organizations, inserted in bulk; the in-process cost of loading the
//!   subscription cache, of refreshing one organization and of matching one event; a real worker's RSS once it
//!   holds them all and the time it takes to see an UPDATE; `GET /api/webhooks/` p99 through a real API.
//! - *backlog*: events published while no worker runs, then one worker started: the drain rate per interval and
//!   the worker's RSS over time, against a `throughput`-style run made by the same worker just after.
//! - *log*: a delivery log of millions of rows over 30 daily partitions, generated in SQL; the listing (first
//!   page, a deep page, filtered by status and by action; per webhook and per organization), a delivery's detail
//!   and `recover` timed through a real API process, with the plan of each listing; and the time to drop the
//!   oldest partition.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::process::Child;
use webhookd_core::SubscriptionIndex;
use webhookd_store::delivery_log::{self, AttemptQuery, LogScope};
use webhookd_store::{api_tokens, retention, webhooks};

use crate::procstat;
use crate::publish::{self, Plan};
use crate::receiver::{Behavior, Receiver};
use crate::report::{median, num, round, Percentiles, Table};
use crate::sandbox::{self, Sandbox};
use crate::scenarios::Report;
use crate::world::MEASURED_ORGANIZATION;
use crate::BoxError;

/// One part of `scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Many webhooks.
    Webhooks,
    /// A long backlog.
    Backlog,
    /// A large delivery log.
    Log,
}

/// The sizes of `scale`.
#[derive(Debug, Clone)]
pub struct ScaleSizes {
    /// `tiny` or `full`.
    pub name: &'static str,
    /// *webhooks*: the totals measured, one sandbox each.
    pub webhook_totals: Vec<u64>,
    /// *webhooks*: the organizations they are spread over.
    pub organizations: i64,
    /// *webhooks*: timed one-organization refreshes (in process).
    pub refreshes: usize,
    /// *webhooks*: matched events (in process).
    pub matches: usize,
    /// *webhooks*, *log*: timed requests per API figure.
    pub requests: usize,
    /// *webhooks*: UPDATEs whose arrival in the worker's cache is timed.
    pub updates: usize,
    /// *backlog*: events queued before the worker starts.
    pub backlog_events: u64,
    /// *backlog*: events of the `throughput`-style run that follows the drain.
    pub throughput_events: u64,
    /// *backlog*: the length of each rate interval.
    pub interval: Duration,
    /// *log*: events; each is delivered to its organization's `log_hooks` webhooks (one row each, two for the
    /// ~3 % retried once).
    pub log_events: i64,
    /// *log*: organizations.
    pub log_organizations: i64,
    /// *log*: webhooks per organization.
    pub log_hooks: i64,
    /// *log*: daily partitions (the oldest begins at UTC midnight `log_days - 1` days ago).
    pub log_days: i64,
    /// *log*: timed `recover` requests per figure (each queues its redeliveries).
    pub recovers: usize,
}

impl ScaleSizes {
    /// The sizes.
    pub fn full() -> Self {
        Self {
            name: "full",
            webhook_totals: vec![10, 1_000, 10_000, 100_000],
            organizations: 1_000,
            refreshes: 500,
            matches: 1_000_000,
            requests: 200,
            updates: 10,
            backlog_events: 1_000_000,
            throughput_events: 50_000,
            interval: Duration::from_secs(10),
            log_events: 1_000_000,
            log_organizations: 10,
            log_hooks: 10,
            log_days: 30,
            recovers: 20,
        }
    }

    /// Seconds, for tests.
    pub fn tiny() -> Self {
        Self {
            name: "tiny",
            webhook_totals: vec![10, 200],
            organizations: 20,
            refreshes: 20,
            matches: 10_000,
            requests: 10,
            updates: 2,
            backlog_events: 1_000,
            throughput_events: 500,
            interval: Duration::from_millis(500),
            log_events: 2_000,
            log_organizations: 2,
            log_hooks: 3,
            log_days: 3,
            recovers: 3,
        }
    }
}

/// Runs `parts`, each in its own sandbox; one report each.
pub async fn run(sizes: &ScaleSizes, parts: &[Part], bin: &Path) -> Result<Vec<Report>, BoxError> {
    let mut reports = Vec::new();
    for &part in parts {
        let report = match part {
            Part::Webhooks => webhooks_part(sizes, bin).await?,
            Part::Backlog => backlog_part(sizes, bin).await?,
            Part::Log => log_part(sizes, bin).await?,
        };
        reports.push(report);
    }
    Ok(reports)
}

/// A sandbox and the processes that use it, removed whatever happens.
struct Stage {
    sandbox: Sandbox,
    children: Vec<Child>,
    receiver: Option<Receiver>,
}

impl Stage {
    fn new(bin: &Path) -> Result<Self, BoxError> {
        Ok(Self {
            sandbox: Sandbox::new(bin, None)?,
            children: Vec::new(),
            receiver: None,
        })
    }

    /// Starts `webhookd <command>` with `env` and its ops (or API) listener on a free port; returns the
    /// process id and the base URL.
    fn spawn(
        &mut self,
        command: &str,
        env: &[(&'static str, String)],
    ) -> Result<(u32, String), BoxError> {
        let port = sandbox::free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = self.sandbox.command(env);
        cmd.arg(command)
            .env(
                if command == "worker" {
                    "WEBHOOKD_OPS_LISTEN"
                } else {
                    "WEBHOOKD_LISTEN"
                },
                &listen,
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting webhookd {command}: {e}"))?;
        let pid = child
            .id()
            .ok_or_else(|| format!("webhookd {command} exited as soon as it started"))?;
        self.children.push(child);
        Ok((pid, format!("http://{listen}")))
    }

    /// Fails if one of the processes has exited.
    fn check_alive(&mut self) -> Result<(), BoxError> {
        sandbox::alive(&mut self.children)
    }

    async fn teardown(&mut self) -> Result<(), BoxError> {
        let mut problems = sandbox::kill_all(self.children.drain(..)).await;
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

/// Runs `body` on a fresh stage, then removes it whatever happened (also on Ctrl-C).
async fn staged<T, F>(bin: &Path, body: F) -> Result<T, BoxError>
where
    F: for<'a> FnOnce(
        &'a mut Stage,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<T, BoxError>> + 'a>,
    >,
{
    let mut stage = Stage::new(bin)?;
    let result = tokio::select! {
        r = body(&mut stage) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    let cleaned = stage.teardown().await;
    match (result, cleaned) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(e)) => Err(format!("clean-up failed: {e}").into()),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(format!("{e} (and clean-up failed: {c})").into()),
    }
}

fn http_client() -> Result<reqwest::Client, BoxError> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()?)
}

/// The value of the Prometheus sample whose name and labels are exactly `series`.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn metrics(client: &reqwest::Client, base: &str) -> Option<String> {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// `VmRSS` and `VmHWM` of a process, MiB.
fn rss_mib(pid: u32) -> (Option<f64>, Option<f64>) {
    (
        procstat::status_mib(pid, "VmRSS:"),
        procstat::status_mib(pid, "VmHWM:"),
    )
}

/// Times `n` requests made by `make`, each of which must answer `expect`; milliseconds.
async fn time_requests(
    n: usize,
    expect: u16,
    mut make: impl FnMut(usize) -> reqwest::RequestBuilder,
) -> Result<Percentiles, BoxError> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let response = make(i).send().await?;
        let status = response.status().as_u16();
        let body = response.bytes().await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        if status != expect {
            return Err(format!(
                "answered {status} instead of {expect}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )
            .into());
        }
    }
    Percentiles::of_millis(samples).ok_or_else(|| "no requests were timed".into())
}

fn millis(p: &Percentiles) -> Value {
    json!({"p50": round(p.p50, 3), "p99": round(p.p99, 3), "max": round(p.max, 3), "samples": p.samples})
}

fn percentiles_of(samples: Vec<f64>) -> Result<Percentiles, BoxError> {
    Percentiles::of_millis(samples).ok_or_else(|| "no samples".into())
}

// ---------------------------------------------------------------------------------------------------------
// webhooks

/// Inserts `total` webhooks over `organizations` organizations in bulk: every third project-scoped, every
/// fourth with an action list, each with its own valid secret.
async fn insert_webhooks(
    client: &tokio_postgres::Client,
    total: u64,
    organizations: i64,
) -> Result<(), BoxError> {
    client
        .execute(
            "INSERT INTO organizations (id) SELECT g FROM generate_series(1, $1::int8) g ON CONFLICT DO NOTHING",
            &[&organizations],
        )
        .await?;
    // The secret: whsec_ and the base64 of 32 bytes (a SHA-256), as the store writes them.
    client
        .execute(
            "INSERT INTO webhooks (organization, project, url, send_for_all_actions, headers, secret)
             SELECT 1 + (g - 1) % $2::int8,
                    CASE WHEN g % 3 = 0 THEN 1 + g % 50 END,
                    'http://127.0.0.1:9/hooks/' || g,
                    g % 4 <> 0,
                    CASE WHEN g % 5 = 0 THEN '{\"Authorization\": \"Bearer x\"}'::jsonb ELSE '{}'::jsonb END,
                    'whsec_' || encode(sha256(('scale-' || g)::bytea), 'base64')
               FROM generate_series(1, $1::int8) g",
            &[&(total as i64), &organizations],
        )
        .await?;
    client
        .batch_execute(
            "INSERT INTO webhook_actions (webhook_id, action)
             SELECT w.id, a FROM webhooks w,
                    unnest(ARRAY['TASKS_CREATED', 'ANNOTATION_CREATED', 'ANNOTATION_UPDATED']) a
              WHERE NOT w.send_for_all_actions;
             ANALYZE webhooks; ANALYZE webhook_actions; ANALYZE organizations;",
        )
        .await?;
    Ok(())
}

/// One total's figures.
struct WebhooksRun {
    total: u64,
    load_ms: Vec<f64>,
    index_ms: Vec<f64>,
    refresh: Percentiles,
    match_ns: f64,
    worker_loaded_s: f64,
    rss: (Option<f64>, Option<f64>),
    rss_after_updates: (Option<f64>, Option<f64>),
    /// After the worker's minutely full reload (full scale, largest total only): RSS, HWM, and how long it took.
    after_full_reload: Option<(Option<f64>, Option<f64>, f64)>,
    seen_update: Percentiles,
    api_list: Percentiles,
    api_list_size: usize,
}

impl WebhooksRun {
    fn to_json(&self) -> Value {
        json!({
            "webhooks": self.total,
            "load_all_ms": self.load_ms.iter().map(|v| round(*v, 2)).collect::<Vec<_>>(),
            "index_new_ms": self.index_ms.iter().map(|v| round(*v, 2)).collect::<Vec<_>>(),
            "refresh_one_organization_ms": millis(&self.refresh),
            "match_ns_per_event": round(self.match_ns, 1),
            "worker_loaded_s": round(self.worker_loaded_s, 3),
            "worker_rss_mib": self.rss.0.map(|v| round(v, 1)),
            "worker_hwm_mib": self.rss.1.map(|v| round(v, 1)),
            "worker_rss_after_updates_mib": self.rss_after_updates.0.map(|v| round(v, 1)),
            "worker_hwm_after_updates_mib": self.rss_after_updates.1.map(|v| round(v, 1)),
            "worker_rss_after_full_reload_mib": self.after_full_reload.and_then(|r| r.0).map(|v| round(v, 1)),
            "worker_hwm_after_full_reload_mib": self.after_full_reload.and_then(|r| r.1).map(|v| round(v, 1)),
            "worker_full_reload_ms": self.after_full_reload.map(|r| round(r.2, 1)),
            "worker_sees_update_ms": millis(&self.seen_update),
            "api_list_webhooks_ms": millis(&self.api_list),
            "api_list_webhooks_size": self.api_list_size,
        })
    }
}

async fn webhooks_part(sizes: &ScaleSizes, bin: &Path) -> Result<Report, BoxError> {
    let mut runs = Vec::new();
    for &total in &sizes.webhook_totals {
        eprintln!(
            "bench: scale webhooks: {total} webhooks over {} organizations",
            sizes.organizations
        );
        let sizes = sizes.clone();
        let run = staged(bin, move |stage| {
            Box::pin(webhooks_run(stage, sizes, total))
        })
        .await?;
        eprintln!(
            "bench: scale webhooks: {total}: load {:.1} ms, refresh p99 {:.3} ms, match {:.0} ns, worker RSS {} MiB",
            run.load_ms.first().copied().unwrap_or(0.0),
            run.refresh.p99,
            run.match_ns,
            num(run.rss.0, 1)
        );
        runs.push(run);
    }
    let mut table = Table::new(
        format!(
            "scale webhooks ({} scale): webhooks over {} organizations",
            sizes.name, sizes.organizations
        ),
        runs.iter().map(|r| r.total.to_string()).collect(),
    );
    let mut row = |name: &str, f: &dyn Fn(&WebhooksRun) -> String| {
        table.row(name, runs.iter().map(f).collect());
    };
    row("load all (query), ms, median", &|r| {
        num(Some(median(r.load_ms.clone())), 1)
    });
    row("SubscriptionIndex::new, ms, median", &|r| {
        num(Some(median(r.index_ms.clone())), 1)
    });
    row("refresh one org p50 ms", &|r| num(Some(r.refresh.p50), 3));
    row("refresh one org p99 ms", &|r| num(Some(r.refresh.p99), 3));
    row("match, ns/event", &|r| num(Some(r.match_ns), 0));
    row("worker start → cache loaded, s", &|r| {
        num(Some(r.worker_loaded_s), 2)
    });
    row("worker VmRSS, MiB", &|r| num(r.rss.0, 1));
    row("worker VmHWM, MiB", &|r| num(r.rss.1, 1));
    row("worker VmHWM after updates, MiB", &|r| {
        num(r.rss_after_updates.1, 1)
    });
    row("worker VmHWM after its minutely full reload, MiB", &|r| {
        num(r.after_full_reload.and_then(|a| a.1), 1)
    });
    row("worker's minutely full reload, ms", &|r| {
        num(r.after_full_reload.map(|a| a.2), 1)
    });
    row("UPDATE → worker's cache p50 ms", &|r| {
        num(Some(r.seen_update.p50), 1)
    });
    row("UPDATE → worker's cache max ms", &|r| {
        num(Some(r.seen_update.max), 1)
    });
    row("GET /api/webhooks/ (org 1) p50 ms", &|r| {
        num(Some(r.api_list.p50), 2)
    });
    row("GET /api/webhooks/ (org 1) p99 ms", &|r| {
        num(Some(r.api_list.p99), 2)
    });
    row("webhooks in that answer", &|r| r.api_list_size.to_string());
    let largest = runs.last();
    let json = json!({
        "scenario": "scale-webhooks",
        "scale": sizes.name,
        "organizations": sizes.organizations,
        "runs": runs.iter().map(WebhooksRun::to_json).collect::<Vec<_>>(),
        "rss_target_mib": 96,
        "rss_target_met": largest
            .and_then(|r| r.after_full_reload.and_then(|a| a.1).or(r.rss_after_updates.1))
            .map(|hwm| hwm <= 96.0),
    });
    Ok(Report {
        table,
        summary: None,
        json,
    })
}

async fn webhooks_run(
    stage: &mut Stage,
    sizes: ScaleSizes,
    total: u64,
) -> Result<WebhooksRun, BoxError> {
    stage.sandbox.migrate(&[]).await?;
    let pool = stage.sandbox.pool(2)?;
    let client = pool.get().await?;
    insert_webhooks(&client, total, sizes.organizations).await?;

    // In process: what the worker's cache does, without the worker.
    let (mut load_ms, mut index_ms) = (Vec::new(), Vec::new());
    let mut index = SubscriptionIndex::default();
    for _ in 0..3 {
        let t = Instant::now();
        let subs = webhooks::load_subscriptions(&**client, None).await?;
        load_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if subs.len() as u64 != total {
            return Err(format!("{} of {total} webhooks loaded", subs.len()).into());
        }
        let t = Instant::now();
        index = SubscriptionIndex::new(subs);
        index_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let orgs = sizes.organizations.min(total as i64).max(1);
    let mut refresh = Vec::with_capacity(sizes.refreshes);
    for i in 0..sizes.refreshes {
        let org = 1 + (i as i64 * 7919) % orgs;
        let t = Instant::now();
        let subs = webhooks::load_subscriptions(&**client, Some(org)).await?;
        index = index.with_organization(org, subs);
        refresh.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let actions = [
        "TASKS_CREATED",
        "ANNOTATION_CREATED",
        "PROJECT_UPDATED",
        "TASKS_DELETED",
    ];
    let t = Instant::now();
    let mut matched = 0usize;
    for i in 0..sizes.matches {
        let org = 1 + (i as i64 * 7919) % orgs;
        let project = (i % 2 == 0).then_some(1 + (i as i64 % 50));
        let found = index.matching(org, project, actions[i % actions.len()]);
        matched += std::hint::black_box(found).len();
    }
    let match_ns = t.elapsed().as_secs_f64() * 1e9 / sizes.matches.max(1) as f64;
    eprintln!(
        "bench: scale webhooks: {total}: {matched} matches over {} events",
        sizes.matches
    );
    drop(index);

    // A real worker: RSS once it holds every webhook, and how long an UPDATE takes to reach it.
    let http = http_client()?;
    let started = Instant::now();
    let (pid, ops) = stage.spawn("worker", &[])?;
    loop {
        stage.check_alive()?;
        let loaded = metrics(&http, &ops)
            .await
            .and_then(|m| metric(&m, "webhookd_cached_webhooks"));
        if loaded == Some(total as f64) {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "the worker did not load {total} webhooks within 300 s (it has {loaded:?})"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let worker_loaded_s = started.elapsed().as_secs_f64();
    // Let start-up settle (consumers, connections) before RSS is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_mib(pid);
    let series = "webhookd_subscription_refresh_seconds_count{scope=\"organizations\"}";
    let mut seen = Vec::new();
    for u in 0..sizes.updates {
        let before = metrics(&http, &ops)
            .await
            .and_then(|m| metric(&m, series))
            .unwrap_or(0.0);
        let id = 1 + (u as i64 * 104_729) % total as i64;
        let t = Instant::now();
        client
            .execute(
                "UPDATE webhooks SET url = url || '?u' WHERE id = $1",
                &[&id],
            )
            .await?;
        loop {
            let now = metrics(&http, &ops)
                .await
                .and_then(|m| metric(&m, series))
                .unwrap_or(0.0);
            if now > before {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                return Err("the worker did not refresh within 30 s of an UPDATE".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        seen.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rss_after_updates = rss_mib(pid);
    // The largest total at full scale also waits for the worker's minutely full reload (start-up makes two:
    // before and after its listener connects), which re-reads every webhook next to the cache it replaces.
    let after_full_reload =
        if sizes.name == "full" && sizes.webhook_totals.iter().max() == Some(&total) {
            let all = |m: &str, what: &str| {
                metric(
                    m,
                    &format!("webhookd_subscription_refresh_seconds_{what}{{scope=\"all\"}}"),
                )
            };
            let first = metrics(&http, &ops).await.unwrap_or_default();
            let (count0, sum0) = (all(&first, "count"), all(&first, "sum"));
            let t = Instant::now();
            loop {
                stage.check_alive()?;
                let now = metrics(&http, &ops).await.unwrap_or_default();
                if let (Some(c), Some(s), Some(c0), Some(s0)) =
                    (all(&now, "count"), all(&now, "sum"), count0, sum0)
                {
                    if c > c0 {
                        let (rss, hwm) = rss_mib(pid);
                        break Some((rss, hwm, (s - s0) * 1000.0 / (c - c0)));
                    }
                }
                if t.elapsed() > Duration::from_secs(90) {
                    return Err("the worker made no full reload within 90 s".into());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        } else {
            None
        };

    // A real API: the webhooks of organization 1 (total / organizations of them).
    let (_, api) = stage.spawn("api", &[])?;
    sandbox::wait_ready(&api, &mut stage.children, Duration::from_secs(120)).await?;
    let token = api_tokens::create_token(&**client, 1, "scale").await?;
    let url = format!("{api}/api/webhooks/");
    let listed_body = http
        .get(&url)
        .header("Authorization", format!("Token {token}"))
        .send()
        .await?
        .bytes()
        .await?;
    let listed: Vec<Value> = serde_json::from_slice(&listed_body)
        .map_err(|e| format!("GET /api/webhooks/ did not answer a list: {e}"))?;
    let api_list = time_requests(sizes.requests, 200, |_| {
        http.get(&url)
            .header("Authorization", format!("Token {token}"))
    })
    .await?;
    drop(client);
    pool.close();
    Ok(WebhooksRun {
        total,
        load_ms,
        index_ms,
        refresh: percentiles_of(refresh)?,
        match_ns,
        worker_loaded_s,
        rss,
        rss_after_updates,
        after_full_reload,
        seen_update: percentiles_of(seen)?,
        api_list,
        api_list_size: listed.len(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// backlog

struct BacklogRun {
    events: u64,
    publish_s: f64,
    /// (seconds since the first receipt, deliveries/s over the interval, VmRSS MiB)
    intervals: Vec<(f64, f64, Option<f64>)>,
    drain_s: f64,
    drain_per_s: f64,
    throughput_events: u64,
    throughput_per_s: f64,
    hwm_mib: Option<f64>,
    logged: i64,
}

async fn backlog_part(sizes: &ScaleSizes, bin: &Path) -> Result<Report, BoxError> {
    let s = sizes.clone();
    let run = staged(bin, move |stage| Box::pin(backlog_run(stage, s))).await?;
    // The full intervals only: the last one is partial.
    let full: Vec<&(f64, f64, Option<f64>)> = if run.intervals.len() > 1 {
        run.intervals[..run.intervals.len() - 1].iter().collect()
    } else {
        run.intervals.iter().collect()
    };
    let rates: Vec<f64> = full.iter().map(|i| i.1).collect();
    let (lo, hi) = (
        rates.iter().copied().fold(f64::INFINITY, f64::min),
        rates.iter().copied().fold(0.0, f64::max),
    );
    let rss: Vec<f64> = run.intervals.iter().filter_map(|i| i.2).collect();
    let (rss_lo, rss_hi) = (
        rss.iter().copied().fold(f64::INFINITY, f64::min),
        rss.iter().copied().fold(0.0, f64::max),
    );
    let ratio = run.drain_per_s / run.throughput_per_s.max(1e-9);
    let mut table = Table::new(
        format!(
            "scale backlog ({} scale): {} events queued, then one worker; then {} events as fast as possible",
            sizes.name, run.events, run.throughput_events
        ),
        vec!["value".into()],
    );
    table.row(
        "publishing the backlog, s",
        vec![num(Some(run.publish_s), 1)],
    );
    table.row(
        "drain, s (first → last receipt)",
        vec![num(Some(run.drain_s), 1)],
    );
    table.row(
        "drain, deliveries/s (whole)",
        vec![num(Some(run.drain_per_s), 0)],
    );
    table.row(
        &format!(
            "per {:.0} s interval, lowest / highest",
            sizes.interval.as_secs_f64()
        ),
        vec![format!("{} / {}", num(Some(lo), 0), num(Some(hi), 0))],
    );
    table.row(
        "throughput-style run, deliveries/s",
        vec![num(Some(run.throughput_per_s), 0)],
    );
    table.row("drain / throughput", vec![num(Some(ratio), 3)]);
    table.row(
        "lowest interval / throughput",
        vec![num(Some(lo / run.throughput_per_s.max(1e-9)), 3)],
    );
    table.row(
        "worker VmRSS over the drain, MiB (lowest / highest)",
        vec![format!(
            "{} / {}",
            num(Some(rss_lo), 1),
            num(Some(rss_hi), 1)
        )],
    );
    table.row("worker VmHWM, MiB", vec![num(run.hwm_mib, 1)]);
    table.row("logged as succeeded", vec![run.logged.to_string()]);
    let mut timeline = Table::new(
        format!(
            "scale backlog: drain rate and worker RSS per {:.0} s",
            sizes.interval.as_secs_f64()
        ),
        vec!["deliveries/s".into(), "VmRSS MiB".into()],
    );
    for (at, rate, rss) in &run.intervals {
        timeline.row(
            &format!("{at:.0} s"),
            vec![num(Some(*rate), 0), num(*rss, 1)],
        );
    }
    let json = json!({
        "scenario": "scale-backlog",
        "scale": sizes.name,
        "events": run.events,
        "publish_s": round(run.publish_s, 2),
        "drain_s": round(run.drain_s, 2),
        "drain_per_s": round(run.drain_per_s, 1),
        "interval_s": sizes.interval.as_secs_f64(),
        "intervals": run.intervals.iter().map(|(at, rate, rss)| json!({"at_s": round(*at, 1), "per_s": round(*rate, 1), "rss_mib": rss.map(|v| round(v, 1))})).collect::<Vec<_>>(),
        "throughput_events": run.throughput_events,
        "throughput_per_s": round(run.throughput_per_s, 1),
        "drain_over_throughput": round(ratio, 3),
        "lowest_interval_over_throughput": round(lo / run.throughput_per_s.max(1e-9), 3),
        "within_10_percent": ratio >= 0.9,
        "rss_low_mib": round(rss_lo, 1),
        "rss_high_mib": round(rss_hi, 1),
        "peak_rss_mib": run.hwm_mib.map(|v| round(v, 1)),
        "logged": run.logged,
        "deliveries": run.events + run.throughput_events,
        "expected_deliveries": run.events + run.throughput_events,
    });
    Ok(Report {
        table,
        summary: Some(timeline),
        json,
    })
}

async fn backlog_run(stage: &mut Stage, sizes: ScaleSizes) -> Result<BacklogRun, BoxError> {
    stage.sandbox.migrate(&[]).await?;
    let receiver = stage
        .receiver
        .insert(Receiver::start(vec![Behavior::Healthy]).await?);
    let url = receiver.url(0);
    let pool = stage.sandbox.pool(2)?;
    let mut client = pool.get().await?;
    let new = webhooks::NewWebhook::new(MEASURED_ORGANIZATION, None, url);
    webhooks::create_webhook(&mut client, &new).await?;
    let exchange = stage.sandbox.topology.exchange.clone();
    let tag = stage.sandbox.tag.clone();
    let connection = stage.sandbox.connection().await?;
    let plan = |events: u64, tag: String| Plan {
        exchange: exchange.clone(),
        tag,
        organization: MEASURED_ORGANIZATION,
        events,
        rate: None,
        publishers: 2,
        window: 500,
    };
    eprintln!(
        "bench: scale backlog: publishing {} events with no worker",
        sizes.backlog_events
    );
    let published = publish::publish(connection, &plan(sizes.backlog_events, tag.clone())).await?;
    eprintln!(
        "bench: scale backlog: {} events queued in {:.1} s; starting the worker",
        published.events, published.seconds
    );
    let (pid, _) = stage.spawn("worker", &[])?;
    let total = sizes.backlog_events;
    let mut intervals = Vec::new();
    let stall = Duration::from_secs(60);
    let (mut last_seen, mut last_change) = (0u64, Instant::now());
    // Wait for the first receipt, then sample at every interval.
    let first = loop {
        stage.check_alive()?;
        let receiver = stage.receiver.as_ref().ok_or("no receiver")?;
        let p = receiver.progress(&[0]);
        if let Some(first) = p.first {
            break first;
        }
        if last_change.elapsed() > stall {
            return Err("the worker delivered nothing within 60 s of starting".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut due = first + sizes.interval;
    let mut previous = (first, 0u64);
    let drained_at = loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        stage.check_alive()?;
        let receiver = stage.receiver.as_ref().ok_or("no receiver")?;
        let p = receiver.progress(&[0]);
        let now = Instant::now();
        if p.distinct != last_seen {
            (last_seen, last_change) = (p.distinct, now);
        } else if last_change.elapsed() > stall {
            return Err(format!("stalled at {} of {total} deliveries", p.distinct).into());
        }
        let done = p.distinct >= total;
        if now >= due || done {
            let end = if done { p.last.unwrap_or(now) } else { now };
            let span = end.duration_since(previous.0).as_secs_f64().max(1e-9);
            let rate = (p.distinct - previous.1) as f64 / span;
            intervals.push((
                end.duration_since(first).as_secs_f64(),
                rate,
                rss_mib(pid).0,
            ));
            eprintln!(
                "bench: scale backlog: {:.0} s: {} of {total}, {rate:.0}/s, RSS {} MiB",
                end.duration_since(first).as_secs_f64(),
                p.distinct,
                num(rss_mib(pid).0, 1)
            );
            previous = (end, p.distinct);
            due += sizes.interval;
        }
        if done {
            break p.last.unwrap_or(now);
        }
    };
    let drain_s = drained_at.duration_since(first).as_secs_f64();
    // The same worker, now idle, as `throughput` measures it: events published as fast as confirmed.
    eprintln!(
        "bench: scale backlog: drained; {} events with the worker running",
        sizes.throughput_events
    );
    let before = last_seen;
    let target = before + sizes.throughput_events;
    let connection = stage.sandbox.connection().await?;
    let throughput_plan = plan(sizes.throughput_events, format!("{tag}-t"));
    let publishing = publish::publish(connection, &throughput_plan);
    tokio::pin!(publishing);
    let mut published_t = false;
    let mut first_new = None;
    let (mut seen, mut changed) = (before, Instant::now());
    let last_new = loop {
        tokio::select! {
            r = &mut publishing, if !published_t => { r?; published_t = true; }
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
        sandbox::alive(&mut stage.children)?;
        let receiver = stage.receiver.as_ref().ok_or("no receiver")?;
        let p = receiver.progress(&[0]);
        if p.distinct > before && first_new.is_none() {
            first_new = Some(Instant::now());
        }
        if p.distinct != seen {
            (seen, changed) = (p.distinct, Instant::now());
        } else if changed.elapsed() > stall {
            return Err(format!("the throughput run stalled at {} of {target}", p.distinct).into());
        }
        if p.distinct >= target && published_t {
            break p.last;
        }
    };
    let throughput_per_s = match (first_new, last_new) {
        (Some(a), Some(b)) if b > a => {
            sizes.throughput_events as f64 / b.duration_since(a).as_secs_f64()
        }
        _ => 0.0,
    };
    let hwm_mib = procstat::peak_rss_mib(pid);
    // Every delivery logged.
    let expected = (total + sizes.throughput_events) as i64;
    let waited = Instant::now();
    let logged = loop {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM delivery_attempts WHERE outcome = 'succeeded'",
                &[],
            )
            .await?
            .try_get(0)?;
        if n >= expected || waited.elapsed() > Duration::from_secs(60) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if logged < expected {
        return Err(
            format!("{logged} of {expected} deliveries logged as succeeded after 60 s").into(),
        );
    }
    drop(client);
    pool.close();
    Ok(BacklogRun {
        events: total,
        publish_s: published.seconds,
        intervals,
        drain_s,
        drain_per_s: total as f64 / drain_s.max(1e-9),
        throughput_events: sizes.throughput_events,
        throughput_per_s,
        hwm_mib,
        logged,
    })
}

// ---------------------------------------------------------------------------------------------------------
// log

/// The actions of the generated log, with their share in thousandths (cumulative upper bounds).
const LOG_ACTIONS: [(&str, i64); 6] = [
    ("TASKS_CREATED", 400),
    ("ANNOTATION_CREATED", 700),
    ("ANNOTATION_UPDATED", 900),
    ("TASKS_DELETED", 950),
    ("PROJECT_UPDATED", 990),
    ("PROJECT_CREATED", 1000),
];

/// The rare action the action filter asks for (1 % of the rows).
const RARE_ACTION: &str = "PROJECT_CREATED";

/// The log's figures.
struct LogRun {
    rows: i64,
    partitions: i64,
    generate_s: f64,
    vacuum_s: f64,
    size_mib: f64,
    /// (name, percentiles, plan summary)
    figures: Vec<(String, Percentiles, String)>,
    recovered: Vec<(String, i64)>,
    drop_partition_ms: f64,
}

async fn log_part(sizes: &ScaleSizes, bin: &Path) -> Result<Report, BoxError> {
    let s = sizes.clone();
    let run = staged(bin, move |stage| Box::pin(log_run(stage, s))).await?;
    let mut table = Table::new(
        format!(
            "scale log ({} scale): {} attempt rows over {} daily partitions ({} organizations × {} webhooks)",
            sizes.name, run.rows, run.partitions, sizes.log_organizations, sizes.log_hooks
        ),
        vec!["p50 ms".into(), "p99 ms".into(), "max ms".into(), "plan".into()],
    );
    for (name, p, plan) in &run.figures {
        table.row(
            name,
            vec![
                num(Some(p.p50), 2),
                num(Some(p.p99), 2),
                num(Some(p.max), 2),
                plan.clone(),
            ],
        );
    }
    let mut summary = Table::new("scale log: generation and retention", vec!["value".into()]);
    summary.row("generating (SQL), s", vec![num(Some(run.generate_s), 1)]);
    summary.row("VACUUM ANALYZE, s", vec![num(Some(run.vacuum_s), 1)]);
    summary.row("database size, MiB", vec![num(Some(run.size_mib), 0)]);
    for (name, n) in &run.recovered {
        summary.row(
            &format!("{name}: redelivered per call"),
            vec![n.to_string()],
        );
    }
    summary.row(
        "drop the oldest partition, ms",
        vec![num(Some(run.drop_partition_ms), 1)],
    );
    let listing_p99 = run
        .figures
        .iter()
        .filter(|(n, _, _)| !n.starts_with("recover"))
        .map(|(_, p, _)| p.p99)
        .fold(0.0, f64::max);
    let json = json!({
        "scenario": "scale-log",
        "scale": sizes.name,
        "rows": run.rows,
        "partitions": run.partitions,
        "generate_s": round(run.generate_s, 1),
        "vacuum_s": round(run.vacuum_s, 1),
        "database_mib": round(run.size_mib, 0),
        "figures": run.figures.iter().map(|(n, p, plan)| {
            let mut m = Map::new();
            m.insert("name".into(), json!(n));
            m.insert("ms".into(), millis(p));
            m.insert("plan".into(), json!(plan));
            Value::Object(m)
        }).collect::<Vec<_>>(),
        "recovered_per_call": run.recovered.iter().map(|(n, c)| json!({"name": n, "redelivered": c})).collect::<Vec<_>>(),
        "drop_partition_ms": round(run.drop_partition_ms, 2),
        "listing_and_detail_p99_ms": round(listing_p99, 2),
        "target_met": listing_p99 <= 50.0,
    });
    Ok(Report {
        table,
        summary: Some(summary),
        json,
    })
}

/// A short account of a plan: its scans (node and relation, with how many partitions each read), the rows
/// filters removed, and the execution time.
fn plan_summary(lines: &[String]) -> String {
    let mut scans: Vec<(String, usize)> = Vec::new();
    let mut removed = 0i64;
    let mut time = String::new();
    for line in lines {
        let l = line.trim().trim_start_matches("->").trim();
        if let Some(rest) = l.strip_prefix("Rows Removed by Filter:") {
            removed += rest.trim().parse::<i64>().unwrap_or(0);
        }
        if let Some(rest) = l.strip_prefix("Execution Time:") {
            time = rest.trim().to_owned();
        }
        if l.contains(" Scan") && (l.contains(" on ") || l.contains(" using ")) {
            // "Index Scan using delivery_attempts_20261201_webhook_id_created_at_id_idx on delivery_attempts_20261201"
            let node = l.split(" on ").next().unwrap_or(l);
            let node = node.split('(').next().unwrap_or(node).trim();
            // Partition names differ by date: keep the index's kind, not the partition.
            let generic: String = node
                .split_whitespace()
                .map(|w| {
                    if w.starts_with("delivery_attempts_") {
                        let tail = w.trim_start_matches("delivery_attempts_");
                        let tail =
                            tail.trim_start_matches(|c: char| c.is_ascii_digit() || c == '_');
                        format!("…{tail}")
                    } else {
                        w.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            match scans.iter_mut().find(|(n, _)| *n == generic) {
                Some((_, k)) => *k += 1,
                None => scans.push((generic, 1)),
            }
        }
        if l.starts_with("Subplans Removed:") {
            scans.push((l.to_owned(), 0));
        }
    }
    let scans: Vec<String> = scans
        .into_iter()
        .map(|(n, k)| if k > 1 { format!("{k}× {n}") } else { n })
        .collect();
    format!(
        "{}; filter removed {removed} rows; {time}",
        scans.join(", ")
    )
}

async fn log_run(stage: &mut Stage, sizes: ScaleSizes) -> Result<LogRun, BoxError> {
    stage.sandbox.migrate(&[]).await?;
    let pool = stage.sandbox.pool(2)?;
    let client = pool.get().await?;
    let (orgs, hooks, days, events) = (
        sizes.log_organizations,
        sizes.log_hooks,
        sizes.log_days,
        sizes.log_events,
    );
    let generating = Instant::now();
    // Webhooks o·1000 + h of organization o, with valid secrets.
    client
        .execute(
            "INSERT INTO organizations (id) SELECT o FROM generate_series(1, $1::int8) o",
            &[&orgs],
        )
        .await?;
    client
        .execute(
            "INSERT INTO webhooks (id, organization, url, secret)
             SELECT o * 1000 + h, o, 'http://127.0.0.1:9/o' || o || '/h' || h,
                    'whsec_' || encode(sha256(('log-' || o || '-' || h)::bytea), 'base64')
               FROM generate_series(1, $1::int8) o, generate_series(0, $2::int8 - 1) h",
            &[&orgs, &hooks],
        )
        .await?;
    // Daily partitions: the past ones named and bounded as the store's function names and bounds its own
    // (which only makes them from now on), then the store's function for today and ahead.
    for d in (1..days).rev() {
        client
            .batch_execute(&format!(
                "DO $$ DECLARE lo timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                                 - interval '{d} days';
                 BEGIN
                   EXECUTE format('CREATE TABLE %I PARTITION OF delivery_attempts FOR VALUES FROM (%L) TO (%L)',
                                  'delivery_attempts_' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD'), lo, lo + interval '1 day');
                 END $$"
            ))
            .await?;
    }
    retention::ensure_partitions(
        &**client,
        Duration::from_secs(86_400),
        Duration::from_secs(86_400),
    )
    .await?;
    // Events n = 0 … events-1, evenly from UTC midnight days-1 days ago until now; organization 1 + n % orgs.
    // Each to its organization's webhooks: ~1 % dead (one attempt), ~1 % failed with the retry overdue (lost),
    // ~3 % failed then succeeded 30 s later (two rows), the rest succeeded at once.
    let window = "(SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - make_interval(days => $3::int4 - 1) AS t0,
                          extract(epoch FROM now() - (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                                  - make_interval(days => $3::int4 - 1))) / $4::int8 AS step)";
    let action_case = {
        let mut case = String::from("CASE");
        for (name, upper) in LOG_ACTIONS {
            case.push_str(&format!(
                " WHEN abs(hashint8(n)::int8) % 1000 < {upper} THEN '{name}'"
            ));
        }
        case.push_str(" END");
        case
    };
    let chunk = (events / 20).max(1);
    let mut from = 0i64;
    while from < events {
        let to = (from + chunk).min(events);
        client
            .execute(
                &format!(
                    "INSERT INTO events (id, organization, project, action, body, created_at)
                     SELECT md5('e' || n)::uuid, 1 + n % $5::int8, 1 + n % 7, {action_case},
                            '{{\"project\": {{\"id\": 1, \"title\": \"Project\"}}}}'::json,
                            w.t0 + make_interval(secs => n * w.step)
                       FROM generate_series($1::int8, $2::int8 - 1) n, {window} w"
                ),
                &[&from, &to, &(days as i32), &events, &orgs],
            )
            .await?;
        client
            .execute(
                &format!(
                    "INSERT INTO delivery_attempts (delivery_id, event_id, webhook_id, organization, action, attempt,
                         outcome, http_status, duration_ms, error, response_excerpt, next_attempt_at, created_at)
                     SELECT md5('d' || n || '-' || h)::uuid, md5('e' || n)::uuid, (1 + n % $5::int8) * 1000 + h,
                            1 + n % $5::int8, {action_case}, k,
                            CASE WHEN r < 10 THEN 'dead' WHEN r < 20 OR (r < 50 AND k = 1) THEN 'failed' ELSE 'succeeded' END,
                            CASE WHEN r < 10 THEN 410 WHEN r < 15 THEN NULL WHEN r < 20 OR (r < 50 AND k = 1) THEN 503 ELSE 200 END,
                            5 + r % 300,
                            CASE WHEN r < 10 THEN NULL WHEN r < 15 THEN 'timeout' END,
                            CASE WHEN r < 15 OR r >= 20 THEN 'ok' END,
                            CASE WHEN r >= 10 AND (r < 20 OR (r < 50 AND k = 1)) THEN at + interval '30 seconds' END,
                            at + (k - 1) * interval '30 seconds'
                       FROM generate_series($1::int8, $2::int8 - 1) n, {window} w,
                            generate_series(0, $6::int8 - 1) h,
                            LATERAL (SELECT abs(hashint8(n * 64 + h)::int8) % 1000 AS r,
                                            w.t0 + make_interval(secs => n * w.step) AS at) x,
                            generate_series(1, 2) k
                      WHERE k = 1 OR (r >= 20 AND r < 50)"
                ),
                &[&from, &to, &(days as i32), &events, &orgs, &hooks],
            )
            .await?;
        eprintln!(
            "bench: scale log: {to} of {events} events generated ({:.0} s)",
            generating.elapsed().as_secs_f64()
        );
        from = to;
    }
    let generate_s = generating.elapsed().as_secs_f64();
    let vacuuming = Instant::now();
    for statement in [
        "VACUUM ANALYZE delivery_attempts",
        "VACUUM ANALYZE events",
        "ANALYZE webhooks",
    ] {
        client.batch_execute(statement).await?;
    }
    let vacuum_s = vacuuming.elapsed().as_secs_f64();
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM delivery_attempts), (SELECT count(*) FROM webhookd_log_partitions()),
                    pg_database_size(current_database())",
            &[],
        )
        .await?;
    let (rows, partitions, bytes): (i64, i64, i64) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    eprintln!(
        "bench: scale log: {rows} rows in {partitions} partitions, {:.0} MiB, generated in {generate_s:.0} s, vacuumed in {vacuum_s:.0} s",
        bytes as f64 / 1_048_576.0
    );

    let http = http_client()?;
    let (_, api) = stage.spawn(
        "api",
        &[
            ("WEBHOOKD_RECOVERIES_PER_MINUTE", "100000".to_owned()),
            ("WEBHOOKD_RECOVERIES_BURST", "100000".to_owned()),
        ],
    )?;
    sandbox::wait_ready(&api, &mut stage.children, Duration::from_secs(120)).await?;
    let token = api_tokens::create_token(&**client, 1, "scale").await?;
    let auth = format!("Token {token}");
    let webhook = 1000i64;
    // A cursor about half-way back: the page that follows it is deep in the log.
    let deep = client
        .query_one(
            "SELECT created_at, id FROM delivery_attempts
              WHERE webhook_id = $1 AND created_at < now() - make_interval(days => $2::int4 / 2)
              ORDER BY created_at DESC, id DESC LIMIT 1",
            &[&webhook, &(days as i32)],
        )
        .await?;
    let deep_cursor: (DateTime<Utc>, i64) = (deep.try_get(0)?, deep.try_get(1)?);
    let org_deep = client
        .query_one(
            "SELECT created_at, id FROM delivery_attempts
              WHERE organization = 1 AND created_at < now() - make_interval(days => $1::int4 / 2)
              ORDER BY created_at DESC, id DESC LIMIT 1",
            &[&(days as i32)],
        )
        .await?;
    let org_deep_cursor: (DateTime<Utc>, i64) = (org_deep.try_get(0)?, org_deep.try_get(1)?);
    let cursor = |c: (DateTime<Utc>, i64)| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}:{}",
            c.0.timestamp_micros(),
            c.1
        ))
    };
    let base_q = AttemptQuery {
        limit: 50,
        ..Default::default()
    };
    let hook_scope = LogScope::Webhook(webhook);
    let org_scope = LogScope::Organization(1);
    let listings: Vec<(&str, String, LogScope, AttemptQuery)> = vec![
        (
            "webhook: first page",
            format!("/api/webhooks/{webhook}/deliveries/?limit=50"),
            hook_scope,
            base_q.clone(),
        ),
        (
            "webhook: deep page (cursor)",
            format!(
                "/api/webhooks/{webhook}/deliveries/?limit=50&cursor={}",
                cursor(deep_cursor)
            ),
            hook_scope,
            AttemptQuery {
                before: Some(deep_cursor),
                ..base_q.clone()
            },
        ),
        (
            "webhook: status=dead",
            format!("/api/webhooks/{webhook}/deliveries/?limit=50&status=dead"),
            hook_scope,
            AttemptQuery {
                outcome: Some("dead".into()),
                ..base_q.clone()
            },
        ),
        (
            "webhook: action (1 %)",
            format!("/api/webhooks/{webhook}/deliveries/?limit=50&action={RARE_ACTION}"),
            hook_scope,
            AttemptQuery {
                action: Some(RARE_ACTION.into()),
                ..base_q.clone()
            },
        ),
        (
            "organization: first page",
            "/api/deliveries/?limit=50".to_owned(),
            org_scope,
            base_q.clone(),
        ),
        (
            "organization: deep page (cursor)",
            format!(
                "/api/deliveries/?limit=50&cursor={}",
                cursor(org_deep_cursor)
            ),
            org_scope,
            AttemptQuery {
                before: Some(org_deep_cursor),
                ..base_q.clone()
            },
        ),
        (
            "organization: status=dead",
            "/api/deliveries/?limit=50&status=dead".to_owned(),
            org_scope,
            AttemptQuery {
                outcome: Some("dead".into()),
                ..base_q.clone()
            },
        ),
        (
            "organization: action (1 %)",
            format!("/api/deliveries/?limit=50&action={RARE_ACTION}"),
            org_scope,
            AttemptQuery {
                action: Some(RARE_ACTION.into()),
                ..base_q.clone()
            },
        ),
    ];
    let mut figures = Vec::new();
    for (name, path, scope, q) in &listings {
        let url = format!("{api}{path}");
        // One untimed request warms the API's connection and the pages it reads.
        time_requests(1, 200, |_| http.get(&url).header("Authorization", &auth)).await?;
        let p = time_requests(sizes.requests, 200, |_| {
            http.get(&url).header("Authorization", &auth)
        })
        .await
        .map_err(|e| format!("{name}: {e}"))?;
        let plan = delivery_log::explain_list_attempts(&**client, *scope, q).await?;
        figures.push((name.to_string(), p, plan_summary(&plan)));
        eprintln!(
            "bench: scale log: {name}: p50 {:.2} ms, p99 {:.2} ms",
            p.p50, p.p99
        );
    }
    // Detail: deliveries of organization 1 spread over the whole log.
    // Deliveries of organization 1 (events n with n % orgs = 0) spread over the whole log.
    let ids: Vec<uuid::Uuid> = client
        .query(
            "SELECT md5('d' || ((g * 7919) % $1::int8) / $2::int8 * $2::int8 || '-' || g % $3::int8)::uuid
               FROM generate_series(1, $4::int8) g",
            &[&events, &orgs, &hooks, &(sizes.requests as i64)],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Err("no delivery sampled for the detail requests".into());
    }
    let detail_urls: Vec<String> = ids
        .iter()
        .map(|id| format!("{api}/api/deliveries/msg_{}/", id.simple()))
        .collect();
    let p = time_requests(sizes.requests, 200, |i| {
        http.get(&detail_urls[i % detail_urls.len()])
            .header("Authorization", &auth)
    })
    .await
    .map_err(|e| format!("delivery detail: {e}"))?;
    figures.push(("delivery detail".to_owned(), p, String::new()));
    // recover since a day and since the whole log, over the organization's webhooks in turn.
    let mut recovered = Vec::new();
    for (name, days_back) in [
        ("recover since 1 day", 1i32),
        ("recover since the whole log", days as i32),
    ] {
        let since: DateTime<Utc> = client
            .query_one(
                "SELECT now() - make_interval(days => $1::int4)",
                &[&days_back],
            )
            .await?
            .try_get(0)?;
        let body = json!({"since": since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
        let mut counts = Vec::new();
        let mut samples = Vec::new();
        for i in 0..sizes.recovers {
            let hook = 1000 + (i as i64 % hooks);
            let started = Instant::now();
            let response = http
                .post(format!("{api}/api/webhooks/{hook}/recover/"))
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .send()
                .await?;
            let status = response.status();
            let answer: Value = serde_json::from_slice(&response.bytes().await?)
                .map_err(|e| format!("{name}: the answer is not JSON: {e}"))?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            if status.as_u16() != 202 {
                return Err(format!("{name}: answered {status}: {answer}").into());
            }
            counts.push(answer["redelivered"].as_i64().unwrap_or(0));
        }
        let plan =
            delivery_log::explain_unsuccessful_deliveries(&**client, webhook, since, RECOVER_LIMIT)
                .await?;
        let p = percentiles_of(samples)?;
        eprintln!(
            "bench: scale log: {name}: p50 {:.2} ms, p99 {:.2} ms",
            p.p50, p.p99
        );
        figures.push((name.to_owned(), p, plan_summary(&plan)));
        recovered.push((
            name.to_owned(),
            counts.iter().sum::<i64>() / counts.len().max(1) as i64,
        ));
    }
    // Retention: drop the oldest partition with the store's function.
    let oldest_end: DateTime<Utc> = client
        .query_one("SELECT min(range_end) FROM webhookd_log_partitions()", &[])
        .await?
        .try_get(0)?;
    let t = Instant::now();
    let dropped = client
        .query(
            "SELECT webhookd_drop_log_partitions_before($1)",
            &[&oldest_end],
        )
        .await?;
    let drop_partition_ms = t.elapsed().as_secs_f64() * 1000.0;
    if dropped.len() != 1 {
        return Err(format!("dropping the oldest partition dropped {}", dropped.len()).into());
    }
    drop(client);
    pool.close();
    Ok(LogRun {
        rows,
        partitions,
        generate_s,
        vacuum_s,
        size_mib: bytes as f64 / 1_048_576.0,
        figures,
        recovered,
        drop_partition_ms,
    })
}

/// What one `recover` request redelivers at most (the API's limit).
pub const RECOVER_LIMIT: i64 = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_exact_series() {
        let text = "webhookd_cached_webhooks 100000\n\
                    webhookd_subscription_refresh_seconds_count{scope=\"all\"} 3\n\
                    webhookd_subscription_refresh_seconds_count{scope=\"organizations\"} 7\n";
        assert_eq!(metric(text, "webhookd_cached_webhooks"), Some(100_000.0));
        assert_eq!(
            metric(
                text,
                "webhookd_subscription_refresh_seconds_count{scope=\"organizations\"}"
            ),
            Some(7.0)
        );
        assert_eq!(metric(text, "webhookd_cached"), None);
    }

    #[test]
    fn plans_are_summarised_by_index_kind() {
        let plan: Vec<String> = [
            "Limit (actual rows=50 loops=1)",
            "  ->  Merge Append (actual rows=50 loops=1)",
            "        ->  Index Scan using delivery_attempts_20261201_webhook_id_created_at_id_idx on delivery_attempts_20261201",
            "              Filter: (action = 'X'::text)",
            "              Rows Removed by Filter: 120",
            "        ->  Index Scan using delivery_attempts_20261202_webhook_id_created_at_id_idx on delivery_attempts_20261202",
            "              Rows Removed by Filter: 3",
            "Execution Time: 1.234 ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            plan_summary(&plan),
            "2× Index Scan using …webhook_id_created_at_id_idx; filter removed 123 rows; 1.234 ms"
        );
    }
}
