//! Connecting to PostgreSQL: create the database if missing, and a connection pool.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod};
use tokio_postgres::{Config, NoTls};

use crate::StoreError;

/// Parses a `postgres://` URL.
pub fn parse_url(url: &str) -> Result<Config, StoreError> {
    Config::from_str(url).map_err(|e| StoreError::Config(format!("invalid database URL: {e}")))
}

/// How long a connection may be silent before TCP starts checking that the server is still there.
// Pools hand out the connection used last, so the others can sit idle for hours, and the LISTEN connection is
// idle between notifications. One dropped silently on the way (a NAT or firewall timeout) is then found out
// by the probes within about a minute, and replaced (at its next checkout, or by the listener reconnecting),
// instead of by the query that meets it waiting out TCP's retransmissions. `keepalives_*` in the URL win,
// and `keepalives=0` turns the probes off.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered keepalive probes after which the connection counts as lost.
const KEEPALIVE_RETRIES: u32 = 3;

/// `config` with webhookd's keepalive settings where the URL set none.
pub(crate) fn with_keepalives(mut config: Config) -> Config {
    if config.get_keepalives_idle() == Config::new().get_keepalives_idle() {
        config.keepalives_idle(KEEPALIVE_IDLE);
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(KEEPALIVE_INTERVAL);
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(KEEPALIVE_RETRIES);
    }
    config
}

/// Opens one connection outside the pool (migrations, the server's `postgres` database), driving it on a
/// background task.
pub async fn connect_one(config: &Config) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = with_keepalives(config.clone()).connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// Creates the URL's database if it does not exist yet (connecting to the server's `postgres` database).
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    let config = parse_url(url)?;
    let name = config
        .get_dbname()
        .ok_or_else(|| StoreError::Config("the database URL names no database".into()))?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect_one(&admin).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let sql = format!("CREATE DATABASE {}", quote_ident(&name));
        match client.batch_execute(&sql).await {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Another process created it between the check and the CREATE.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Drops the URL's database (tests and benchmarks clean up with it).
pub async fn drop_database(url: &str) -> Result<(), StoreError> {
    let config = parse_url(url)?;
    let Some(name) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect_one(&admin).await?;
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&name)
        ))
        .await?;
    Ok(())
}

/// A pool of `size` connections to `url`.
pub fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    pool_with_options(url, size, None)
}

/// A pool of `size` connections to `url` whose sessions start with the server `options`
/// (e.g. `-c synchronous_commit=off`).
pub fn pool_with_options(
    url: &str,
    size: usize,
    options: Option<&str>,
) -> Result<Pool, StoreError> {
    build(builder(url, size, options)?)
}

/// A pool of `size` connections to `url` where waiting for a free connection, opening one and checking one
/// before reuse each give up after `limit` with `PoolError::Timeout`, instead of waiting as long as it takes;
/// and so does a statement's wait for a lock (`lock_timeout`: SQLSTATE 55P03), so that a row another transaction
/// holds (an open `BEGIN`, a client lost mid-transaction) neither hangs a request nor keeps its connection.
pub fn pool_with_timeouts(url: &str, size: usize, limit: Duration) -> Result<Pool, StoreError> {
    let options = format!("-c lock_timeout={}ms", limit.as_millis().max(1));
    build(
        builder(url, size, Some(&options))?
            .wait_timeout(Some(limit))
            .create_timeout(Some(limit))
            .recycle_timeout(Some(limit))
            .runtime(deadpool_postgres::Runtime::Tokio1),
    )
}

fn builder(
    url: &str,
    size: usize,
    options: Option<&str>,
) -> Result<deadpool_postgres::PoolBuilder, StoreError> {
    let mut config = with_keepalives(parse_url(url)?);
    if let Some(options) = options {
        with_options(&mut config, options);
    }
    if config.get_application_name().is_none() {
        config.application_name("webhookd");
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size)
        // The connection used last is handed out next: a steady load keeps reusing a few warm connections
        // instead of growing every connection's buffers to the size of the largest batch (measured: 4 MiB
        // of the worker's peak heap with the default rotation).
        .queue_mode(QueueMode::Lifo))
}

fn build(builder: deadpool_postgres::PoolBuilder) -> Result<Pool, StoreError> {
    builder
        .build()
        .map_err(|e| StoreError::Config(format!("cannot build the database pool: {e}")))
}

/// Adds server `options` to those the URL gives (`?options=…`), which PostgreSQL applies in order, so that
/// an operator's settings (a `search_path`, say) are kept; the ones added here win where both set one.
fn with_options(config: &mut tokio_postgres::Config, options: &str) {
    let combined = match config.get_options() {
        Some(given) if !given.trim().is_empty() => format!("{given} {options}"),
        _ => options.to_owned(),
    };
    config.options(combined);
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_added_to_those_of_the_url() {
        let mut config = parse_url("postgres://u@h/db?options=-c%20search_path%3Dhooks").unwrap();
        with_options(&mut config, "-c lock_timeout=5000ms");
        assert_eq!(
            config.get_options(),
            Some("-c search_path=hooks -c lock_timeout=5000ms")
        );
        let mut config = parse_url("postgres://u@h/db").unwrap();
        with_options(&mut config, "-c synchronous_commit=off");
        assert_eq!(config.get_options(), Some("-c synchronous_commit=off"));
    }

    #[test]
    fn silent_connections_are_probed_unless_the_url_says_otherwise() {
        let config = with_keepalives(parse_url("postgres://u@h/db").unwrap());
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        let url =
            "postgres://u@h/db?keepalives_idle=300&keepalives_interval=60&keepalives_retries=9";
        let config = with_keepalives(parse_url(url).unwrap());
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(300));
        assert_eq!(
            config.get_keepalives_interval(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(config.get_keepalives_retries(), Some(9));
        let config = with_keepalives(parse_url("postgres://u@h/db?keepalives=0").unwrap());
        assert!(!config.get_keepalives());
    }
}
