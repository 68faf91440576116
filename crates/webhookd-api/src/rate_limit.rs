//! Per-organization rate limits of the routes that make webhookd send requests (test pings, redelivery,
//! recover), so that the API cannot be used to send bursts at any URL. Each limit is a GCRA cell rate with a
//! burst (`governor`), kept in memory per API process: N processes allow N times the rate.

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// A rate: `per_minute` requests a minute on average, and up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests a minute, on average.
    pub per_minute: NonZeroU32,
    /// Requests allowed at once (after a quiet spell).
    pub burst: NonZeroU32,
}

impl Rate {
    /// `per_minute` a minute, bursts of `burst`; zeros count as 1.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute: NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// The limited routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    /// `POST /api/webhooks/{id}/test/`.
    TestPing,
    /// `POST /api/deliveries/{id}/redeliver/`.
    Redeliver,
    /// `POST /api/webhooks/{id}/recover/`.
    Recover,
}

impl Limited {
    /// What the 429 calls the requests, and the variables that set the rate and the burst.
    fn describe(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Limited::TestPing => (
                "test pings",
                "WEBHOOKD_TEST_PINGS_PER_MINUTE",
                "WEBHOOKD_TEST_PINGS_BURST",
            ),
            Limited::Redeliver => (
                "redeliveries",
                "WEBHOOKD_REDELIVERIES_PER_MINUTE",
                "WEBHOOKD_REDELIVERIES_BURST",
            ),
            Limited::Recover => (
                "recover requests",
                "WEBHOOKD_RECOVERIES_PER_MINUTE",
                "WEBHOOKD_RECOVERIES_BURST",
            ),
        }
    }
}

/// The three rates (`ApiSettings::rate_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Test pings: 30 a minute, bursts of 10, by default.
    pub test_ping: Rate,
    /// Redeliveries: 60 a minute, bursts of 20, by default.
    pub redeliver: Rate,
    /// Recover requests (each may queue thousands of redeliveries): 2 a minute, bursts of 3, by default.
    pub recover: Rate,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            test_ping: Rate::new(30, 10),
            redeliver: Rate::new(60, 20),
            recover: Rate::new(2, 3),
        }
    }
}

/// The limiters, keyed by organization.
pub struct RateLimits {
    settings: RateLimitSettings,
    test_ping: DefaultKeyedRateLimiter<i64>,
    redeliver: DefaultKeyedRateLimiter<i64>,
    recover: DefaultKeyedRateLimiter<i64>,
    clock: DefaultClock,
}

fn limiter(rate: Rate) -> DefaultKeyedRateLimiter<i64> {
    RateLimiter::keyed(Quota::per_minute(rate.per_minute).allow_burst(rate.burst))
}

impl RateLimits {
    /// Fresh limiters: every organization starts with a full burst.
    pub fn new(settings: RateLimitSettings) -> Self {
        Self {
            settings,
            test_ping: limiter(settings.test_ping),
            redeliver: limiter(settings.redeliver),
            recover: limiter(settings.recover),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one `route` request of `organization`; a 429 naming the limit and when to retry if it is over.
    pub fn check(&self, route: Limited, organization: i64) -> Result<(), ApiError> {
        let (limiter, rate) = match route {
            Limited::TestPing => (&self.test_ping, self.settings.test_ping),
            Limited::Redeliver => (&self.redeliver, self.settings.redeliver),
            Limited::Recover => (&self.recover, self.settings.recover),
        };
        let Err(not_until) = limiter.check_key(&organization) else {
            return Ok(());
        };
        // Organizations that have been quiet long enough to be back at a full burst are forgotten.
        limiter.retain_recent();
        let retry_after = not_until.wait_time_from(self.clock.now());
        let (what, rate_var, burst_var) = route.describe();
        Err(ApiError::RateLimited {
            detail: format!(
                "Too many {what} for organization {organization}: at most {} a minute, in bursts of at most {} \
                 ({rate_var}, {burst_var}). Retry in {} s.",
                rate.per_minute,
                rate.burst,
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)
            ),
            retry_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_each_organization_is_limited_on_its_own() {
        let limits = RateLimits::new(RateLimitSettings {
            test_ping: Rate::new(6, 2),
            ..Default::default()
        });
        for _ in 0..2 {
            assert!(limits.check(Limited::TestPing, 1).is_ok());
        }
        match limits.check(Limited::TestPing, 1) {
            Err(ApiError::RateLimited {
                detail,
                retry_after,
            }) => {
                assert!(
                    retry_after.as_secs_f64() > 9.0 && retry_after.as_secs_f64() <= 10.0,
                    "one ping every 10 s: {retry_after:?}"
                );
                assert_eq!(
                    detail,
                    "Too many test pings for organization 1: at most 6 a minute, in bursts of at most 2 \
                     (WEBHOOKD_TEST_PINGS_PER_MINUTE, WEBHOOKD_TEST_PINGS_BURST). Retry in 10 s."
                );
            }
            other => panic!("expected a 429, got {other:?}"),
        }
        assert!(
            limits.check(Limited::TestPing, 2).is_ok(),
            "another organization"
        );
        assert!(limits.check(Limited::Redeliver, 1).is_ok(), "another route");
    }
}
