//! PostgreSQL for webhookd: schema migrations, webhooks and their subscriptions, events, the delivery log.

pub mod api_tokens;
pub mod database;
pub mod delivery_log;
mod error;
pub mod events;
pub mod listener;
pub mod migrate;
pub mod replays;
pub mod retention;
pub mod stats;
pub mod webhooks;

pub use deadpool_postgres::{Client as PooledClient, Pool, PoolError};

pub use error::{with_causes, ErrorClass, StoreError};
