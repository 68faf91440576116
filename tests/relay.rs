//! `POST /api/relay/label-studio/`, black-box: bodies as Label Studio 1.23.2 sends them (its key orders and
//! Python's `json.dumps` bytes, reference §13) relayed through the API and a worker reach webhookd's
//! webhooks as exactly those bytes, signed; batching, `send_payload`, organizations, errors and limits.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};
use support::api::{assert_envelope, ApiClient};
use support::receiver::{Received, Receiver};
use support::TestEnv;
use webhookd_core::SigningSecret;
use webhookd_store::webhooks::NewWebhook;

const DEADLINE: Duration = Duration::from_secs(20);
const RELAY: &str = "/api/relay/label-studio/";

/// `ProjectWebhookSerializer` output for project 7: non-ASCII (BMP and beyond, as surrogate pairs), HTML,
/// `/ < > &`, floats and nested objects.
const PROJECT: &str = r##"{"id": 7, "title": "Caf\u00e9 \u2603 \ud83d\ude00 <b>R&D</b>", "description": "a/b \u007f", "label_config": "<View><Text name=\"text\" value=\"$text\"/><Choices name=\"c\" toName=\"text\"><Choice value=\"A\"/></Choices></View>", "expert_instruction": "", "show_instruction": false, "color": "#FFFFFF", "maximum_annotations": 1, "control_weights": {"c": {"type": "Choices", "labels": {"A": 1.0}, "overall": 1.0}}, "created_at": "2026-12-02T08:15:09.948377Z", "updated_at": "2026-12-02T08:15:10.001200Z", "organization": 1, "created_by": 1, "task_number": 2, "finished_task_number": 1, "total_predictions_number": 0, "total_annotations_number": 1, "num_tasks_with_annotations": 1, "useful_annotation_number": 1, "ground_truth_number": 0, "skipped_annotations_number": 0}"##;

/// `TaskWebhookSerializer` output: user data with a 30-digit integer, a float that is not a short decimal,
/// text with every character Python escapes or does not.
const TASK_19: &str = r##"{"id": 19, "data": {"text": "\u00c9t\u00e9 \u2014 <p>5 > 3 & 2 < 4</p> https://example.com/a/b \"q\" \\ \t", "big": 123456789012345678901234567890, "negative": -98765432109876543210, "score": 0.30000000000000004, "ratio": 985.6906946328695}, "meta": {}, "created_at": "2026-12-02T08:15:11.123456Z", "updated_at": "2026-12-02T08:15:11.123456Z", "is_labeled": true, "overlap": 1, "inner_id": 1, "total_annotations": 1, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": null, "project": 7, "updated_by": null, "file_upload": 46, "comment_authors": []}"##;
const TASK_20: &str = r##"{"id": 20, "data": {"text": "\u65e5\u672c\u8a9e \ud834\udd1e", "big": 18446744073709551616, "score": 1e-05, "ratio": 1e+16}, "meta": {"source": "s3://bucket/key"}, "created_at": "2026-12-02T08:15:11.223456Z", "updated_at": "2026-12-02T08:15:11.223456Z", "is_labeled": false, "overlap": 1, "inner_id": 2, "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0, "last_comment_updated_at": null, "project": 7, "updated_by": null, "file_upload": 46, "comment_authors": []}"##;

/// `AnnotationWebhookSerializer` output.
const ANNOTATION_17: &str = r##"{"id": 17, "result": [{"value": {"choices": ["A"]}, "id": "WArqkkifYE", "from_name": "c", "to_name": "text", "type": "choices", "origin": "manual"}], "was_cancelled": false, "ground_truth": false, "created_at": "2026-12-02T08:15:12.000001Z", "updated_at": "2026-12-02T08:15:12.000001Z", "draft_created_at": null, "lead_time": 37.13, "import_id": null, "last_action": null, "bulk_created": false, "task": 19, "project": 7, "updated_by": 1, "parent_prediction": null, "parent_annotation": null, "last_created_by": null, "completed_by": 1}"##;
const ANNOTATION_18: &str = r##"{"id": 18, "result": [{"value": {"start": 0, "end": 4, "text": "\u00c9t\u00e9", "labels": ["A"]}, "id": "x-1", "from_name": "c", "to_name": "text", "type": "labels", "score": 0.1234567890123456}], "was_cancelled": false, "ground_truth": true, "created_at": "2026-12-02T08:15:13.5Z", "updated_at": "2026-12-02T08:15:13.5Z", "draft_created_at": null, "lead_time": 212.91890726713459, "import_id": null, "last_action": "imported", "bulk_created": true, "task": 20, "project": 7, "updated_by": null, "parent_prediction": 4, "parent_annotation": null, "last_created_by": null, "completed_by": 2}"##;

/// `LabelLinkSerializer` and `LabelSerializer` output.
const LABEL_LINK: &str = r##"{"id": 5, "from_name": "c", "project": 7, "label": 9}"##;
const LABEL: &str = r##"{"id": 9, "created_at": "2026-12-02T08:15:14.000000Z", "updated_at": "2026-12-02T08:15:14.000000Z", "value": {"choices": ["A"]}, "title": "A & B", "description": null, "approved": true, "created_by": 1, "approved_by": null, "organization": 1}"##;

/// A body with `$PROJECT`, `$TASK_19` … put in.
fn body(template: &str) -> String {
    template
        .replace("$PROJECT", PROJECT)
        .replace("$TASK_19", TASK_19)
        .replace("$TASK_20", TASK_20)
        .replace("$ANNOTATION_17", ANNOTATION_17)
        .replace("$ANNOTATION_18", ANNOTATION_18)
        .replace("$LABEL_LINK", LABEL_LINK)
        .replace("$LABEL_9", LABEL)
}

/// One body per action, in Label Studio's key order per action (§13), and whether it has a project (it
/// reaches project-level webhooks).
fn label_studio_bodies() -> Vec<(String, bool)> {
    [
        (r#"{"action": "PROJECT_CREATED", "project": $PROJECT}"#, false),
        (r#"{"action": "PROJECT_UPDATED", "project": $PROJECT}"#, true),
        (r#"{"action": "PROJECT_DELETED", "project": {"id": 7}}"#, false),
        (r#"{"action": "TASKS_CREATED", "tasks": [$TASK_19, $TASK_20], "project": $PROJECT}"#, true),
        (r#"{"action": "TASKS_DELETED", "tasks": [{"id": 19}, {"id": 20}], "project": $PROJECT}"#, true),
        // DELETE /api/projects/7/tasks/: no project, organization-level webhooks only.
        (r#"{"action": "TASKS_DELETED", "tasks": [{"id": 21}]}"#, false),
        (r#"{"action": "ANNOTATION_CREATED", "annotation": $ANNOTATION_17, "project": $PROJECT, "task": $TASK_19}"#, true),
        (r#"{"action": "ANNOTATIONS_CREATED", "annotation": [$ANNOTATION_17, $ANNOTATION_18], "project": $PROJECT, "task": [$TASK_19, $TASK_20]}"#, true),
        (r#"{"action": "ANNOTATION_UPDATED", "annotation": $ANNOTATION_18, "project": $PROJECT, "task": $TASK_20}"#, true),
        (r#"{"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 17}], "project": $PROJECT}"#, true),
        (r#"{"action": "LABEL_LINK_CREATED", "label_link": [$LABEL_LINK], "project": $PROJECT}"#, true),
        (r#"{"action": "LABEL_LINK_UPDATED", "label_link": $LABEL_LINK, "project": $PROJECT, "label": $LABEL_9}"#, true),
        (r#"{"action": "LABEL_LINK_DELETED", "label_link": {"id": 5}, "project": $PROJECT}"#, true),
    ]
    .into_iter()
    .map(|(template, scoped)| (body(template), scoped))
    .collect()
}

/// Relays `body` with `token`; returns the status and the answer.
async fn relay(api: &ApiClient, token: &str, body: &str) -> (u16, Value) {
    api.call_with(
        "POST",
        RELAY,
        Some(token),
        Some(body.as_bytes().to_vec()),
        &[],
    )
    .await
}

/// The action of a delivered body.
fn action(r: &Received) -> String {
    r.json()["action"].as_str().unwrap_or_default().to_owned()
}

/// `got` are exactly the bodies `expected`, byte for byte, in any order (events are delivered concurrently),
/// and each request is signed with `secret`, if given.
fn assert_bodies(
    got: &[Received],
    expected: impl IntoIterator<Item = String>,
    secret: Option<&SigningSecret>,
    what: &str,
) {
    let mut bodies: Vec<Bytes> = got.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    let mut expected: Vec<Bytes> = expected.into_iter().map(Bytes::from).collect();
    expected.sort();
    assert_eq!(bodies, expected, "{what}");
    let Some(secret) = secret else { return };
    for r in got {
        r.assert_signed(secret);
    }
}

#[test]
fn the_fixtures_are_what_pythons_json_dumps_writes() {
    // json.dumps(json.loads(body)) == body: each body is in Python's own formatting (and json.loads keeps
    // the key order), so it is byte for byte what Label Studio's requests.post(json=...) sends.
    let mut bodies: Vec<String> = label_studio_bodies().into_iter().map(|(b, _)| b).collect();
    bodies.extend(
        batched_bodies()
            .into_iter()
            .flat_map(|(sent, split)| [sent].into_iter().chain(split)),
    );
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             for n, line in enumerate(sys.stdin.read().split('\\n')):\n\
             \x20   if json.dumps(json.loads(line)) != line:\n\
             \x20       print(n, line)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (the test suite needs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(bodies.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "bodies json.dumps writes otherwise"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_relayed_reaches_the_webhooks_as_the_bytes_label_studio_sent_signed() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let _worker = env.start_worker().await;
    let rx = Receiver::start().await;
    let (_, project_secret) = env
        .webhook(NewWebhook::new(1, Some(7), rx.url("/project")))
        .await;
    let (_, org_secret) = env.webhook(NewWebhook::new(1, None, rx.url("/org"))).await;
    let mut bare = NewWebhook::new(1, Some(7), rx.url("/bare"));
    bare.send_payload = false;
    env.webhook(bare).await;
    let token = env.token(1).await;

    let bodies = label_studio_bodies();
    let mut ids = Vec::new();
    for (body, _) in &bodies {
        let (status, answer) = relay(&api, &token, body).await;
        assert_eq!(status, 202, "{answer} for {body}");
        ids.push(answer["id"].as_str().expect("the event id").to_owned());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), bodies.len(), "one event per request");

    let scoped: Vec<&(String, bool)> = bodies.iter().filter(|(_, s)| *s).collect();
    let expected_rows = bodies.len() + 2 * scoped.len();
    env.wait_for_attempts(expected_rows, DEADLINE).await;

    // The organization-level webhook gets every body, byte for byte as Label Studio sent it.
    let org = rx.requests("/org");
    let all = bodies.iter().map(|(b, _)| b.clone());
    assert_bodies(
        &org,
        all,
        Some(&org_secret),
        "the organization-level webhook",
    );
    // The project's webhook gets those with a project: not PROJECT_CREATED, PROJECT_DELETED (organization-only)
    // nor the TASKS_DELETED without a project.
    let with_project = scoped.iter().map(|(b, _)| b.clone());
    let project = rx.requests("/project");
    assert_bodies(
        &project,
        with_project,
        Some(&project_secret),
        "the project-level webhook",
    );
    // send_payload = false: the action alone, as Label Studio sends it.
    let actions_only = scoped.iter().map(|(b, _)| {
        let action = serde_json::from_str::<Value>(b).unwrap()["action"].clone();
        format!(r#"{{"action": {action}}}"#)
    });
    assert_bodies(
        &rx.requests("/bare"),
        actions_only,
        None,
        "send_payload false",
    );
    assert_eq!(rx.all().len(), expected_rows, "nothing else was sent");
    for r in &org {
        assert_eq!(r.header("x-webhookd-action"), Some(action(r)));
    }
}

/// Five tasks, and five annotations with their five tasks, and how Label Studio splits them at a batch size
/// of 2: 2 + 2 + 1, each request repeating the other keys (and cutting the nested task list alongside).
fn batched_bodies() -> Vec<(String, Vec<String>)> {
    let task =
        |i: usize| format!(r#"{{"id": {i}, "data": {{"text": "t\u00e2che {i}", "w": {i}.5}}}}"#);
    let annotation = |i: usize| format!(r#"{{"id": {}, "result": [], "task": {i}}}"#, 100 + i);
    let list = |items: &[String]| format!("[{}]", items.join(", "));
    let tasks: Vec<String> = (0..5).map(task).collect();
    let annotations: Vec<String> = (0..5).map(annotation).collect();
    let project = r#"{"id": 7, "title": "P"}"#;
    let chunks = [0..2, 2..4, 4..5];
    vec![
        (
            format!(r#"{{"action": "TASKS_CREATED", "tasks": {}, "project": {project}}}"#, list(&tasks)),
            chunks
                .iter()
                .map(|r| {
                    format!(
                        r#"{{"action": "TASKS_CREATED", "tasks": {}, "project": {project}}}"#,
                        list(&tasks[r.clone()])
                    )
                })
                .collect(),
        ),
        (
            format!(
                r#"{{"action": "ANNOTATIONS_CREATED", "annotation": {}, "project": {project}, "task": {}}}"#,
                list(&annotations),
                list(&tasks)
            ),
            chunks
                .iter()
                .map(|r| {
                    format!(
                        r#"{{"action": "ANNOTATIONS_CREATED", "annotation": {}, "project": {project}, "task": {}}}"#,
                        list(&annotations[r.clone()]),
                        list(&tasks[r.clone()])
                    )
                })
                .collect(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lists_are_split_by_webhook_batch_size_as_label_studio_splits_them() {
    let env = TestEnv::new(|s| s.batch_size = 2).await;
    let api = env.start_api(|_| {}).await;
    let _worker = env.start_worker().await;
    let rx = Receiver::start().await;
    let (_, secret) = env
        .webhook(NewWebhook::new(1, Some(7), rx.url("/hook")))
        .await;
    let mut bare = NewWebhook::new(1, Some(7), rx.url("/bare"));
    bare.send_payload = false;
    env.webhook(bare).await;
    let token = env.token(1).await;
    let cases = batched_bodies();
    for (sent, _) in &cases {
        let (status, answer) = relay(&api, &token, sent).await;
        assert_eq!(status, 202, "{answer}");
    }
    env.wait_for_attempts(12, DEADLINE).await;
    let got = rx.requests("/hook");
    let split = cases.iter().flat_map(|(_, split)| split.clone());
    assert_bodies(&got, split, Some(&secret), "2 + 2 + 1 per list");
    let actions_only = ["TASKS_CREATED", "ANNOTATIONS_CREATED"]
        .iter()
        .flat_map(|a| vec![format!(r#"{{"action": "{a}"}}"#); 3]);
    let bare = rx.requests("/bare");
    assert_bodies(&bare, actions_only, None, "one action-only body per chunk");
    // Each chunk is a delivery of its own.
    let mut ids: Vec<String> = got.iter().filter_map(|r| r.header("webhook-id")).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_organization_s_token_relays_to_its_own_webhooks_only() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let _worker = env.start_worker().await;
    let rx = Receiver::start().await;
    for org in [1, 2] {
        env.webhook(NewWebhook::new(
            org,
            Some(7),
            rx.url(&format!("/{org}/project")),
        ))
        .await;
        env.webhook(NewWebhook::new(org, None, rx.url(&format!("/{org}/org"))))
            .await;
    }
    let (one, two) = (env.token(1).await, env.token(2).await);
    let for_two = body(
        r#"{"action": "ANNOTATION_CREATED", "annotation": $ANNOTATION_17, "project": $PROJECT, "task": $TASK_19}"#,
    );
    let for_one = body(r#"{"action": "TASKS_CREATED", "tasks": [$TASK_20], "project": $PROJECT}"#);
    assert_eq!(relay(&api, &two, &for_two).await.0, 202);
    assert_eq!(relay(&api, &one, &for_one).await.0, 202);
    env.wait_for_attempts(4, DEADLINE).await;
    for (path, expected) in [
        ("/2/project", &for_two),
        ("/2/org", &for_two),
        ("/1/project", &for_one),
        ("/1/org", &for_one),
    ] {
        let got = rx.requests(path);
        assert_eq!(got.len(), 1, "{path}");
        assert_eq!(got[0].body, Bytes::from(expected.to_string()), "{path}");
    }
    assert_eq!(rx.all().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_problem_and_publish_nothing() {
    let env = TestEnv::new(|_| {}).await;
    // No worker: the work queue shows what was published.
    let api = env
        .start_api(|s| {
            s.max_event_bytes = 4096;
            s.max_body_bytes = 1024;
        })
        .await;
    let token = env.token(1).await;

    // Each body with the `detail` and `validation_errors` of its 400.
    let field = |name: &str, message: &str| {
        let mut errors = serde_json::Map::new();
        errors.insert(name.to_owned(), json!([message]));
        json!({"detail": "Validation error", "validation_errors": errors})
    };
    let cases: Vec<(&str, Value)> = vec![
        (
            r#"{"action": "#,
            json!({"detail": "JSON parse error - EOF while parsing a value at line 1 column 11",
                "validation_errors": {}}),
        ),
        ("[1, 2]", field("non_field_errors", "body must be a JSON object")),
        (r#"{"tasks": []}"#, field("action", "field `action` must be a string")),
        (
            r#"{"action": ["TASKS_CREATED"]}"#,
            field("action", "field `action` must be a string"),
        ),
        (
            r#"{"action": "TASK_CREATED", "tasks": []}"#,
            field("action", "unknown action \"TASK_CREATED\""),
        ),
        (
            r#"{"action": "TASKS_CREATED", "tasks": {"id": 1}, "project": {"id": 7}}"#,
            field("payload", "payload of TASKS_CREATED must hold a list in `tasks`"),
        ),
        (
            r#"{"action": "ANNOTATION_CREATED", "annotation": [], "project": {"id": 7}}"#,
            field("payload", "payload of ANNOTATION_CREATED must hold an object in `annotation`"),
        ),
        (
            r#"{"action": "ANNOTATION_UPDATED"}"#,
            field(
                "payload",
                "payload of ANNOTATION_UPDATED must contain the key `annotation`: the body is the action \
                 alone, which Label Studio sends when the webhook's send_payload is off; turn send_payload \
                 on for the webhook that calls webhookd",
            ),
        ),
        (
            r#"{"action": "TASKS_CREATED", "tasks": [], "project": 7}"#,
            field("project", "field `project` must be an object or null"),
        ),
        (
            r#"{"action": "TASKS_CREATED", "tasks": [], "project": {"id": "7"}}"#,
            field("project", "field `project` must have an integer `id`"),
        ),
    ];
    for (sent, expected) in cases {
        let (status, err) = relay(&api, &token, sent).await;
        assert_eq!(status, 400, "{sent}: {err}");
        assert_envelope(&err, 400);
        let got = json!({"detail": err["detail"], "validation_errors": err["validation_errors"]});
        assert_eq!(got, expected, "{sent}");
    }

    // No token, a malformed header, a key that is no token: 401, before the body is read.
    let good = br#"{"action": "PROJECT_DELETED", "project": {"id": 7}}"#.to_vec();
    for headers in [
        vec![],
        vec![("authorization", "Bearer x")],
        vec![("authorization", "Token nope")],
    ] {
        let (status, err) = api
            .call_with("POST", RELAY, None, Some(good.clone()), &headers)
            .await;
        assert_eq!(status, 401, "{headers:?}: {err}");
        assert_envelope(&err, 401);
    }

    // One of webhookd's own deliveries (a webhookd webhook pointed at the relay): 400 naming the header, or
    // each delivery would be relayed as a new event and delivered to it again, without end.
    for header in ["webhook-id", "webhook-signature", "x-webhookd-attempt"] {
        let (status, err) = api
            .call_with(
                "POST",
                RELAY,
                Some(&token),
                Some(good.clone()),
                &[(header, "msg_1")],
            )
            .await;
        assert_eq!(status, 400, "{header}: {err}");
        assert_envelope(&err, 400);
        assert!(
            err["detail"]
                .as_str()
                .is_some_and(|d| d.contains(&format!("webhookd's own delivery header `{header}`"))),
            "{err}"
        );
    }

    // WEBHOOKD_MAX_EVENT_BYTES (4096 here) applies to the event as published, whatever
    // WEBHOOKD_MAX_BODY_BYTES (1024 here) says: 3,000 bytes of text go through, 5,000 do not.
    let sized = |n: usize| {
        format!(
            r#"{{"action": "PROJECT_DELETED", "project": {{"id": 7, "title": "{}"}}}}"#,
            "x".repeat(n)
        )
    };
    let (status, answer) = relay(&api, &token, &sized(3000)).await;
    assert_eq!(status, 202, "{answer}");
    let (status, err) = relay(&api, &token, &sized(5000)).await;
    assert_eq!(status, 413, "{err}");
    assert_envelope(&err, 413);
    let detail = err["detail"].as_str().unwrap();
    assert!(
        detail.contains("larger than the 4096 bytes allowed (WEBHOOKD_MAX_EVENT_BYTES)"),
        "{detail}"
    );
    // Past the event limit and its slack, the body is not even read.
    let (status, err) = relay(&api, &token, &sized(100_000)).await;
    assert_eq!(status, 413, "{err}");
    assert_envelope(&err, 413);

    // Without the trailing slash too.
    let (status, answer) = api
        .call_with(
            "POST",
            RELAY.trim_end_matches('/'),
            Some(&token),
            Some(good.clone()),
            &[],
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        env.queued_events().await,
        2,
        "only the two accepted requests were published"
    );

    // A broker that does not confirm: 503 with Retry-After, as POST /api/events/ answers.
    let down = env
        .start_api(|s| {
            s.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned();
            s.dependency_timeout = Duration::from_secs(2);
        })
        .await;
    let (status, headers, err) = down
        .call_full("POST", RELAY, Some(&token), Some(good), &[])
        .await;
    assert_eq!(status, 503, "{err}");
    assert_envelope(&err, 503);
    assert!(
        err["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("The event was not published: ")
                && d.ends_with("Retry the request to publish it.")),
        "{err}"
    );
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(env.queued_events().await, 2);
}
