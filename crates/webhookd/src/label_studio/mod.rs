//! `webhookd label-studio connect`: an unmodified Label Studio relays every action to webhookd. Through Label
//! Studio's own API it puts one relay webhook (all actions, with payload, `Authorization: Token <webhookd
//! key>`) on every project, or relies on an organization-level relay made from the Label Studio host and
//! removes the per-project ones; `--import` copies Label Studio's other webhooks into webhookd and turns the
//! originals off; `--watch` repeats for projects created later; `--dry-run` only prints the plan.
//!
//! The plan is computed by `plan.rs` (pure); this file reads both sides and carries it out.

mod client;
mod plan;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use webhookd_api::validation::check_url_reachable;
use webhookd_store::webhooks::{self, CreateError, ProjectFilter};
use webhookd_store::Pool;

use crate::config::Config;
use client::LabelStudio;
use plan::{describe, Inputs, Plan, Step, RELAY_PATH};

/// The name of the webhookd tokens `connect` mints.
const TOKEN_NAME: &str = "label-studio relay";

/// `webhookd label-studio connect`.
#[derive(clap::Args)]
pub(crate) struct ConnectArgs {
    /// Label Studio's address, as this command reaches it, e.g. http://localhost:8080.
    #[arg(long)]
    url: String,
    /// A Label Studio API key of a user of the organization: a legacy token (Label Studio started with
    /// LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true) or a personal access token. Also read from
    /// LABEL_STUDIO_API_KEY.
    #[arg(long, env = "LABEL_STUDIO_API_KEY", hide_env_values = true)]
    label_studio_token: String,
    /// The webhookd organization the relayed events belong to.
    #[arg(long)]
    organization: i64,
    /// webhookd's address as Label Studio reaches it (default: http:// and WEBHOOKD_LISTEN); the relay
    /// webhooks point at <relay-url>/api/relay/label-studio/.
    #[arg(long)]
    relay_url: Option<String>,
    /// The webhookd token the relay webhooks send. Default: the one they already send if it is still valid
    /// for the organization, else a new one minted in webhookd's database (named "label-studio relay").
    #[arg(long, env = "WEBHOOKD_RELAY_TOKEN", hide_env_values = true)]
    webhookd_token: Option<String>,
    /// Also copy Label Studio's other webhooks into webhookd and turn the originals off.
    #[arg(long)]
    import: bool,
    /// Keep going: every SECONDS, connect projects created since, until SIGINT or SIGTERM.
    #[arg(long, value_name = "SECONDS", value_parser = watch_interval)]
    watch: Option<Duration>,
    /// Print the plan and change nothing (neither in Label Studio nor in webhookd).
    #[arg(long)]
    dry_run: bool,
}

/// The longest `--watch` interval: a day.
const MAX_WATCH: Duration = Duration::from_secs(86_400);

fn watch_interval(raw: &str) -> Result<Duration, String> {
    match raw.parse::<f64>().map(Duration::try_from_secs_f64) {
        Ok(Ok(d)) if d >= Duration::from_millis(100) && d <= MAX_WATCH => Ok(d),
        _ => Err(format!(
            "{raw:?} is not a number of seconds from 0.1 to {}",
            MAX_WATCH.as_secs()
        )),
    }
}

/// Runs `connect`: once, or every `--watch` seconds until a signal.
pub(crate) async fn connect(config: &Config, args: ConnectArgs) -> Result<(), String> {
    if args.organization <= 0 {
        return Err("--organization must be a positive integer".into());
    }
    let relay_url = relay_url(args.relay_url.as_deref(), config)?;
    let ls = LabelStudio::new(&args.url, args.label_studio_token.clone())?;
    let pool = database(config, args.dry_run).await?;
    let mut token = args.webhookd_token.clone();
    if let Some(key) = &token {
        check_token(&pool, key, args.organization).await?;
    }
    println!(
        "label-studio connect: Label Studio {} → webhookd organization {} at {relay_url}{}",
        crate::config::redact_url(&args.url),
        args.organization,
        if args.dry_run {
            " (dry run: nothing is changed)"
        } else {
            ""
        }
    );
    let Some(every) = args.watch else {
        return round(config, &args, &ls, &pool, &relay_url, &mut token, true).await;
    };
    let stop = CancellationToken::new();
    tokio::spawn(crate::stop_on_signal(stop.clone()));
    let mut first = true;
    while !stop.is_cancelled() {
        // A signal ends a round under way too (each request may take up to its 30 s timeout): what it did
        // stands, and the next run takes the plan up again.
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            r = round(config, &args, &ls, &pool, &relay_url, &mut token, first) => r,
        };
        match result {
            Ok(()) => first = false,
            // Label Studio may be starting, or restarting: say so, and try again next round.
            Err(e) => eprintln!(
                "webhookd: label-studio connect: {e}; trying again in {} s",
                every.as_secs_f64()
            ),
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(every) => {}
        }
    }
    println!("label-studio connect: stopped");
    Ok(())
}

/// `<relay-url>/api/relay/label-studio/`, checked.
fn relay_url(given: Option<&str>, config: &Config) -> Result<String, String> {
    let base = match given {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => format!("http://{}", config.listen),
    };
    let base = base
        .strip_suffix(RELAY_PATH.trim_end_matches('/'))
        .unwrap_or(&base);
    let full = format!("{base}{RELAY_PATH}");
    match url::Url::parse(&full) {
        // 0.0.0.0 or [::] (WEBHOOKD_LISTEN in a container) is where webhookd listens, not an address Label
        // Studio can send to.
        Ok(u) if unspecified(&u) => Err(format!(
            "{base:?} listens on every interface; give --relay-url: webhookd's address as Label Studio reaches it"
        )),
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(full),
        _ => Err(format!(
            "--relay-url {base:?} must be webhookd's http:// or https:// address as Label Studio reaches it"
        )),
    }
}

fn unspecified(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_unspecified(),
        Some(url::Host::Ipv6(a)) => a.is_unspecified(),
        _ => false,
    }
}

/// webhookd's database (migrated first, unless this is a dry run, which writes nothing).
async fn database(config: &Config, dry_run: bool) -> Result<Pool, String> {
    let redacted = crate::config::redact_url(&config.database_url);
    if !dry_run {
        webhookd_store::migrate::migrate(&config.database_url)
            .await
            .map_err(|e| format!("webhookd's database {redacted}: {e}"))?;
    }
    let pool = webhookd_store::database::pool(&config.database_url, 2)
        .map_err(|e| format!("webhookd's database {redacted}: {e}"))?;
    // Fail now, naming the database, rather than halfway through.
    drop(pool.get().await.map_err(|e| {
        format!(
            "webhookd's database {redacted}: {}{}",
            client::chain(&e),
            if dry_run {
                " (a dry run creates nothing: run `webhookd migrate` first)"
            } else {
                ""
            }
        )
    })?);
    Ok(pool)
}

/// A database failure, with its causes.
fn db_error(e: impl std::error::Error) -> String {
    format!("webhookd's database: {}", client::chain(&e))
}

/// `key` is an active token of `organization`.
async fn check_token(pool: &Pool, key: &str, organization: i64) -> Result<(), String> {
    match token_organization(pool, key).await? {
        Some(o) if o == organization => Ok(()),
        _ => Err(format!(
            "--webhookd-token is not an active token of webhookd organization {organization}"
        )),
    }
}

async fn token_organization(pool: &Pool, key: &str) -> Result<Option<i64>, String> {
    let client = pool.get().await.map_err(db_error)?;
    webhookd_store::api_tokens::authenticate(&client, key)
        .await
        .map_err(db_error)
}

/// One pass: read both sides, plan, print, and (unless a dry run) carry it out. `token` is the webhookd key
/// the relays send, found or minted on the first pass that needs it.
async fn round(
    config: &Config,
    args: &ConnectArgs,
    ls: &LabelStudio,
    pool: &Pool,
    relay_url: &str,
    token: &mut Option<String>,
    first: bool,
) -> Result<(), String> {
    ls.new_round().await;
    let projects = ls.projects().await?;
    let ls_webhooks = ls.webhooks().await?;
    if token.is_none() {
        // The key the relays already send, if webhookd still accepts it for this organization.
        for hook in ls_webhooks.iter().filter(|h| h.is_relay()) {
            let Some(key) = hook.headers.get("Authorization").and_then(|v| v.as_str()) else {
                continue;
            };
            let Some(key) = key.strip_prefix("Token ") else {
                continue;
            };
            if token_organization(pool, key).await? == Some(args.organization) {
                *token = Some(key.to_owned());
                break;
            }
        }
    }
    let known = match args.import {
        true => Some(
            webhooks::list_webhooks(
                &**pool.get().await.map_err(db_error)?,
                args.organization,
                ProjectFilter::Any,
            )
            .await
            .map_err(db_error)?,
        ),
        false => None,
    };
    let authorization = token.as_ref().map(|k| format!("Token {k}"));
    let plan = plan::plan(&Inputs {
        projects: &projects,
        ls_webhooks: &ls_webhooks,
        relay_url,
        relay_authorization: authorization.as_deref(),
        import: known.as_deref(),
        organization: args.organization,
        catalog: &config.catalog,
    });
    if plan.steps.is_empty() {
        if first {
            print_notes(&plan);
            println!("{}", summary(&plan, "nothing to change"));
        }
        return Ok(());
    }
    if args.dry_run {
        if token.is_none() && needs_token(&plan) {
            println!(
                "plan: mint a webhookd token for organization {}",
                args.organization
            );
        }
        for step in &plan.steps {
            println!("plan: {step}");
        }
        print_notes(&plan);
        println!("{}", summary(&plan, "dry run: nothing changed"));
        return Ok(());
    }
    if token.is_none() && needs_token(&plan) {
        let client = pool.get().await.map_err(db_error)?;
        let key =
            webhookd_store::api_tokens::create_token(&**client, args.organization, TOKEN_NAME)
                .await
                .map_err(|e| format!("cannot mint a webhookd token: {}", client::chain(&e)))?;
        println!(
            "done: minted a webhookd token for organization {} (named {TOKEN_NAME:?})",
            args.organization
        );
        *token = Some(key);
    }
    let authorization = token
        .as_ref()
        .map(|k| format!("Token {k}"))
        .unwrap_or_default();
    // In order, stopping at the first failure: later steps rely on earlier ones (the relays are in place
    // before an original is turned off or a per-project relay deleted). The next run takes it up again.
    // A copy webhookd refuses is left as it is in Label Studio, with a note: no later step relies on it, and
    // stopping there would stop every later round at the same step.
    for (done, step) in plan.steps.iter().enumerate() {
        match apply(config, ls, pool, step, &authorization, relay_url).await {
            Ok(Applied::Done) => println!("done: {step}"),
            Ok(Applied::Refused(why)) => {
                eprintln!("webhookd: label-studio connect: note: {step}: left as it is: {why}")
            }
            Err(e) => {
                print_notes(&plan);
                return Err(format!(
                    "{step}: {e} ({done} of {} changes made; run again to finish)",
                    plan.steps.len()
                ));
            }
        }
    }
    print_notes(&plan);
    println!("{}", summary(&plan, "connected"));
    Ok(())
}

/// Whether the plan sends the relay's token (creates or updates a relay).
fn needs_token(plan: &Plan) -> bool {
    plan.steps
        .iter()
        .any(|s| matches!(s, Step::CreateRelay { .. } | Step::UpdateRelay { .. }))
}

fn print_notes(plan: &Plan) {
    for note in &plan.notes {
        eprintln!("webhookd: label-studio connect: note: {note}");
    }
}

fn summary(plan: &Plan, state: &str) -> String {
    match plan.organization_relay {
        Some(id) => format!(
            "label-studio connect: {state}; the organization-level relay (Label Studio webhook {id}) relays \
             every project ({})",
            plan.relayed_projects
        ),
        None => format!(
            "label-studio connect: {state}; projects relayed: {}",
            plan.relayed_projects
        ),
    }
}

/// What carrying out a step came to.
enum Applied {
    Done,
    /// webhookd refuses the copy of an import (its address, or the organization's webhook limit): why.
    Refused(String),
}

/// Carries out one step.
async fn apply(
    config: &Config,
    ls: &LabelStudio,
    pool: &Pool,
    step: &Step,
    authorization: &str,
    relay_url: &str,
) -> Result<Applied, String> {
    let body = step.label_studio_body(authorization, relay_url);
    match step {
        Step::CreateRelay { .. } => ls.create_webhook(&body).await.map(|_| Applied::Done),
        Step::UpdateRelay { webhook, .. }
        | Step::TurnOff {
            original: plan::LsWebhook { id: webhook, .. },
            ..
        } => ls
            .update_webhook(*webhook, &body)
            .await
            .map(|()| Applied::Done),
        Step::DeleteRelay { webhook, .. } => {
            ls.delete_webhook(*webhook).await.map(|()| Applied::Done)
        }
        Step::Import { original, copy } => {
            if let Err(e) = check_url_reachable(
                &copy.url,
                &config.network_policy,
                config.api_dependency_timeout,
            )
            .await
            {
                return Ok(Applied::Refused(format!(
                    "webhookd refuses its URL: {}",
                    describe(&e)
                )));
            }
            let mut client = pool.get().await.map_err(db_error)?;
            let created = match webhooks::create_webhook_limited(
                &mut client,
                copy,
                config.max_webhooks_per_organization,
            )
            .await
            {
                Ok(created) => created,
                Err(e @ CreateError::Limit { .. }) => return Ok(Applied::Refused(e.to_string())),
                Err(CreateError::Store(s)) => return Err(format!("webhookd's database: {s}")),
            };
            println!(
                "done: webhookd webhook {} is the copy of Label Studio webhook {}",
                created.id, original.id
            );
            if original.is_active {
                ls.update_webhook(original.id, &body).await?;
            }
            Ok(Applied::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_lookup(&|_| None).unwrap()
    }

    #[test]
    fn the_relay_url_ends_with_the_relay_path_once() {
        let c = config();
        assert_eq!(
            relay_url(None, &c).unwrap(),
            "http://127.0.0.1:8080/api/relay/label-studio/"
        );
        for given in [
            "http://webhookd:8080",
            "http://webhookd:8080/",
            "http://webhookd:8080/api/relay/label-studio/",
        ] {
            assert_eq!(
                relay_url(Some(given), &c).unwrap(),
                "http://webhookd:8080/api/relay/label-studio/"
            );
        }
        assert!(relay_url(Some("webhookd:8080"), &c).is_err());
        // Where webhookd listens in a container is no address to send to.
        for all in ["http://0.0.0.0:8080", "http://[::]:8080"] {
            let err = relay_url(Some(all), &c).unwrap_err();
            assert!(err.contains("give --relay-url"), "{err}");
        }
    }

    #[test]
    fn watch_takes_seconds() {
        assert_eq!(watch_interval("2.5"), Ok(Duration::from_millis(2500)));
        assert!(watch_interval("0").is_err() && watch_interval("soon").is_err());
        // Too long for a Duration, or past a day: refused, not a panic at the first sleep.
        for huge in ["1e20", "86401", "inf", "NaN"] {
            assert!(watch_interval(huge).is_err(), "{huge}");
        }
    }
}
