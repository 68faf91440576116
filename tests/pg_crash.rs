//! PostgreSQL crashes mid-stream (issue 10, isolation). A `webhookd worker` process whose database is on a
//! PostgreSQL server of the test's own (`support::pg_cluster`), with its own RabbitMQ names, delivers a stream
//! of events with producer ids to three webhooks: a healthy one, a flaky one (the first attempt of every
//! delivery answers 500, later ones 200: retries) and a slow one (answers in 0.7 s, so inline attempts are
//! handed over to the slow lane at 0.5 s). While the stream flows the server is stopped with
//! `pg_ctl stop -m immediate` (a crash: what was still in its WAL buffers is lost) and started again 1.5 s
//! later, three times (see `CRASH_AFTER`). Afterwards, as the README promises ("Nothing a producer had
//! confirmed is lost"):
//! - every (event, webhook) pair was accepted (answered 2xx) by its receiver at least once;
//! - every delivery has a `succeeded` row in `delivery_attempts`;
//! - no attempt is `dead` (none "event … is no longer stored").
//!
//! The duplicates and the time are printed, and appended to `<target dir>/tmp/faults-report.txt`.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::json;
use support::faults::{log_path, report, ResilientPublisher, WorkerProcess};
use support::pg_cluster::{process_runs, PgCluster};
use support::{envelope, wait_for, TestEnv, AMQP_URL};
use webhookd_core::{DeliveryId, EventId, RetryPolicy};
use webhookd_store::database;
use webhookd_store::webhooks::NewWebhook;

const EVENTS: i64 = 1500;
/// Producers publishing at once.
const PRODUCERS: i64 = 4;
/// Time between two events of one producer: the stream lasts about 9 s, so that every crash falls in its
/// middle however fast the worker is.
const PACE: Duration = Duration::from_millis(24);
/// The crashes: each once the healthy receiver has accepted this many deliveries. One crash loses events only
/// if it finds claims committed in its last few milliseconds (measured on the code of 0a4d0fa: 7 runs of 10
/// with one crash, from a single or from four producers), so the stream takes three.
const CRASH_AFTER: [usize; 3] = [300, 700, 1100];
/// How long the server stays down.
const DOWN: Duration = Duration::from_millis(1500);
const SCHEDULE: &str = "0.5,1,2";
/// How long the slow receiver takes to answer: more than half of `WEBHOOK_TIMEOUT` (1 s).
const SLOW: Duration = Duration::from_millis(700);
/// How long every delivery may take to end (succeeded or dead) once the stream is published.
const SETTLE: Duration = Duration::from_secs(75);
const PATHS: [&str; 3] = ["/healthy", "/flaky", "/slow"];
/// The worker's warnings, the binary's `info` lines, and the retry path's attempt lines (its `dead` ones say why).
const LOG: &str = "warn,webhookd=info,webhookd_=warn,webhookd_worker::stages::retry_attempt=info";
const WRITE_FAILED: &str = "database write failed; retrying (nothing is acknowledged meanwhile)";

#[derive(Default)]
struct Ledger {
    /// Requests per path.
    requests: HashMap<String, usize>,
    /// (path, event number) of every request answered 2xx, in order.
    accepted: Vec<(String, i64)>,
    /// `webhook-id`s the flaky receiver has failed once.
    failed_once: HashSet<String>,
}

/// The three receivers, on one listener: `/healthy` answers 200, `/flaky` 500 to the first request of each
/// `webhook-id` and 200 to the later ones, `/slow` 200 after `SLOW` (a request whose client left meanwhile is,
/// as a rule, dropped unanswered by the server once it sees the connection closed, and then not counted).
#[derive(Clone)]
struct Receivers {
    base: String,
    ledger: Arc<Mutex<Ledger>>,
}

impl Receivers {
    async fn start() -> Self {
        let ledger: Arc<Mutex<Ledger>> = Arc::default();
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(ledger.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, ledger }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// How many distinct events `path` has accepted.
    fn accepted_on(&self, path: &str) -> usize {
        let ledger = self.ledger.lock().unwrap();
        ledger
            .accepted
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, n)| n)
            .collect::<HashSet<_>>()
            .len()
    }
}

async fn answer(
    State(ledger): State<Arc<Mutex<Ledger>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let path = uri.path().to_owned();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let n = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|b| b["project"]["id"].as_i64())
        .unwrap_or(-1);
    {
        let mut ledger = ledger.lock().unwrap();
        *ledger.requests.entry(path.clone()).or_default() += 1;
        if path == "/flaky" && ledger.failed_once.insert(id) {
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    if path == "/slow" {
        tokio::time::sleep(SLOW).await;
    }
    ledger.lock().unwrap().accepted.push((path, n));
    StatusCode::OK
}

/// Runs `sql` on a connection of its own (the pools' connections died with the server).
async fn query(
    url: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Option<Vec<tokio_postgres::Row>> {
    let client = database::connect_one(&database::parse_url(url).ok()?)
        .await
        .ok()?;
    client.query(sql, params).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_mid_stream_loses_no_event_and_kills_no_delivery() {
    let cluster = PgCluster::start().await;
    let env = TestEnv::on_server(&cluster.base_url(), |s| {
        // The same schedule as the worker's, so that the delay queues it declares are the ones removed.
        s.retry_policy = RetryPolicy::new(RetryPolicy::parse_schedule(SCHEDULE).unwrap(), true);
    })
    .await;
    let rx = Receivers::start().await;
    let mut webhooks: BTreeMap<i64, &str> = BTreeMap::new();
    for path in PATHS {
        let (id, _) = env.webhook(NewWebhook::new(1, None, rx.url(path))).await;
        webhooks.insert(id, path);
    }
    let mut cmd = env.webhookd();
    cmd.env("WEBHOOK_TIMEOUT", "1")
        .env("WEBHOOK_RETRY_SCHEDULE", SCHEDULE)
        .env("WEBHOOK_MAX_CONSECUTIVE_FAILURES", "0")
        .env("RUST_LOG", LOG);
    let mut worker = WorkerProcess::watch(cmd, &log_path(&env.name));
    worker.ops_addr().await;

    let started = Instant::now();
    // Four producers at once, so that the worker has a backlog (and claims in flight) when the server dies.
    let publish = async {
        let producers = (0..PRODUCERS).map(|k| {
            let exchange = env.topology.exchange.clone();
            async move {
                let mut producer = ResilientPublisher::new(AMQP_URL, &exchange);
                let mut pace = tokio::time::interval(PACE);
                for n in (k..EVENTS).step_by(PRODUCERS as usize) {
                    pace.tick().await;
                    let id = format!("pgcrash-{n}");
                    let mut e = envelope(1, "PROJECT_DELETED", None, json!({"project": {"id": n}}));
                    e["id"] = json!(id);
                    producer
                        .publish("PROJECT_DELETED", e.to_string().as_bytes(), &id)
                        .await;
                }
            }
        });
        futures::future::join_all(producers).await;
        started.elapsed()
    };
    let crashes = async {
        let mut at = Vec::new();
        for threshold in CRASH_AFTER {
            wait_for(
                &format!("{threshold} healthy deliveries before a crash"),
                Duration::from_secs(60),
                || async { (rx.accepted_on("/healthy") >= threshold).then_some(()) },
            )
            .await;
            at.push(rx.accepted_on("/healthy"));
            let failures_before = worker.logged(WRITE_FAILED).len();
            cluster.crash().await;
            assert!(
                !cluster.accepts_connections().await,
                "the server still answers"
            );
            tokio::time::sleep(DOWN).await;
            cluster.restart().await;
            // The crash hit the worker: its writes failed, and were retried.
            worker
                .wait_logged(WRITE_FAILED, failures_before + 1, Duration::from_secs(30))
                .await;
        }
        at
    };
    let (published_in, at_crashes) = tokio::join!(publish, crashes);
    assert!(
        at_crashes.iter().all(|&n| n < EVENTS as usize),
        "a crash came after the stream was delivered: {at_crashes:?}"
    );
    let failures = worker.logged(WRITE_FAILED).len();

    // Every delivery ends: succeeded, or dead.
    let total = EVENTS * PATHS.len() as i64;
    let url = env.database_url.clone();
    let settle_deadline = Instant::now() + SETTLE;
    let ended = loop {
        let rows = query(
            &url,
            "SELECT count(DISTINCT delivery_id) FROM delivery_attempts WHERE outcome IN ('succeeded', 'dead')",
            &[],
        )
        .await;
        let ended = rows.map(|r| r[0].get::<_, i64>(0)).unwrap_or(0);
        if ended >= total || Instant::now() > settle_deadline {
            break ended;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let seconds = started.elapsed().as_secs_f64();

    // What the receivers accepted.
    let (accepted, requests) = {
        let ledger = rx.ledger.lock().unwrap();
        (ledger.accepted.clone(), ledger.requests.clone())
    };
    let pairs: HashSet<(String, i64)> = accepted.iter().cloned().collect();
    let duplicates = accepted.len() - pairs.len();
    // What the log says of every expected delivery.
    let rows = query(
        &url,
        "SELECT delivery_id, webhook_id, event_id, attempt, outcome, http_status, error FROM delivery_attempts",
        &[],
    )
    .await
    .expect("read the delivery log");
    let handed_over: BTreeMap<i64, usize> = rows
        .iter()
        .filter(|r| {
            r.get::<_, Option<String>>(6)
                .is_some_and(|e| e.contains("handed over to the slow lane"))
        })
        .fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.get::<_, i64>(1)).or_default() += 1;
            m
        });
    let mut succeeded: HashSet<uuid::Uuid> = HashSet::new();
    let mut dead: Vec<(i64, uuid::Uuid, i32, String)> = Vec::new();
    for r in &rows {
        let outcome: String = r.get(4);
        match outcome.as_str() {
            "succeeded" => {
                succeeded.insert(r.get(0));
            }
            "dead" => dead.push((
                r.get(1),
                r.get(2),
                r.get(3),
                r.get::<_, Option<String>>(6).unwrap_or_default(),
            )),
            _ => {}
        }
    }
    let stored: HashSet<String> = query(
        &url,
        "SELECT producer_id FROM events WHERE producer_id IS NOT NULL",
        &[],
    )
    .await
    .expect("read the events")
    .iter()
    .map(|r| r.get(0))
    .collect();

    let mut failures_found: Vec<String> = Vec::new();
    let mut lost_events: BTreeSet<i64> = BTreeSet::new();
    for (&webhook, &path) in &webhooks {
        let not_accepted: Vec<i64> = (0..EVENTS)
            .filter(|n| !pairs.contains(&(path.to_owned(), *n)))
            .collect();
        let not_succeeded: Vec<i64> = (0..EVENTS)
            .filter(|n| {
                let event = EventId::for_producer(1, &format!("pgcrash-{n}"));
                !succeeded.contains(&DeliveryId::derive(event, webhook, 0).0)
            })
            .collect();
        if !not_accepted.is_empty() {
            failures_found.push(format!(
                "{path} (webhook {webhook}): {} events never accepted by the receiver, e.g. {:?}",
                not_accepted.len(),
                &not_accepted[..not_accepted.len().min(10)]
            ));
        }
        if !not_succeeded.is_empty() {
            failures_found.push(format!(
                "{path} (webhook {webhook}): {} deliveries without a succeeded row, e.g. events {:?}",
                not_succeeded.len(),
                &not_succeeded[..not_succeeded.len().min(10)]
            ));
        }
        lost_events.extend(not_accepted);
        lost_events.extend(not_succeeded);
    }
    if !dead.is_empty() {
        let mut by_error: BTreeMap<(i64, String), usize> = BTreeMap::new();
        for (webhook, event, _, error) in &dead {
            let error = error.replace(&event.to_string(), "<event>");
            *by_error.entry((*webhook, error)).or_default() += 1;
        }
        failures_found.push(format!(
            "{} dead attempt rows (webhook, error with the event id as <event>: rows): {by_error:?}; e.g. {:?}",
            dead.len(),
            &dead[..dead.len().min(5)]
        ));
    }
    let not_stored: Vec<i64> = (0..EVENTS)
        .filter(|n| !stored.contains(&format!("pgcrash-{n}")))
        .collect();
    // The whole log of the first event affected, and whether its message is still queued.
    if let Some(&n) = lost_events.first() {
        let event = EventId::for_producer(1, &format!("pgcrash-{n}")).0;
        let log: Vec<String> = query(
            &url,
            "SELECT webhook_id, attempt, outcome, http_status, error FROM delivery_attempts
              WHERE event_id = $1 ORDER BY webhook_id, attempt, created_at",
            &[&event],
        )
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| {
            format!(
                "webhook {} attempt {} {} {:?} {:?}",
                r.get::<_, i64>(0),
                r.get::<_, i32>(1),
                r.get::<_, String>(2),
                r.get::<_, Option<i16>>(3),
                r.get::<_, Option<String>>(4)
            )
        })
        .collect();
        failures_found.push(format!(
            "event {n} ({event}): stored in events: {}; messages left in the work queue: {}; its log: {log:#?}",
            stored.contains(&format!("pgcrash-{n}")),
            env.queued_events().await,
        ));
    }
    let dead_lines: Vec<String> = worker
        .logged("delivery attempt")
        .iter()
        .filter(|l| l["outcome"] == "dead")
        .take(3)
        .map(|l| l.to_string())
        .collect();
    println!(
        "pg crash: {total} deliveries ({EVENTS} events x {} webhooks), published in {:.1} s, crashes after {at_crashes:?} \
         healthy deliveries, each down {DOWN:?}; {ended} deliveries ended within {seconds:.1} s; requests per path \
         {requests:?}; {} accepted, {duplicates} duplicates; hand-overs per webhook {handed_over:?}; worker write failures: {failures}; \
         events not stored: {} {:?}; deliveries affected: events {:?}; dead lines in the worker log: {dead_lines:#?}",
        PATHS.len(),
        published_in.as_secs_f64(),
        accepted.len(),
        not_stored.len(),
        &not_stored[..not_stored.len().min(10)],
        &lost_events.iter().take(20).collect::<Vec<_>>(),
    );
    assert!(
        failures_found.is_empty(),
        "after a PostgreSQL crash mid-stream (worker log: {}):\n{}",
        log_path(&env.name).display(),
        failures_found.join("\n")
    );
    assert_eq!(ended, total, "every delivery ended");
    let line = report(
        "postgres crashed (pg_ctl stop -m immediate) and restarted",
        total as usize,
        duplicates,
        seconds,
    );
    println!("{line}");
    worker.kill().await;
    let _ = std::fs::remove_file(log_path(&env.name));
}

/// The private server itself: its own directory and port, run as `postgres`, fsync on; a crash loses no
/// committed row and needs recovery; dropping it (even in a panicking task) stops it and removes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_cluster_crashes_recovers_and_leaves_nothing_behind() {
    let cluster = PgCluster::start().await;
    let url = cluster.url("postgres");
    let settings = query(
        &url,
        "SELECT current_setting('data_directory'), current_setting('port'), current_setting('fsync'),
                current_setting('unix_socket_directories'), current_user",
        &[],
    )
    .await
    .expect("query the private server");
    let row = &settings[0];
    assert_eq!(
        row.get::<_, String>(0),
        cluster.data_dir().display().to_string()
    );
    assert_eq!(row.get::<_, String>(1), cluster.port.to_string());
    assert_eq!(row.get::<_, String>(2), "on");
    assert_eq!(
        row.get::<_, String>(3),
        cluster.socket_dir().display().to_string()
    );
    assert_eq!(row.get::<_, String>(4), "postgres");
    assert_ne!(cluster.port, 5432, "not the shared server");
    let pid = cluster.postmaster_pid().expect("postmaster.pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next())
        .unwrap();
    assert_ne!(uid, "0", "the server does not run as root");

    let client = database::connect_one(&database::parse_url(&url).unwrap())
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('committed before the crash')",
        )
        .await
        .unwrap();
    let rows = query(&url, "SELECT v FROM kept", &[]).await;
    assert_eq!(rows.map(|r| r.len()), Some(1));
    cluster.crash().await;
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the session died with the server"
    );
    assert!(!cluster.accepts_connections().await);
    assert!(cluster.postmaster_pid().is_none(), "postmaster.pid removed");
    assert!(!process_runs(pid), "the postmaster {pid} is gone");
    cluster.restart().await;
    let rows = query(&url, "SELECT v FROM kept", &[])
        .await
        .expect("read after the restart");
    assert_eq!(rows[0].get::<_, String>(0), "committed before the crash");
    let log = cluster.server_log();
    assert!(
        log.contains("database system was not properly shut down; automatic recovery in progress"),
        "the restart recovered from a crash: {log}"
    );

    // Dropped during a panic: stopped and removed all the same.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let doomed = PgCluster::start().await;
        let _ = tx.send((
            doomed.root().to_owned(),
            doomed.url("postgres"),
            doomed.postmaster_pid(),
        ));
        panic!("a test fails with its cluster running");
    });
    assert!(task.await.unwrap_err().is_panic());
    let (root, doomed_url, doomed_pid) = rx.await.unwrap();
    assert!(!root.exists(), "{} left behind", root.display());
    let doomed_pid = doomed_pid.expect("it was running");
    assert!(
        !process_runs(doomed_pid),
        "its postmaster {doomed_pid} still runs"
    );
    assert!(query(&doomed_url, "SELECT 1", &[]).await.is_none());

    let root = cluster.root().to_owned();
    drop(cluster);
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(query(&url, "SELECT 1", &[]).await.is_none());
}
