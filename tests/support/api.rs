//! The management API in this process, and a small HTTP client for it.

use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;
use webhookd_api::ApiSettings;

use super::TestEnv;

/// A running API.
pub struct TestApi {
    pub base: String,
    pub settings: ApiSettings,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.stop.cancel();
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
            network_policy: self.settings.network_policy.clone(),
            secret_grace: Duration::from_secs(86_400),
            timeout: Duration::from_secs(1),
            response_excerpt_bytes: 1024,
            batch_size: self.settings.batch_size,
            max_consecutive_failures: 50,
            pool_size: 4,
        };
        tweak(&mut settings);
        let listener = webhookd_api::bind(&settings).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = webhookd_api::state(settings.clone()).await.unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(webhookd_api::serve(
            listener,
            webhookd_api::router(state),
            stop.clone(),
        ));
        TestApi {
            base,
            settings,
            http: reqwest::Client::new(),
            stop,
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

impl TestApi {
    /// Sends a request; returns the status and the JSON body (`Null` when empty).
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
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.base));
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
        let text = resp.text().await.unwrap();
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, json)
    }
}
