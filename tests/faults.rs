//! Fault injection with real processes and services, all on 127.0.0.1: while a stream of 5,000 events
//! flows to two webhooks, one fault happens; afterwards every (event, webhook) pair was received at least
//! once and every delivery is logged as succeeded. Each test reports its duplicates: printed (seen with
//! `-- --nocapture`) and appended to `<target dir>/tmp/faults-report.txt` (see `support::faults::report`).
//! The tests that cut a connection also check, through the worker's `/metrics` and log, that the worker
//! really lost it and got it back. The tests run one at a time (they compete for the same two cores) and
//! each uses its own database and RabbitMQ vhost. One test has no stream: a worker whose broker never finishes
//! the handshake is stopped, and only how it stops is checked.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::faults::{
    log_path, rabbitmqctl, report, report_path, CountingReceiver, Proxy, ResilientPublisher, Vhost,
    WorkerProcess,
};
use support::{wait_for, PG_BASE};
use webhookd_broker::Topology;
use webhookd_core::RetryPolicy;
use webhookd_store::webhooks::{create_webhook, NewWebhook};
use webhookd_store::{database, migrate, Pool};

const EVENTS: usize = 5000;
const WEBHOOKS: usize = 2;
const OUTAGE: Duration = Duration::from_secs(10);
/// The most failed writes a worker may make in one `OUTAGE` of its database. Each of its two batching
/// writers (event claims, delivery log) retries with backoff from 0.1 s growing 1.5× per try up to 5 s,
/// each wait jittered by ±50 %: even at the shortest waits that is 12 tries in 10.5 s, so at most 24 in
/// all. A worker that spun would fail thousands of times.
const MAX_WRITE_FAILURES_PER_OUTAGE: f64 = 30.0;
/// The worker's log line when its broker connection is gone.
const SESSION_ENDED: &str = "broker session ended; reconnecting";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rabbit() -> SocketAddr {
    "127.0.0.1:5672".parse().unwrap()
}

fn postgres() -> SocketAddr {
    "127.0.0.1:5432".parse().unwrap()
}

/// One stream: a database, a vhost with webhookd's topology, two webhooks on a counting receiver.
struct Stream {
    name: String,
    pool: Pool,
    vhost: Vhost,
    exchange: String,
    receiver: CountingReceiver,
    started: Instant,
}

impl Stream {
    async fn new(tag: &str) -> Self {
        let name = format!(
            "whfault_{tag}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let database_url = format!("{PG_BASE}/{name}");
        migrate::migrate(&database_url).await.unwrap();
        let pool = database::pool(&database_url, 4).unwrap();
        let receiver = CountingReceiver::start().await;
        let mut client = pool.get().await.unwrap();
        for path in ["/a", "/b"] {
            create_webhook(&mut client, &NewWebhook::new(1, None, receiver.url(path)))
                .await
                .unwrap();
        }
        let vhost = Vhost::create(&name);
        let exchange = format!("{name}.events");
        let schedule = RetryPolicy::parse_schedule("0.5,1,2,4,8,8").unwrap();
        let topology = Topology::new(
            &exchange,
            &name,
            RetryPolicy::new(schedule, true).longest_wait(),
        );
        let conn = webhookd_broker::connect(&vhost.url(rabbit()), "webhookd-fault-setup")
            .await
            .unwrap();
        topology
            .declare(&conn.create_channel().await.unwrap())
            .await
            .unwrap();
        let _ = conn.close(200, "declared".into()).await;
        Self {
            name,
            pool,
            vhost,
            exchange,
            receiver,
            started: Instant::now(),
        }
    }

    fn database_url(&self, via: SocketAddr) -> String {
        format!("postgres://postgres@{via}/{}", self.name)
    }

    fn worker(&self, db: SocketAddr, amqp: SocketAddr) -> WorkerProcess {
        WorkerProcess::spawn(
            &self.database_url(db),
            &self.vhost.url(amqp),
            &self.exchange,
            &self.name,
        )
    }

    /// Publishes the whole stream with confirms, from four connections at once.
    async fn publish_all(&self) -> usize {
        const PUBLISHERS: usize = 4;
        let url = self.vhost.url(rabbit());
        let tasks = (0..PUBLISHERS).map(|k| {
            let (url, exchange) = (url.clone(), self.exchange.clone());
            async move {
                let mut publisher = ResilientPublisher::new(&url, &exchange);
                for n in (k..EVENTS).step_by(PUBLISHERS) {
                    let id = format!("f-{n}");
                    let body = json!({"version": 1, "id": id, "organization": 1, "action": "PROJECT_DELETED",
                        "project": null, "payload": {"project": {"id": n}}});
                    publisher.publish("PROJECT_DELETED", body.to_string().as_bytes(), &id).await;
                }
                publisher.reconnects
            }
        });
        futures::future::join_all(tasks).await.into_iter().sum()
    }

    /// Waits until a fraction of the deliveries has been received.
    async fn reached(&self, fraction: f64) {
        let goal = (EVENTS * WEBHOOKS) as f64 * fraction;
        wait_for("the stream under way", Duration::from_secs(120), || async {
            (self.receiver.distinct() as f64 >= goal).then_some(())
        })
        .await;
    }

    /// Waits for every pair to be received and logged; returns the number of duplicate requests.
    async fn complete(&self, what: &str) -> usize {
        let expected = EVENTS * WEBHOOKS;
        let waiting = format!(
            "every (event, webhook) pair received (worker warnings: {})",
            log_path(&self.name).display()
        );
        wait_for(&waiting, Duration::from_secs(180), || async {
            (self.receiver.distinct() == expected).then_some(())
        })
        .await;
        let pool = &self.pool;
        wait_for("every delivery logged as succeeded", Duration::from_secs(60), || async move {
            let client = pool.get().await.ok()?;
            let row = client
                .query_one("SELECT count(DISTINCT delivery_id) FROM delivery_attempts WHERE outcome = 'succeeded'", &[])
                .await
                .ok()?;
            (row.get::<_, i64>(0) as usize == expected).then_some(())
        })
        .await;
        let duplicates = self.receiver.requests() - expected;
        let seconds = self.started.elapsed().as_secs_f64();
        println!(
            "fault {what}: {expected} deliveries complete in {seconds:.1} s; {} requests, {duplicates} duplicates",
            self.receiver.requests()
        );
        let line = report(what, expected, duplicates, seconds);
        let written = std::fs::read_to_string(report_path()).unwrap_or_default();
        assert!(
            written.contains(&line),
            "{} lacks {line:?}",
            report_path().display()
        );
        duplicates
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Workers are gone by now; give a killed one a moment to vanish before its vhost does.
        std::thread::sleep(Duration::from_millis(300));
        // The warnings are kept only to explain a failure.
        if std::thread::panicking() {
            eprintln!("worker warnings: {}", log_path(&self.name).display());
        } else {
            let _ = std::fs::remove_file(log_path(&self.name));
        }
        let url = format!("{PG_BASE}/{}", self.name);
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let _ = database::drop_database(&url).await;
                });
            }
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_and_restarted() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("kill").await;
    let mut worker = s.worker(postgres(), rabbit());
    let fault = async {
        s.reached(0.3).await;
        worker.kill().await;
        s.worker(postgres(), rabbit())
    };
    let (_, mut restarted) = tokio::join!(s.publish_all(), fault);
    s.complete("worker SIGKILLed and restarted").await;
    restarted.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_and_one_killed() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("two").await;
    let mut one = s.worker(postgres(), rabbit());
    let mut two = s.worker(postgres(), rabbit());
    let fault = async {
        s.reached(0.3).await;
        one.kill().await;
    };
    tokio::join!(s.publish_all(), fault);
    s.complete("one of two workers SIGKILLed").await;
    two.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_connection_closed() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("close").await;
    let mut worker = s.worker(postgres(), rabbit());
    let fault = async {
        s.reached(0.3).await;
        let before = worker.logged(SESSION_ENDED).len();
        rabbitmqctl(&[
            "-q",
            "close_all_connections",
            "--vhost",
            &s.vhost.name,
            "fault injection",
        ]);
        // The worker noticed (its gauge may be 0 for only a fraction of a second, so the log says it).
        worker
            .wait_logged(SESSION_ENDED, before + 1, Duration::from_secs(30))
            .await;
    };
    let (reconnects, ()) = tokio::join!(s.publish_all(), fault);
    s.complete("every broker connection closed").await;
    println!("publisher reconnects: {reconnects}");
    // ... and came back by itself.
    worker
        .wait_metric("webhookd_broker_connected", 1.0, Duration::from_secs(30))
        .await;
    worker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_terminated() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("term").await;
    let mut worker = s.worker(postgres(), rabbit());
    let fault = async {
        s.reached(0.3).await;
        let admin = database::pool(&format!("{PG_BASE}/postgres"), 1).unwrap();
        let client = admin.get().await.unwrap();
        let killed = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&s.name],
            )
            .await
            .unwrap();
        assert!(
            killed.get::<_, i64>(0) > 0,
            "no worker connection was terminated"
        );
    };
    tokio::join!(s.publish_all(), fault);
    s.complete("database connections terminated").await;
    worker.kill().await;
}

/// The database refuses every write for a while, as a standby does (SQLSTATE 25006, read-only transaction):
/// what a worker meets during a failover when its connections land on a server that is not (yet) the
/// primary. Made with `default_transaction_read_only` on the stream's database and its sessions terminated, so
/// that the worker's new connections are read-only; then the same, back to read-write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_read_only_for_five_seconds() {
    const READ_ONLY: Duration = Duration::from_secs(5);
    let _serial = SERIAL.lock().await;
    let s = Stream::new("readonly").await;
    let mut worker = s.worker(postgres(), rabbit());
    let admin = database::pool(&format!("{PG_BASE}/postgres"), 1).unwrap();
    let set_read_only = |on: bool| {
        let (admin, name) = (&admin, &s.name);
        async move {
            let client = admin.get().await.unwrap();
            let setting = if on {
                "SET default_transaction_read_only = on"
            } else {
                "RESET default_transaction_read_only"
            };
            client
                .batch_execute(&format!("ALTER DATABASE \"{name}\" {setting}"))
                .await
                .unwrap();
            client
                .query_one(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[name],
                )
                .await
                .unwrap();
        }
    };
    let refused_as_read_only = || {
        worker
            .logged("database write failed; retrying (nothing is acknowledged meanwhile)")
            .into_iter()
            .filter(|line| line["sqlstate"] == "25006")
            .count()
    };
    let fault = async {
        s.reached(0.3).await;
        set_read_only(true).await;
        // The worker's writes are refused as read-only ... and retried.
        wait_for("a write refused as read-only", READ_ONLY, || async {
            (refused_as_read_only() > 0).then_some(())
        })
        .await;
        tokio::time::sleep(READ_ONLY).await;
        set_read_only(false).await;
    };
    tokio::join!(s.publish_all(), fault);
    s.complete("database read-only for 5 s (a standby)").await;
    println!(
        "writes refused as read-only, then retried: {}",
        refused_as_read_only()
    );
    // Nothing was given up for good: no request refused, no message dead-lettered.
    for series in [
        r#"webhookd_writes_refused_total{writer="event_claim"}"#,
        r#"webhookd_writes_refused_total{writer="delivery_log"}"#,
        "webhookd_dead_letters_total",
    ] {
        assert_eq!(worker.metric(series).await, Some(0.0), "{series}");
    }
    worker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unreachable_for_ten_seconds() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("dbcut").await;
    let proxy = Proxy::start(postgres()).await;
    let mut worker = s.worker(proxy.addr, rabbit());
    let failures = "webhookd_database_write_failures_total";
    let fault = async {
        s.reached(0.3).await;
        let failed_before = worker.metric(failures).await.expect("read /metrics");
        proxy.cut();
        let cut = Instant::now();
        let before = s.receiver.distinct();
        // An operator sees the database down ...
        worker
            .wait_metric("webhookd_database_up", 0.0, OUTAGE / 2)
            .await;
        tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
        let failed = worker.metric(failures).await.expect("read /metrics") - failed_before;
        proxy.restore();
        (before, failed)
    };
    let (_, (before, failed)) = tokio::join!(s.publish_all(), fault);
    s.complete("database unreachable for 10 s").await;
    assert!(
        before < EVENTS * WEBHOOKS,
        "the outage came after the stream"
    );
    // ... writes that failed while it was (so the outage hit the stream) but were retried with backoff,
    // not in a loop ...
    println!("database write failures during the {OUTAGE:?} outage: {failed}");
    assert!(
        (1.0..=MAX_WRITE_FAILURES_PER_OUTAGE).contains(&failed),
        "{failed} database writes failed during the {OUTAGE:?} outage"
    );
    // ... and the database up again.
    worker
        .wait_metric("webhookd_database_up", 1.0, Duration::from_secs(30))
        .await;
    worker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_for_ten_seconds() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("mqcut").await;
    let proxy = Proxy::start(rabbit()).await;
    let mut worker = s.worker(postgres(), proxy.addr);
    let fault = async {
        s.reached(0.3).await;
        let before = worker.logged(SESSION_ENDED).len();
        proxy.cut();
        let cut = Instant::now();
        // The worker lost its connection, as its gauge says ...
        worker
            .wait_metric("webhookd_broker_connected", 0.0, OUTAGE / 2)
            .await;
        tokio::time::sleep(OUTAGE.saturating_sub(cut.elapsed())).await;
        proxy.restore();
        before
    };
    let (_, before) = tokio::join!(s.publish_all(), fault);
    s.complete("broker unreachable for 10 s").await;
    // ... and its log ...
    assert!(
        worker.logged(SESSION_ENDED).len() > before,
        "no {SESSION_ENDED:?} line"
    );
    // ... and it reconnected by itself.
    worker
        .wait_metric("webhookd_broker_connected", 1.0, Duration::from_secs(30))
        .await;
    let (status, body) = worker.get("/readyz").await.expect("read /readyz");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"database":"ok","broker":"ok","writers":"ok"}"#)
    );
    worker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_for_ten_seconds() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("rxdown").await;
    let mut worker = s.worker(postgres(), rabbit());
    let fault = async {
        s.reached(0.3).await;
        s.receiver.down();
        tokio::time::sleep(OUTAGE).await;
        s.receiver.up().await;
    };
    tokio::join!(s.publish_all(), fault);
    s.complete("receiver down for 10 s").await;
    let client = s.pool.get().await.unwrap();
    let failed = client
        .query_one(
            "SELECT count(*) FROM delivery_attempts WHERE outcome = 'failed'",
            &[],
        )
        .await
        .unwrap();
    assert!(
        failed.get::<_, i64>(0) > 0,
        "the outage produced failed attempts that were retried"
    );
    worker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_exits_zero_within_the_grace_period() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("sigterm").await;
    let mut worker = s.worker(postgres(), rabbit());
    let fault = async {
        s.reached(0.3).await;
        let (code, took) = worker.terminate(Duration::from_secs(15)).await;
        assert_eq!(code, Some(0), "SIGTERM ends the worker cleanly");
        assert!(
            took < Duration::from_secs(11),
            "stopped in {took:?}, beyond the 10 s grace period"
        );
        s.worker(postgres(), rabbit())
    };
    let (_, mut next) = tokio::join!(s.publish_all(), fault);
    s.complete("SIGTERM mid-stream").await;
    next.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_answers_nothing_still_exits_in_time() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("mqstall").await;
    let proxy = Proxy::start(rabbit()).await;
    let mut worker = s.worker(postgres(), proxy.addr);
    let fault = async {
        s.reached(0.3).await;
        // The connection stays open but the broker answers nothing: neither the consumers' cancel nor the
        // connection's close gets its reply.
        proxy.stall();
        let (code, took) = worker.terminate(Duration::from_secs(40)).await;
        assert_eq!(code, Some(0), "SIGTERM ends the worker cleanly");
        assert!(
            took < Duration::from_secs(20),
            "stopped in {took:?}: the 10 s grace period and the broker calls' deadlines are far less"
        );
        // Its connection ends at the broker too, which hands what it had not acknowledged to the next worker.
        proxy.cut();
        s.worker(postgres(), rabbit())
    };
    let (_, mut next) = tokio::join!(s.publish_all(), fault);
    s.complete("SIGTERM while the broker answers nothing").await;
    next.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_never_finishes_the_handshake_exits_at_once() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("mqmute").await;
    let proxy = Proxy::start(rabbit()).await;
    // The TCP connection opens, but the broker's side of the AMQP handshake never arrives.
    proxy.stall();
    let mut worker = s.worker(postgres(), proxy.addr);
    wait_for(
        "the worker's connection to the broker, in its handshake",
        Duration::from_secs(30),
        || {
            let connected = proxy.connections() > 0;
            async move { connected.then_some(()) }
        },
    )
    .await;
    let (code, took) = worker.terminate(Duration::from_secs(30)).await;
    assert_eq!(code, Some(0), "SIGTERM ends the worker cleanly");
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_never_finishes_the_handshake_is_given_up_on_and_tried_again() {
    let _serial = SERIAL.lock().await;
    let s = Stream::new("mqhung").await;
    let proxy = Proxy::start(rabbit()).await;
    proxy.stall();
    let mut worker = s.worker(postgres(), proxy.addr);
    // It gives up on the silent broker by itself (20 s) and tries again, as it would to reach another node.
    let given_up = wait_for(
        "the worker to give up on the handshake",
        Duration::from_secs(60),
        || {
            let ended = worker.logged(SESSION_ENDED);
            async move { ended.into_iter().next() }
        },
    )
    .await;
    let error = given_up["error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("did not open the session") && error.contains("20s"),
        "{given_up}"
    );
    // The abandoned attempt's connection is closed, and its I/O thread gone: a broker that stays silent for
    // hours must not collect a connection (and the worker a thread) for every attempt.
    proxy.wait_closed_by_client(1, Duration::from_secs(5)).await;
    wait_for("a second attempt", Duration::from_secs(30), || {
        let attempts = proxy.connections();
        async move { (attempts >= 2).then_some(()) }
    })
    .await;
    wait_for(
        "one lapin I/O thread, the second attempt's",
        Duration::from_secs(5),
        || {
            let threads = worker.threads_named("lapin-io-loop");
            async move { (threads == 1).then_some(()) }
        },
    )
    .await;
    // Once the broker answers, the stream goes through.
    proxy.restore();
    s.publish_all().await;
    s.complete("a broker that never finished the handshake, then answered")
        .await;
    worker.kill().await;
}
