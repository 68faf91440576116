//! Sending one attempt: the signed HTTP POST, its timeout, and what came back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use webhookd_core::retry_policy::parse_retry_after;
use webhookd_core::signature::sign;
use webhookd_core::{AttemptResult, DeliveryId, EventId, NetworkPolicy, Subscription};

/// The `User-Agent` webhookd sends unless a webhook's static headers set one.
pub const DEFAULT_USER_AGENT: &str = concat!("webhookd/", env!("CARGO_PKG_VERSION"));

/// How an attempt refused by SSRF protection is described.
pub const BLOCKED: &str = "blocked by SSRF protection";

/// One attempt to send.
pub struct Attempt<'a> {
    /// The webhook.
    pub webhook: &'a Subscription,
    /// The delivery (the `webhook-id` header).
    pub delivery_id: DeliveryId,
    /// The event.
    pub event_id: EventId,
    /// The action.
    pub action: &'a str,
    /// Attempt number, 1 = first.
    pub attempt: u32,
    /// The body, shared with the other webhooks of the event.
    pub body: Bytes,
}

/// What an attempt got.
#[derive(Debug, Clone)]
pub struct AttemptReport {
    /// The classification the retry policy decides on.
    pub result: AttemptResult,
    /// The response status.
    pub http_status: Option<u16>,
    /// What went wrong: a status line or a transport error (timeout, connection refused, DNS, TLS …).
    pub error: Option<String>,
    /// The start of the response body.
    pub excerpt: Option<String>,
    /// Wall time of the attempt.
    pub duration: Duration,
}

/// The HTTP client: pooled keep-alive connections, no redirects, no proxy, one timeout for the whole exchange.
#[derive(Clone)]
pub struct Dispatcher {
    client: reqwest::Client,
    excerpt_bytes: usize,
    policy: Arc<NetworkPolicy>,
}

/// Resolves host names and drops the addresses the network policy refuses, so that a name that changed its
/// address since the webhook was saved still cannot reach an internal service (checked at connect time).
struct GuardedResolver(Arc<NetworkPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refused = Some(r);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refused) {
                (true, Some(r)) => Err(format!("{host} resolves to {r}").into()),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

impl Dispatcher {
    /// A dispatcher with `timeout` per attempt, keeping up to `excerpt_bytes` of each response, that only
    /// connects to addresses `policy` allows.
    pub fn new(
        timeout: Duration,
        excerpt_bytes: usize,
        policy: NetworkPolicy,
    ) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver(policy.clone())))
            // No HTTP(S)_PROXY: a proxy would resolve and connect for us, past the SSRF address check.
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self {
            client,
            excerpt_bytes,
            policy,
        })
    }

    /// Sends one attempt and reports how it went; never fails.
    pub async fn send(&self, attempt: Attempt<'_>) -> AttemptReport {
        let started = Instant::now();
        // Parsed once: the address check and the request share it.
        let checked = reqwest::Url::parse(&attempt.webhook.url)
            .map_err(|e| format!("invalid URL: {e}"))
            .and_then(|url| self.check_literal_address(&url).map(|()| url))
            .and_then(|url| Ok((url, self.headers(&attempt)?)));
        let (url, headers) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                return AttemptReport {
                    result: AttemptResult::Unsendable,
                    http_status: None,
                    error: Some(error),
                    excerpt: None,
                    duration: started.elapsed(),
                }
            }
        };
        let sent = self
            .client
            .post(url)
            .headers(headers)
            .body(attempt.body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let error = describe(&e);
                // Refused by SSRF protection (after DNS) is final, as it is for an IP address in the URL.
                let result = if e.is_builder() || error.starts_with(BLOCKED) {
                    AttemptResult::Unsendable
                } else {
                    AttemptResult::Transport
                };
                return AttemptReport {
                    result,
                    http_status: None,
                    error: Some(error),
                    excerpt: None,
                    duration: started.elapsed(),
                };
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let (excerpt, body_error) = self.read_excerpt(response).await;
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

    /// The resolver is not consulted for a URL whose host is an IP address, so such addresses are checked here.
    fn check_literal_address(&self, url: &reqwest::Url) -> Result<(), String> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => std::net::IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => std::net::IpAddr::V6(ip),
            _ => return Ok(()),
        };
        self.policy.check(ip).map_err(|r| format!("{BLOCKED}: {r}"))
    }

    fn headers(&self, attempt: &Attempt<'_>) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::with_capacity(attempt.webhook.headers.len() + 9);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(DEFAULT_USER_AGENT));
        // Static headers may replace Content-Type and User-Agent (as in Label Studio), never the signature.
        for (name, value) in &attempt.webhook.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                format!("static header name {name:?} is not a valid HTTP header name")
            })?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                format!("static header {name} has a value that is not valid in HTTP")
            })?;
            headers.insert(name, value);
        }
        let msg_id = attempt.delivery_id.to_string();
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let signature = sign(&attempt.webhook.secrets, &msg_id, timestamp, &attempt.body);
        let ours = [
            ("webhook-id", msg_id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
            ("x-webhookd-action", attempt.action.to_owned()),
            ("x-webhookd-webhook-id", attempt.webhook.id.to_string()),
            ("x-webhookd-event-id", attempt.event_id.to_string()),
            ("x-webhookd-attempt", attempt.attempt.to_string()),
        ];
        for (name, value) in ours {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("invalid {name} header value"))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        Ok(headers)
    }

    async fn read_excerpt(
        &self,
        mut response: reqwest::Response,
    ) -> (Option<String>, Option<String>) {
        let mut buf: Vec<u8> = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.excerpt_bytes.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if buf.len() >= self.excerpt_bytes {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return (
                        excerpt(buf),
                        Some(format!("reading the response: {}", describe(&e))),
                    )
                }
            }
        }
        (excerpt(buf), None)
    }
}

fn excerpt(buf: Vec<u8>) -> Option<String> {
    if buf.is_empty() {
        None
    } else {
        Some(String::from_utf8_lossy(&buf).into_owned())
    }
}

/// A one-line description of a transport error that names its kind, without the URL (it may hold
/// credentials).
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
    } else if e.is_timeout() {
        "timeout"
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        "DNS error"
    } else if lower.contains("connection refused") {
        "connection refused"
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        "TLS error"
    } else if e.is_connect() {
        "connection error"
    } else {
        "request error"
    };
    if detail.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use webhookd_core::SigningSecret;

    fn webhook(url: &str, headers: &[(&str, &str)]) -> Subscription {
        Subscription {
            id: 1,
            organization: 1,
            project: None,
            url: url.to_owned(),
            send_payload: true,
            send_for_all_actions: true,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            is_active: true,
            actions: Default::default(),
            secrets: vec![SigningSecret::generate()],
        }
    }

    #[tokio::test]
    async fn an_attempt_that_cannot_be_sent_says_why_and_is_final() {
        let dispatcher =
            Dispatcher::new(Duration::from_secs(1), 1024, NetworkPolicy::new(Vec::new())).unwrap();
        let cases = [
            (webhook("not a url", &[]), "invalid URL: "),
            (webhook("http://127.0.0.1:9/hook", &[]), BLOCKED),
            (
                webhook("http://webhook.invalid/hook", &[("bad name", "x")]),
                "static header name \"bad name\" is not a valid HTTP header name",
            ),
        ];
        for (webhook, expected) in cases {
            let event_id = EventId::new();
            let report = dispatcher
                .send(Attempt {
                    webhook: &webhook,
                    delivery_id: DeliveryId::derive(event_id, webhook.id, 0),
                    event_id,
                    action: "PROJECT_CREATED",
                    attempt: 1,
                    body: Bytes::from_static(b"{}"),
                })
                .await;
            assert_eq!(report.result, AttemptResult::Unsendable, "{}", webhook.url);
            assert_eq!(report.http_status, None);
            let error = report.error.unwrap_or_default();
            assert!(error.starts_with(expected), "{}: {error}", webhook.url);
        }
    }
}
