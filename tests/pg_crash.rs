//! PostgreSQL crashes (issue 10, isolation): the private PostgreSQL server of `support::pg_cluster` itself.

mod support;

use support::pg_cluster::{process_runs, PgCluster};
use webhookd_store::database;

/// Runs `sql` on a connection of its own (the pools' connections died with the server).
async fn query(
    url: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Option<Vec<tokio_postgres::Row>> {
    let client = database::connect_one(&database::parse_url(url).ok()?)
        .await
        .ok()?;
    client.query(sql, params).await.ok()
}

/// The private server itself: its own directory and port, run as `postgres`, fsync on; a crash loses no
/// committed row and needs recovery; dropping it (even in a panicking task) stops it and removes everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_cluster_crashes_recovers_and_leaves_nothing_behind() {
    let cluster = PgCluster::start().await;
    let url = cluster.url("postgres");
    let settings = query(
        &url,
        "SELECT current_setting('data_directory'), current_setting('port'), current_setting('fsync'),
                current_setting('unix_socket_directories'), current_user",
        &[],
    )
    .await
    .expect("query the private server");
    let row = &settings[0];
    assert_eq!(
        row.get::<_, String>(0),
        cluster.data_dir().display().to_string()
    );
    assert_eq!(row.get::<_, String>(1), cluster.port.to_string());
    assert_eq!(row.get::<_, String>(2), "on");
    assert_eq!(
        row.get::<_, String>(3),
        cluster.socket_dir().display().to_string()
    );
    assert_eq!(row.get::<_, String>(4), "postgres");
    assert_ne!(cluster.port, 5432, "not the shared server");
    let pid = cluster.postmaster_pid().expect("postmaster.pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().next())
        .unwrap();
    assert_ne!(uid, "0", "the server does not run as root");

    let client = database::connect_one(&database::parse_url(&url).unwrap())
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('committed before the crash')",
        )
        .await
        .unwrap();
    let rows = query(&url, "SELECT v FROM kept", &[]).await;
    assert_eq!(rows.map(|r| r.len()), Some(1));
    cluster.crash().await;
    assert!(
        client.simple_query("SELECT 1").await.is_err(),
        "the session died with the server"
    );
    assert!(!cluster.accepts_connections().await);
    assert!(cluster.postmaster_pid().is_none(), "postmaster.pid removed");
    assert!(!process_runs(pid), "the postmaster {pid} is gone");
    cluster.restart().await;
    let rows = query(&url, "SELECT v FROM kept", &[])
        .await
        .expect("read after the restart");
    assert_eq!(rows[0].get::<_, String>(0), "committed before the crash");
    let log = cluster.server_log();
    assert!(
        log.contains("database system was not properly shut down; automatic recovery in progress"),
        "the restart recovered from a crash: {log}"
    );

    // Dropped during a panic: stopped and removed all the same.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let doomed = PgCluster::start().await;
        let _ = tx.send((
            doomed.root().to_owned(),
            doomed.url("postgres"),
            doomed.postmaster_pid(),
        ));
        panic!("a test fails with its cluster running");
    });
    assert!(task.await.unwrap_err().is_panic());
    let (root, doomed_url, doomed_pid) = rx.await.unwrap();
    assert!(!root.exists(), "{} left behind", root.display());
    let doomed_pid = doomed_pid.expect("it was running");
    assert!(
        !process_runs(doomed_pid),
        "its postmaster {doomed_pid} still runs"
    );
    assert!(query(&doomed_url, "SELECT 1", &[]).await.is_none());

    let root = cluster.root().to_owned();
    drop(cluster);
    assert!(!root.exists(), "{} left behind", root.display());
    assert!(query(&url, "SELECT 1", &[]).await.is_none());
}
