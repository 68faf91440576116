//! PostgreSQL for webhookd: schema migrations, webhooks and their subscriptions, events, the delivery log.

pub mod api_tokens;
pub mod database;
pub mod delivery_log;
pub mod events;
pub mod listener;
pub mod migrate;
pub mod webhooks;

pub use deadpool_postgres::{Pool, PoolError};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or lost a query or connection.
    #[error("database error: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("database pool error: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database URL or settings are unusable.
    #[error("{0}")]
    Config(String),
    /// A stored value is not what webhookd wrote.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}
