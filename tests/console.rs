//! The web console (`/console/`): what it is served with, and a person's whole visit in a real browser (headless
//! Chromium through ChromeDriver) against a real `webhookd serve` and a local receiver.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::api::ApiClient;
use support::browser::Browser;
use support::receiver::Receiver;
use support::{actions_file, envelope, wait_for, TestEnv};
use webhookd_api::console::CONTENT_SECURITY_POLICY;

const DEADLINE: Duration = Duration::from_secs(15);

/// The Enter key, as WebDriver types it.
const ENTER: char = '\u{E007}';
/// The Escape key.
const ESCAPE: &str = "\u{E00C}";

/// What a receiver answers that would run script if the console put it into the page as HTML.
const HOSTILE_EXCERPT: &str = r#"<img src=x onerror="document.title='pwned'"><b>bold</b>"#;

/// A client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Fetches `path`; asserts the console's security headers; returns the status, content type and body.
async fn fetch(api: &ApiClient, path: &str) -> (u16, String, String) {
    let response = no_redirects().get(api.url(path)).send().await.unwrap();
    let headers = response.headers().clone();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        header("content-security-policy"),
        CONTENT_SECURITY_POLICY,
        "{path}"
    );
    assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    assert_eq!(header("x-frame-options"), "DENY", "{path}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
    if response.status().is_redirection() {
        assert_eq!(header("location"), "/console/", "{path}");
    }
    let status = response.status().as_u16();
    let content_type = header("content-type");
    (status, content_type, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_whole_from_the_binary_with_a_strict_policy() {
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(
            CONTENT_SECURITY_POLICY.contains(directive),
            "{directive} in {CONTENT_SECURITY_POLICY}"
        );
    }
    assert!(
        !CONTENT_SECURITY_POLICY.contains("unsafe"),
        "nothing inline, no eval"
    );

    for root in ["/", "/console"] {
        let (status, _, _) = fetch(&api, root).await;
        assert_eq!(status, 303, "{root} redirects to /console/");
    }
    let (status, content_type, page) = fetch(&api, "/console/").await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "nothing inline in the page"
    );

    // Every file the page names, and every module those import, is served from here, with its type.
    let mut pending: Vec<String> = ["src=\"", "href=\""]
        .iter()
        .flat_map(|attr| page.split(attr).skip(1))
        .filter_map(|rest| rest.split('"').next())
        .filter(|target| !target.starts_with('#'))
        .map(str::to_owned)
        .collect();
    let mut served = Vec::new();
    while let Some(file) = pending.pop() {
        assert!(
            !file.contains(':') && !file.starts_with('/'),
            "{file}: the console loads nothing from elsewhere"
        );
        if served.contains(&file) {
            continue;
        }
        let (status, content_type, body) = fetch(&api, &format!("/console/{file}")).await;
        assert_eq!(status, 200, "{file}");
        let expected = match file.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            other => panic!("{file}: unexpected kind {other:?}"),
        };
        assert_eq!(content_type, expected, "{file}");
        if file.ends_with(".js") {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!body.contains(sink), "{file} uses {sink}");
            }
            pending.extend(
                body.split("from \"./")
                    .skip(1)
                    .filter_map(|rest| rest.split('"').next())
                    .map(str::to_owned),
            );
        }
        served.push(file);
    }
    served.sort();
    assert_eq!(
        served,
        [
            "api.js",
            "app.js",
            "console.css",
            "deliveries.js",
            "dom.js",
            "icon.svg",
            "overview.js",
            "webhook.js",
            "webhooks.js"
        ]
    );

    let (status, _, _) = fetch(&api, "/console/missing.js").await;
    assert_eq!(status, 404);
    let (status, err) = api.call("GET", "/api/nothing/", None, None).await;
    assert_eq!(
        (status, err["detail"].clone()),
        (404, json!("Not found.")),
        "the API's own 404 is untouched"
    );
}

/// The API's view, to check what the console did.
async fn api_get(api: &ApiClient, path: &str, token: &str) -> Value {
    let (status, body) = api.call("GET", path, Some(token), None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_webhooks_end_to_end_in_the_console_and_another_organization_sees_none_of_it()
{
    let started = Instant::now();
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    // The first event's first attempt fails (the test ping comes first), so its retry succeeds.
    rx.script("/hook", |n| {
        (if n == 1 { 503 } else { 200 }, vec![], Duration::ZERO)
    });
    rx.body("/hook", HOSTILE_EXCERPT);
    rx.script("/down", |_| (500, vec![], Duration::ZERO));
    let actions = actions_file(
        "console",
        r#"[{"action": "TASK_COMPLETED", "name": "Task completed", "key": "task", "many": false}]"#,
    );
    let served = env
        .serve(&[
            ("WEBHOOKD_ACTIONS_FILE", actions.to_str().unwrap()),
            // Slow enough that a replay is still running when the person cancels it.
            ("WEBHOOKD_REPLAY_RATE", "0.2"),
        ])
        .await;
    let api = &served.api;
    let (one, two) = (env.token(1).await, env.token(2).await);
    let b = Browser::start().await;

    // Signing in: the root leads to the console; a wrong token is refused in place; Enter signs in.
    b.goto(&api.url("/")).await;
    assert!(b.client.current_url().await.unwrap().path() == "/console/");
    b.find("#token").await;
    b.assert_labelled("sign-in").await;
    b.screenshot("sign-in").await;
    b.fill("#token", "0123456789abcdef\u{E007}").await;
    b.wait_text("#token-error", "Invalid token.").await;
    b.fill("#token", &format!("{one}{ENTER}")).await;
    b.wait_text("#who", "Organization 1").await;
    b.wait_text("h1", "At a glance").await;
    b.click("a[data-nav=webhooks]").await;
    b.wait_text("main", "No webhooks yet").await;

    // A new webhook: a URL the API refuses, its message next to the field, then fixed.
    b.click("#new-webhook").await;
    b.fill("#url", "ftp://127.0.0.1/hook").await;
    b.click("#actions-chosen").await;
    b.find("#action-TASK_COMPLETED").await; // the custom action is in the catalog shown
    b.click("#action-ANNOTATION_CREATED").await;
    b.click("#action-TASK_COMPLETED").await;
    b.click("#add-header").await;
    b.fill(".header-row:last-child .header-name", "X-Team")
        .await;
    b.fill(".header-row:last-child .header-value", "ml").await;
    b.assert_labelled("the webhook form").await;
    b.click("#save").await;
    b.wait_text("#url-error", "Enter a valid URL.").await;
    let url = b.find("#url").await;
    assert_eq!(
        url.attr("aria-invalid").await.unwrap().as_deref(),
        Some("true")
    );
    let focused = b.script("return document.activeElement.id;", vec![]).await;
    assert_eq!(focused, "url", "the field in error has the focus");
    b.screenshot("webhook-form").await;
    b.fill("#url", &rx.url("/hook")).await;
    b.click("#save").await;
    b.wait_text("h1", &rx.url("/hook")).await;
    let route = b.route().await;
    let id: i64 = route
        .strip_prefix("/webhooks/")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("on the new webhook's page, not {route}"));
    let hook = api_get(api, &format!("/api/webhooks/{id}/"), &one).await;
    assert_eq!(
        (
            &hook["project"],
            &hook["send_for_all_actions"],
            &hook["actions"],
            &hook["headers"]
        ),
        (
            &Value::Null,
            &json!(false),
            &json!(["ANNOTATION_CREATED", "TASK_COMPLETED"]),
            &json!({"X-Team": "ml"})
        )
    );

    // Testing the connection: the receiver's answer is shown as text, never as markup.
    b.click("#test-webhook").await;
    b.wait_text("#test-result", "HTTP 200").await;
    assert_eq!(b.text("#test-response").await.trim(), HOSTILE_EXCERPT);
    assert_eq!(
        b.count("img, b").await,
        0,
        "no element came from the receiver's text"
    );
    assert_ne!(b.client.title().await.unwrap(), "pwned");

    // Events: one to each of the two webhooks; the second webhook's receiver always fails.
    let down = api
        .create_webhook(&one, &json!({"url": rx.url("/down")}))
        .await;
    wait_for("both webhooks in the worker's cache", DEADLINE, || async {
        (api.metric("webhookd_cached_webhooks").await == Some(2.0)).then_some(())
    })
    .await;
    for task in [1, 2] {
        env.publish(&envelope(
            1,
            "ANNOTATION_CREATED",
            Some(json!({"id": 7})),
            json!({"annotation": {"id": task}, "task": {"id": task}}),
        ))
        .await;
    }
    // /hook: the ping, the first event (503), the second, the first's retry. /down: 3 attempts of each.
    rx.wait_for("/hook", 4, DEADLINE).await;
    wait_for("both deliveries to /down dead", DEADLINE, || async {
        let page = api_get(api, "/api/deliveries/?status=dead", &one).await;
        (page["results"].as_array()?.len() == 2).then_some(())
    })
    .await;

    // The webhook's log: four attempts, newest first; the failed one by its filter, then opened.
    b.click("#log-refresh").await;
    b.wait_count("#log tr[data-attempt]", 4).await;
    b.select("#log-status", "failed").await;
    b.click("#log-apply").await;
    b.wait_count("#log tr[data-attempt]", 1).await;
    assert_eq!(b.count("#log tr[data-status=failed]").await, 1);
    b.click("#log tr[data-status=failed] a").await;
    b.wait_text("h1", "Delivery msg_").await;
    b.wait_text("#request-headers", "X-Team").await;
    let signature = b.text("#signature-headers").await;
    assert!(
        signature.contains("webhook-signature") && signature.contains("<redacted>"),
        "{signature}"
    );
    assert!(b
        .text("#request-body")
        .await
        .contains("\"ANNOTATION_CREATED\""));
    assert_eq!(b.count(".attempt").await, 2);
    assert_eq!(
        b.count(".attempt[aria-current=true]").await,
        1,
        "the attempt opened"
    );
    b.wait_text(".attempt[data-status=failed] .attempt-error", "HTTP 503")
        .await;
    let delivery = b.route().await;
    let delivery = delivery
        .strip_prefix("/deliveries/")
        .and_then(|d| d.split('?').next())
        .unwrap()
        .to_owned();

    // Redelivering it: a third attempt, made by the worker, shown when it is logged.
    b.click("#redeliver").await;
    b.wait_text("#redeliver-result", "Attempt 3: succeeded (HTTP 200)")
        .await;
    b.wait_count(".attempt", 3).await;
    let last = rx.requests("/hook").pop().unwrap();
    assert_eq!(
        last.header("webhook-id").as_deref(),
        Some(delivery.as_str())
    );
    b.screenshot("delivery").await;

    // The organization's log, across both webhooks, filtered; the filters stay in the address.
    b.click("a[data-nav=deliveries]").await;
    b.wait_count("#org-log tr[data-attempt]", 11).await;
    b.screenshot("log").await;
    b.select("#org-log-status", "dead").await;
    b.click("#org-log-apply").await;
    b.wait_count("#org-log tr[data-attempt]", 2).await;
    assert_eq!(
        b.text("#org-log tbody")
            .await
            .matches(&format!("Webhook {down}"))
            .count(),
        2
    );
    assert!(b.route().await.contains("status=dead"));
    b.assert_labelled("the delivery log").await;

    // At a glance: 11 attempts this hour (5 to /hook with the ping, 6 to /down), /down failing now.
    b.click("a[data-nav=overview]").await;
    b.wait_text("#failing", &rx.url("/down")).await;
    assert_eq!(
        b.text("#hour-title + dl [data-figure=attempts]").await,
        "11"
    );
    assert_eq!(b.text("#hour-title + dl [data-figure=failures]").await, "7");
    assert_eq!(b.text("#hour-title + dl [data-figure=dead]").await, "2");
    assert!(!b.text("#failing").await.contains(&rx.url("/hook")));
    assert!(b
        .text("#failing")
        .await
        .contains("6 failed attempts in a row"));
    b.screenshot("overview").await;

    // The signing secret: revealed, rotated with its grace period; the receiver's snippet.
    b.goto(&api.url(&format!("/console/#/webhooks/{id}"))).await;
    b.click("#reveal-secret").await;
    let secret = api_get(api, &format!("/api/webhooks/{id}/secret/"), &one).await;
    b.wait_text("#secret-key", secret["key"].as_str().unwrap())
        .await;
    b.click("#rotate-secret").await;
    b.click("#dialog-confirm").await;
    b.wait_text("#secret-grace", "keeps signing alongside it until")
        .await;
    let rotated = api_get(api, &format!("/api/webhooks/{id}/secret/"), &one).await;
    assert_ne!(rotated, secret);
    assert_eq!(
        b.text("#secret-key").await,
        rotated["key"].as_str().unwrap()
    );
    b.click(".snippet summary").await;
    b.wait_text(".snippet", "wh.verify(raw_body, headers)")
        .await;

    // A replay of the last hour: its progress, then cancelled.
    b.click("#start-replay").await;
    b.wait_text("#replay-result", "Replay started: 2 events to send.")
        .await;
    b.find("#replays tr[data-state=running]").await;
    b.screenshot("webhook").await;
    b.click("[data-cancel-replay]").await;
    b.find("#replays tr[data-state=cancelled]").await;

    // Recovering the failing webhook's dead deliveries.
    b.goto(&api.url(&format!("/console/#/webhooks/{down}")))
        .await;
    b.click("#recover").await;
    b.wait_text("#recover-result", "Queued 2 deliveries").await;
    b.assert_labelled("a webhook").await;

    b.goto(&api.url("/console/#/webhooks")).await;
    b.wait_count("tr[data-webhook]", 2).await;
    b.screenshot("webhooks").await;

    // On a phone-sized screen, nothing is wider than the screen.
    b.client.set_window_size(390, 844).await.unwrap();
    for page in [
        "#/webhooks",
        "#/deliveries",
        format!("#/deliveries/{delivery}").as_str(),
    ] {
        b.goto(&api.url(&format!("/console/{page}"))).await;
        b.find("main h1").await;
        b.find("main table, main .attempt").await;
        let overflow = b
            .script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await;
        assert_eq!(overflow, 0, "{page} fits a 390 px wide screen");
    }
    b.goto(&api.url("/console/#/webhooks")).await;
    b.find("main table").await;
    b.screenshot("narrow").await;
    b.client.set_window_size(1280, 900).await.unwrap();

    // Organization 2 sees none of it, even at organization 1's addresses.
    b.click("#sign-out").await;
    b.wait_text(".sign-in", "Signed out.").await;
    let kept = b.script("return sessionStorage.length;", vec![]).await;
    assert_eq!(kept, 0, "signing out forgets the token");
    b.fill("#token", &format!("{two}{ENTER}")).await;
    b.wait_text("#who", "Organization 2").await;
    b.click("a[data-nav=overview]").await;
    b.wait_text("#failing", "No webhook is failing.").await;
    assert_eq!(b.text("#hour-title + dl [data-figure=attempts]").await, "0");
    b.click("a[data-nav=webhooks]").await;
    b.wait_text("main", "No webhooks yet").await;
    b.click("a[data-nav=deliveries]").await;
    b.wait_text("#org-log", "No attempts match.").await;
    for page in [
        format!("#/webhooks/{id}"),
        format!("#/deliveries/{delivery}"),
    ] {
        b.goto(&api.url(&format!("/console/{page}"))).await;
        b.wait_text("main", "This organization has nothing at this address.")
            .await;
    }

    // Back as organization 1: deleting asks first; Escape keeps the webhook, confirming deletes it.
    b.click("#sign-out").await;
    b.fill("#token", &format!("{one}{ENTER}")).await;
    b.wait_text("#who", "Organization 1").await;
    b.goto(&api.url(&format!("/console/#/webhooks/{id}"))).await;
    b.click("#delete-webhook").await;
    b.find("dialog[open]").await;
    b.find("#dialog-confirm")
        .await
        .send_keys(ESCAPE)
        .await
        .unwrap();
    b.wait_count("dialog", 0).await;
    assert_eq!(
        api.call("GET", &format!("/api/webhooks/{id}/"), Some(&one), None)
            .await
            .0,
        200
    );
    b.click("#delete-webhook").await;
    b.click("#dialog-confirm").await;
    b.wait_text("h1", "Webhooks").await;
    b.wait_count("tr[data-webhook]", 1).await;
    assert_eq!(b.count(&format!("tr[data-webhook=\"{down}\"]")).await, 1);
    assert_eq!(
        api.call("GET", &format!("/api/webhooks/{id}/"), Some(&one), None)
            .await
            .0,
        404
    );

    assert_eq!(
        b.console_errors().await,
        Vec::<String>::new(),
        "no script error, nothing the policy refused"
    );
    b.close().await;
    eprintln!("the console's browser visit took {:?}", started.elapsed());
}
