//! A webhook receiver for tests: records every request and answers as each test scripts it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub wall: SystemTime,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    /// Asserts that the request carries a Standard Webhooks signature of its body by `secret`.
    pub fn assert_signed(&self, secret: &webhookd_core::SigningSecret) {
        let header = self.header("webhook-signature").expect("a signature");
        let ts: i64 = self.header("webhook-timestamp").unwrap().parse().unwrap();
        let id = self.header("webhook-id").unwrap();
        assert!(
            webhookd_core::signature::verify(secret, &id, ts, &self.body, &header),
            "the signature of {} does not verify",
            String::from_utf8_lossy(&self.body)
        );
    }
}

/// How to answer the n-th request (0-based) to a path: status, extra headers, delay before answering.
pub type Script = Arc<dyn Fn(usize) -> (u16, Vec<(&'static str, String)>, Duration) + Send + Sync>;

#[derive(Default)]
struct Inner {
    requests: Vec<Received>,
    scripts: HashMap<String, Script>,
    bodies: HashMap<String, String>,
}

/// The receiver; cheap to clone.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl Receiver {
    /// Starts on 127.0.0.1 on a free port; every path answers 200 unless scripted.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, inner }
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answers requests to `path` with `script`.
    pub fn script(
        &self,
        path: &str,
        script: impl Fn(usize) -> (u16, Vec<(&'static str, String)>, Duration) + Send + Sync + 'static,
    ) {
        self.inner
            .lock()
            .unwrap()
            .scripts
            .insert(path.to_owned(), Arc::new(script));
    }

    /// Answers requests to `path` with `body` instead of `ok`.
    pub fn body(&self, path: &str, body: &str) {
        self.inner
            .lock()
            .unwrap()
            .bodies
            .insert(path.to_owned(), body.to_owned());
    }

    /// Requests received at `path`, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.inner
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Every request received.
    pub fn all(&self) -> Vec<Received> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Waits until `path` has received at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize, deadline: Duration) -> Vec<Received> {
        super::wait_for(&format!("{n} requests at {path}"), deadline, || async {
            let got = self.requests(path);
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let (script, text) = {
        let mut inner = inner.lock().unwrap();
        let n = inner.requests.iter().filter(|r| r.path == path).count();
        inner.requests.push(Received {
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
            wall: SystemTime::now(),
        });
        let text = inner.bodies.get(&path).cloned();
        (inner.scripts.get(&path).map(|s| s(n)), text)
    };
    let (status, extra, delay) = script.unwrap_or((200, Vec::new(), Duration::ZERO));
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let text = text.unwrap_or_else(|| "ok".to_owned());
    let mut response = (StatusCode::from_u16(status).unwrap(), text).into_response();
    for (name, value) in extra {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
