//! End-to-end delivery through the real RabbitMQ and PostgreSQL: fan-out, matching, bodies, batching,
//! subscription changes, duplicates and malformed messages.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::receiver::Receiver;
use support::{envelope, wait_for, TestEnv};
use uuid::Uuid;
use webhookd_core::EventId;
use webhookd_store::events::{self, NewEvent};
use webhookd_store::webhooks::NewWebhook;

const DEADLINE: Duration = Duration::from_secs(15);

fn hook(org: i64, project: Option<i64>, url: String) -> NewWebhook {
    NewWebhook::new(org, project, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organization_and_project_webhooks_receive_what_label_studio_matching_says() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    let (org_hook, _) = env.webhook(hook(1, None, rx.url("/org"))).await;
    env.webhook(hook(1, Some(7), rx.url("/p7"))).await;
    env.webhook(hook(1, Some(8), rx.url("/p8"))).await;
    let mut listed = hook(1, Some(7), rx.url("/p7-annotations"));
    listed.send_for_all_actions = false;
    listed.actions = vec!["ANNOTATION_CREATED".into()];
    env.webhook(listed).await;
    let mut inactive = hook(1, Some(7), rx.url("/inactive"));
    inactive.is_active = false;
    env.webhook(inactive).await;
    env.webhook(hook(2, None, rx.url("/other-org"))).await;
    let worker = env.start_worker().await;

    let p7 = json!({"id": 7, "title": "P7"});
    env.publish(&envelope(
        1,
        "ANNOTATION_CREATED",
        Some(p7.clone()),
        json!({"annotation": {"id": 1}, "task": {"id": 2}}),
    ))
    .await;
    env.publish(&envelope(
        1,
        "TASKS_CREATED",
        Some(p7.clone()),
        json!({"tasks": [{"id": 2}]}),
    ))
    .await;
    env.publish(&envelope(
        1,
        "PROJECT_CREATED",
        None,
        json!({"project": {"id": 9}}),
    ))
    .await;

    // Every event's rows are committed together, so once three events are logged the set is complete.
    let rows = wait_for("three events logged", DEADLINE, || async {
        let rows = env
            .query(
                "SELECT count(DISTINCT event_id), count(*) FROM delivery_attempts",
                &[],
            )
            .await;
        let (events, total): (i64, i64) = (rows[0].get(0), rows[0].get(1));
        (events == 3).then_some(total)
    })
    .await;
    assert_eq!(rows, 6, "org hook ×3, project 7 hook ×2, listed hook ×1");
    let count = |p: &str| rx.requests(p).len();
    assert_eq!(count("/org"), 3);
    assert_eq!(count("/p7"), 2);
    assert_eq!(count("/p7-annotations"), 1);
    assert_eq!(
        rx.requests("/p7-annotations")[0].json()["action"],
        "ANNOTATION_CREATED"
    );
    assert_eq!(
        (count("/p8"), count("/inactive"), count("/other-org")),
        (0, 0, 0)
    );
    let org_actions: Vec<String> = rx
        .requests("/org")
        .iter()
        .map(|r| r.json()["action"].as_str().unwrap().to_owned())
        .collect();
    assert!(org_actions.contains(&"PROJECT_CREATED".to_owned()));
    let succeeded = env.query("SELECT count(*) FROM delivery_attempts WHERE webhook_id = $1 AND outcome = 'succeeded'",
        &[&org_hook]).await;
    assert_eq!(succeeded[0].get::<_, i64>(0), 3);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_payload_false_sends_only_the_action_and_static_headers_travel() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    let mut bare = hook(1, Some(7), rx.url("/bare"));
    bare.send_payload = false;
    bare.headers =
        serde_json::from_value(json!({"Authorization": "Basic dXM6cHc=", "X-Team": "ml"})).unwrap();
    let (bare_id, _) = env.webhook(bare).await;
    let worker = env.start_worker().await;
    env.publish(&envelope(
        1,
        "ANNOTATION_UPDATED",
        Some(json!({"id": 7})),
        json!({"annotation": {"id": 17}, "task": {"id": 19}}),
    ))
    .await;
    let got = rx.wait_for("/bare", 1, DEADLINE).await;
    let r = &got[0];
    assert_eq!(&r.body[..], br#"{"action": "ANNOTATION_UPDATED"}"#);
    assert_eq!(r.header("authorization").as_deref(), Some("Basic dXM6cHc="));
    assert_eq!(r.header("x-team").as_deref(), Some("ml"));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r.header("user-agent").unwrap().starts_with("webhookd/"));
    assert_eq!(
        r.header("x-webhookd-action").as_deref(),
        Some("ANNOTATION_UPDATED")
    );
    assert_eq!(r.header("x-webhookd-webhook-id"), Some(bare_id.to_string()));
    assert!(r.header("webhook-id").unwrap().starts_with("msg_"));
    assert!(r.header("webhook-signature").unwrap().starts_with("v1,"));
    worker.stop().await;
}

/// The spec's body shapes for every action, as Python's json.dumps writes them.
fn every_action() -> Vec<(Value, String)> {
    let p2 = json!({"id": 2, "title": "New Project #2", "organization": 1, "created_by": 1, "task_number": 3});
    let p2s = r#"{"id": 2, "title": "New Project #2", "organization": 1, "created_by": 1, "task_number": 3}"#;
    let task = json!({"id": 21, "data": {"ner": "café"}, "meta": {}, "created_at": "2021-08-17T13:51:02.590839Z",
        "is_labeled": false, "overlap": 1, "project": 2, "file_upload": 46});
    let tasks = r#"{"id": 21, "data": {"ner": "caf\u00e9"}, "meta": {}, "created_at": "2021-08-17T13:51:02.590839Z", "is_labeled": false, "overlap": 1, "project": 2, "file_upload": 46}"#;
    let ann = json!({"id": 17, "result": [{"value": {"choices": ["A"]}, "id": "WArqkkifYE", "from_name": "c",
        "to_name": "text", "type": "choices"}], "was_cancelled": false, "ground_truth": false, "lead_time": 37.13,
        "task": 19, "project": 2, "completed_by": 1});
    let anns = r#"{"id": 17, "result": [{"value": {"choices": ["A"]}, "id": "WArqkkifYE", "from_name": "c", "to_name": "text", "type": "choices"}], "was_cancelled": false, "ground_truth": false, "lead_time": 37.13, "task": 19, "project": 2, "completed_by": 1}"#;
    let p = Some(p2.clone());
    vec![
        (
            envelope(
                1,
                "PROJECT_CREATED",
                None,
                json!({"project": {"id": 1, "title": "New Project #1"}}),
            ),
            r#"{"action": "PROJECT_CREATED", "project": {"id": 1, "title": "New Project #1"}}"#
                .to_owned(),
        ),
        (
            envelope(
                1,
                "PROJECT_UPDATED",
                p.clone(),
                json!({"project": p2.clone()}),
            ),
            format!(r#"{{"action": "PROJECT_UPDATED", "project": {p2s}}}"#),
        ),
        (
            envelope(1, "PROJECT_DELETED", None, json!({"project": {"id": 3}})),
            r#"{"action": "PROJECT_DELETED", "project": {"id": 3}}"#.to_owned(),
        ),
        (
            envelope(1, "TASKS_CREATED", p.clone(), json!({"tasks": [task]})),
            format!(r#"{{"action": "TASKS_CREATED", "tasks": [{tasks}], "project": {p2s}}}"#),
        ),
        (
            envelope(
                1,
                "TASKS_DELETED",
                p.clone(),
                json!({"tasks": [{"id": 21}]}),
            ),
            format!(r#"{{"action": "TASKS_DELETED", "tasks": [{{"id": 21}}], "project": {p2s}}}"#),
        ),
        (
            envelope(
                1,
                "ANNOTATION_CREATED",
                p.clone(),
                json!({"annotation": ann, "task": {"id": 19, "data": {}}}),
            ),
            format!(
                r#"{{"action": "ANNOTATION_CREATED", "annotation": {anns}, "project": {p2s}, "task": {{"id": 19, "data": {{}}}}}}"#
            ),
        ),
        (
            envelope(
                1,
                "ANNOTATIONS_CREATED",
                p.clone(),
                json!({"annotation": [{"id": 30}, {"id": 31}], "task": [{"id": 19}, {"id": 20}]}),
            ),
            format!(
                r#"{{"action": "ANNOTATIONS_CREATED", "annotation": [{{"id": 30}}, {{"id": 31}}], "project": {p2s}, "task": [{{"id": 19}}, {{"id": 20}}]}}"#
            ),
        ),
        (
            envelope(
                1,
                "ANNOTATION_UPDATED",
                p.clone(),
                json!({"annotation": {"id": 17, "lead_time": 40.5}, "task": {"id": 19}}),
            ),
            format!(
                r#"{{"action": "ANNOTATION_UPDATED", "annotation": {{"id": 17, "lead_time": 40.5}}, "project": {p2s}, "task": {{"id": 19}}}}"#
            ),
        ),
        (
            envelope(
                1,
                "ANNOTATIONS_DELETED",
                p.clone(),
                json!({"annotations": [{"id": 17}]}),
            ),
            format!(
                r#"{{"action": "ANNOTATIONS_DELETED", "annotations": [{{"id": 17}}], "project": {p2s}}}"#
            ),
        ),
        (
            envelope(
                1,
                "LABEL_LINK_CREATED",
                p.clone(),
                json!({"label_link": [{"id": 5, "label": 3, "from_name": "label"}]}),
            ),
            format!(
                r#"{{"action": "LABEL_LINK_CREATED", "label_link": [{{"id": 5, "label": 3, "from_name": "label"}}], "project": {p2s}}}"#
            ),
        ),
        (
            envelope(
                1,
                "LABEL_LINK_UPDATED",
                p.clone(),
                json!({"label_link": {"id": 5}, "label": {"id": 3, "value": "Car"}}),
            ),
            format!(
                r#"{{"action": "LABEL_LINK_UPDATED", "label_link": {{"id": 5}}, "project": {p2s}, "label": {{"id": 3, "value": "Car"}}}}"#
            ),
        ),
        (
            envelope(1, "LABEL_LINK_DELETED", p, json!({"label_link": {"id": 5}})),
            format!(
                r#"{{"action": "LABEL_LINK_DELETED", "label_link": {{"id": 5}}, "project": {p2s}}}"#
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_byte_for_byte_label_studio_for_every_action() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    env.webhook(hook(1, None, rx.url("/all"))).await;
    let worker = env.start_worker().await;
    let cases = every_action();
    for (event, _) in &cases {
        env.publish(event).await;
    }
    let got = rx.wait_for("/all", cases.len(), DEADLINE).await;
    for (event, expected) in &cases {
        let action = event["action"].as_str().unwrap();
        let body = got
            .iter()
            .find(|r| r.header("x-webhookd-action").as_deref() == Some(action))
            .unwrap_or_else(|| panic!("no {action} received"));
        assert_eq!(String::from_utf8_lossy(&body.body), *expected, "{action}");
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lists_go_out_in_batches_of_webhook_batch_size() {
    let env = TestEnv::new(|s| s.batch_size = 100).await;
    let rx = Receiver::start().await;
    env.webhook(hook(1, Some(2), rx.url("/tasks"))).await;
    let worker = env.start_worker().await;
    let tasks: Vec<Value> = (0..250).map(|i| json!({"id": i})).collect();
    env.publish(&envelope(
        1,
        "TASKS_CREATED",
        Some(json!({"id": 2})),
        json!({"tasks": tasks}),
    ))
    .await;
    let got = rx.wait_for("/tasks", 3, DEADLINE).await;
    let mut sizes: Vec<usize> = got
        .iter()
        .map(|r| r.json()["tasks"].as_array().unwrap().len())
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [50, 100, 100]);
    let ids: std::collections::HashSet<String> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "each batch is its own delivery");
    assert!(got.iter().all(|r| r.json()["project"]["id"] == 2));
    let rows = env.wait_for_attempts(3, DEADLINE).await;
    assert!(rows.iter().all(|r| r.2 == "succeeded"));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_many_frames_long_is_delivered_whole() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    env.webhook(hook(1, Some(2), rx.url("/big"))).await;
    let worker = env.start_worker().await;
    let text = "x".repeat(100);
    let tasks: Vec<Value> = (0..2000).map(|i| json!({"id": i, "text": text})).collect();
    let event = envelope(
        1,
        "TASKS_CREATED",
        Some(json!({"id": 2})),
        json!({"tasks": tasks}),
    );
    let published = serde_json::to_vec(&event).unwrap().len();
    assert!(
        published > 10 * webhookd_broker::FRAME_MAX as usize,
        "{published} bytes is not many frames"
    );
    env.publish(&event).await;
    let got = rx.wait_for("/big", 1, DEADLINE).await;
    assert_eq!(got[0].json()["tasks"], json!(tasks));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_changes_reach_the_worker_within_one_second() {
    let env = TestEnv::new(|s| s.prefetch = 1).await;
    let rx = Receiver::start().await;
    let worker = env.start_worker().await;
    let cache = worker.worker.cache().clone();

    let before = cache.generation();
    let (id, _) = env.webhook(hook(1, None, rx.url("/late"))).await;
    wait_for(
        "the new webhook in the cache",
        Duration::from_secs(1),
        || async {
            (cache.generation() > before && cache.snapshot().get(id).is_some()).then_some(())
        },
    )
    .await;
    env.publish(&envelope(
        1,
        "PROJECT_DELETED",
        None,
        json!({"project": {"id": 1}}),
    ))
    .await;
    rx.wait_for("/late", 1, DEADLINE).await;

    let before = cache.generation();
    env.execute(
        "UPDATE webhooks SET is_active = false WHERE id = $1",
        &[&id],
    )
    .await;
    wait_for(
        "the webhook turned off in the cache",
        Duration::from_secs(1),
        || async {
            (cache.generation() > before && !cache.snapshot().get(id).unwrap().is_active)
                .then_some(())
        },
    )
    .await;
    env.publish(&envelope(
        1,
        "PROJECT_DELETED",
        None,
        json!({"project": {"id": 2}}),
    ))
    .await;
    // prefetch = 1: once a later event is delivered, the one before it has been handled.
    let (witness, _) = env.webhook(hook(1, None, rx.url("/witness"))).await;
    wait_for("witness cached", Duration::from_secs(1), || async {
        cache.snapshot().get(witness).is_some().then_some(())
    })
    .await;
    env.publish(&envelope(
        1,
        "PROJECT_DELETED",
        None,
        json!({"project": {"id": 3}}),
    ))
    .await;
    rx.wait_for("/witness", 1, DEADLINE).await;
    assert_eq!(
        rx.requests("/late").len(),
        1,
        "an inactive webhook receives nothing"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_twice_with_the_same_id_is_delivered_once() {
    let env = TestEnv::new(|s| s.prefetch = 1).await;
    let rx = Receiver::start().await;
    env.webhook(hook(1, Some(7), rx.url("/h"))).await;
    let worker = env.start_worker().await;
    let mut event = envelope(
        1,
        "TASKS_DELETED",
        Some(json!({"id": 7})),
        json!({"tasks": [{"id": 1}]}),
    );
    event["id"] = json!("evt-42");
    env.publish(&event).await;
    env.publish(&event).await;
    // The same id in another organization is another event.
    env.webhook(hook(3, None, rx.url("/org3"))).await;
    let mut other = event.clone();
    other["organization"] = json!(3);
    wait_for("org 3 hook cached", Duration::from_secs(1), || async {
        (worker
            .worker
            .cache()
            .snapshot()
            .matching(3, Some(7), "TASKS_DELETED")
            .len()
            == 1)
            .then_some(())
    })
    .await;
    env.publish(&other).await;
    rx.wait_for("/org3", 1, DEADLINE).await;
    assert_eq!(rx.requests("/h").len(), 1);
    let events = env
        .query(
            "SELECT count(*) FROM events WHERE producer_id = 'evt-42'",
            &[],
        )
        .await;
    assert_eq!(events[0].get::<_, i64>(0), 2);
    worker.stop().await;
}

fn new_event(producer_id: Option<&str>) -> NewEvent {
    // Ids as the worker makes them: name-based with a producer id, random without.
    NewEvent {
        id: producer_id
            .map(|p| EventId::for_producer(1, p))
            .unwrap_or_default()
            .0,
        organization: 1,
        project: None,
        action: "PROJECT_DELETED".to_owned(),
        producer_id: producer_id.map(str::to_owned),
        body: envelope(1, "PROJECT_DELETED", None, json!({"project": {"id": 1}})).to_string(),
        claim_token: Uuid::new_v4(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_written_again_after_a_lost_reply_is_still_its_own() {
    // The database can commit a claim and lose the connection before the reply: the worker writes the
    // same claim again, and must then deliver the event, not take it for a re-publish or fail for good.
    let env = TestEnv::new(|_| {}).await;
    let client = env.pool.get().await.unwrap();
    let batch = [new_event(Some("evt-in-doubt")), new_event(None)];
    let stored = events::claim_events(&client, &batch).await.unwrap();
    assert!(stored.iter().all(|c| c.fresh));
    let again = events::claim_events(&client, &batch).await.unwrap();
    assert_eq!(again, stored, "the same write, tried again, is still fresh");
    let republished = events::claim_events(&client, &[new_event(Some("evt-in-doubt"))])
        .await
        .unwrap();
    assert_eq!(republished[0].event_id, stored[0].event_id);
    assert!(
        !republished[0].fresh,
        "another message with the same id is a duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_an_event_in_one_claim_batch_are_delivered_once() {
    let env = TestEnv::new(|_| {}).await;
    let client = env.pool.get().await.unwrap();
    let copies = [new_event(Some("evt-twice")), new_event(Some("evt-twice"))];
    let claims = events::claim_events(&client, &copies).await.unwrap();
    assert_eq!(claims[0].event_id, claims[1].event_id);
    assert_eq!(
        claims.iter().filter(|c| c.fresh).count(),
        1,
        "exactly one copy is delivered: {claims:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_their_reason_while_good_ones_flow() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    env.webhook(hook(1, None, rx.url("/good"))).await;
    let worker = env.start_worker().await;
    let good = |n: i64| envelope(1, "PROJECT_DELETED", None, json!({"project": {"id": n}}));
    let bad: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "X",
            b"not json".to_vec(),
            "body is not valid JSON: expected ident at line 1 column 2",
        ),
        (
            "TASK_CREATED",
            envelope(1, "TASK_CREATED", None, json!({}))
                .to_string()
                .into_bytes(),
            "unknown action \"TASK_CREATED\"",
        ),
        (
            "PROJECT_CREATED",
            envelope(
                1,
                "PROJECT_CREATED",
                Some(json!({"id": 7})),
                json!({"project": {"id": 7}}),
            )
            .to_string()
            .into_bytes(),
            "action PROJECT_CREATED is organization-only and cannot carry a project",
        ),
        (
            "TASKS_CREATED",
            envelope(
                1,
                "TASKS_CREATED",
                Some(json!({"id": 7})),
                json!({"tasks": {"id": 1}}),
            )
            .to_string()
            .into_bytes(),
            "payload of TASKS_CREATED must hold a list in `tasks`",
        ),
        (
            "PROJECT_DELETED",
            br#"{"version": 2, "organization": 1, "action": "PROJECT_DELETED"}"#.to_vec(),
            "field `version` must be 1, got 2",
        ),
        (
            "PROJECT_DELETED",
            br#"{"version": 1, "organization": "one", "action": "PROJECT_DELETED"}"#.to_vec(),
            "field `organization` must be a positive integer",
        ),
        (
            // 128 characters but 512 bytes: too long for the AMQP message-id the id becomes.
            "PROJECT_DELETED",
            json!({"version": 1, "id": "😀".repeat(128), "organization": 1,
                "action": "PROJECT_DELETED", "payload": {"project": {"id": 1}}})
            .to_string()
            .into_bytes(),
            "field `id` must be a string of 1 to 255 bytes of UTF-8 without control characters, got 512 bytes",
        ),
    ];
    for (i, (key, body, _)) in bad.iter().enumerate() {
        env.publish(&good(i as i64)).await;
        env.publish_raw(key, body).await;
    }
    env.publish(&good(99)).await;
    rx.wait_for("/good", bad.len() + 1, DEADLINE).await;
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut dead = Vec::new();
    while dead.len() < bad.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for dead letters; got {dead:?}"
        );
        dead.extend(env.drain_dead_letters().await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (_, body, reason) in &bad {
        let found = dead
            .iter()
            .find(|(b, _)| b.as_bytes() == &body[..])
            .expect("bad message in the DLQ");
        assert_eq!(found.1, *reason);
    }
    assert_eq!(dead.len(), bad.len());
    worker.stop().await;
}
