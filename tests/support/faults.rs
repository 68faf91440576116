//! Fault-injection tools: a private RabbitMQ vhost, a TCP proxy that can be cut, a counting receiver that
//! can go down, worker processes, and a publisher that rides out broker trouble.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use webhookd_broker::ConfirmedPublisher;

use super::wait_for;

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
/// and restore, or stall (every connection, open or new, stays open but no byte goes through either way).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stalled: tokio::sync::watch::Sender<bool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    client_closed: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stalled = tokio::sync::watch::Sender::new(false);
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let client_closed = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn({
            let (cut, conns, stalled, client_closed) = (
                cut.clone(),
                conns.clone(),
                stalled.clone(),
                client_closed.clone(),
            );
            async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let stalled = stalled.subscribe();
                    let client_closed = client_closed.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(outbound) = TcpStream::connect(target).await {
                            let (in_read, in_write) = inbound.into_split();
                            let (out_read, out_write) = outbound.into_split();
                            tokio::join!(
                                pump(in_read, out_write, stalled.clone(), Some(client_closed)),
                                pump(out_read, in_write, stalled, None),
                            );
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            }
        });
        Self {
            addr,
            cut,
            stalled,
            conns,
            client_closed,
            accept,
        }
    }

    /// Waits until the client has closed its side of `n` connections (seen even while stalled, though not
    /// passed on until `restore`).
    pub async fn wait_closed_by_client(&self, n: usize, deadline: Duration) {
        let closed = &self.client_closed;
        wait_for(
            &format!("the client to close {n} connection(s)"),
            deadline,
            || async move { (closed.load(Ordering::SeqCst) >= n).then_some(()) },
        )
        .await
    }

    /// Connections accepted so far (and not dropped by `cut`).
    pub fn connections(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Lets connections through again (after `cut` or `stall`).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.stalled.send_replace(false);
    }

    /// A black hole: connections, open and new, stay open, but nothing is forwarded either way (what is read
    /// meanwhile, an end of stream included, waits until `restore`).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

/// Copies `from` to `to`, holding what it reads (and the end of the stream) while the proxy is stalled; counts
/// the end of `from` in `ended`, if given, when it is read (stalled or not).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
    ended: Option<Arc<AtomicUsize>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let (mut held, mut end) = (Vec::new(), false);
    loop {
        if !*stalled.borrow_and_update() {
            if !held.is_empty() && to.write_all(&held).await.is_err() {
                return;
            }
            held.clear();
            if end {
                let _ = to.shutdown().await;
                return;
            }
        }
        tokio::select! {
            n = from.read(&mut buf), if !end => match n {
                Ok(n) if n > 0 => held.extend_from_slice(&buf[..n]),
                _ => {
                    end = true;
                    if let Some(ended) = &ended {
                        ended.fetch_add(1, Ordering::SeqCst);
                    }
                }
            },
            changed = stalled.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
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
pub fn log_path(prefix: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{prefix}.log"))
}

/// The fault suite's report: one line per finished fault test, appended, so that the duplicate counts stay
/// visible when the test output is captured (`cargo test --workspace`). `<target dir>/tmp/faults-report.txt`.
pub fn report_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-report.txt")
}

/// Appends one line to the report (tab-separated, under a header written when the file is new) and returns it.
pub fn report(fault: &str, deliveries: usize, duplicates: usize, seconds: f64) -> String {
    use std::io::Write;
    let line = format!(
        "{}\t{fault}\t{deliveries}\t{duplicates}\t{seconds:.1}\n",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    );
    let path = report_path();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let header = "finished_at\tfault\tdeliveries\tduplicates\tseconds\n";
    // One write per line: appends from concurrent runs do not interleave.
    let text = match file.metadata().map(|m| m.len()) {
        Ok(0) => format!("{header}{line}"),
        _ => line.clone(),
    };
    file.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    line
}

/// `path` opened for appending, as a child's output.
fn appending(path: &Path) -> Stdio {
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(file) => file.into(),
        Err(_) => Stdio::null(),
    }
}

/// `RUST_LOG` for a watched process: warnings, plus the binary's own `info` lines (`HTTP listening` gives
/// the address of its `/metrics`). Every library crate's target starts with `webhookd_`, and targets match
/// by prefix, so the last directive keeps them at `warn`.
pub const WATCHED_LOG: &str = "warn,webhookd=info,webhookd_=warn";

/// A `webhookd worker` child process whose JSON log lines are kept as they come (and appended to a file),
/// and whose `/healthz`, `/readyz` and `/metrics` can be read.
pub struct WorkerProcess {
    pub child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    http: reqwest::Client,
}

impl WorkerProcess {
    pub fn spawn(database_url: &str, amqp_url: &str, exchange: &str, prefix: &str) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_webhookd"));
        cmd.env("DATABASE_URL", database_url)
            .env("AMQP_URL", amqp_url)
            .env("WEBHOOKD_EXCHANGE", exchange)
            .env("WEBHOOKD_QUEUE_PREFIX", prefix)
            .env("WEBHOOK_RETRY_SCHEDULE", "0.5,1,2,4,8,8")
            .env("WEBHOOKD_ALLOWED_NETWORKS", "127.0.0.0/8")
            .env("WEBHOOKD_SHUTDOWN_GRACE", "10")
            .env("WEBHOOKD_DB_POOL_SIZE", "4")
            // A receiver outage fails thousands of attempts in a row; turning the webhook off is not the point here.
            .env("WEBHOOK_MAX_CONSECUTIVE_FAILURES", "0")
            .env("RUST_LOG", WATCHED_LOG)
            .env("LOG_FORMAT", "json")
            .kill_on_drop(true);
        Self::watch(cmd, &log_path(prefix))
    }

    /// Starts `cmd` (a `webhookd` command; `worker` is added) with its operations endpoints on a free port,
    /// reading its stdout line by line: each line is appended to `log`, and JSON lines are kept. Its stderr
    /// goes to `log` as well.
    pub fn watch(mut cmd: Command, log: &Path) -> Self {
        let mut child = cmd
            .arg("worker")
            .env("WEBHOOKD_OPS_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(appending(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start the webhookd binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        tokio::spawn({
            let (lines, log) = (lines.clone(), log.to_owned());
            async move {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .ok();
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Some(file) = file.as_mut() {
                        let _ = writeln!(file, "{line}");
                    }
                    if let Ok(value) = serde_json::from_str::<Value>(&line) {
                        lines.lock().unwrap().push(value);
                    }
                }
            }
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        Self { child, lines, http }
    }

    /// How many of the process's threads are named `name` (their `comm`, as `top -H` shows them).
    pub fn threads_named(&self, name: &str) -> usize {
        let Some(pid) = self.child.id() else {
            return 0;
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return 0;
        };
        tasks
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
            })
            .count()
    }

    /// The JSON log lines printed so far whose `message` is `message`.
    pub fn logged(&self, message: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|line| line["message"] == message)
            .cloned()
            .collect()
    }

    /// Waits until at least `n` log lines have the `message`; returns them.
    pub async fn wait_logged(&self, message: &str, n: usize, deadline: Duration) -> Vec<Value> {
        let what = format!("{n} log lines {message:?}");
        wait_for(&what, deadline, || async {
            let found = self.logged(message);
            (found.len() >= n).then_some(found)
        })
        .await
    }

    /// Where it serves `/healthz`, `/readyz` and `/metrics`, from its `HTTP listening` line.
    pub async fn ops_addr(&self) -> SocketAddr {
        let started = self
            .wait_logged("HTTP listening", 1, Duration::from_secs(60))
            .await;
        started[0]["listen"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {}", started[0]))
    }

    /// `GET path` on its operations listener: status and body, or `None` if the request failed.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let url = format!("http://{}{path}", self.ops_addr().await);
        let response = self.http.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// The value of the unlabelled series `name` in its `/metrics`, or `None` if it cannot be read.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        metric_value(&text, name)
    }

    /// Waits until the series `name` reads `value`.
    pub async fn wait_metric(&self, name: &str, value: f64, deadline: Duration) {
        let what = format!("{name} to read {value}");
        wait_for(&what, deadline, || async {
            (self.metric(name).await? == value).then_some(())
        })
        .await
    }

    /// SIGKILLs it and waits for its exit, for 10 s at most: once a fault run hung for good in this wait with
    /// the child already gone (its exit never reported to the runtime), and a SIGKILLed process is gone anyway.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the worker");
        match tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await {
            Ok(status) => {
                status.expect("wait for the worker");
            }
            Err(_) => eprintln!(
                "worker {:?}: its exit was not reported within 10 s of SIGKILL",
                self.child.id()
            ),
        }
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

/// The value of the series `name` in Prometheus text (labels included in `name`, as exported:
/// `webhookd_writer_stalled{writer="delivery_log"}`).
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        (series == name).then(|| value.trim().parse().ok())?
    })
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
