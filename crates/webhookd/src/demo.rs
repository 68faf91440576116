//! `webhookd demo`: the whole pipeline in one process against the local PostgreSQL and RabbitMQ, with a
//! built-in receiver; publishes a few Label Studio events and prints the delivery log.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use webhookd_core::{NetworkPolicy, RetryPolicy};
use webhookd_store::webhooks::{create_webhook, NewWebhook};
use webhookd_worker::Worker;

use crate::config::Config;

/// Runs the demo; everything it creates (a database and queues named `webhookd_demo_*`) is removed after.
pub async fn run(config: &Config) -> Result<(), String> {
    let name = format!("webhookd_demo_{}", std::process::id());
    // The configured server, user and options, with the demo's own database.
    let mut url = url::Url::parse(&config.database_url)
        .map_err(|e| format!("DATABASE_URL is not a URL: {e}"))?;
    url.set_path(&name);
    let database_url = url.to_string();
    let mut settings = config.worker_settings();
    settings.database_url = database_url.clone();
    settings.retry_policy = RetryPolicy::new(
        vec![Duration::from_millis(500), Duration::from_secs(1)],
        true,
    );
    settings.topology = webhookd_broker::Topology::new(
        format!("{name}.events"),
        name.clone(),
        settings.retry_policy.longest_wait(),
    );
    settings.network_policy =
        NetworkPolicy::new(NetworkPolicy::parse_networks("127.0.0.0/8").unwrap_or_default());
    let result = demo(&settings).await;
    cleanup(&settings).await;
    result
}

async fn demo(settings: &webhookd_worker::WorkerSettings) -> Result<(), String> {
    println!(
        "webhookd demo: database {}, queues {}.*\n",
        crate::config::redact_url(&settings.database_url),
        settings.topology.prefix
    );
    let receiver = start_receiver().await?;
    let worker = Arc::new(
        Worker::start(settings.clone())
            .await
            .map_err(|e| e.to_string())?,
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (worker, stop) = (worker.clone(), stop.clone());
        async move { worker.run(stop).await }
    });
    let result = publish_and_show(settings, &worker, &receiver).await;
    // The worker must be gone before the queues are deleted: RabbitMQ 3.10 can break its dead-letter
    // machinery when a quorum queue is deleted while being declared.
    stop.cancel();
    let _ = running.await;
    result
}

async fn publish_and_show(
    settings: &webhookd_worker::WorkerSettings,
    worker: &Worker,
    receiver: &str,
) -> Result<(), String> {
    let pool =
        webhookd_store::database::pool(&settings.database_url, 2).map_err(|e| e.to_string())?;
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let project_hook = NewWebhook::new(1, Some(7), format!("{receiver}/ml-backend"));
    let mut org_hook = NewWebhook::new(1, None, format!("{receiver}/audit"));
    org_hook.send_payload = false;
    let flaky_hook = NewWebhook::new(1, Some(7), format!("{receiver}/flaky"));
    for hook in [&project_hook, &org_hook, &flaky_hook] {
        create_webhook(&mut client, hook)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "webhook → {} (project {:?}, send_payload {})",
            hook.url, hook.project, hook.send_payload
        );
    }
    let ready = worker.broker_ready();
    wait_until(Duration::from_secs(10), || {
        worker.cache().snapshot().len() == 3 && ready.load(Ordering::Acquire)
    })
    .await;

    let emitter =
        webhookd_client::Emitter::connect(&settings.amqp_url, &settings.topology.exchange)
            .await
            .map_err(|e| e.to_string())?;
    let project = json!({"id": 7, "title": "Demo project"});
    let events = [
        (
            "PROJECT_CREATED",
            None,
            json!({"project": {"id": 7, "title": "Demo project"}}),
        ),
        (
            "TASKS_CREATED",
            Some(project.clone()),
            json!({"tasks": [{"id": 1, "data": {"text": "hello"}}]}),
        ),
        (
            "ANNOTATION_CREATED",
            Some(project.clone()),
            json!({"annotation": {"id": 10, "result": [], "task": 1}, "task": {"id": 1}}),
        ),
    ];
    for (action, project, payload) in events {
        let id = emitter
            .emit(1, project, action, payload)
            .await
            .map_err(|e| e.to_string())?;
        println!("published {action} ({id})");
    }
    // 3 webhooks: PROJECT_CREATED reaches only /audit; the other two reach all three. /flaky fails once.
    let expected = 1 + 2 * 3 + 1;
    let deadline = Duration::from_secs(20);
    let start = Instant::now();
    let mut rows = Vec::new();
    while start.elapsed() < deadline {
        rows = client
            .query(
                "SELECT a.created_at, a.webhook_id, w.url, a.action, a.attempt, a.outcome, a.http_status,
                        a.duration_ms, a.error
                   FROM delivery_attempts a JOIN webhooks w ON w.id = a.webhook_id ORDER BY a.created_at, a.id",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        if rows.len() >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("\ndelivery log ({} attempts):", rows.len());
    println!(
        "{:<12} {:<32} {:<20} {:>7} {:<9} {:>6} {:>8}  error",
        "time", "url", "action", "attempt", "outcome", "status", "ms"
    );
    for r in &rows {
        let at: chrono::DateTime<chrono::Utc> = r.get(0);
        let url: String = r.get(2);
        let path = url
            .rsplit_once('/')
            .map(|(_, p)| format!("/{p}"))
            .unwrap_or(url);
        let status: Option<i16> = r.get(6);
        let error: Option<String> = r.get(8);
        println!(
            "{:<12} {:<32} {:<20} {:>7} {:<9} {:>6} {:>8}  {}",
            at.format("%H:%M:%S%.3f"),
            path,
            r.get::<_, String>(3),
            r.get::<_, i32>(4),
            r.get::<_, String>(5),
            status.map(|s| s.to_string()).unwrap_or_default(),
            r.get::<_, i32>(7),
            error.unwrap_or_default()
        );
    }
    if rows.len() < expected {
        return Err(format!(
            "only {} of {expected} attempts were logged within {deadline:?}",
            rows.len()
        ));
    }
    Ok(())
}

async fn start_receiver() -> Result<String, String> {
    let flaky = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/ml-backend",
            post(|| async { (StatusCode::CREATED, "{\"status\": \"ok\"}") }),
        )
        .route("/audit", post(|| async { StatusCode::OK }))
        .route(
            "/flaky",
            post(move || {
                let n = flaky.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("receiver listening on http://{addr}");
    Ok(format!("http://{addr}"))
}

async fn wait_until(deadline: Duration, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() && start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cleanup(settings: &webhookd_worker::WorkerSettings) {
    if let Ok(conn) = webhookd_broker::connect(&settings.amqp_url, "webhookd-demo-cleanup").await {
        if let Ok(channel) = conn.create_channel().await {
            let _ = settings.topology.delete(&channel).await;
        }
        let _ = conn.close(200, "demo done".into()).await;
    }
    let _ = webhookd_store::database::drop_database(&settings.database_url).await;
}
