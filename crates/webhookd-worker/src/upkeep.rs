//! Hourly upkeep of the delivery log: creates tomorrow's partitions ahead of time and forgets old write ids.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use webhookd_store::{delivery_log, migrate, Pool};

/// Runs the upkeep every hour until `stop`.
pub(crate) async fn maintain_log(pool: Pool, stop: CancellationToken) {
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = hourly.tick() => {
                let result = match pool.get().await {
                    Ok(client) => match migrate::ensure_log_partitions(&client).await {
                        Ok(()) => delivery_log::forget_old_writes(&**client).await.map(drop),
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e.into()),
                };
                if let Err(e) = result {
                    tracing::warn!(error = %e, "delivery-log upkeep failed; next try in an hour");
                }
            }
        }
    }
}
