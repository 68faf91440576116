//! webhookd's domain logic, free of I/O: the action catalog, the event contract, Label Studio bodies,
//! subscription matching, Standard Webhooks signatures and the retry policy.

pub mod actions;
pub mod attempt;
pub mod body;
pub mod endpoint_health;
pub mod event;
pub mod ids;
pub mod network_policy;
pub mod python_json;
pub mod relay;
pub mod retry_policy;
pub mod signature;
pub mod static_headers;
pub mod subscription;

pub use actions::{ActionSpec, Catalog};
pub use attempt::AttemptReport;
pub use event::{Event, EventError};
pub use ids::{DeliveryId, EventId};
pub use network_policy::NetworkPolicy;
pub use retry_policy::{AttemptResult, RetryPolicy, Verdict};
pub use signature::SigningSecret;
pub use subscription::{ActionSet, Reload, Subscription, SubscriptionIndex};
