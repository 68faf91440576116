//! The in-memory subscription cache: loaded at start, reloaded per organization on LISTEN/NOTIFY, and
//! fully refreshed after a lost listener connection and every minute, so no message costs a query. Its
//! loads also keep `webhookd_database_up` current while no claim or log write happens.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::backoff_forever::backoff_forever;
use backoff::backoff::Backoff;
use tokio_util::sync::CancellationToken;
use webhookd_core::SubscriptionIndex;
use webhookd_store::listener::ChangeListener;
use webhookd_store::{webhooks, Pool, StoreError};

/// How often the whole cache is re-read even without notifications (a safety net).
const FULL_REFRESH: Duration = Duration::from_secs(60);

/// A shared, swappable snapshot of every webhook.
#[derive(Clone, Default)]
pub struct SubscriptionCache {
    current: Arc<RwLock<Arc<SubscriptionIndex>>>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl SubscriptionCache {
    /// The current snapshot; cheap (one `Arc` clone).
    pub fn snapshot(&self) -> Arc<SubscriptionIndex> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many times the cache has been replaced; tests wait on it.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Installs a snapshot just read from the database, which therefore answers (`webhookd_database_up`).
    fn replace(&self, next: SubscriptionIndex) {
        webhookd_metrics::DATABASE_UP.set(1);
        webhookd_metrics::CACHED_WEBHOOKS.set(next.len() as i64);
        let next = Arc::new(next);
        match self.current.write() {
            Ok(mut guard) => *guard = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Re-reads every webhook. Each row is compared with the snapshot's copy as it arrives: an unchanged
    /// webhook keeps the snapshot's `Arc` (the row's copy is dropped at once) and an unchanged organization
    /// the snapshot's lists, so the reload holds a second copy only of what changed.
    pub async fn load_all(&self, pool: &Pool) -> Result<(), StoreError> {
        let started = Instant::now();
        let client = pool.get().await?;
        let current = self.snapshot();
        let mut reload = current.full_reload();
        webhooks::for_each_subscription(&**client, None, |sub| reload.push(sub)).await?;
        let next = reload.finish();
        drop(current);
        self.replace(next);
        observe_refresh("all", started);
        Ok(())
    }

    /// Re-reads the webhooks of the given organizations.
    pub async fn reload(
        &self,
        pool: &Pool,
        organizations: &BTreeSet<i64>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let client = pool.get().await?;
        // A copy costs nothing (the index's maps are shared); each organization costs what it holds.
        let mut next = (*self.snapshot()).clone();
        for &org in organizations {
            let subs = webhooks::load_subscriptions(&**client, Some(org)).await?;
            next = next.with_organization(org, subs);
        }
        self.replace(next);
        observe_refresh("organizations", started);
        Ok(())
    }
}

fn observe_refresh(scope: &str, started: Instant) {
    webhookd_metrics::SUBSCRIPTION_REFRESH
        .with_label_values(&[scope])
        .observe(started.elapsed().as_secs_f64());
}

/// Keeps `cache` current until `stop`: listens for changes, reconnecting with backoff.
pub(crate) async fn keep_current(
    cache: SubscriptionCache,
    pool: Pool,
    database_url: String,
    stop: CancellationToken,
) {
    let mut backoff = backoff_forever(Duration::from_millis(200), Duration::from_secs(10));
    while !stop.is_cancelled() {
        let listener = ChangeListener::connect(&database_url).await;
        let result = match listener {
            // Changes made while no one listened are caught by the full reload after LISTEN.
            Ok(listener) => match cache.load_all(&pool).await {
                Ok(()) => {
                    backoff.reset();
                    follow(&cache, &pool, listener, &stop).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            // The listening connection is lost or a refresh failed: the database does not answer (or not
            // for now; the next load says so).
            webhookd_metrics::DATABASE_UP.set(0);
            let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(10));
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "subscription cache refresh failed");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

async fn follow(
    cache: &SubscriptionCache,
    pool: &Pool,
    mut listener: ChangeListener,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    let mut refresh = tokio::time::interval(FULL_REFRESH);
    refresh.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = refresh.tick() => cache.load_all(pool).await?,
            change = listener.next() => {
                let Some(org) = change else {
                    return Err(StoreError::Config("the webhook change listener disconnected".into()));
                };
                let mut orgs = BTreeSet::from([org]);
                while let Some(more) = listener.try_next() {
                    orgs.insert(more);
                }
                cache.reload(pool, &orgs).await?;
                tracing::debug!(organizations = ?orgs, "subscriptions reloaded");
            }
        }
    }
}
