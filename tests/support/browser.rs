//! A headless Chromium for the web console's tests: Debian's `chromium`, driven through its `chromedriver`
//! (W3C WebDriver) with `fantoccini`. One browser per `Browser`, with a fresh profile; dropping it ends the
//! driver and every browser process it started, and removes the profile.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::wait_for;

/// How long a page may take to show what a step waits for.
pub const PAGE_DEADLINE: Duration = Duration::from_secs(15);

/// The flags of a headless Chromium that makes no request of its own (no updates, sync or safe browsing), so
/// that it neither waits on nor hammers a network it cannot reach.
const CHROMIUM_FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-extensions",
    "--lang=en-US",
];

fn program(variable: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(variable).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.exists(),
        "{} is missing: the web console's browser tests need Debian's `chromium` and `chromium-driver` packages \
         (apt-get install -y chromium chromium-driver; .ci/run installs them), or {variable} naming the program",
        path.display()
    );
    path
}

/// A browser and its driver.
pub struct Browser {
    pub client: Client,
    /// The driver's address.
    base: String,
    driver: tokio::process::Child,
    profile: PathBuf,
    screenshots: PathBuf,
}

impl Browser {
    /// Starts `chromedriver` (`WEBHOOKD_TEST_CHROMEDRIVER`, default `/usr/bin/chromedriver`) on a free port and a
    /// headless `chromium` (`WEBHOOKD_TEST_CHROMIUM`, default `/usr/bin/chromium`) through it, in UTC and
    /// American English so that pages read the same on every machine, with a 1280×900 window.
    pub async fn start() -> Self {
        let chromium = program("WEBHOOKD_TEST_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("WEBHOOKD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let profile = tmp.join(format!("console-chromium-{id}"));
        let log = tmp.join(format!("console-chromedriver-{id}.log"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let log_file = std::fs::File::create(&log).unwrap();
        let driver = tokio::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .env("TZ", "UTC")
            .env("LANGUAGE", "en_US")
            .stdout(Stdio::from(log_file.try_clone().unwrap()))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        wait_for("chromedriver ready", Duration::from_secs(20), || async {
            let status = http.get(format!("{base}/status")).send().await.ok()?;
            let body: Value = serde_json::from_slice(&status.bytes().await.ok()?).ok()?;
            (body["value"]["ready"] == true).then_some(())
        })
        .await;
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push("--window-size=1280,900".to_owned());
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&base)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start chromium: {e} (its log: {})",
                    log.display()
                )
            });
        let screenshots = tmp.join("console-screenshots");
        std::fs::create_dir_all(&screenshots).unwrap();
        let _ = std::fs::remove_file(&log);
        Self {
            client,
            base,
            driver,
            profile,
            screenshots,
        }
    }

    /// Ends the browser session (Chromium exits), then the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The element `css` selects, once there is one.
    pub async fn find(&self, css: &str) -> Element {
        wait_for(&format!("an element {css}"), PAGE_DEADLINE, || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// How many elements `css` selects now.
    pub async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |found| found.len())
    }

    /// Clicks the element `css` selects, once there is one (again if the page replaced it meanwhile).
    pub async fn click(&self, css: &str) {
        wait_for(&format!("a click on {css}"), PAGE_DEADLINE, || async {
            let element = self.client.find(Locator::Css(css)).await.ok()?;
            element.click().await.ok()
        })
        .await
    }

    /// Types `text` into the field `css` selects, after emptying it.
    pub async fn fill(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element.clear().await.unwrap();
        element.send_keys(text).await.unwrap();
    }

    /// Chooses the option of value `value` in the select `css`.
    pub async fn select(&self, css: &str, value: &str) {
        self.find(css).await.select_by_value(value).await.unwrap();
    }

    /// The text the element `css` shows, once there is one.
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_default()
    }

    /// Waits until the element `css` shows text containing `expected`, and returns its text. On time-out, the
    /// panic shows what the page showed instead.
    pub async fn wait_text(&self, css: &str, expected: &str) -> String {
        let deadline = tokio::time::Instant::now() + PAGE_DEADLINE;
        loop {
            let shown = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.text().await.ok(),
                Err(_) => None,
            };
            if let Some(text) = &shown {
                if text.contains(expected) {
                    return text.clone();
                }
            }
            if tokio::time::Instant::now() > deadline {
                let page = self.text("main").await;
                panic!(
                    "timed out after {PAGE_DEADLINE:?} waiting for {css} to show {expected:?}; it shows {shown:?}; \
                     the page shows:\n{page}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `css` selects exactly `n` elements.
    pub async fn wait_count(&self, css: &str, n: usize) {
        wait_for(&format!("{n} elements {css}"), PAGE_DEADLINE, || async {
            (self.count(css).await == n).then_some(())
        })
        .await
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns what it returns.
    pub async fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The part of the address after `#`.
    pub async fn route(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        url.fragment().unwrap_or_default().to_owned()
    }

    /// Saves a picture of the whole page as `<target tmp>/console-screenshots/<name>.png` (the window is made as
    /// tall as the page for it). With `WEBHOOKD_CONSOLE_SCREENSHOTS_TO_DOCS=1`, also as
    /// `docs/images/console-<name>.png`, the pictures `docs/console.md` shows.
    pub async fn screenshot(&self, name: &str) {
        let (width, height) = self.client.get_window_size().await.unwrap();
        let sizes = self
            .script(
                "window.scrollTo(0, 0);
                 return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight];",
                vec![],
            )
            .await;
        let (page, frame) = (
            sizes[0].as_u64().unwrap_or(height),
            sizes[1].as_u64().unwrap_or(0),
        );
        // Capped, so that a long page stays legible.
        let tall = (page + frame).clamp(height, 2400) as u32;
        self.client
            .set_window_size(width as u32, tall)
            .await
            .unwrap();
        let png = self.client.screenshot().await.unwrap();
        self.client
            .set_window_size(width as u32, height as u32)
            .await
            .unwrap();
        std::fs::write(self.screenshots.join(format!("{name}.png")), &png).unwrap();
        if std::env::var("WEBHOOKD_CONSOLE_SCREENSHOTS_TO_DOCS").as_deref() == Ok("1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/images");
            std::fs::create_dir_all(&docs).unwrap();
            std::fs::write(docs.join(format!("console-{name}.png")), &png).unwrap();
        }
    }

    /// What the page wrote to the browser's console as errors since the last call (uncaught exceptions, refusals
    /// by the Content-Security-Policy …), leaving out the failed loads, which are the API's error answers the
    /// console shows (401, 404 …).
    pub async fn console_errors(&self) -> Vec<String> {
        let session = self.client.session_id().await.unwrap().unwrap_or_default();
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/session/{session}/se/log", self.base))
            .header("content-type", "application/json")
            .body(r#"{"type": "browser"}"#)
            .send()
            .await
            .unwrap();
        let log: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        log["value"]
            .as_array()
            .unwrap_or_else(|| panic!("no browser log: {log}"))
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter_map(|entry| entry["message"].as_str())
            .filter(|message| !message.contains("Failed to load resource"))
            .map(str::to_owned)
            .collect()
    }

    /// Panics naming every visible form control that has no accessible name (a `<label>`, `aria-label` or
    /// `aria-labelledby`), as a screen reader would find it.
    pub async fn assert_labelled(&self, page: &str) {
        let unlabelled = self
            .script(
                "return [...document.querySelectorAll('input, select, textarea, button')]
                    .filter((el) => el.offsetParent !== null || el.type === 'radio' || el.type === 'checkbox')
                    .filter((el) => el.type !== 'hidden')
                    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                        && !el.getAttribute('aria-labelledby') && !(el.tagName === 'BUTTON' && el.textContent.trim()))
                    .map((el) => el.outerHTML.slice(0, 120));",
                vec![],
            )
            .await;
        assert_eq!(unlabelled, json!([]), "controls without a label on {page}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's browser processes outlive a killed driver: find them all first, then end them by pid.
        if let Some(pid) = self.driver.id() {
            for p in descendants(pid).into_iter().chain([pid]) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Every process below `root`, from `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid …: comm may hold spaces and parentheses, so read after the last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}
