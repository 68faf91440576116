//! Issue 10, the API side: what a webhook may not carry or reach, the bounds of an ingested event, time limits
//! on every dependency of a request, and per-organization rate limits on the routes that send requests.

mod support;

use serde_json::json;
use support::api::assert_envelope;
use support::TestEnv;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_headers_cannot_set_framing_or_signature_headers() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let t = env.token(1).await;
    let t = Some(t.as_str());
    let refused = |name: &str| format!("Header \"{name}\" cannot be set: webhookd sets it itself.");
    for name in [
        "Host",
        "content-length",
        "Transfer-Encoding",
        "CONNECTION",
        "webhook-id",
        "Webhook-Timestamp",
        "WEBHOOK-SIGNATURE",
        "Keep-Alive",
        "X-Webhookd-Attempt",
    ] {
        let body =
            json!({"url": "http://127.0.0.1:9/hook", "headers": {"X-Fine": "1", name: "evil"}});
        let (status, err) = api.call("POST", "/api/webhooks/", t, Some(&body)).await;
        assert_eq!(status, 400, "{name}: {err}");
        assert_envelope(&err, 400);
        assert_eq!(
            err["validation_errors"],
            json!({"headers": [refused(name)]}),
            "{name}"
        );
    }
    let (_, listed) = api.call("GET", "/api/webhooks/", t, None).await;
    assert_eq!(listed, json!([]), "no refused webhook was created");

    let (status, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            t,
            Some(
                &json!({"url": "http://127.0.0.1:9/hook", "headers": {"Authorization": "Basic x"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let path = format!("/api/webhooks/{}/", hook["id"]);
    for (method, body, name) in [
        (
            "PATCH",
            json!({"headers": {"host": "internal.example"}}),
            "host",
        ),
        (
            "PUT",
            json!({"url": "http://127.0.0.1:9/hook", "headers": {"Webhook-Signature": "v1,forged"}}),
            "Webhook-Signature",
        ),
    ] {
        let (status, err) = api.call(method, &path, t, Some(&body)).await;
        assert_eq!(
            (status, err["validation_errors"].clone()),
            (400, json!({"headers": [refused(name)]})),
            "{method}"
        );
    }
    let (_, after) = api.call("GET", &path, t, None).await;
    assert_eq!(after, hook, "a refused update changes nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_id_longer_than_255_bytes_is_a_400_naming_id() {
    // Before, 128 four-byte characters passed the 128-character rule and the request's connection dropped.
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let t = env.token(1).await;
    let t = Some(t.as_str());
    let event = |id: String| json!({"version": 1, "id": id, "action": "PROJECT_DELETED", "payload": {"project": {"id": 1}}});
    let (status, err) = api
        .call("POST", "/api/events/", t, Some(&event("😀".repeat(128))))
        .await;
    assert_eq!(status, 400, "{err}");
    assert_envelope(&err, 400);
    assert_eq!(
        err["validation_errors"],
        json!({"id": ["field `id` must be a string of 1 to 255 bytes of UTF-8 without control characters, got 512 bytes"]})
    );
    assert_eq!(env.queued_events().await, 0, "nothing was published");
    let longest = "é".repeat(127) + "x"; // 255 bytes
    let (status, ok) = api
        .call("POST", "/api/events/", t, Some(&event(longest.clone())))
        .await;
    assert_eq!((status, ok), (202, json!({"id": longest})));
    assert_eq!(env.queued_events().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_max_event_bytes_is_a_413_naming_the_limit() {
    let env = TestEnv::new(|_| {}).await;
    // The event limit is above the generic body limit: an event body between the two must reach the check.
    let api = env
        .start_api(|s| {
            s.max_body_bytes = 1000;
            s.max_event_bytes = 2000;
        })
        .await;
    let t = env.token(1).await;
    let t = Some(t.as_str());
    let event = |filler: usize| {
        json!({"version": 1, "action": "PROJECT_DELETED",
            "payload": {"project": {"id": 1, "notes": "n".repeat(filler)}}})
    };
    let (status, ok) = api
        .call("POST", "/api/events/", t, Some(&event(1500)))
        .await;
    assert_eq!(
        status, 202,
        "an event over WEBHOOKD_MAX_BODY_BYTES but within the event limit: {ok}"
    );

    let oversized = event(2500);
    let (status, err) = api
        .call_with(
            "POST",
            "/api/events/",
            t,
            Some(oversized.to_string().into_bytes()),
            &[("idempotency-key", "big-1")],
        )
        .await;
    assert_eq!(status, 413, "{err}");
    assert_envelope(&err, 413);
    let detail = err["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("The event is ")
            && detail.ends_with(
                " bytes as published, larger than the 2000 bytes allowed (WEBHOOKD_MAX_EVENT_BYTES)."
            ),
        "{detail}"
    );
    assert_eq!(
        env.queued_events().await,
        1,
        "the large event was not published"
    );
    // The refused request left no pending Idempotency-Key: a valid event under the key is published.
    let (status, _) = api
        .call_with(
            "POST",
            "/api/events/",
            t,
            Some(event(10).to_string().into_bytes()),
            &[("idempotency-key", "big-1")],
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(env.queued_events().await, 2);

    // Far beyond the event limit, the route's own body limit answers (2000 + 64 KiB of formatting).
    let (status, err) = api
        .call("POST", "/api/events/", t, Some(&event(100_000)))
        .await;
    assert_eq!(
        (status, err["detail"].clone()),
        (413, json!("Request body is larger than 67536 bytes."))
    );
    // Other routes keep WEBHOOKD_MAX_BODY_BYTES.
    let big_hook = json!({"url": "http://127.0.0.1:9/x", "headers": {"x": "a".repeat(1500)}});
    let (status, err) = api.call("POST", "/api/webhooks/", t, Some(&big_hook)).await;
    assert_eq!(
        (status, err["detail"].clone()),
        (413, json!("Request body is larger than 1000 bytes."))
    );
}
