//! One bad row, message or stuck write cannot stall the others: what the database refuses for good is
//! isolated (dead-lettered, or logged without the offending text) while the rest commits and is acked; an
//! event too large is dead-lettered with the reason; a writer that commits nothing says so in `/readyz`, in
//! its metrics and in its log, with the database's own message and SQLSTATE.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::faults::{log_path, WorkerProcess, WATCHED_LOG};
use support::receiver::Receiver;
use support::{envelope, wait_for, TestEnv};
use webhookd_store::webhooks::NewWebhook;

const DEADLINE: Duration = Duration::from_secs(20);

/// A trigger that refuses, with SQLSTATE `sqlstate`, every row of `table` for which `condition` (over `NEW`)
/// holds.
fn refusing_trigger(table: &str, condition: &str, sqlstate: &str) -> String {
    format!(
        "CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF {condition} THEN
                 RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{sqlstate}';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table}
             FOR EACH ROW EXECUTE FUNCTION refuse_{table}();"
    )
}

async fn batch_execute(env: &TestEnv, sql: &str) {
    env.pool
        .get()
        .await
        .unwrap()
        .batch_execute(sql)
        .await
        .unwrap();
}

fn project_event(project: i64, n: i64) -> Value {
    let mut e = envelope(
        1,
        "TASKS_CREATED",
        Some(json!({"id": project})),
        json!({"tasks": [{"id": n}]}),
    );
    e["id"] = json!(format!("p{project}-{n}"));
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_database_refuses_to_store_is_dead_lettered_and_the_others_are_delivered() {
    let env = TestEnv::new(|_| {}).await;
    batch_execute(
        &env,
        &refusing_trigger("events", "NEW.producer_id = 'p1-10'", "23514"),
    )
    .await;
    let rx = Receiver::start().await;
    env.webhook(NewWebhook::new(1, None, rx.url("/hook"))).await;
    let worker = env.start_worker().await;
    for n in 0..20 {
        env.publish(&project_event(1, n)).await;
    }
    let received = rx.wait_for("/hook", 19, DEADLINE).await;
    let dead = wait_for("the refused event dead-lettered", DEADLINE, || async {
        let dead = env.drain_dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        serde_json::from_str::<Value>(&dead[0].0).unwrap()["id"],
        "p1-10"
    );
    assert_eq!(
        dead[0].1,
        "the event could not be stored: database error: ERROR: refused by the test (SQLSTATE 23514)"
    );
    env.wait_for_attempts(19, DEADLINE).await;
    worker.stop().await;
    assert_eq!(
        env.queued_events().await,
        0,
        "every message was acked, none waits for redelivery"
    );
    assert_eq!(received.len(), 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_database_refuses_is_logged_without_the_answer_text_or_its_message_dead_lettered()
{
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    let (healthy, _) = env
        .webhook(NewWebhook::new(1, Some(1), rx.url("/healthy")))
        .await;
    let (noted, _) = env
        .webhook(NewWebhook::new(1, Some(2), rx.url("/noted")))
        .await;
    let (unloggable, _) = env
        .webhook(NewWebhook::new(1, Some(3), rx.url("/unloggable")))
        .await;
    // `noted`'s rows are refused as long as they hold the receiver's text; `unloggable`'s always.
    let condition = format!(
        "(NEW.webhook_id = {noted} AND NEW.response_excerpt IS NOT NULL) OR NEW.webhook_id = {unloggable}"
    );
    batch_execute(
        &env,
        &refusing_trigger("delivery_attempts", &condition, "22021"),
    )
    .await;
    let worker = env.start_worker().await;
    for n in 0..10 {
        for project in 1..=3 {
            env.publish(&project_event(project, n)).await;
        }
    }
    for path in ["/healthy", "/noted", "/unloggable"] {
        rx.wait_for(path, 10, DEADLINE).await;
    }
    let collected = std::sync::Mutex::new(Vec::new());
    wait_for("10 dead letters", DEADLINE, || async {
        let got = env.drain_dead_letters().await;
        let mut dead = collected.lock().unwrap();
        dead.extend(got);
        (dead.len() >= 10).then_some(())
    })
    .await;
    let dead = collected.into_inner().unwrap();
    assert_eq!(dead.len(), 10);
    for (body, reason) in &dead {
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["project"]["id"], 3, "{body}");
        assert_eq!(
            reason,
            "the database refused the delivery-log rows of this message: database error: ERROR: refused by the test (SQLSTATE 22021)"
        );
    }
    let rows = env.wait_for_attempts(20, DEADLINE).await;
    let of = |id: i64| rows.iter().filter(|r| r.0 == id).collect::<Vec<_>>();
    assert_eq!(of(healthy).len(), 10);
    assert!(of(healthy)
        .iter()
        .all(|r| r.2 == "succeeded" && r.4.is_none()));
    assert_eq!(of(noted).len(), 10);
    for row in of(noted) {
        assert_eq!((row.2.as_str(), row.3), ("succeeded", Some(200)));
        assert_eq!(
            row.4.as_deref(),
            Some("(the answer's text is not stored: database error: ERROR: refused by the test (SQLSTATE 22021))")
        );
    }
    assert!(of(unloggable).is_empty());
    worker.stop().await;
    assert_eq!(env.queued_events().await, 0, "every message was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_the_limit_is_dead_lettered_with_the_reason() {
    let env = TestEnv::new(|s| s.max_event_bytes = 2_000).await;
    let rx = Receiver::start().await;
    env.webhook(NewWebhook::new(1, None, rx.url("/hook"))).await;
    let worker = env.start_worker().await;
    let big = envelope(
        1,
        "PROJECT_UPDATED",
        Some(json!({"id": 1})),
        json!({"project": {"id": 1, "title": "x".repeat(3_000)}}),
    );
    let size = big.to_string().len();
    env.publish(&big).await;
    env.publish(&project_event(1, 1)).await;
    rx.wait_for("/hook", 1, DEADLINE).await;
    let dead = wait_for("the large event dead-lettered", DEADLINE, || async {
        let dead = env.drain_dead_letters().await;
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(
        dead[0].1,
        format!("the event is {size} bytes, more than the largest accepted (2000 bytes, WEBHOOKD_MAX_EVENT_BYTES)")
    );
    assert_eq!(rx.requests("/hook").len(), 1);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_commits_nothing_makes_the_worker_unready_and_says_why() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    env.webhook(NewWebhook::new(1, None, rx.url("/hook"))).await;
    // Every log write fails with a serialization failure: transient, so it is retried, and nothing commits.
    batch_execute(&env, &refusing_trigger("log_writes", "true", "40001")).await;
    let mut cmd = env.webhookd();
    cmd.env("WEBHOOKD_STALL_AFTER", "1")
        .env("RUST_LOG", WATCHED_LOG);
    let mut worker = WorkerProcess::watch(cmd, &log_path(&env.name));
    wait_for("/readyz to answer 200", DEADLINE, || async {
        let (status, _) = worker.get("/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    env.publish(&project_event(1, 1)).await;
    rx.wait_for("/hook", 1, DEADLINE).await;

    let body = wait_for("/readyz to answer 503", DEADLINE, || async {
        let (status, body) = worker.get("/readyz").await?;
        (status == 503).then_some(body)
    })
    .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&body["database"], &body["broker"]),
        (&json!("ok"), &json!("ok"))
    );
    let writers = body["writers"].as_str().unwrap_or_default();
    assert!(
        writers.starts_with("the delivery_log writer has committed nothing for ")
            && writers.ends_with(
                "; last error: database error: ERROR: refused by the test (SQLSTATE 40001)"
            ),
        "{body}"
    );
    assert_eq!(
        worker
            .metric(r#"webhookd_writer_stalled{writer="delivery_log"}"#)
            .await,
        Some(1.0)
    );
    let stalled = worker.wait_logged("writer stalled", 1, DEADLINE).await;
    let line = &stalled[0];
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["writer"], "delivery_log", "{line}");
    assert_eq!(
        line["last_error"], "database error: ERROR: refused by the test (SQLSTATE 40001)",
        "{line}"
    );
    let retried = worker
        .wait_logged(
            "database write failed; retrying (nothing is acknowledged meanwhile)",
            1,
            DEADLINE,
        )
        .await;
    assert_eq!(retried[0]["sqlstate"], "40001", "{}", retried[0]);

    batch_execute(&env, "DROP TRIGGER refuse_log_writes ON log_writes").await;
    wait_for("/readyz to answer 200 again", DEADLINE, || async {
        let (status, _) = worker.get("/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
    env.wait_for_attempts(1, DEADLINE).await;
    assert_eq!(
        worker
            .metric(r#"webhookd_writer_stalled{writer="delivery_log"}"#)
            .await,
        Some(0.0)
    );
    worker.kill().await;
    let _ = std::fs::remove_file(log_path(&env.name));
}

/// The most requests a receiver path had in progress at once, from their arrival times and how long each
/// was held.
fn most_at_once(rx: &Receiver, path: &str, held: Duration) -> usize {
    let arrivals: Vec<std::time::Instant> = rx.requests(path).iter().map(|r| r.at).collect();
    arrivals
        .iter()
        .map(|&t| arrivals.iter().filter(|&&u| u <= t && t < u + held).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_at_most_its_cap_of_attempts_at_once() {
    let env = TestEnv::new(|s| {
        s.max_concurrent_per_webhook = 2;
        s.timeout = Duration::from_secs(2);
    })
    .await;
    let rx = Receiver::start().await;
    let held = Duration::from_millis(300);
    rx.script("/capped", move |_| (200, vec![], held));
    env.webhook(NewWebhook::new(1, None, rx.url("/capped")))
        .await;
    env.webhook(NewWebhook::new(1, None, rx.url("/free"))).await;
    let worker = env.start_worker().await;
    for n in 0..8 {
        env.publish(&project_event(1, n)).await;
    }
    rx.wait_for("/free", 8, DEADLINE).await;
    rx.wait_for("/capped", 8, DEADLINE).await;
    // A little slack on `held` for the receiver's own timing.
    assert_eq!(
        most_at_once(&rx, "/capped", held - Duration::from_millis(20)),
        2
    );
    env.wait_for_attempts(16, DEADLINE).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_organizations_slow_retries_do_not_hold_back_anothers_due_retry() {
    // Four retry slots; organization 1's four webhooks answer in 1.5 s (past half the timeout: handed over to
    // the retry lane), with a backlog of 80 deliveries there: some 30 s of work.
    let env = TestEnv::new(|s| {
        s.retry_prefetch = 4;
        s.timeout = Duration::from_secs(2);
        s.retry_policy = webhookd_core::RetryPolicy::new(vec![Duration::from_millis(200)], true);
    })
    .await;
    let rx = Receiver::start().await;
    for n in 0..4 {
        let path = format!("/slow{n}");
        rx.script(&path, |_| (200, vec![], Duration::from_millis(1_500)));
        env.webhook(NewWebhook::new(1, None, rx.url(&path))).await;
    }
    rx.script("/flaky", |n| match n {
        0 => (500, vec![], Duration::ZERO),
        _ => (200, vec![], Duration::ZERO),
    });
    env.webhook(NewWebhook::new(2, None, rx.url("/flaky")))
        .await;
    let worker = env.start_worker().await;
    for n in 0..20 {
        env.publish(&envelope(
            1,
            "PROJECT_DELETED",
            None,
            json!({"project": {"id": n}}),
        ))
        .await;
    }
    // The first attempts are made inline and handed over to the retry lane after 1 s (half the timeout):
    // once the lane makes the first of them again, organization 1's backlog of 80 is queued there.
    wait_for(
        "organization 1's backlog in the retry lane",
        DEADLINE,
        || async {
            let sent: usize = (0..4)
                .map(|n| rx.requests(&format!("/slow{n}")).len())
                .sum();
            (sent > 80).then_some(())
        },
    )
    .await;
    env.publish(&envelope(
        2,
        "PROJECT_DELETED",
        None,
        json!({"project": {"id": 1}}),
    ))
    .await;
    let flaky = rx.wait_for("/flaky", 2, DEADLINE).await;
    let waited = flaky[1].at - flaky[0].at;
    // Due 0.2 s after the first attempt; behind the backlog in one queue it would wait some 25 s, with its
    // fair share at most about one slow attempt (1.5 s) after it is due.
    assert!(
        waited < Duration::from_millis(3_500),
        "organization 2's retry came {waited:?} after its first attempt"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_row_held_by_a_transaction_holds_up_no_other_delivery() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script("/down", |_| (500, vec![], Duration::ZERO));
    let (held, _) = env.webhook(NewWebhook::new(1, None, rx.url("/down"))).await;
    let (up, _) = env.webhook(NewWebhook::new(2, None, rx.url("/up"))).await;
    // A transaction holds organization 1's webhook row, and stays open: an operator's `BEGIN`, or a client
    // lost mid-transaction, which PostgreSQL keeps until TCP keepalive notices.
    let mut holder = env.pool.get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE", &[&held])
        .await
        .unwrap();
    let worker = env.start_worker().await;
    for n in 0..20 {
        for org in [1, 2] {
            env.publish(&envelope(
                org,
                "PROJECT_DELETED",
                None,
                json!({"project": {"id": n}}),
            ))
            .await;
        }
    }
    // Organization 2's deliveries are made and logged (so acked), and so are organization 1's failures,
    // while the row is held.
    let logged = |webhook: i64, outcome: &'static str| {
        let env = &env;
        async move {
            env.attempts()
                .await
                .iter()
                .filter(|a| a.0 == webhook && a.2 == outcome)
                .count()
        }
    };
    wait_for(
        "organization 2's 20 deliveries logged",
        DEADLINE,
        || async { (logged(up, "succeeded").await == 20).then_some(()) },
    )
    .await;
    wait_for("organization 1's 20 failures logged", DEADLINE, || async {
        (logged(held, "failed").await >= 20).then_some(())
    })
    .await;
    assert_eq!(rx.requests("/up").len(), 20);
    // Once the row is free, its failures are counted, each once, though no attempt of it comes any more
    // (each event's last attempt, `dead`, is a failure too).
    wait_for("organization 1's last attempts", DEADLINE, || async {
        (logged(held, "dead").await == 20).then_some(())
    })
    .await;
    tx.commit().await.unwrap();
    wait_for("organization 1's failures counted", DEADLINE, || async {
        let failed = (logged(held, "failed").await + logged(held, "dead").await) as i32;
        let counted: i32 = env
            .query(
                "SELECT consecutive_failures FROM webhooks WHERE id = $1",
                &[&held],
            )
            .await[0]
            .get(0);
        (counted == failed && failed == 60).then_some(())
    })
    .await;
    worker.stop().await;
}
