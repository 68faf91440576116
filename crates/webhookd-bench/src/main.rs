//! `webhookd-bench`: measures a real `webhookd worker` process end to end, on this machine, against
//! PostgreSQL and RabbitMQ on 127.0.0.1 and a fast local receiver (`relay`: a `webhookd serve` process,
//! fed through its `POST /api/relay/label-studio/` as Label Studio would).
//!
//! ```text
//! cargo build --release -p webhookd -p webhookd-bench
//! cargo run --release -p webhookd-bench -- <scenario> [--scale tiny|full] [--worker-bin PATH]
//! ```
//! Every run creates its own database (`webhookd_bench_<random>`), exchange and queue prefix, and removes
//! them afterwards. Each scenario prints a table and then one JSON line on stdout; progress goes to stderr.
//! The worker inherits this process's environment apart from the variables a run sets (database, names,
//! retry schedule, timeout, logging), so e.g. `WEBHOOKD_PREFETCH=64 webhookd-bench throughput` tunes it.

mod limits;
mod procstat;
mod publish;
mod receiver;
mod relay;
mod report;
mod sandbox;
mod scenarios;
mod world;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use crate::scenarios::{Report, Scale};

/// Any error, with its context in its message.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Benchmarks of webhookd: a real worker process, real RabbitMQ and PostgreSQL, a local receiver.
///
/// Each scenario prints a table, then one JSON line, on stdout. The worker inherits this environment
/// apart from what a run sets, so WEBHOOKD_PREFETCH, WEBHOOKD_MAX_CONCURRENT_DELIVERIES or
/// WEBHOOKD_DB_POOL_SIZE given here tune it.
#[derive(Parser)]
#[command(about)]
struct Cli {
    /// What to measure.
    scenario: Scenario,
    /// `full`: the figures of the issue (minutes); `tiny`: seconds per scenario, for tests.
    #[arg(long, value_enum, default_value_t = ScaleArg::Full)]
    scale: ScaleArg,
    /// The `webhookd` binary to run as the worker (default: $WEBHOOKD_BIN, else the `webhookd` next to
    /// this binary, else target/release/webhookd of the workspace). Build it with
    /// `cargo build --release -p webhookd`.
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// `slow-endpoint` and `noisy-neighbour`: how many times to run the two configurations, alternately;
    /// the figures and their ratios are the medians (a shared machine's speed drifts between runs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pairs: u32,
    /// `latency`: the rates to run, events per second, comma-separated (default: 500,2000 at full scale).
    #[arg(long, value_delimiter = ',')]
    rates: Vec<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Throughput,
    Latency,
    Fanout,
    SlowEndpoint,
    FailingEndpoint,
    NoisyNeighbour,
    Soak,
    Relay,
    Limits,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScaleArg {
    Tiny,
    Full,
}

const ALL: [Scenario; 9] = [
    Scenario::Throughput,
    Scenario::Latency,
    Scenario::Fanout,
    Scenario::SlowEndpoint,
    Scenario::FailingEndpoint,
    Scenario::NoisyNeighbour,
    Scenario::Soak,
    Scenario::Relay,
    Scenario::Limits,
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("webhookd-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let mut scale = match cli.scale {
        ScaleArg::Tiny => Scale::tiny(),
        ScaleArg::Full => Scale::full(),
    };
    scale.pairs = cli.pairs as usize;
    if let Some(bad) = cli.rates.iter().find(|r| !(r.is_finite() && **r > 0.0)) {
        eprintln!("webhookd-bench: --rates: {bad} is not a positive number of events per second");
        return ExitCode::FAILURE;
    }
    if !cli.rates.is_empty() {
        scale.latency_rates = cli.rates.clone();
    }
    let selected: Vec<Scenario> = match cli.scenario {
        Scenario::All => ALL.to_vec(),
        one => vec![one],
    };
    let needs_worker = selected.iter().any(|s| *s != Scenario::Limits);
    let worker_bin = if needs_worker {
        match find_worker(cli.worker_bin) {
            Ok(path) => {
                eprintln!("bench: worker binary {}", path.display());
                Some(path)
            }
            Err(e) => {
                eprintln!("webhookd-bench: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let mut failed = Vec::new();
    for scenario in selected {
        let name = scenario_name(scenario);
        eprintln!("bench: scenario {name} ({} scale)", scale.name);
        let bin = worker_bin.as_deref().unwrap_or(Path::new("webhookd"));
        let result = match scenario {
            Scenario::Throughput => scenarios::throughput(&scale, bin).await,
            Scenario::Latency => scenarios::latency(&scale, bin).await,
            Scenario::Fanout => scenarios::fanout(&scale, bin).await,
            Scenario::SlowEndpoint => scenarios::slow_endpoint(&scale, bin).await,
            Scenario::FailingEndpoint => scenarios::failing_endpoint(&scale, bin).await,
            Scenario::NoisyNeighbour => scenarios::noisy_neighbour(&scale, bin).await,
            Scenario::Soak => scenarios::soak(&scale, bin).await,
            Scenario::Relay => scenarios::relay(&scale, bin).await,
            Scenario::Limits => scenarios::limits(&scale).await,
            Scenario::All => continue,
        };
        match result {
            Ok(Report {
                table,
                summary,
                json,
            }) => {
                println!("{}", table.render());
                if let Some(summary) = summary {
                    println!("{}", summary.render());
                }
                println!("{json}");
            }
            Err(e) => {
                eprintln!("webhookd-bench: scenario {name} failed: {e}");
                failed.push(name);
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("webhookd-bench: failed: {}", failed.join(", "));
        ExitCode::FAILURE
    }
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Throughput => "throughput",
        Scenario::Latency => "latency",
        Scenario::Fanout => "fanout",
        Scenario::SlowEndpoint => "slow-endpoint",
        Scenario::FailingEndpoint => "failing-endpoint",
        Scenario::NoisyNeighbour => "noisy-neighbour",
        Scenario::Soak => "soak",
        Scenario::Relay => "relay",
        Scenario::Limits => "limits",
        Scenario::All => "all",
    }
}

/// `--worker-bin`, else `$WEBHOOKD_BIN`, else `webhookd` beside this executable (same target directory
/// and profile), else `target/release/webhookd` of the workspace.
fn find_worker(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    let explicit = flag.or_else(|| std::env::var_os("WEBHOOKD_BIN").map(PathBuf::from));
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "worker binary {} does not exist; build it with `cargo build --release -p webhookd`",
                path.display()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("webhookd")));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/webhookd");
    beside
        .into_iter()
        .chain([workspace])
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no webhookd binary found beside this one nor in target/release; build it with \
             `cargo build --release -p webhookd` (with the same CARGO_TARGET_DIR), or pass --worker-bin"
                .to_owned()
        })
}
