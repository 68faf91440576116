//! Group commits: many concurrent handlers hand rows to one task that writes them in a single round trip.
//! A failed write is retried with backoff until it succeeds, so a caller's rows are never dropped and a
//! database outage stalls the handlers (nothing gets acked) instead of spinning.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff_forever::database_backoff;
use backoff::backoff::Backoff;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use webhookd_store::StoreError;

/// One kind of batched write.
pub(crate) trait Flush: Send + Sync + 'static {
    /// What a caller submits.
    type Req: Send + 'static;
    /// What each caller gets back.
    type Resp: Send + 'static;
    /// Writes `batch` in one go; returns one response per request, in order. An error is retried with
    /// backoff; `write_id` is the same when the same batch is written again after a failure, so a writer
    /// can tell a commit it already made.
    fn flush(
        &self,
        batch: &[Self::Req],
        write_id: Uuid,
    ) -> impl Future<Output = Result<Vec<Self::Resp>, StoreError>> + Send;
}

/// Records how a database write went in the health metrics.
pub(crate) fn record_db_health<T>(result: Result<T, StoreError>) -> Result<T, StoreError> {
    match &result {
        Ok(_) => webhookd_metrics::DATABASE_UP.set(1),
        Err(_) => {
            webhookd_metrics::DATABASE_UP.set(0);
            webhookd_metrics::DB_WRITE_FAILURES.inc();
        }
    }
    result
}

/// The batching task has stopped (the worker is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the {0} writer has stopped")]
pub(crate) struct Stopped(&'static str);

/// A handle to submit requests to a batching task.
pub(crate) struct Batcher<F: Flush> {
    name: &'static str,
    tx: mpsc::Sender<(F::Req, oneshot::Sender<F::Resp>)>,
}

impl<F: Flush> Clone for Batcher<F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            tx: self.tx.clone(),
        }
    }
}

impl<F: Flush> Batcher<F> {
    /// Starts the task; it writes up to `max_batch` requests at a time and stops once every handle is gone.
    pub(crate) fn spawn(name: &'static str, flusher: F, max_batch: usize) -> Self {
        Self::spawn_lingering(name, flusher, max_batch, Duration::ZERO)
    }

    /// Like `spawn`, but a batch that is not full waits up to `linger` for more requests before it is
    /// written: fewer, larger writes for callers that can afford the wait.
    pub(crate) fn spawn_lingering(
        name: &'static str,
        flusher: F,
        max_batch: usize,
        linger: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(run(name, Arc::new(flusher), rx, max_batch, linger));
        Self { name, tx }
    }

    /// Submits one request and waits until it is written.
    pub(crate) async fn submit(&self, req: F::Req) -> Result<F::Resp, Stopped> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((req, done))
            .await
            .map_err(|_| Stopped(self.name))?;
        wait.await.map_err(|_| Stopped(self.name))
    }
}

async fn run<F: Flush>(
    name: &'static str,
    flusher: Arc<F>,
    mut rx: mpsc::Receiver<(F::Req, oneshot::Sender<F::Resp>)>,
    max_batch: usize,
    linger: Duration,
) {
    let mut reqs = Vec::with_capacity(max_batch);
    let mut waiters = Vec::with_capacity(max_batch);
    while let Some((req, done)) = rx.recv().await {
        reqs.push(req);
        waiters.push(done);
        let deadline = tokio::time::Instant::now() + linger;
        while reqs.len() < max_batch {
            let next = match rx.try_recv() {
                Ok(next) => next,
                Err(_) if linger.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => next,
                    _ => break,
                },
            };
            reqs.push(next.0);
            waiters.push(next.1);
        }
        let mut backoff = database_backoff();
        let write_id = Uuid::now_v7();
        let resps = loop {
            match flusher.flush(&reqs, write_id).await {
                Ok(resps) => break resps,
                Err(e) => {
                    let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(writer = name, error = %e, retry_in_ms = wait.as_millis() as u64,
                        "database write failed; retrying (nothing is acknowledged meanwhile)");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        for (done, resp) in waiters.drain(..).zip(resps) {
            let _ = done.send(resp);
        }
        reqs.clear();
    }
}
