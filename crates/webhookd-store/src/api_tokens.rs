//! API tokens: minted for one organization, stored hashed, revocable.

use deadpool_postgres::GenericClient as PooledClient;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio_postgres::GenericClient;

use crate::webhooks::ensure_organization;
use crate::StoreError;

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Mints a token for `organization` (created if missing); returns the key, which is not stored.
pub async fn create_token(
    client: &impl GenericClient,
    organization: i64,
    name: &str,
) -> Result<String, StoreError> {
    ensure_organization(client, organization).await?;
    let mut bytes = [0u8; 20];
    rand::thread_rng().fill_bytes(&mut bytes);
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    client
        .execute(
            "INSERT INTO api_tokens (organization, name, token_hash) VALUES ($1, $2, $3)",
            &[&organization, &name, &hash(&key)],
        )
        .await?;
    Ok(key)
}

/// Revokes the token with this key; whether one was revoked.
pub async fn revoke_token(client: &impl GenericClient, key: &str) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
            &[&hash(key)],
        )
        .await?;
    Ok(n > 0)
}

/// The organization of a valid, unrevoked key. Every API request asks, so the statement is prepared once per
/// connection: one round trip to the database per request instead of two (prepare, then execute).
pub async fn authenticate(
    client: &impl PooledClient,
    key: &str,
) -> Result<Option<i64>, StoreError> {
    let select = client
        .prepare_cached(
            "SELECT organization FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
        )
        .await?;
    let row = client.query_opt(&select, &[&hash(key)]).await?;
    Ok(row.map(|r| r.get(0)))
}
