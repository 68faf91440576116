//! Log output: JSON lines for log collectors (the default when stdout is not a terminal), readable text
//! for terminals; `RUST_LOG` filters (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber per `LOG_FORMAT` (`json` or `text`) and `RUST_LOG`. Services log to
/// stdout; one-shot commands whose stdout is their answer (`publish`, `token`) log to stderr.
pub fn init(to_stderr: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match std::env::var("LOG_FORMAT").ok().as_deref() {
        Some("json") => true,
        Some("text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
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
