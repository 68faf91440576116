//! A RabbitMQ cluster of the test's own: extra nodes on this machine (`whc<N>-<random>@localhost`), each with
//! its own AMQP port and distribution port on 127.0.0.1, and its own data, log, configuration and
//! plugins-expand directories and enabled-plugins file (no plugin), all under one fresh temporary directory.
//! They register with the machine's epmd (127.0.0.1:4369) and use the installation's Erlang cookie: when the
//! tests run as root, the nodes and the CLI tools run as the `rabbitmq` user (`runuser -u rabbitmq`), whose
//! home holds it, as Debian's wrapper scripts do; otherwise as the current user, with its own cookie. They
//! read none of the shared node's files: `RABBITMQ_CONF_ENV_FILE` and `RABBITMQ_CONFIG_FILE` point at files
//! of their own.
//!
//! The first node starts alone and the others join it (`rabbitmqctl -n <node> stop_app`, `join_cluster`,
//! `start_app`); [`RabbitCluster::start`] returns once one cluster of them all runs. A node can then be killed
//! (SIGKILL: a machine failure) or stopped (`rabbitmqctl stop`), and started again: it rejoins with its data.
//! Each node runs in a process group of its own; dropping the cluster (also when the test panics) kills every
//! group and deletes the directory. Every wait has a deadline.
//!
//! A node that cannot start fails the test with the reason (a port taken, epmd unreachable, …), the end of its
//! log, and how to skip the tests that need a cluster: set [`SKIP_VAR`].

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Set to `1` to skip the tests that need a cluster of their own (a machine that cannot run extra nodes).
pub const SKIP_VAR: &str = "WEBHOOKD_TEST_SKIP_RABBIT_CLUSTER";
/// How long a node may take to start (or to start again and rejoin) before the test fails.
pub const START_DEADLINE: Duration = Duration::from_secs(90);
/// How long one CLI command (`rabbitmqctl`, `rabbitmq-queues`) may take.
const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// How long a node killed or stopped may take to exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);
/// Where Debian's package puts the real scripts (`/usr/sbin/rabbitmq*` are wrappers that `su` to `rabbitmq`).
const DEBIAN_SCRIPTS: &str = "/usr/lib/rabbitmq/bin";

/// Whether the cluster tests are to be skipped ([`SKIP_VAR`] set to `1`); says so on stderr.
pub fn skipped(test: &str) -> bool {
    let skip = std::env::var(SKIP_VAR).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("{test}: skipped ({SKIP_VAR}=1): it needs RabbitMQ nodes of its own");
    }
    skip
}

/// How to run RabbitMQ's scripts here.
#[derive(Clone)]
struct Installation {
    /// The directory of `rabbitmq-server`, `rabbitmqctl`, `rabbitmq-queues`.
    scripts: PathBuf,
    /// `Some((uid, gid))` of `rabbitmq`: run as that user (the tests run as root).
    as_rabbitmq: Option<(u32, u32)>,
}

impl Installation {
    fn find() -> Result<Self, String> {
        let scripts = if Path::new(DEBIAN_SCRIPTS).join("rabbitmq-server").is_file() {
            PathBuf::from(DEBIAN_SCRIPTS)
        } else {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .find(|dir| dir.join("rabbitmq-server").is_file())
                .ok_or_else(|| {
                    format!("RabbitMQ is not installed: no {DEBIAN_SCRIPTS}/rabbitmq-server, none on PATH")
                })?
        };
        let as_rabbitmq = if id(&["-u"]) == Some(0) {
            match (id(&["-u", "rabbitmq"]), id(&["-g", "rabbitmq"])) {
                (Some(uid), Some(gid)) => Some((uid, gid)),
                _ => return Err(
                    "the tests run as root but there is no `rabbitmq` user to run the nodes as \
                                (its home holds the installation's Erlang cookie)"
                        .to_owned(),
                ),
            }
        } else {
            None
        };
        Ok(Self {
            scripts,
            as_rabbitmq,
        })
    }

    /// `script args…`, as `rabbitmq` if need be, in its own process group, stdin closed.
    fn command(&self, script: &str, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let program = self.scripts.join(script);
        let mut cmd = if self.as_rabbitmq.is_some() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "rabbitmq", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.args(args).stdin(Stdio::null()).process_group(0);
        cmd
    }
}

/// `id <args>` as a number.
fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A free TCP port on 127.0.0.1 for a node, below the kernel's ephemeral range: a node killed and started
/// again must find its ports free, and while it is down an outgoing connection (or a `bind` to port 0) could
/// otherwise take one as its local port. Free when asked (a node that finds it taken at its first start is
/// started again on others).
fn free_port() -> u16 {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // RabbitMQ's and Erlang's usual ports: the shared node's distribution port and the CLI tools' range.
    let usual = |p: u16| p == 25672 || (35672..=35682).contains(&p);
    if ephemeral_low > 20_000 {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let port = rng.gen_range(15_000..ephemeral_low);
            if !usual(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// SIGKILLs process group `pgid`.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits up to `deadline` for `child` to exit; whether it did.
fn reap(child: &mut Child, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= until => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether something accepts TCP connections at `addr` now.
async fn port_open(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// One node of the cluster.
pub struct RabbitNode {
    /// `whc<N>-<random>@localhost`.
    pub name: String,
    /// Its AMQP port on 127.0.0.1.
    pub amqp_port: u16,
    /// Its distribution (inter-node and CLI) port on 127.0.0.1.
    pub dist_port: u16,
    dir: PathBuf,
    /// The running node (`runuser` and `beam.smp`, one process group), if any.
    process: Mutex<Option<Child>>,
}

impl RabbitNode {
    /// `127.0.0.1:<AMQP port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.amqp_port))
    }

    /// Its AMQP URL (user guest, the default vhost).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr())
    }

    /// The OS process id of the node's process group, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.lock().unwrap().as_ref().map(Child::id)
    }

    /// The Erlang VM's OS process id, from the pid file the node writes once it runs (the VM is a child of
    /// `runuser` when the tests run as root).
    pub fn vm_pid(&self) -> Option<u32> {
        let file = self.dir.join("mnesia").join(format!("{}.pid", self.name));
        std::fs::read_to_string(file).ok()?.trim().parse().ok()
    }

    /// The directory of the node's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn env_file(&self) -> PathBuf {
        self.dir.join("rabbitmq-env.conf")
    }

    /// Writes its configuration (AMQP listener on its port) and empty plugin list; creates its directories.
    fn configure(&self, install: &Installation) -> std::io::Result<()> {
        for sub in ["mnesia", "log", "plugins-expand", "conf.d"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(
            self.env_file(),
            "# webhookd test node: nothing from /etc/rabbitmq\n",
        )?;
        std::fs::write(
            self.dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{}\n", self.amqp_port),
        )?;
        if let Some((uid, gid)) = install.as_rabbitmq {
            chown_tree(&self.dir, uid, gid)?;
        }
        Ok(())
    }

    /// Launches `rabbitmq-server` for this node (not waiting for it); its output goes to `stdout.log`.
    fn launch(&self, install: &Installation) -> std::io::Result<()> {
        let dir = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = install.command("rabbitmq-server", &[]);
        cmd.current_dir(&self.dir)
            .env("RABBITMQ_CONF_ENV_FILE", self.env_file())
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir("rabbitmq.conf"))
            .env("RABBITMQ_CONFIG_FILES", dir("conf.d"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir("advanced.config"))
            .env("RABBITMQ_MNESIA_BASE", dir("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir("log"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir("plugins-expand"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir("enabled_plugins"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            // Run the Erlang VM in place of the script (one process to kill), without its shell.
            .env("RABBITMQ_ALLOW_INPUT", "1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-noinput -kernel inet_dist_use_interface {127,0,0,1}",
            );
        let out = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))?;
        cmd.stdout(out.try_clone()?).stderr(out);
        let child = cmd.spawn()?;
        *self.process.lock().unwrap() = Some(child);
        Ok(())
    }

    /// How many times its log says it finished booting.
    fn startups_logged(&self) -> usize {
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        std::fs::read_to_string(log)
            .map(|text| text.matches("Server startup complete").count())
            .unwrap_or(0)
    }

    /// Whether its process has exited (or was never started).
    fn exited(&self) -> bool {
        match self.process.lock().unwrap().as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// SIGKILLs its process group and waits for the node to exit.
    fn kill(&self) {
        if let Some(mut child) = self.process.lock().unwrap().take() {
            kill_group(child.id());
            if !reap(&mut child, EXIT_DEADLINE) {
                eprintln!(
                    "RabbitMQ node {}: still running {EXIT_DEADLINE:?} after SIGKILL",
                    self.name
                );
            }
        }
    }

    /// The end of its start-up output and of its log, to explain a failure.
    pub fn logs(&self) -> String {
        let tail = |path: PathBuf| {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            format!(
                "--- {} ---\n{}",
                path.display(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            )
        };
        format!(
            "{}\n{}",
            tail(self.dir.join("stdout.log")),
            tail(self.dir.join("log").join(format!("{}.log", self.name)))
        )
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Gives `path` and everything under it to `uid:gid`.
fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Why a node did not start, from its output: a reason an operator can act on, if one is recognised.
fn diagnose(output: &str) -> &'static str {
    let has = |s: &str| output.contains(s);
    if has("eaddrinuse") {
        "a port it was given is taken (eaddrinuse)"
    } else if has("epmd") && (has("econnrefused") || has("register") || has("epmd_close")) {
        "it could not register its name with epmd on 127.0.0.1:4369"
    } else if has("in use") || has("already_started") || has("duplicate_name") {
        "its node name is in use"
    } else if has("Cookie file") || (has("cookie") && has("eacces")) {
        "it could not read the Erlang cookie"
    } else if has("eacces") || has("Permission denied") {
        "it may not write its directories (permission denied)"
    } else {
        "the reason is in its log below"
    }
}

/// The quorum status of a queue: its members and their Raft states.
#[derive(Debug, Clone)]
pub struct QuorumStatus {
    /// (node name, Raft state: `leader`, `follower`, …, or the error for a member that does not answer).
    pub members: Vec<(String, String)>,
}

impl QuorumStatus {
    /// The node that leads the queue, if exactly one member says it does.
    pub fn leader(&self) -> Option<&str> {
        let leaders: Vec<&str> = self
            .members
            .iter()
            .filter(|(_, state)| state == "leader")
            .map(|(node, _)| node.as_str())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }
}

/// A cluster of RabbitMQ nodes of the test's own.
pub struct RabbitCluster {
    root: PathBuf,
    install: Installation,
    pub nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Starts `size` nodes and joins them into one cluster; panics with the reason if that cannot be done.
    pub async fn start(size: usize) -> Self {
        match Self::try_start(size).await {
            Ok(cluster) => cluster,
            Err(reason) => panic!(
                "{size} RabbitMQ node(s) of the test's own could not be started and clustered on this \
                 machine: {reason}\n\
                 (set {SKIP_VAR}=1 to skip the tests that need one)"
            ),
        }
    }

    async fn try_start(size: usize) -> Result<Self, String> {
        let install = Installation::find()?;
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let root = std::env::temp_dir().join(format!("webhookd-rmq-{tag}"));
        std::fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        // From here on, Drop kills the nodes and removes the directory whatever happens.
        let mut cluster = Self {
            root,
            install,
            nodes: Vec::new(),
        };
        if let Some((uid, gid)) = cluster.install.as_rabbitmq {
            std::os::unix::fs::chown(&cluster.root, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to rabbitmq: {e}", cluster.root.display()))?;
        }
        for n in 1..=size {
            cluster.nodes.push(RabbitNode {
                name: format!("whc{n}-{tag}@localhost"),
                amqp_port: 0,
                dist_port: 0,
                dir: cluster.root.join(format!("whc{n}")),
                process: Mutex::new(None),
            });
        }
        // The nodes boot at once, each on free ports (chosen again if a port turns out to be taken).
        let boots = (0..size).map(|i| cluster.first_boot(i));
        let ports: Vec<(u16, u16)> = futures::future::try_join_all(boots).await?;
        for (node, (amqp, dist)) in cluster.nodes.iter_mut().zip(ports) {
            node.amqp_port = amqp;
            node.dist_port = dist;
        }
        cluster.join_all().await?;
        Ok(cluster)
    }

    /// Boots node `i` alone for the first time, on free ports: returns them once it accepts AMQP connections.
    async fn first_boot(&self, i: usize) -> Result<(u16, u16), String> {
        let node = &self.nodes[i];
        let mut last = String::new();
        for _ in 0..3 {
            let amqp = free_port();
            let dist = std::iter::repeat_with(free_port)
                .find(|&p| p != amqp)
                .unwrap_or_default();
            let attempt = RabbitNode {
                name: node.name.clone(),
                amqp_port: amqp,
                dist_port: dist,
                dir: node.dir.clone(),
                process: Mutex::new(None),
            };
            let _ = std::fs::remove_dir_all(&attempt.dir);
            attempt
                .configure(&self.install)
                .map_err(|e| format!("cannot prepare {}: {e}", attempt.dir.display()))?;
            match self.boot(&attempt).await {
                Ok(()) => {
                    *node.process.lock().unwrap() = attempt.process.lock().unwrap().take();
                    return Ok((amqp, dist));
                }
                Err(reason) => {
                    let logs = attempt.logs();
                    attempt.kill();
                    last = reason;
                    if !logs.contains("eaddrinuse") {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Launches `node` and waits until it has booted (and, for a node that was in the cluster, rejoined it):
    /// its log says `Server startup complete` once more, and its AMQP port answers. (The port alone could be
    /// another program's.)
    async fn boot(&self, node: &RabbitNode) -> Result<(), String> {
        let before = node.startups_logged();
        node.launch(&self.install)
            .map_err(|e| format!("cannot run rabbitmq-server for {}: {e}", node.name))?;
        let started = Instant::now();
        loop {
            if node.startups_logged() > before && port_open(node.addr()).await {
                return Ok(());
            }
            if node.exited() {
                let logs = node.logs();
                return Err(format!(
                    "node {} exited while starting: {}\n{logs}",
                    node.name,
                    diagnose(&logs)
                ));
            }
            if started.elapsed() > START_DEADLINE {
                return Err(format!(
                    "node {} did not finish booting (its log saying so, its AMQP port {} answering) within \
                     {START_DEADLINE:?}: a slow machine?\n{}",
                    node.name,
                    node.addr(),
                    node.logs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Joins every node to the first: `stop_app`, `join_cluster`, `start_app`; then waits for one cluster.
    async fn join_all(&self) -> Result<(), String> {
        let Some((first, others)) = self.nodes.split_first() else {
            return Ok(());
        };
        let stops = others
            .iter()
            .map(|n| async move { self.cli("rabbitmqctl", &["-n", &n.name, "stop_app"]).await });
        futures::future::try_join_all(stops).await?;
        // One at a time: each join changes the cluster's membership.
        for node in others {
            self.cli(
                "rabbitmqctl",
                &["-n", &node.name, "join_cluster", &first.name],
            )
            .await?;
        }
        let starts = others
            .iter()
            .map(|n| async move { self.cli("rabbitmqctl", &["-n", &n.name, "start_app"]).await });
        futures::future::try_join_all(starts).await?;
        self.await_all_running(START_DEADLINE).await
    }

    /// Runs one of RabbitMQ's CLI tools with `args`; its stdout, or why it failed. Killed at the deadline.
    pub async fn cli(&self, script: &str, args: &[&str]) -> Result<String, String> {
        let mut cmd = tokio::process::Command::from(self.install.command(script, args));
        cmd.current_dir(&self.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!("{script} {}", args.join(" "));
        let child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
        let pgid = child.id();
        match tokio::time::timeout(CLI_DEADLINE, child.wait_with_output()).await {
            Ok(Ok(out)) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            }
            Ok(Ok(out)) => Err(format!(
                "{what}: {} {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => {
                if let Some(pgid) = pgid {
                    kill_group(pgid);
                }
                Err(format!("{what}: no answer within {CLI_DEADLINE:?}"))
            }
        }
    }

    /// The nodes running in the cluster, as node `via` sees them (`cluster_status`).
    pub async fn running_nodes(&self, via: usize) -> Result<Vec<String>, String> {
        let out = self
            .cli(
                "rabbitmqctl",
                &[
                    "-n",
                    &self.nodes[via].name,
                    "cluster_status",
                    "--formatter",
                    "json",
                ],
            )
            .await?;
        let status: Value =
            serde_json::from_str(&out).map_err(|e| format!("cluster_status: {e}: {out}"))?;
        let mut running: Vec<String> = status["running_nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        running.sort();
        Ok(running)
    }

    /// Waits until some running node sees every node running, as one cluster.
    pub async fn await_all_running(&self, deadline: Duration) -> Result<(), String> {
        let mut expected: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        expected.sort();
        let started = Instant::now();
        let mut last = String::new();
        loop {
            for via in (0..self.nodes.len()).filter(|&i| self.nodes[i].pid().is_some()) {
                match self.running_nodes(via).await {
                    Ok(running) if running == expected => return Ok(()),
                    Ok(running) => {
                        last = format!("{} sees {running:?} running", self.nodes[via].name)
                    }
                    Err(e) => last = e,
                }
            }
            if started.elapsed() > deadline {
                return Err(format!(
                    "the nodes did not form one cluster of {} within {deadline:?}: {last}",
                    self.nodes.len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The quorum status of queue `queue` (in the default vhost) as node `via` sees it.
    pub async fn quorum_status(&self, queue: &str, via: usize) -> Result<QuorumStatus, String> {
        let out = self
            .cli(
                "rabbitmq-queues",
                &[
                    "-n",
                    &self.nodes[via].name,
                    "quorum_status",
                    queue,
                    "--formatter",
                    "json",
                ],
            )
            .await?;
        let rows: Value =
            serde_json::from_str(&out).map_err(|e| format!("quorum_status: {e}: {out}"))?;
        let members = rows
            .as_array()
            .ok_or_else(|| format!("quorum_status: not a list: {out}"))?
            .iter()
            .map(|row| {
                let node = row["Node Name"].as_str().unwrap_or_default().to_owned();
                let state = match &row["Raft State"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (node, state)
            })
            .collect();
        Ok(QuorumStatus { members })
    }

    /// The index of the node that leads quorum queue `queue`, as node `via` sees it.
    pub async fn leader_of(&self, queue: &str, via: usize) -> Result<Option<usize>, String> {
        let status = self.quorum_status(queue, via).await?;
        Ok(status
            .leader()
            .and_then(|leader| self.nodes.iter().position(|n| n.name == leader)))
    }

    /// Kills node `i` (SIGKILL to its process group: the machine failed) and waits for it to exit.
    pub fn kill(&self, i: usize) {
        self.nodes[i].kill();
    }

    /// Stops node `i` cleanly (`rabbitmqctl -n <node> stop`) and waits for it to exit.
    pub async fn stop(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        self.cli("rabbitmqctl", &["-n", &node.name, "stop"]).await?;
        let started = Instant::now();
        while !node.exited() {
            if started.elapsed() > EXIT_DEADLINE {
                return Err(format!(
                    "{} did not exit within {EXIT_DEADLINE:?} of `stop`",
                    node.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = node.process.lock().unwrap().take();
        Ok(())
    }

    /// Starts node `i` again (after `kill` or `stop`), with its data: it rejoins the cluster. Returns once it
    /// accepts AMQP connections and every node runs in the cluster again.
    pub async fn restart(&self, i: usize) -> Result<(), String> {
        let node = &self.nodes[i];
        assert!(node.pid().is_none(), "{} is running", node.name);
        self.boot(node).await?;
        self.await_all_running(START_DEADLINE).await
    }

    /// The temporary directory that holds every node's files (removed on drop).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(child) = node.process.lock().unwrap().as_ref() {
                kill_group(child.id());
            }
        }
        for node in &self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A TCP proxy on 127.0.0.1 in front of several nodes: each new connection goes to the first of its targets,
/// in the order given, that accepts one (as a load balancer whose health check found the others down, or a
/// client trying the addresses of a DNS name in turn). A connection ends when its node goes away; the client
/// reconnects, and lands on the next live node.
pub struct FailoverProxy {
    pub addr: SocketAddr,
    targets: Vec<SocketAddr>,
    /// Connections made to each target, in the order of `targets`.
    routed: Arc<Vec<AtomicUsize>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl FailoverProxy {
    pub async fn start(targets: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let routed: Arc<Vec<AtomicUsize>> =
            Arc::new(targets.iter().map(|_| AtomicUsize::new(0)).collect());
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let (targets, routed, conns) = (targets.clone(), routed.clone(), conns.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let (targets, routed) = (targets.clone(), routed.clone());
                    let task = tokio::spawn(async move {
                        for (i, target) in targets.iter().enumerate() {
                            let connect = TcpStream::connect(target);
                            if let Ok(Ok(mut outbound)) =
                                tokio::time::timeout(Duration::from_secs(2), connect).await
                            {
                                routed[i].fetch_add(1, Ordering::SeqCst);
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                                return;
                            }
                        }
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|t| !t.is_finished());
                    conns.push(task);
                }
            }
        });
        Self {
            addr,
            targets,
            routed,
            conns,
            accept,
        }
    }

    /// `amqp://guest:guest@<proxy>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// How many connections went to each target so far, as (target, connections).
    pub fn routed(&self) -> Vec<(SocketAddr, usize)> {
        self.targets
            .iter()
            .zip(self.routed.iter())
            .map(|(t, n)| (*t, n.load(Ordering::SeqCst)))
            .collect()
    }
}

impl Drop for FailoverProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}
