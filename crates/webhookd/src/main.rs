//! `webhookd`: the webhook delivery service. One binary; the subcommand picks the role.

mod config;
mod demo;
mod label_studio;
mod logging;
mod memory;
mod replay;

use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use webhookd_api::ops::{self, Readiness};
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
    /// Run the API and a worker in one process.
    Serve,
    /// Run the management API only.
    Api,
    /// Run a worker only: consume events and deliver them.
    Worker,
    /// Run the whole pipeline once against the local services with a built-in receiver, and print the log.
    Demo,
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create the database if needed, apply migrations and declare the RabbitMQ topology, then exit.
    Migrate,
    /// Publish one event through the producer client (waits for the broker's confirm).
    Publish(PublishArgs),
    /// Replay stored events to a webhook (backfill, or re-send what it missed), follow or cancel a replay.
    #[command(subcommand)]
    Replay(ReplayCommand),
    /// Connect an unmodified Label Studio: its webhooks relay every action to webhookd (docs/label-studio.md).
    #[command(subcommand)]
    LabelStudio(LabelStudioCommand),
}

#[derive(Subcommand)]
enum LabelStudioCommand {
    /// Put a relay webhook to webhookd on every Label Studio project (creating or updating it, never twice),
    /// or rely on an organization-level relay; optionally import Label Studio's other webhooks.
    Connect(label_studio::ConnectArgs),
}

#[derive(Subcommand)]
enum ReplayCommand {
    /// Start a replay: the stored events of the window that match the webhook's subscription, sent again as new
    /// deliveries, in event order, paced (a worker runs it). Prints the replay's id alone on stdout.
    Start {
        /// The organization the webhook belongs to.
        #[arg(long)]
        organization: i64,
        /// The webhook to send to.
        #[arg(long)]
        webhook: i64,
        /// Events stored at or after this time (RFC 3339, e.g. 2026-01-31T12:00:00Z).
        #[arg(long)]
        since: String,
        /// ... and before this one (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Only this action (repeat for several); default: every action the webhook subscribes to.
        #[arg(long = "action")]
        actions: Vec<String>,
        /// Wait until every event is queued and every delivery has ended, printing the progress on stderr.
        #[arg(long)]
        wait: bool,
    },
    /// Show a replay's progress (JSON, as the API's GET /api/replays/{id}/).
    Status {
        /// The organization the replay belongs to.
        #[arg(long)]
        organization: i64,
        /// The replay's id.
        id: String,
    },
    /// Cancel a running replay.
    Cancel {
        /// The organization the replay belongs to.
        #[arg(long)]
        organization: i64,
        /// The replay's id.
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token for an organization (created if it does not exist); prints the key alone on stdout.
    Create {
        /// The organization the token acts for.
        #[arg(long)]
        organization: i64,
        /// A label to recognise the token by.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Revoke a token.
    Revoke {
        /// The token's key.
        key: String,
    },
}

#[derive(clap::Args)]
struct PublishArgs {
    /// A whole version-1 envelope as JSON, or `-` to read it from stdin (then no other flag is needed).
    #[arg(long, conflicts_with_all = ["organization", "action", "project", "payload", "id"])]
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
    /// Your own event id, 1 to 255 bytes of UTF-8 without control characters: publishing the same id again
    /// delivers the event once.
    #[arg(long, value_parser = event_id)]
    id: Option<String>,
    /// How long to wait for the broker, connecting and confirming the event, in seconds (fractions allowed,
    /// at most 3600). A broker that answers nothing makes `publish` fail after it, naming the event's id.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = publish_timeout)]
    timeout: std::time::Duration,
}

/// `--timeout`: seconds, more than 0 and at most an hour.
fn publish_timeout(raw: &str) -> Result<std::time::Duration, String> {
    match raw.parse::<f64>() {
        Ok(s) if s > 0.0 && s <= 3600.0 => Ok(std::time::Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expected seconds, more than 0 and at most 3600, got {raw:?}"
        )),
    }
}

/// `--id`, checked against the event contract before anything connects.
fn event_id(raw: &str) -> Result<String, String> {
    webhookd_core::event::check_producer_id(raw)
        .map(|()| raw.to_owned())
        .map_err(|e| e.to_string())
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
    // Commands whose stdout is their output log to stderr: the demo prints its table there.
    logging::init(
        &config,
        matches!(
            cli.command,
            Command::Publish(_)
                | Command::Token(_)
                | Command::Migrate
                | Command::Demo
                | Command::Replay(_)
                | Command::LabelStudio(_)
        ),
    );
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
    // The command runs as a task on the runtime's worker threads, not on this one: a future polled by
    // `block_on` lives on the main thread, and every wake-up of it (a delivery from the broker, a request
    // accepted) would be one more thread switch.
    let result = runtime.block_on(async move {
        match tokio::spawn(run(config, cli.command)).await {
            Ok(result) => result,
            Err(e) => Err(format!("the main task failed: {e}")),
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

/// Runs one command to its end.
async fn run(config: Config, command: Command) -> Result<(), String> {
    match command {
        Command::Serve => serve(&config, true, true).await,
        Command::Api => serve(&config, true, false).await,
        Command::Worker => serve(&config, false, true).await,
        Command::Token(cmd) => token(&config, cmd).await,
        Command::Demo => demo::run(&config).await,
        Command::Migrate => migrate(&config).await,
        Command::Publish(args) => publish(&config, args).await,
        Command::Replay(cmd) => replay::run(&config, cmd).await,
        Command::LabelStudio(LabelStudioCommand::Connect(args)) => {
            label_studio::connect(&config, args).await
        }
    }
}

/// Runs the API, the worker or both until a signal; if one stops on its own, the other is stopped too.
/// `/healthz`, `/readyz` and `/metrics` are served on the API's listener, or on `WEBHOOKD_OPS_LISTEN` by a
/// worker-only process.
async fn serve(config: &Config, api: bool, worker: bool) -> Result<(), String> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let worker = match worker {
        true => Some(
            Worker::start(config.worker_settings())
                .await
                .map_err(|e| format!("worker: {e}"))?,
        ),
        false => None,
    };
    let state = match api {
        true => Some(
            webhookd_api::state(config.api_settings())
                .await
                .map_err(|e| format!("API: {e}"))?,
        ),
        false => None,
    };
    let pool = match (&state, &worker) {
        (Some(s), _) => s.pool.clone(),
        (None, Some(w)) => w.pool().clone(),
        (None, None) => return Ok(()),
    };
    let readiness = Arc::new(Readiness {
        pool,
        worker_broker: worker.as_ref().map(Worker::broker_ready),
        api_broker: state.as_ref().map(|s| s.broker.clone()),
        writers: worker.as_ref().map(Worker::writers).unwrap_or_default(),
        stall_after: config.stall_after,
    });
    let (listen, app) = match state {
        Some(state) => (
            config.listen,
            webhookd_api::router(state).merge(ops::router(readiness)),
        ),
        None => (config.ops_listen, ops::router(readiness)),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    // The bound address: with port 0 the system picks the port, and this line tells it.
    let listen = listener.local_addr().unwrap_or(listen);
    tracing::info!(%listen, api, "HTTP listening");
    let http_task = async {
        let result = webhookd_api::serve(listener, app, shutdown.clone()).await;
        shutdown.cancel();
        result.map_err(|e| format!("HTTP server: {e}"))
    };
    let worker_task = async {
        let Some(worker) = &worker else { return Ok(()) };
        let result = worker.run(shutdown.clone()).await;
        shutdown.cancel();
        result.map_err(|e| format!("worker: {e}"))
    };
    let (http_result, worker_result) = tokio::join!(http_task, worker_task);
    http_result.and(worker_result)?;
    tracing::info!("stopped");
    Ok(())
}

async fn token(config: &Config, cmd: TokenCommand) -> Result<(), String> {
    webhookd_store::migrate::migrate(&config.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let pool =
        webhookd_store::database::pool(&config.database_url, 2).map_err(|e| e.to_string())?;
    let client = pool.get().await.map_err(|e| e.to_string())?;
    match cmd {
        TokenCommand::Create { organization, name } => {
            if organization <= 0 {
                return Err("--organization must be a positive integer".into());
            }
            let key = webhookd_store::api_tokens::create_token(&**client, organization, &name)
                .await
                .map_err(|e| e.to_string())?;
            println!("{key}");
        }
        TokenCommand::Revoke { key } => {
            let revoked = webhookd_store::api_tokens::revoke_token(&**client, &key)
                .await
                .map_err(|e| e.to_string())?;
            if !revoked {
                return Err("no active token has this key".into());
            }
            eprintln!("token revoked");
        }
    }
    Ok(())
}

pub(crate) async fn stop_on_signal(shutdown: CancellationToken) {
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
    tracing::info!("shutdown requested; finishing in-flight work");
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
    let id = event.producer_id.clone().unwrap_or_default();
    let publishing = async {
        let emitter = webhookd_client::Emitter::connect(&config.amqp_url, &config.exchange)
            .await
            .map_err(|e| e.to_string())?
            .with_catalog((*config.catalog).clone());
        emitter.publish(&event).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(args.timeout, publishing).await {
        Ok(published) => published?,
        Err(_) => {
            return Err(format!(
                "the broker did not confirm the event within {:?}: it may or may not be stored; publishing \
                 it again with the id {id:?} delivers it once",
                args.timeout
            ))
        }
    }
    println!("{id}");
    Ok(())
}
