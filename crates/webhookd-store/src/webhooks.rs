//! Webhooks: reading them as subscriptions for the worker's cache, and creating them.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use tokio_postgres::{GenericClient, Row};
use webhookd_core::{SigningSecret, Subscription};

use crate::StoreError;

const SELECT_SUBSCRIPTIONS: &str = "
    SELECT w.id, w.organization, w.project, w.url, w.send_payload, w.send_for_all_actions, w.headers,
           w.is_active, w.secret,
           COALESCE(array_agg(a.action) FILTER (WHERE a.action IS NOT NULL), '{}') AS actions
      FROM webhooks w LEFT JOIN webhook_actions a ON a.webhook_id = w.id
     WHERE ($1::bigint IS NULL OR w.organization = $1)
     GROUP BY w.id";

/// Every webhook (of one organization, or of all), active or not, as the worker matches and sends them.
pub async fn load_subscriptions(
    client: &impl GenericClient,
    organization: Option<i64>,
) -> Result<Vec<Subscription>, StoreError> {
    let rows = client.query(SELECT_SUBSCRIPTIONS, &[&organization]).await?;
    rows.iter().map(subscription_from_row).collect()
}

fn subscription_from_row(row: &Row) -> Result<Subscription, StoreError> {
    let id: i64 = row.try_get("id")?;
    let headers: Value = row.try_get("headers")?;
    let headers = match headers {
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match v {
                Value::String(s) => (k, s),
                other => (k, other.to_string()),
            })
            .collect(),
        _ => Vec::new(),
    };
    let secret: String = row.try_get("secret")?;
    let secret = SigningSecret::parse(&secret)
        .map_err(|e| StoreError::Corrupt(format!("webhook {id} secret: {e}")))?;
    let actions: Vec<String> = row.try_get("actions")?;
    Ok(Subscription {
        id,
        organization: row.try_get("organization")?,
        project: row.try_get("project")?,
        url: row.try_get("url")?,
        send_payload: row.try_get("send_payload")?,
        send_for_all_actions: row.try_get("send_for_all_actions")?,
        headers,
        is_active: row.try_get("is_active")?,
        actions: actions.into_iter().collect::<BTreeSet<_>>(),
        secrets: vec![secret],
    })
}

/// A webhook to create; the fields and defaults of Label Studio's.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Owning organization (created if missing).
    pub organization: i64,
    /// Project, or `None` for an organization-level webhook.
    pub project: Option<i64>,
    /// Target URL.
    pub url: String,
    /// Send the payload (default true).
    pub send_payload: bool,
    /// Send every action (default true).
    pub send_for_all_actions: bool,
    /// Static headers.
    pub headers: Map<String, Value>,
    /// Active (default true).
    pub is_active: bool,
    /// Listed actions.
    pub actions: Vec<String>,
}

impl NewWebhook {
    /// A webhook with Label Studio's defaults.
    pub fn new(organization: i64, project: Option<i64>, url: impl Into<String>) -> Self {
        Self {
            organization,
            project,
            url: url.into(),
            send_payload: true,
            send_for_all_actions: true,
            headers: Map::new(),
            is_active: true,
            actions: Vec::new(),
        }
    }
}

/// Creates the organization row if it does not exist.
pub async fn ensure_organization(
    client: &impl GenericClient,
    organization: i64,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO organizations (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            &[&organization],
        )
        .await?;
    Ok(())
}

/// Creates a webhook with a fresh signing secret; returns its id and secret.
pub async fn create_webhook(
    client: &mut tokio_postgres::Client,
    new: &NewWebhook,
) -> Result<(i64, SigningSecret), StoreError> {
    let tx = client.transaction().await?;
    ensure_organization(&tx, new.organization).await?;
    let secret = SigningSecret::generate();
    let row = tx
        .query_one(
            "INSERT INTO webhooks (organization, project, url, send_payload, send_for_all_actions, headers,
                                   is_active, secret)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            &[
                &new.organization,
                &new.project,
                &new.url,
                &new.send_payload,
                &new.send_for_all_actions,
                &Value::Object(new.headers.clone()),
                &new.is_active,
                &secret.expose(),
            ],
        )
        .await?;
    let id: i64 = row.try_get(0)?;
    if !new.actions.is_empty() {
        tx.execute(
            "INSERT INTO webhook_actions (webhook_id, action) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            &[&id, &new.actions],
        )
        .await?;
    }
    tx.commit().await?;
    Ok((id, secret))
}
