//! What an operator sees of a running `webhookd worker` process: `/healthz`, `/readyz` and `/metrics` over
//! HTTP, checked against docs/operations.md, and its per-attempt JSON log line.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use support::faults::{log_path, Proxy, WorkerProcess, WATCHED_LOG};
use support::receiver::Receiver;
use support::{envelope, wait_for, TestEnv};
use webhookd_store::webhooks::NewWebhook;

const OPERATIONS_MD: &str = include_str!("../docs/operations.md");

/// The series docs/operations.md lists, with their types.
fn documented_series() -> BTreeMap<String, String> {
    OPERATIONS_MD
        .lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| `webhookd_")?.split('|');
            let name = format!("webhookd_{}", cells.next()?.trim().strip_suffix('`')?);
            Some((name, cells.next()?.trim().to_owned()))
        })
        .collect()
}

/// The series a `/metrics` text exports, with their types.
fn exported_series(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// A worker child process of `env`, reaching PostgreSQL at `database_url`.
fn worker(env: &TestEnv, database_url: &str, rust_log: &str) -> WorkerProcess {
    let mut cmd = env.webhookd();
    cmd.env("DATABASE_URL", database_url)
        .env("RUST_LOG", rust_log);
    WorkerProcess::watch(cmd, &log_path(&env.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_metrics_answer_as_documented() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    env.webhook(NewWebhook::new(1, None, rx.url("/ops"))).await;
    let mut worker = worker(&env, &env.database_url, WATCHED_LOG);

    // Before any write and any /readyz: the subscription cache has loaded, so the database is up.
    let (status, text) = worker.get("/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200);
    assert_eq!(
        support::faults::metric_value(&text, "webhookd_database_up"),
        Some(1.0),
        "{text}"
    );
    let documented = documented_series();
    assert!(documented.len() >= 14, "{documented:?}");
    // Every documented series from the start, but for the attempts by action, which come with the first one.
    let exported = exported_series(&text);
    for name in documented.keys() {
        if name != "webhookd_delivery_attempts_total" {
            assert!(exported.contains_key(name), "{name} not exported:\n{text}");
        }
    }

    let (status, body) = worker.get("/healthz").await.expect("GET /healthz");
    assert_eq!((status, body.as_str()), (200, "ok"));
    // The listener opens before the worker has connected to RabbitMQ; it is ready once consuming.
    wait_for("/readyz to answer 200", Duration::from_secs(30), || async {
        let (status, body) = worker.get("/readyz").await?;
        assert!(status == 200 || status == 503, "{status} {body}");
        (status == 200).then_some(body)
    })
    .await;
    let (status, body) = worker.get("/readyz").await.expect("GET /readyz");
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (
            200,
            json!({"database": "ok", "broker": "ok", "writers": "ok"})
        )
    );
    assert_eq!(worker.metric("webhookd_broker_connected").await, Some(1.0));
    env.publish(&envelope(
        1,
        "PROJECT_DELETED",
        None,
        json!({"project": {"id": 3}}),
    ))
    .await;
    rx.wait_for("/ops", 1, Duration::from_secs(30)).await;
    // It is counted, and now every series is there, exactly as documented.
    let counted = [
        r#"webhookd_delivery_attempts_total{action="PROJECT_DELETED",outcome="succeeded"} 1"#,
        r#"webhookd_events_consumed_total{result="delivered"} 1"#,
        "webhookd_log_rows_written_total 1",
    ];
    let text = wait_for(
        "the delivery counted in /metrics",
        Duration::from_secs(10),
        || async {
            let (_, text) = worker.get("/metrics").await?;
            counted.iter().all(|c| text.contains(c)).then_some(text)
        },
    )
    .await;
    assert_eq!(exported_series(&text), documented, "{text}");
    worker.kill().await;
    let _ = std::fs::remove_file(log_path(&env.name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_database_while_it_is_unreachable_and_database_up_follows() {
    let env = TestEnv::new(|_| {}).await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let via_proxy = format!("postgres://postgres@{}/{}", proxy.addr, env.name);
    let mut worker = worker(&env, &via_proxy, WATCHED_LOG);
    let ready = || async {
        let (status, body) = worker.get("/readyz").await?;
        (status == 200).then_some(body)
    };
    wait_for("/readyz to answer 200", Duration::from_secs(30), ready).await;

    proxy.cut();
    // No event flows, so no write fails: the subscription cache, losing its connection, says it (and
    // nothing has asked /readyz since the cut).
    worker
        .wait_metric("webhookd_database_up", 0.0, Duration::from_secs(10))
        .await;
    let (status, body) = worker.get("/readyz").await.expect("GET /readyz");
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["broker"], "ok", "{body}");
    let database = body["database"].as_str().unwrap_or_default();
    assert!(!database.is_empty() && database != "ok", "{body}");

    proxy.restore();
    // The cache reloads once its listener is back: up again, without a write or a /readyz.
    worker
        .wait_metric("webhookd_database_up", 1.0, Duration::from_secs(30))
        .await;
    wait_for(
        "/readyz to answer 200 again",
        Duration::from_secs(30),
        ready,
    )
    .await;
    worker.kill().await;
    let _ = std::fs::remove_file(log_path(&env.name));
}

/// The `delivery attempt` lines of a worker's log, waited for until there are `n`.
async fn attempt_lines(worker: &WorkerProcess, n: usize) -> Vec<Value> {
    worker
        .wait_logged("delivery attempt", n, Duration::from_secs(30))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_attempt_log_line_has_exactly_the_documented_fields() {
    const ENVELOPE: [&str; 4] = ["timestamp", "level", "message", "target"];
    const FIELDS: [&str; 11] = [
        "event_id",
        "delivery_id",
        "webhook_id",
        "organization",
        "project",
        "action",
        "attempt",
        "outcome",
        "http_status",
        "duration_ms",
        "error",
    ];
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script("/log", |n| {
        (if n == 0 { 500 } else { 200 }, Vec::new(), Duration::ZERO)
    });
    let (webhook_id, _) = env
        .webhook(NewWebhook::new(1, Some(7), rx.url("/log")))
        .await;
    let mut worker = worker(&env, &env.database_url, "info");
    env.publish(&envelope(
        1,
        "ANNOTATION_CREATED",
        Some(json!({"id": 7})),
        json!({"annotation": {"id": 17}, "task": {"id": 19}}),
    ))
    .await;
    let lines = attempt_lines(&worker, 2).await;
    let keys =
        |line: &Value| -> BTreeSet<String> { line.as_object().unwrap().keys().cloned().collect() };
    let all: BTreeSet<String> = ENVELOPE
        .iter()
        .chain(&FIELDS)
        .map(|k| k.to_string())
        .collect();

    // The failed attempt has every field, top-level, and nothing else.
    let failed = &lines[0];
    assert_eq!(keys(failed), all, "{failed}");
    let header = rx.requests("/log")[0].header("webhook-id").unwrap();
    assert_eq!(
        (
            &failed["delivery_id"],
            &failed["webhook_id"],
            &failed["organization"],
            &failed["project"],
            &failed["action"],
            &failed["attempt"],
            &failed["outcome"],
            &failed["http_status"],
            &failed["error"],
        ),
        (
            &json!(header),
            &json!(webhook_id),
            &json!(1),
            &json!(7),
            &json!("ANNOTATION_CREATED"),
            &json!(1),
            &json!("failed"),
            &json!(500),
            &json!("HTTP 500 Internal Server Error"),
        )
    );
    assert!(failed["duration_ms"].is_u64(), "{failed}");
    assert!(
        uuid::Uuid::parse_str(failed["event_id"].as_str().unwrap()).is_ok(),
        "{failed}"
    );
    assert_eq!(failed["level"], "INFO");

    // The retry that succeeds: the same delivery, with nothing to report in `error`.
    let succeeded = &lines[1];
    let mut without_error = all.clone();
    without_error.remove("error");
    assert_eq!(keys(succeeded), without_error, "{succeeded}");
    assert_eq!(
        (
            &succeeded["delivery_id"],
            &succeeded["attempt"],
            &succeeded["outcome"],
            &succeeded["http_status"]
        ),
        (&json!(header), &json!(2), &json!("succeeded"), &json!(200))
    );

    // docs/operations.md shows this very line.
    let example = OPERATIONS_MD
        .lines()
        .find(|l| l.starts_with('{') && l.contains(r#""message":"delivery attempt""#))
        .expect("docs/operations.md shows a delivery attempt line");
    let example: Value = serde_json::from_str(example).unwrap();
    assert_eq!(keys(&example), all, "the documented line: {example}");
    worker.kill().await;
    let _ = std::fs::remove_file(log_path(&env.name));
}

#[tokio::test]
async fn the_database_pool_hands_out_the_connection_used_last() {
    let env = TestEnv::new(|_| {}).await;
    let pool = webhookd_store::database::pool(&env.database_url, 2).unwrap();
    let (first, second) = (pool.get().await.unwrap(), pool.get().await.unwrap());
    let (_, last) = (backend(&first).await, backend(&second).await);
    drop(first);
    drop(second);
    // Warm connections are reused first, so a steady load keeps only a few of them busy (and big).
    assert_eq!(backend(&pool.get().await.unwrap()).await, last);
}

async fn backend(client: &tokio_postgres::Client) -> i32 {
    let row = client.query_one("SELECT pg_backend_pid()", &[]).await;
    row.unwrap().get(0)
}

/// The names of the threads of process `pid`.
#[cfg(target_os = "linux")]
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocator_runs_with_the_built_in_options_unless_the_environment_overrides_them() {
    let env = TestEnv::new(|_| {}).await;
    let mut cmd = env.webhookd();
    cmd.env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", WATCHED_LOG)
        .env_remove("_RJEM_MALLOC_CONF");
    let mut built_in = WorkerProcess::watch(cmd, &log_path(&env.name));
    let mut cmd = env.webhookd();
    cmd.env("DATABASE_URL", &env.database_url)
        .env("RUST_LOG", WATCHED_LOG)
        .env("_RJEM_MALLOC_CONF", "background_thread:false");
    let mut overridden = WorkerProcess::watch(cmd, &log_path(&format!("{}-override", env.name)));
    for w in [&built_in, &overridden] {
        wait_for("the worker's /healthz", Duration::from_secs(30), || async {
            w.get("/healthz").await.filter(|(status, _)| *status == 200)
        })
        .await;
    }
    // background_thread:true is only in webhookd's built-in options: jemalloc's own thread hands memory back.
    let purger = "jemalloc_bg_thd".to_owned();
    let threads = thread_names(built_in.child.id().expect("worker pid"));
    assert!(threads.contains(&purger), "{threads:?}");
    let threads = thread_names(overridden.child.id().expect("worker pid"));
    assert!(!threads.contains(&purger), "{threads:?}");
    built_in.kill().await;
    overridden.kill().await;
    let _ = std::fs::remove_file(log_path(&env.name));
    let _ = std::fs::remove_file(log_path(&format!("{}-override", env.name)));
}

#[tokio::test]
async fn broker_connections_use_16_kib_frames_unless_the_url_says_otherwise() {
    let base = support::AMQP_URL;
    let cases = [
        (base.to_owned(), Some(webhookd_broker::FRAME_MAX)),
        (format!("{base}?frame_max=8192"), Some(8192)),
        // 0 takes the broker's limit, larger than webhookd's.
        (format!("{base}?frame_max=0"), None),
    ];
    for (url, expected) in cases {
        let connection = webhookd_broker::connect(&url, "webhookd-test-frames")
            .await
            .unwrap();
        let frame_max = connection.configuration().frame_max();
        match expected {
            Some(n) => assert_eq!(frame_max, n, "{url}"),
            None => assert!(frame_max > webhookd_broker::FRAME_MAX, "{url}: {frame_max}"),
        }
        connection.close(200, "done".into()).await.unwrap();
    }
}
