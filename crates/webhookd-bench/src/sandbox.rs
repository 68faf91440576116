//! The names one run owns (its database `webhookd_bench_<random>`, exchange and queue prefix), the
//! `webhookd` commands that use them, and their removal, which happens whatever went wrong.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lapin::Connection;
use tokio::process::{Child, Command};
use webhookd_broker::Topology;
use webhookd_core::retry_policy::DEFAULT_SCHEDULE;
use webhookd_core::RetryPolicy;
use webhookd_store::database;

use crate::BoxError;

/// PostgreSQL server (loopback only); each run makes and drops its own database on it.
pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
/// RabbitMQ (loopback only); each run declares and deletes its own exchange and queues on it.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// One run's database and RabbitMQ names, and the `webhookd` binary under test.
pub struct Sandbox {
    /// Its database.
    pub database_url: String,
    /// Its exchange and queues.
    pub topology: Topology,
    /// `WEBHOOK_RETRY_SCHEDULE` of its processes.
    pub schedule: String,
    /// The random name everything is derived from.
    pub tag: String,
    worker_bin: PathBuf,
    touched: bool,
    connection: Option<Connection>,
}

impl Sandbox {
    /// Fresh names for a run of `worker_bin` with `schedule` (the worker's default when `None`); nothing
    /// is created yet.
    pub fn new(worker_bin: &Path, schedule: Option<String>) -> Result<Self, BoxError> {
        let tag = format!(
            "webhookd_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let schedule = schedule.unwrap_or_else(|| DEFAULT_SCHEDULE.to_owned());
        let parsed = RetryPolicy::parse_schedule(&schedule)
            .map_err(|e| format!("retry schedule {schedule:?}: {e:?}"))?;
        let longest_wait = RetryPolicy::new(parsed, true).longest_wait();
        Ok(Self {
            database_url: format!("{PG_BASE}/{tag}"),
            topology: Topology::new(format!("{tag}.events"), tag.clone(), longest_wait),
            schedule,
            tag,
            worker_bin: worker_bin.to_owned(),
            touched: false,
            connection: None,
        })
    }

    /// `webhookd migrate`: creates the database, applies the binary's own migrations (so the schema is the
    /// one of the binary under test) and declares the topology.
    pub async fn migrate(&mut self, env: &[(&'static str, String)]) -> Result<(), BoxError> {
        self.touched = true;
        let bin = self.worker_bin.display().to_string();
        let migrated = tokio::time::timeout(
            Duration::from_secs(120),
            self.command(env)
                .arg("migrate")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output(),
        )
        .await
        .map_err(|_| format!("`{bin} migrate` did not finish within 120 s"))?
        .map_err(|e| format!("starting {bin}: {e}"))?;
        if !migrated.status.success() {
            return Err(format!(
                "`{bin} migrate` failed ({}): {}",
                migrated.status,
                String::from_utf8_lossy(&migrated.stderr).trim()
            )
            .into());
        }
        Ok(())
    }

    /// `webhookd` with the run's environment: its database, names and settings, then `env`.
    pub fn command(&self, env: &[(&'static str, String)]) -> Command {
        let mut command = Command::new(&self.worker_bin);
        command
            .env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", AMQP_URL)
            .env("WEBHOOKD_EXCHANGE", &self.topology.exchange)
            .env("WEBHOOKD_QUEUE_PREFIX", &self.topology.prefix)
            .env("WEBHOOK_RETRY_SCHEDULE", &self.schedule)
            .env("WEBHOOKD_ALLOWED_NETWORKS", "127.0.0.0/8")
            // A port of its own for /metrics and /readyz, so that it never collides with another
            // worker on this machine (another run's, or a test's).
            .env("WEBHOOKD_OPS_LISTEN", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// The run's RabbitMQ connection, opened on first use.
    pub async fn connection(&mut self) -> Result<&Connection, BoxError> {
        if self.connection.is_none() {
            let connection = webhookd_broker::connect(AMQP_URL, "webhookd-bench")
                .await
                .map_err(|e| format!("connecting to RabbitMQ: {e}"))?;
            self.connection = Some(connection);
        }
        self.connection
            .as_ref()
            .ok_or_else(|| "no RabbitMQ connection".into())
    }

    /// A pool of `size` connections to the run's database.
    pub fn pool(&self, size: usize) -> Result<webhookd_store::Pool, BoxError> {
        Ok(database::pool(&self.database_url, size)?)
    }

    /// Log rows by outcome and error, most frequent first (to explain a failed run); `None` when the
    /// database was never made or does not answer.
    pub async fn log_summary(&self) -> Option<String> {
        if !self.touched {
            return None;
        }
        let config = database::parse_url(&self.database_url).ok()?;
        let client = database::connect_one(&config).await.ok()?;
        let rows = client
            .query(
                "SELECT outcome, coalesce(error, ''), count(*) FROM delivery_attempts
                  GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 6",
                &[],
            )
            .await
            .ok()?;
        let parts: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let outcome: String = r.try_get(0).ok()?;
                let error: String = r.try_get(1).ok()?;
                let n: i64 = r.try_get(2).ok()?;
                Some(if error.is_empty() {
                    format!("{n} {outcome}")
                } else {
                    format!("{n} {outcome} ({error})")
                })
            })
            .collect();
        Some(if parts.is_empty() {
            "empty".to_owned()
        } else {
            parts.join(", ")
        })
    }

    /// Deletes the topology and drops the database (the run's processes must be gone).
    pub async fn teardown(&mut self) -> Result<(), BoxError> {
        let mut problems = Vec::new();
        if self.touched {
            if let Err(e) = self.delete_topology().await {
                problems.push(format!("deleting the RabbitMQ topology: {e}"));
            }
        }
        if let Some(connection) = self.connection.take() {
            let _ = connection.close(200, "bench done".into()).await;
        }
        if self.touched {
            if let Err(e) = database::drop_database(&self.database_url).await {
                problems.push(format!("dropping the bench database: {e}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; ").into())
        }
    }

    async fn delete_topology(&mut self) -> Result<(), BoxError> {
        // The run's connection may be the thing that failed: fall back to a fresh one.
        let existing = match &self.connection {
            Some(c) => c.create_channel().await.ok(),
            None => None,
        };
        let channel = match existing {
            Some(channel) => channel,
            None => {
                let fresh = webhookd_broker::connect(AMQP_URL, "webhookd-bench-cleanup").await?;
                let channel = fresh.create_channel().await?;
                if let Some(old) = self.connection.replace(fresh) {
                    let _ = old.close(200, "replaced".into()).await;
                }
                channel
            }
        };
        self.topology.delete(&channel).await?;
        Ok(())
    }
}

/// A port free on 127.0.0.1 now, for a process to listen on.
pub fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port())
}

/// Fails if one of `processes` has exited.
pub fn alive(processes: &mut [Child]) -> Result<(), BoxError> {
    for process in processes {
        if let Some(status) = process.try_wait()? {
            return Err(format!("a webhookd process exited: {status}").into());
        }
    }
    Ok(())
}

/// Waits until `GET {base}/readyz` answers 200 (its database and broker reachable), for at most `within`,
/// failing at once if one of `processes` exits meanwhile.
pub async fn wait_ready(
    base: &str,
    processes: &mut [Child],
    within: Duration,
) -> Result<(), BoxError> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let started = Instant::now();
    loop {
        alive(processes)?;
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        if started.elapsed() > within {
            return Err(format!(
                "{base}/readyz did not answer 200 within {} s",
                within.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills `processes` and waits for each (10 s at most); returns what went wrong.
pub async fn kill_all(processes: impl IntoIterator<Item = Child>) -> Vec<String> {
    let mut problems = Vec::new();
    for mut process in processes {
        let _ = process.start_kill();
        if tokio::time::timeout(Duration::from_secs(10), process.wait())
            .await
            .is_err()
        {
            problems.push("a webhookd process did not die within 10 s of SIGKILL".to_owned());
        }
    }
    problems
}
