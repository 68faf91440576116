//! Schema migrations (`migrations/` at the repository root), applied by `webhookd migrate` and at start-up.

use crate::database::{connect_one, ensure_database, parse_url};
use crate::StoreError;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Creates the database if needed and applies pending migrations. Idempotent; an advisory lock makes
/// concurrent start-ups wait for each other instead of racing. (The delivery log's partitions are the
/// worker's: `retention::ensure_partitions`, with the span it is configured with.)
pub async fn migrate(url: &str) -> Result<usize, StoreError> {
    ensure_database(url).await?;
    let mut client = connect_one(&parse_url(url)?).await?;
    client
        .batch_execute("SELECT pg_advisory_lock(7310662)")
        .await?;
    let report = embedded::migrations::runner().run_async(&mut client).await;
    let unlock = client
        .batch_execute("SELECT pg_advisory_unlock(7310662)")
        .await;
    let report = report.map_err(|e| StoreError::Migration(e.to_string()))?;
    unlock?;
    let applied = report.applied_migrations().len();
    if applied > 0 {
        tracing::info!(applied, "database migrated");
    }
    Ok(applied)
}
