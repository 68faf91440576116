//! The `relay` scenario's load generator: Label Studio's side of `POST /api/relay/label-studio/`. Label
//! Studio calls a webhook with Python's `requests.post` inside the user's request, on a new connection each
//! time, and waits for the answer. Here too every request opens a new TCP connection (no connection is
//! kept for reuse), at a fixed rate and in an open loop (each request leaves at its time, whatever the
//! earlier ones' answers), and its response time runs from before the connection is opened until the
//! answer has been read.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::publish::{unix_micros, webhook_body, Plan, Published};
use crate::report::Percentiles;
use crate::BoxError;

/// Where to relay, and as whom.
#[derive(Debug, Clone)]
pub struct RelayTarget {
    /// `http://127.0.0.1:<port>/api/relay/label-studio/` of the `webhookd serve` under test.
    pub url: String,
    /// An API token of the measured organization, sent as Label Studio sends a webhook's static header.
    pub token: String,
}

/// How relaying went.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// Requests answered 2xx, from the first request to the last answer.
    pub published: Published,
    /// Response times, milliseconds: connect, send, and the whole answer read.
    pub response: Option<Percentiles>,
    /// How late requests left against their schedule, milliseconds (the load generator's own lag).
    pub start_lag: Option<Percentiles>,
}

/// POSTs `plan.events` Label Studio bodies (`{"action": "PROJECT_DELETED", "project": {…}}`, stamped with
/// the time of sending as the other scenarios' events are) to `target` at `plan.rate` per second. Any answer
/// but a 2xx, or a request that fails, fails the run.
pub async fn relay(target: &RelayTarget, plan: &Plan) -> Result<Relayed, BoxError> {
    let rate = plan
        .rate
        .filter(|r| *r > 0.0)
        .ok_or("the relay load generator needs a rate")?;
    let client = reqwest::Client::builder()
        // No idle connection is kept, so each request opens its own, as requests.post does.
        .pool_max_idle_per_host(0)
        // urllib3 (under requests) sets TCP_NODELAY on its sockets too.
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?;
    let authorization = format!("Token {}", target.token);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut lag_us = Vec::with_capacity(plan.events as usize);
    for n in 0..plan.events {
        let due = start + Duration::from_secs_f64(n as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        lag_us.push(due.elapsed().as_micros() as u64);
        let request = client
            .post(&target.url)
            .header("authorization", &authorization)
            .header("content-type", "application/json")
            .body(webhook_body(n, unix_micros()));
        tasks.spawn(async move {
            let sent = Instant::now();
            let response = request
                .send()
                .await
                .map_err(|e| format!("request {n}: {e}"))?;
            let status = response.status();
            let answer = response
                .bytes()
                .await
                .map_err(|e| format!("request {n}: reading the answer: {e}"))?;
            let took = sent.elapsed().as_micros() as u64;
            if !status.is_success() {
                return Err(format!(
                    "request {n} was answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                ));
            }
            Ok((took, Instant::now()))
        });
    }
    let mut response_us = Vec::with_capacity(plan.events as usize);
    let mut last_answer = start;
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((took, at))) => {
                response_us.push(took);
                last_answer = last_answer.max(at);
            }
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("a request task failed: {e}")),
        }
    }
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} of {} relay requests failed; the first: {first}",
            failures.len(),
            plan.events
        )
        .into());
    }
    Ok(Relayed {
        published: Published {
            events: response_us.len() as u64,
            seconds: last_answer.duration_since(start).as_secs_f64(),
            lag: None,
        },
        response: Percentiles::of_micros(response_us),
        start_lag: Percentiles::of_micros(lag_us),
    })
}
