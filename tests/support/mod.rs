//! Test harness: a private database and RabbitMQ names per test, an in-process or child-process worker,
//! and a receiver that records every request it gets.
#![allow(dead_code)]

pub mod api;
pub mod browser;
pub mod faults;
pub mod hostile;
pub mod pg_cluster;
pub mod python;
pub mod rabbit_cluster;
pub mod receiver;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use webhookd_broker::{ConfirmedPublisher, Topology};
use webhookd_core::{Catalog, NetworkPolicy, RetryPolicy, SigningSecret};
use webhookd_store::webhooks::{self, NewWebhook};
use webhookd_store::{database, migrate, Pool};
use webhookd_worker::{Worker, WorkerSettings};

pub const PG_BASE: &str = "postgres://postgres@127.0.0.1:5432";
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Waits until `check` returns `Some`, polling every 20 ms, or panics after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One test's private world: its own database, exchange and queues. Dropping it removes them.
pub struct TestEnv {
    pub name: String,
    pub database_url: String,
    pub topology: Topology,
    pub settings: WorkerSettings,
    pub pool: Pool,
    publisher: ConfirmedPublisher,
    _connection: lapin::Connection,
}

impl TestEnv {
    /// A fresh environment; `tweak` adjusts the worker settings (retry schedule, timeout …) first.
    pub async fn new(tweak: impl FnOnce(&mut WorkerSettings)) -> Self {
        Self::on_server(PG_BASE, tweak).await
    }

    /// A fresh environment whose database is on the PostgreSQL server at `server` (`postgres://user@host:port`,
    /// e.g. a test's own `pg_cluster::PgCluster`) instead of the shared one.
    pub async fn on_server(server: &str, tweak: impl FnOnce(&mut WorkerSettings)) -> Self {
        let name = format!(
            "whtest_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let database_url = format!("{server}/{name}");
        let policy = RetryPolicy::new(RetryPolicy::parse_schedule("0.2,0.4").unwrap(), true);
        let mut settings = WorkerSettings {
            database_url: database_url.clone(),
            amqp_url: AMQP_URL.to_owned(),
            topology: Topology::new(
                format!("{name}.events"),
                name.clone(),
                policy.longest_wait(),
            ),
            catalog: Arc::new(Catalog::builtin()),
            batch_size: 5000,
            timeout: Duration::from_secs(1),
            retry_policy: policy,
            max_consecutive_failures: 50,
            prefetch: 64,
            retry_prefetch: 64,
            max_concurrent_deliveries: 256,
            max_concurrent_per_webhook: 64,
            response_excerpt_bytes: 1024,
            pool_size: 4,
            shutdown_grace: Duration::from_secs(5),
            network_policy: NetworkPolicy::new(
                NetworkPolicy::parse_networks("127.0.0.0/8").unwrap(),
            ),
            max_event_bytes: 1 << 20,
            stall_after: Duration::from_secs(30),
            // Count only, as before the time rule; tests of the time rule set it.
            disable_after: Duration::ZERO,
            retention: Default::default(),
            replay_rate: 200.0,
        };
        tweak(&mut settings);
        settings.topology = Topology::new(
            format!("{name}.events"),
            name.clone(),
            settings.retry_policy.longest_wait(),
        );
        migrate::migrate(&database_url)
            .await
            .expect("migrate the test database");
        let pool = database::pool(&database_url, 4).unwrap();
        let connection = webhookd_broker::connect(AMQP_URL, "webhookd-test")
            .await
            .expect("connect to RabbitMQ");
        let publisher = ConfirmedPublisher::open(&connection).await.unwrap();
        settings
            .topology
            .declare(publisher.channel())
            .await
            .expect("declare topology");
        Self {
            name,
            database_url,
            topology: settings.topology.clone(),
            settings,
            pool,
            publisher,
            _connection: connection,
        }
    }

    /// The `webhookd` binary, configured for this environment: its database and names, the short retry
    /// schedule, 127.0.0.0/8 allowed, warnings only.
    pub fn webhookd(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_webhookd"));
        cmd.env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", AMQP_URL)
            .env("WEBHOOKD_EXCHANGE", &self.topology.exchange)
            .env("WEBHOOKD_QUEUE_PREFIX", &self.topology.prefix)
            .env("WEBHOOK_RETRY_SCHEDULE", "0.2,0.4")
            .env("WEBHOOKD_ALLOWED_NETWORKS", "127.0.0.0/8")
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "json")
            .kill_on_drop(true);
        cmd
    }

    /// Starts a worker in this process.
    pub async fn start_worker(&self) -> RunningWorker {
        let worker = Arc::new(
            Worker::start(self.settings.clone())
                .await
                .expect("start worker"),
        );
        let stop = CancellationToken::new();
        let handle = {
            let (worker, stop) = (worker.clone(), stop.clone());
            tokio::spawn(async move { worker.run(stop).await })
        };
        RunningWorker {
            worker,
            stop,
            handle,
        }
    }

    /// Creates a webhook.
    pub async fn webhook(&self, new: NewWebhook) -> (i64, SigningSecret) {
        let mut client = self.pool.get().await.unwrap();
        webhooks::create_webhook(&mut client, &new).await.unwrap()
    }

    /// Runs a statement against the test database.
    pub async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> u64 {
        self.pool
            .get()
            .await
            .unwrap()
            .execute(sql, params)
            .await
            .unwrap()
    }

    /// Runs a query against the test database.
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<tokio_postgres::Row> {
        self.pool
            .get()
            .await
            .unwrap()
            .query(sql, params)
            .await
            .unwrap()
    }

    /// Publishes an envelope as a producer would (persistent, confirmed, routing key = its action).
    pub async fn publish(&self, envelope: &Value) {
        let key = envelope["action"].as_str().unwrap_or("UNKNOWN");
        self.publish_raw(key, envelope.to_string().as_bytes()).await;
    }

    /// Publishes raw bytes to the events exchange.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        self.publisher
            .publish_json(&self.topology.exchange, routing_key, body, None, None)
            .await
            .expect("publish confirmed");
    }

    /// Puts `body` on the retry queue, as a worker puts a retry task that is due.
    pub async fn publish_retry(&self, body: &[u8]) {
        self.publisher
            .publish_json("", &self.topology.retry_queue(), body, None, None)
            .await
            .expect("publish confirmed");
    }

    /// Log rows as (webhook_id, attempt, outcome, http_status, error), ordered by webhook and attempt.
    pub async fn attempts(&self) -> Vec<(i64, i32, String, Option<i16>, Option<String>)> {
        self.query(
            "SELECT webhook_id, attempt, outcome, http_status, error FROM delivery_attempts
              ORDER BY webhook_id, delivery_id, attempt",
            &[],
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect()
    }

    /// Waits until the log holds at least `n` rows.
    pub async fn wait_for_attempts(
        &self,
        n: usize,
        deadline: Duration,
    ) -> Vec<(i64, i32, String, Option<i16>, Option<String>)> {
        wait_for(&format!("{n} delivery-log rows"), deadline, || async {
            let rows = self.attempts().await;
            (rows.len() >= n).then_some(rows)
        })
        .await
    }

    /// Messages waiting in the work queue (none is consumed while no worker runs).
    pub async fn queued_events(&self) -> u32 {
        self.queue_depth(&self.topology.work_queue()).await
    }

    /// Retry tasks waiting in the retry queue, redeliveries included (none is consumed while no worker runs).
    pub async fn queued_retries(&self) -> u32 {
        self.queue_depth(&self.topology.retry_queue()).await
    }

    async fn queue_depth(&self, queue: &str) -> u32 {
        self.publisher
            .channel()
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Messages in the dead-letter queue, as (body, reason header).
    pub async fn drain_dead_letters(&self) -> Vec<(String, String)> {
        let channel = self.publisher.channel();
        let mut out = Vec::new();
        while let Some(msg) = channel
            .basic_get(
                self.topology.dead_queue().as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let reason = msg
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-webhookd-reason").cloned())
                .map(|v| match v {
                    lapin::types::AMQPValue::LongString(s) => s.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            out.push((
                String::from_utf8_lossy(&msg.delivery.data).into_owned(),
                reason,
            ));
        }
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let (url, topology) = (self.database_url.clone(), self.topology.clone());
        // Async cleanup from a sync Drop: a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(conn) = webhookd_broker::connect(AMQP_URL, "webhookd-test-cleanup").await
                {
                    if let Ok(channel) = conn.create_channel().await {
                        let _ = topology.delete(&channel).await;
                    }
                    let _ = conn.close(200, "bye".into()).await;
                }
                let _ = database::drop_database(&url).await;
            });
        })
        .join();
    }
}

/// A worker running in this process.
pub struct RunningWorker {
    pub worker: Arc<Worker>,
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), webhookd_worker::WorkerError>>,
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        // A worker left running would re-declare queues while TestEnv deletes them.
        self.stop.cancel();
    }
}

impl RunningWorker {
    /// Asks it to stop and waits.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let handle = std::mem::replace(&mut self.handle, tokio::spawn(async { Ok(()) }));
        let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
    }
}

/// Writes `json` to a new file under the target directory, for `WEBHOOKD_ACTIONS_FILE`; `what` goes in its name.
pub fn actions_file(what: &str, json: &str) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "actions-{what}-{}.json",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&path, json).unwrap();
    path
}

/// An event envelope.
pub fn envelope(org: i64, action: &str, project: Option<Value>, payload: Value) -> Value {
    serde_json::json!({"version": 1, "organization": org, "action": action,
        "project": project.unwrap_or(Value::Null), "payload": payload})
}
