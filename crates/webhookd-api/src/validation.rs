//! Validating webhook requests field by field, with Django REST framework's messages, and checking URLs
//! against the SSRF policy after DNS resolution.

use std::time::Duration;

use serde_json::{Map, Value};
use webhookd_core::static_headers::is_reserved;
use webhookd_core::{Catalog, NetworkPolicy};
use webhookd_store::webhooks::WebhookChanges;

use crate::error::{ApiError, FieldErrors};

/// The longest URL Label Studio accepts.
pub const MAX_URL_LEN: usize = 2048;
/// The most static headers a webhook may carry.
pub const MAX_HEADERS: usize = 10;

/// The webhook fields a request sent, each parsed; absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WebhookInput {
    /// `project`: `Some(None)` is an explicit null (set at creation only).
    pub project: Option<Option<i64>>,
    /// Every other field.
    pub fields: WebhookChanges,
}

/// Parses a webhook body; every bad field is reported, as DRF does.
pub fn parse_webhook(body: &Value, catalog: &Catalog) -> Result<WebhookInput, ApiError> {
    let Value::Object(obj) = body else {
        return Err(ApiError::field(
            "non_field_errors",
            format!(
                "Invalid data. Expected a dictionary, but got {}.",
                type_name(body)
            ),
        ));
    };
    let mut errors = FieldErrors::new();
    let mut input = WebhookInput::default();
    let mut fail = |field: &str, msg: String| errors.entry(field.to_owned()).or_default().push(msg);
    if let Some(v) = obj.get("project") {
        match v {
            Value::Null => input.project = Some(None),
            v => match v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            {
                Some(p) if p > 0 => input.project = Some(Some(p)),
                _ => fail("project", "A valid integer is required.".into()),
            },
        }
    }
    if let Some(v) = obj.get("url") {
        match v.as_str() {
            None => fail("url", "Not a valid string.".into()),
            Some(s) if s.chars().count() > MAX_URL_LEN => fail(
                "url",
                format!("Ensure this field has no more than {MAX_URL_LEN} characters."),
            ),
            Some(s) => match url::Url::parse(s) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                    input.fields.url = Some(s.to_owned())
                }
                _ => fail("url", "Enter a valid URL.".into()),
            },
        }
    }
    for (field, slot) in [
        ("send_payload", &mut input.fields.send_payload),
        (
            "send_for_all_actions",
            &mut input.fields.send_for_all_actions,
        ),
        ("is_active", &mut input.fields.is_active),
    ] {
        if let Some(v) = obj.get(field) {
            match boolean(v) {
                Some(b) => *slot = Some(b),
                None => fail(field, "Must be a valid boolean.".into()),
            }
        }
    }
    if let Some(v) = obj.get("headers") {
        match headers(v) {
            Some(h) => {
                let reserved: Vec<&String> = h.keys().filter(|k| is_reserved(k)).collect();
                for name in &reserved {
                    fail(
                        "headers",
                        format!("Header \"{name}\" cannot be set: webhookd sets it itself."),
                    );
                }
                if reserved.is_empty() {
                    input.fields.headers = Some(h);
                }
            }
            None => fail("headers", format!("{v} failed JSON schema check")),
        }
    }
    if let Some(v) = obj.get("actions") {
        match v {
            Value::Array(items) => {
                let mut actions = Vec::with_capacity(items.len());
                for item in items {
                    match item.as_str() {
                        Some(a) if catalog.get(a).is_some() => actions.push(a.to_owned()),
                        _ => fail(
                            "actions",
                            format!("{} is not a valid choice.", quoted(item)),
                        ),
                    }
                }
                actions.sort();
                actions.dedup();
                input.fields.actions = Some(actions);
            }
            other => fail(
                "actions",
                format!(
                    "Expected a list of items but got type \"{}\".",
                    type_name(other)
                ),
            ),
        }
    }
    if errors.is_empty() {
        Ok(input)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// A project webhook cannot hold organization-only actions (checked on create and on every update).
pub fn check_actions_fit_project(
    project: Option<i64>,
    actions: &[String],
    catalog: &Catalog,
) -> Result<(), ApiError> {
    let org_only = actions
        .iter()
        .any(|a| catalog.get(a).is_some_and(|s| s.organization_only));
    if project.is_some() && org_only {
        return Err(ApiError::field(
            "non_field_errors",
            "Project webhook can't contain organization-only action.",
        ));
    }
    Ok(())
}

/// Resolves the URL's host and refuses it if any address is one webhooks may not reach. A lookup that takes
/// longer than `limit` is a 503 (the resolver is slow, the URL may be fine).
pub async fn check_url_reachable(
    url: &str,
    policy: &NetworkPolicy,
    limit: Duration,
) -> Result<(), ApiError> {
    let parsed = url::Url::parse(url).map_err(|_| ApiError::field("url", "Enter a valid URL."))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addresses: Vec<std::net::IpAddr> = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => vec![ip.into()],
        Some(url::Host::Ipv6(ip)) => vec![ip.into()],
        Some(url::Host::Domain(name)) => {
            match tokio::time::timeout(limit, tokio::net::lookup_host((name, port))).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                Ok(Err(_)) => Vec::new(),
                Err(_) => {
                    return Err(ApiError::Unavailable(format!(
                        "The host name of url, {name}, could not be resolved within {limit:?}. Retry the request."
                    )))
                }
            }
        }
        None => Vec::new(),
    };
    if addresses.is_empty() {
        let host = parsed.host_str().unwrap_or_default();
        return Err(ApiError::field(
            "url",
            format!("Can't resolve hostname {host}"),
        ));
    }
    for ip in addresses {
        policy.check(ip).map_err(|refused| {
            ApiError::field(
                "url",
                format!("URL resolves to a reserved network address: {refused}"),
            )
        })?;
    }
    Ok(())
}

fn boolean(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) if n.as_i64() == Some(1) => Some(true),
        Value::Number(n) if n.as_i64() == Some(0) => Some(false),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Label Studio's `HEADERS_SCHEMA`: an object of at most 10 string values, keys `^[a-zA-Z0-9-_]+$`.
fn headers(v: &Value) -> Option<Map<String, Value>> {
    let Value::Object(map) = v else { return None };
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    // Values must be sendable in HTTP: no control characters but tab.
    let value_ok = |v: &Value| {
        v.as_str()
            .is_some_and(|s| s.chars().all(|c| c == '\t' || !c.is_control()))
    };
    let ok = map.len() <= MAX_HEADERS && map.iter().all(|(k, v)| key_ok(k) && value_ok(v));
    ok.then(|| map.clone())
}

fn quoted(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => format!("\"{other}\""),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "int",
        Value::String(_) => "str",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(body: Value) -> FieldErrors {
        match parse_webhook(&body, &Catalog::builtin()) {
            Err(ApiError::Validation(e)) => e,
            other => panic!("expected validation errors, got {other:?}"),
        }
    }

    #[test]
    fn a_good_body_parses() {
        let input = parse_webhook(
            &json!({"project": 3, "url": "https://h.example/hook", "send_payload": false,
                "headers": {"Authorization": "Basic x"}, "actions": ["TASKS_CREATED", "ANNOTATION_CREATED"]}),
            &Catalog::builtin(),
        )
        .unwrap();
        assert_eq!(input.project, Some(Some(3)));
        assert_eq!(input.fields.send_payload, Some(false));
        assert_eq!(
            input.fields.actions.unwrap(),
            ["ANNOTATION_CREATED", "TASKS_CREATED"]
        );
        assert_eq!(input.fields.is_active, None);
    }

    #[test]
    fn each_bad_field_is_named_with_drf_messages() {
        let e = errors(
            json!({"url": "ftp://x", "send_payload": "maybe", "actions": ["NOPE"],
            "headers": {"bad key": "v"}, "project": "x"}),
        );
        assert_eq!(e["url"], ["Enter a valid URL."]);
        assert_eq!(e["send_payload"], ["Must be a valid boolean."]);
        assert_eq!(e["actions"], ["\"NOPE\" is not a valid choice."]);
        assert_eq!(
            e["headers"],
            [r#"{"bad key":"v"} failed JSON schema check"#]
        );
        assert_eq!(e["project"], ["A valid integer is required."]);
        let many: Map<String, Value> = (0..11).map(|i| (format!("h{i}"), json!("v"))).collect();
        assert!(errors(json!({"headers": many})).contains_key("headers"));
        assert!(errors(json!({"headers": {"a": 1}})).contains_key("headers"));
        assert!(errors(json!({"headers": {"a": "line\nbreak"}})).contains_key("headers"));
        assert_eq!(
            errors(json!({"headers": {"hOsT": "x", "Webhook-Signature": "v1,x", "X-Ok": "y"}}))
                ["headers"],
            [
                "Header \"hOsT\" cannot be set: webhookd sets it itself.",
                "Header \"Webhook-Signature\" cannot be set: webhookd sets it itself.",
            ]
        );
        let long = format!("https://h.example/{}", "a".repeat(2048));
        assert_eq!(
            errors(json!({"url": long}))["url"],
            ["Ensure this field has no more than 2048 characters."]
        );
        assert_eq!(
            errors(json!([]))["non_field_errors"],
            ["Invalid data. Expected a dictionary, but got list."]
        );
    }

    #[test]
    fn organization_only_actions_need_an_organization_webhook() {
        let catalog = Catalog::builtin();
        let actions = vec!["PROJECT_CREATED".to_owned()];
        assert!(check_actions_fit_project(None, &actions, &catalog).is_ok());
        assert!(check_actions_fit_project(Some(1), &actions, &catalog).is_err());
    }
}
