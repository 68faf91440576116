//! The receiver: a keep-alive HTTP server on 127.0.0.1 with one path per webhook (`/h/<index>`). It
//! counts distinct deliveries (the `webhook-id` header) per webhook, when each was first received, and the
//! publish → receive latency from the `sent_at_us` the publisher put in the event. For the webhooks it is
//! asked to time, it also records the wall time of every attempt (`x-webhookd-attempt`) of every delivery.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use rand::Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::publish::unix_micros;
use crate::BoxError;

/// How the receiver answers one webhook's requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behavior {
    /// 200 at once.
    Healthy,
    /// Never answers: holds the request until the client gives up (or the receiver stops).
    Hold,
    /// 500 to `fail_ratio` of the requests at random, except to the attempt numbered `always_ok_from`
    /// or later (`x-webhookd-attempt`), so that every delivery ends up delivered within its retries.
    Flaky {
        /// Share of requests answered 500.
        fail_ratio: f64,
        /// From this attempt on, always 200.
        always_ok_from: u32,
    },
    /// Answers after `delay`: 500 if `fail`, else 200.
    Slow {
        /// How long each request waits for its answer.
        delay: Duration,
        /// Answer 500 (every attempt: the deliveries never succeed) instead of 200.
        fail: bool,
    },
}

/// One webhook's tally.
#[derive(Debug, Default)]
struct Hook {
    seen: HashSet<String>,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Every request, whatever the answer.
    requests: u64,
    /// Publish → receive latency of each distinct delivery's first receipt, in microseconds.
    latencies_us: Vec<u64>,
    /// For a timed webhook: when each attempt of each delivery first arrived, in Unix microseconds.
    attempts: Option<HashMap<(uuid::Uuid, u32), u64>>,
}

#[derive(Debug, Default)]
struct Tally {
    hooks: Vec<Hook>,
    /// Every request, whatever the answer.
    requests: u64,
    /// Requests answered 500 on purpose.
    failed_on_purpose: u64,
    /// Requests held without an answer.
    held: u64,
    /// 2xx answers to a delivery id already received (redundant deliveries).
    duplicates: u64,
    /// Body bytes of the distinct deliveries.
    body_bytes: u64,
    /// Requests whose body or headers were not what the publisher sent.
    malformed: u64,
}

struct Shared {
    behaviors: Vec<Behavior>,
    tally: Mutex<Tally>,
    release: CancellationToken,
}

impl Shared {
    fn tally(&self) -> MutexGuard<'_, Tally> {
        // A panicking handler cannot leave the counters half-updated in a way that matters here.
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running receiver; stopped by [`Receiver::stop`] (or when dropped, which releases held requests).
pub struct Receiver {
    base: String,
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
}

/// What a set of webhooks received.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Distinct deliveries.
    pub distinct: u64,
    /// First receipt of the first of them.
    pub first: Option<Instant>,
    /// First receipt of the last of them.
    pub last: Option<Instant>,
}

/// The receiver's counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every request.
    pub requests: u64,
    /// Answered 500 on purpose.
    pub failed_on_purpose: u64,
    /// Held without an answer.
    pub held: u64,
    /// Redundant 2xx deliveries.
    pub duplicates: u64,
    /// Mean body size of the distinct deliveries.
    pub mean_body_bytes: f64,
    /// Requests that lacked a `webhook-id` or a readable timestamp.
    pub malformed: u64,
    /// Latency samples of the webhooks asked for, microseconds, unsorted.
    pub latencies_us: Vec<u64>,
}

impl Receiver {
    /// Starts on a free port of 127.0.0.1 with one webhook path per behavior.
    pub async fn start(behaviors: Vec<Behavior>) -> Result<Self, BoxError> {
        Self::start_timing(behaviors, &[]).await
    }

    /// Like [`Receiver::start`], recording the arrival of every attempt at the webhooks `timed`.
    pub async fn start_timing(behaviors: Vec<Behavior>, timed: &[usize]) -> Result<Self, BoxError> {
        let shared = Arc::new(Shared {
            tally: Mutex::new(Tally {
                hooks: (0..behaviors.len())
                    .map(|i| Hook {
                        attempts: timed.contains(&i).then(HashMap::new),
                        ..Hook::default()
                    })
                    .collect(),
                ..Tally::default()
            }),
            behaviors,
            release: CancellationToken::new(),
        });
        let app = axum::Router::new()
            .route("/h/{index}", axum::routing::post(handle))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("receiver: cannot listen on 127.0.0.1: {e}"))?;
        let base = format!("http://{}", listener.local_addr()?);
        let stop = shared.release.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                eprintln!("receiver stopped: {e}");
            }
        });
        Ok(Self {
            base,
            shared,
            server: Some(server),
        })
    }

    /// The URL of webhook `index`.
    pub fn url(&self, index: usize) -> String {
        format!("{}/h/{index}", self.base)
    }

    /// Distinct deliveries received by the webhooks `hooks`, and when the first and the last arrived.
    pub fn progress(&self, hooks: &[usize]) -> Progress {
        let tally = self.shared.tally();
        let mut p = Progress::default();
        for hook in hooks.iter().filter_map(|&i| tally.hooks.get(i)) {
            p.distinct += hook.seen.len() as u64;
            p.first = match (p.first, hook.first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            p.last = match (p.last, hook.last) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        p
    }

    /// HTTP requests the webhooks `hooks` received, whatever the answer.
    pub fn requests(&self, hooks: &[usize]) -> u64 {
        let tally = self.shared.tally();
        hooks
            .iter()
            .filter_map(|&i| tally.hooks.get(i))
            .map(|h| h.requests)
            .sum()
    }

    /// When each attempt (delivery id, attempt number) of the timed webhook `hook` first arrived, in Unix
    /// microseconds; empty for a webhook that is not timed.
    pub fn attempt_times(&self, hook: usize) -> HashMap<(uuid::Uuid, u32), u64> {
        let tally = self.shared.tally();
        tally
            .hooks
            .get(hook)
            .and_then(|h| h.attempts.clone())
            .unwrap_or_default()
    }

    /// The counters so far, with the latency samples of the webhooks `latency_of`.
    pub fn snapshot(&self, latency_of: &[usize]) -> Snapshot {
        let tally = self.shared.tally();
        let distinct: u64 = tally.hooks.iter().map(|h| h.seen.len() as u64).sum();
        Snapshot {
            requests: tally.requests,
            failed_on_purpose: tally.failed_on_purpose,
            held: tally.held,
            duplicates: tally.duplicates,
            mean_body_bytes: if distinct == 0 {
                0.0
            } else {
                tally.body_bytes as f64 / distinct as f64
            },
            malformed: tally.malformed,
            latencies_us: latency_of
                .iter()
                .filter_map(|&i| tally.hooks.get(i))
                .flat_map(|h| h.latencies_us.iter().copied())
                .collect(),
        }
    }

    /// Stops the server and releases held requests.
    pub async fn stop(mut self) {
        self.shared.release.cancel();
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.release.cancel();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path(index): Path<usize>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(&behavior) = shared.behaviors.get(index) else {
        return StatusCode::NOT_FOUND;
    };
    let attempt = headers
        .get("x-webhookd-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(1);
    {
        let mut tally = shared.tally();
        if let Some(hook) = tally.hooks.get_mut(index) {
            hook.requests += 1;
            if let Some(attempts) = &mut hook.attempts {
                if let Some(delivery) = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(delivery_uuid)
                {
                    attempts
                        .entry((delivery, attempt))
                        .or_insert_with(unix_micros);
                }
            }
        }
    }
    match behavior {
        Behavior::Healthy => {}
        Behavior::Hold => {
            {
                let mut tally = shared.tally();
                tally.requests += 1;
                tally.held += 1;
            }
            // Until the worker's timeout drops the connection (which drops this future) or the run ends.
            tokio::select! {
                _ = shared.release.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        Behavior::Flaky {
            fail_ratio,
            always_ok_from,
        } => {
            if attempt < always_ok_from && rand::thread_rng().gen_bool(fail_ratio) {
                let mut tally = shared.tally();
                tally.requests += 1;
                tally.failed_on_purpose += 1;
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
        }
        Behavior::Slow { delay, fail } => {
            tokio::select! {
                _ = shared.release.cancelled() => return StatusCode::SERVICE_UNAVAILABLE,
                _ = tokio::time::sleep(delay) => {}
            }
            if fail {
                let mut tally = shared.tally();
                tally.requests += 1;
                tally.failed_on_purpose += 1;
                return StatusCode::INTERNAL_SERVER_ERROR;
            }
        }
    }
    let now_us = unix_micros();
    let received = Instant::now();
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let sent_at_us = sent_at_us(&body);
    let mut tally = shared.tally();
    tally.requests += 1;
    let Some(id) = id else {
        tally.malformed += 1;
        return StatusCode::BAD_REQUEST;
    };
    let Some(hook) = tally.hooks.get_mut(index) else {
        return StatusCode::NOT_FOUND;
    };
    if !hook.seen.insert(id) {
        tally.duplicates += 1;
        return StatusCode::OK;
    }
    hook.first.get_or_insert(received);
    hook.last = Some(received);
    match sent_at_us {
        Some(sent) => hook.latencies_us.push(now_us.saturating_sub(sent)),
        None => tally.malformed += 1,
    }
    tally.body_bytes += body.len() as u64;
    StatusCode::OK
}

/// The delivery id of a `webhook-id` header (`msg_<32 hex digits>`), as the log's `delivery_id`.
pub fn delivery_uuid(header: &str) -> Option<uuid::Uuid> {
    uuid::Uuid::parse_str(header.strip_prefix("msg_")?).ok()
}

/// `project.sent_at_us` of a delivered body (the Label Studio body of the benchmark's events).
fn sent_at_us(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("project")?.get("sent_at_us")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timestamp_is_read_from_the_project() {
        let body = br#"{"action": "PROJECT_DELETED", "project": {"id": 3, "sent_at_us": 1700000000000000}}"#;
        assert_eq!(sent_at_us(body), Some(1_700_000_000_000_000));
        assert_eq!(sent_at_us(b"{}"), None);
    }

    #[test]
    fn a_webhook_id_names_its_delivery() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(delivery_uuid(&format!("msg_{}", id.simple())), Some(id));
        assert_eq!(delivery_uuid("msg_load_1_2"), None);
        assert_eq!(delivery_uuid(&id.simple().to_string()), None);
    }
}
