//! Group commits: many concurrent handlers hand requests to one task that writes them in a single round trip.
//!
//! A failed write is classed (`StoreError::class`): a **transient** failure (lost connection, serialization
//! failure, deadlock, out of resources, admin shutdown) is retried with backoff until it succeeds, so a caller's
//! request is never dropped and a database outage stalls the handlers (nothing gets acked) instead of
//! spinning; a **permanent** one (bad data, a violated constraint, a program limit) splits the batch in halves
//! until the request the database refuses is alone: the others commit, and the refused one is handed back
//! to its caller ([`Refused`]) to follow its own rule. A batch is capped in bytes as well as in requests, so
//! that no write can exceed what PostgreSQL takes in one statement. The writer's [`WriterProgress`] says how
//! long it has held work it has not committed (the stall signal).

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;
use webhookd_metrics::WriterProgress;
use webhookd_store::{ErrorClass, StoreError};

use crate::backoff_forever::database_backoff;

/// One kind of batched write.
pub(crate) trait Flush: Send + Sync + 'static {
    /// What a caller submits.
    type Req: Send + Sync + 'static;
    /// What each caller gets back.
    type Resp: Send + Sync + 'static;
    /// Writes `batch` in one go; returns one response per request, in order. `write_id` is the same when the
    /// same batch is written again after a transient failure, so a writer can tell a commit it already made.
    fn flush(
        &self,
        batch: &[Self::Req],
        write_id: Uuid,
    ) -> impl Future<Output = Result<Vec<Self::Resp>, StoreError>> + Send;

    /// About how many bytes `req` adds to a write.
    fn bytes(_req: &Self::Req) -> usize {
        0
    }
}

/// How big a batch may grow and how long it may wait to grow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Requests per write.
    pub(crate) requests: usize,
    /// Bytes per write (a single larger request is written alone).
    pub(crate) bytes: usize,
    /// How long a write that is not full waits for more requests (zero: it goes at once).
    pub(crate) linger: Duration,
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

/// A request the database refused for good, handed back to its caller with the error.
#[derive(Debug)]
pub(crate) struct Refused<Req> {
    /// The request, as submitted.
    pub(crate) req: Req,
    /// The database's refusal.
    pub(crate) error: StoreError,
}

type Reply<F> = Result<<F as Flush>::Resp, Refused<<F as Flush>::Req>>;

/// A handle to submit requests to a batching task.
pub(crate) struct Batcher<F: Flush> {
    name: &'static str,
    tx: mpsc::Sender<(F::Req, oneshot::Sender<Reply<F>>)>,
    progress: Arc<WriterProgress>,
}

impl<F: Flush> Clone for Batcher<F> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            tx: self.tx.clone(),
            progress: self.progress.clone(),
        }
    }
}

impl<F: Flush> Batcher<F> {
    /// Starts the task; it stops once every handle is gone. `progress` is told how its writes go.
    pub(crate) fn spawn(flusher: F, limits: BatchLimits, progress: Arc<WriterProgress>) -> Self {
        let (tx, rx) = mpsc::channel(limits.requests.max(1) * 4);
        let name = progress.name();
        tokio::spawn(run(Arc::new(flusher), rx, limits, progress.clone()));
        Self { name, tx, progress }
    }

    /// The writer's progress (the stall signal).
    pub(crate) fn progress(&self) -> &Arc<WriterProgress> {
        &self.progress
    }

    /// Submits one request and waits until it is written, or refused for good.
    pub(crate) async fn submit(&self, req: F::Req) -> Result<Reply<F>, Stopped> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((req, done))
            .await
            .map_err(|_| Stopped(self.name))?;
        wait.await.map_err(|_| Stopped(self.name))
    }
}

async fn run<F: Flush>(
    flusher: Arc<F>,
    mut rx: mpsc::Receiver<(F::Req, oneshot::Sender<Reply<F>>)>,
    limits: BatchLimits,
    progress: Arc<WriterProgress>,
) {
    let mut reqs = Vec::with_capacity(limits.requests);
    let mut waiters = Vec::with_capacity(limits.requests);
    // A request that did not fit the last batch opens the next one.
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match rx.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut bytes = F::bytes(&first.0);
        reqs.push(first.0);
        waiters.push(first.1);
        let deadline = tokio::time::Instant::now() + limits.linger;
        while reqs.len() < limits.requests {
            let next = match rx.try_recv() {
                Ok(next) => next,
                Err(_) if limits.linger.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(next)) => next,
                    _ => break,
                },
            };
            let size = F::bytes(&next.0);
            if bytes + size > limits.bytes {
                carried = Some(next);
                break;
            }
            bytes += size;
            reqs.push(next.0);
            waiters.push(next.1);
        }
        progress.started();
        let results = write_isolating(&*flusher, &reqs, &progress).await;
        progress.finished();
        for ((req, done), result) in reqs.drain(..).zip(waiters.drain(..)).zip(results) {
            let reply = result.map_err(|error| Refused { req, error });
            let _ = done.send(reply);
        }
    }
}

/// Writes `reqs`, splitting on permanent errors until each refused request is alone; one result per request.
pub(crate) async fn write_isolating<F: Flush>(
    flusher: &F,
    reqs: &[F::Req],
    progress: &WriterProgress,
) -> Vec<Result<F::Resp, StoreError>> {
    let mut results: Vec<Option<Result<F::Resp, StoreError>>> =
        std::iter::repeat_with(|| None).take(reqs.len()).collect();
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(8);
    ranges.push(0..reqs.len());
    while let Some(range) = ranges.pop() {
        match write_retrying(flusher, &reqs[range.clone()], progress).await {
            Ok(resps) => {
                for (slot, resp) in results[range].iter_mut().zip(resps) {
                    *slot = Some(Ok(resp));
                }
            }
            Err(error) if range.len() == 1 => {
                webhookd_metrics::WRITES_REFUSED
                    .with_label_values(&[progress.name()])
                    .inc();
                tracing::warn!(writer = progress.name(), %error, sqlstate = error.sqlstate(),
                    "database refused a request for good; the rest of its batch is written without it");
                results[range.start] = Some(Err(error));
            }
            Err(error) => {
                tracing::info!(writer = progress.name(), requests = range.len(), %error,
                    sqlstate = error.sqlstate(), "database refused a batch; splitting it to isolate the request");
                let middle = range.start + range.len() / 2;
                ranges.push(middle..range.end);
                ranges.push(range.start..middle);
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(StoreError::Corrupt("the writer lost a result".into()))))
        .collect()
}

/// Writes `reqs` in one go, retrying transient failures with backoff (under one write id); a permanent
/// failure is returned.
async fn write_retrying<F: Flush>(
    flusher: &F,
    reqs: &[F::Req],
    progress: &WriterProgress,
) -> Result<Vec<F::Resp>, StoreError> {
    let mut backoff = database_backoff();
    let write_id = Uuid::now_v7();
    loop {
        let error = match flusher.flush(reqs, write_id).await {
            Ok(resps) if resps.len() == reqs.len() => return Ok(resps),
            Ok(resps) => StoreError::Corrupt(format!(
                "a write of {} requests returned {} results",
                reqs.len(),
                resps.len()
            )),
            Err(e) => e,
        };
        if error.class() == ErrorClass::Permanent {
            return Err(error);
        }
        let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(5));
        progress.failed(&error.to_string());
        tracing::warn!(writer = progress.name(), %error, sqlstate = error.sqlstate(),
            retry_in_ms = wait.as_millis() as u64,
            "database write failed; retrying (nothing is acknowledged meanwhile)");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Refuses (permanently) any batch holding a negative number; fails transiently the first `flaky` times.
    struct Picky {
        writes: Mutex<Vec<Vec<i64>>>,
        flaky: Mutex<usize>,
    }

    fn permanent() -> StoreError {
        StoreError::Config("negative".into())
    }

    impl Flush for Picky {
        type Req = i64;
        type Resp = i64;
        async fn flush(&self, batch: &[i64], _: Uuid) -> Result<Vec<i64>, StoreError> {
            {
                let mut flaky = self.flaky.lock().unwrap();
                if *flaky > 0 {
                    *flaky -= 1;
                    return Err(StoreError::Pool(webhookd_store::PoolError::Closed));
                }
            }
            if batch.iter().any(|n| *n < 0) {
                return Err(permanent());
            }
            self.writes.lock().unwrap().push(batch.to_vec());
            Ok(batch.iter().map(|n| n * 10).collect())
        }
        fn bytes(req: &i64) -> usize {
            req.unsigned_abs() as usize
        }
    }

    fn picky(flaky: usize) -> Picky {
        Picky {
            writes: Mutex::default(),
            flaky: Mutex::new(flaky),
        }
    }

    #[tokio::test]
    async fn a_refused_request_is_isolated_and_the_rest_of_its_batch_commits() {
        let writer = picky(0);
        let progress = WriterProgress::new("test");
        let reqs: Vec<i64> = vec![1, 2, 3, -4, 5, 6, 7, -8, 9];
        let results = write_isolating(&writer, &reqs, &progress).await;
        let shown: Vec<Option<i64>> = results.iter().map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(
            shown,
            [
                Some(10),
                Some(20),
                Some(30),
                None,
                Some(50),
                Some(60),
                Some(70),
                None,
                Some(90)
            ]
        );
        let mut committed: Vec<i64> = writer.writes.lock().unwrap().concat();
        committed.sort();
        assert_eq!(committed, [1, 2, 3, 5, 6, 7, 9], "each committed once");
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_not_split() {
        let writer = picky(3);
        let progress = WriterProgress::new("test");
        let results = write_isolating(&writer, &[1, 2, 3], &progress).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(*writer.writes.lock().unwrap(), [vec![1, 2, 3]]);
    }

    #[tokio::test]
    async fn the_caller_of_a_refused_request_gets_it_back_and_the_others_their_results() {
        let progress = WriterProgress::new("test");
        let limits = BatchLimits {
            requests: 100,
            bytes: 1000,
            linger: Duration::from_millis(50),
        };
        let batcher = Batcher::spawn(picky(0), limits, progress.clone());
        let (a, b, c) = tokio::join!(batcher.submit(1), batcher.submit(-2), batcher.submit(3));
        assert_eq!(a.unwrap().unwrap(), 10);
        let refused = b.unwrap().unwrap_err();
        assert_eq!(refused.req, -2);
        assert_eq!(refused.error.to_string(), "negative");
        assert_eq!(c.unwrap().unwrap(), 30);
        assert_eq!(progress.busy_for(std::time::Instant::now()), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_batch_is_capped_in_bytes() {
        let writer = Arc::new(picky(0));
        let limits = BatchLimits {
            requests: 100,
            bytes: 10,
            linger: Duration::from_millis(50),
        };
        struct Shared(Arc<Picky>);
        impl Flush for Shared {
            type Req = i64;
            type Resp = i64;
            async fn flush(&self, batch: &[i64], id: Uuid) -> Result<Vec<i64>, StoreError> {
                self.0.flush(batch, id).await
            }
            fn bytes(req: &i64) -> usize {
                Picky::bytes(req)
            }
        }
        let batcher = Batcher::spawn(Shared(writer.clone()), limits, WriterProgress::new("test"));
        let (a, b, c, d) = tokio::join!(
            batcher.submit(6),
            batcher.submit(4),
            batcher.submit(3),
            batcher.submit(30)
        );
        for r in [a, b, c, d] {
            assert!(r.unwrap().is_ok());
        }
        let writes = writer.writes.lock().unwrap().clone();
        assert_eq!(
            writes,
            [vec![6, 4], vec![3], vec![30]],
            "at most 10 bytes a write, a larger request alone"
        );
    }
}
