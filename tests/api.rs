//! The management API, black-box over HTTP: Label Studio's /api/webhooks/ semantics, validation, tokens
//! and organization isolation, SSRF checks, the delivery log, tests, redelivery, secrets and ingest.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::api::{assert_envelope, keys};
use support::receiver::Receiver;
use support::{envelope, wait_for, TestEnv};
use webhookd_core::{NetworkPolicy, RetryPolicy, SigningSecret};

const DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_created_read_updated_and_deleted_as_in_label_studio() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let t = env.token(1).await;
    let t = Some(t.as_str());

    let (status, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"project": 1, "url": "http://127.0.0.1:9/hook",
            "headers": {"Authorization": "Basic dXM6cHc="}, "send_for_all_actions": false,
            "actions": ["ANNOTATION_CREATED"]})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(
        keys(&hook),
        [
            "id",
            "organization",
            "project",
            "url",
            "send_payload",
            "send_for_all_actions",
            "headers",
            "is_active",
            "consecutive_failures",
            "failing_since",
            "disabled_reason",
            "disabled_at",
            "actions",
            "created_at",
            "updated_at"
        ]
    );
    assert_eq!(
        (hook["organization"].clone(), hook["project"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        (hook["send_payload"].clone(), hook["is_active"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(hook["actions"], json!(["ANNOTATION_CREATED"]));
    assert!(hook["created_at"].as_str().unwrap().ends_with('Z'));
    let id = hook["id"].as_i64().unwrap();

    let (status, org_hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": "http://127.0.0.1:9/org"})),
        )
        .await;
    assert_eq!(
        (status, org_hook["project"].clone()),
        (201, Value::Null),
        "organization-level webhooks can be created"
    );

    let (_, all) = api.call("GET", "/api/webhooks/", t, None).await;
    assert_eq!(all.as_array().unwrap().len(), 2);
    let (_, p1) = api.call("GET", "/api/webhooks/?project=1", t, None).await;
    assert_eq!(
        p1.as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [id]
    );
    let (_, org_level) = api
        .call("GET", "/api/webhooks/?project=isnull", t, None)
        .await;
    assert_eq!(org_level[0]["id"], org_hook["id"]);
    let (status, bad) = api.call("GET", "/api/webhooks/?project=abc", t, None).await;
    assert_eq!(
        (status, bad["validation_errors"]["project"].is_array()),
        (400, true)
    );

    // PATCH changes only what it names: actions survive, project is write-once.
    let (status, patched) = api
        .call(
            "PATCH",
            &format!("/api/webhooks/{id}/"),
            t,
            Some(&json!({"send_payload": false, "project": null})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["send_payload"], false);
    assert_eq!(patched["actions"], json!(["ANNOTATION_CREATED"]));
    assert_eq!(patched["project"], 1);
    let (_, got) = api
        .call("GET", &format!("/api/webhooks/{id}"), t, None)
        .await;
    assert_eq!(
        got, patched,
        "the path without the trailing slash works too"
    );

    // consecutive_failures resets when the URL changes.
    env.execute(
        "UPDATE webhooks SET consecutive_failures = 7 WHERE id = $1",
        &[&id],
    )
    .await;
    let (_, changed) = api
        .call(
            "PATCH",
            &format!("/api/webhooks/{id}/"),
            t,
            Some(&json!({"url": "http://127.0.0.1:9/new"})),
        )
        .await;
    assert_eq!(changed["consecutive_failures"], 0);

    // PUT replaces: url required, absent fields back to their defaults.
    let (status, err) = api
        .call(
            "PUT",
            &format!("/api/webhooks/{id}/"),
            t,
            Some(&json!({"is_active": false})),
        )
        .await;
    assert_eq!(
        (status, err["validation_errors"]["url"].clone()),
        (400, json!(["This field is required."]))
    );
    let (status, put) = api
        .call(
            "PUT",
            &format!("/api/webhooks/{id}/"),
            t,
            Some(&json!({"url": "http://127.0.0.1:9/put"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            put["send_payload"].clone(),
            put["actions"].clone(),
            put["headers"].clone()
        ),
        (json!(true), json!([]), json!({}))
    );

    let (status, body) = api
        .call("DELETE", &format!("/api/webhooks/{id}/"), t, None)
        .await;
    assert_eq!((status, body), (204, Value::Null));
    let (status, gone) = api
        .call("GET", &format!("/api/webhooks/{id}/"), t, None)
        .await;
    assert_eq!(status, 404);
    assert_envelope(&gone, 404);
    assert_eq!(gone["detail"], "Not found.");
    // Updating a webhook that does not exist (deleted, never made, or not an id) is a 404 too.
    for path in [
        format!("/api/webhooks/{id}/"),
        "/api/webhooks/999999/".to_owned(),
        "/api/webhooks/abc/".to_owned(),
    ] {
        for (method, body) in [
            ("PATCH", json!({"is_active": false})),
            ("PUT", json!({"url": "http://127.0.0.1:9/put"})),
        ] {
            let (status, err) = api.call(method, &path, t, Some(&body)).await;
            assert_eq!(
                (status, err["detail"].clone()),
                (404, json!("Not found.")),
                "{method} {path}"
            );
            assert_envelope(&err, 404);
        }
    }
    let (_, left) = api.call("GET", "/api/webhooks/", t, None).await;
    assert_eq!(left, json!([org_hook]), "no update created a webhook");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_error_is_a_400_naming_the_field() {
    let env = TestEnv::new(|_| {}).await;
    let api = env
        .start_api(|s| {
            s.max_webhooks_per_organization = 2;
            s.max_body_bytes = 4096;
        })
        .await;
    let t = env.token(1).await;
    let t = Some(t.as_str());
    let eleven: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("h{i}"), json!("v"))).collect();
    let too_many_headers = format!("{} failed JSON schema check", Value::Object(eleven.clone()));
    let long_url = format!("http://127.0.0.1/{}", "a".repeat(2048));
    let cases: Vec<(Value, &str, String)> = vec![
        (json!({}), "url", "This field is required.".into()),
        (
            json!({"url": "ftp://127.0.0.1/x"}),
            "url",
            "Enter a valid URL.".into(),
        ),
        (
            json!({"url": "not a url"}),
            "url",
            "Enter a valid URL.".into(),
        ),
        (
            json!({"url": long_url}),
            "url",
            "Ensure this field has no more than 2048 characters.".into(),
        ),
        (
            json!({"url": "http://127.0.0.1/x", "send_payload": "maybe"}),
            "send_payload",
            "Must be a valid boolean.".into(),
        ),
        (
            json!({"url": "http://127.0.0.1/x", "actions": ["TASK_CREATED"]}),
            "actions",
            "\"TASK_CREATED\" is not a valid choice.".into(),
        ),
        (
            json!({"url": "http://127.0.0.1/x", "actions": "ANNOTATION_CREATED"}),
            "actions",
            "Expected a list of items but got type \"str\".".into(),
        ),
        (
            json!({"url": "http://127.0.0.1/x", "headers": {"bad key": "v"}}),
            "headers",
            r#"{"bad key":"v"} failed JSON schema check"#.into(),
        ),
        (
            json!({"url": "http://127.0.0.1/x", "headers": {"n": 1}}),
            "headers",
            r#"{"n":1} failed JSON schema check"#.into(),
        ),
        (
            json!({"url": "http://127.0.0.1/x", "headers": eleven}),
            "headers",
            too_many_headers,
        ),
        (
            json!({"url": "http://127.0.0.1/x", "project": 3, "actions": ["PROJECT_CREATED"]}),
            "non_field_errors",
            "Project webhook can't contain organization-only action.".into(),
        ),
        (
            json!({"url": "http://127.0.0.1/x", "project": "abc"}),
            "project",
            "A valid integer is required.".into(),
        ),
        (
            json!({"url": "http://127.0.0.1/x", "project": 0}),
            "project",
            "A valid integer is required.".into(),
        ),
        (
            json!(["http://127.0.0.1/x"]),
            "non_field_errors",
            "Invalid data. Expected a dictionary, but got list.".into(),
        ),
        (
            json!("http://127.0.0.1/x"),
            "non_field_errors",
            "Invalid data. Expected a dictionary, but got str.".into(),
        ),
    ];
    for (body, field, message) in cases {
        let (status, err) = api.call("POST", "/api/webhooks/", t, Some(&body)).await;
        assert_envelope(&err, 400);
        assert_eq!(status, 400, "{body}");
        assert_eq!(err["detail"], "Validation error");
        assert_eq!(
            err["validation_errors"],
            json!({ field: [message] }),
            "{body}: only the bad field is named"
        );
    }
    let (_, listed) = api.call("GET", "/api/webhooks/", t, None).await;
    assert_eq!(listed, json!([]), "no refused body created a webhook");
    let (status, err) = api
        .call_with(
            "POST",
            "/api/webhooks/",
            t,
            Some(b"{not json".to_vec()),
            &[],
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["detail"]
            .as_str()
            .unwrap()
            .starts_with("JSON parse error"),
        "{err}"
    );
    let big = json!({"url": "http://127.0.0.1/x", "headers": {"x": "a".repeat(5000)}});
    let (status, err) = api.call("POST", "/api/webhooks/", t, Some(&big)).await;
    assert_eq!(status, 413, "{err}");

    // A project webhook cannot gain an organization-only action by PATCH either.
    let (_, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": "http://127.0.0.1/a", "project": 3})),
        )
        .await;
    let (status, err) = api
        .call(
            "PATCH",
            &format!("/api/webhooks/{}/", hook["id"]),
            t,
            Some(&json!({"actions": ["PROJECT_DELETED"]})),
        )
        .await;
    assert_eq!(
        (status, err["validation_errors"]["non_field_errors"].clone()),
        (
            400,
            json!(["Project webhook can't contain organization-only action."])
        )
    );

    let (status, _) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": "http://127.0.0.1/b"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, err) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": "http://127.0.0.1/c"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        err["detail"],
        "organization 1 already has 2 webhooks, the maximum (WEBHOOK_MAX_PER_ORGANIZATION)."
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_authenticate_and_organizations_cannot_see_each_other() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let (one, two) = (env.token(1).await, env.token(2).await);
    let (status, err) = api.call("GET", "/api/webhooks/", None, None).await;
    assert_eq!(
        (status, err["detail"].clone()),
        (401, json!("Authentication credentials were not provided."))
    );
    let (status, err) = api.call("GET", "/api/webhooks/", Some("nope"), None).await;
    assert_eq!(
        (status, err["detail"].clone()),
        (401, json!("Invalid token."))
    );

    let (_, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            Some(&one),
            Some(&json!({"url": "http://127.0.0.1/1"})),
        )
        .await;
    let id = hook["id"].as_i64().unwrap();
    let (_, theirs) = api.call("GET", "/api/webhooks/", Some(&two), None).await;
    assert_eq!(theirs, json!([]));
    for (method, path, body) in [
        ("GET", format!("/api/webhooks/{id}/"), None),
        (
            "PATCH",
            format!("/api/webhooks/{id}/"),
            Some(json!({"is_active": false})),
        ),
        (
            "PUT",
            format!("/api/webhooks/{id}/"),
            Some(json!({"url": "http://127.0.0.1/x"})),
        ),
        ("DELETE", format!("/api/webhooks/{id}/"), None),
        ("GET", format!("/api/webhooks/{id}/deliveries/"), None),
        ("GET", format!("/api/webhooks/{id}/secret/"), None),
        ("POST", format!("/api/webhooks/{id}/secret/rotate/"), None),
        ("POST", format!("/api/webhooks/{id}/test/"), None),
        (
            "POST",
            format!("/api/webhooks/{id}/recover/"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        ),
    ] {
        let (status, _) = api.call(method, &path, Some(&two), body.as_ref()).await;
        assert_eq!(
            status, 404,
            "{method} {path} with another organization's token"
        );
    }
    let (status, still) = api
        .call("GET", &format!("/api/webhooks/{id}/"), Some(&one), None)
        .await;
    assert_eq!((status, still["is_active"].clone()), (200, json!(true)));

    let client = env.pool.get().await.unwrap();
    assert!(webhookd_store::api_tokens::revoke_token(&**client, &one)
        .await
        .unwrap());
    let (status, _) = api.call("GET", "/api/webhooks/", Some(&one), None).await;
    assert_eq!(status, 401, "a revoked token is refused");

    let (status, info) = api.call("GET", "/api/webhooks/info/", None, None).await;
    assert_eq!(status, 200, "info needs no token");
    assert_eq!(info.as_object().unwrap().len(), 12);
    assert_eq!(
        info["ANNOTATIONS_CREATED"],
        json!({"name": "Annotations created", "description": "",
        "key": "annotation", "organization-only": false})
    );
    let (_, org_only) = api
        .call(
            "GET",
            "/api/webhooks/info/?organization-only=true",
            None,
            None,
        )
        .await;
    assert_eq!(
        org_only.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["PROJECT_CREATED", "PROJECT_DELETED"]
    );
    let (_, others) = api
        .call(
            "GET",
            "/api/webhooks/info/?organization-only=false",
            None,
            None,
        )
        .await;
    assert_eq!(others.as_object().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_organization_can_neither_read_nor_redeliver_a_delivery() {
    let env = TestEnv::new(|s| s.retry_policy = RetryPolicy::new(Vec::new(), true)).await;
    let api = env.start_api(|_| {}).await;
    let rx = Receiver::start().await;
    let (one, two) = (env.token(1).await, env.token(2).await);
    let (_, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            Some(&one),
            Some(&json!({"url": rx.url("/mine")})),
        )
        .await;
    let worker = env.start_worker().await;
    env.publish(&envelope(
        1,
        "PROJECT_DELETED",
        None,
        json!({"project": {"id": 1}}),
    ))
    .await;
    rx.wait_for("/mine", 1, DEADLINE).await;
    env.wait_for_attempts(1, DEADLINE).await;
    // No worker from here on: a redelivery would wait in the retry queue, where it can be counted.
    worker.stop().await;
    let (_, page) = api
        .call(
            "GET",
            &format!("/api/webhooks/{}/deliveries/", hook["id"]),
            Some(&one),
            None,
        )
        .await;
    let delivery = page["results"][0]["delivery_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let plain = uuid::Uuid::parse_str(&delivery["msg_".len()..])
        .unwrap()
        .to_string();
    for id in [&delivery, &plain] {
        for (method, path) in [
            ("GET", format!("/api/deliveries/{id}/")),
            ("POST", format!("/api/deliveries/{id}/redeliver/")),
        ] {
            let (status, err) = api.call(method, &path, Some(&two), None).await;
            assert_eq!(
                (status, err["detail"].clone()),
                (404, json!("Not found.")),
                "{method} {path} with another organization's token"
            );
            assert_envelope(&err, 404);
        }
    }
    assert_eq!(
        env.queued_retries().await,
        0,
        "another organization's redeliver queued nothing"
    );
    assert_eq!(env.attempts().await.len(), 1);

    // The owner's token reaches the same delivery, so the 404s above are the organization check.
    let (status, detail) = api
        .call(
            "GET",
            &format!("/api/deliveries/{delivery}/"),
            Some(&one),
            None,
        )
        .await;
    assert_eq!((status, detail["id"].clone()), (200, json!(delivery)));
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/deliveries/{delivery}/redeliver/"),
            Some(&one),
            None,
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(env.queued_retries().await, 1);
    assert_eq!(rx.requests("/mine").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_protection_refuses_internal_urls_unless_allowed() {
    let env = TestEnv::new(|_| {}).await;
    let strict = env
        .start_api(|s| s.network_policy = NetworkPolicy::new(Vec::new()))
        .await;
    let t = env.token(1).await;
    let t = Some(t.as_str());
    for (url, class) in [
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://localhost:8000/hook", "loopback"),
        ("http://10.0.0.5/hook", "private"),
        ("http://192.168.1.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "cloud-metadata"),
        ("http://100.64.1.1/hook", "CGNAT (shared)"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "IPv4-mapped IPv6"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://[fec0::1]/hook", "site-local"),
        ("http://[2001::1]/hook", "Teredo"),
        ("http://[100::1]/hook", "discard-only"),
    ] {
        let (status, err) = strict
            .call("POST", "/api/webhooks/", t, Some(&json!({"url": url})))
            .await;
        assert_ssrf_refused(status, &err, class, url);
    }
    let (status, err) = strict
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": "http://no-such-host.invalid/x"})),
        )
        .await;
    assert_eq!(
        (status, err["validation_errors"]["url"].clone()),
        (400, json!(["Can't resolve hostname no-such-host.invalid"]))
    );

    let open = env
        .start_api(|s| {
            s.network_policy =
                NetworkPolicy::new(NetworkPolicy::parse_networks("127.0.0.0/8").unwrap())
        })
        .await;
    let (status, _) = open
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": "http://localhost:8000/hook"})),
        )
        .await;
    assert_eq!(status, 201, "the allow-list opens 127.0.0.0/8");
    let (status, _) = open
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": "http://10.0.0.5/hook"})),
        )
        .await;
    assert_eq!(status, 400, "but nothing else");

    // Updates are checked too: a PATCH or PUT to an internal URL is refused and changes nothing.
    let (_, hook) = open
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": "http://127.0.0.1:9/ok", "send_payload": false})),
        )
        .await;
    let path = format!("/api/webhooks/{}/", hook["id"]);
    for (method, body, class) in [
        (
            "PATCH",
            json!({"url": "http://10.0.0.5/hook", "is_active": false}),
            "private",
        ),
        (
            "PUT",
            json!({"url": "http://169.254.169.254/latest/meta-data"}),
            "cloud-metadata",
        ),
        ("PATCH", json!({"url": "http://[::1]:9/ok"}), "loopback"),
    ] {
        let (status, err) = strict.call(method, &path, t, Some(&body)).await;
        assert_ssrf_refused(status, &err, class, method);
    }
    let (_, after) = strict.call("GET", &path, t, None).await;
    assert_eq!(after, hook, "a refused update changes nothing");
}

/// A 400 in Label Studio's envelope whose `url` error is the SSRF refusal of a `class` address.
fn assert_ssrf_refused(status: u16, err: &Value, class: &str, context: &str) {
    assert_eq!(status, 400, "{context}: {err}");
    assert_envelope(err, 400);
    let message = err["validation_errors"]["url"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.starts_with("URL resolves to a reserved network address: "),
        "{context}: {err}"
    );
    assert!(
        message.contains(&format!(" {class} address")),
        "{context}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_ping_redeliver_and_recover_make_real_deliveries_and_log_rows() {
    let env = TestEnv::new(|s| s.retry_policy = RetryPolicy::new(Vec::new(), true)).await;
    // Four recover requests: more than the default burst of 3 (WEBHOOKD_RECOVERIES_BURST).
    let api = env
        .start_api(|s| s.rate_limits.recover = webhookd_api::rate_limit::Rate::new(60, 10))
        .await;
    let worker = env.start_worker().await;
    let rx = Receiver::start().await;
    let t = env.token(1).await;
    let t = Some(t.as_str());
    let (_, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": rx.url("/hook"), "project": 7})),
        )
        .await;
    let id = hook["id"].as_i64().unwrap();

    let (status, ping) = api
        .call("POST", &format!("/api/webhooks/{id}/test/"), t, None)
        .await;
    assert_eq!(status, 200, "{ping}");
    assert_eq!(
        (ping["status"].clone(), ping["http_status"].clone()),
        (json!("succeeded"), json!(200))
    );
    let got = rx.wait_for("/hook", 1, DEADLINE).await;
    assert_eq!(
        &got[0].body[..],
        format!(r#"{{"action": "PING", "webhook": {{"id": {id}}}}}"#).as_bytes()
    );
    assert_eq!(
        got[0].header("webhook-id").unwrap(),
        ping["delivery_id"].as_str().unwrap()
    );
    let (_, secret) = api
        .call("GET", &format!("/api/webhooks/{id}/secret/"), t, None)
        .await;
    let key = SigningSecret::parse(secret["key"].as_str().unwrap()).unwrap();
    let ts: i64 = got[0].header("webhook-timestamp").unwrap().parse().unwrap();
    assert!(webhookd_core::signature::verify(
        &key,
        &got[0].header("webhook-id").unwrap(),
        ts,
        &got[0].body,
        &got[0].header("webhook-signature").unwrap()
    ));
    let (_, detail) = api
        .call(
            "GET",
            &format!("/api/deliveries/{}/", ping["delivery_id"].as_str().unwrap()),
            t,
            None,
        )
        .await;
    assert_eq!(detail["attempts"][0]["status"], "succeeded");

    // An event that fails (no retries in this test) is dead; redeliver sends it again.
    rx.script("/hook", |n| {
        (if n == 1 { 500 } else { 200 }, vec![], Duration::ZERO)
    });
    env.publish(&envelope(
        1,
        "TASKS_CREATED",
        Some(json!({"id": 7})),
        json!({"tasks": [{"id": 1}]}),
    ))
    .await;
    let dead = dead_rows(&api, t, id, "TASKS_CREATED", 1).await.remove(0);
    assert_eq!(dead["http_status"], json!(500));
    let delivery = dead["delivery_id"].as_str().unwrap().to_owned();
    let (status, queued) = api
        .call(
            "POST",
            &format!("/api/deliveries/{delivery}/redeliver/"),
            t,
            None,
        )
        .await;
    assert_eq!((status, queued["attempt"].clone()), (202, json!(2)));
    let got = rx.wait_for("/hook", 3, DEADLINE).await;
    assert_eq!(
        got[2].header("webhook-id").unwrap(),
        delivery,
        "a redelivery keeps the delivery id"
    );
    assert_eq!(got[2].header("x-webhookd-attempt").as_deref(), Some("2"));
    let detail = logged_attempts(&api, t, &delivery, 2).await;
    assert_eq!(detail["status"], "succeeded");
    assert_eq!(
        detail["request"]["body"],
        r#"{"action": "TASKS_CREATED", "tasks": [{"id": 1}], "project": {"id": 7}}"#
    );

    // recover: everything that failed since a time goes out again, and each gets a new row in the log.
    rx.script("/hook", |n| {
        (if n == 3 { 503 } else { 200 }, vec![], Duration::ZERO)
    });
    env.publish(&envelope(
        1,
        "TASKS_DELETED",
        Some(json!({"id": 7})),
        json!({"tasks": [{"id": 1}]}),
    ))
    .await;
    let lost = dead_rows(&api, t, id, "TASKS_DELETED", 1).await.remove(0);
    let lost = lost["delivery_id"].as_str().unwrap().to_owned();
    let (status, err) = api
        .call(
            "POST",
            &format!("/api/webhooks/{id}/recover/"),
            t,
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        (status, err["validation_errors"]["since"].clone()),
        (400, json!(["This field is required."]))
    );
    let recover = || {
        let api = &api;
        async move {
            let since = json!({"since": "2000-01-01T00:00:00Z"});
            let path = format!("/api/webhooks/{id}/recover/");
            api.call("POST", &path, t, Some(&since)).await
        }
    };
    let (status, recovered) = recover().await;
    assert_eq!((status, recovered["redelivered"].clone()), (202, json!(1)));
    let got = rx.wait_for("/hook", 5, DEADLINE).await;
    assert_eq!(got[4].json()["action"], "TASKS_DELETED");
    assert_eq!(got[4].header("webhook-id").unwrap(), lost);
    let detail = logged_attempts(&api, t, &lost, 2).await;
    assert_eq!(
        (
            detail["status"].clone(),
            detail["attempts"][1]["attempt"].clone(),
            detail["attempts"][1]["http_status"].clone()
        ),
        (json!("succeeded"), json!(2), json!(200)),
        "{detail}"
    );
    let (_, none) = recover().await;
    assert_eq!(none["redelivered"], 0, "succeeded deliveries stay put");

    // A failed delivery whose retry is pending (due, or overdue by less than a minute) is left to its retry, so
    // that it is not sent twice; one whose retry is over a minute overdue is recovered.
    rx.script("/hook", |n| {
        (
            if (5..8).contains(&n) { 500 } else { 200 },
            vec![],
            Duration::ZERO,
        )
    });
    for n in 0..3 {
        env.publish(&envelope(
            1,
            "ANNOTATION_CREATED",
            Some(json!({"id": 7})),
            json!({"annotation": {"id": n}, "task": {"id": 1}}),
        ))
        .await;
    }
    let rows = dead_rows(&api, t, id, "ANNOTATION_CREATED", 3).await;
    for (row, due) in rows.iter().zip(["1 hour", "-30 seconds", "-2 minutes"]) {
        env.execute(
            "UPDATE delivery_attempts SET outcome = 'failed', next_attempt_at = now() + $2::text::interval
              WHERE id = $1",
            &[&row["id"].as_i64().unwrap(), &due],
        )
        .await;
    }
    let overdue = rows[2]["delivery_id"].as_str().unwrap().to_owned();
    let (status, recovered) = recover().await;
    assert_eq!((status, recovered["redelivered"].clone()), (202, json!(1)));
    let got = rx.wait_for("/hook", 9, DEADLINE).await;
    assert_eq!(got[8].header("webhook-id").unwrap(), overdue);
    let detail = logged_attempts(&api, t, &overdue, 2).await;
    assert_eq!(detail["status"], "succeeded", "{detail}");
    for pending in &rows[..2] {
        let pending = pending["delivery_id"].as_str().unwrap();
        let (_, detail) = api
            .call("GET", &format!("/api/deliveries/{pending}/"), t, None)
            .await;
        assert_eq!(
            (
                detail["status"].clone(),
                detail["attempts"].as_array().unwrap().len()
            ),
            (json!("failed"), 1),
            "a pending retry is not recovered: {detail}"
        );
    }
    worker.stop().await;
}

/// Waits until the log of webhook `id` holds `n` dead attempts of `action`; returns them, newest first.
async fn dead_rows(
    api: &support::api::TestApi,
    t: Option<&str>,
    id: i64,
    action: &str,
    n: usize,
) -> Vec<Value> {
    let path = format!("/api/webhooks/{id}/deliveries/?status=dead&action={action}");
    wait_for(&format!("{n} dead {action} rows"), DEADLINE, || async {
        let (_, page) = api.call("GET", &path, t, None).await;
        page["results"].as_array().filter(|r| r.len() >= n).cloned()
    })
    .await
}

/// Waits until `delivery` has `n` attempts in the log; returns its detail.
async fn logged_attempts(
    api: &support::api::TestApi,
    t: Option<&str>,
    delivery: &str,
    n: usize,
) -> Value {
    let path = format!("/api/deliveries/{delivery}/");
    wait_for(&format!("{n} attempts of {delivery}"), DEADLINE, || async {
        let (_, d) = api.call("GET", &path, t, None).await;
        (d["attempts"].as_array().map(Vec::len) == Some(n)).then_some(d)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_pages_newest_first_with_filters() {
    let env = TestEnv::new(|s| s.retry_policy = RetryPolicy::new(Vec::new(), true)).await;
    let api = env.start_api(|_| {}).await;
    let worker = env.start_worker().await;
    let rx = Receiver::start().await;
    rx.script("/log", |n| {
        (if n % 2 == 0 { 200 } else { 500 }, vec![], Duration::ZERO)
    });
    let t = env.token(1).await;
    let t = Some(t.as_str());
    let (_, hook) = api
        .call("POST", "/api/webhooks/", t, Some(&json!({"url": rx.url("/log"), "headers": {"Authorization": "Bearer s3cret", "X-Team": "ml"}})))
        .await;
    let id = hook["id"].as_i64().unwrap();
    let cache = worker.worker.cache().clone();
    wait_for("webhook cached", Duration::from_secs(1), || async {
        cache.snapshot().get(id).map(|_| ())
    })
    .await;
    for n in 0..5 {
        env.publish(&envelope(
            1,
            "PROJECT_DELETED",
            None,
            json!({"project": {"id": n}}),
        ))
        .await;
    }
    env.wait_for_attempts(5, DEADLINE).await;

    let mut seen = Vec::new();
    let mut path = format!("/api/webhooks/{id}/deliveries/?limit=2");
    loop {
        let (status, page) = api.call("GET", &path, t, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["results"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(cursor) => {
                path = format!("/api/webhooks/{id}/deliveries/?limit=2&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let ids: Vec<i64> = seen.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted, "newest first");
    let (_, dead) = api
        .call(
            "GET",
            &format!("/api/webhooks/{id}/deliveries/?status=dead"),
            t,
            None,
        )
        .await;
    assert_eq!(dead["results"].as_array().unwrap().len(), 2);
    let (_, ok) = api
        .call(
            "GET",
            &format!("/api/webhooks/{id}/deliveries/?status=succeeded&action=PROJECT_DELETED"),
            t,
            None,
        )
        .await;
    assert_eq!(ok["results"].as_array().unwrap().len(), 3);
    let (_, none) = api
        .call(
            "GET",
            &format!("/api/webhooks/{id}/deliveries/?since=2999-01-01T00:00:00Z"),
            t,
            None,
        )
        .await;
    assert_eq!(none["results"], json!([]));
    let (_, all) = api
        .call(
            "GET",
            &format!("/api/webhooks/{id}/deliveries/?until=2999-01-01T00:00:00Z"),
            t,
            None,
        )
        .await;
    assert_eq!(all["results"].as_array().unwrap().len(), 5);
    for bad in ["status=lost", "since=yesterday", "cursor=zzz", "limit=0"] {
        let (status, err) = api
            .call(
                "GET",
                &format!("/api/webhooks/{id}/deliveries/?{bad}"),
                t,
                None,
            )
            .await;
        let field = bad.split('=').next().unwrap();
        assert_eq!(status, 400, "{bad}");
        assert!(err["validation_errors"][field].is_array(), "{bad}: {err}");
    }

    let failed = &dead["results"][0];
    let (status, detail) = api
        .call(
            "GET",
            &format!(
                "/api/deliveries/{}/",
                failed["delivery_id"].as_str().unwrap()
            ),
            t,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(detail["request"]["headers"]["Authorization"], "<redacted>");
    assert_eq!(detail["request"]["headers"]["X-Team"], "ml");
    assert_eq!(
        detail["request"]["headers"]["webhook-signature"],
        "<redacted>"
    );
    assert_eq!(
        detail["attempts"][0]["error"],
        "HTTP 500 Internal Server Error"
    );
    assert_eq!(detail["attempts"][0]["response_excerpt"], "ok");
    let (status, _) = api
        .call(
            "GET",
            "/api/deliveries/msg_00000000000000000000000000000000/",
            t,
            None,
        )
        .await;
    assert_eq!(status, 404);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_organization_log_and_stats_cover_its_webhooks_and_no_others() {
    let env = TestEnv::new(|s| s.retry_policy = RetryPolicy::new(Vec::new(), true)).await;
    let api = env.start_api(|_| {}).await;
    let worker = env.start_worker().await;
    let rx = Receiver::start().await;
    rx.script("/down", |_| (500, vec![], Duration::ZERO));
    let (one, two) = (env.token(1).await, env.token(2).await);
    let up = api
        .create_webhook(&one, &json!({"url": rx.url("/up")}))
        .await;
    let down = api
        .create_webhook(&one, &json!({"url": rx.url("/down")}))
        .await;
    let other = api
        .create_webhook(&two, &json!({"url": rx.url("/other")}))
        .await;
    let cache = worker.worker.cache().clone();
    wait_for("webhooks cached", Duration::from_secs(5), || async {
        let snapshot = cache.snapshot();
        [up, down, other]
            .iter()
            .all(|id| snapshot.get(*id).is_some())
            .then_some(())
    })
    .await;
    for (org, n) in [(1, 1), (1, 2), (2, 3)] {
        env.publish(&envelope(
            org,
            "PROJECT_DELETED",
            None,
            json!({"project": {"id": n}}),
        ))
        .await;
    }
    env.wait_for_attempts(5, DEADLINE).await;
    // Older attempts, written as the log would have them: one 2 hours ago (in the last day, not the last hour),
    // one 2 days ago (in neither).
    for age in ["2 hours", "2 days"] {
        env.execute(
            "INSERT INTO delivery_attempts (delivery_id, event_id, webhook_id, organization, action, attempt,
                 outcome, duration_ms, created_at)
             VALUES (gen_random_uuid(), gen_random_uuid(), $1, 1, 'PROJECT_DELETED', 1, 'dead', 3,
                 now() - $2::text::interval)",
            &[&up, &age],
        )
        .await;
    }

    // Organization 1's log, paged newest first: its 4 attempts of the hour, then the 2 older ones.
    let mut seen = Vec::new();
    let mut path = "/api/deliveries/?limit=4".to_owned();
    loop {
        let (status, page) = api.call("GET", &path, Some(&one), None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(page["results"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(cursor) => path = format!("/api/deliveries/?limit=4&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    let times: Vec<&str> = seen
        .iter()
        .map(|r| r["created_at"].as_str().unwrap())
        .collect();
    let mut newest_first = times.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(times, newest_first, "newest first");
    let mut hooks: Vec<i64> = seen
        .iter()
        .map(|r| r["webhook"].as_i64().unwrap())
        .collect();
    hooks.sort_unstable();
    hooks.dedup();
    assert_eq!(
        hooks,
        [up, down],
        "organization 1's webhooks, not organization 2's"
    );
    assert_eq!(
        keys(&seen[0]),
        keys(
            &json!({"id": 0, "delivery_id": 0, "event_id": 0, "webhook": 0,
        "action": 0, "attempt": 0, "status": 0, "http_status": 0, "duration_ms": 0, "error": 0,
        "response_excerpt": 0, "next_attempt_at": 0, "created_at": 0})
        ),
        "the per-webhook log's fields"
    );

    let rows = |query: &'static str, token: &str| {
        let (api, token) = (&api, token.to_owned());
        async move {
            let (status, page) = api
                .call(
                    "GET",
                    &format!("/api/deliveries/?{query}"),
                    Some(&token),
                    None,
                )
                .await;
            assert_eq!(status, 200, "{query}: {page}");
            page["results"].as_array().unwrap().clone()
        }
    };
    let dead = rows("status=dead&since=2000-01-01T00:00:00Z", &one).await;
    assert_eq!(
        dead.len(),
        4,
        "2 to /down this hour, the 2 older ones: {dead:?}"
    );
    let recent_dead = rows("status=dead&until=2999-01-01T00:00:00Z&since=", &one).await;
    assert_eq!(recent_dead.len(), 4);
    let hour = chrono::Utc::now() - chrono::Duration::minutes(60);
    let since = format!("since={}", hour.format("%Y-%m-%dT%H:%M:%SZ"));
    let (_, last_hour) = api
        .call(
            "GET",
            &format!("/api/deliveries/?{since}&status=succeeded"),
            Some(&one),
            None,
        )
        .await;
    let succeeded = last_hour["results"].as_array().unwrap();
    assert_eq!(succeeded.len(), 2);
    assert!(succeeded.iter().all(|r| r["webhook"] == up));
    assert_eq!(
        rows("action=TASKS_CREATED", &one).await,
        Vec::<Value>::new()
    );
    assert_eq!(
        rows("since=2999-01-01T00:00:00Z", &one).await,
        Vec::<Value>::new()
    );
    let theirs = rows("", &two).await;
    assert_eq!(
        theirs
            .iter()
            .map(|r| r["webhook"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [other],
        "organization 2 sees its own attempt only"
    );
    for bad in [
        "status=lost",
        "since=yesterday",
        "until=soon",
        "cursor=zzz",
        "limit=201",
    ] {
        let (status, err) = api
            .call("GET", &format!("/api/deliveries/?{bad}"), Some(&one), None)
            .await;
        let field = bad.split('=').next().unwrap();
        assert_eq!(status, 400, "{bad}");
        assert_envelope(&err, 400);
        assert!(err["validation_errors"][field].is_array(), "{bad}: {err}");
    }
    for path in ["/api/deliveries/", "/api/stats/"] {
        let (status, err) = api.call("GET", path, None, None).await;
        assert_eq!(status, 401, "{path} needs a token");
        assert_envelope(&err, 401);
    }

    // At a glance: the attempts of the hour and of the day, and which webhook fails.
    let (status, stats) = api.call("GET", "/api/stats/", Some(&one), None).await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        keys(&stats),
        ["organization", "last_hour", "last_day", "webhooks"]
    );
    assert_eq!(stats["organization"], 1);
    assert_eq!(
        stats["last_hour"],
        json!({"attempts": 4, "succeeded": 2, "failed": 0, "dead": 2})
    );
    assert_eq!(
        stats["last_day"],
        json!({"attempts": 5, "succeeded": 2, "failed": 0, "dead": 3})
    );
    let health = stats["webhooks"].as_array().unwrap();
    assert_eq!(health.len(), 2, "{stats}");
    let (fine, failing) = (&health[0], &health[1]);
    let summary = |w: &Value| {
        (
            w["id"].as_i64(),
            w["failing"].clone(),
            w["consecutive_failures"].clone(),
        )
    };
    assert_eq!(summary(fine), (Some(up), json!(false), json!(0)), "{fine}");
    assert_eq!(
        fine["last_success_at"].as_str().map(|t| t.ends_with('Z')),
        Some(true),
        "{fine}"
    );
    assert_eq!(
        summary(failing),
        (Some(down), json!(true), json!(2)),
        "{failing}"
    );
    assert_eq!(failing["last_success_at"], Value::Null);
    assert!(failing["failing_since"].is_string(), "{failing}");
    assert_eq!(failing["url"], json!(rx.url("/down")));

    let (_, theirs) = api.call("GET", "/api/stats/", Some(&two), None).await;
    assert_eq!(theirs["organization"], 2);
    assert_eq!(theirs["last_day"]["attempts"], 1);
    assert_eq!(
        theirs["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].clone())
            .collect::<Vec<_>>(),
        [json!(other)]
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_keeps_signing_alongside_the_new_one() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let worker = env.start_worker().await;
    let rx = Receiver::start().await;
    let t = env.token(1).await;
    let t = Some(t.as_str());
    let (_, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(&json!({"url": rx.url("/rot")})),
        )
        .await;
    let id = hook["id"].as_i64().unwrap();
    let (_, old) = api
        .call("GET", &format!("/api/webhooks/{id}/secret/"), t, None)
        .await;
    let (status, new) = api
        .call(
            "POST",
            &format!("/api/webhooks/{id}/secret/rotate/"),
            t,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_ne!(old["key"], new["key"]);
    assert!(new["previous_valid_until"].is_string());
    let cache = worker.worker.cache().clone();
    wait_for("two secrets cached", Duration::from_secs(1), || async {
        cache
            .snapshot()
            .get(id)
            .filter(|w| w.secrets.len() == 2)
            .map(|_| ())
    })
    .await;
    env.publish(&envelope(
        1,
        "PROJECT_DELETED",
        None,
        json!({"project": {"id": 1}}),
    ))
    .await;
    let got = rx.wait_for("/rot", 1, DEADLINE).await;
    let r = &got[0];
    let header = r.header("webhook-signature").unwrap();
    assert_eq!(header.split(' ').count(), 2);
    let ts: i64 = r.header("webhook-timestamp").unwrap().parse().unwrap();
    let msg = r.header("webhook-id").unwrap();
    for key in [&old["key"], &new["key"]] {
        let secret = SigningSecret::parse(key.as_str().unwrap()).unwrap();
        assert!(webhookd_core::signature::verify(
            &secret, &msg, ts, &r.body, &header
        ));
    }
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_publishes_with_confirm_and_an_idempotency_key_publishes_once() {
    let env = TestEnv::new(|s| s.prefetch = 1).await;
    let api = env.start_api(|_| {}).await;
    let rx = Receiver::start().await;
    let t = env.token(1).await;
    let t = Some(t.as_str());
    api.call(
        "POST",
        "/api/webhooks/",
        t,
        Some(&json!({"url": rx.url("/in"), "project": 7})),
    )
    .await;
    let event = json!({"version": 1, "action": "ANNOTATION_CREATED", "project": {"id": 7},
        "payload": {"annotation": {"id": 1}, "task": {"id": 2}}});
    let body = event.to_string().into_bytes();
    let (s1, first) = api
        .call_with(
            "POST",
            "/api/events/",
            t,
            Some(body.clone()),
            &[("idempotency-key", "k-1")],
        )
        .await;
    let (s2, second) = api
        .call_with(
            "POST",
            "/api/events/",
            t,
            Some(body),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!((s1, s2), (202, 202), "{first} {second}");
    assert_eq!(first["id"], second["id"]);
    // No worker runs yet, so the queue shows what was published (the worker would also drop a repeated id).
    assert_eq!(
        env.queued_events().await,
        1,
        "the same Idempotency-Key published once"
    );
    let (s3, third) = api.call("POST", "/api/events/", t, Some(&event)).await;
    assert_eq!(s3, 202);
    assert_ne!(third["id"], first["id"]);
    assert_eq!(env.queued_events().await, 2);
    // An unusable Idempotency-Key is a 400 naming the header, and nothing is published.
    let too_long = "k".repeat(256);
    for key in ["", too_long.as_str(), "clé"] {
        let (status, err) = api
            .call_with(
                "POST",
                "/api/events/",
                t,
                Some(event.to_string().into_bytes()),
                &[("idempotency-key", key)],
            )
            .await;
        assert_envelope(&err, 400);
        assert_eq!(
            (
                status,
                err["detail"].clone(),
                err["validation_errors"].clone()
            ),
            (
                400,
                json!("The Idempotency-Key header must be 1 to 255 visible ASCII characters."),
                json!({})
            ),
            "key {key:?}"
        );
    }
    assert_eq!(
        env.queued_events().await,
        2,
        "a refused key publishes nothing"
    );
    let worker = env.start_worker().await;
    let got = rx.wait_for("/in", 2, DEADLINE).await;
    assert_eq!(got[0].json()["annotation"]["id"], 1);

    // A key whose publish was never confirmed (say the API crashed) publishes again, under its first id.
    env.execute(
        "INSERT INTO idempotency_keys (organization, key, event_id) VALUES (1, 'k-pending', 'evt-pending')",
        &[],
    )
    .await;
    let body = event.to_string().into_bytes();
    let (status, again) = api
        .call_with(
            "POST",
            "/api/events/",
            t,
            Some(body),
            &[("idempotency-key", "k-pending")],
        )
        .await;
    assert_eq!((status, again["id"].clone()), (202, json!("evt-pending")));
    rx.wait_for("/in", 3, DEADLINE).await;
    let published = env
        .query(
            "SELECT published FROM idempotency_keys WHERE key = 'k-pending'",
            &[],
        )
        .await;
    assert!(published[0].get::<_, bool>(0));

    let (status, err) = api
        .call(
            "POST",
            "/api/events/",
            t,
            Some(&json!({"version": 1, "action": "NOPE", "payload": {}})),
        )
        .await;
    assert_eq!(
        (status, err["validation_errors"]["action"].clone()),
        (400, json!(["unknown action \"NOPE\""]))
    );
    let (status, err) = api
        .call(
            "POST",
            "/api/events/",
            t,
            Some(
                &json!({"version": 1, "organization": 2, "action": "PROJECT_DELETED",
            "payload": {"project": {"id": 1}}}),
            ),
        )
        .await;
    assert_eq!(status, 400);
    assert!(err["validation_errors"]["organization"].is_array());
    let (status, _) = api.call("POST", "/api/events/", None, Some(&event)).await;
    assert_eq!(status, 401);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_every_route() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let (status, doc) = api.call("GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/webhooks/",
        "/api/webhooks/{id}/",
        "/api/webhooks/info/",
        "/api/webhooks/{id}/deliveries/",
        "/api/deliveries/",
        "/api/stats/",
        "/api/deliveries/{id}/",
        "/api/deliveries/{id}/redeliver/",
        "/api/webhooks/{id}/recover/",
        "/api/webhooks/{id}/test/",
        "/api/webhooks/{id}/secret/",
        "/api/webhooks/{id}/secret/rotate/",
        "/api/events/",
        "/api/relay/label-studio/",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Webhook"].is_object());
}
