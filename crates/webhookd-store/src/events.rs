//! Events: claimed (stored) before delivery so that a re-published event is delivered once, and read back
//! for retries and redeliveries.

use std::borrow::Borrow;
use std::collections::HashSet;

use deadpool_postgres::GenericClient as PooledClient;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::StoreError;

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The id to give it if it is new.
    pub id: Uuid,
    /// Organization.
    pub organization: i64,
    /// Project id, if scoped to one.
    pub project: Option<i64>,
    /// Action name.
    pub action: String,
    /// The producer's id, which makes a re-publish a duplicate.
    pub producer_id: Option<String>,
    /// The envelope, as JSON text.
    pub body: String,
    /// Unique to one handling of one message: a retried write that finds it knows the row is its own.
    pub claim_token: Uuid,
}

/// The outcome of claiming one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The event's id: the new one, or the one stored when the producer id was first seen.
    pub event_id: Uuid,
    /// Whether this claim stored it, now or in an earlier try of the same write whose reply was lost
    /// (false: the producer id was already known).
    pub fresh: bool,
}

/// Stores a batch of events; returns one claim per event, in order. An event is fresh when this handling
/// stored it: its row carries this claim's token (written now, or by an earlier try of the same write whose
/// reply was lost). Any other conflict, on the producer id or on the event id, is not fresh.
pub async fn claim_events<E: Borrow<NewEvent>>(
    client: &impl PooledClient,
    events: &[E],
) -> Result<Vec<Claim>, StoreError> {
    let events: Vec<&NewEvent> = events.iter().map(Borrow::borrow).collect();
    let inserted = insert_events(client, &events).await?;
    let stored: HashSet<Uuid> = inserted
        .iter()
        .map(|r| r.try_get::<_, Uuid>(0))
        .collect::<Result<_, _>>()?;
    let mut claims: Vec<Claim> = events
        .iter()
        .map(|e| Claim {
            event_id: e.id,
            fresh: stored.contains(&e.claim_token),
        })
        .collect();
    let conflicted: Vec<&NewEvent> = events
        .iter()
        .zip(&claims)
        .filter(|(_, c)| !c.fresh)
        .map(|(e, _)| *e)
        .collect();
    if conflicted.is_empty() {
        return Ok(claims);
    }
    // The rows they ran into: by producer id where there is one, else by event id.
    let c_ids: Vec<Uuid> = conflicted.iter().map(|e| e.id).collect();
    let (c_orgs, c_pids): (Vec<i64>, Vec<&str>) = conflicted
        .iter()
        .filter_map(|e| Some((e.organization, e.producer_id.as_deref()?)))
        .unzip();
    let rows = client
        .query(
            "SELECT e.id, e.organization, e.producer_id, e.claim_token
               FROM events e
              WHERE e.id = ANY($1)
             UNION
             SELECT e.id, e.organization, e.producer_id, e.claim_token
               FROM events e
               JOIN unnest($2::int8[], $3::text[]) AS u(organization, producer_id)
                 ON e.organization = u.organization AND e.producer_id = u.producer_id",
            &[&c_ids, &c_orgs, &c_pids],
        )
        .await?;
    let found: Vec<(Uuid, i64, Option<String>, Option<Uuid>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    for (event, claim) in events.iter().zip(claims.iter_mut()) {
        if claim.fresh {
            continue;
        }
        let same = |(id, org, pid, _): &&(Uuid, i64, Option<String>, Option<Uuid>)| match event
            .producer_id
            .as_deref()
        {
            Some(p) => *org == event.organization && pid.as_deref() == Some(p),
            None => *id == event.id,
        };
        if let Some((id, _, _, token)) = found.iter().find(same) {
            claim.event_id = *id;
            claim.fresh = *token == Some(event.claim_token);
        }
    }
    Ok(claims)
}

/// Inserts the events that are not stored yet (by id or by producer id); returns the claim tokens of those
/// inserted. Each row's `created_at` is the time it is inserted, in the order of `events`, so that the order
/// events were stored in (a replay's order) follows the order they were claimed in, within a batch too. Prepared once per connection: a claim is on the way to the receiver, and an unprepared statement
/// costs a round trip and a parse of its own.
pub async fn insert_events(
    client: &impl PooledClient,
    events: &[&NewEvent],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let orgs: Vec<i64> = events.iter().map(|e| e.organization).collect();
    let projects: Vec<Option<i64>> = events.iter().map(|e| e.project).collect();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    let producer_ids: Vec<Option<&str>> = events.iter().map(|e| e.producer_id.as_deref()).collect();
    let bodies: Vec<&str> = events.iter().map(|e| e.body.as_str()).collect();
    let tokens: Vec<Uuid> = events.iter().map(|e| e.claim_token).collect();
    // Copies of one event in the same batch share an id: only one row, and so one token, comes back.
    let insert = client
        .prepare_cached(
            "INSERT INTO events (id, organization, project, action, producer_id, body, claim_token, created_at)
             SELECT u.id, u.organization, u.project, u.action, u.producer_id, u.body::json, u.claim_token,
                    clock_timestamp()
               FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::uuid[])
                    WITH ORDINALITY AS u(id, organization, project, action, producer_id, body, claim_token, n)
              ORDER BY u.n
             ON CONFLICT DO NOTHING
             RETURNING claim_token",
        )
        .await?;
    Ok(client
        .query(
            &insert,
            &[
                &ids,
                &orgs,
                &projects,
                &actions,
                &producer_ids,
                &bodies,
                &tokens,
            ],
        )
        .await?)
}

/// What an `Idempotency-Key` has done so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// First use: recorded for this event id; publish it.
    New,
    /// Used before, but its publish was never confirmed: publish this event id again.
    Pending(String),
    /// Used before and published: answer with this event id, publish nothing.
    Published(String),
}

/// Records `key` for `organization` as publishing `event_id`, or reports what it did before. A key older than
/// `ttl` (`WEBHOOKD_IDEMPOTENCY_KEY_HOURS`) counts as new, whether retention has deleted it yet or not.
pub async fn claim_idempotency_key(
    client: &impl GenericClient,
    organization: i64,
    key: &str,
    event_id: &str,
    ttl: std::time::Duration,
) -> Result<KeyState, StoreError> {
    let claimed = client
        .query_opt(
            "INSERT INTO idempotency_keys (organization, key, event_id) VALUES ($1, $2, $3)
             ON CONFLICT (organization, key) DO UPDATE
                SET event_id = EXCLUDED.event_id, published = false, created_at = now()
              WHERE idempotency_keys.created_at < now() - make_interval(secs => $4)
             RETURNING 1",
            &[&organization, &key, &event_id, &ttl.as_secs_f64()],
        )
        .await?;
    if claimed.is_some() {
        return Ok(KeyState::New);
    }
    let row = client
        .query_one(
            "SELECT event_id, published FROM idempotency_keys WHERE organization = $1 AND key = $2",
            &[&organization, &key],
        )
        .await?;
    let (id, published): (String, bool) = (row.try_get(0)?, row.try_get(1)?);
    Ok(if published {
        KeyState::Published(id)
    } else {
        KeyState::Pending(id)
    })
}

/// Marks a key's event as confirmed by the broker.
pub async fn mark_key_published(
    client: &impl GenericClient,
    organization: i64,
    key: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE idempotency_keys SET published = true WHERE organization = $1 AND key = $2",
            &[&organization, &key],
        )
        .await?;
    Ok(())
}

/// A stored event's organization and envelope.
pub async fn load_event(
    client: &impl GenericClient,
    id: Uuid,
) -> Result<Option<(i64, String)>, StoreError> {
    let row = client
        .query_opt(
            "SELECT organization, body::text FROM events WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Reads the stored events among `ids`: (id, organization, body) of those that exist.
pub async fn load_events(
    client: &impl PooledClient,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, i64, String)>, StoreError> {
    // Prepared once per connection: every retry message reads its events.
    let select = client
        .prepare_cached("SELECT id, organization, body::text FROM events WHERE id = ANY($1)")
        .await?;
    let rows = client.query(&select, &[&ids]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
