//! Fault-injection tools: a private RabbitMQ vhost, a TCP proxy that can be cut, a counting receiver that
//! can go down, worker processes, and a publisher that rides out broker trouble.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use webhookd_broker::ConfirmedPublisher;

/// Runs `rabbitmqctl` with `args`; panics with its output if it fails.
pub fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A RabbitMQ virtual host of its own, so that closing "all connections" touches only this test.
pub struct Vhost {
    pub name: String,
}

impl Vhost {
    pub fn create(name: &str) -> Self {
        rabbitmqctl(&["-q", "add_vhost", name]);
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        Self {
            name: name.to_owned(),
        }
    }

    /// The AMQP URL of this vhost through `addr` (RabbitMQ itself, or a proxy in front of it).
    pub fn url(&self, addr: SocketAddr) -> String {
        format!("amqp://guest:guest@{addr}/{}", self.name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// A TCP proxy to `target` on 127.0.0.1 that the test can cut (every connection dropped, new ones refused)
/// and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (cut, conns) = (cut.clone(), conns.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            }
        });
        Self {
            addr,
            cut,
            conns,
            accept,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    ids: Mutex<HashSet<String>>,
}

/// A receiver that counts requests and distinct `webhook-id`s, and can go down and come back on its port.
pub struct CountingReceiver {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    server: Mutex<Option<JoinHandle<()>>>,
}

async fn count(
    State(counts): State<Arc<Counts>>,
    headers: HeaderMap,
    _body: Bytes,
) -> &'static str {
    counts.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
        counts.ids.lock().unwrap().insert(id.to_owned());
    }
    "ok"
}

impl CountingReceiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Self {
            addr,
            counts: Arc::default(),
            server: Mutex::new(None),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: TcpListener) {
        let app = axum::Router::new()
            .fallback(count)
            .with_state(self.counts.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        *self.server.lock().unwrap() = Some(task);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stops listening and drops every connection.
    pub fn down(&self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the receiver's port");
        self.serve(listener);
    }

    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::SeqCst)
    }

    pub fn distinct(&self) -> usize {
        self.counts.ids.lock().unwrap().len()
    }
}

/// Where the workers of stream `prefix` write their warnings, to read when a fault test fails.
pub fn log_path(prefix: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}.log"))
}

fn log_file(prefix: &str) -> Stdio {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(prefix))
    {
        Ok(file) => file.into(),
        Err(_) => Stdio::null(),
    }
}

/// A `webhookd worker` child process.
pub struct WorkerProcess {
    pub child: Child,
}

impl WorkerProcess {
    pub fn spawn(database_url: &str, amqp_url: &str, exchange: &str, prefix: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_webhookd"))
            .arg("worker")
            .env("DATABASE_URL", database_url)
            .env("AMQP_URL", amqp_url)
            .env("WEBHOOKD_EXCHANGE", exchange)
            .env("WEBHOOKD_QUEUE_PREFIX", prefix)
            .env("WEBHOOK_RETRY_SCHEDULE", "0.5,1,2,4,8,8")
            .env("WEBHOOKD_ALLOWED_NETWORKS", "127.0.0.0/8")
            .env("WEBHOOKD_OPS_LISTEN", "127.0.0.1:0")
            .env("WEBHOOKD_SHUTDOWN_GRACE", "10")
            .env("WEBHOOKD_DB_POOL_SIZE", "4")
            // A receiver outage fails thousands of attempts in a row; turning the webhook off is not the point here.
            .env("WEBHOOK_MAX_CONSECUTIVE_FAILURES", "0")
            .env("RUST_LOG", "warn")
            .env("LOG_FORMAT", "json")
            .stdout(log_file(prefix))
            .stderr(log_file(prefix))
            .kill_on_drop(true)
            .spawn()
            .expect("start the webhookd binary");
        Self { child }
    }

    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the worker");
        self.child.wait().await.unwrap();
    }

    /// Sends SIGTERM; returns the exit code and how long the process took to stop.
    pub async fn terminate(&mut self, deadline: Duration) -> (Option<i32>, Duration) {
        let pid = self.child.id().expect("the worker is running");
        let started = std::time::Instant::now();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let status = tokio::time::timeout(deadline, self.child.wait())
            .await
            .expect("the worker did not stop within its grace period")
            .unwrap();
        (status.code(), started.elapsed())
    }
}

/// Publishes with confirms through its own connection, reconnecting and re-publishing (same event id, so
/// delivered once) whenever the broker connection fails.
pub struct ResilientPublisher {
    url: String,
    exchange: String,
    current: Option<(lapin::Connection, ConfirmedPublisher)>,
    pub reconnects: usize,
}

impl ResilientPublisher {
    pub fn new(url: &str, exchange: &str) -> Self {
        Self {
            url: url.to_owned(),
            exchange: exchange.to_owned(),
            current: None,
            reconnects: 0,
        }
    }

    pub async fn publish(&mut self, routing_key: &str, body: &[u8], id: &str) {
        for _ in 0..200 {
            if self
                .current
                .as_ref()
                .is_none_or(|(c, _)| !c.status().connected())
            {
                self.current = None;
                if let Ok(conn) =
                    webhookd_broker::connect(&self.url, "webhookd-fault-publisher").await
                {
                    if let Ok(p) = ConfirmedPublisher::open(&conn).await {
                        self.current = Some((conn, p));
                    }
                }
            }
            if let Some((_, p)) = &self.current {
                if p.publish_json(&self.exchange, routing_key, body, Some(id), None)
                    .await
                    .is_ok()
                {
                    return;
                }
                self.current = None;
                self.reconnects += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not publish {id} within 20 s");
    }
}
