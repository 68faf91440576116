//! The OpenAPI document, generated from the handlers' annotations and served at `/api/openapi.json`.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{
    deliveries, events, info, relay, replays, secrets, stats, webhook_test, webhooks,
};

/// webhookd's management API.
#[derive(OpenApi)]
#[openapi(
    info(title = "webhookd", description = "Webhook management (compatible with Label Studio's /api/webhooks/), \
        the delivery log, tests, redelivery, HTTP event ingest and the Label Studio relay. \
        Authenticate with `Authorization: Token <key>`."),
    paths(
        webhooks::list, webhooks::create, webhooks::get, webhooks::patch, webhooks::put, webhooks::delete,
        info::info, deliveries::list, deliveries::list_organization, deliveries::detail, deliveries::redeliver, deliveries::recover,
        webhook_test::test, secrets::get, secrets::rotate, events::ingest, relay::label_studio, replays::create, replays::get,
        replays::cancel, replays::list, stats::stats,
    ),
    components(schemas(webhooks::Webhook, webhooks::WebhookWrite, deliveries::Attempt, deliveries::AttemptPage,
        webhook_test::TestOutcome, secrets::Secret, replays::Replay, stats::Stats, stats::Counts,
        stats::WebhookHealth)),
    modifiers(&TokenAuth),
    security(("token" = [])),
)]
pub struct ApiDoc;

struct TokenAuth;

impl Modify for TokenAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "Token <key>, minted with `webhookd token create --organization <id>`",
            ))),
        );
    }
}
