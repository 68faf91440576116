//! Schema migrations (`migrations/` at the repository root), applied by `webhookd migrate` and at start-up.

use crate::database::{connect_one, ensure_database, parse_url};
use crate::StoreError;

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// How many days of delivery-log partitions exist ahead of today.
pub const PARTITION_DAYS_AHEAD: i32 = 7;

/// Creates the database if needed, applies pending migrations and the log partitions. Idempotent; an
/// advisory lock makes concurrent start-ups wait for each other instead of racing.
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
    ensure_log_partitions(&client).await?;
    let applied = report.applied_migrations().len();
    if applied > 0 {
        tracing::info!(applied, "database migrated");
    }
    Ok(applied)
}

/// Makes sure the delivery log has partitions for today and the next days.
pub async fn ensure_log_partitions(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .execute(
            "SELECT webhookd_ensure_log_partitions($1)",
            &[&PARTITION_DAYS_AHEAD],
        )
        .await?;
    Ok(())
}
