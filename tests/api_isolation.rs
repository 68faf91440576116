//! Issue 10, the API side: what a webhook may not carry or reach, the bounds of an ingested event, time limits
//! on every dependency of a request, and per-organization rate limits on the routes that send requests.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::api::{assert_envelope, ApiClient, TestApi};
use support::faults::Proxy;
use support::receiver::Receiver;
use support::TestEnv;

/// RabbitMQ, behind the proxies of the slow-broker tests.
const RABBITMQ: &str = "127.0.0.1:5672";

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

/// The dependency limit of the slow-dependency tests.
const LIMIT: Duration = Duration::from_secs(2);
/// What an answer may take beyond `LIMIT` (scheduling on a busy two-core machine).
const MARGIN: Duration = Duration::from_millis(1500);
/// What an answer that waits on nothing slow may take.
const QUICK: Duration = Duration::from_millis(750);

/// `POST /api/events/` with a small valid event and `key` as its Idempotency-Key: status, headers, body, time.
async fn ingest(
    api: &ApiClient,
    token: &str,
    key: &str,
) -> (u16, reqwest::header::HeaderMap, Value, Duration) {
    let event =
        json!({"version": 1, "action": "PROJECT_DELETED", "payload": {"project": {"id": 1}}});
    let started = Instant::now();
    let (status, headers, body) = api
        .call_full(
            "POST",
            "/api/events/",
            Some(token),
            Some(event.to_string().into_bytes()),
            &[("idempotency-key", key)],
        )
        .await;
    (status, headers, body, started.elapsed())
}

/// Checks that an answer is an `expected` error in Label Studio's envelope; returns its `Retry-After` seconds.
fn refusal(status: u16, headers: &reqwest::header::HeaderMap, body: &Value, expected: u16) -> u64 {
    assert_eq!(status, expected, "{body}");
    assert_envelope(body, expected);
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {headers:?}"))
}

/// A 503 in Label Studio's envelope with `Retry-After`, whose detail contains `cause`, answered within `within`.
fn assert_unavailable(
    (status, headers, body, took): &(u16, reqwest::header::HeaderMap, Value, Duration),
    cause: &str,
    within: Duration,
) {
    assert_eq!(refusal(*status, headers, body, 503), 5);
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains(cause), "{detail}");
    assert!(*took <= within, "answered after {took:?}, limit {within:?}");
}

/// `GET path` answers 200 within `QUICK`.
async fn assert_quick(api: &ApiClient, token: &str, path: &str) {
    let started = Instant::now();
    let (status, body) = api.call("GET", path, Some(token), None).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{path}: {body}");
    assert!(took <= QUICK, "{path} took {took:?}");
}

/// An API whose broker is reached through `proxy`, with the short dependency limit and `pool_size`
/// connections, and a webhook to read.
async fn api_behind(env: &TestEnv, proxy: &Proxy, pool_size: usize) -> (TestApi, String, i64) {
    let api = env
        .start_api(|s| {
            s.amqp_url = format!("amqp://guest:guest@{}/%2f", proxy.addr);
            s.dependency_timeout = LIMIT;
            s.pool_size = pool_size;
        })
        .await;
    let token = env.token(1).await;
    let (status, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            Some(&token),
            Some(&json!({"url": "http://127.0.0.1:9/hook"})),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let id = hook["id"].as_i64().unwrap_or_default();
    (api, token, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_accepts_connections_but_never_answers_gets_a_503_within_the_limit() {
    let env = TestEnv::new(|_| {}).await;
    let proxy = Proxy::start(RABBITMQ.parse().unwrap()).await;
    proxy.stall();
    let (api, t, id) = api_behind(&env, &proxy, 2).await;
    let publishing = {
        let (client, t) = (api.client.clone(), t.clone());
        tokio::spawn(async move { ingest(&client, &t, "never-1").await })
    };
    // While the publish waits on the broker (holding no database connection, with a pool of 2), the rest of
    // the API answers at once.
    for _ in 0..3 {
        assert_quick(&api, &t, "/api/webhooks/").await;
        assert_quick(&api, &t, &format!("/api/webhooks/{id}/deliveries/")).await;
    }
    assert!(!publishing.is_finished(), "the publish answered too early");
    let answer = publishing.await.unwrap();
    assert_unavailable(
        &answer,
        "RabbitMQ did not accept a connection within 2s",
        LIMIT + MARGIN,
    );
    assert_eq!(env.queued_events().await, 0);
    // The connection given up on is closed, not left open (with a thread of its own in the API) for as long
    // as the broker stays silent: one per request would pile up.
    proxy.wait_closed_by_client(1, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_answering_gets_a_503_within_the_limit_and_the_next_connection_works() {
    let env = TestEnv::new(|_| {}).await;
    let proxy = Proxy::start(RABBITMQ.parse().unwrap()).await;
    let (api, t, id) = api_behind(&env, &proxy, 2).await;
    let (status, _, body, _) = ingest(&api, &t, "first").await;
    assert_eq!(status, 202, "{body}");

    proxy.stall();
    // Two publishes at once, both with keys (each claims it with a connection of the pool of 2): neither
    // holds the connection, or the broker lock, for longer than the limit.
    let publishes: Vec<_> = ["second", "third"]
        .into_iter()
        .map(|key| {
            let (client, t) = (api.client.clone(), t.clone());
            tokio::spawn(async move { ingest(&client, &t, key).await })
        })
        .collect();
    for _ in 0..3 {
        assert_quick(&api, &t, "/api/webhooks/").await;
        assert_quick(&api, &t, &format!("/api/webhooks/{id}/deliveries/")).await;
    }
    for publish in publishes {
        let answer = publish.await.unwrap();
        assert_unavailable(
            &answer,
            "RabbitMQ did not confirm the publish within 2s",
            LIMIT + MARGIN,
        );
    }

    // The stalled connection was dropped: once the broker answers again, a new one publishes.
    proxy.restore();
    let (status, _, body, _) = ingest(&api, &t, "second").await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_database_pool_gives_a_503_within_the_limit() {
    let env = TestEnv::new(|_| {}).await;
    let api = env
        .start_api(|s| {
            s.pool_size = 2;
            s.dependency_timeout = LIMIT;
        })
        .await;
    let t = env.token(1).await;
    assert_quick(&api, &t, "/api/webhooks/").await;
    let held = [api.pool.get().await.unwrap(), api.pool.get().await.unwrap()];
    let started = Instant::now();
    let (status, headers, body) = api
        .call_full("GET", "/api/webhooks/", Some(&t), None, &[])
        .await;
    assert_unavailable(
        &(status, headers, body, started.elapsed()),
        "The database did not provide a connection in time",
        LIMIT + MARGIN,
    );
    drop(held);
    assert_quick(&api, &t, "/api/webhooks/").await;
}

/// A webhook row that another transaction holds (an open `BEGIN`, a client lost mid-transaction) answers the
/// requests that change it with a 503 within the limit, and keeps none of the pool's connections: more such
/// requests than connections leave the API answering everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_row_held_by_another_transaction_gets_a_503_within_the_limit_and_holds_no_connection(
) {
    let env = TestEnv::new(|_| {}).await;
    let api = env
        .start_api(|s| {
            s.pool_size = 2;
            s.dependency_timeout = LIMIT;
        })
        .await;
    let t1 = env.token(1).await;
    let t2 = env.token(2).await;
    let mut ids = Vec::new();
    for t in [&t1, &t2] {
        let (status, hook) = api
            .call(
                "POST",
                "/api/webhooks/",
                Some(t),
                Some(&json!({"url": "http://127.0.0.1:9/hook"})),
            )
            .await;
        assert_eq!(status, 201, "{hook}");
        ids.push(hook["id"].as_i64().unwrap_or_default());
    }
    let holder = env.pool.get().await.unwrap();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM webhooks WHERE id = {} FOR UPDATE",
            ids[0]
        ))
        .await
        .unwrap();
    // Three at once: one more than the pool's connections.
    let patch = |body: Value| {
        let (api, t1, path) = (&api, &t1, format!("/api/webhooks/{}/", ids[0]));
        async move {
            let started = Instant::now();
            let (status, headers, body) = api
                .call_full(
                    "PATCH",
                    &path,
                    Some(t1),
                    Some(body.to_string().into_bytes()),
                    &[],
                )
                .await;
            (status, headers, body, started.elapsed())
        }
    };
    let answers = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join_all([
            patch(json!({"is_active": false})),
            patch(json!({"send_payload": false})),
            patch(json!({"url": "http://127.0.0.1:9/other"})),
        ]),
    )
    .await
    .expect("the requests waited for the row as long as it was held");
    // Each gives up on the lock, or on a connection, within the limit of each wait it makes: PostgreSQL times
    // each lock acquisition on its own, and a request queued behind another for the same row first waits
    // for that one's turn (in all, at most a limit per request ahead of it).
    let mut on_the_lock = 0;
    for (status, headers, body, took) in &answers {
        assert_eq!(refusal(*status, headers, body, 503), 5);
        assert!(*took <= LIMIT * 3 + MARGIN, "answered after {took:?}");
        let detail = body["detail"].as_str().unwrap_or_default();
        if detail.contains("Another transaction holds the rows this request needs") {
            on_the_lock += 1;
        } else {
            assert!(
                detail.contains("did not provide a connection in time"),
                "{detail}"
            );
        }
    }
    assert!(on_the_lock >= 2, "{answers:?}");
    assert_quick(&api, &t2, "/api/webhooks/").await;
    let turn_off = |id: i64, token: &str| {
        let (api, path, token) = (&api, format!("/api/webhooks/{id}/"), token.to_owned());
        async move {
            api.call(
                "PATCH",
                &path,
                Some(&token),
                Some(&json!({"is_active": false})),
            )
            .await
        }
    };
    let (status, body) = turn_off(ids[1], &t2).await;
    assert_eq!(status, 200, "another organization's webhook: {body}");
    holder.batch_execute("ROLLBACK").await.unwrap();
    let (status, body) = turn_off(ids[0], &t1).await;
    assert_eq!(status, 200, "once the row is free: {body}");
    assert_eq!(body["is_active"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_pings_hold_no_database_connection_while_the_receiver_is_waited_on() {
    // Fails on the code that held a connection across the ping: with a pool of 2, two pings waiting on a
    // slow receiver left nothing for the list, which waited for a ping to finish.
    let env = TestEnv::new(|_| {}).await;
    let api = env
        .start_api(|s| {
            s.pool_size = 2;
            s.timeout = Duration::from_secs(5);
        })
        .await;
    let rx = Receiver::start().await;
    rx.script("/slow", |_| (200, vec![], Duration::from_secs(3)));
    let t = env.token(1).await;
    let (_, hook) = api
        .call(
            "POST",
            "/api/webhooks/",
            Some(&t),
            Some(&json!({"url": rx.url("/slow")})),
        )
        .await;
    let path = format!("/api/webhooks/{}/test/", hook["id"]);
    let pings: Vec<_> = (0..2)
        .map(|_| {
            let (client, t, path) = (api.client.clone(), t.clone(), path.clone());
            tokio::spawn(async move { client.call("POST", &path, Some(&t), None).await })
        })
        .collect();
    rx.wait_for("/slow", 2, Duration::from_secs(5)).await;
    assert_quick(&api, &t, "/api/webhooks/").await;
    for ping in pings {
        let (status, outcome) = ping.await.unwrap();
        assert_eq!(
            (status, outcome["status"].clone()),
            (200, json!("succeeded"))
        );
    }
    let rows = env.attempts().await;
    assert_eq!(rows.len(), 2, "each ping wrote its log row: {rows:?}");
}

/// A 429 in Label Studio's envelope with `Retry-After` (whole seconds, at most `max_secs`), naming `what`.
fn assert_rate_limited(
    (status, headers, body): &(u16, reqwest::header::HeaderMap, Value),
    what: &str,
    max_secs: u64,
) {
    let retry_after = refusal(*status, headers, body, 429);
    assert!(
        (1..=max_secs).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(&format!("Too many {what} for organization 1: ")),
        "{detail}"
    );
    assert!(
        detail.ends_with(&format!("Retry in {retry_after} s.")),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_pings_redeliveries_and_recovers_are_rate_limited_per_organization() {
    use webhookd_api::rate_limit::{Rate, RateLimitSettings};
    let env = TestEnv::new(|_| {}).await;
    let api = env
        .start_api(|s| {
            s.rate_limits = RateLimitSettings {
                test_ping: Rate::new(6, 3),
                redeliver: Rate::new(6, 3),
                recover: Rate::new(1, 2),
            }
        })
        .await;
    let rx = Receiver::start().await;
    let (one, two) = (env.token(1).await, env.token(2).await);
    let mut hooks = Vec::new();
    for t in [&one, &two] {
        let (_, hook) = api
            .call(
                "POST",
                "/api/webhooks/",
                Some(t),
                Some(&json!({"url": rx.url("/ping")})),
            )
            .await;
        hooks.push(hook["id"].as_i64().unwrap_or_default());
    }
    let call = |t: &str, path: String, body: Option<Value>| {
        let (api, t) = (api.client.clone(), t.to_owned());
        async move {
            let body = body.map(|b| b.to_string().into_bytes());
            api.call_full("POST", &path, Some(&t), body, &[]).await
        }
    };

    // Test pings: a burst of 3, then one every 10 s.
    let ping = |t: &str, id: i64| call(t, format!("/api/webhooks/{id}/test/"), None);
    for _ in 0..3 {
        assert_eq!(ping(&one, hooks[0]).await.0, 200);
    }
    assert_rate_limited(&ping(&one, hooks[0]).await, "test pings", 10);
    assert_eq!(
        rx.requests("/ping").len(),
        3,
        "the limited ping was not sent"
    );
    assert_eq!(
        ping(&two, hooks[1]).await.0,
        200,
        "another organization is not affected"
    );

    // Redeliveries count every request, found or not.
    let redeliver = |t: &str| {
        let unknown = format!(
            "/api/deliveries/msg_{}/redeliver/",
            uuid::Uuid::new_v4().simple()
        );
        call(t, unknown, None)
    };
    for _ in 0..3 {
        assert_eq!(redeliver(&one).await.0, 404);
    }
    assert_rate_limited(&redeliver(&one).await, "redeliveries", 10);
    assert_eq!(
        redeliver(&two).await.0,
        404,
        "another organization is not affected"
    );

    // Recover: a burst of 2, then one a minute.
    let since = json!({"since": "2000-01-01T00:00:00Z"});
    let recover = |t: &str, id: i64| {
        call(
            t,
            format!("/api/webhooks/{id}/recover/"),
            Some(since.clone()),
        )
    };
    for _ in 0..2 {
        let (status, _, body) = recover(&one, hooks[0]).await;
        assert_eq!((status, body), (202, json!({"redelivered": 0})));
    }
    assert_rate_limited(&recover(&one, hooks[0]).await, "recover requests", 60);
    assert_eq!(
        recover(&two, hooks[1]).await.0,
        202,
        "another organization is not affected"
    );
}
