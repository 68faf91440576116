//! The real Label Studio (`label-studio` from PyPI, pinned in tests/requirements-label-studio.txt; SQLite, on
//! 127.0.0.1, started and killed by the test) connected to webhookd with `webhookd label-studio connect`:
//! `--dry-run` changes nothing; `--import` copies its webhook into webhookd and turns the original off, once;
//! `--watch` relays a project created later; for every action Label Studio sends, a receiver behind webhookd
//! gets, signed, the very bytes Label Studio sends directly to a second receiver; an organization-level relay
//! made from the Label Studio host replaces the per-project ones and carries PROJECT_CREATED and
//! PROJECT_DELETED the same way.
//!
//! One test, in steps, because Label Studio's first start (its migrations) takes most of a minute.

mod support;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};
use support::api::{ApiClient, ServeProcess};
use support::receiver::{Received, Receiver};
use support::{wait_for, TestEnv};
use webhookd_core::SigningSecret;
use webhookd_store::webhooks::NewWebhook;

/// Label Studio's first start applies its migrations: about 40 s on 2 free cores.
const START_DEADLINE: Duration = Duration::from_secs(240);
const DEADLINE: Duration = Duration::from_secs(30);
/// The legacy API token Label Studio's user gets (`--user-token`).
const LS_TOKEN: &str = "5c1e0d3a9b8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d";
const CONFIG: &str = r#"<View><Text name="text" value="$text"/><Choices name="c" toName="text"><Choice value="A"/><Choice value="B"/></Choices></View>"#;

/// A Label Studio server of this test: its own data folder and port; killed, with everything it started,
/// when dropped, whatever happened. Its output is in `log`, kept when the test fails.
struct LabelStudio {
    child: Child,
    dir: PathBuf,
    log: PathBuf,
    executable: PathBuf,
    base: String,
    api: ApiClient,
}

impl LabelStudio {
    /// Starts it (returns at once; `ready` waits for it).
    fn start() -> Self {
        let python = support::python::label_studio_python();
        let executable = python.with_file_name("label-studio");
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "label-studio-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.with_extension("log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let file = std::fs::File::create(&log).unwrap();
        let mut command = std::process::Command::new(&executable);
        command
            .args(["start", "--no-browser", "--internal-host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--username",
                "admin@example.com",
                "--password",
                "webhookd-test",
            ])
            .args(["--user-token", LS_TOKEN, "--enable-legacy-api-token"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file));
        Self::environment(&mut command, &dir);
        // Its own process group, so that Drop kills whatever it started too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", executable.display()));
        let base = format!("http://127.0.0.1:{port}");
        Self {
            child,
            dir,
            log,
            executable,
            api: ApiClient::new(base.clone()),
            base,
        }
    }

    /// The settings of reference §13: legacy tokens on, SQLite in the data folder, no SSRF protection (the
    /// receivers are on 127.0.0.1), nothing sent home, a home of its own.
    fn environment(command: &mut std::process::Command, dir: &std::path::Path) {
        for (var, sub) in [
            ("HOME", "home"),
            ("XDG_CONFIG_HOME", "home/.config"),
            ("XDG_DATA_HOME", "home/.local/share"),
            ("XDG_CACHE_HOME", "home/.cache"),
            ("LABEL_STUDIO_BASE_DATA_DIR", "data"),
        ] {
            command.env(var, dir.join(sub));
        }
        command
            .env("LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN", "true")
            .env("DJANGO_DB", "sqlite")
            .env("SSRF_PROTECTION_ENABLED", "false")
            .env("SENTRY_DSN", "")
            .env("FRONTEND_SENTRY_DSN", "")
            .env("LATEST_VERSION_CHECK", "false")
            .env("COLLECT_ANALYTICS", "false")
            .env_remove("DATABASE_URL");
    }

    /// Waits until its API answers the token.
    async fn ready(&mut self) {
        let (child, log, api) = (&mut self.child, &self.log, &self.api);
        wait_for("Label Studio to start", START_DEADLINE, move || {
            let exited = child.try_wait().ok().flatten();
            async move {
                if let Some(status) = exited {
                    let output = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("label-studio exited with {status}:\n{output}");
                }
                let status = api
                    .try_status("GET", "/api/projects/", Some(LS_TOKEN))
                    .await?;
                (status == 200).then_some(())
            }
        })
        .await;
    }

    /// Runs Python code in `label-studio shell` (its Django models), as an operator on its host would.
    async fn shell(&self, code: &str) -> String {
        let mut command = tokio::process::Command::new(&self.executable);
        command
            .arg("shell")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Self::environment(command.as_std_mut(), &self.dir);
        let mut child = command.spawn().unwrap();
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(code.as_bytes()).await.unwrap();
        }
        let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .expect("label-studio shell finishes")
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "label-studio shell: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// A request to its API, asserting the status; the JSON answer.
    async fn call(&self, method: &str, path: &str, body: Option<Value>, status: u16) -> Value {
        let (got, answer) = self
            .api
            .call(method, path, Some(LS_TOKEN), body.as_ref())
            .await;
        assert_eq!(got, status, "Label Studio: {method} {path}: {answer}");
        answer
    }

    /// Its webhooks, by id.
    async fn webhooks(&self) -> Vec<Value> {
        let list = self.call("GET", "/api/webhooks/", None, 200).await;
        let mut hooks = list.as_array().unwrap().clone();
        hooks.sort_by_key(|h| h["id"].as_i64());
        hooks
    }

    async fn create_project(&self, title: &str) -> i64 {
        let project = self
            .call(
                "POST",
                "/api/projects/",
                Some(json!({"title": title, "label_config": CONFIG})),
                201,
            )
            .await;
        project["id"].as_i64().unwrap()
    }
}

impl Drop for LabelStudio {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
        if std::thread::panicking() {
            eprintln!("Label Studio's output: {}", self.log.display());
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `webhookd label-studio connect` against `ls`, relaying to `served`; asserts success and that no token is
/// printed; returns stdout.
async fn connect(env: &TestEnv, ls: &LabelStudio, served: &ServeProcess, extra: &[&str]) -> String {
    let out = connect_command(env, ls, served, extra)
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "connect {extra:?} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains(LS_TOKEN) && !stderr.contains(LS_TOKEN),
        "a token was printed:\n{stdout}\n{stderr}"
    );
    stdout
}

fn connect_command(
    env: &TestEnv,
    ls: &LabelStudio,
    served: &ServeProcess,
    extra: &[&str],
) -> tokio::process::Command {
    let mut command = env.webhookd();
    command
        .args(["label-studio", "connect", "--url", &ls.base])
        .env("LABEL_STUDIO_API_KEY", LS_TOKEN)
        .args(["--organization", "1"])
        .args(["--relay-url", &served.api.base])
        .args(extra);
    command
}

/// webhookd's webhooks and tokens, to see that nothing changed.
async fn webhookd_state(env: &TestEnv) -> Vec<String> {
    let rows = env
        .query(
            "SELECT format('%s %s %s %s %s %s %s %s', id, project, url, send_payload, send_for_all_actions,
                           headers, is_active, updated_at) FROM webhooks
             UNION ALL SELECT format('token %s %s', id, name) FROM api_tokens ORDER BY 1",
            &[],
        )
        .await;
    rows.iter().map(|r| r.get(0)).collect()
}

/// The relay webhooks Label Studio has.
fn relays<'a>(hooks: &'a [Value], relay_url: &str) -> Vec<&'a Value> {
    hooks.iter().filter(|h| h["url"] == relay_url).collect()
}

/// Each request is signed with `secret`.
fn assert_signed(got: &[Received], secret: &SigningSecret) {
    for r in got {
        r.assert_signed(secret);
    }
}

/// The bodies, sorted (webhookd delivers concurrently, so the order may differ).
fn sorted_bodies(got: &[Received]) -> Vec<Bytes> {
    let mut bodies: Vec<Bytes> = got.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    bodies
}

fn action(r: &Received) -> String {
    r.json()["action"].as_str().unwrap_or_default().to_owned()
}

/// The requests at `path` about `project` so far.
fn of_project(rx: &Receiver, path: &str, project: i64) -> Vec<Received> {
    rx.requests(path)
        .into_iter()
        .filter(|r| r.json()["project"]["id"].as_i64() == Some(project))
        .collect()
}

/// Waits until webhookd has delivered at least `n` requests about `project` to `/via-webhookd`.
async fn relayed(rx: &Receiver, project: i64, n: usize) -> Vec<Received> {
    wait_for(
        &format!("{n} relayed actions of project {project}"),
        DEADLINE,
        || async {
            let got = of_project(rx, "/via-webhookd", project);
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_label_studio_connected_by_the_cli_relays_every_action_byte_for_byte() {
    let started = std::time::Instant::now();
    // Label Studio boots (most of a minute) while webhookd is set up.
    let mut ls = LabelStudio::start();
    let env = TestEnv::new(|_| {}).await;
    let rx = Receiver::start().await;
    let served = env.serve(&[]).await;
    let relay_url = format!("{}/api/relay/label-studio/", served.api.base);
    // Behind webhookd: an organization-level webhook, which gets every relayed event.
    let (_, via_secret) = env
        .webhook(NewWebhook::new(1, None, rx.url("/via-webhookd")))
        .await;
    ls.ready().await;
    eprintln!("Label Studio ready after {:?}", started.elapsed());
    let version = ls.call("GET", "/api/version", None, 200).await;
    assert_eq!(
        version["release"],
        json!(support::python::label_studio_version()),
        "{version}"
    );

    // A project with a webhook of Label Studio's own, to import.
    let imported_project = ls.create_project("Imported").await;
    let original = ls
        .call(
            "POST",
            "/api/webhooks/",
            Some(json!({"project": imported_project, "url": rx.url("/imported"),
                "send_for_all_actions": false, "actions": ["TASKS_CREATED"], "headers": {"X-Team": "ml"}})),
            201,
        )
        .await;
    let original_id = original["id"].as_i64().unwrap();

    // --dry-run shows the plan and changes nothing, on either side.
    let (ls_before, webhookd_before) = (ls.webhooks().await, webhookd_state(&env).await);
    let plan = connect(&env, &ls, &served, &["--import", "--dry-run"]).await;
    for line in [
        "plan: mint a webhookd token for organization 1".to_owned(),
        format!("plan: create the relay webhook on project {imported_project} (\"Imported\")"),
        format!("plan: import Label Studio webhook {original_id} (project {imported_project}, "),
    ] {
        assert!(plan.contains(&line), "{line:?} missing from:\n{plan}");
    }
    assert_eq!(
        ls.webhooks().await,
        ls_before,
        "a dry run changed Label Studio"
    );
    assert_eq!(
        webhookd_state(&env).await,
        webhookd_before,
        "a dry run changed webhookd"
    );

    // connect --import: a relay on the project, the webhook copied into webhookd and turned off.
    let done = connect(&env, &ls, &served, &["--import"]).await;
    assert!(done.contains("done: minted a webhookd token"), "{done}");
    let hooks = ls.webhooks().await;
    let relay = relays(&hooks, &relay_url);
    assert_eq!(relay.len(), 1, "{hooks:?}");
    assert_eq!(
        (
            &relay[0]["project"],
            &relay[0]["send_payload"],
            &relay[0]["send_for_all_actions"],
            &relay[0]["is_active"]
        ),
        (
            &json!(imported_project),
            &json!(true),
            &json!(true),
            &json!(true)
        )
    );
    let key = relay[0]["headers"]["Authorization"]
        .as_str()
        .and_then(|h| h.strip_prefix("Token "))
        .expect("the relay sends a webhookd token")
        .to_owned();
    assert!(
        !done.contains(&key),
        "the webhookd token was printed:\n{done}"
    );
    let original = hooks.iter().find(|h| h["id"] == original_id).unwrap();
    assert_eq!(
        (&original["is_active"], &original["actions"]),
        (&json!(false), &json!(["TASKS_CREATED"])),
        "turned off, its actions kept: {original}"
    );
    let (status, copies) = served
        .api
        .call(
            "GET",
            &format!("/api/webhooks/?project={imported_project}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(
        status, 200,
        "the relay's token is valid in webhookd: {copies}"
    );
    let copies = copies.as_array().unwrap();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = &copies[0];
    assert_eq!(
        (
            &copy["url"],
            &copy["send_for_all_actions"],
            &copy["actions"],
            &copy["headers"],
            &copy["is_active"]
        ),
        (
            &json!(rx.url("/imported")),
            &json!(false),
            &json!(["TASKS_CREATED"]),
            &json!({"X-Team": "ml"}),
            &json!(true)
        )
    );

    // Twice changes nothing more.
    let (ls_before, webhookd_before) = (ls.webhooks().await, webhookd_state(&env).await);
    let again = connect(&env, &ls, &served, &["--import"]).await;
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(
        ls.webhooks().await,
        ls_before,
        "a second run changed Label Studio"
    );
    assert_eq!(
        webhookd_state(&env).await,
        webhookd_before,
        "a second run changed webhookd"
    );

    // A webhook webhookd refuses (an address outside WEBHOOKD_ALLOWED_NETWORKS) is left as it is in Label
    // Studio, with a note, and the run goes on: it does not stop this or any later run at that step.
    let refused_project = ls.create_project("Refused").await;
    let refused = ls
        .call(
            "POST",
            "/api/webhooks/",
            Some(json!({"project": refused_project, "url": "http://10.255.255.1/hook"})),
            201,
        )
        .await;
    let refused_id = refused["id"].as_i64().unwrap();
    let accepted = ls
        .call(
            "POST",
            "/api/webhooks/",
            Some(json!({"project": refused_project, "url": rx.url("/accepted")})),
            201,
        )
        .await;
    let accepted_id = accepted["id"].as_i64().unwrap();
    let out = connect_command(&env, &ls, &served, &["--import"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("note: import Label Studio webhook {refused_id} "))
            && stderr.contains("left as it is: webhookd refuses its URL"),
        "{stderr}"
    );
    assert!(
        stdout.contains(&format!("done: import Label Studio webhook {accepted_id} ")),
        "the import after the refused one was made:\n{stdout}"
    );
    let hooks = ls.webhooks().await;
    let still = hooks.iter().find(|h| h["id"] == refused_id).unwrap();
    assert_eq!(still["is_active"], json!(true), "{still}");
    let (_, copies) = served
        .api
        .call(
            "GET",
            &format!("/api/webhooks/?project={refused_project}"),
            Some(&key),
            None,
        )
        .await;
    let urls: Vec<&Value> = copies
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["url"])
        .collect();
    assert_eq!(
        urls,
        [&json!(rx.url("/accepted"))],
        "only the accepted one was copied"
    );
    ls.call("DELETE", &format!("/api/webhooks/{refused_id}/"), None, 204)
        .await;

    // --watch: a project created later gets the relay.
    let watch = connect_command(&env, &ls, &served, &["--watch", "0.5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let project = ls
        .create_project("Caf\u{e9} \u{2603} \u{1f600} <b>R&D</b>")
        .await;
    wait_for("the relay on the new project", DEADLINE, || async {
        let hooks = ls.webhooks().await;
        relays(&hooks, &relay_url)
            .iter()
            .any(|h| h["project"] == project)
            .then_some(())
    })
    .await;

    // A plain Label Studio webhook beside the relay: what Label Studio sends directly.
    ls.call(
        "POST",
        "/api/webhooks/",
        Some(json!({"project": project, "url": rx.url("/direct")})),
        201,
    )
    .await;
    let p = format!("/api/projects/{project}");
    ls.call(
        "PATCH",
        &format!("{p}/"),
        Some(json!({"description": "\u{e9}t\u{e9} \u{2014} \"q\" / \\"})),
        200,
    )
    .await;
    ls.call(
        "POST",
        &format!("{p}/import"),
        Some(
            json!([{"text": "\u{65e5}\u{672c}\u{8a9e} \u{1d11e}", "n": 0.30000000000000004},
                    {"text": "<p>5 > 3 & 2 < 4</p>"}, {"text": "plain"}]),
        ),
        201,
    )
    .await;
    let task = ls
        .call(
            "POST",
            "/api/tasks/",
            Some(json!({"project": project, "data": {"text": "one more"}})),
            201,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let annotation = ls
        .call(
            "POST",
            &format!("/api/tasks/{task}/annotations/?project={project}"),
            Some(
                json!({"result": [{"value": {"choices": ["A"]}, "from_name": "c", "to_name": "text",
                                    "type": "choices"}], "lead_time": 12.5}),
            ),
            201,
        )
        .await["id"]
        .as_i64()
        .unwrap();
    ls.call(
        "PATCH",
        &format!("/api/annotations/{annotation}/"),
        Some(
            json!({"result": [{"value": {"choices": ["B"]}, "from_name": "c", "to_name": "text",
                                "type": "choices"}]}),
        ),
        200,
    )
    .await;
    ls.call(
        "DELETE",
        &format!("/api/annotations/{annotation}/"),
        None,
        204,
    )
    .await;
    ls.call("DELETE", &format!("/api/tasks/{task}/"), None, 204)
        .await;
    ls.call("DELETE", &format!("{p}/"), None, 204).await;

    let expected = [
        "PROJECT_UPDATED",
        "TASKS_CREATED",
        "TASKS_CREATED",
        "ANNOTATION_CREATED",
        "ANNOTATION_UPDATED",
        "ANNOTATIONS_DELETED",
        "TASKS_DELETED",
    ];
    // Label Studio calls its webhooks inside each request: every direct call has been made by now.
    let direct = rx.requests("/direct");
    assert_eq!(
        direct.iter().map(action).collect::<Vec<_>>(),
        expected,
        "what Label Studio sent directly"
    );
    let via = relayed(&rx, project, expected.len()).await;
    assert_signed(&via, &via_secret);
    assert_eq!(
        sorted_bodies(&via),
        sorted_bodies(&direct),
        "webhookd's deliveries are Label Studio's bodies, byte for byte"
    );

    // The imported webhook now gets its action from webhookd, signed, and no longer from Label Studio.
    ls.call(
        "POST",
        "/api/tasks/",
        Some(json!({"project": imported_project, "data": {"text": "for the imported webhook"}})),
        201,
    )
    .await;
    let got = rx.wait_for("/imported", 1, DEADLINE).await;
    let copy_secret = {
        let client = env.pool.get().await.unwrap();
        let secret =
            webhookd_store::webhooks::webhook_secret(&**client, 1, copy["id"].as_i64().unwrap())
                .await
                .unwrap()
                .unwrap();
        SigningSecret::parse(&secret).unwrap()
    };
    assert_eq!(
        got.len(),
        1,
        "the original is off: only webhookd's delivery"
    );
    assert_signed(&got, &copy_secret);
    assert_eq!(
        (action(&got[0]), got[0].header("x-team")),
        ("TASKS_CREATED".to_owned(), Some("ml".to_owned()))
    );

    // SIGTERM stops the watch.
    let pid = watch.id().unwrap().to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let out = tokio::time::timeout(DEADLINE, watch.wait_with_output())
        .await
        .expect("--watch stops")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "done: create the relay webhook on project {project}"
        )) && stdout.ends_with("label-studio connect: stopped\n"),
        "{stdout}"
    );

    // An organization-level relay, made on the Label Studio host as docs/label-studio.md says (with a
    // plain organization-level webhook beside it, for comparison): connect removes the per-project relays.
    let created = ls
        .shell(&format!(
            "from webhooks.models import Webhook\n\
             from organizations.models import Organization\n\
             org = Organization.objects.order_by('id').first()\n\
             Webhook.objects.create(organization=org, project=None, url='{relay_url}', \
             headers={{'Authorization': 'Token {key}'}})\n\
             Webhook.objects.create(organization=org, project=None, url='{}')\n\
             print('created', Webhook.objects.filter(project=None).count())\n",
            rx.url("/direct-org")
        ))
        .await;
    assert!(created.contains("created 2"), "{created}");
    let done = connect(&env, &ls, &served, &[]).await;
    assert!(done.contains("the organization-level relay"), "{done}");
    let hooks = ls.webhooks().await;
    let relay = relays(&hooks, &relay_url);
    assert_eq!(
        relay
            .iter()
            .map(|h| h["project"].clone())
            .collect::<Vec<_>>(),
        [Value::Null],
        "only the organization-level relay is left: {hooks:?}"
    );
    let org_project = ls.create_project("Organization-level").await;
    ls.call(
        "DELETE",
        &format!("/api/projects/{org_project}/"),
        None,
        204,
    )
    .await;
    let direct = of_project(&rx, "/direct-org", org_project);
    assert_eq!(
        direct.iter().map(action).collect::<Vec<_>>(),
        ["PROJECT_CREATED", "PROJECT_DELETED"]
    );
    let via = relayed(&rx, org_project, 2).await;
    assert_signed(&via, &via_secret);
    assert_eq!(sorted_bodies(&via), sorted_bodies(&direct));
    eprintln!("done after {:?}", started.elapsed());
}
