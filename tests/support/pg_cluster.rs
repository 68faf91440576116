//! A PostgreSQL server of the test's own: `initdb` into a fresh temporary directory, started with `pg_ctl` on a
//! free port of 127.0.0.1 (its unix socket in a directory of its own, trust authentication, `fsync` on), so that
//! a test can crash it (`pg_ctl stop -m immediate`: what is still in its WAL buffers is lost, as in a real
//! crash) and start it again without touching the shared server. PostgreSQL refuses to run as root, so when
//! the tests run as root its commands run as the `postgres` user (`runuser -u postgres --`), in a directory that
//! user owns. Dropping it stops the server (killing the postmaster if need be) and deletes the directory,
//! also when the test panics.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

/// How long a start (or a restart, with its crash recovery) may take before the test fails.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A private PostgreSQL server.
pub struct PgCluster {
    /// The temporary directory: `data/`, `socket/`, `server.log`, `pg_ctl.log`.
    root: PathBuf,
    bindir: PathBuf,
    /// Run the server's commands as `postgres` (the tests run as root).
    as_postgres: bool,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

impl PgCluster {
    /// Creates a cluster in a fresh temporary directory and starts it on a free port.
    pub async fn start() -> Self {
        let root = std::env::temp_dir().join(format!(
            "webhookd-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir(&root).expect("create the cluster's directory");
        // From here on, Drop removes the directory whatever happens.
        let mut cluster = Self {
            root,
            bindir: bindir(),
            as_postgres: is_root(),
            port: 0,
        };
        std::fs::create_dir(cluster.socket_dir()).expect("create the socket directory");
        if cluster.as_postgres {
            let (uid, gid) = (id("-u"), id("-g"));
            for dir in [cluster.root.clone(), cluster.socket_dir()] {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", dir.display()));
            }
        }
        let data = cluster.data_dir();
        let data = data.to_str().expect("a UTF-8 temporary directory");
        // --no-sync only skips initdb's final flush of its files (a crash here kills processes, not the
        // machine); the server itself runs with fsync on.
        cluster
            .run(&[
                "initdb",
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .await;
        // A free port can be taken between the check and the bind: try another one then.
        for _ in 0..3 {
            cluster.port = free_port();
            cluster.configure();
            if cluster.try_start().await {
                return cluster;
            }
        }
        panic!(
            "the private PostgreSQL server did not start: {}",
            cluster.logs()
        );
    }

    /// `postgres://postgres@127.0.0.1:<port>`, without a database.
    pub fn base_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base_url())
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The directory of its unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("socket")
    }

    /// The temporary directory that holds everything (removed on drop).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The server's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    /// Crashes the server: `pg_ctl stop -m immediate` (every process quits at once, without a checkpoint; what
    /// was not yet written out of the WAL buffers is lost, and the next start runs crash recovery).
    pub async fn crash(&self) {
        let data = self.data_dir();
        self.run(&[
            "pg_ctl",
            "stop",
            "-D",
            data.to_str().unwrap_or_default(),
            "-m",
            "immediate",
            "-w",
            "-t",
            "30",
        ])
        .await;
    }

    /// Starts the server again (after `crash`), waiting until it accepts connections.
    pub async fn restart(&self) {
        assert!(
            self.try_start().await,
            "the private PostgreSQL server did not start again: {}",
            self.logs()
        );
    }

    /// Whether a connection to its `postgres` database answers `SELECT 1` now.
    pub async fn accepts_connections(&self) -> bool {
        let Ok((client, connection)) = tokio_postgres::connect(&self.url("postgres"), NoTls).await
        else {
            return false;
        };
        let driver = tokio::spawn(connection);
        let ok = client.simple_query("SELECT 1").await.is_ok();
        drop(client);
        let _ = driver.await;
        ok
    }

    /// The postmaster's process id, while `postmaster.pid` exists.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// `pg_ctl start`, then a `SELECT 1` answered within the deadline.
    async fn try_start(&self) -> bool {
        let data = self.data_dir();
        let log = self.root.join("server.log");
        let started = self
            .try_run(&[
                "pg_ctl",
                "start",
                "-D",
                data.to_str().unwrap_or_default(),
                "-l",
                log.to_str().unwrap_or_default(),
                "-w",
                "-t",
                &START_DEADLINE.as_secs().to_string(),
            ])
            .await;
        if !started {
            return false;
        }
        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if self.accepts_connections().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Appends this server's settings to its `postgresql.conf` (a later line wins over an earlier one).
    fn configure(&self) {
        use std::io::Write;
        let conf = format!(
            "\n# webhookd test cluster\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = on\nsynchronous_commit = on\nfull_page_writes = on\nmax_connections = 60\n\
             shared_buffers = 32MB\n",
            self.port,
            self.socket_dir().display()
        );
        let path = self.data_dir().join("postgresql.conf");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        file.write_all(conf.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// One of the server's programs (`initdb`, `pg_ctl` …), as `postgres` when the tests run as root, from its
    /// own directory, its output appended to `pg_ctl.log`.
    fn command(&self, args: &[&str]) -> Command {
        let program = self.bindir.join(args[0]);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.args(&args[1..])
            .current_dir(&self.root)
            .stdin(Stdio::null());
        let out = File::options()
            .create(true)
            .append(true)
            .open(self.root.join("pg_ctl.log"));
        match out.and_then(|f| Ok((f.try_clone()?, f))) {
            Ok((stdout, stderr)) => cmd.stdout(stdout).stderr(stderr),
            Err(_) => cmd.stdout(Stdio::null()).stderr(Stdio::null()),
        };
        cmd
    }

    async fn try_run(&self, args: &[&str]) -> bool {
        let mut cmd = tokio::process::Command::from(self.command(args));
        matches!(cmd.status().await, Ok(status) if status.success())
    }

    async fn run(&self, args: &[&str]) {
        assert!(
            self.try_run(args).await,
            "{} failed: {}",
            args.join(" "),
            self.logs()
        );
    }

    /// The end of the command and server logs, to explain a failure.
    fn logs(&self) -> String {
        let tail = |name: &str| {
            let text = std::fs::read_to_string(self.root.join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        format!(
            "\n--- pg_ctl.log ---\n{}\n--- server.log ---\n{}",
            tail("pg_ctl.log"),
            tail("server.log")
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let pid = self.postmaster_pid();
        if pid.is_some() {
            let data = self.data_dir();
            let _ = self
                .command(&[
                    "pg_ctl",
                    "stop",
                    "-D",
                    data.to_str().unwrap_or_default(),
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "10",
                ])
                .status();
        }
        // pg_ctl could not stop it (or could not run): kill the postmaster; its children notice and exit.
        if let Some(pid) = pid.filter(|&pid| process_runs(pid)) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Where `initdb` and `pg_ctl` are: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
fn bindir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin")).collect())
        .unwrap_or_default();
    // Newest major version first.
    installed.sort_by_key(|p| {
        std::cmp::Reverse(
            p.parent()
                .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    from_pg_config
        .into_iter()
        .chain(installed)
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
        .expect("PostgreSQL's initdb and pg_ctl (pg_config --bindir, /usr/lib/postgresql/*/bin)")
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
    })
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// `id <flag> postgres`: the uid or gid of the `postgres` user.
fn id(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("run id");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a postgres user (PostgreSQL refuses to run as root)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
