//! The routes, one module per resource.

pub mod deliveries;
pub mod events;
pub mod info;
pub mod relay;
pub mod replays;
pub mod secrets;
pub mod stats;
pub mod webhook_test;
pub mod webhooks;

use chrono::{DateTime, Utc};

/// Django REST framework's datetime format: microseconds and a `Z`.
pub fn drf_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Parses a `{id}` path segment; anything but a positive integer is a 404, as an unknown id would be.
pub fn parse_id(raw: &str) -> Result<i64, crate::error::ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(crate::error::ApiError::NotFound)
}
