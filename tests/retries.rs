//! Failures: the retry schedule through the broker's delay ladder, dead deliveries, 410 Gone, automatic
//! turning off after consecutive failures, transport errors, and slow receivers.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::json;
use support::receiver::Receiver;
use support::{envelope, wait_for, TestEnv};
use webhookd_core::RetryPolicy;
use webhookd_store::webhooks::NewWebhook;

const DEADLINE: Duration = Duration::from_secs(20);

fn event(n: i64) -> serde_json::Value {
    envelope(1, "PROJECT_DELETED", None, json!({"project": {"id": n}}))
}

type Row = (
    i32,
    String,
    Option<i16>,
    Option<String>,
    Option<SystemTime>,
    String,
);

async fn rows_of(env: &TestEnv, webhook: i64) -> Vec<Row> {
    env.query(
        "SELECT attempt, outcome, http_status, error, next_attempt_at, delivery_id::text FROM delivery_attempts
          WHERE webhook_id = $1 ORDER BY attempt, created_at, id",
        &[&webhook],
    )
    .await
    .iter()
    .map(|r| {
        let next: Option<chrono::DateTime<chrono::Utc>> = r.get(4);
        (r.get(0), r.get(1), r.get(2), r.get(3), next.map(SystemTime::from), r.get(5))
    })
    .collect()
}

async fn wait_rows(env: &TestEnv, webhook: i64, n: usize) -> Vec<Row> {
    wait_for(
        &format!("{n} log rows of webhook {webhook}"),
        DEADLINE,
        || async {
            let rows = rows_of(env, webhook).await;
            (rows.len() >= n).then_some(rows)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_twice_gets_three_attempts_none_of_them_early() {
    let env = TestEnv::new(|_| {}).await; // schedule 0.2 s, 0.4 s
    let rx = Receiver::start().await;
    rx.script("/flaky", |n| {
        (if n < 2 { 500 } else { 200 }, vec![], Duration::ZERO)
    });
    let (id, _) = env
        .webhook(NewWebhook::new(1, None, rx.url("/flaky")))
        .await;
    let worker = env.start_worker().await;
    env.publish(&event(1)).await;

    let rows = wait_rows(&env, id, 3).await;
    let summary: Vec<(i32, &str, Option<i16>)> =
        rows.iter().map(|r| (r.0, r.1.as_str(), r.2)).collect();
    assert_eq!(
        summary,
        [
            (1, "failed", Some(500)),
            (2, "failed", Some(500)),
            (3, "succeeded", Some(200))
        ]
    );
    assert_eq!(rows[0].3.as_deref(), Some("HTTP 500 Internal Server Error"));
    assert!(rows[2].4.is_none() && rows[2].3.is_none());

    let got = rx.requests("/flaky");
    assert_eq!(got.len(), 3);
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "the same webhook-id on every attempt"
    );
    assert_eq!(
        ids[0].trim_start_matches("msg_"),
        rows[0].5.replace('-', "")
    );
    let attempts: Vec<String> = got
        .iter()
        .map(|r| r.header("x-webhookd-attempt").unwrap())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    for k in 0..2 {
        let scheduled = rows[k]
            .4
            .expect("a failed attempt has its next attempt time");
        assert!(
            got[k + 1].wall >= scheduled,
            "attempt {} came before its scheduled time",
            k + 2
        );
        let min_gap = [0.2, 0.4][k] * 0.8;
        assert!(
            (got[k + 1].at - got[k].at).as_secs_f64() >= min_gap,
            "retry {k} too early"
        );
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_longer_than_the_schedule_is_honoured() {
    // Fails on the policy that capped Retry-After at twice the scheduled wait: the retry came after ~0.4 s.
    let env = TestEnv::new(|s| {
        s.retry_policy = RetryPolicy::new(RetryPolicy::parse_schedule("0.2,0.4").unwrap(), true)
    })
    .await;
    let rx = Receiver::start().await;
    rx.script("/busy", |n| match n {
        0 => (503, vec![("retry-after", "2".to_owned())], Duration::ZERO),
        _ => (200, vec![], Duration::ZERO),
    });
    let (id, _) = env.webhook(NewWebhook::new(1, None, rx.url("/busy"))).await;
    let worker = env.start_worker().await;
    env.publish(&event(1)).await;

    let rows = wait_rows(&env, id, 2).await;
    let summary: Vec<(i32, &str, Option<i16>)> =
        rows.iter().map(|r| (r.0, r.1.as_str(), r.2)).collect();
    assert_eq!(
        summary,
        [(1, "failed", Some(503)), (2, "succeeded", Some(200))]
    );
    let got = rx.requests("/busy");
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(2),
        "the second attempt came {gap:?} after the first, before the receiver's Retry-After: 2"
    );
    let scheduled = rows[0]
        .4
        .expect("the failed attempt has its next attempt time");
    let announced = scheduled.duration_since(got[0].wall).unwrap_or_default();
    assert!(
        announced >= Duration::from_millis(1900),
        "next_attempt_at is {announced:?} after the first attempt"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_succeeds_ends_dead_after_the_last_attempt() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script("/down", |_| (503, vec![], Duration::ZERO));
    let (id, _) = env.webhook(NewWebhook::new(1, None, rx.url("/down"))).await;
    let worker = env.start_worker().await;
    env.publish(&event(1)).await;
    let rows = wait_rows(&env, id, 3).await;
    let summary: Vec<(i32, &str)> = rows.iter().map(|r| (r.0, r.1.as_str())).collect();
    assert_eq!(summary, [(1, "failed"), (2, "failed"), (3, "dead")]);
    assert!(
        rows[2].4.is_none(),
        "nothing is scheduled after the last attempt"
    );
    assert_eq!(rows[2].3.as_deref(), Some("HTTP 503 Service Unavailable"));
    let failures = env
        .query(
            "SELECT consecutive_failures, is_active FROM webhooks WHERE id = $1",
            &[&id],
        )
        .await;
    assert_eq!(
        (failures[0].get::<_, i32>(0), failures[0].get::<_, bool>(1)),
        (3, true)
    );
    assert_eq!(rx.requests("/down").len(), 3);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_turns_the_webhook_off() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script("/gone", |_| (410, vec![], Duration::ZERO));
    let (id, _) = env.webhook(NewWebhook::new(1, None, rx.url("/gone"))).await;
    let worker = env.start_worker().await;
    env.publish(&event(1)).await;
    let rows = wait_rows(&env, id, 1).await;
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("dead", Some(410)));
    let hook = env
        .query("SELECT is_active FROM webhooks WHERE id = $1", &[&id])
        .await;
    assert!(!hook[0].get::<_, bool>(0));
    let cache = worker.worker.cache().clone();
    wait_for(
        "the cache sees the webhook off",
        Duration::from_secs(1),
        || async { (!cache.snapshot().get(id).unwrap().is_active).then_some(()) },
    )
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_turn_a_webhook_off_and_a_success_resets_the_count() {
    let env = TestEnv::new(|s| {
        s.retry_policy = RetryPolicy::new(Vec::new(), true);
        s.max_consecutive_failures = 3;
        s.prefetch = 1;
    })
    .await;
    let rx = Receiver::start().await;
    rx.script("/bad", |_| (500, vec![], Duration::ZERO));
    rx.script("/mixed", |n| {
        ([500, 500, 200, 500][n.min(3)], vec![], Duration::ZERO)
    });
    let (bad, _) = env.webhook(NewWebhook::new(1, None, rx.url("/bad"))).await;
    let (mixed, _) = env
        .webhook(NewWebhook::new(1, None, rx.url("/mixed")))
        .await;
    let worker = env.start_worker().await;
    for n in 0..3 {
        env.publish(&event(n)).await;
    }
    wait_rows(&env, bad, 3).await;
    // Turning it off reaches the worker by notification, within a second (not before the next message).
    let cache = worker.worker.cache().clone();
    wait_for(
        "the cache sees the failing webhook off",
        Duration::from_secs(1),
        || async { (!cache.snapshot().get(bad)?.is_active).then_some(()) },
    )
    .await;
    env.publish(&event(3)).await;
    wait_rows(&env, mixed, 4).await;
    let state = |id: i64| {
        let env = &env;
        async move {
            let r = env
                .query(
                    "SELECT consecutive_failures, is_active FROM webhooks WHERE id = $1",
                    &[&id],
                )
                .await;
            (r[0].get::<_, i32>(0), r[0].get::<_, bool>(1))
        }
    };
    assert_eq!(
        state(bad).await,
        (3, false),
        "three failures in a row turn it off"
    );
    assert_eq!(
        state(mixed).await,
        (1, true),
        "500, 500, 200, 500 leaves one failure"
    );
    assert_eq!(
        rx.requests("/bad").len(),
        3,
        "the fourth event is not sent to a webhook that is off"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_are_named_in_the_log() {
    let env = TestEnv::new(|s| s.retry_policy = RetryPolicy::new(Vec::new(), true)).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (refused, _) = env
        .webhook(NewWebhook::new(
            1,
            None,
            format!("http://127.0.0.1:{closed}/x"),
        ))
        .await;
    let (dns, _) = env
        .webhook(NewWebhook::new(
            1,
            None,
            "http://no-such-host.invalid/x".to_owned(),
        ))
        .await;
    let worker = env.start_worker().await;
    env.publish(&event(1)).await;
    let refused_rows = wait_rows(&env, refused, 1).await;
    let dns_rows = wait_rows(&env, dns, 1).await;
    let refused_error = refused_rows[0].3.clone().unwrap();
    assert!(
        refused_error.starts_with("connection refused"),
        "{refused_error}"
    );
    let dns_error = dns_rows[0].3.clone().unwrap();
    assert!(dns_error.starts_with("DNS error"), "{dns_error}");
    assert!(refused_rows[0].2.is_none());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_hitting_the_timeout_does_not_delay_the_others() {
    let env = TestEnv::new(|s| s.retry_policy = RetryPolicy::new(Vec::new(), true)).await;
    let rx = Receiver::start().await;
    rx.script("/slow", |_| (200, vec![], Duration::from_secs(3)));
    let (slow, _) = env.webhook(NewWebhook::new(1, None, rx.url("/slow"))).await;
    env.webhook(NewWebhook::new(1, None, rx.url("/fast"))).await;
    let worker = env.start_worker().await;
    let started = std::time::Instant::now();
    for n in 0..20 {
        env.publish(&event(n)).await;
    }
    let fast = rx.wait_for("/fast", 20, DEADLINE).await;
    let last = fast.iter().map(|r| r.at).max().unwrap();
    assert!(
        last - started < Duration::from_millis(900),
        "fast deliveries took {:?}: held up by the 1 s timeout of the slow webhook",
        last - started
    );
    // Each delivery was handed over at half the timeout, then made in full from the retry queue.
    let rows = wait_rows(&env, slow, 40).await;
    let (dead, handed_over): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.1 == "dead");
    assert_eq!((dead.len(), handed_over.len()), (20, 20));
    assert!(
        dead.iter().all(|r| r.0 == 1
            && r.2.is_none()
            && r.3.as_deref().unwrap_or("").starts_with("timeout")),
        "{:?}",
        dead[0]
    );
    assert!(handed_over
        .iter()
        .all(|r| r.3.as_deref().unwrap_or("").contains("handed over")));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_count_as_failures() {
    let env = TestEnv::new(|s| s.retry_policy = RetryPolicy::new(Vec::new(), true)).await;
    let rx = Receiver::start().await;
    let target = rx.url("/target");
    rx.script("/moved", move |_| {
        (302, vec![("location", target.clone())], Duration::ZERO)
    });
    let (id, _) = env
        .webhook(NewWebhook::new(1, None, rx.url("/moved")))
        .await;
    let worker = env.start_worker().await;
    env.publish(&event(1)).await;
    let rows = wait_rows(&env, id, 1).await;
    assert_eq!((rows[0].1.as_str(), rows[0].2), ("dead", Some(302)));
    assert_eq!(rows[0].3.as_deref(), Some("HTTP 302 Found"));
    assert!(
        rx.requests("/target").is_empty(),
        "the redirect was followed"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_protection_refuses_internal_addresses_at_send_time() {
    let env = TestEnv::new(|s| {
        s.retry_policy = RetryPolicy::new(Vec::new(), true);
        s.network_policy = webhookd_core::NetworkPolicy::new(Vec::new());
    })
    .await;
    let rx = Receiver::start().await;
    let port = rx.base.rsplit(':').next().unwrap().to_owned();
    let (literal, _) = env
        .webhook(NewWebhook::new(1, None, rx.url("/literal")))
        .await;
    let (named, _) = env
        .webhook(NewWebhook::new(
            1,
            None,
            format!("http://localhost:{port}/named"),
        ))
        .await;
    let worker = env.start_worker().await;
    env.publish(&event(1)).await;
    let literal_rows = wait_rows(&env, literal, 1).await;
    let named_rows = wait_rows(&env, named, 1).await;
    assert_eq!(
        literal_rows[0].3.as_deref(),
        Some("blocked by SSRF protection: 127.0.0.1 is a loopback address, which webhooks may not reach (allow it with WEBHOOKD_ALLOWED_NETWORKS)")
    );
    let named_error = named_rows[0].3.clone().unwrap();
    assert!(
        named_error.starts_with("blocked by SSRF protection"),
        "{named_error}"
    );
    assert!(
        named_error.contains("localhost resolves to"),
        "{named_error}"
    );
    assert!(rx.all().is_empty(), "nothing reached the internal receiver");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_webhook_goes_to_the_slow_lane_and_stops_holding_acks() {
    // Two messages in flight at a time: waiting on a 1 s timeout for every event would take 10 s for 20.
    let env = TestEnv::new(|s| {
        s.retry_policy = RetryPolicy::new(Vec::new(), true);
        s.prefetch = 2;
    })
    .await;
    let rx = Receiver::start().await;
    rx.script("/stuck", |_| (200, vec![], Duration::from_secs(5)));
    let (stuck, _) = env
        .webhook(NewWebhook::new(1, None, rx.url("/stuck")))
        .await;
    env.webhook(NewWebhook::new(1, None, rx.url("/healthy")))
        .await;
    let worker = env.start_worker().await;
    let started = std::time::Instant::now();
    for n in 0..20 {
        env.publish(&event(n)).await;
    }
    rx.wait_for("/healthy", 20, DEADLINE).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "healthy deliveries took {took:?}: held up by the stuck webhook"
    );
    // Every delivery to the stuck webhook is still attempted in full (from the retry queue) and logged;
    // only the attempts begun before the webhook was known to be slow were handed over first.
    let dead = wait_for(
        "20 dead deliveries to the stuck webhook",
        DEADLINE,
        || async {
            let rows = rows_of(&env, stuck).await;
            (rows.iter().filter(|r| r.1 == "dead").count() == 20).then_some(rows)
        },
    )
    .await;
    let handed_over = dead.iter().filter(|r| r.1 == "failed").count();
    assert!(
        handed_over <= 2,
        "only the first events in flight: {handed_over}"
    );
    assert!(dead
        .iter()
        .all(|r| r.0 == 1
            && (r.1 == "failed" || r.3.as_deref().unwrap_or("").starts_with("timeout"))));
    assert_eq!(rx.requests("/stuck").len(), 20 + handed_over);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_attempt_unanswered_at_half_the_timeout_is_handed_over_to_the_retry_queue() {
    let env = TestEnv::new(|_| {}).await; // timeout 1 s, schedule 0.2 s, 0.4 s
    let rx = Receiver::start().await;
    rx.script("/stuck", |_| (200, vec![], Duration::from_secs(5)));
    let (stuck, _) = env
        .webhook(NewWebhook::new(1, None, rx.url("/stuck")))
        .await;
    env.webhook(NewWebhook::new(1, None, rx.url("/healthy")))
        .await;
    let worker = env.start_worker().await;
    env.publish(&event(1)).await;
    rx.wait_for("/healthy", 1, DEADLINE).await;
    let rows = wait_rows(&env, stuck, 4).await;
    let summary: Vec<(i32, &str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.0, r.1.as_str(), r.3.as_deref()))
        .collect();
    assert_eq!(
        summary[0],
        (
            1,
            "failed",
            Some("no answer within 500 ms; handed over to the slow lane")
        )
    );
    // The hand-over does not count: attempt 1 is made again, from the retry queue, with the whole
    // timeout, and the schedule (two retries) follows as for any receiver.
    assert_eq!((summary[1].0, summary[1].1), (1, "failed"));
    assert_eq!((summary[2].0, summary[2].1), (2, "failed"));
    assert_eq!((summary[3].0, summary[3].1), (3, "dead"));
    assert!(summary[1..]
        .iter()
        .all(|r| r.2.unwrap_or("").starts_with("timeout")));
    assert_eq!(rx.requests("/stuck").len(), 4);
    let failures = env
        .query(
            "SELECT consecutive_failures FROM webhooks WHERE id = $1",
            &[&stuck],
        )
        .await;
    assert_eq!(
        failures[0].get::<_, i32>(0),
        3,
        "three timeouts; a hand-over is not a verdict on the receiver"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_tasks_that_cannot_be_made_end_with_their_reason() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    let (id, _) = env.webhook(NewWebhook::new(1, None, rx.url("/h"))).await;
    let worker = env.start_worker().await;
    env.publish_retry(b"{not a task").await;
    let pruned = uuid::Uuid::new_v4();
    let task = json!({"event_id": pruned, "webhook_id": id, "chunk": 0, "attempt": 2,
        "due_at_ms": webhookd_broker::retry_task::now_ms()});
    env.publish_retry(task.to_string().as_bytes()).await;
    // An event pruned while its retry waited: the delivery is closed in the log, as dead, with the reason.
    let rows = wait_rows(&env, id, 1).await;
    assert_eq!(
        (rows[0].0, rows[0].1.as_str(), rows[0].3.clone()),
        (
            2,
            "dead",
            Some(format!("event {pruned} is no longer stored"))
        )
    );
    // A task that is not one at all goes to the dead-letter queue with the reason.
    let dead = wait_for("the malformed task dead-lettered", DEADLINE, || async {
        let dead = env.drain_dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead[0].0, "{not a task");
    assert!(
        dead[0].1.starts_with("retry task is not valid: "),
        "{}",
        dead[0].1
    );
    // A message of several tasks: each ends on its own. One with neither its event nor its webhook left
    // cannot be logged for anyone, so it alone is dead-lettered, with its reason.
    let (other, orphan) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let tasks = json!([
        {"event_id": other, "webhook_id": id, "chunk": 0, "attempt": 3,
         "due_at_ms": webhookd_broker::retry_task::now_ms()},
        {"event_id": orphan, "webhook_id": 999_999, "chunk": 0, "attempt": 2,
         "due_at_ms": webhookd_broker::retry_task::now_ms()},
    ]);
    env.publish_retry(tasks.to_string().as_bytes()).await;
    let rows = wait_rows(&env, id, 2).await;
    assert_eq!(
        (rows[1].0, rows[1].1.as_str(), rows[1].3.clone()),
        (
            3,
            "dead",
            Some(format!("event {other} is no longer stored"))
        )
    );
    let dead = wait_for("the orphan task dead-lettered", DEADLINE, || async {
        let dead = env.drain_dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    let kept: serde_json::Value = serde_json::from_str(&dead[0].0).unwrap();
    assert_eq!(kept, json!([tasks[1]]));
    assert_eq!(dead[0].1, format!("event {orphan} is no longer stored"));
    assert!(rx.requests("/h").is_empty());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_of_many_deliveries_travel_together_and_each_is_made() {
    let env = TestEnv::new(|_| {}).await; // schedule 0.2 s, 0.4 s
    let rx = Receiver::start().await;
    // The 40 first attempts (made together: every event is queued before the worker starts, and the
    // first retry waits at least 160 ms) fail; the retries, scheduled together, succeed.
    rx.script("/once", |n| {
        (if n < 40 { 503 } else { 200 }, vec![], Duration::ZERO)
    });
    let (id, _) = env.webhook(NewWebhook::new(1, None, rx.url("/once"))).await;
    for n in 0..40 {
        env.publish(&event(n)).await;
    }
    let worker = env.start_worker().await;
    let rows = wait_for("40 deliveries succeeded", DEADLINE, || async {
        let rows = rows_of(&env, id).await;
        (rows.iter().filter(|r| r.1 == "succeeded").count() == 40).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 80);
    assert!(rows
        .iter()
        .all(|r| (r.0, r.1.as_str()) == (1, "failed") || (r.0, r.1.as_str()) == (2, "succeeded")));
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r.5.as_str()).collect();
    assert_eq!(ids.len(), 40);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retries_of_one_event_to_several_webhooks_each_get_their_own_body() {
    let env = TestEnv::new(|_| {}).await; // schedule 0.2 s, 0.4 s
    let rx = Receiver::start().await;
    for path in ["/full", "/bare"] {
        rx.script(path, |n| {
            (if n == 0 { 503 } else { 200 }, vec![], Duration::ZERO)
        });
    }
    let (full, _) = env.webhook(NewWebhook::new(1, None, rx.url("/full"))).await;
    let mut bare = NewWebhook::new(1, None, rx.url("/bare"));
    bare.send_payload = false;
    let (bare, _) = env.webhook(bare).await;
    let worker = env.start_worker().await;
    env.publish(&event(7)).await;
    // Both first attempts fail together, so their retries travel in one message and share its event.
    let first = rx.wait_for("/full", 2, DEADLINE).await;
    let second = rx.wait_for("/bare", 2, DEADLINE).await;
    assert_eq!(
        first[1].json(),
        json!({"action": "PROJECT_DELETED", "project": {"id": 7}})
    );
    assert_eq!(second[1].json(), json!({"action": "PROJECT_DELETED"}));
    for webhook in [full, bare] {
        let rows = wait_rows(&env, webhook, 2).await;
        assert_eq!((rows[1].0, rows[1].1.as_str()), (2, "succeeded"));
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_write_made_again_after_a_lost_reply_counts_once() {
    use webhookd_core::endpoint_health::HealthSignal;
    use webhookd_store::delivery_log::{
        write_attempts, AttemptRow, DeliveryKey, DisableRule, Outcome,
    };
    let rule = DisableRule {
        max_consecutive_failures: 50,
        disable_after: Duration::ZERO,
    };
    let env = TestEnv::new(|_| {}).await;
    let (id, _) = env
        .webhook(NewWebhook::new(1, None, "http://127.0.0.1:9/h"))
        .await;
    let row = AttemptRow {
        key: DeliveryKey::new(
            webhookd_core::EventId::new(),
            id,
            1,
            "PROJECT_DELETED",
            0,
            None,
        ),
        attempt: 1,
        outcome: Outcome::Failed,
        http_status: Some(500),
        duration_ms: 3,
        error: Some("HTTP 500 Internal Server Error".into()),
        response_excerpt: None,
        next_attempt_at: None,
        health: Some(HealthSignal::Failure),
    };
    let client = env.pool.get().await.unwrap();
    let write = uuid::Uuid::now_v7();
    for _ in 0..2 {
        write_attempts(&client, write, &[&row], &[], &[], rule)
            .await
            .unwrap();
    }
    let counted = || async {
        let rows = rows_of(&env, id).await.len();
        let failures = env
            .query(
                "SELECT consecutive_failures FROM webhooks WHERE id = $1",
                &[&id],
            )
            .await[0]
            .get::<_, i32>(0);
        (rows, failures)
    };
    assert_eq!(
        counted().await,
        (1, 1),
        "the second write of the same id changed nothing"
    );
    write_attempts(&client, uuid::Uuid::now_v7(), &[&row], &[], &[], rule)
        .await
        .unwrap();
    assert_eq!(counted().await, (2, 2), "another write counts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_retry_does_not_hold_the_slots_of_other_retries() {
    use webhookd_store::events::{claim_events, NewEvent};
    // Two retry slots. Message A holds a hanging attempt and a quick one; message B two quick ones. B must
    // not wait for A's hanging attempt to time out (1 s): the quick attempt's slot is free at once.
    let env = TestEnv::new(|s| s.retry_prefetch = 2).await;
    let rx = Receiver::start().await;
    rx.script("/hang", |_| (200, vec![], Duration::from_secs(5)));
    let (hang, _) = env.webhook(NewWebhook::new(1, None, rx.url("/hang"))).await;
    let mut quick = Vec::new();
    for n in 0..3 {
        quick.push(
            env.webhook(NewWebhook::new(1, None, rx.url(&format!("/q{n}"))))
                .await
                .0,
        );
    }
    let body = event(1);
    let client = env.pool.get().await.unwrap();
    let claims = claim_events(
        &client,
        &[NewEvent {
            id: uuid::Uuid::new_v4(),
            organization: 1,
            project: None,
            action: "PROJECT_DELETED".into(),
            producer_id: None,
            body: body.to_string(),
            claim_token: uuid::Uuid::new_v4(),
        }],
    )
    .await
    .unwrap();
    let now = webhookd_broker::retry_task::now_ms();
    let task = |webhook: i64| {
        json!({"event_id": claims[0].event_id, "webhook_id": webhook,
        "chunk": 0, "attempt": 2, "due_at_ms": now})
    };
    let worker = env.start_worker().await;
    env.publish_retry(json!([task(hang), task(quick[0])]).to_string().as_bytes())
        .await;
    rx.wait_for("/hang", 1, DEADLINE).await;
    rx.wait_for("/q0", 1, DEADLINE).await;
    // A's hanging attempt now holds one slot until its timeout; the other slot is free.
    let started = std::time::Instant::now();
    env.publish_retry(
        json!([task(quick[1]), task(quick[2])])
            .to_string()
            .as_bytes(),
    )
    .await;
    let q1 = rx.wait_for("/q1", 1, DEADLINE).await[0].at;
    let q2 = rx.wait_for("/q2", 1, DEADLINE).await[0].at;
    let waited = q1.max(q2) - started;
    assert!(
        waited < Duration::from_millis(700),
        "the second message waited {waited:?}: its attempts were held behind the hanging one"
    );
    assert_eq!(rx.requests("/hang").len(), 1);
    worker.stop().await;
}
