//! Every scenario of the benchmark runs at `--scale tiny` against the workspace's `webhookd` binary,
//! exits 0, and reports every expected delivery.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `webhookd` binary cargo built beside this test: this executable is `target/<profile>/deps/…`.
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable lives in target/<profile>/deps");
    let worker = profile_dir.join("webhookd");
    assert!(
        worker.is_file(),
        "the webhookd binary is missing at {}: it is built when the whole workspace is tested; \
         run `cargo test --workspace` (not `cargo test -p webhookd-bench` alone)",
        worker.display()
    );
    worker
}

/// Far above a tiny run's two or three minutes.
const BENCH_DEADLINE: Duration = Duration::from_secs(600);

/// Reads `pipe` to its end on a thread of its own; the thread drops its handle when done.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let text = Arc::new(Mutex::new(Vec::new()));
    let filled = text.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            filled.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    text
}

#[test]
fn every_scenario_runs_at_tiny_scale_and_reports_every_delivery() {
    let worker = worker_binary();
    let mut bench = Command::new(env!("CARGO_BIN_EXE_webhookd-bench"))
        .args(["all", "--scale", "tiny", "--worker-bin"])
        .arg(&worker)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run webhookd-bench");
    let stdout = collect(bench.stdout.take().expect("piped stdout"));
    let stderr = collect(bench.stderr.take().expect("piped stderr"));
    // A hang is a failure with what was printed so far, not a test that never ends.
    let deadline = Instant::now() + BENCH_DEADLINE;
    let status = loop {
        if let Some(status) = bench.try_wait().expect("wait for webhookd-bench") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = bench.kill();
            let _ = bench.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read =
        |text: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&text.lock().unwrap()).into_owned();
    let Some(status) = status else {
        panic!(
            "webhookd-bench did not finish within {BENCH_DEADLINE:?}\n--- stdout\n{}\n--- stderr\n{}",
            read(&stdout),
            read(&stderr)
        );
    };
    // The pipes close as the bench exits; what they held is read to the end.
    let drained = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&stdout) + Arc::strong_count(&stderr) > 2 && Instant::now() < drained {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (stdout, stderr) = (read(&stdout), read(&stderr));
    assert!(
        status.success(),
        "webhookd-bench exited with {status}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    let line = |scenario: &str| -> &Value {
        let found: Vec<&Value> = lines.iter().filter(|l| l["scenario"] == scenario).collect();
        assert_eq!(
            found.len(),
            1,
            "one JSON line for {scenario}\n--- stdout\n{stdout}"
        );
        found[0]
    };

    // Tiny scale: 500 events → 1 webhook; 2 s at 100 and at 200 ev/s; 20 events × 10 webhooks;
    // 50 events × the 9 healthy webhooks; 200 events to the failing webhook; 2 s at 50 ev/s × B's 5
    // webhooks; 2 s at 50 ev/s relayed to 1 webhook.
    for (scenario, deliveries) in [
        ("throughput", 500),
        ("latency", 600),
        ("fanout", 200),
        ("slow-endpoint", 450),
        ("failing-endpoint", 200),
        ("noisy-neighbour", 500),
        ("soak", 600),
        ("relay", 100),
    ] {
        let l = line(scenario);
        assert_eq!(l["scale"], "tiny");
        assert_eq!(l["deliveries"], deliveries, "{scenario}: {l}");
        assert_eq!(l["expected_deliveries"], deliveries, "{scenario}: {l}");
        assert!(
            l["peak_rss_mib"].as_f64().unwrap_or(0.0) > 0.0,
            "{scenario}: {l}"
        );
        assert!(l["cpu_s_per_10k"].is_number(), "{scenario}: {l}");
    }
    for run in line("latency")["runs"].as_array().expect("latency runs") {
        assert_eq!(run["deliveries"], run["expected_deliveries"], "{run}");
        assert_eq!(run["logged"], run["expected_deliveries"], "{run}");
        assert!(run["latency_ms"]["p99"].is_number(), "{run}");
        // Every delivery needs at least one wake-up of the worker at these rates.
        let switches = &run["worker_switches_per_delivery"];
        assert!(switches["voluntary"].as_f64().unwrap_or(0.0) > 0.0, "{run}");
        assert!(switches["involuntary"].is_number(), "{run}");
    }
    // RabbitMQ alone at each rate: every message reached the consumer process, which measured itself.
    let floors = line("latency")["rabbitmq_alone"].clone();
    let floors = floors.as_array().expect("RabbitMQ alone at each rate");
    assert_eq!(floors.len(), 2, "{floors:?}");
    for (floor, messages) in floors.iter().zip([200, 400]) {
        assert_eq!(floor["received"], messages, "{floor}");
        assert_eq!(floor["latency_ms"]["samples"], messages, "{floor}");
        assert!(floor["consumer_cpu_s_per_10k"].is_number(), "{floor}");
        let switches = &floor["consumer_switches_per_message"];
        assert!(
            switches["voluntary"].as_f64().unwrap_or(0.0) > 0.0,
            "{floor}"
        );
    }
    let slow = line("slow-endpoint");
    let runs = slow["runs"].as_array().expect("slow-endpoint runs");
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r["deliveries"] == 450), "{slow}");
    assert!(runs[0]["held_requests"].as_u64().unwrap_or(0) > 0, "{slow}");
    assert!(slow["nine_per_s_with_slow"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(slow["nine_per_s_all_healthy"].as_f64().unwrap_or(0.0) > 0.0);
    let failing = line("failing-endpoint");
    assert_eq!(failing["all_delivered"], true, "{failing}");
    assert_eq!(failing["logged"], 200, "{failing}");
    assert!(failing["http_500s"].as_u64().unwrap_or(0) > 0, "{failing}");

    let noisy = line("noisy-neighbour");
    let runs = noisy["runs"].as_array().expect("noisy-neighbour runs");
    assert_eq!(runs.len(), 2, "{noisy}");
    for run in runs {
        assert_eq!(run["deliveries"], 500, "{run}");
        assert_eq!(run["logged"], 500, "{run}");
        // Latency of B's 4 healthy webhooks only: one sample per event each.
        assert_eq!(run["latency_ms"]["samples"], 400, "{run}");
        // Every delivery to B's failing webhook was retried once, and the retry timed.
        assert_eq!(run["retry_lateness_ms"]["timed"], 100, "{run}");
        assert!(
            run["retry_lateness_ms"]["lateness"]["p99"].is_number(),
            "{run}"
        );
    }
    assert!(runs[0]["background"].is_null(), "B alone: {noisy}");
    assert_eq!(runs[1]["background"]["events"], 40, "B with A: {noisy}");
    assert!(
        runs[1]["background"]["http_requests"].as_u64().unwrap_or(0) > 0,
        "A's webhooks were called: {noisy}"
    );
    for figure in [
        "deliveries_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "retry_lateness_p50_ms",
        "retry_lateness_p99_ms",
    ] {
        let c = &noisy["comparison"][figure];
        assert!(c["difference"].is_number(), "{figure}: {noisy}");
        assert!(noisy["b_alone"][figure].is_number(), "{figure}: {noisy}");
        assert!(noisy["b_with_a"][figure].is_number(), "{figure}: {noisy}");
    }

    // Soak: the database sampled through the run; with a 2 s window, retention has deleted events by the end.
    let soak = line("soak");
    let disk = soak["disk"].as_array().expect("soak's disk samples");
    assert!(disk.len() >= 5, "{soak}");
    assert!(
        disk.iter().all(|d| d["bytes"].as_i64().unwrap_or(0) > 0),
        "{soak}"
    );
    let most_events = disk
        .iter()
        .filter_map(|d| d["events"].as_i64())
        .max()
        .unwrap_or(0);
    let last_events = disk.last().and_then(|d| d["events"].as_i64()).unwrap_or(0);
    assert!(
        last_events < 600 && most_events > 0,
        "retention removed events during the run: {soak}"
    );
    let relay = line("relay");
    assert_eq!(relay["logged"], 100, "{relay}");
    assert_eq!(relay["relay_start_lag_ms"]["samples"], 100, "{relay}");
    assert_eq!(relay["relay_response_ms"]["samples"], 100, "{relay}");
    assert!(relay["relay_response_ms"]["p99"].is_number(), "{relay}");
    assert!(relay["target_met"].is_boolean(), "{relay}");
    assert_eq!(relay["latency_ms"]["samples"], 100, "{relay}");

    // Scale (issue 12), its three parts at tiny sizes.
    let webhooks = line("scale-webhooks");
    let runs = webhooks["runs"].as_array().expect("scale-webhooks runs");
    assert_eq!(runs.len(), 2, "{webhooks}");
    for run in runs {
        assert!(
            run["match_ns_per_event"].as_f64().unwrap_or(0.0) > 0.0,
            "{run}"
        );
        assert!(
            run["refresh_one_organization_ms"]["p99"].is_number(),
            "{run}"
        );
        assert!(run["worker_hwm_mib"].as_f64().unwrap_or(0.0) > 0.0, "{run}");
        assert!(run["worker_sees_update_ms"]["p50"].is_number(), "{run}");
        assert!(run["api_list_webhooks_ms"]["p99"].is_number(), "{run}");
    }
    // 200 webhooks over 20 organizations: organization 1 lists 10.
    assert_eq!(runs[1]["api_list_webhooks_size"], 10, "{webhooks}");
    let backlog = line("scale-backlog");
    assert_eq!(backlog["logged"], 1_500, "{backlog}");
    assert!(
        backlog["drain_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{backlog}"
    );
    assert!(
        backlog["throughput_per_s"].as_f64().unwrap_or(0.0) > 0.0,
        "{backlog}"
    );
    assert!(
        !backlog["intervals"]
            .as_array()
            .expect("intervals")
            .is_empty(),
        "{backlog}"
    );
    let log = line("scale-log");
    // 2,000 events × 3 webhooks, 3 % of the deliveries with two rows.
    let rows = log["rows"].as_i64().unwrap_or(0);
    assert!((6_000..6_500).contains(&rows), "{log}");
    let figures = log["figures"].as_array().expect("scale-log figures");
    assert_eq!(figures.len(), 11, "{log}");
    assert!(figures.iter().all(|f| f["ms"]["p99"].is_number()), "{log}");
    assert!(log["drop_partition_ms"].is_number(), "{log}");
    assert!(
        log["recovered_per_call"][1]["redelivered"]
            .as_i64()
            .unwrap_or(0)
            > 0,
        "recover found the dead and overdue deliveries: {log}"
    );

    let limits = line("limits");
    for figure in [
        "http_requests_per_s",
        "amqp_quorum_publish_per_s",
        "amqp_quorum_consume_per_s",
    ] {
        assert!(
            limits[figure].as_f64().unwrap_or(0.0) > 0.0,
            "limits: {figure} in {limits}"
        );
    }
}
