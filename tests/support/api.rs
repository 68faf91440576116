//! The management API in this process or in a `webhookd serve` child, and a small HTTP client for it.

use std::ops::Deref;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use webhookd_api::ApiSettings;

use super::TestEnv;

/// A small HTTP client for a management API.
#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    http: reqwest::Client,
}

/// A running API.
pub struct TestApi {
    pub client: ApiClient,
    pub settings: ApiSettings,
    /// The API's own database pool (to hold its connections).
    pub pool: webhookd_store::Pool,
    stop: CancellationToken,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Deref for TestApi {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.client
    }
}

/// A `webhookd serve` child process (the API and a worker), killed when dropped; its log is kept only when
/// the test failed.
pub struct ServeProcess {
    pub api: ApiClient,
    pub log: std::path::PathBuf,
    _child: tokio::process::Child,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl TestEnv {
    /// Starts the API on a free port; `tweak` adjusts its settings first (SSRF allow-list is 127.0.0.0/8).
    pub async fn start_api(&self, tweak: impl FnOnce(&mut ApiSettings)) -> TestApi {
        let mut settings = ApiSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: self.database_url.clone(),
            amqp_url: super::AMQP_URL.to_owned(),
            topology: self.topology.clone(),
            catalog: self.settings.catalog.clone(),
            max_webhooks_per_organization: 100,
            max_body_bytes: 1 << 20,
            max_event_bytes: 1 << 20,
            idempotency_key_ttl: Duration::from_secs(86_400),
            network_policy: self.settings.network_policy.clone(),
            secret_grace: Duration::from_secs(86_400),
            timeout: Duration::from_secs(1),
            response_excerpt_bytes: 1024,
            batch_size: self.settings.batch_size,
            pool_size: 4,
            dependency_timeout: Duration::from_secs(5),
            rate_limits: Default::default(),
        };
        tweak(&mut settings);
        let listener = webhookd_api::bind(&settings).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = webhookd_api::state(settings.clone()).await.unwrap();
        let pool = state.pool.clone();
        let stop = CancellationToken::new();
        tokio::spawn(webhookd_api::serve(
            listener,
            webhookd_api::router(state),
            stop.clone(),
        ));
        TestApi {
            client: ApiClient::new(base),
            settings,
            pool,
            stop,
        }
    }

    /// Starts `webhookd serve` for this environment on a free port, with `vars` set in its environment, and
    /// waits until its `/readyz` answers 200. Its output goes to a log file named in any failure.
    pub async fn serve(&self, vars: &[(&str, &str)]) -> ServeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{}-serve.log", self.name));
        let file = std::fs::File::create(&log).unwrap();
        let mut child = self
            .webhookd()
            .arg("serve")
            .env("WEBHOOKD_LISTEN", format!("127.0.0.1:{port}"))
            .envs(vars.iter().copied())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start webhookd serve");
        let api = ApiClient::new(format!("http://127.0.0.1:{port}"));
        let (probe, log_path, running) = (&api, &log, &mut child);
        super::wait_for("webhookd serve ready", Duration::from_secs(30), move || {
            let exited = running.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    let output = std::fs::read_to_string(log_path).unwrap_or_default();
                    panic!("webhookd serve exited with {status}:\n{output}");
                }
                let ready = probe.http.get(probe.url("/readyz")).send().await;
                ready.is_ok_and(|r| r.status() == 200).then_some(())
            }
        })
        .await;
        ServeProcess {
            api,
            log,
            _child: child,
        }
    }

    /// Mints an API token for `organization`.
    pub async fn token(&self, organization: i64) -> String {
        let client = self.pool.get().await.unwrap();
        webhookd_store::api_tokens::create_token(&**client, organization, "test")
            .await
            .unwrap()
    }
}

impl ApiClient {
    /// A client of the API at `base` (`http://host:port`); it never goes through a proxy.
    pub fn new(base: String) -> Self {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        Self { base, http }
    }

    /// The URL of `path` on this API.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The status of a request to a server that may not be listening yet: `None` while it cannot connect.
    #[allow(dead_code)] // Not every test binary that includes the support module waits for a server.
    pub async fn try_status(&self, method: &str, path: &str, token: Option<&str>) -> Option<u16> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).ok()?;
        let mut request = self.http.request(method, self.url(path));
        if let Some(t) = token {
            request = request.header("authorization", format!("Token {t}"));
        }
        Some(request.send().await.ok()?.status().as_u16())
    }

    /// Sends a request; returns the status and the JSON body (`Null` when empty, a string when not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        self.call_with(
            method,
            path,
            token,
            body.map(|b| b.to_string().into_bytes()),
            &[],
        )
        .await
    }

    /// Sends a request with a raw body and extra headers.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let (status, _, json) = self.call_full(method, path, token, body, headers).await;
        (status, json)
    }

    /// Sends a request; returns the status, the response headers and the JSON body (as `call` does).
    pub async fn call_full(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.header("authorization", format!("Token {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let response_headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, response_headers, json)
    }

    /// Creates a webhook as `token`'s organization (asserting the 201) and returns its id.
    pub async fn create_webhook(&self, token: &str, body: &Value) -> i64 {
        let (status, hook) = self
            .call("POST", "/api/webhooks/", Some(token), Some(body))
            .await;
        assert_eq!(status, 201, "POST /api/webhooks/ {body}: {hook}");
        hook["id"].as_i64().unwrap()
    }

    /// The value of an unlabelled series on `/metrics` (`None` until the process has set it).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.call("GET", "/metrics", None, None).await;
        text.as_str()?.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }
}

/// The keys of a JSON object, in order.
pub fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// `err` is Label Studio's error envelope, with exactly its keys, for `status`.
pub fn assert_envelope(err: &Value, status: u16) {
    assert_eq!(
        keys(err),
        [
            "id",
            "status_code",
            "version",
            "detail",
            "exc_info",
            "validation_errors"
        ],
        "{err}"
    );
    assert_eq!(
        (err["status_code"].clone(), err["exc_info"].clone()),
        (json!(status), Value::Null),
        "{err}"
    );
}
