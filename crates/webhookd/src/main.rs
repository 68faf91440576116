//! `webhookd`: the webhook delivery service. One binary; the subcommand picks the role.

mod config;
mod logging;

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use webhookd_core::Event;
use webhookd_worker::Worker;

use crate::config::Config;

/// webhookd: delivers action events from RabbitMQ to webhooks, signed, retried and logged.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run everything in one process (workers now; the management API joins it with the API release).
    Serve,
    /// Run a worker: consume events and deliver them.
    Worker,
    /// Create the database if needed, apply migrations and declare the RabbitMQ topology, then exit.
    Migrate,
    /// Publish one event through the producer client (waits for the broker's confirm).
    Publish(PublishArgs),
}

#[derive(clap::Args)]
struct PublishArgs {
    /// A whole version-1 envelope as JSON, or `-` to read it from stdin (then no other flag is needed).
    #[arg(long, conflicts_with_all = ["organization", "action", "project", "payload"])]
    event: Option<String>,
    /// Organization id.
    #[arg(long, required_unless_present = "event")]
    organization: Option<i64>,
    /// Action name, e.g. ANNOTATION_CREATED.
    #[arg(long, required_unless_present = "event")]
    action: Option<String>,
    /// The project object as JSON, e.g. '{"id": 7, "title": "P"}'; omit for organization-level events.
    #[arg(long)]
    project: Option<String>,
    /// The payload object as JSON, e.g. '{"annotation": {"id": 17}, "task": {"id": 19}}'.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// Your own event id: publishing the same id again delivers the event once.
    #[arg(long)]
    id: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("webhookd: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("webhookd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve | Command::Worker => run_worker(&config).await,
            Command::Migrate => migrate(&config).await,
            Command::Publish(args) => publish(&config, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(error = %message, "webhookd stopped");
            eprintln!("webhookd: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run_worker(config: &Config) -> Result<(), String> {
    let worker = Worker::start(config.worker_settings())
        .await
        .map_err(|e| e.to_string())?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    worker.run(shutdown).await.map_err(|e| e.to_string())?;
    tracing::info!("worker stopped");
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested; finishing in-flight deliveries");
    shutdown.cancel();
}

async fn migrate(config: &Config) -> Result<(), String> {
    let applied = webhookd_store::migrate::migrate(&config.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let connection = webhookd_broker::connect(&config.amqp_url, "webhookd-migrate")
        .await
        .map_err(|e| format!("cannot connect to RabbitMQ: {e}"))?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    config
        .topology()
        .declare(&channel)
        .await
        .map_err(|e| format!("cannot declare the RabbitMQ topology: {e}"))?;
    let _ = connection.close(200, "done".into()).await;
    println!("database migrated ({applied} new migrations); RabbitMQ topology declared");
    Ok(())
}

async fn publish(config: &Config, args: PublishArgs) -> Result<(), String> {
    let envelope: Value = match &args.event {
        Some(text) => {
            let text = if text == "-" {
                let mut buf = String::new();
                std::io::stdin()
                    .read_to_string(&mut buf)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                buf
            } else {
                text.clone()
            };
            serde_json::from_str(&text).map_err(|e| format!("--event is not valid JSON: {e}"))?
        }
        None => {
            let parse = |flag: &str, text: &str| -> Result<Value, String> {
                serde_json::from_str(text).map_err(|e| format!("--{flag} is not valid JSON: {e}"))
            };
            let project = match &args.project {
                Some(p) => parse("project", p)?,
                None => Value::Null,
            };
            let id = args
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            serde_json::json!({"version": 1, "id": id, "organization": args.organization,
                "action": args.action, "project": project, "payload": parse("payload", &args.payload)?})
        }
    };
    let mut event =
        Event::from_value(envelope, &config.catalog).map_err(|e| format!("invalid event: {e}"))?;
    if event.producer_id.is_none() {
        event.producer_id = Some(uuid::Uuid::now_v7().to_string());
    }
    let emitter = webhookd_client::Emitter::connect(&config.amqp_url, &config.exchange)
        .await
        .map_err(|e| e.to_string())?
        .with_catalog((*config.catalog).clone());
    emitter.publish(&event).await.map_err(|e| e.to_string())?;
    println!("{}", event.producer_id.unwrap_or_default());
    Ok(())
}
