//! Signatures are checked by an implementation webhookd does not contain: the `standardwebhooks` package
//! from PyPI, as a receiver would use it.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::receiver::Receiver;
use support::{envelope, TestEnv};
use webhookd_store::webhooks::NewWebhook;

const VERIFIER: &str = r#"
import json, os, sys
from importlib.metadata import version
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
assert version("standardwebhooks") == os.environ["PINNED"], version("standardwebhooks")
for case in json.load(sys.stdin):
    try:
        Webhook(case["secret"]).verify(case["body"].encode(), case["headers"])
        print("valid")
    except WebhookVerificationError as e:
        print("invalid: " + str(e))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_webhooks_python_library_verifies_signatures_and_rejects_tampering() {
    let python = support::python::python_with("standardwebhooks");
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    let (_, secret) = env
        .webhook(NewWebhook::new(1, Some(7), rx.url("/signed")))
        .await;
    let worker = env.start_worker().await;
    env.publish(&envelope(
        1,
        "ANNOTATION_CREATED",
        Some(json!({"id": 7, "title": "Été"})),
        json!({"annotation": {"id": 17, "lead_time": 1.5}, "task": {"id": 19}}),
    ))
    .await;
    let got = rx.wait_for("/signed", 1, Duration::from_secs(15)).await;
    let r = &got[0];
    let headers = json!({
        "webhook-id": r.header("webhook-id"),
        "webhook-timestamp": r.header("webhook-timestamp"),
        "webhook-signature": r.header("webhook-signature"),
    });
    let body = String::from_utf8(r.body.to_vec()).unwrap();
    let tampered = body.replace("17", "18");
    assert_ne!(body, tampered);
    let mut wrong_id = headers.clone();
    wrong_id["webhook-id"] = json!("msg_other");
    let cases = json!([
        {"secret": secret.expose(), "headers": headers, "body": body},
        {"secret": secret.expose(), "headers": headers, "body": tampered},
        {"secret": secret.expose(), "headers": wrong_id, "body": body},
        {"secret": webhookd_core::SigningSecret::generate().expose(), "headers": headers, "body": body},
    ]);
    let mut child = Command::new(python)
        .args(["-c", VERIFIER])
        .env(
            "PINNED",
            support::python::pinned_version("standardwebhooks"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(cases.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let verdicts: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(verdicts[0], "valid");
    assert!(
        verdicts[1..].iter().all(|v| v.starts_with("invalid")),
        "{verdicts:?}"
    );
    assert_eq!(verdicts.len(), 4);
    worker.stop().await;
}
