//! A small client of Label Studio's REST API: its projects and its webhooks, nothing else. Every failure is
//! a message naming what was asked and what Label Studio (or the network) answered; no key is ever in one.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::plan::{LsProject, LsWebhook};

/// How long one request to Label Studio may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Projects asked per page of `GET /api/projects/`.
const PAGE_SIZE: usize = 100;

/// Label Studio at one address, as one user.
pub(crate) struct LabelStudio {
    base: String,
    key: String,
    http: reqwest::Client,
    /// The `Authorization` value of the next requests (`Bearer <access>` is refreshed each round).
    authorization: Mutex<Option<String>>,
}

impl LabelStudio {
    /// A client of the Label Studio at `base` (`http://host:port`, any path prefix kept) using `key`: a legacy
    /// API token (sent as `Authorization: Token <key>`) or a personal access token (a JWT refresh token,
    /// exchanged for an access token as the SDK does).
    pub(crate) fn new(base: &str, key: String) -> Result<Self, String> {
        let parsed =
            url::Url::parse(base).map_err(|e| format!("--url {base:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(format!(
                "--url {base:?} must be an http:// or https:// address of Label Studio"
            ));
        }
        if key.trim().is_empty() {
            return Err("--label-studio-token is empty".into());
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            key: key.trim().to_owned(),
            http,
            authorization: Mutex::new(None),
        })
    }

    /// Forgets the access token, so that the next request gets a fresh one (a `--watch` round may come
    /// after the last one expired).
    pub(crate) async fn new_round(&self) {
        *self.authorization.lock().await = None;
    }

    /// The projects the token's user sees, by id.
    pub(crate) async fn projects(&self) -> Result<Vec<LsProject>, String> {
        let mut projects = Vec::new();
        for page in 1.. {
            let path = format!("/api/projects/?page={page}&page_size={PAGE_SIZE}");
            let answer = self.call(Method::GET, &path, None).await?;
            // Paginated (`{"count", "next", "results"}`), or a plain list from versions without pagination.
            let (items, more) = match &answer {
                Value::Array(items) => (items.as_slice(), false),
                Value::Object(o) => (
                    o.get("results")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                    o.get("next").is_some_and(|n| !n.is_null()),
                ),
                _ => (&[][..], false),
            };
            for item in items {
                projects.push(LsProject::from_json(item).ok_or_else(|| {
                    format!("Label Studio's GET {path} listed a project without an id: {item}")
                })?);
            }
            if !more || items.is_empty() {
                break;
            }
        }
        projects.sort_by_key(|p| p.id);
        projects.dedup_by_key(|p| p.id);
        Ok(projects)
    }

    /// Every webhook of the organization (project-level and organization-level), by id.
    pub(crate) async fn webhooks(&self) -> Result<Vec<LsWebhook>, String> {
        let path = "/api/webhooks/";
        let answer = self.call(Method::GET, path, None).await?;
        let Value::Array(items) = answer else {
            return Err(format!(
                "Label Studio's GET {path} did not answer a list: {answer}"
            ));
        };
        let mut hooks = items
            .iter()
            .map(|item| {
                LsWebhook::from_json(item).ok_or_else(|| {
                    format!("Label Studio's GET {path} listed an unreadable webhook")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        hooks.sort_by_key(|h| h.id);
        Ok(hooks)
    }

    /// Creates a webhook; returns its id.
    pub(crate) async fn create_webhook(&self, body: &Value) -> Result<i64, String> {
        let answer = self
            .call(Method::POST, "/api/webhooks/", Some(body))
            .await?;
        answer["id"].as_i64().ok_or_else(|| {
            "Label Studio's POST /api/webhooks/ answered without the new webhook's id".to_owned()
        })
    }

    /// Changes the fields of `body` of webhook `id`.
    pub(crate) async fn update_webhook(&self, id: i64, body: &Value) -> Result<(), String> {
        let path = format!("/api/webhooks/{id}/");
        self.call(Method::PATCH, &path, Some(body)).await.map(drop)
    }

    /// Deletes webhook `id`.
    pub(crate) async fn delete_webhook(&self, id: i64) -> Result<(), String> {
        let path = format!("/api/webhooks/{id}/");
        self.call(Method::DELETE, &path, None).await.map(drop)
    }

    /// The `Authorization` header of the next request.
    async fn authorization(&self) -> Result<String, String> {
        let mut current = self.authorization.lock().await;
        if let Some(value) = current.as_ref() {
            return Ok(value.clone());
        }
        let value = if is_jwt(&self.key) {
            let answer = self
                .send(
                    Method::POST,
                    "/api/token/refresh/",
                    None,
                    Some(&json!({"refresh": self.key})),
                )
                .await?;
            let access = answer["access"].as_str().ok_or_else(|| {
                "Label Studio's POST /api/token/refresh/ answered without an access token"
                    .to_owned()
            })?;
            format!("Bearer {access}")
        } else {
            format!("Token {}", self.key)
        };
        *current = Some(value.clone());
        Ok(value)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let authorization = self.authorization().await?;
        self.send(method, path, Some(&authorization), body).await
    }

    /// Sends one request; the answer's JSON (`Null` when empty), or a message naming the request and why it
    /// failed.
    async fn send(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let what = format!("{method} {path}");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("accept", "application/json");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.map_err(|e| {
            format!(
                "cannot reach Label Studio at {} ({what}): {}",
                self.base,
                chain(&e.without_url())
            )
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            format!(
                "Label Studio at {} broke off its answer to {what}: {}",
                self.base,
                chain(&e.without_url())
            )
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let json: Option<Value> = if text.trim().is_empty() {
            Some(Value::Null)
        } else {
            serde_json::from_str(&text).ok()
        };
        if !status.is_success() {
            return Err(refusal(&self.base, &what, status, json.as_ref(), &text));
        }
        json.ok_or_else(|| {
            format!(
                "Label Studio at {} answered {what} with something that is not JSON: is --url Label \
                 Studio's address?",
                self.base
            )
        })
    }
}

/// A JSON Web Token: three base64url parts separated by dots, the first a JSON object.
fn is_jwt(key: &str) -> bool {
    key.starts_with("eyJ") && key.split('.').count() == 3
}

/// The message for a non-2xx answer: the status, Label Studio's own `detail`, and a hint for the usual
/// causes.
fn refusal(base: &str, what: &str, status: StatusCode, json: Option<&Value>, text: &str) -> String {
    let detail = match json {
        Some(j) => match (&j["detail"], &j["validation_errors"]) {
            (Value::String(d), Value::Object(v)) if !v.is_empty() => {
                format!("{d}: {}", j["validation_errors"])
            }
            (Value::String(d), _) => d.clone(),
            _ => j.to_string(),
        },
        None => text.chars().take(200).collect(),
    };
    let hint = match status {
        StatusCode::UNAUTHORIZED => {
            " (the token was refused: give --label-studio-token a legacy API token of a user of the \
             organization, which Label Studio accepts only when started with \
             LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true, or a personal access token)"
        }
        StatusCode::FORBIDDEN => " (the token's user may not manage this organization's webhooks)",
        StatusCode::NOT_FOUND if what.ends_with("/api/webhooks/") => {
            " (is --url Label Studio's address?)"
        }
        _ => "",
    };
    format!(
        "Label Studio at {base} answered {} to {what}: {detail}{hint}",
        status.as_u16()
    )
}

/// An error with its sources, which say what really failed (refused, timed out, DNS …), each once.
pub(crate) use webhookd_store::with_causes as chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_request_the_status_and_the_cause() {
        let body = json!({"status_code": 401, "detail": "Invalid token."});
        let message = refusal(
            "http://ls:8080",
            "GET /api/webhooks/",
            StatusCode::UNAUTHORIZED,
            Some(&body),
            "",
        );
        assert!(
            message.starts_with(
                "Label Studio at http://ls:8080 answered 401 to GET /api/webhooks/: Invalid token. (the token"
            ),
            "{message}"
        );
        let body = json!({"detail": "Validation error", "validation_errors": {"url": ["Enter a valid URL."]}});
        let message = refusal(
            "b",
            "POST /api/webhooks/",
            StatusCode::BAD_REQUEST,
            Some(&body),
            "",
        );
        assert_eq!(
            message,
            r#"Label Studio at b answered 400 to POST /api/webhooks/: Validation error: {"url":["Enter a valid URL."]}"#
        );
    }

    #[test]
    fn only_jwts_are_exchanged() {
        assert!(is_jwt(
            "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.sig"
        ));
        assert!(!is_jwt("8693f184c12f757c5c96b987010c5f4987b17281"));
    }

    #[test]
    fn a_bad_address_or_an_empty_key_is_refused_before_any_request() {
        assert!(LabelStudio::new("localhost:8080", "k".into()).is_err());
        assert!(LabelStudio::new("http://localhost:8080", " ".into()).is_err());
        assert!(LabelStudio::new("http://localhost:8080/", "k".into()).is_ok());
    }
}
