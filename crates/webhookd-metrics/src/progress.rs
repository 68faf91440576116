//! The progress of a batching writer, for the stall signal: how long it has held work that it has not
//! committed, and the last error it met meanwhile. `/readyz` and the `webhookd_writer_*` series read it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{WRITER_STALLED, WRITER_STALL_SECONDS};

/// One writer's progress; shared between the writer and whoever watches it.
#[derive(Debug)]
pub struct WriterProgress {
    name: &'static str,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Since when the writer has held work it has not committed (or resolved otherwise).
    busy_since: Option<Instant>,
    /// The last error met while busy.
    last_error: Option<String>,
}

/// A writer holding uncommitted work for longer than the stall threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// The writer, e.g. "delivery_log".
    pub writer: &'static str,
    /// How long it has held uncommitted work.
    pub for_: Duration,
    /// The last error it met, with the database's message and SQLSTATE.
    pub last_error: Option<String>,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the {} writer has committed nothing for {} s",
            self.writer,
            self.for_.as_secs()
        )?;
        match &self.last_error {
            Some(e) => write!(f, "; last error: {e}"),
            None => write!(f, " (its write has not returned)"),
        }
    }
}

impl WriterProgress {
    /// A writer named `name`, idle.
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            state: Mutex::new(State::default()),
        })
    }

    /// The writer's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A write begins (the writer now holds work, unless it already did).
    pub fn started(&self) {
        self.state().busy_since.get_or_insert_with(Instant::now);
    }

    /// The writer's work is resolved (committed, or refused for good): it is idle again.
    pub fn finished(&self) {
        let mut state = self.state();
        state.busy_since = None;
        state.last_error = None;
    }

    /// A write failed and will be made again.
    pub fn failed(&self, error: &str) {
        self.state().last_error = Some(error.to_owned());
    }

    /// How long the writer has held work it has not committed (zero when idle).
    pub fn busy_for(&self, now: Instant) -> Duration {
        self.state()
            .busy_since
            .map(|t| now.saturating_duration_since(t))
            .unwrap_or_default()
    }

    /// The stall, if the writer has held uncommitted work for `after` or longer; also updates the
    /// `webhookd_writer_stall_seconds` and `webhookd_writer_stalled` series.
    pub fn stall(&self, after: Duration, now: Instant) -> Option<Stall> {
        let (busy, last_error) = {
            let state = self.state();
            let busy = state
                .busy_since
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            (busy, state.last_error.clone())
        };
        let stalled = !busy.is_zero() && busy >= after;
        WRITER_STALL_SECONDS
            .with_label_values(&[self.name])
            .set(busy.as_secs_f64());
        WRITER_STALLED
            .with_label_values(&[self.name])
            .set(i64::from(stalled));
        stalled.then_some(Stall {
            writer: self.name,
            for_: busy,
            last_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_stalls_when_it_holds_work_past_the_threshold() {
        let p = WriterProgress::new("test_writer");
        let t0 = Instant::now();
        assert_eq!(p.stall(Duration::from_secs(1), t0), None, "idle");
        p.started();
        p.failed("database error: FATAL: terminating connection (SQLSTATE 57P01)");
        let later = Instant::now() + Duration::from_secs(2);
        let stall = p.stall(Duration::from_secs(1), later).unwrap();
        assert_eq!(stall.writer, "test_writer");
        assert!(stall.to_string().starts_with("the test_writer writer has committed nothing for 2 s; last error: database error: FATAL: terminating connection (SQLSTATE 57P01)"), "{stall}");
        assert_eq!(WRITER_STALLED.with_label_values(&["test_writer"]).get(), 1);
        p.finished();
        assert_eq!(p.stall(Duration::from_secs(1), later), None);
        assert_eq!(WRITER_STALLED.with_label_values(&["test_writer"]).get(), 0);
    }
}
