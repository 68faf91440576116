//! Log output: JSON lines for log collectors (the default when stdout is not a terminal), readable text
//! for terminals; `RUST_LOG` filters (default `info`). Both are checked with the rest of the configuration.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Installs the global subscriber per `LOG_FORMAT` and `RUST_LOG`. Services log to stdout; one-shot
/// commands (`publish`, `token`, whose stdout is their answer, `migrate`, and `demo`, which prints its
/// delivery log as a table) log to stderr.
pub fn init(config: &Config, to_stderr: bool) {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = config
        .log_json
        .unwrap_or_else(|| !std::io::stdout().is_terminal());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match (json, to_stderr) {
        (true, false) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        (true, true) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .try_init(),
        (false, false) => builder.try_init(),
        (false, true) => builder.with_writer(std::io::stderr).try_init(),
    };
    if let Err(e) = result {
        eprintln!("webhookd: logging already initialised: {e}");
    }
}
