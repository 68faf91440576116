//! The data lifecycle: retention (old log partitions, events and idempotency keys removed, nothing still needed
//! removed, the default partition kept empty), every event kept (those no webhook receives too), replays and
//! backfills, and the time-based disable.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use support::api::ApiClient;
use support::receiver::Receiver;
use support::{envelope, wait_for, TestEnv};
use webhookd_core::RetryPolicy;
use webhookd_store::retention::{self, PartitionStep, RetentionSettings};
use webhookd_store::webhooks::NewWebhook;

const DEADLINE: Duration = Duration::from_secs(20);

fn event(org: i64, n: i64) -> Value {
    let mut e = envelope(org, "PROJECT_DELETED", None, json!({"project": {"id": n}}));
    e["id"] = json!(format!("org{org}-event-{n}"));
    e
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    env.query(sql, &[]).await[0].get(0)
}

/// The project ids of organization 1's stored events from `from` on, in event order (the order they were stored
/// in; events handled at once by a worker may be stored in another order than they were published in).
async fn stored_order(env: &TestEnv, from: i64) -> Vec<i64> {
    env.query(
        "SELECT (body -> 'payload' -> 'project' ->> 'id')::int8 FROM events
          WHERE organization = 1 ORDER BY created_at, id",
        &[],
    )
    .await
    .iter()
    .map(|r| r.get::<_, i64>(0))
    .filter(|n| *n >= from)
    .collect()
}

/// The project ids of the bodies `path` received, in order.
fn projects(rx: &Receiver, path: &str) -> Vec<i64> {
    rx.requests(path)
        .iter()
        .map(|r| r.json()["project"]["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_what_is_past_the_window_and_keeps_what_is_still_needed() {
    let env = TestEnv::new(|_| {}).await;
    // Old and recent log rows, in partitions and in the default partition, old and recent events (one whose
    // retry is pending), old and recent idempotency keys.
    let setup = "
        INSERT INTO organizations (id) VALUES (1);
        CREATE TABLE old_log PARTITION OF delivery_attempts
            FOR VALUES FROM (now() - interval '41 days') TO (now() - interval '40 days');
        INSERT INTO delivery_attempts (delivery_id, event_id, webhook_id, organization, action, attempt, outcome,
                                       duration_ms, created_at)
        SELECT gen_random_uuid(), gen_random_uuid(), 1, 1, 'PROJECT_DELETED', 1, 'succeeded', 1, t
          FROM (VALUES (now() - interval '40 days 12 hours'),   -- in old_log
                       (now() - interval '35 days'),            -- default partition, past the window
                       (now() + interval '20 days'),            -- default partition, no partition yet
                       (now())) AS v(t);                        -- today's partition
        INSERT INTO events (id, organization, action, producer_id, body, created_at)
        VALUES ('00000000-0000-7000-8000-000000000001', 1, 'PROJECT_DELETED', 'old', '{}', now() - interval '31 days'),
               ('00000000-0000-7000-8000-000000000002', 1, 'PROJECT_DELETED', 'pending', '{}', now() - interval '31 days'),
               ('00000000-0000-7000-8000-000000000003', 1, 'PROJECT_DELETED', 'recent', '{}', now() - interval '29 days');
        INSERT INTO delivery_attempts (delivery_id, event_id, webhook_id, organization, action, attempt, outcome,
                                       duration_ms, next_attempt_at)
        VALUES (gen_random_uuid(), '00000000-0000-7000-8000-000000000002', 1, 1, 'PROJECT_DELETED', 6, 'failed', 1,
                now() + interval '5 hours');
        INSERT INTO idempotency_keys (organization, key, event_id, published, created_at)
        VALUES (1, 'expired', 'e1', true, now() - interval '25 hours'), (1, 'fresh', 'e2', true, now());";
    let settings = RetentionSettings::default();
    {
        let client = env.pool.get().await.unwrap();
        let ahead = settings.partitions_ahead();
        retention::ensure_partitions(&**client, ahead, settings.partition_span)
            .await
            .unwrap();
        client.batch_execute(setup).await.unwrap();
    }
    let default_rows = "SELECT count(*) FROM delivery_attempts_default";
    assert_eq!(count(&env, default_rows).await, 2);

    // A second process holding the lock: this one skips.
    let held = env.pool.get().await.unwrap();
    held.execute("SELECT pg_advisory_lock(7310663)", &[])
        .await
        .unwrap();
    let mut client = env.pool.get().await.unwrap();
    assert_eq!(retention::run(&mut client, &settings).await.unwrap(), None);
    held.execute("SELECT pg_advisory_unlock(7310663)", &[])
        .await
        .unwrap();

    // The worker runs it when it starts.
    let worker = env.start_worker().await;
    wait_for("a retention run", DEADLINE, || async {
        let keys = count(&env, "SELECT count(*) FROM idempotency_keys").await;
        (keys == 1).then_some(())
    })
    .await;
    worker.stop().await;
    let old_log = "SELECT count(*) FROM pg_class WHERE relname = 'old_log'";
    assert_eq!(
        count(&env, old_log).await,
        0,
        "the old partition is dropped"
    );
    assert_eq!(
        count(&env, default_rows).await,
        0,
        "the default partition is empty"
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM delivery_attempts").await,
        3,
        "today's row, the future row (moved to a partition of its own) and the pending retry's row remain"
    );
    let future =
        "SELECT count(*) FROM delivery_attempts WHERE created_at > now() + interval '19 days'";
    assert_eq!(count(&env, future).await, 1);
    let events: HashSet<String> = env
        .query("SELECT producer_id FROM events", &[])
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        events,
        HashSet::from(["pending".to_owned(), "recent".to_owned()]),
        "the old event is deleted; the one with a pending retry and the recent one are kept"
    );
    let keys: Vec<String> = env
        .query("SELECT key FROM idempotency_keys", &[])
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(keys, ["fresh"]);
    // Partitions exist ahead: an hour from now is not in the default partition.
    let ahead = "SELECT count(*) FROM webhookd_log_partitions()
                  WHERE range_start <= now() + interval '1 day' AND range_end > now() + interval '1 day'";
    assert_eq!(count(&env, ahead).await, 1);
}

/// A long reader of the delivery log (a backup, a report, a session left idle in a transaction after reading
/// it) holds a lock that every change to the log's partitions waits for, and PostgreSQL queues the log's writes
/// behind a change that waits: retention puts those changes off, and a worker starts and delivers, instead of
/// every log write (and every ack) waiting for the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reader_of_the_log_holds_up_neither_retention_nor_deliveries() {
    let env = TestEnv::new(|_| {}).await;
    // Work for each step: a row in the default partition, no partitions ahead, an expired partition; and an
    // expired event, which needs no lock on the log.
    let setup = "
        INSERT INTO organizations (id) VALUES (1);
        CREATE TABLE old_log PARTITION OF delivery_attempts
            FOR VALUES FROM (now() - interval '41 days') TO (now() - interval '40 days');
        INSERT INTO delivery_attempts (delivery_id, event_id, webhook_id, organization, action, attempt, outcome,
                                       duration_ms, created_at)
        VALUES (gen_random_uuid(), gen_random_uuid(), 0, 1, 'PROJECT_DELETED', 1, 'succeeded', 1,
                now() + interval '20 days');
        INSERT INTO events (id, organization, action, producer_id, body, created_at)
        VALUES ('00000000-0000-7000-8000-000000000001', 1, 'PROJECT_DELETED', 'old', '{}', now() - interval '31 days');";
    env.pool
        .get()
        .await
        .unwrap()
        .batch_execute(setup)
        .await
        .unwrap();
    // The partition functions bound their lock waits as migrated (a later CREATE OR REPLACE would reset it).
    let bounded = format!("lock_timeout={}", retention::PARTITION_LOCK_WAIT);
    for function in [
        "webhookd_ensure_log_partitions",
        "webhookd_drop_log_partitions_before",
    ] {
        let config: Vec<String> = env
            .query(
                "SELECT coalesce(proconfig, '{}') FROM pg_proc WHERE proname = $1",
                &[&function],
            )
            .await[0]
            .get(0);
        assert_eq!(config, std::slice::from_ref(&bounded), "{function}");
    }
    let reader = env.pool.get().await.unwrap();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM delivery_attempts")
        .await
        .unwrap();

    // Retention while the reader reads, and log writes beside it.
    let settings = RetentionSettings::default();
    let mut client = env.pool.get().await.unwrap();
    let retention = tokio::spawn(async move {
        let run = retention::run(&mut client, &settings).await;
        (run, client)
    });
    let writer = env.pool.get().await.unwrap();
    for n in 0..10 {
        let write = writer.execute(
            "INSERT INTO delivery_attempts (delivery_id, event_id, webhook_id, organization, action, attempt,
                                            outcome, duration_ms)
             VALUES (gen_random_uuid(), gen_random_uuid(), 0, 1, 'PROJECT_DELETED', 1, 'succeeded', 1)",
            &[],
        );
        // A write may queue behind one of retention's lock waits (200 ms each), not behind the reader.
        tokio::time::timeout(Duration::from_millis(1500), write)
            .await
            .unwrap_or_else(|_| panic!("log write {n} waited for the reader"))
            .unwrap();
    }
    let (run, client) = tokio::time::timeout(Duration::from_secs(5), retention)
        .await
        .expect("retention waited for the reader")
        .unwrap();
    let run = run.unwrap().expect("no other retention runs");
    assert_eq!(
        run.postponed,
        [
            PartitionStep::AdoptDefaultRows,
            PartitionStep::CreatePartitions,
            PartitionStep::DropPartitions
        ]
    );
    assert_eq!(run.events_deleted, 1, "the rest of the run is done");
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM pg_class WHERE relname = 'old_log'"
        )
        .await,
        1
    );

    // A worker starts, and delivers and logs, while the reader still reads.
    let rx = Receiver::start().await;
    let (hook, _) = env.webhook(NewWebhook::new(1, None, rx.url("/hook"))).await;
    let worker = tokio::time::timeout(DEADLINE, env.start_worker())
        .await
        .expect("the worker started while the reader reads");
    env.publish(&event(1, 1)).await;
    wait_for("the delivery logged", DEADLINE, || async {
        let logged = env
            .query(
                "SELECT count(*) FROM delivery_attempts WHERE webhook_id = $1 AND outcome = 'succeeded'",
                &[&hook],
            )
            .await[0]
            .get::<_, i64>(0);
        (logged == 1).then_some(())
    })
    .await;
    assert_eq!(rx.requests("/hook").len(), 1);
    worker.stop().await;

    // Once the reader is done, the next run does what was put off.
    reader.batch_execute("COMMIT").await.unwrap();
    let client = tokio::sync::Mutex::new(client);
    // (The stopped worker's own run may still hold retention's lock, and may be the one that does it; a run
    // may meet another short lock, autovacuum's say, and put a step off again.)
    wait_for("a retention run with nothing put off", DEADLINE, || async {
        let run = retention::run(&mut *client.lock().await, &settings)
            .await
            .unwrap();
        run.filter(|r| r.postponed.is_empty())
    })
    .await;
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM pg_class WHERE relname = 'old_log'"
        )
        .await,
        0,
        "the expired partition is dropped"
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM delivery_attempts_default").await,
        0,
        "the default partition is empty"
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM delivery_attempts").await,
        12,
        "the future row, the ten writes and the delivery, moved to partitions of their own"
    );
    let ahead = "SELECT count(*) FROM webhookd_log_partitions()
                  WHERE range_start <= now() + interval '1 day' AND range_end > now() + interval '1 day'";
    assert_eq!(count(&env, ahead).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_kept_even_when_no_webhook_receives_it() {
    let env = TestEnv::new(|_| {}).await;
    let worker = env.start_worker().await;
    for n in 0..3 {
        env.publish(&event(1, n)).await;
    }
    wait_for("three events stored", DEADLINE, || async {
        (count(&env, "SELECT count(*) FROM events").await == 3).then_some(())
    })
    .await;
    worker.stop().await;
    assert_eq!(env.queued_events().await, 0, "acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_forgotten_after_its_window() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let token = env.token(1).await;
    let body =
        json!({"version": 1, "action": "PROJECT_DELETED", "payload": {"project": {"id": 1}}});
    let post = || async {
        let (status, answer) = api
            .call_with(
                "POST",
                "/api/events/",
                Some(&token),
                Some(body.to_string().into_bytes()),
                &[("idempotency-key", "k-1")],
            )
            .await;
        assert_eq!(status, 202, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    };
    let first = post().await;
    assert_eq!(post().await, first, "within the window: the same event");
    assert_eq!(env.queued_events().await, 1);
    env.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
        &[],
    )
    .await;
    let later = post().await;
    assert_ne!(later, first, "past the window: a new request, a new event");
    assert_eq!(env.queued_events().await, 2);
}

/// A worker and an API on one environment, with a receiver; `rate` is the replay rate.
async fn replay_world(
    rate: f64,
) -> (
    TestEnv,
    support::RunningWorker,
    support::api::TestApi,
    Receiver,
) {
    let env = TestEnv::new(|s| s.replay_rate = rate).await;
    let worker = env.start_worker().await;
    let api = env.start_api(|_| {}).await;
    let rx = Receiver::start().await;
    (env, worker, api, rx)
}

async fn create_webhook(api: &ApiClient, token: &str, url: &str) -> i64 {
    let (status, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            Some(token),
            Some(&json!({"url": url})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    hook["id"].as_i64().unwrap()
}

/// Waits until the worker's subscription cache has webhook `id` (before that, events are stored but not sent
/// to it).
async fn wait_cached(worker: &support::RunningWorker, id: i64) {
    let cache = worker.worker.cache().clone();
    wait_for("the worker to see the webhook", DEADLINE, || async {
        cache.snapshot().get(id).map(drop)
    })
    .await;
}

async fn replay(api: &ApiClient, token: &str, webhook: i64, body: Value) -> Value {
    let (status, replay) = api
        .call(
            "POST",
            &format!("/api/webhooks/{webhook}/replay/"),
            Some(token),
            Some(&body),
        )
        .await;
    assert_eq!(status, 202, "{replay}");
    replay
}

async fn wait_replay_done(api: &ApiClient, token: &str, id: &str) -> Value {
    wait_for(&format!("replay {id} done"), DEADLINE, || async {
        let (status, r) = api
            .call("GET", &format!("/api/replays/{id}/"), Some(token), None)
            .await;
        assert_eq!(status, 200, "{r}");
        (r["state"] == "done" && r["left"] == 0).then_some(r)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_webhook_is_backfilled_with_the_last_day() {
    let (env, worker, api, rx) = replay_world(200.0).await;
    let token = env.token(1).await;
    let old = create_webhook(&api, &token, &rx.url("/old")).await;
    wait_cached(&worker, old).await;
    for n in 0..10 {
        env.publish(&event(1, n)).await;
    }
    rx.wait_for("/old", 10, DEADLINE).await;
    // Another organization's events are not replayed to organization 1's webhook.
    env.publish(&event(2, 99)).await;
    let new = create_webhook(&api, &token, &rx.url("/new")).await;
    let since = rfc3339(Utc::now() - chrono::Duration::days(1));
    let started = replay(&api, &token, new, json!({"since": since})).await;
    assert_eq!(
        (started["state"].clone(), started["total"].clone()),
        (json!("running"), json!(10))
    );
    let id = started["id"].as_str().unwrap().to_owned();
    let done = wait_replay_done(&api, &token, &id).await;
    assert_eq!(
        (
            done["queued"].clone(),
            done["sent"].clone(),
            done["failed"].clone()
        ),
        (json!(10), json!(10), json!(0)),
        "{done}"
    );
    assert_eq!(
        projects(&rx, "/new"),
        stored_order(&env, 0).await,
        "in event order: the order they were stored in"
    );
    // New deliveries: their own webhook-ids, their own rows, marked with the replay.
    let old_ids: HashSet<String> = rx
        .requests("/old")
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    let new_ids: HashSet<String> = rx
        .requests("/new")
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(new_ids.len(), 10);
    assert!(old_ids.is_disjoint(&new_ids));
    let replay_id = uuid::Uuid::parse_str(&id).unwrap();
    let rows = env
        .query(
            "SELECT count(*) FROM delivery_attempts WHERE webhook_id = $1 AND replay_id = $2 AND outcome = 'succeeded'",
            &[&new, &replay_id],
        )
        .await[0]
        .get::<_, i64>(0);
    assert_eq!(rows, 10);
    assert_eq!(
        rx.requests("/old").len(),
        10,
        "the old webhook got nothing again"
    );
    let old_rows = env
        .query(
            "SELECT count(*) FROM delivery_attempts WHERE webhook_id = $1",
            &[&old],
        )
        .await[0]
        .get::<_, i64>(0);
    assert_eq!(old_rows, 10);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_webhook_missed_while_it_was_off_is_sent_again() {
    let (env, worker, api, rx) = replay_world(200.0).await;
    let token = env.token(1).await;
    let hook = create_webhook(&api, &token, &rx.url("/hook")).await;
    wait_cached(&worker, hook).await;
    for n in 0..3 {
        env.publish(&event(1, n)).await;
    }
    rx.wait_for("/hook", 3, DEADLINE).await;
    let off = json!({"is_active": false});
    let (status, _) = api
        .call(
            "PATCH",
            &format!("/api/webhooks/{hook}/"),
            Some(&token),
            Some(&off),
        )
        .await;
    assert_eq!(status, 200);
    let turned_off = Utc::now();
    let cache = worker.worker.cache().clone();
    wait_for("the worker sees it off", DEADLINE, || async {
        (!cache.snapshot().get(hook)?.is_active).then_some(())
    })
    .await;
    for n in 3..8 {
        env.publish(&event(1, n)).await;
    }
    wait_for("the missed events stored", DEADLINE, || async {
        (count(&env, "SELECT count(*) FROM events").await == 8).then_some(())
    })
    .await;
    // A replay to a webhook that is off is refused: nothing would be sent.
    let (status, refused) = api
        .call(
            "POST",
            &format!("/api/webhooks/{hook}/replay/"),
            Some(&token),
            Some(&json!({"since": rfc3339(turned_off)})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    let on = json!({"is_active": true});
    api.call(
        "PATCH",
        &format!("/api/webhooks/{hook}/"),
        Some(&token),
        Some(&on),
    )
    .await;
    wait_for("the worker sees it on", DEADLINE, || async {
        cache.snapshot().get(hook)?.is_active.then_some(())
    })
    .await;
    let started = replay(&api, &token, hook, json!({"since": rfc3339(turned_off)})).await;
    let id = started["id"].as_str().unwrap().to_owned();
    let done = wait_replay_done(&api, &token, &id).await;
    assert_eq!(done["sent"], 5, "{done}");
    let got = projects(&rx, "/hook");
    // Live events are delivered concurrently, in any order; the replayed ones come in event order.
    assert_eq!(
        got[..3].iter().copied().collect::<HashSet<_>>(),
        HashSet::from([0, 1, 2])
    );
    assert_eq!(got[3..], stored_order(&env, 3).await);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_replay_queues_nothing_more() {
    let (env, worker, api, rx) = replay_world(4.0).await;
    let token = env.token(1).await;
    let since = rfc3339(Utc::now() - chrono::Duration::minutes(1));
    for n in 0..40 {
        env.publish(&event(1, n)).await;
    }
    wait_for("40 events stored", DEADLINE, || async {
        (count(&env, "SELECT count(*) FROM events").await == 40).then_some(())
    })
    .await;
    let hook = create_webhook(&api, &token, &rx.url("/hook")).await;
    let started = replay(&api, &token, hook, json!({"since": since})).await;
    let id = started["id"].as_str().unwrap().to_owned();
    // A second replay to the same webhook while this one runs is refused.
    let (status, conflict) = api
        .call(
            "POST",
            &format!("/api/webhooks/{hook}/replay/"),
            Some(&token),
            Some(&json!({"since": since})),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    rx.wait_for("/hook", 4, DEADLINE).await;
    let (status, cancelled) = api
        .call("DELETE", &format!("/api/replays/{id}/"), Some(&token), None)
        .await;
    assert_eq!(
        (status, &cancelled["state"]),
        (200, &json!("cancelled")),
        "{cancelled}"
    );
    let queued = cancelled["queued"].as_i64().unwrap();
    assert!(queued < 40, "{cancelled}");
    // What was queued is sent or closed; nothing more comes.
    let settled = wait_for("the queued deliveries ended", DEADLINE, || async {
        let (_, r) = api
            .call("GET", &format!("/api/replays/{id}/"), Some(&token), None)
            .await;
        (r["left"] == 0).then_some(r)
    })
    .await;
    let sent = settled["sent"].as_i64().unwrap();
    assert!(sent <= queued);
    tokio::time::sleep(Duration::from_secs(2)).await; // nothing may arrive: a wait with no condition to wait for
    assert_eq!(rx.requests("/hook").len() as i64, sent);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_are_the_organizations_own() {
    let (env, worker, api, rx) = replay_world(200.0).await;
    let one = env.token(1).await;
    let two = env.token(2).await;
    let hook = create_webhook(&api, &one, &rx.url("/hook")).await;
    let since = rfc3339(Utc::now() - chrono::Duration::minutes(1));
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/webhooks/{hook}/replay/"),
            Some(&two),
            Some(&json!({"since": since})),
        )
        .await;
    assert_eq!(status, 404, "another organization's webhook");
    let started = replay(&api, &one, hook, json!({"since": since})).await;
    let id = started["id"].as_str().unwrap();
    for (method, path) in [
        ("GET", format!("/api/replays/{id}/")),
        ("DELETE", format!("/api/replays/{id}/")),
        ("GET", format!("/api/webhooks/{hook}/replays/")),
    ] {
        let (status, _) = api.call(method, &path, Some(&two), None).await;
        assert_eq!(status, 404, "{method} {path}");
    }
    let (status, list) = api
        .call(
            "GET",
            &format!("/api/webhooks/{hook}/replays/"),
            Some(&one),
            None,
        )
        .await;
    assert_eq!((status, list[0]["id"].as_str()), (200, Some(id)));
    let (status, bad) = api
        .call(
            "POST",
            &format!("/api/webhooks/{hook}/replay/"),
            Some(&one),
            Some(&json!({"until": "yesterday", "actions": ["NOPE"]})),
        )
        .await;
    assert_eq!(status, 400);
    let errors = &bad["validation_errors"];
    assert_eq!(errors["since"], json!(["This field is required."]), "{bad}");
    assert!(
        errors["until"][0]
            .as_str()
            .unwrap()
            .starts_with("Datetime has wrong format"),
        "{bad}"
    );
    assert_eq!(
        errors["actions"],
        json!(["\"NOPE\" is not a valid choice."]),
        "{bad}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_replay_does_not_hold_back_live_deliveries() {
    let (env, worker, api, rx) = replay_world(50.0).await;
    let token = env.token(1).await;
    let since = rfc3339(Utc::now() - chrono::Duration::minutes(1));
    for n in 0..150 {
        env.publish(&event(1, n)).await;
    }
    wait_for("150 events stored", DEADLINE, || async {
        (count(&env, "SELECT count(*) FROM events").await == 150).then_some(())
    })
    .await;
    let backfilled = create_webhook(&api, &token, &rx.url("/backfilled")).await;
    let live = create_webhook(&api, &token, &rx.url("/live")).await;
    wait_cached(&worker, live).await;
    let started = Instant::now();
    let replayed = replay(&api, &token, backfilled, json!({"since": since})).await;
    // Live events while the replay runs: each is received promptly.
    let mut worst = Duration::ZERO;
    for n in 1000..1010 {
        let sent = Instant::now();
        env.publish(&event(1, n)).await;
        let got = rx.wait_for("/live", (n - 999) as usize, DEADLINE).await;
        worst = worst.max(got.last().unwrap().at.duration_since(sent));
        tokio::time::sleep(Duration::from_millis(100)).await; // the live stream's pace
    }
    let id = replayed["id"].as_str().unwrap();
    let done = wait_replay_done(&api, &token, id).await;
    let took = started.elapsed();
    assert_eq!(
        done["sent"], 150,
        "the window ends when the replay was created"
    );
    assert!(
        worst < Duration::from_millis(500),
        "a live event took {worst:?} while the replay ran"
    );
    assert!(
        took >= Duration::from_secs(2),
        "150 events at 50 a second are three pages a second apart, took {took:?}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_is_turned_off_only_after_failing_for_long_enough_and_test_pings_do_not_count() {
    let env = TestEnv::new(|s| {
        s.retry_policy = RetryPolicy::new(Vec::new(), true);
        s.max_consecutive_failures = 3;
        s.disable_after = Duration::from_millis(1500);
        s.prefetch = 1;
    })
    .await;
    let rx = Receiver::start().await;
    rx.script("/bad", |_| (500, vec![], Duration::ZERO));
    let (bad, _) = env.webhook(NewWebhook::new(1, None, rx.url("/bad"))).await;
    let worker = env.start_worker().await;
    let api = env.start_api(|_| {}).await;
    let token = env.token(1).await;
    let show = || async {
        let (status, hook) = api
            .call("GET", &format!("/api/webhooks/{bad}/"), Some(&token), None)
            .await;
        assert_eq!(status, 200);
        hook
    };
    for n in 0..4 {
        env.publish(&event(1, n)).await;
    }
    env.wait_for_attempts(4, DEADLINE).await;
    let hook = show().await;
    assert_eq!(
        (
            hook["is_active"].clone(),
            hook["consecutive_failures"].clone()
        ),
        (json!(true), json!(4)),
        "four failures in well under 1.5 s: still on"
    );
    assert!(hook["failing_since"].is_string(), "{hook}");
    // Test pings neither count nor reset.
    let (status, ping) = api
        .call(
            "POST",
            &format!("/api/webhooks/{bad}/test/"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, &ping["status"]), (200, &json!("dead")));
    assert_eq!(show().await["consecutive_failures"], 4);
    tokio::time::sleep(Duration::from_millis(1600)).await; // the span the rule asks for
    env.publish(&event(1, 4)).await;
    let off = wait_for("the webhook turned off", DEADLINE, || async {
        let hook = show().await;
        (hook["is_active"] == false).then_some(hook)
    })
    .await;
    assert_eq!(off["consecutive_failures"], 5);
    let reason = off["disabled_reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("5 failed attempts in a row since "),
        "{off}"
    );
    assert!(off["disabled_at"].is_string(), "{off}");
    let (status, on) = api
        .call(
            "PATCH",
            &format!("/api/webhooks/{bad}/"),
            Some(&token),
            Some(&json!({"is_active": true})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &on["consecutive_failures"],
            &on["failing_since"],
            &on["disabled_reason"],
            &on["disabled_at"]
        ),
        (&json!(0), &Value::Null, &Value::Null, &Value::Null),
        "{on}"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_a_replay_and_follows_it_to_the_end() {
    let (env, worker, api, rx) = replay_world(200.0).await;
    let token = env.token(1).await;
    for n in 0..5 {
        env.publish(&event(1, n)).await;
    }
    wait_for("5 events stored", DEADLINE, || async {
        (count(&env, "SELECT count(*) FROM events").await == 5).then_some(())
    })
    .await;
    let hook = create_webhook(&api, &token, &rx.url("/hook")).await;
    let since = rfc3339(Utc::now() - chrono::Duration::minutes(5));
    let out = env
        .webhookd()
        .args(["replay", "start", "--organization", "1", "--webhook"])
        .arg(hook.to_string())
        .args(["--since", &since, "--action", "PROJECT_DELETED", "--wait"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let id = lines.next().unwrap_or_default().to_owned();
    let last: Value = serde_json::from_str(lines.last().unwrap_or_default()).unwrap();
    assert_eq!(
        (&last["id"], &last["state"], &last["sent"], &last["left"]),
        (&json!(id), &json!("done"), &json!(5), &json!(0)),
        "{stdout}"
    );
    assert_eq!(rx.requests("/hook").len(), 5);
    // Another organization's replay is not found; an unknown action is refused before anything starts.
    let status = env
        .webhookd()
        .args(["replay", "status", "--organization", "2", &id])
        .output()
        .await
        .unwrap();
    assert_eq!(status.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&status.stderr).contains("organization 2 has no replay"));
    let bad = env
        .webhookd()
        .args(["replay", "start", "--organization", "1", "--webhook"])
        .arg(hook.to_string())
        .args(["--since", &since, "--action", "NOPE"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--action \"NOPE\" is not a known action")
    );
    worker.stop().await;
}
