//! Connecting to PostgreSQL: create the database if missing, and a connection pool.

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, QueueMode, RecyclingMethod};
use tokio_postgres::{Config, NoTls};

use crate::StoreError;

/// Parses a `postgres://` URL.
pub fn parse_url(url: &str) -> Result<Config, StoreError> {
    Config::from_str(url).map_err(|e| StoreError::Config(format!("invalid database URL: {e}")))
}

/// Opens one connection outside the pool (migrations, LISTEN), driving it on a background task.
pub async fn connect_one(config: &Config) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = config.connect(NoTls).await?;
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
    let mut config = parse_url(url)?;
    if let Some(options) = options {
        config.options(options);
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
    Pool::builder(manager)
        .max_size(size)
        // The connection used last is handed out next: a steady load keeps reusing a few warm connections
        // instead of growing every connection's buffers to the size of the largest batch (measured: 4 MiB
        // of the worker's peak heap with the default rotation).
        .queue_mode(QueueMode::Lifo)
        .build()
        .map_err(|e| StoreError::Config(format!("cannot build the database pool: {e}")))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
