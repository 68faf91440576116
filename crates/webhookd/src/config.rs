//! Configuration from environment variables: every setting has a default that works on a developer
//! machine, and a bad value stops start-up with a message naming the variable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use webhookd_api::rate_limit::{Rate, RateLimitSettings};
use webhookd_broker::Topology;
use webhookd_core::retry_policy::{DEFAULT_MAX_RETRY_AFTER, DEFAULT_SCHEDULE};
use webhookd_core::{Catalog, NetworkPolicy, RetryPolicy};
use webhookd_store::retention::RetentionSettings;
use webhookd_worker::WorkerSettings;

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The variable's value does not parse.
    #[error("{var}={value:?} is invalid: expected {expected}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The custom actions file is unusable.
    #[error("WEBHOOKD_ACTIONS_FILE: {0}")]
    Actions(#[from] webhookd_core::actions::CatalogError),
}

/// Every setting, parsed.
#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `AMQP_URL`.
    pub amqp_url: String,
    /// `WEBHOOKD_EXCHANGE`.
    pub exchange: String,
    /// `WEBHOOKD_QUEUE_PREFIX`.
    pub queue_prefix: String,
    /// `WEBHOOK_BATCH_SIZE`.
    pub batch_size: usize,
    /// `WEBHOOK_TIMEOUT`.
    pub timeout: Duration,
    /// `WEBHOOK_RETRY_SCHEDULE`.
    pub retry_schedule: Vec<Duration>,
    /// `WEBHOOK_RETRY_CLIENT_ERRORS`.
    pub retry_client_errors: bool,
    /// `WEBHOOKD_MAX_RETRY_AFTER`: the longest receiver `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// `WEBHOOK_MAX_CONSECUTIVE_FAILURES`.
    pub max_consecutive_failures: i32,
    /// `WEBHOOKD_PREFETCH`.
    pub prefetch: u16,
    /// `WEBHOOKD_RETRY_PREFETCH`.
    pub retry_prefetch: u16,
    /// `WEBHOOKD_MAX_CONCURRENT_DELIVERIES`.
    pub max_concurrent_deliveries: usize,
    /// `WEBHOOKD_MAX_CONCURRENT_PER_WEBHOOK`.
    pub max_concurrent_per_webhook: usize,
    /// `WEBHOOKD_DB_POOL_SIZE`.
    pub pool_size: usize,
    /// `WEBHOOKD_RESPONSE_EXCERPT_BYTES`.
    pub response_excerpt_bytes: usize,
    /// `WEBHOOKD_SHUTDOWN_GRACE`.
    pub shutdown_grace: Duration,
    /// The catalog: built-in actions plus those of `WEBHOOKD_ACTIONS_FILE`.
    pub catalog: Arc<Catalog>,
    /// `WEBHOOKD_SSRF_PROTECTION` and `WEBHOOKD_ALLOWED_NETWORKS`.
    pub network_policy: NetworkPolicy,
    /// `WEBHOOKD_LISTEN`.
    pub listen: std::net::SocketAddr,
    /// `WEBHOOKD_OPS_LISTEN`: health and metrics of a worker-only process.
    pub ops_listen: std::net::SocketAddr,
    /// `WEBHOOK_MAX_PER_ORGANIZATION`.
    pub max_webhooks_per_organization: i64,
    /// `WEBHOOKD_MAX_BODY_BYTES`.
    pub max_body_bytes: usize,
    /// `WEBHOOKD_MAX_EVENT_BYTES`: the largest event envelope, in bytes.
    pub max_event_bytes: usize,
    /// `WEBHOOKD_SECRET_ROTATION_GRACE`.
    pub secret_grace: Duration,
    /// `WEBHOOKD_STALL_AFTER`: how long a writer may hold uncommitted work before it counts as stalled.
    pub stall_after: Duration,
    /// `WEBHOOK_DISABLE_AFTER`: how long a webhook must fail, with no success, before it is turned off.
    pub disable_after: Duration,
    /// `WEBHOOKD_LOG_RETENTION_DAYS`, `WEBHOOKD_LOG_PARTITION_MINUTES`, `WEBHOOKD_IDEMPOTENCY_KEY_HOURS`.
    pub retention: RetentionSettings,
    /// `WEBHOOKD_REPLAY_RATE`: events a replay queues per second.
    pub replay_rate: f64,
    /// `WEBHOOKD_API_DEPENDENCY_TIMEOUT`: the API's limit on each wait for the database pool, the broker or DNS.
    pub api_dependency_timeout: Duration,
    /// `WEBHOOKD_TEST_PINGS_*`, `WEBHOOKD_REDELIVERIES_*`, `WEBHOOKD_RECOVERIES_*`: per-organization rates.
    pub rate_limits: RateLimitSettings,
    /// `RUST_LOG`: the log filter.
    pub log_filter: String,
    /// `LOG_FORMAT`: JSON lines (`Some(true)`), text (`Some(false)`), or by whether stdout is a terminal.
    pub log_json: Option<bool>,
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn get(&self, var: &'static str) -> Option<String> {
        (self.lookup)(var).filter(|v| !v.trim().is_empty())
    }

    fn string(&self, var: &'static str, default: &str) -> String {
        self.get(var).unwrap_or_else(|| default.to_owned())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        default: T,
        expected: &'static str,
        ok: impl Fn(&T) -> bool,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(value) => match value.trim().parse::<T>() {
                Ok(v) if ok(&v) => Ok(v),
                _ => Err(ConfigError::Invalid {
                    var,
                    value,
                    expected,
                }),
            },
        }
    }

    /// A positive number of `unit`-second units (hours: 3600), as a duration.
    fn seconds_scaled(
        &self,
        var: &'static str,
        default: f64,
        unit: f64,
        expected: &'static str,
    ) -> Result<Duration, ConfigError> {
        let n = self.parse(var, default, expected, |n: &f64| {
            n.is_finite() && *n > 0.0 && *n * unit < 1e10
        })?;
        Ok(Duration::from_secs_f64(n * unit))
    }

    fn seconds(
        &self,
        var: &'static str,
        default: f64,
        expected: &'static str,
    ) -> Result<Duration, ConfigError> {
        let secs = self.parse(var, default, expected, |s: &f64| {
            s.is_finite() && *s > 0.0 && *s < 1e6
        })?;
        Ok(Duration::from_secs_f64(secs))
    }

    /// A per-minute rate and its burst, each a positive integer.
    fn rate(
        &self,
        per_minute_var: &'static str,
        burst_var: &'static str,
        default: Rate,
    ) -> Result<Rate, ConfigError> {
        let expected = "a positive integer";
        Ok(Rate {
            per_minute: self.parse(per_minute_var, default.per_minute, expected, |_| true)?,
            burst: self.parse(burst_var, default.burst, expected, |_| true)?,
        })
    }

    fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(value) => Err(ConfigError::Invalid {
                var,
                value,
                expected: "true or false",
            }),
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|var| std::env::var(var).ok())
    }

    /// Reads settings through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env { lookup };
        let database_url = env.string(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/webhookd",
        );
        if webhookd_store::database::parse_url(&database_url).is_err()
            || !database_url.starts_with("postgres")
        {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                value: redact_url(&database_url),
                expected: "a postgres:// URL naming a database",
            });
        }
        let amqp_url = env.string("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        // This build's AMQP client has no TLS: say so now rather than fail to connect later.
        if !amqp_url.starts_with("amqp://") {
            return Err(ConfigError::Invalid {
                var: "AMQP_URL",
                value: redact_url(&amqp_url),
                expected: "an amqp:// URL (amqps:// is not supported by this build)",
            });
        }
        if webhookd_broker::parse_url(&amqp_url).is_err() {
            return Err(ConfigError::Invalid {
                var: "AMQP_URL",
                value: redact_url(&amqp_url),
                expected: "a valid amqp:// URL (frame_max, if set: 0 or at least 4096)",
            });
        }
        // Set but empty (or "none") means no retries; unset means the default schedule.
        let schedule_text = match (env.lookup)("WEBHOOK_RETRY_SCHEDULE") {
            None => DEFAULT_SCHEDULE.to_owned(),
            Some(v) if v.trim().eq_ignore_ascii_case("none") => String::new(),
            Some(v) => v,
        };
        let retry_schedule =
            RetryPolicy::parse_schedule(&schedule_text).map_err(|_| ConfigError::Invalid {
                var: "WEBHOOK_RETRY_SCHEDULE",
                value: schedule_text.clone(),
                expected: "comma-separated waits in seconds, e.g. 5,300,1800",
            })?;
        let actions_file = env.get("WEBHOOKD_ACTIONS_FILE").map(PathBuf::from);
        let catalog = match &actions_file {
            Some(path) => Catalog::builtin().with_custom_file(path)?,
            None => Catalog::builtin(),
        };
        let allowed_text = env.string("WEBHOOKD_ALLOWED_NETWORKS", "");
        let allowed =
            NetworkPolicy::parse_networks(&allowed_text).map_err(|_| ConfigError::Invalid {
                var: "WEBHOOKD_ALLOWED_NETWORKS",
                value: allowed_text.clone(),
                expected: "comma-separated CIDR networks, e.g. 127.0.0.0/8,::1/128",
            })?;
        let network_policy = if env.boolean("WEBHOOKD_SSRF_PROTECTION", true)? {
            NetworkPolicy::new(allowed)
        } else {
            NetworkPolicy::allow_all()
        };
        let name_ok =
            |s: &String| !s.is_empty() && s.len() <= 200 && !s.contains(char::is_whitespace);
        let defaults = RateLimitSettings::default();
        Ok(Self {
            database_url,
            amqp_url,
            exchange: env.parse(
                "WEBHOOKD_EXCHANGE",
                "webhookd.events".to_owned(),
                "an exchange name",
                name_ok,
            )?,
            queue_prefix: env.parse(
                "WEBHOOKD_QUEUE_PREFIX",
                "webhookd".to_owned(),
                "a queue name prefix",
                name_ok,
            )?,
            batch_size: env.parse("WEBHOOK_BATCH_SIZE", 5000usize, "a positive integer", |n| {
                *n > 0
            })?,
            timeout: env.seconds(
                "WEBHOOK_TIMEOUT",
                1.0,
                "a positive number of seconds, e.g. 1.0",
            )?,
            retry_schedule,
            retry_client_errors: env.boolean("WEBHOOK_RETRY_CLIENT_ERRORS", true)?,
            max_retry_after: env.seconds(
                "WEBHOOKD_MAX_RETRY_AFTER",
                DEFAULT_MAX_RETRY_AFTER.as_secs_f64(),
                "a positive number of seconds",
            )?,
            max_consecutive_failures: env.parse(
                "WEBHOOK_MAX_CONSECUTIVE_FAILURES",
                50i32,
                "an integer (<= 0 never disables)",
                |_| true,
            )?,
            max_concurrent_deliveries: env.parse(
                "WEBHOOKD_MAX_CONCURRENT_DELIVERIES",
                256usize,
                "an integer from 1 to 100000",
                |n| (1..=100_000).contains(n),
            )?,
            max_concurrent_per_webhook: env.parse(
                "WEBHOOKD_MAX_CONCURRENT_PER_WEBHOOK",
                64usize,
                "an integer from 1 to 100000",
                |n| (1..=100_000).contains(n),
            )?,
            prefetch: env.parse(
                "WEBHOOKD_PREFETCH",
                1024u16,
                "an integer from 1 to 65535",
                |n| *n > 0,
            )?,
            retry_prefetch: env.parse(
                "WEBHOOKD_RETRY_PREFETCH",
                48u16,
                "an integer from 1 to 65535",
                |n| *n > 0,
            )?,
            pool_size: env.parse(
                "WEBHOOKD_DB_POOL_SIZE",
                16usize,
                "an integer from 2 to 1000",
                |n| (2..=1000).contains(n),
            )?,
            response_excerpt_bytes: env.parse(
                "WEBHOOKD_RESPONSE_EXCERPT_BYTES",
                4096usize,
                "an integer up to 1048576",
                |n| *n <= 1 << 20,
            )?,
            shutdown_grace: env.seconds(
                "WEBHOOKD_SHUTDOWN_GRACE",
                30.0,
                "a positive number of seconds",
            )?,
            catalog: Arc::new(catalog),
            network_policy,
            listen: env.parse(
                "WEBHOOKD_LISTEN",
                std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
                "an address and port such as 127.0.0.1:8080",
                |_| true,
            )?,
            ops_listen: env.parse(
                "WEBHOOKD_OPS_LISTEN",
                std::net::SocketAddr::from(([127, 0, 0, 1], 9091)),
                "an address and port such as 127.0.0.1:9091",
                |_| true,
            )?,
            max_webhooks_per_organization: env.parse(
                "WEBHOOK_MAX_PER_ORGANIZATION",
                100i64,
                "a positive integer",
                |n| *n > 0,
            )?,
            max_body_bytes: env.parse(
                "WEBHOOKD_MAX_BODY_BYTES",
                1usize << 20,
                "a positive number of bytes",
                |n| *n > 0,
            )?,
            max_event_bytes: env.parse(
                "WEBHOOKD_MAX_EVENT_BYTES",
                1usize << 20,
                "a positive number of bytes",
                |n| *n > 0,
            )?,
            secret_grace: env.seconds(
                "WEBHOOKD_SECRET_ROTATION_GRACE",
                86_400.0,
                "a positive number of seconds",
            )?,
            stall_after: env.seconds(
                "WEBHOOKD_STALL_AFTER",
                30.0,
                "a positive number of seconds",
            )?,
            disable_after: Duration::from_secs_f64(env.parse(
                "WEBHOOK_DISABLE_AFTER",
                86_400.0,
                "a number of seconds, 0 or more",
                |s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9,
            )?),
            retention: RetentionSettings {
                keep: Duration::from_secs_f64(
                    86_400.0
                        * env.parse(
                            "WEBHOOKD_LOG_RETENTION_DAYS",
                            30.0,
                            "a positive number of days, e.g. 30 or 0.5",
                            |d: &f64| d.is_finite() && *d > 0.0 && *d <= 36_500.0,
                        )?,
                ),
                partition_span: Duration::from_secs(
                    60 * env.parse(
                        "WEBHOOKD_LOG_PARTITION_MINUTES",
                        1440u64,
                        "minutes that divide a day: 1, 5, 10, 15, 30, 60, 120, 360, 720 or 1440",
                        |m| *m > 0 && 1440 % *m == 0,
                    )?,
                ),
                idempotency_keys: env.seconds_scaled(
                    "WEBHOOKD_IDEMPOTENCY_KEY_HOURS",
                    24.0,
                    3600.0,
                    "a positive number of hours",
                )?,
            },
            replay_rate: env.parse(
                "WEBHOOKD_REPLAY_RATE",
                50.0,
                "a positive number of events per second",
                |r: &f64| r.is_finite() && *r > 0.0 && *r <= 100_000.0,
            )?,
            api_dependency_timeout: env.seconds(
                "WEBHOOKD_API_DEPENDENCY_TIMEOUT",
                5.0,
                "a positive number of seconds",
            )?,
            rate_limits: RateLimitSettings {
                test_ping: env.rate(
                    "WEBHOOKD_TEST_PINGS_PER_MINUTE",
                    "WEBHOOKD_TEST_PINGS_BURST",
                    defaults.test_ping,
                )?,
                redeliver: env.rate(
                    "WEBHOOKD_REDELIVERIES_PER_MINUTE",
                    "WEBHOOKD_REDELIVERIES_BURST",
                    defaults.redeliver,
                )?,
                recover: env.rate(
                    "WEBHOOKD_RECOVERIES_PER_MINUTE",
                    "WEBHOOKD_RECOVERIES_BURST",
                    defaults.recover,
                )?,
            },
            log_filter: env.parse(
                "RUST_LOG",
                "info".to_owned(),
                "a log filter, e.g. info or warn,webhookd_worker=debug",
                |f: &String| tracing_subscriber::EnvFilter::try_new(f).is_ok(),
            )?,
            log_json: match env.get("LOG_FORMAT").map(|v| v.trim().to_ascii_lowercase()) {
                None => None,
                Some(v) if v == "json" => Some(true),
                Some(v) if v == "text" => Some(false),
                Some(value) => {
                    return Err(ConfigError::Invalid {
                        var: "LOG_FORMAT",
                        value,
                        expected: "json or text",
                    })
                }
            },
        })
    }

    /// The API's settings.
    pub fn api_settings(&self) -> webhookd_api::ApiSettings {
        webhookd_api::ApiSettings {
            listen: self.listen,
            database_url: self.database_url.clone(),
            amqp_url: self.amqp_url.clone(),
            topology: self.topology(),
            catalog: self.catalog.clone(),
            max_webhooks_per_organization: self.max_webhooks_per_organization,
            max_body_bytes: self.max_body_bytes,
            max_event_bytes: self.max_event_bytes,
            idempotency_key_ttl: self.retention.idempotency_keys,
            network_policy: self.network_policy.clone(),
            secret_grace: self.secret_grace,
            timeout: self.timeout,
            response_excerpt_bytes: self.response_excerpt_bytes,
            batch_size: self.batch_size,
            pool_size: self.pool_size,
            dependency_timeout: self.api_dependency_timeout,
            rate_limits: self.rate_limits,
        }
    }

    /// The retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::new(self.retry_schedule.clone(), self.retry_client_errors)
            .with_max_retry_after(self.max_retry_after)
    }

    /// The broker topology.
    pub fn topology(&self) -> Topology {
        Topology::new(
            &self.exchange,
            &self.queue_prefix,
            self.retry_policy().longest_wait(),
        )
    }

    /// The worker's settings.
    pub fn worker_settings(&self) -> WorkerSettings {
        WorkerSettings {
            database_url: self.database_url.clone(),
            amqp_url: self.amqp_url.clone(),
            topology: self.topology(),
            catalog: self.catalog.clone(),
            batch_size: self.batch_size,
            timeout: self.timeout,
            retry_policy: self.retry_policy(),
            max_consecutive_failures: self.max_consecutive_failures,
            prefetch: self.prefetch,
            retry_prefetch: self.retry_prefetch,
            max_concurrent_deliveries: self.max_concurrent_deliveries,
            max_concurrent_per_webhook: self.max_concurrent_per_webhook,
            response_excerpt_bytes: self.response_excerpt_bytes,
            pool_size: self.pool_size,
            shutdown_grace: self.shutdown_grace,
            network_policy: self.network_policy.clone(),
            max_event_bytes: self.max_event_bytes,
            stall_after: self.stall_after,
            disable_after: self.disable_after,
            retention: self.retention,
            replay_rate: self.replay_rate,
        }
    }
}

/// The URL with its password replaced, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(&move |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_work_on_a_developer_machine() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.database_url,
            "postgres://postgres@127.0.0.1:5432/webhookd"
        );
        assert_eq!(c.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!((c.batch_size, c.timeout), (5000, Duration::from_secs(1)));
        assert_eq!(c.retry_policy().max_attempts(), 8);
        assert_eq!(c.max_consecutive_failures, 50);
        assert_eq!(c.max_retry_after, Duration::from_secs(3600));
        assert_eq!(c.max_event_bytes, 1_048_576);
        assert_eq!(c.api_dependency_timeout, Duration::from_secs(5));
        assert_eq!(c.rate_limits, RateLimitSettings::default());
        assert_eq!(c.topology().work_queue(), "webhookd.work");
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let cases = [
            ("WEBHOOK_TIMEOUT", "abc", "WEBHOOK_TIMEOUT=\"abc\" is invalid: expected a positive number of seconds, e.g. 1.0"),
            ("WEBHOOK_BATCH_SIZE", "0", "WEBHOOK_BATCH_SIZE=\"0\" is invalid: expected a positive integer"),
            ("WEBHOOK_RETRY_SCHEDULE", "5,soon", "WEBHOOK_RETRY_SCHEDULE=\"5,soon\" is invalid: expected comma-separated waits in seconds, e.g. 5,300,1800"),
            ("WEBHOOK_RETRY_CLIENT_ERRORS", "maybe", "WEBHOOK_RETRY_CLIENT_ERRORS=\"maybe\" is invalid: expected true or false"),
            ("WEBHOOKD_MAX_RETRY_AFTER", "-1", "WEBHOOKD_MAX_RETRY_AFTER=\"-1\" is invalid: expected a positive number of seconds"),
            ("WEBHOOKD_TEST_PINGS_PER_MINUTE", "0", "WEBHOOKD_TEST_PINGS_PER_MINUTE=\"0\" is invalid: expected a positive integer"),
            ("WEBHOOKD_RECOVERIES_BURST", "many", "WEBHOOKD_RECOVERIES_BURST=\"many\" is invalid: expected a positive integer"),
            ("AMQP_URL", "http://u:secret@h", "AMQP_URL=\"http://u:***@h\" is invalid: expected an amqp:// URL (amqps:// is not supported by this build)"),
            ("AMQP_URL", "amqp://h/%2f?frame_max=512", "AMQP_URL=\"amqp://h/%2f?frame_max=512\" is invalid: expected a valid amqp:// URL (frame_max, if set: 0 or at least 4096)"),
            ("AMQP_URL", "amqp://h/%2f?frame_max=16k", "AMQP_URL=\"amqp://h/%2f?frame_max=16k\" is invalid: expected a valid amqp:// URL (frame_max, if set: 0 or at least 4096)"),
            ("WEBHOOKD_ALLOWED_NETWORKS", "10.0.0.0/99", "WEBHOOKD_ALLOWED_NETWORKS=\"10.0.0.0/99\" is invalid: expected comma-separated CIDR networks, e.g. 127.0.0.0/8,::1/128"),
            ("LOG_FORMAT", "xml", "LOG_FORMAT=\"xml\" is invalid: expected json or text"),
            ("RUST_LOG", "webhookd=loud", "RUST_LOG=\"webhookd=loud\" is invalid: expected a log filter, e.g. info or warn,webhookd_worker=debug"),
        ];
        for (var, value, message) in cases {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.to_string(), message);
        }
        let err = config(&[("AMQP_URL", "amqps://h/")]).unwrap_err();
        assert!(
            err.to_string()
                .contains("amqps:// is not supported by this build"),
            "{err}"
        );
        let err = config(&[("WEBHOOKD_ACTIONS_FILE", "/nonexistent/actions.json")]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("WEBHOOKD_ACTIONS_FILE: cannot read custom actions file"));
    }

    #[test]
    fn fractions_and_overrides_are_accepted() {
        let c = config(&[
            ("WEBHOOK_TIMEOUT", "0.25"),
            ("WEBHOOK_RETRY_SCHEDULE", "0.2,0.4"),
            ("WEBHOOK_MAX_CONSECUTIVE_FAILURES", "0"),
            ("WEBHOOKD_MAX_RETRY_AFTER", "2.5"),
            ("WEBHOOKD_REDELIVERIES_PER_MINUTE", "600"),
            ("WEBHOOKD_REDELIVERIES_BURST", "100"),
        ])
        .unwrap();
        assert_eq!(c.rate_limits.redeliver, Rate::new(600, 100));
        assert_eq!(
            c.retry_policy().longest_wait(),
            Duration::from_millis(2500),
            "the Retry-After maximum sizes the delay ladder"
        );
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.retry_policy().max_attempts(), 3);
        assert_eq!(c.max_consecutive_failures, 0);
        for off in ["", "none"] {
            let c = config(&[("WEBHOOK_RETRY_SCHEDULE", off)]).unwrap();
            assert_eq!(
                c.retry_policy().max_attempts(),
                1,
                "{off:?} turns retries off"
            );
        }
    }
}
