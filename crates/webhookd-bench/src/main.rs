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

mod floor_consumer;
mod limits;
mod procstat;
mod publish;
mod receiver;
mod relay;
mod report;
mod sandbox;
mod scale;
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
    /// `scale` only: one of its parts (webhooks, backlog, log); all three when left out.
    #[arg(value_enum)]
    part: Option<ScalePart>,
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
    /// `scale webhooks`: the totals measured, e.g. `--webhooks 10,100000` (default: the scale's).
    #[arg(long, value_delimiter = ',')]
    webhooks: Option<Vec<u64>>,
    /// `scale backlog`: events queued before the worker starts (default: the scale's).
    #[arg(long)]
    backlog_events: Option<u64>,
    /// `floor-consumer` (run by `latency`, not by hand): the queue to consume from.
    #[arg(long, hide = true)]
    queue: Option<String>,
    /// `floor-consumer`: how many messages to consume before printing the figures.
    #[arg(long, hide = true)]
    count: Option<u64>,
    /// `scale log`: events in the generated log; each is delivered to its organization's 10 webhooks (full
    /// scale), so the log holds about 10.3 rows per event (default: the scale's).
    #[arg(long)]
    log_events: Option<i64>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScalePart {
    Webhooks,
    Backlog,
    Log,
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
    Scale,
    All,
    /// `latency`'s "RabbitMQ alone" consumer, in a process of its own (see `floor_consumer`).
    #[value(hide = true)]
    FloorConsumer,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ScaleArg {
    Tiny,
    Full,
}

const ALL: [Scenario; 10] = [
    Scenario::Throughput,
    Scenario::Latency,
    Scenario::Fanout,
    Scenario::SlowEndpoint,
    Scenario::FailingEndpoint,
    Scenario::NoisyNeighbour,
    Scenario::Soak,
    Scenario::Relay,
    Scenario::Limits,
    Scenario::Scale,
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // The floor consumer's runtime is built as the worker's is: tokio's default number of threads (one
    // per core, or TOKIO_WORKER_THREADS), so that the two compare under any setting.
    if cli.scenario != Scenario::FloorConsumer {
        builder.worker_threads(2);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("webhookd-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    if cli.scenario == Scenario::FloorConsumer {
        let (Some(queue), Some(count)) = (cli.queue.as_deref(), cli.count) else {
            eprintln!("webhookd-bench: floor-consumer needs --queue and --count");
            return ExitCode::from(2);
        };
        return match floor_consumer::run(queue, count).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("webhookd-bench: floor-consumer: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    let mut sizes = match cli.scale {
        ScaleArg::Tiny => scale::ScaleSizes::tiny(),
        ScaleArg::Full => scale::ScaleSizes::full(),
    };
    if let Some(totals) = cli.webhooks {
        sizes.webhook_totals = totals;
    }
    if let Some(n) = cli.backlog_events {
        sizes.backlog_events = n;
    }
    if let Some(n) = cli.log_events {
        sizes.log_events = n;
    }
    let parts: Vec<scale::Part> = match cli.part {
        Some(ScalePart::Webhooks) => vec![scale::Part::Webhooks],
        Some(ScalePart::Backlog) => vec![scale::Part::Backlog],
        Some(ScalePart::Log) => vec![scale::Part::Log],
        None => vec![
            scale::Part::Webhooks,
            scale::Part::Backlog,
            scale::Part::Log,
        ],
    };
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
        let one = |r: Result<Report, BoxError>| r.map(|r| vec![r]);
        let result = match scenario {
            Scenario::Throughput => one(scenarios::throughput(&scale, bin).await),
            Scenario::Latency => one(scenarios::latency(&scale, bin).await),
            Scenario::Fanout => one(scenarios::fanout(&scale, bin).await),
            Scenario::SlowEndpoint => one(scenarios::slow_endpoint(&scale, bin).await),
            Scenario::FailingEndpoint => one(scenarios::failing_endpoint(&scale, bin).await),
            Scenario::NoisyNeighbour => one(scenarios::noisy_neighbour(&scale, bin).await),
            Scenario::Soak => one(scenarios::soak(&scale, bin).await),
            Scenario::Relay => one(scenarios::relay(&scale, bin).await),
            Scenario::Limits => one(scenarios::limits(&scale).await),
            Scenario::Scale => scale::run(&sizes, &parts, bin).await,
            Scenario::All | Scenario::FloorConsumer => continue,
        };
        match result {
            Ok(reports) => {
                for Report {
                    table,
                    summary,
                    json,
                } in reports
                {
                    println!("{}", table.render());
                    if let Some(summary) = summary {
                        println!("{}", summary.render());
                    }
                    println!("{json}");
                }
            }
            Err(e) => {
                // Some errors (tokio-postgres' "db error") say what went wrong only in their sources.
                let message = webhookd_store::with_causes(&*e);
                eprintln!("webhookd-bench: scenario {name} failed: {message}");
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
        Scenario::Scale => "scale",
        Scenario::All => "all",
        Scenario::FloorConsumer => "floor-consumer",
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
