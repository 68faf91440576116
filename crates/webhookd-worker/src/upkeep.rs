//! Background upkeep: the delivery log's partitions and write ids (hourly), and the writers' stall signal
//! (every second).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use webhookd_metrics::WriterProgress;
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

/// How often the writers' stall signal is refreshed.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// Refreshes the writers' stall series every second until `stop`, and logs when a writer stalls (with the
/// last error it met: the database's message and SQLSTATE) and when it recovers.
pub(crate) async fn watch_writers(
    writers: Vec<Arc<WriterProgress>>,
    after: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(STALL_CHECK);
    let mut stalled: HashSet<&'static str> = HashSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        for writer in &writers {
            match writer.stall(after, now) {
                Some(stall) if stalled.insert(stall.writer) => tracing::error!(
                    writer = stall.writer,
                    stalled_for_s = stall.for_.as_secs(),
                    last_error = stall.last_error.as_deref(),
                    "writer stalled"
                ),
                Some(_) => {}
                None if stalled.remove(writer.name()) => {
                    tracing::info!(writer = writer.name(), "writer committing again")
                }
                None => {}
            }
        }
    }
}
