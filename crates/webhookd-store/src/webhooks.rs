//! Webhooks: reading them as subscriptions for the worker's cache, and creating, listing, updating and
//! deleting them and rotating their secrets for the API.

use std::collections::BTreeSet;

use serde_json::{Map, Value};
use tokio_postgres::{GenericClient, Row};
use webhookd_core::{SigningSecret, Subscription};

use crate::StoreError;

/// The columns and joins of a webhook as the worker uses it; each caller adds its own `WHERE` so that the
/// plan of each uses its index (one generic `$1 IS NULL OR …` filter would scan every webhook to reload
/// one organization).
macro_rules! select_subscriptions {
    ($filter:literal) => {
        concat!(
            "SELECT w.id, w.organization, w.project, w.url, w.send_payload, w.send_for_all_actions,
                    w.headers, w.is_active, w.secret,
                    ARRAY(SELECT p.secret FROM webhook_previous_secrets p
                           WHERE p.webhook_id = w.id AND p.expires_at > now()
                           ORDER BY p.expires_at DESC) AS previous_secrets,
                    COALESCE(array_agg(a.action) FILTER (WHERE a.action IS NOT NULL), '{}') AS actions
               FROM webhooks w LEFT JOIN webhook_actions a ON a.webhook_id = w.id ",
            $filter,
            " GROUP BY w.id"
        )
    };
}

const SELECT_ALL_SUBSCRIPTIONS: &str = select_subscriptions!("");
const SELECT_ORGANIZATION_SUBSCRIPTIONS: &str = select_subscriptions!("WHERE w.organization = $1");
const SELECT_ONE_SUBSCRIPTION: &str =
    select_subscriptions!("WHERE w.organization = $1 AND w.id = $2");

/// Every webhook (of one organization, or of all), active or not, as the worker matches and sends them.
///
/// The rows are read as a stream and each is turned into a subscription as it arrives: the whole result is never
/// held as rows next to the subscriptions made of them (at 100,000 webhooks that doubled the worker's peak memory
/// at every full load).
pub async fn load_subscriptions(
    client: &impl GenericClient,
    organization: Option<i64>,
) -> Result<Vec<Subscription>, StoreError> {
    use futures::TryStreamExt;
    let rows = match organization {
        Some(organization) => {
            client
                .query_raw(
                    SELECT_ORGANIZATION_SUBSCRIPTIONS,
                    [&organization as &(dyn tokio_postgres::types::ToSql + Sync)],
                )
                .await?
        }
        None => {
            client
                .query_raw(
                    SELECT_ALL_SUBSCRIPTIONS,
                    std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
                )
                .await?
        }
    };
    let mut rows = std::pin::pin!(rows);
    let mut subs = Vec::new();
    while let Some(row) = rows.try_next().await? {
        match subscription_from_row(&row) {
            Ok(sub) => subs.push(sub),
            // One unusable row must not stop every other webhook from being delivered to.
            Err(e) => tracing::error!(error = %e, "webhook skipped: its row cannot be used"),
        }
    }
    subs.shrink_to_fit();
    Ok(subs)
}

/// Webhook `id` of `organization`, as the worker sends to it; an unusable row is an error here.
pub async fn load_subscription(
    client: &impl GenericClient,
    organization: i64,
    id: i64,
) -> Result<Option<Subscription>, StoreError> {
    let row = client
        .query_opt(SELECT_ONE_SUBSCRIPTION, &[&organization, &id])
        .await?;
    row.as_ref().map(subscription_from_row).transpose()
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
        other => {
            return Err(StoreError::Corrupt(format!(
                "webhook {id} headers are not an object: {other}"
            )))
        }
    };
    let secret: String = row.try_get("secret")?;
    let secret = SigningSecret::parse(&secret)
        .map_err(|e| StoreError::Corrupt(format!("webhook {id} secret: {e}")))?;
    let mut secrets = vec![secret];
    let previous: Vec<String> = row.try_get("previous_secrets")?;
    for old in previous {
        // A rotated-out secret only adds a signature: one that cannot be read is left out, not the webhook.
        match SigningSecret::parse(&old) {
            Ok(s) => secrets.push(s),
            Err(e) => {
                tracing::error!(webhook_id = id, error = %e, "a previous signing secret cannot be used; signing without it")
            }
        }
    }
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
        secrets,
    })
}

/// A webhook to create; the fields and defaults of Label Studio's.
#[derive(Debug, Clone, PartialEq)]
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

    /// This webhook with the fields `changes` sets (its URL too, if it sets one).
    pub fn with(mut self, changes: WebhookChanges) -> Self {
        let WebhookChanges {
            url,
            send_payload,
            send_for_all_actions,
            headers,
            is_active,
            actions,
        } = changes;
        self.url = url.unwrap_or(self.url);
        self.send_payload = send_payload.unwrap_or(self.send_payload);
        self.send_for_all_actions = send_for_all_actions.unwrap_or(self.send_for_all_actions);
        self.headers = headers.unwrap_or(self.headers);
        self.is_active = is_active.unwrap_or(self.is_active);
        self.actions = actions.unwrap_or(self.actions);
        self
    }
}

impl From<NewWebhook> for WebhookChanges {
    /// Changes that set every field to the webhook's (a full replacement).
    fn from(w: NewWebhook) -> Self {
        Self {
            url: Some(w.url),
            send_payload: Some(w.send_payload),
            send_for_all_actions: Some(w.send_for_all_actions),
            headers: Some(w.headers),
            is_active: Some(w.is_active),
            actions: Some(w.actions),
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
    let id = insert_webhook(&tx, new).await?;
    let secret = webhook_secret(&tx, new.organization, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("webhook {id} vanished")))?;
    tx.commit().await?;
    let secret = SigningSecret::parse(&secret).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((id, secret))
}

/// A webhook as the management API shows it (Label Studio's fields plus `consecutive_failures`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    /// Id.
    pub id: i64,
    /// Organization.
    pub organization: i64,
    /// Project, or `None` for an organization-level webhook.
    pub project: Option<i64>,
    /// Target URL.
    pub url: String,
    /// Send the payload.
    pub send_payload: bool,
    /// Send every action.
    pub send_for_all_actions: bool,
    /// Static headers.
    pub headers: Map<String, Value>,
    /// Active.
    pub is_active: bool,
    /// Failed attempts in a row.
    pub consecutive_failures: i32,
    /// When the current run of failures began (`None` after a success).
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Why webhookd turned the webhook off, while it is off because of it.
    pub disabled_reason: Option<String>,
    /// When webhookd turned it off.
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Listed actions, sorted.
    pub actions: Vec<String>,
    /// Creation time.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Last change.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

const SELECT_RECORDS: &str = "
    SELECT w.id, w.organization, w.project, w.url, w.send_payload, w.send_for_all_actions, w.headers,
           w.is_active, w.consecutive_failures, w.failing_since, w.disabled_reason, w.disabled_at,
           w.created_at, w.updated_at,
           ARRAY(SELECT a.action FROM webhook_actions a WHERE a.webhook_id = w.id ORDER BY a.action) AS actions
      FROM webhooks w";

fn record_from_row(row: &Row) -> Result<WebhookRecord, StoreError> {
    let headers = match row.try_get::<_, Value>("headers")? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    Ok(WebhookRecord {
        id: row.try_get("id")?,
        organization: row.try_get("organization")?,
        project: row.try_get("project")?,
        url: row.try_get("url")?,
        send_payload: row.try_get("send_payload")?,
        send_for_all_actions: row.try_get("send_for_all_actions")?,
        headers,
        is_active: row.try_get("is_active")?,
        consecutive_failures: row.try_get("consecutive_failures")?,
        failing_since: row.try_get("failing_since")?,
        disabled_reason: row.try_get("disabled_reason")?,
        disabled_at: row.try_get("disabled_at")?,
        actions: row.try_get("actions")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Which webhooks a list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectFilter {
    /// All of the organization's.
    Any,
    /// Organization-level ones only (`?project=isnull`).
    OrganizationLevel,
    /// Those of one project (`?project=<id>`).
    Project(i64),
}

/// An organization's webhooks, by id.
pub async fn list_webhooks(
    client: &impl GenericClient,
    organization: i64,
    filter: ProjectFilter,
) -> Result<Vec<WebhookRecord>, StoreError> {
    let (mode, project): (i32, Option<i64>) = match filter {
        ProjectFilter::Any => (0, None),
        ProjectFilter::OrganizationLevel => (1, None),
        ProjectFilter::Project(p) => (2, Some(p)),
    };
    let sql = format!(
        "{SELECT_RECORDS} WHERE w.organization = $1 AND ($2 = 0 OR ($2 = 1 AND w.project IS NULL)
                                               OR ($2 = 2 AND w.project = $3)) ORDER BY w.id"
    );
    let rows = client
        .query(&sql, &[&organization, &mode, &project])
        .await?;
    rows.iter().map(record_from_row).collect()
}

/// One webhook of `organization`; `None` if it does not exist there.
pub async fn get_webhook(
    client: &impl GenericClient,
    organization: i64,
    id: i64,
) -> Result<Option<WebhookRecord>, StoreError> {
    let sql = format!("{SELECT_RECORDS} WHERE w.organization = $1 AND w.id = $2");
    let row = client.query_opt(&sql, &[&organization, &id]).await?;
    row.as_ref().map(record_from_row).transpose()
}

/// Why a webhook was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The organization already has its maximum.
    #[error("organization {organization} already has {limit} webhooks, the maximum (WEBHOOK_MAX_PER_ORGANIZATION)")]
    Limit {
        /// Organization.
        organization: i64,
        /// The maximum.
        limit: i64,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Creates a webhook unless its organization already has `limit` (counted under a lock, so concurrent
/// creations cannot pass it).
pub async fn create_webhook_limited(
    client: &mut tokio_postgres::Client,
    new: &NewWebhook,
    limit: i64,
) -> Result<WebhookRecord, CreateError> {
    let tx = client.transaction().await.map_err(StoreError::from)?;
    ensure_organization(&tx, new.organization).await?;
    tx.execute(
        "SELECT 1 FROM organizations WHERE id = $1 FOR UPDATE",
        &[&new.organization],
    )
    .await
    .map_err(StoreError::from)?;
    let count: i64 = tx
        .query_one(
            "SELECT count(*) FROM webhooks WHERE organization = $1",
            &[&new.organization],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    if count >= limit {
        return Err(CreateError::Limit {
            organization: new.organization,
            limit,
        });
    }
    let id = insert_webhook(&tx, new).await?;
    let record = get_webhook(&tx, new.organization, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("webhook {id} vanished")))?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(record)
}

async fn insert_webhook(tx: &impl GenericClient, new: &NewWebhook) -> Result<i64, StoreError> {
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
    set_actions(tx, id, &new.actions).await?;
    Ok(id)
}

async fn set_actions(
    tx: &impl GenericClient,
    id: i64,
    actions: &[String],
) -> Result<(), StoreError> {
    tx.execute("DELETE FROM webhook_actions WHERE webhook_id = $1", &[&id])
        .await?;
    if !actions.is_empty() {
        tx.execute(
            "INSERT INTO webhook_actions (webhook_id, action) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
            &[&id, &actions],
        )
        .await?;
    }
    Ok(())
}

/// The fields an update sets; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookChanges {
    /// New URL.
    pub url: Option<String>,
    /// New `send_payload`.
    pub send_payload: Option<bool>,
    /// New `send_for_all_actions`.
    pub send_for_all_actions: Option<bool>,
    /// New static headers.
    pub headers: Option<Map<String, Value>>,
    /// New `is_active`.
    pub is_active: Option<bool>,
    /// New action list (replaces the old one).
    pub actions: Option<Vec<String>>,
}

/// Applies `changes`; as in Label Studio's newest code, re-activating a webhook or changing its URL or
/// headers resets `consecutive_failures` (and `failing_since`); re-activating it also clears why and when
/// webhookd turned it off. `None` if the webhook is not the organization's.
pub async fn update_webhook(
    client: &mut tokio_postgres::Client,
    organization: i64,
    id: i64,
    changes: &WebhookChanges,
) -> Result<Option<WebhookRecord>, StoreError> {
    let tx = client.transaction().await?;
    let headers = changes.headers.clone().map(Value::Object);
    let updated = tx
        .execute(
            "UPDATE webhooks SET
                 consecutive_failures = CASE
                     WHEN ($7::bool IS TRUE AND NOT is_active)
                       OR ($3::text IS NOT NULL AND $3 <> url)
                       OR ($6::jsonb IS NOT NULL AND $6 <> headers) THEN 0
                     ELSE consecutive_failures END,
                 failing_since = CASE
                     WHEN ($7::bool IS TRUE AND NOT is_active)
                       OR ($3::text IS NOT NULL AND $3 <> url)
                       OR ($6::jsonb IS NOT NULL AND $6 <> headers) THEN NULL
                     ELSE failing_since END,
                 disabled_reason = CASE WHEN $7::bool IS TRUE THEN NULL ELSE disabled_reason END,
                 disabled_at = CASE WHEN $7::bool IS TRUE THEN NULL ELSE disabled_at END,
                 url = COALESCE($3, url),
                 send_payload = COALESCE($4, send_payload),
                 send_for_all_actions = COALESCE($5, send_for_all_actions),
                 headers = COALESCE($6, headers),
                 is_active = COALESCE($7, is_active),
                 updated_at = now()
             WHERE organization = $1 AND id = $2",
            &[
                &organization,
                &id,
                &changes.url,
                &changes.send_payload,
                &changes.send_for_all_actions,
                &headers,
                &changes.is_active,
            ],
        )
        .await?;
    if updated == 0 {
        return Ok(None);
    }
    if let Some(actions) = &changes.actions {
        set_actions(&tx, id, actions).await?;
    }
    let record = get_webhook(&tx, organization, id).await?;
    tx.commit().await?;
    Ok(record)
}

/// Deletes a webhook; whether it existed in the organization.
pub async fn delete_webhook(
    client: &impl GenericClient,
    organization: i64,
    id: i64,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "DELETE FROM webhooks WHERE organization = $1 AND id = $2",
            &[&organization, &id],
        )
        .await?;
    Ok(n > 0)
}

/// The current signing secret of a webhook of `organization`.
pub async fn webhook_secret(
    client: &impl GenericClient,
    organization: i64,
    id: i64,
) -> Result<Option<String>, StoreError> {
    let row = client
        .query_opt(
            "SELECT secret FROM webhooks WHERE organization = $1 AND id = $2",
            &[&organization, &id],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Replaces the signing secret; the old one keeps signing (alongside) for `grace`. Returns the new one.
pub async fn rotate_secret(
    client: &mut tokio_postgres::Client,
    organization: i64,
    id: i64,
    grace: std::time::Duration,
) -> Result<Option<String>, StoreError> {
    let tx = client.transaction().await?;
    // Locked, so that two concurrent rotations cannot both retire the same secret and lose one.
    let row = tx
        .query_opt(
            "SELECT secret FROM webhooks WHERE organization = $1 AND id = $2 FOR UPDATE",
            &[&organization, &id],
        )
        .await?;
    let Some(old) = row.map(|r| r.get::<_, String>(0)) else {
        return Ok(None);
    };
    let new = SigningSecret::generate().expose();
    let grace_secs = grace.as_secs_f64();
    tx.execute(
        "INSERT INTO webhook_previous_secrets (webhook_id, secret, expires_at)
         VALUES ($1, $2, now() + make_interval(secs => $3))",
        &[&id, &old, &grace_secs],
    )
    .await?;
    tx.execute(
        "DELETE FROM webhook_previous_secrets WHERE webhook_id = $1 AND expires_at <= now()",
        &[&id],
    )
    .await?;
    tx.execute(
        "UPDATE webhooks SET secret = $2, updated_at = now() WHERE id = $1",
        &[&id, &new],
    )
    .await?;
    tx.commit().await?;
    Ok(Some(new))
}
