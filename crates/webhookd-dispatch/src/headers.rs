//! The headers of one attempt: defaults, the webhook's static headers, then webhookd's signature and ids.

use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use webhookd_core::signature::sign;
use webhookd_core::static_headers;

use crate::AttemptRequest;

/// The `User-Agent` webhookd sends unless a webhook's static headers set one.
pub const DEFAULT_USER_AGENT: &str = concat!("webhookd/", env!("CARGO_PKG_VERSION"));

/// The request headers; `Err` names a static header that cannot be sent.
pub(crate) fn build(attempt: &AttemptRequest<'_>) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(attempt.webhook.headers.len() + 9);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static(DEFAULT_USER_AGENT));
    // Static headers may replace Content-Type and User-Agent (as in Label Studio), never the framing or the
    // signature: the API refuses those, and one stored before it did is left out here.
    for (name, value) in &attempt.webhook.headers {
        if static_headers::is_reserved(name) {
            continue;
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("static header name {name:?} is not a valid HTTP header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("static header {name} has a value that is not valid in HTTP"))?;
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
        let value =
            HeaderValue::from_str(&value).map_err(|_| format!("invalid {name} header value"))?;
        headers.insert(HeaderName::from_static(name), value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::webhook;
    use bytes::Bytes;
    use webhookd_core::{DeliveryId, EventId};

    #[test]
    fn reserved_static_headers_stored_before_the_api_refused_them_are_left_out() {
        let webhook = webhook(
            "http://h.example/",
            &[
                ("Host", "evil.example"),
                ("Webhook-Signature", "v1,forged"),
                ("Authorization", "Token t"),
            ],
        );
        let event_id = EventId::new();
        let headers = build(&AttemptRequest {
            webhook: &webhook,
            delivery_id: DeliveryId::derive(event_id, 1, 0),
            event_id,
            action: "PROJECT_CREATED",
            attempt: 1,
            body: Bytes::from_static(b"{}"),
        })
        .unwrap();
        assert!(headers.get("host").is_none());
        assert_eq!(headers.get_all("webhook-signature").iter().count(), 1);
        assert_ne!(headers["webhook-signature"], "v1,forged");
        assert_eq!(headers["authorization"], "Token t");
    }
}
