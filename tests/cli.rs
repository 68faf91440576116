//! The `webhookd` binary as an operator and a producer use it: configuration errors, `migrate`, `publish`,
//! and the producer client crate.

mod support;

use std::time::Duration;

use serde_json::json;
use support::faults::Proxy;
use support::receiver::Receiver;
use support::{actions_file, envelope, wait_for, TestEnv};
use tokio::process::Command;
use webhookd_client::{EmitError, Emitter};
use webhookd_core::{ActionSpec, Catalog};
use webhookd_store::webhooks::NewWebhook;

const DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_stops_start_up_naming_the_variable() {
    let malformed = actions_file("malformed", r#"{"action": "TASK_COMPLETED"}"#);
    let malformed_message = format!(
        "WEBHOOKD_ACTIONS_FILE: custom actions file {} is not a JSON list of actions",
        malformed.display()
    );
    let invalid = actions_file(
        "invalid",
        r#"[{"action": "ANNOTATION_CREATED", "name": "again", "key": "annotation", "many": false}]"#,
    );
    let cases = [
        (
            "WEBHOOKD_ACTIONS_FILE",
            malformed.to_str().unwrap(),
            malformed_message.as_str(),
        ),
        (
            "WEBHOOKD_ACTIONS_FILE",
            invalid.to_str().unwrap(),
            "WEBHOOKD_ACTIONS_FILE: custom action \"ANNOTATION_CREATED\": is already defined",
        ),
        (
            "WEBHOOK_TIMEOUT",
            "soon",
            "WEBHOOK_TIMEOUT=\"soon\" is invalid: expected a positive number of seconds",
        ),
        // Logging settings too: a mistyped format would otherwise silently pick one.
        (
            "LOG_FORMAT",
            "jsn",
            "LOG_FORMAT=\"jsn\" is invalid: expected json or text",
        ),
    ];
    for (var, value, message) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_webhookd"))
            .arg("worker")
            .env(var, value)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{stderr}");
    }
    for file in [malformed, invalid] {
        let _ = std::fs::remove_file(file);
    }
}

/// Writes a custom actions file under the target directory, named after `what` and a fresh id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_loads_custom_actions_from_the_actions_file_and_delivers_them() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    let file = actions_file(
        "serve",
        r#"[{"action": "TASK_COMPLETED", "name": "Task completed", "description": "all annotations done",
             "key": "task", "many": false},
            {"action": "STORAGE_SYNCED", "name": "Storage synced", "key": "storage", "many": false,
             "organization-only": true}]"#,
    );
    let served = env
        .serve(&[("WEBHOOKD_ACTIONS_FILE", file.to_str().unwrap())])
        .await;
    let api = &served.api;
    let (status, info) = api.call("GET", "/api/webhooks/info/", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(info.as_object().unwrap().len(), 14, "{info}");
    assert_eq!(
        info["TASK_COMPLETED"],
        json!({"name": "Task completed", "description": "all annotations done", "key": "task",
               "organization-only": false})
    );
    assert_eq!(info["STORAGE_SYNCED"]["organization-only"], true);

    let t = env.token(1).await;
    let t = Some(t.as_str());
    let (status, err) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": rx.url("/custom"), "project": 7, "actions": ["STORAGE_SYNCED"]})),
        )
        .await;
    assert_eq!(
        (status, err["validation_errors"]["non_field_errors"].clone()),
        (
            400,
            json!(["Project webhook can't contain organization-only action."])
        ),
        "a custom action marked organization-only is one"
    );
    let (status, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(
                &json!({"url": rx.url("/custom"), "project": 7, "send_for_all_actions": false,
                "actions": ["TASK_COMPLETED"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(hook["actions"], json!(["TASK_COMPLETED"]));
    wait_for("the webhook in the worker's cache", DEADLINE, || async {
        (api.metric("webhookd_cached_webhooks").await == Some(1.0)).then_some(())
    })
    .await;
    env.publish(&envelope(
        1,
        "TASK_COMPLETED",
        Some(json!({"id": 7})),
        json!({"task": {"id": 3}}),
    ))
    .await;
    let got = rx.wait_for("/custom", 1, DEADLINE).await;
    assert_eq!(
        &got[0].body[..],
        br#"{"action": "TASK_COMPLETED", "task": {"id": 3}, "project": {"id": 7}}"#
    );
    assert_eq!(
        got[0].header("x-webhookd-action").as_deref(),
        Some("TASK_COMPLETED")
    );
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_test_pings_do_not_go_through_a_proxy_from_the_environment() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    // A proxy would resolve and connect on webhookd's behalf, out of reach of the send-time SSRF check.
    let proxy = Receiver::start().await;
    let (id, _) = env
        .webhook(NewWebhook::new(1, None, rx.url("/direct")))
        .await;
    let p = proxy.base.as_str();
    let served = env
        .serve(&[
            ("HTTP_PROXY", p),
            ("http_proxy", p),
            ("HTTPS_PROXY", p),
            ("https_proxy", p),
            ("ALL_PROXY", p),
            ("all_proxy", p),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ])
        .await;
    let t = env.token(1).await;
    let (status, ping) = served
        .api
        .call("POST", &format!("/api/webhooks/{id}/test/"), Some(&t), None)
        .await;
    assert_eq!(
        (status, ping["http_status"].clone()),
        (200, json!(200)),
        "{ping}"
    );
    assert_eq!(proxy.all().len(), 0, "the test ping went through the proxy");
    assert_eq!(rx.requests("/direct").len(), 1);
    env.publish(&envelope(
        1,
        "PROJECT_DELETED",
        None,
        json!({"project": {"id": 1}}),
    ))
    .await;
    let got = rx.wait_for("/direct", 2, DEADLINE).await;
    assert_eq!(got[1].json()["action"], "PROJECT_DELETED");
    assert_eq!(proxy.all().len(), 0, "the delivery went through the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_an_id_flag_beside_a_whole_envelope() {
    let out = Command::new(env!("CARGO_BIN_EXE_webhookd"))
        .args(["publish", "--event", "{}", "--id", "x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'--event <EVENT>' cannot be used with '--id <ID>'"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_an_id_longer_than_255_bytes_before_connecting() {
    let env = TestEnv::new(|_| {}).await;
    let id = "😀".repeat(128); // 128 characters, 512 bytes
    let out = env
        .webhookd()
        .args(["publish", "--id", &id, "--organization", "1"])
        .args(["--action", "PROJECT_DELETED"])
        .args(["--payload", r#"{"project": {"id": 1}}"#])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("for '--id <ID>'"), "{stderr}");
    assert!(
        stderr.contains(
            "must be a string of 1 to 255 bytes of UTF-8 without control characters, got 512 bytes"
        ),
        "{stderr}"
    );
    assert_eq!(env.queued_events().await, 0, "nothing was published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_gives_up_on_a_broker_that_answers_nothing_and_names_the_id() {
    let env = TestEnv::new(|_| {}).await;
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    // The connection opens; the broker's side of the handshake never arrives.
    proxy.stall();
    let publish = |timeout: &str| {
        let mut cmd = env.webhookd();
        cmd.env("AMQP_URL", format!("amqp://guest:guest@{}/%2f", proxy.addr))
            .args(["publish", "--timeout", timeout, "--id", "stalled-1"])
            .args(["--organization", "1", "--action", "PROJECT_DELETED"])
            .args(["--payload", r#"{"project": {"id": 1}}"#]);
        cmd
    };
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(DEADLINE, publish("1.5").output())
        .await
        .expect("publish ends by itself")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "the broker did not confirm the event within 1.5s: it may or may not be stored; \
             publishing it again with the id \"stalled-1\" delivers it once"
        ),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        out.stdout.is_empty(),
        "no id is printed for an event not confirmed"
    );

    let out = publish("0").output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "for '--timeout <SECONDS>': expected seconds, more than 0 and at most 3600, got \"0\""
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_is_idempotent_and_publish_delivers_through_a_worker() {
    let env = TestEnv::new(|_| {}).await;
    for _ in 0..2 {
        let out = env.webhookd().arg("migrate").output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("RabbitMQ topology declared"));
    }
    let rx = Receiver::start().await;
    env.webhook(NewWebhook::new(1, Some(7), rx.url("/cli")))
        .await;
    let worker = env.start_worker().await;
    let out = env
        .webhookd()
        .args([
            "publish",
            "--organization",
            "1",
            "--action",
            "ANNOTATION_CREATED",
            "--id",
            "cli-1",
        ])
        .args([
            "--project",
            r#"{"id": 7}"#,
            "--payload",
            r#"{"annotation": {"id": 17}, "task": {"id": 19}}"#,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-1");
    let got = rx.wait_for("/cli", 1, Duration::from_secs(15)).await;
    assert_eq!(got[0].json()["annotation"]["id"], 17);

    let bad = env
        .webhookd()
        .args(["publish", "--organization", "1", "--action", "NOPE"])
        .output()
        .await
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid event: unknown action \"NOPE\""));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_emits_confirmed_events_and_refuses_bad_ones() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    env.webhook(NewWebhook::new(1, Some(7), rx.url("/client")))
        .await;
    let worker = env.start_worker().await;
    let emitter = Emitter::connect(support::AMQP_URL, &env.topology.exchange)
        .await
        .unwrap();
    let project = Some(json!({"id": 7, "title": "P"}));
    emitter
        .emit(
            1,
            project.clone(),
            "ANNOTATION_CREATED",
            json!({"annotation": {"id": 1}, "task": {"id": 2}}),
        )
        .await
        .unwrap();
    emitter
        .emit_for_instances(
            1,
            project.clone(),
            "TASKS_CREATED",
            vec![json!({"id": 5}), json!({"id": 6})],
        )
        .await
        .unwrap();
    let got = rx.wait_for("/client", 2, Duration::from_secs(15)).await;
    let tasks = got
        .iter()
        .find(|r| r.json()["action"] == "TASKS_CREATED")
        .unwrap()
        .json();
    assert_eq!(
        tasks,
        json!({"action": "TASKS_CREATED", "tasks": [{"id": 5}, {"id": 6}], "project": {"id": 7, "title": "P"}})
    );

    let err = emitter
        .emit(
            1,
            project.clone(),
            "PROJECT_CREATED",
            json!({"project": {}}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid event: action PROJECT_CREATED is organization-only and cannot carry a project"
    );
    let err = emitter
        .emit_for_instances(
            1,
            project.clone(),
            "ANNOTATION_CREATED",
            vec![json!({"id": 1}), json!({"id": 2})],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EmitError::Instances(_)), "{err}");

    // An id too long for the AMQP message-id (128 characters, 512 bytes), set by hand on a valid event, is
    // refused before anything is sent (before, it went to the broker as an over-long message-id).
    let mut event = webhookd_client::Event::from_value(
        envelope(
            1,
            "ANNOTATION_CREATED",
            project.clone(),
            json!({"annotation": {"id": 3}, "task": {"id": 4}}),
        ),
        &Catalog::builtin(),
    )
    .unwrap();
    event.producer_id = Some("😀".repeat(128));
    let err = emitter.publish(&event).await.unwrap_err();
    assert!(matches!(err, EmitError::Invalid(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "invalid event: field `id` must be a string of 1 to 255 bytes of UTF-8 without control characters, got 512 bytes"
    );
    event.producer_id = Some("é".repeat(127)); // 254 bytes: fine
    emitter.publish(&event).await.unwrap();
    let got = rx.wait_for("/client", 3, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 3, "only the valid id was delivered");

    // An exchange no worker queue is bound to: the broker would drop the event, so emit says so.
    let lonely = format!("{}.unbound", env.name);
    let unbound = Emitter::connect(support::AMQP_URL, &lonely).await.unwrap();
    let err = unbound
        .emit(1, None, "PROJECT_DELETED", json!({"project": {"id": 1}}))
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("no queue is bound to exchange"),
        "{err}"
    );
    let conn = webhookd_broker::connect(support::AMQP_URL, "cleanup")
        .await
        .unwrap();
    conn.create_channel()
        .await
        .unwrap()
        .exchange_delete(lonely.as_str().into(), Default::default())
        .await
        .unwrap();
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_actions_from_the_catalog_are_delivered_like_built_in_ones() {
    let custom = ActionSpec {
        action: "TASK_COMPLETED".into(),
        name: "Task completed".into(),
        description: String::new(),
        key: "task".into(),
        many: false,
        organization_only: false,
    };
    let catalog = Catalog::builtin().with_custom(vec![custom]).unwrap();
    let env = TestEnv::new(|s| s.catalog = std::sync::Arc::new(catalog.clone())).await;
    let rx = Receiver::start().await;
    let mut hook = NewWebhook::new(1, Some(7), rx.url("/custom"));
    hook.send_for_all_actions = false;
    hook.actions = vec!["TASK_COMPLETED".into()];
    env.webhook(hook).await;
    let worker = env.start_worker().await;
    let emitter = Emitter::connect(support::AMQP_URL, &env.topology.exchange)
        .await
        .unwrap()
        .with_catalog(catalog);
    emitter
        .emit(
            1,
            Some(json!({"id": 7})),
            "TASK_COMPLETED",
            json!({"task": {"id": 3}}),
        )
        .await
        .unwrap();
    let got = rx.wait_for("/custom", 1, Duration::from_secs(15)).await;
    assert_eq!(
        &got[0].body[..],
        br#"{"action": "TASK_COMPLETED", "task": {"id": 3}, "project": {"id": 7}}"#
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_prints_a_key_the_api_accepts_and_revoke_ends_it() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let out = env
        .webhookd()
        .args(["token", "create", "--organization", "5", "--name", "ci"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap();
    let key = key.trim();
    assert!(
        key.len() == 40 && key.chars().all(|c| c.is_ascii_hexdigit()),
        "stdout is the key alone: {key:?}"
    );
    let (status, body) = api.call("GET", "/api/webhooks/", Some(key), None).await;
    assert_eq!((status, body), (200, serde_json::json!([])));
    let out = env
        .webhookd()
        .args(["token", "revoke", key])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    let (status, _) = api.call("GET", "/api/webhooks/", Some(key), None).await;
    assert_eq!(status, 401);
    let again = env
        .webhookd()
        .args(["token", "revoke", key])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no active token has this key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_pipeline_and_prints_the_delivery_log() {
    let out = Command::new(env!("CARGO_BIN_EXE_webhookd"))
        .arg("demo")
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
        .env("DATABASE_URL", format!("{}/webhookd", support::PG_BASE))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The table alone on stdout; the logs, one attempt line per attempt, on stderr.
    let is_log = |line: &str| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.get("level").is_some())
    };
    assert!(
        !stdout.lines().any(is_log),
        "log lines on stdout:\n{stdout}"
    );
    let attempts = stderr
        .lines()
        .filter(|l| is_log(l) && l.contains(r#""message":"delivery attempt""#))
        .count();
    assert_eq!(attempts, 8, "{stderr}");
    assert!(stdout.contains("delivery log (8 attempts)"), "{stdout}");
    assert!(
        stdout.contains("/flaky") && stdout.contains("503"),
        "the failed first attempt is shown: {stdout}"
    );
    assert_eq!(stdout.matches(" succeeded ").count(), 7, "{stdout}");
}
