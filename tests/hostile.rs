//! Hostile receivers (issue 10, isolation): a webhook whose receiver misbehaves — a body with NUL bytes or
//! invalid UTF-8, 8 MiB of body, a body that never ends, bytes that are not HTTP, a connection reset, a stall
//! after the status line, a redirect — sits next to a healthy webhook of the same organization. For each:
//! - the healthy webhook gets every event once, each within `ON_TIME` of its publish, in a first batch and in a
//!   second batch published after every attempt to the hostile one has ended (it still flows);
//! - every request the hostile receiver read is one row of the delivery log (nothing unlogged, nothing
//!   invented), with its status or an error that names the failure, no NUL, invalid bytes shown as U+FFFD, and
//!   the response excerpt cut at `WEBHOOKD_RESPONSE_EXCERPT_BYTES`;
//! - every delivery to it ends (`succeeded` or `dead`) as its mode says.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::hostile::{
    endless_byte, huge_body, invalid_utf8_body, HostileReceiver, Mode, INVALID_UTF8_HEAD, NUL_BODY,
};
use support::receiver::Receiver;
use support::{envelope, wait_for, TestEnv};
use webhookd_core::RetryPolicy;
use webhookd_store::webhooks::NewWebhook;

/// Events per batch.
const BATCH: i64 = 5;
/// The per-attempt timeout (`WEBHOOK_TIMEOUT`); inline attempts are handed over to the slow lane at half of it.
const TIMEOUT: Duration = Duration::from_secs(1);
/// The retry schedule: three attempts per delivery.
const SCHEDULE: &str = "0.2,0.4";
const ATTEMPTS: i32 = 3;
/// `WEBHOOKD_RESPONSE_EXCERPT_BYTES`.
const EXCERPT: usize = 1024;
/// The healthy webhook gets each event within this long of its publish.
const ON_TIME: Duration = Duration::from_secs(2);

/// A delivery-log row of the hostile webhook.
#[derive(Debug, Clone)]
struct Row {
    delivery_id: uuid::Uuid,
    attempt: i32,
    outcome: String,
    http_status: Option<i16>,
    error: Option<String>,
    excerpt: Option<String>,
}

/// What a run left: the hostile webhook's log rows and what its receiver read.
struct Run {
    rows: Vec<Row>,
    hostile: HostileReceiver,
    healthy: Receiver,
}

impl Run {
    /// The rows of each delivery, in attempt order.
    fn deliveries(&self) -> BTreeMap<uuid::Uuid, Vec<Row>> {
        let mut by: BTreeMap<uuid::Uuid, Vec<Row>> = BTreeMap::new();
        for row in &self.rows {
            by.entry(row.delivery_id).or_default().push(row.clone());
        }
        by
    }

    /// Every delivery was made `ATTEMPTS` times, each answered as `check` says, and failed until the last,
    /// which is dead.
    fn each_delivery_fails_then_dies(&self, check: impl Fn(&Row)) {
        for (delivery, rows) in self.deliveries() {
            let attempts: Vec<(i32, &str)> = rows
                .iter()
                .map(|r| (r.attempt, r.outcome.as_str()))
                .collect();
            assert_eq!(
                attempts,
                [(1, "failed"), (2, "failed"), (3, "dead")],
                "delivery {delivery}: {rows:#?}"
            );
            rows.iter().for_each(&check);
        }
    }

    /// Every delivery succeeded at its first attempt, answered 200 with `excerpt` and no error.
    fn each_delivery_succeeds_with(&self, excerpt: &str) {
        for (delivery, rows) in self.deliveries() {
            assert_eq!(rows.len(), 1, "delivery {delivery}: {rows:#?}");
            let row = &rows[0];
            assert_eq!(
                (row.attempt, row.outcome.as_str(), row.http_status),
                (1, "succeeded", Some(200)),
                "{row:#?}"
            );
            assert_eq!(row.error, None, "{row:#?}");
            assert_eq!(row.excerpt.as_deref(), Some(excerpt), "{row:#?}");
        }
    }
}

/// A hostile webhook and a healthy one in organization 1, an in-process worker, two batches of events.
async fn hostile_next_to_healthy(mode: impl FnOnce(&Receiver) -> Mode) -> Run {
    let started = Instant::now();
    let env = TestEnv::new(|s| {
        s.timeout = TIMEOUT;
        s.response_excerpt_bytes = EXCERPT;
        s.retry_policy = RetryPolicy::new(RetryPolicy::parse_schedule(SCHEDULE).unwrap(), true);
        // Turning the hostile webhook off is another subject (tests/retries.rs): here every attempt is made.
        s.max_consecutive_failures = 0;
    })
    .await;
    let healthy = Receiver::start().await;
    let mode = mode(&healthy);
    let label = format!("{mode:?}");
    let hostile = HostileReceiver::start(mode).await;
    let (healthy_id, _) = env
        .webhook(NewWebhook::new(1, None, healthy.url("/healthy")))
        .await;
    let (hostile_id, _) = env
        .webhook(NewWebhook::new(1, None, hostile.url("/hook")))
        .await;
    let worker = env.start_worker().await;

    let mut published: Vec<Instant> = Vec::new();
    for batch in 0..2 {
        let first = batch * BATCH;
        for n in first..first + BATCH {
            let mut e = envelope(1, "PROJECT_DELETED", None, json!({"project": {"id": n}}));
            e["id"] = json!(format!("hostile-{n}"));
            published.push(Instant::now());
            env.publish(&e).await;
        }
        let got = healthy
            .wait_for(
                "/healthy",
                (first + BATCH) as usize,
                Duration::from_secs(10),
            )
            .await;
        // Each event once, on time.
        let mut seen: BTreeMap<i64, Instant> = BTreeMap::new();
        for r in &got {
            let n = r.json()["project"]["id"].as_i64().unwrap();
            assert!(
                seen.insert(n, r.at).is_none(),
                "{label}: event {n} reached the healthy webhook twice"
            );
        }
        for n in first..first + BATCH {
            let at = seen
                .get(&n)
                .unwrap_or_else(|| panic!("{label}: event {n} never reached the healthy webhook"));
            let late = at.duration_since(published[n as usize]);
            assert!(
                late <= ON_TIME,
                "{label}, batch {}: event {n} reached the healthy webhook {late:?} after its publish",
                batch + 1
            );
        }
        // Every delivery to the hostile webhook ends before the next batch.
        let expected = first + BATCH;
        wait_for(
            &format!("{label}: every delivery to the hostile webhook ended (succeeded or dead)"),
            Duration::from_secs(30),
            || async {
                let r = env
                    .query(
                        "SELECT count(DISTINCT delivery_id) FROM delivery_attempts
                          WHERE webhook_id = $1 AND outcome IN ('succeeded', 'dead')",
                        &[&hostile_id],
                    )
                    .await;
                (r[0].get::<_, i64>(0) == expected).then_some(())
            },
        )
        .await;
    }
    worker.stop().await;

    let healthy_rows = env
        .query(
            "SELECT count(*) FROM delivery_attempts WHERE webhook_id = $1 AND outcome = 'succeeded'",
            &[&healthy_id],
        )
        .await;
    assert_eq!(
        healthy_rows[0].get::<_, i64>(0),
        2 * BATCH,
        "{label}: the healthy webhook's deliveries are logged as succeeded"
    );
    let rows: Vec<Row> = env
        .query(
            "SELECT delivery_id, attempt, outcome, http_status, error, response_excerpt FROM delivery_attempts
              WHERE webhook_id = $1 ORDER BY delivery_id, attempt, created_at, id",
            &[&hostile_id],
        )
        .await
        .iter()
        .map(|r| Row {
            delivery_id: r.get(0),
            attempt: r.get(1),
            outcome: r.get(2),
            http_status: r.get(3),
            error: r.get(4),
            excerpt: r.get(5),
        })
        .collect();
    let run = Run {
        rows,
        hostile,
        healthy,
    };
    // Checks that hold whatever the mode.
    let requests = run.hostile.requests();
    assert_eq!(
        run.rows.len(),
        requests.len(),
        "{label}: one log row per request the hostile receiver read: {:#?}",
        run.rows
    );
    assert_eq!(run.deliveries().len(), (2 * BATCH) as usize, "{label}");
    for row in &run.rows {
        assert!(
            row.http_status.is_some() || row.error.as_deref().is_some_and(|e| !e.is_empty()),
            "{label}: an attempt logged with neither status nor error: {row:#?}"
        );
        for text in [&row.error, &row.excerpt].into_iter().flatten() {
            assert!(!text.contains('\0'), "{label}: NUL stored: {row:#?}");
        }
        if let Some(excerpt) = &row.excerpt {
            assert!(
                excerpt.chars().count() <= EXCERPT,
                "{label}: an excerpt of {} characters, beyond the {EXCERPT}-byte limit",
                excerpt.chars().count()
            );
        }
    }
    let mut kinds: BTreeMap<(String, Option<i16>, Option<String>), usize> = BTreeMap::new();
    for row in &run.rows {
        *kinds
            .entry((row.outcome.clone(), row.http_status, row.error.clone()))
            .or_default() += 1;
    }
    println!(
        "{label}: {} requests, {} rows, {:.1} s; (outcome, status, error): rows = {kinds:#?}",
        requests.len(),
        run.rows.len(),
        started.elapsed().as_secs_f64()
    );
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_whose_body_holds_nul_bytes_is_logged_with_replacement_characters() {
    let run = hostile_next_to_healthy(|_| Mode::NulBody).await;
    assert_eq!(NUL_BODY, b"ok\0\0accepted\0");
    run.each_delivery_succeeds_with("ok\u{FFFD}\u{FFFD}accepted\u{FFFD}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_invalid_utf8_is_logged_with_replacement_characters_and_cut_at_the_limit() {
    let run = hostile_next_to_healthy(|_| Mode::InvalidUtf8 {
        excerpt_limit: EXCERPT,
    })
    .await;
    assert_eq!(INVALID_UTF8_HEAD, b"caf\xc3\xa9 \xff\xfe ok \xc3\x28 end");
    assert_eq!(
        invalid_utf8_body(EXCERPT)[EXCERPT - 1..EXCERPT + 3].to_vec(),
        "€ ".as_bytes()
    );
    // Each invalid byte is one U+FFFD; the "€" that the limit cut after its first byte is left out, not
    // shown as invalid.
    let padding = "x".repeat(EXCERPT - 1 - INVALID_UTF8_HEAD.len());
    run.each_delivery_succeeds_with(&format!("café \u{FFFD}\u{FFFD} ok \u{FFFD}( end{padding}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_mib_body_is_cut_at_the_excerpt_limit() {
    let run = hostile_next_to_healthy(|_| Mode::HugeBody).await;
    let start = String::from_utf8(huge_body()[..EXCERPT].to_vec()).unwrap();
    run.each_delivery_succeeds_with(&start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_chunked_body_is_cut_at_the_excerpt_limit() {
    let run = hostile_next_to_healthy(|_| Mode::EndlessChunked).await;
    let start: String = (0..EXCERPT).map(|n| endless_byte(n) as char).collect();
    run.each_delivery_succeeds_with(&start);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_http_is_a_request_error() {
    let run = hostile_next_to_healthy(|_| Mode::NotHttp).await;
    run.each_delivery_fails_then_dies(|row| {
        assert_eq!(row.http_status, None, "{row:#?}");
        let error = row.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("request error: ") && error.contains("invalid HTTP"),
            "{row:#?}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_is_logged_as_such() {
    let run = hostile_next_to_healthy(|_| Mode::Reset).await;
    run.each_delivery_fails_then_dies(|row| {
        assert_eq!(row.http_status, None, "{row:#?}");
        let error = row.error.as_deref().unwrap_or_default();
        assert!(error.starts_with("connection reset"), "{row:#?}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_after_the_status_line_times_out() {
    let run = hostile_next_to_healthy(|_| Mode::StallAfterStatusLine).await;
    let handed_over = format!(
        "no answer within {} ms; handed over to the slow lane",
        (TIMEOUT / 2).as_millis()
    );
    for (delivery, rows) in run.deliveries() {
        // The inline attempt may have been handed over (logged, not counted); then attempts 1 to 3 from the
        // retry queue with the whole timeout.
        let made: Vec<&Row> = rows
            .iter()
            .filter(|r| r.error.as_deref() != Some(handed_over.as_str()))
            .collect();
        assert!(rows.len() - made.len() <= 1, "{delivery}: {rows:#?}");
        let attempts: Vec<(i32, &str)> = made
            .iter()
            .map(|r| (r.attempt, r.outcome.as_str()))
            .collect();
        assert_eq!(
            attempts,
            [(1, "failed"), (2, "failed"), (3, "dead")],
            "{delivery}: {rows:#?}"
        );
        for row in made {
            assert_eq!(row.http_status, None, "{row:#?}");
            let error = row.error.as_deref().unwrap_or_default();
            assert!(error.starts_with("timeout"), "{row:#?}");
        }
    }
    assert!(
        run.rows.len() as i32 >= 2 * BATCH as i32 * ATTEMPTS,
        "{:#?}",
        run.rows
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_followed() {
    let run = hostile_next_to_healthy(|healthy| Mode::Redirect(healthy.url("/redirected"))).await;
    run.each_delivery_fails_then_dies(|row| {
        assert_eq!(row.http_status, Some(302), "{row:#?}");
        assert_eq!(row.error.as_deref(), Some("HTTP 302 Found"), "{row:#?}");
    });
    assert!(
        run.healthy.requests("/redirected").is_empty(),
        "the redirect was followed"
    );
}
