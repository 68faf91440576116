//! The producer client: emit Label Studio-style action events to webhookd over AMQP, with publisher
//! confirms. `emit` returns only once RabbitMQ has taken the event; from then on webhookd owns it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), webhookd_client::EmitError> {
//! use serde_json::json;
//! let emitter = webhookd_client::Emitter::connect("amqp://guest:guest@127.0.0.1:5672/%2f", "webhookd.events").await?;
//! let payload = json!({"annotation": {"id": 17}, "task": {"id": 19}});
//! let id = emitter
//!     .emit(1, Some(json!({"id": 7, "title": "Project 7"})), "ANNOTATION_CREATED", payload)
//!     .await?;
//! println!("published event {id}");
//! # Ok(()) }
//! ```

use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use serde_json::{json, Map, Value};
use webhookd_broker::{ConfirmedPublisher, PublishError};
pub use webhookd_core::{ActionSpec, Catalog, Event, EventError};

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    /// The event breaks the contract; nothing was sent.
    #[error("invalid event: {0}")]
    Invalid(#[from] EventError),
    /// `emit_for_instances` got a list that does not fit the action.
    #[error("{0}")]
    Instances(String),
    /// The broker did not confirm the event; it may or may not have been taken. Publishing it again with
    /// the same id (see `Emitter::publish`) delivers it once.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The connection could not be made.
    #[error("cannot connect to the broker: {0}")]
    Connect(#[from] lapin::Error),
}

/// A connection to RabbitMQ that publishes events to webhookd's exchange.
pub struct Emitter {
    _connection: lapin::Connection,
    publisher: ConfirmedPublisher,
    exchange: String,
    catalog: Catalog,
}

impl Emitter {
    /// Connects to `amqp_url` and declares the durable topic `exchange` (webhookd's default: `webhookd.events`).
    pub async fn connect(amqp_url: &str, exchange: &str) -> Result<Self, EmitError> {
        let connection = webhookd_broker::connect(amqp_url, "webhookd-client").await?;
        let publisher = ConfirmedPublisher::open(&connection).await?;
        let options = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        publisher
            .channel()
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            _connection: connection,
            publisher,
            exchange: exchange.to_owned(),
            catalog: Catalog::builtin(),
        })
    }

    /// Validates against `catalog` instead of the built-in actions (for custom actions).
    pub fn with_catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// Label Studio's `emit_webhooks`: publishes `action` for `organization`, scoped to `project` (an object
    /// with an `id`, or `None` for organization-level webhooks only), with the action's `payload`. Returns
    /// the producer event id it put in the envelope (a UUIDv7). To retry safely after an error, build the
    /// event yourself with an id and use `publish`: re-publishing the same id delivers once.
    pub async fn emit(
        &self,
        organization: i64,
        project: Option<Value>,
        action: &str,
        payload: Value,
    ) -> Result<String, EmitError> {
        let id = uuid::Uuid::now_v7().to_string();
        let envelope = json!({"version": 1, "id": id, "organization": organization, "action": action,
            "project": project, "payload": payload});
        let event = Event::from_value(envelope, &self.catalog)?;
        self.publish(&event).await?;
        Ok(id)
    }

    /// Label Studio's `emit_webhooks_for_instances`: the payload is the action's key holding `instances`
    /// (a list for `many` actions, the single instance otherwise).
    pub async fn emit_for_instances(
        &self,
        organization: i64,
        project: Option<Value>,
        action: &str,
        instances: Vec<Value>,
    ) -> Result<String, EmitError> {
        let spec = self
            .catalog
            .get(action)
            .ok_or_else(|| EventError::UnknownAction(action.to_owned()))?;
        let value = if spec.many {
            Value::Array(instances)
        } else {
            let mut instances = instances;
            if instances.len() != 1 {
                return Err(EmitError::Instances(format!(
                    "{action} carries one instance, got {}",
                    instances.len()
                )));
            }
            instances.remove(0)
        };
        let mut payload = Map::new();
        payload.insert(spec.key.clone(), value);
        self.emit(organization, project, action, Value::Object(payload))
            .await
    }

    /// Publishes a validated event as it is (its `producer_id`, if any, makes a re-publish a duplicate).
    /// An event whose `producer_id` breaks the contract (set by hand: 1 to 255 bytes of UTF-8, no control
    /// characters) is refused with `EmitError::Invalid` before anything is sent.
    pub async fn publish(&self, event: &Event) -> Result<(), EmitError> {
        if let Some(id) = &event.producer_id {
            webhookd_core::event::check_producer_id(id)?;
        }
        let body = event.to_envelope().to_string();
        self.publisher
            .publish_json(
                &self.exchange,
                &event.action,
                body.as_bytes(),
                event.producer_id.as_deref(),
                None,
            )
            .await?;
        Ok(())
    }
}
