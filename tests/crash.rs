//! A worker process killed with SIGKILL in the middle of a stream loses nothing: after a restart every
//! (event, webhook) pair is delivered and logged.

mod support;

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use support::receiver::Receiver;
use support::{envelope, wait_for, TestEnv};
use tokio::process::Child;
use webhookd_store::webhooks::NewWebhook;

const EVENTS: i64 = 2000;

fn spawn_worker(env: &TestEnv) -> Child {
    env.webhookd()
        .arg("worker")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the webhookd binary")
}

/// Distinct (path, project id) pairs received.
fn pairs(rx: &Receiver) -> HashSet<(String, i64)> {
    rx.all()
        .iter()
        .map(|r| (r.path.clone(), r.json()["project"]["id"].as_i64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_no_event_and_no_log_row() {
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    env.webhook(NewWebhook::new(1, None, rx.url("/a"))).await;
    env.webhook(NewWebhook::new(1, None, rx.url("/b"))).await;
    let mut worker = spawn_worker(&env);
    let publish = async {
        for n in 0..EVENTS {
            let mut e = envelope(1, "PROJECT_DELETED", None, json!({"project": {"id": n}}));
            e["id"] = json!(format!("crash-{n}"));
            env.publish(&e).await;
        }
    };
    let kill = async {
        wait_for("deliveries under way", Duration::from_secs(60), || async {
            (rx.all().len() >= 600).then_some(())
        })
        .await;
        worker.start_kill().expect("SIGKILL the worker");
        worker.wait().await.unwrap();
        rx.all().len()
    };
    let ((), at_kill) = tokio::join!(publish, kill);
    assert!(
        pairs(&rx).len() < (2 * EVENTS) as usize,
        "the kill came after everything was delivered"
    );
    let mut restarted = spawn_worker(&env);

    wait_for(
        "every (event, webhook) pair received",
        Duration::from_secs(120),
        || async { (pairs(&rx).len() == (2 * EVENTS) as usize).then_some(()) },
    )
    .await;
    let logged = wait_for("every delivery logged as succeeded", Duration::from_secs(30), || async {
        let r = env
            .query("SELECT count(DISTINCT delivery_id) FROM delivery_attempts WHERE outcome = 'succeeded'", &[])
            .await;
        let n: i64 = r[0].get(0);
        (n == 2 * EVENTS).then_some(n)
    })
    .await;
    assert_eq!(logged, 2 * EVENTS);
    let received = rx.all();
    let ids: HashSet<String> = received
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        (2 * EVENTS) as usize,
        "a redelivered event keeps its webhook-id"
    );
    println!(
        "crash test: killed after {at_kill} requests; {} requests for {} deliveries ({} duplicates)",
        received.len(),
        2 * EVENTS,
        received.len() - (2 * EVENTS) as usize
    );
    restarted.start_kill().unwrap();
    restarted.wait().await.unwrap();
}
