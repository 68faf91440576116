//! `webhookd replay start|status|cancel`: replays from the command line, straight on the database (a worker
//! runs them), with the API's rules.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use webhookd_store::replays::{self, CreateReplayError, NewReplay, ReplayRecord};

use crate::config::Config;
use crate::ReplayCommand;

/// How often `--wait` reads the progress.
const POLL: Duration = Duration::from_secs(1);

pub(crate) async fn run(config: &Config, cmd: ReplayCommand) -> Result<(), String> {
    webhookd_store::migrate::migrate(&config.database_url)
        .await
        .map_err(|e| e.to_string())?;
    let pool =
        webhookd_store::database::pool(&config.database_url, 2).map_err(|e| e.to_string())?;
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    match cmd {
        ReplayCommand::Start {
            organization,
            webhook,
            since,
            until,
            actions,
            wait,
        } => {
            let since = time("--since", &since)?;
            let until = until.as_deref().map(|u| time("--until", u)).transpose()?;
            let until = until.unwrap_or_else(Utc::now);
            if since >= until {
                return Err("--until must be later than --since".into());
            }
            for action in &actions {
                if config.catalog.get(action).is_none() {
                    return Err(format!("--action {action:?} is not a known action"));
                }
            }
            let new = NewReplay {
                organization,
                webhook_id: webhook,
                since,
                until,
                actions: (!actions.is_empty()).then_some(actions),
            };
            let created = replays::create(&mut client, &new)
                .await
                .map_err(|e| match e {
                    CreateReplayError::NotFound => {
                        format!("organization {organization} has no webhook {webhook}")
                    }
                    CreateReplayError::Inactive => {
                        format!("webhook {webhook} is inactive: turn it on before replaying to it")
                    }
                    CreateReplayError::Running(id) => format!(
                        "replay {id} to webhook {webhook} is running; wait for it or cancel it"
                    ),
                    CreateReplayError::Store(e) => e.to_string(),
                })?;
            println!("{}", created.id);
            eprintln!("{}", summary(&created));
            if wait {
                follow(&client, organization, created).await?;
            }
        }
        ReplayCommand::Status { organization, id } => {
            let replay = get(&client, organization, &id).await?;
            println!("{}", as_json(&replay));
        }
        ReplayCommand::Cancel { organization, id } => {
            let id = parse_id(&id)?;
            let replay = replays::cancel(&**client, organization, id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("organization {organization} has no replay {id}"))?;
            println!("{}", as_json(&replay));
        }
    }
    Ok(())
}

fn time(flag: &str, raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| format!("{flag} {raw:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z"))
}

fn parse_id(raw: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(raw).map_err(|_| format!("{raw:?} is not a replay id"))
}

async fn get(
    client: &webhookd_store::PooledClient,
    organization: i64,
    id: &str,
) -> Result<ReplayRecord, String> {
    let id = parse_id(id)?;
    replays::get(&***client, organization, id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("organization {organization} has no replay {id}"))
}

/// Prints the progress until the replay has ended and nothing is left.
async fn follow(
    client: &webhookd_store::PooledClient,
    organization: i64,
    mut replay: ReplayRecord,
) -> Result<(), String> {
    loop {
        if replay.state != "running" && replay.left() == 0 {
            println!("{}", as_json(&replay));
            return Ok(());
        }
        tokio::time::sleep(POLL).await;
        replay = get(client, organization, &replay.id.to_string()).await?;
        eprintln!("{}", summary(&replay));
    }
}

fn summary(r: &ReplayRecord) -> String {
    format!(
        "replay {}: {}, {} of {} events queued, {} sent, {} failed, {} left",
        r.id,
        r.state,
        r.events_queued,
        r.total,
        r.succeeded,
        r.dead,
        r.left()
    )
}

/// The replay as the API shows it.
fn as_json(r: &ReplayRecord) -> serde_json::Value {
    json!({
        "id": r.id.to_string(), "webhook": r.webhook_id, "since": r.since.to_rfc3339(),
        "until": r.until.to_rfc3339(), "actions": r.actions, "state": r.state, "error": r.error,
        "total": r.total, "queued": r.events_queued, "sent": r.succeeded, "failed": r.dead,
        "left": r.left(), "created_at": r.created_at.to_rfc3339(),
        "finished_at": r.finished_at.map(|t| t.to_rfc3339()),
    })
}
