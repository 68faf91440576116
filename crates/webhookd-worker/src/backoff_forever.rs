//! The one retry rhythm of the worker's loops that wait out an outage: exponential, jittered, never giving up.

use std::time::Duration;

use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};

/// Backoff from `initial` doubling to `max`, forever.
pub fn backoff_forever(initial: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBackoffBuilder::new()
        .with_initial_interval(initial)
        .with_max_interval(max)
        .with_max_elapsed_time(None)
        .build()
}
