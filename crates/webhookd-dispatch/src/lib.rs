//! Sending one attempt: the signed HTTP POST, its timeout, and what came back. The worker and the API's
//! test pings both send through a [`Dispatcher`].

mod answer;
mod headers;
mod resolver;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use webhookd_core::{AttemptReport, DeliveryId, EventId, NetworkPolicy, Subscription};

pub use answer::describe;
pub use headers::DEFAULT_USER_AGENT;

/// How an attempt refused by SSRF protection is described.
pub const BLOCKED: &str = "blocked by SSRF protection";

/// One attempt to send.
pub struct AttemptRequest<'a> {
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

/// The HTTP client: pooled keep-alive connections, no redirects, no proxy, one timeout for the whole exchange.
#[derive(Clone)]
pub struct Dispatcher {
    client: reqwest::Client,
    excerpt_bytes: usize,
    policy: Arc<NetworkPolicy>,
}

impl Dispatcher {
    /// A dispatcher with `timeout` per attempt (DNS, connect, request and reading the answer), keeping up to
    /// `excerpt_bytes` of each response, that only connects to addresses `policy` allows.
    pub fn new(
        timeout: Duration,
        excerpt_bytes: usize,
        policy: NetworkPolicy,
    ) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver::GuardedResolver::new(
                policy.clone(),
                timeout,
            )))
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
    pub async fn send(&self, attempt: AttemptRequest<'_>) -> AttemptReport {
        let started = Instant::now();
        // Parsed once: the address check and the request share it.
        let checked = reqwest::Url::parse(&attempt.webhook.url)
            .map_err(|e| format!("invalid URL: {e}"))
            .and_then(|url| self.check_literal_address(&url).map(|()| url))
            .and_then(|url| Ok((url, headers::build(&attempt)?)));
        let (url, headers) = match checked {
            Ok(checked) => checked,
            Err(error) => return AttemptReport::unsendable(error, started.elapsed()),
        };
        // The request is built whole: `RequestBuilder::headers` would copy the map into the request's empty
        // one, entry by entry (1 % of the worker's CPU at saturation).
        let mut request = reqwest::Request::new(reqwest::Method::POST, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(attempt.body.into());
        let sent = self.client.execute(request).await;
        match sent {
            Ok(response) => answer::read(response, self.excerpt_bytes, started).await,
            Err(e) => answer::failed(&e, started),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use webhookd_core::{AttemptResult, SigningSecret};

    pub(crate) fn webhook(url: &str, headers: &[(&str, &str)]) -> Subscription {
        Subscription {
            id: 1,
            organization: 1,
            project: None,
            url: url.into(),
            send_payload: true,
            send_for_all_actions: true,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).into(), (*v).into()))
                .collect(),
            is_active: true,
            actions: Default::default(),
            secrets: [SigningSecret::generate()].into(),
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
                .send(AttemptRequest {
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
