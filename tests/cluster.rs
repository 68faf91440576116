//! More than one machine (issue 12): webhookd on a three-node RabbitMQ cluster of the test's own
//! (`support::rabbit_cluster`), whose node leading the work queue dies mid-stream.
//!
//! webhookd's topology is declared on the cluster (every queue a quorum queue with a member on each node). Two
//! `webhookd worker` processes consume it, each through a failover proxy over the three nodes (a new
//! connection goes to the first node of its list that accepts it): one whose first choice is the node that
//! leads `<prefix>.work`, one whose first choice is another node. Four producers publish a stream of
//! `EVENTS` events with producer ids, with confirms, to a node that stays up, for two webhooks on a counting
//! receiver. Once `KILL_AT` of the deliveries have been received, the leader's node is SIGKILLed (a machine
//! failure: no clean shutdown, no leadership handed over), and started again `DOWN` later. The test checks
//! that the fault hit:
//! - the work queue elects a new leader on one of the two nodes left;
//! - the worker that was on the dead node logs `broker session ended; reconnecting` and is connected again
//!   (`webhookd_broker_connected` 1), through its proxy, on another node;
//! - the killed node rejoins: one cluster of three again.
//!
//! and, as the README promises, that nothing a producer had confirmed is lost: every (event, webhook) pair is
//! received at least once and every delivery is logged as succeeded in `delivery_attempts`. The duplicates,
//! the election time, the longest wait for a publish confirm and the total time are printed and appended to
//! `<target dir>/tmp/faults-report.txt` (`support::faults::report`).
//!
//! Skipped, saying so, when `WEBHOOKD_TEST_SKIP_RABBIT_CLUSTER=1` (a machine that cannot run extra RabbitMQ
//! nodes); a node that cannot start otherwise fails the test with the reason.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use support::faults::{log_path, report, CountingReceiver, ResilientPublisher, WorkerProcess};
use support::pg_cluster::process_runs;
use support::rabbit_cluster::{skipped, FailoverProxy, RabbitCluster};
use support::{wait_for, PG_BASE};
use webhookd_broker::Topology;
use webhookd_core::RetryPolicy;
use webhookd_store::webhooks::{create_webhook, NewWebhook};
use webhookd_store::{database, migrate, Pool};

const EVENTS: usize = 3000;
const WEBHOOKS: usize = 2;
const PRODUCERS: usize = 4;
/// Time between two events of one producer: the stream lasts about 7.5 s, so that the node dies while events
/// are still being published and delivered.
const PACE: Duration = Duration::from_millis(10);
/// The fraction of the deliveries received when the leader's node is killed.
const KILL_AT: f64 = 0.3;
/// How long the killed node stays down (at least).
const DOWN: Duration = Duration::from_secs(5);
/// The retry schedule `WorkerProcess::spawn` gives the workers (the topology's delay ladder follows from it).
const SCHEDULE: &str = "0.5,1,2,4,8,8";
/// The longest the whole stream (publishing, the fault, the restart) may take.
const STREAM_DEADLINE: Duration = Duration::from_secs(120);
/// The longest the deliveries may take to complete once the stream is over.
const SETTLE: Duration = Duration::from_secs(90);
/// The longest the receiver may go without a new delivery before the stream counts as stuck.
const NO_PROGRESS_LIMIT: Duration = Duration::from_secs(30);
/// The worker's log line when its broker connection is gone.
const SESSION_ENDED: &str = "broker session ended; reconnecting";
const CONNECTED: &str = "webhookd_broker_connected";

/// The tests of this file start RabbitMQ nodes: one at a time, they share two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One stream: a database on the shared PostgreSQL, webhookd's topology on the cluster, two webhooks on a
/// counting receiver.
struct Stream {
    name: String,
    pool: Pool,
    exchange: String,
    receiver: CountingReceiver,
    /// Events whose publish the broker has confirmed.
    published: AtomicUsize,
}

impl Stream {
    async fn new(cluster: &RabbitCluster) -> Self {
        let name = format!(
            "whcluster_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        migrate::migrate(&format!("{PG_BASE}/{name}"))
            .await
            .expect("migrate the test database");
        let pool = database::pool(&format!("{PG_BASE}/{name}"), 4).unwrap();
        let receiver = CountingReceiver::start().await;
        let mut client = pool.get().await.unwrap();
        for path in ["/a", "/b"] {
            create_webhook(&mut client, &NewWebhook::new(1, None, receiver.url(path)))
                .await
                .unwrap();
        }
        let exchange = format!("{name}.events");
        let schedule = RetryPolicy::parse_schedule(SCHEDULE).unwrap();
        let topology = Topology::new(
            &exchange,
            &name,
            RetryPolicy::new(schedule, true).longest_wait(),
        );
        let conn = webhookd_broker::connect(&cluster.nodes[0].url(), "webhookd-cluster-setup")
            .await
            .expect("connect to the cluster's first node");
        topology
            .declare(&conn.create_channel().await.unwrap())
            .await
            .expect("declare webhookd's topology on the cluster");
        let _ = conn.close(200, "declared".into()).await;
        Self {
            name,
            pool,
            exchange,
            receiver,
            published: AtomicUsize::new(0),
        }
    }

    fn work_queue(&self) -> String {
        format!("{}.work", self.name)
    }

    fn worker(&self, amqp_url: &str) -> WorkerProcess {
        WorkerProcess::spawn(
            &format!("{PG_BASE}/{}", self.name),
            amqp_url,
            &self.exchange,
            &self.name,
        )
    }

    /// Publishes the stream with confirms from `PRODUCERS` connections to `url`, each paced by `PACE`.
    /// Returns the publishers' reconnections and the longest a publish waited for its confirm.
    async fn publish_all(&self, url: &str) -> (usize, Duration) {
        let longest = Mutex::new(Duration::ZERO);
        let producers = (0..PRODUCERS).map(|k| {
            let (url, exchange, longest) = (url.to_owned(), self.exchange.clone(), &longest);
            async move {
                let mut publisher = ResilientPublisher::new(&url, &exchange);
                let mut pace = tokio::time::interval(PACE);
                for n in (k..EVENTS).step_by(PRODUCERS) {
                    pace.tick().await;
                    let id = format!("c-{n}");
                    let body = json!({"version": 1, "id": id, "organization": 1, "action": "PROJECT_DELETED",
                        "project": null, "payload": {"project": {"id": n}}});
                    let sent = Instant::now();
                    publisher
                        .publish("PROJECT_DELETED", body.to_string().as_bytes(), &id)
                        .await;
                    let took = sent.elapsed();
                    let mut longest = longest.lock().unwrap();
                    *longest = (*longest).max(took);
                    self.published.fetch_add(1, Ordering::SeqCst);
                }
                publisher.reconnects
            }
        });
        let reconnects = futures::future::join_all(producers).await.into_iter().sum();
        let longest = *longest.lock().unwrap();
        (reconnects, longest)
    }

    /// Waits until a fraction of the deliveries has been received.
    async fn reached(&self, fraction: f64) {
        let goal = (EVENTS * WEBHOOKS) as f64 * fraction;
        wait_for("the stream under way", Duration::from_secs(120), || async {
            (self.receiver.distinct() as f64 >= goal).then_some(())
        })
        .await;
    }

    /// Deliveries logged as succeeded (distinct `delivery_id`s), or `None` if the database cannot say now.
    async fn logged(&self) -> Option<usize> {
        let client = self.pool.get().await.ok()?;
        let row = client
            .query_one(
                "SELECT count(DISTINCT delivery_id) FROM delivery_attempts WHERE outcome = 'succeeded'",
                &[],
            )
            .await
            .ok()?;
        Some(row.get::<_, i64>(0) as usize)
    }

    /// Waits for every pair to be received and logged as succeeded; panics after `SETTLE` with what is
    /// missing and what the queues still hold.
    async fn complete(&self, cluster: &RabbitCluster) {
        let expected = EVENTS * WEBHOOKS;
        let deadline = Instant::now() + SETTLE;
        loop {
            let received = self.receiver.distinct();
            let logged = self.logged().await.unwrap_or(0);
            if received == expected && logged == expected {
                return;
            }
            if Instant::now() > deadline {
                let queues = cluster
                    .cli(
                        "rabbitmqctl",
                        &[
                            "-n",
                            &cluster.nodes[1].name,
                            "list_queues",
                            "name",
                            "messages_ready",
                            "messages_unacknowledged",
                            "leader",
                            "online",
                        ],
                    )
                    .await
                    .unwrap_or_else(|e| e);
                panic!(
                    "{SETTLE:?} after the stream: {received} of {expected} (event, webhook) pairs received, \
                     {logged} logged as succeeded ({} requests); worker log: {}; the cluster's queues:\n{queues}",
                    self.receiver.requests(),
                    log_path(&self.name).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // The workers' warnings are kept only to explain a failure.
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

/// What the fault did, as seen from outside.
struct Fault {
    delivered_before: usize,
    published_before: usize,
    new_leader: usize,
    elected_in: Duration,
    reconnected_in: Duration,
    rejoined_in: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_the_work_queue_dies_mid_stream_and_nothing_is_lost() {
    if skipped("the_node_leading_the_work_queue_dies_mid_stream_and_nothing_is_lost") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let booting = Instant::now();
    let cluster = RabbitCluster::start(3).await;
    let booted_in = booting.elapsed();
    let started = Instant::now();
    let s = Stream::new(&cluster).await;
    let work = s.work_queue();

    // The work queue is replicated on the three nodes, and one of them leads it.
    let status = wait_for(
        "the work queue's leader",
        Duration::from_secs(30),
        || async {
            let status = cluster.quorum_status(&work, 1).await.ok()?;
            status.leader()?;
            Some(status)
        },
    )
    .await;
    let mut members: Vec<String> = status.members.iter().map(|(n, _)| n.clone()).collect();
    members.sort();
    let mut nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    nodes.sort();
    assert_eq!(members, nodes, "the work queue has a member on every node");
    let leader = cluster
        .nodes
        .iter()
        .position(|n| Some(n.name.as_str()) == status.leader())
        .expect("the leader is one of the nodes");
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (first_follower, second_follower) = (others[0], others[1]);
    let addr = |i: usize| cluster.nodes[i].addr();

    // One worker whose first choice is the leader's node, one whose first choice is a follower's.
    let to_leader = FailoverProxy::start(vec![
        addr(leader),
        addr(first_follower),
        addr(second_follower),
    ])
    .await;
    let to_follower = FailoverProxy::start(vec![
        addr(first_follower),
        addr(second_follower),
        addr(leader),
    ])
    .await;
    let mut on_leader = s.worker(&to_leader.url());
    let mut on_follower = s.worker(&to_follower.url());
    for worker in [&on_leader, &on_follower] {
        worker
            .wait_metric(CONNECTED, 1.0, Duration::from_secs(60))
            .await;
    }
    let routed = to_leader.routed();
    assert!(
        routed[0].1 > 0 && routed[1..].iter().all(|(_, n)| *n == 0),
        "the first worker is on the leader's node: {routed:?}"
    );

    // The producers publish to a node that stays up.
    let producers_url = cluster.nodes[second_follower].url();
    let publish = s.publish_all(&producers_url);
    let killed_at: OnceLock<Instant> = OnceLock::new();
    let fault = async {
        s.reached(KILL_AT).await;
        let (delivered_before, published_before) =
            (s.receiver.distinct(), s.published.load(Ordering::SeqCst));
        let ended_before = on_leader.logged(SESSION_ENDED).len();
        cluster.kill(leader);
        let killed = Instant::now();
        let _ = killed_at.set(killed);
        // A new leader, on one of the two nodes left ...
        let election = async {
            let new_leader = wait_for(
                "a new leader of the work queue",
                Duration::from_secs(60),
                || async {
                    let now = cluster.leader_of(&work, first_follower).await.ok()??;
                    (now != leader).then_some(now)
                },
            )
            .await;
            (new_leader, killed.elapsed())
        };
        // ... the worker that was on the dead node lost its connection, and is back on another one ...
        let reconnection = async {
            on_leader
                .wait_logged(SESSION_ENDED, ended_before + 1, Duration::from_secs(30))
                .await;
            on_leader
                .wait_metric(CONNECTED, 1.0, Duration::from_secs(60))
                .await;
            killed.elapsed()
        };
        let ((new_leader, elected_in), reconnected_in) = tokio::join!(election, reconnection);
        // ... and the node comes back, and rejoins.
        tokio::time::sleep(DOWN.saturating_sub(killed.elapsed())).await;
        cluster
            .restart(leader)
            .await
            .unwrap_or_else(|e| panic!("the killed node did not come back: {e}"));
        Fault {
            delivered_before,
            published_before,
            new_leader,
            elected_in,
            reconnected_in,
            rejoined_in: killed.elapsed(),
        }
    };
    // The longest time without a new delivery, from the kill on (what receivers see of the election).
    let pause = async {
        let expected = EVENTS * WEBHOOKS;
        let (mut last, mut progressed, mut longest) = (0, Instant::now(), Duration::ZERO);
        while last < expected && progressed.elapsed() < NO_PROGRESS_LIMIT {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = s.receiver.distinct();
            if now > last {
                if killed_at.get().is_some_and(|&k| Instant::now() > k) {
                    longest = longest.max(progressed.elapsed());
                }
                (last, progressed) = (now, Instant::now());
            }
        }
        longest
    };
    let ((reconnects, longest_confirm), fault, longest_pause) =
        tokio::time::timeout(STREAM_DEADLINE, async {
            tokio::join!(publish, fault, pause)
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
            "the stream and the fault took more than {STREAM_DEADLINE:?}; {} deliveries received, \
                     {} events published; worker log: {}",
            s.receiver.distinct(),
            s.published.load(Ordering::SeqCst),
            log_path(&s.name).display()
        )
        });
    s.complete(&cluster).await;
    let expected = EVENTS * WEBHOOKS;
    let duplicates = s.receiver.requests() - expected;
    let seconds = started.elapsed().as_secs_f64();

    // The fault came in the middle of the stream: events were still being published and delivered.
    assert!(
        fault.delivered_before < expected && fault.published_before < EVENTS,
        "the node died after the stream: {} deliveries received, {} events published",
        fault.delivered_before,
        fault.published_before
    );
    assert_ne!(fault.new_leader, leader);
    // The first worker is on another node now, through its proxy.
    let routed = to_leader.routed();
    assert!(
        routed[1..].iter().any(|(_, n)| *n > 0),
        "the first worker reconnected elsewhere: {routed:?}"
    );
    // The worker on a node that stayed up kept its connection and its consumers through the election.
    let follower_sessions_ended = on_follower.logged(SESSION_ENDED).len();
    assert_eq!(
        follower_sessions_ended,
        0,
        "the worker on a surviving node lost its broker session: {:?}",
        on_follower.logged(SESSION_ENDED)
    );
    let (status, body) = on_leader.get("/readyz").await.expect("read /readyz");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"database":"ok","broker":"ok","writers":"ok"}"#)
    );
    let line = report(
        "cluster of 3: the node leading the work queue SIGKILLed, back 5 s later",
        expected,
        duplicates,
        seconds,
    );
    println!(
        "cluster: 3 nodes up and clustered in {:.1} s; the node leading {work} ({}) killed after {} deliveries \
         and {} events published; new leader {} elected within {:.1} s (as seen by the CLI); the worker that was \
         on it back on another node within {:.1} s; the node rejoined within {:.1} s; the longest pause in \
         deliveries after the kill {:.2} s; the other worker's sessions ended: {follower_sessions_ended}; \
         publisher reconnects: {reconnects}, longest wait for a confirm {:.2} s; proxies: first worker \
         {routed:?}, second worker {:?}\n{line}",
        booted_in.as_secs_f64(),
        cluster.nodes[leader].name,
        fault.delivered_before,
        fault.published_before,
        cluster.nodes[fault.new_leader].name,
        fault.elected_in.as_secs_f64(),
        fault.reconnected_in.as_secs_f64(),
        fault.rejoined_in.as_secs_f64(),
        longest_pause.as_secs_f64(),
        longest_confirm.as_secs_f64(),
        to_follower.routed(),
    );
    on_leader.kill().await;
    on_follower.kill().await;

    // Dropping the cluster stops every node and removes its files.
    let root = cluster.root().to_owned();
    let pids: Vec<u32> = cluster
        .nodes
        .iter()
        .flat_map(|n| [n.pid(), n.vm_pid()])
        .flatten()
        .collect();
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(pids.len(), 6, "every node runs at the end");
    drop(cluster);
    assert_gone(&root, &pids, &names).await;
}

/// The support's own promises, on a cluster of one node: a node stopped cleanly (`rabbitmqctl stop`) is gone
/// and starts again with its data; a test that panics with its cluster running leaves no node and no file
/// behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_and_starts_again_and_a_panicking_test_leaves_nothing_behind() {
    if skipped("a_node_stops_and_starts_again_and_a_panicking_test_leaves_nothing_behind") {
        return;
    }
    let _serial = SERIAL.lock().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let doomed = RabbitCluster::start(1).await;
        let node = &doomed.nodes[0];
        // It runs: AMQP answers, and the CLI reaches it. A durable queue declared now ...
        let queue = "whcluster.kept";
        let conn = webhookd_broker::connect(&node.url(), "webhookd-cluster-doomed")
            .await
            .expect("connect to the node");
        let declare = |conn: lapin::Connection, passive: bool| async move {
            let channel = conn.create_channel().await?;
            let options = lapin::options::QueueDeclareOptions {
                passive,
                durable: true,
                ..Default::default()
            };
            let args = lapin::types::FieldTable::default();
            channel.queue_declare(queue.into(), options, args).await?;
            conn.close(200, "bye".into()).await
        };
        declare(conn, false).await.expect("declare a queue");
        assert_eq!(
            doomed.running_nodes(0).await.expect("cluster_status"),
            vec![node.name.clone()]
        );
        // ... stopped cleanly: gone ...
        doomed.stop(0).await.expect("rabbitmqctl stop");
        assert!(node.pid().is_none());
        assert!(
            tokio::net::TcpStream::connect(node.addr()).await.is_err(),
            "a stopped node answers"
        );
        // ... started again, with its data ...
        doomed.restart(0).await.expect("start the node again");
        let conn = webhookd_broker::connect(&node.url(), "webhookd-cluster-doomed")
            .await
            .expect("connect to the node started again");
        declare(conn, true)
            .await
            .expect("the queue declared before the stop is still there");
        let _ = tx.send((
            doomed.root().to_owned(),
            [node.pid(), node.vm_pid()],
            node.name.clone(),
            node.addr(),
        ));
        // ... and a test failing now drops it while it runs.
        panic!("a test fails with its cluster running");
    });
    assert!(task.await.unwrap_err().is_panic());
    let (root, pids, name, addr) = rx
        .await
        .expect("the node started, stopped and started again");
    let pids: Vec<u32> = pids.into_iter().flatten().collect();
    assert_eq!(pids.len(), 2, "its processes were known");
    assert_gone(&root, &pids, &[name]).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "its AMQP port {addr} still answers"
    );
}

/// The cluster's directory is gone, its processes have exited, and epmd no longer lists its nodes (a killed
/// VM's zombie and its epmd registration may outlive the drop by moments: 10 s at most).
async fn assert_gone(root: &std::path::Path, pids: &[u32], names: &[String]) {
    assert!(!root.exists(), "{} left behind", root.display());
    let shorts: Vec<String> = names
        .iter()
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect();
    wait_for(
        "the nodes' processes gone and their names out of epmd",
        Duration::from_secs(10),
        || async {
            let running: Vec<u32> = pids.iter().copied().filter(|&p| process_runs(p)).collect();
            let registered = std::process::Command::new("epmd")
                .arg("-names")
                .output()
                .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
                .unwrap_or_default();
            let listed = shorts
                .iter()
                .any(|short| registered.contains(&format!("name {short} ")));
            (running.is_empty() && !listed).then_some(())
        },
    )
    .await;
}
