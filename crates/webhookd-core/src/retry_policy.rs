//! When a failed delivery is tried again: the schedule, jitter, `Retry-After`, and which failures are final.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// The default waits before each retry, in seconds (Svix's schedule: 8 attempts over about 27 hours).
pub const DEFAULT_SCHEDULE: &str = "5,300,1800,7200,18000,36000,36000";
/// Delays are spread uniformly by this fraction either way.
pub const JITTER: f64 = 0.2;
/// The longest receiver `Retry-After` honoured by default (`WEBHOOKD_MAX_RETRY_AFTER`): one hour.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How one attempt ended, as far as the retry decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver answered with this status.
    Status {
        /// The HTTP status code.
        code: u16,
        /// Its `Retry-After`, if it sent a usable one.
        retry_after: Option<Duration>,
    },
    /// No usable answer: timeout, connection, DNS or TLS failure.
    Transport,
    /// The request could not be built (e.g. an invalid static header); trying again cannot help.
    Unsendable,
    /// No answer yet at the slow lane's threshold: the attempt was given up, to be made again at once from
    /// the retry queue, where it may take the whole timeout. It does not count as one of the attempts.
    HandedOver,
}

/// What happens after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Succeeded,
    /// Failed; try again after this wait.
    Retry(Duration),
    /// Cut short before it could fail (handed over): the same attempt is made again at once, so the
    /// schedule and the number of attempts are those of a receiver that was waited on.
    Repeat,
    /// Failed for good: attempts exhausted or a failure not worth retrying.
    Dead,
    /// 410 Gone: failed for good, and the webhook must be turned off.
    Gone,
}

/// The retry schedule and rules; see `decide`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    schedule: Vec<Duration>,
    retry_client_errors: bool,
    max_retry_after: Duration,
}

/// Why a schedule string is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected comma-separated non-negative seconds such as \"5,300,1800\", got {0:?}")]
pub struct ScheduleError(pub String);

impl RetryPolicy {
    /// A policy from its waits; `retry_client_errors` decides whether 4xx (other than 408/410/429) are retried.
    /// A receiver's `Retry-After` is honoured up to `DEFAULT_MAX_RETRY_AFTER` (see `with_max_retry_after`).
    pub fn new(schedule: Vec<Duration>, retry_client_errors: bool) -> Self {
        Self {
            schedule,
            retry_client_errors,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
        }
    }

    /// The same policy, honouring a receiver's `Retry-After` up to `max` (`WEBHOOKD_MAX_RETRY_AFTER`).
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Parses `WEBHOOK_RETRY_SCHEDULE`: waits in seconds, comma-separated, fractions allowed; empty = no retry.
    pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, ScheduleError> {
        if s.trim().is_empty() {
            return Ok(Vec::new());
        }
        s.split(',')
            .map(|part| {
                part.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|secs| secs.is_finite() && *secs >= 0.0 && *secs < 1e9)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| ScheduleError(s.to_owned()))
            })
            .collect()
    }

    /// The total number of attempts, the first one included.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len() as u32 + 1
    }

    /// The longest wait this policy can ask for (jitter and `Retry-After` included); nothing without retries.
    pub fn longest_wait(&self) -> Duration {
        self.schedule
            .iter()
            .max()
            .map(|d| d.mul_f64(1.0 + JITTER).max(self.max_retry_after))
            .unwrap_or_default()
    }

    /// The verdict on attempt number `attempt` (1 = the first) that ended with `result`.
    pub fn decide(&self, attempt: u32, result: AttemptResult, rng: &mut impl Rng) -> Verdict {
        let retry_after = match result {
            AttemptResult::Status {
                code: 200..=299, ..
            } => return Verdict::Succeeded,
            AttemptResult::Status { code: 410, .. } => return Verdict::Gone,
            AttemptResult::Unsendable => return Verdict::Dead,
            AttemptResult::Status { code, retry_after } => {
                let always = code >= 500 || code == 408 || code == 429 || code < 400;
                if !always && !self.retry_client_errors {
                    return Verdict::Dead;
                }
                retry_after
            }
            AttemptResult::Transport => None,
            AttemptResult::HandedOver => return Verdict::Repeat,
        };
        let Some(base) = self
            .schedule
            .get(attempt.saturating_sub(1) as usize)
            .copied()
        else {
            return Verdict::Dead;
        };
        let jittered = base.mul_f64(rng.gen_range((1.0 - JITTER)..=(1.0 + JITTER)));
        // A receiver's Retry-After is honoured up to the maximum, and never makes the wait shorter.
        let wait = match retry_after {
            Some(asked) => jittered.max(asked.min(self.max_retry_after)),
            None => jittered,
        };
        Verdict::Retry(wait)
    }
}

/// Parses a `Retry-After` header: delay-seconds or an HTTP date, relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy() -> RetryPolicy {
        RetryPolicy::new(RetryPolicy::parse_schedule(DEFAULT_SCHEDULE).unwrap(), true)
    }

    fn status(code: u16) -> AttemptResult {
        AttemptResult::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn default_schedule_gives_eight_attempts_with_jitter_within_twenty_percent() {
        let p = policy();
        assert_eq!(p.max_attempts(), 8);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let Verdict::Retry(wait) = p.decide(2, status(500), &mut rng) else {
                panic!("a 500 on attempt 2 is retried")
            };
            assert!((240.0..=360.0).contains(&wait.as_secs_f64()), "{wait:?}");
        }
        assert_eq!(p.decide(8, status(500), &mut rng), Verdict::Dead);
    }

    #[test]
    fn statuses_are_classified_like_the_peers() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(p.decide(1, status(204), &mut rng), Verdict::Succeeded);
        assert_eq!(p.decide(1, status(410), &mut rng), Verdict::Gone);
        assert_eq!(
            p.decide(1, AttemptResult::Unsendable, &mut rng),
            Verdict::Dead
        );
        for code in [301, 404, 408, 429, 500, 503] {
            assert!(
                matches!(p.decide(1, status(code), &mut rng), Verdict::Retry(_)),
                "{code}"
            );
        }
        assert!(matches!(
            p.decide(1, AttemptResult::Transport, &mut rng),
            Verdict::Retry(_)
        ));
        let strict = RetryPolicy::new(vec![Duration::from_secs(1)], false);
        assert_eq!(strict.decide(1, status(404), &mut rng), Verdict::Dead);
        assert!(matches!(
            strict.decide(1, status(429), &mut rng),
            Verdict::Retry(_)
        ));
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_maximum() {
        let p = RetryPolicy::new(vec![Duration::from_secs(100)], true);
        let mut rng = StdRng::seed_from_u64(3);
        let with = |code, secs| AttemptResult::Status {
            code,
            retry_after: Some(Duration::from_secs(secs)),
        };
        let mut wait = |policy: &RetryPolicy, result| match policy.decide(1, result, &mut rng) {
            Verdict::Retry(w) => w,
            other => panic!("expected a retry, got {other:?}"),
        };
        assert_eq!(
            wait(&p, with(503, 3000)),
            Duration::from_secs(3000),
            "far beyond twice the scheduled wait, but under the maximum: honoured"
        );
        assert_eq!(
            wait(&p, with(429, 100_000)),
            DEFAULT_MAX_RETRY_AFTER,
            "capped at the maximum"
        );
        let short = wait(&p, with(503, 1));
        assert!(
            (80.0..=120.0).contains(&short.as_secs_f64()),
            "never earlier than the jittered schedule: {short:?}"
        );
        let capped = p.clone().with_max_retry_after(Duration::from_secs(500));
        assert_eq!(wait(&capped, with(429, 1000)), Duration::from_secs(500));
        let below = wait(
            &capped.with_max_retry_after(Duration::from_secs(10)),
            with(429, 1000),
        );
        assert!(
            below.as_secs_f64() >= 80.0,
            "a maximum below the schedule leaves the schedule: {below:?}"
        );
    }

    #[test]
    fn the_longest_wait_covers_the_schedule_and_the_retry_after_maximum() {
        assert_eq!(policy().longest_wait(), Duration::from_secs(43_200));
        let short = RetryPolicy::new(RetryPolicy::parse_schedule("0.2,0.4").unwrap(), true);
        assert_eq!(short.longest_wait(), DEFAULT_MAX_RETRY_AFTER);
        assert_eq!(
            short
                .with_max_retry_after(Duration::from_millis(100))
                .longest_wait(),
            Duration::from_millis(480)
        );
        assert_eq!(
            RetryPolicy::new(Vec::new(), true).longest_wait(),
            Duration::ZERO,
            "no retries, no wait"
        );
    }

    #[test]
    fn a_handed_over_attempt_is_made_again_without_counting() {
        let p = policy();
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(
            p.decide(1, AttemptResult::HandedOver, &mut rng),
            Verdict::Repeat
        );
        assert_eq!(
            p.decide(8, AttemptResult::HandedOver, &mut rng),
            Verdict::Repeat,
            "even the last attempt is made in full"
        );
        let no_retries = RetryPolicy::new(Vec::new(), true);
        assert_eq!(
            no_retries.decide(1, AttemptResult::HandedOver, &mut rng),
            Verdict::Repeat
        );
    }

    #[test]
    fn schedules_parse_with_fractions_and_refuse_garbage() {
        assert_eq!(
            RetryPolicy::parse_schedule("0.5, 2").unwrap(),
            [Duration::from_millis(500), Duration::from_secs(2)]
        );
        assert!(RetryPolicy::parse_schedule("").unwrap().is_empty());
        assert!(RetryPolicy::parse_schedule("5,x").is_err());
        assert!(RetryPolicy::parse_schedule("-1").is_err());
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
