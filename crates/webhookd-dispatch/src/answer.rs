//! What came back: the status, `Retry-After`, the start of the body as storable text, or a one-line
//! description of what failed.

use std::time::{Instant, SystemTime};

use webhookd_core::attempt::storable;
use webhookd_core::retry_policy::parse_retry_after;
use webhookd_core::{AttemptReport, AttemptResult};

use crate::BLOCKED;

/// The report of a request that got a response: its status, and up to `excerpt_bytes` of its body.
pub(crate) async fn read(
    response: reqwest::Response,
    excerpt_bytes: usize,
    started: Instant,
) -> AttemptReport {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let (excerpt, body_error) = read_excerpt(response, excerpt_bytes).await;
    let code = status.as_u16();
    let error = if status.is_success() {
        body_error
    } else {
        Some(format!("HTTP {status}"))
    };
    AttemptReport {
        result: AttemptResult::Status { code, retry_after },
        http_status: Some(code),
        error,
        excerpt,
        duration: started.elapsed(),
    }
}

/// The report of a request that got no response.
pub(crate) fn failed(e: &reqwest::Error, started: Instant) -> AttemptReport {
    let error = describe(e);
    // Refused by SSRF protection (after DNS) is final, as it is for an IP address in the URL.
    let result = if e.is_builder() || error.starts_with(BLOCKED) {
        AttemptResult::Unsendable
    } else {
        AttemptResult::Transport
    };
    AttemptReport {
        result,
        http_status: None,
        error: Some(error),
        excerpt: None,
        duration: started.elapsed(),
    }
}

/// Up to `limit` bytes of the body (the rest is not read: the connection is dropped), and the error that
/// cut the reading short, if any.
async fn read_excerpt(
    mut response: reqwest::Response,
    limit: usize,
) -> (Option<String>, Option<String>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if buf.len() >= limit {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let error = format!("reading the response: {}", describe(&e));
                return (excerpt(&buf), Some(error));
            }
        }
    }
    (excerpt(&buf), None)
}

fn excerpt(buf: &[u8]) -> Option<String> {
    (!buf.is_empty()).then(|| storable(buf))
}

/// A one-line description of a transport error that names its kind, without the URL (it may hold
/// credentials), as storable text.
pub fn describe(e: &reqwest::Error) -> String {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push(s.to_string());
        source = s.source();
    }
    let detail = chain.join(": ");
    let lower = detail.to_ascii_lowercase();
    // The resolver's refusal reaches us only as text: hyper wraps it without keeping its type.
    let kind = if lower.contains("which webhooks may not reach") {
        BLOCKED
    } else if e.is_timeout() || lower.contains("timed out") {
        "timeout"
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        "DNS error"
    } else if lower.contains("connection refused") {
        "connection refused"
    } else if lower.contains("connection reset") {
        "connection reset"
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        "TLS error"
    } else if e.is_connect() {
        "connection error"
    } else {
        "request error"
    };
    let line = if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    };
    storable(line.as_bytes())
}
