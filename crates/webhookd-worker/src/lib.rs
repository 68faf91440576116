//! The webhookd worker: consumes action events from RabbitMQ, fans them out to the subscribed webhooks as
//! signed Label Studio-compatible POSTs, retries failures through the broker's delay ladder, and records
//! every attempt in PostgreSQL.

pub mod acks;
pub mod backoff_forever;
pub mod batcher;
pub mod dispatch;
pub mod pipeline;
pub mod retry_scheduler;
pub mod settings;
pub mod slow_lane;
pub mod subscriptions;
pub mod worker;

pub use settings::WorkerSettings;
pub use subscriptions::SubscriptionCache;
pub use worker::{Worker, WorkerError};
