//! Which static headers a webhook may carry: none that frames the HTTP request or that webhookd itself sets.

/// Headers that frame the request (set by the HTTP client from the URL and the body) or that carry
/// webhookd's signature; a static header may not set them.
pub const RESERVED: [&str; 12] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// The prefix of webhookd's own informational headers (`x-webhookd-action` …), also reserved.
pub const RESERVED_PREFIX: &str = "x-webhookd-";

/// Whether a static header named `name` (any case) is refused.
pub fn is_reserved(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    RESERVED.contains(&lower.as_str()) || lower.starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_and_signature_headers_are_reserved_in_any_case() {
        for name in [
            "Host",
            "CONTENT-LENGTH",
            "Transfer-Encoding",
            "connection",
            "Webhook-Id",
            "webhook-timestamp",
            "Webhook-Signature",
            "X-Webhookd-Attempt",
        ] {
            assert!(is_reserved(name), "{name}");
        }
        for name in ["Authorization", "Content-Type", "User-Agent", "X-Hook-Id"] {
            assert!(!is_reserved(name), "{name}");
        }
    }
}
