//! The one retry rhythm of the worker's loops that wait out an outage: exponential, jittered, never giving up.

use std::time::Duration;

use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};

/// Backoff from `initial` growing 1.5× per try (the `backoff` crate's multiplier), jittered by ±50 %, to `max`,
/// forever.
pub(crate) fn backoff_forever(initial: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBackoffBuilder::new()
        .with_initial_interval(initial)
        .with_max_interval(max)
        .with_max_elapsed_time(None)
        .build()
}

/// The rhythm of database retries: 0.1 s growing to 5 s.
pub(crate) fn database_backoff() -> ExponentialBackoff {
    backoff_forever(Duration::from_millis(100), Duration::from_secs(5))
}
