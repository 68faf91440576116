//! The webhookd worker: consumes action events from RabbitMQ, fans them out to the subscribed webhooks as
//! signed Label Studio-compatible POSTs, retries failures through the broker's delay ladder, and records
//! every attempt in PostgreSQL.
//!
//! Following one event: `worker` consumes it → `event_path` runs its stages (`stages/parse`, `claim`,
//! `fan_out`, `attempt`, `commit`, `settle`) → the writers (`claim_writer`, `log_writer`,
//! `retry_scheduler`, each a `batcher`) commit what they produce. A retry task comes back through
//! `retry_path` (`stages/parse`, `load`, `retry_attempt`, `attempt`, `commit`, `settle`).

mod acks;
mod backoff_forever;
mod batcher;
mod bodies;
mod claim_writer;
mod context;
mod event_path;
mod log_writer;
mod replay_runner;
mod retry_lane;
mod retry_path;
mod retry_scheduler;
mod settings;
mod slow_lane;
mod stages;
mod subscriptions;
#[cfg(test)]
mod test_support;
mod upkeep;
mod webhook_limits;
mod worker;

pub use settings::WorkerSettings;
pub use subscriptions::SubscriptionCache;
pub use worker::{Worker, WorkerError};
