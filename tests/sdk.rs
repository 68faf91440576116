//! The official Label Studio Python SDK (`label-studio-sdk`, pinned) drives webhookd's API unchanged.

mod support;

use std::process::Command;

use support::TestEnv;

const SDK_SCRIPT: &str = r#"
import os
from importlib.metadata import version
from label_studio_sdk import LabelStudio

assert version("label-studio-sdk") == os.environ["PINNED"], version("label-studio-sdk")

ls = LabelStudio(base_url=os.environ["BASE_URL"], api_key=os.environ["API_KEY"])
hook_url = os.environ["HOOK_URL"]

info = ls.webhooks.info()
assert info.annotation_created.name == "Annotation created", info
assert info.project_created.organization_only is True
org_only = ls.webhooks.info(organization_only=True)
assert org_only.project_created is not None and org_only.tasks_created is None, org_only

assert ls.webhooks.list() == []
created = ls.webhooks.create(url=hook_url, project=3, headers={"Authorization": "Token abc"},
                             send_for_all_actions=False, actions=["ANNOTATION_CREATED", "TASKS_CREATED"])
assert created.id and created.project == 3 and created.url == hook_url, created
assert created.is_active is True and created.send_payload is True and created.send_for_all_actions is False
assert sorted(created.actions) == ["ANNOTATION_CREATED", "TASKS_CREATED"], created.actions
assert created.consecutive_failures == 0 and created.created_at is not None

org_hook = ls.webhooks.create(url=hook_url)
assert org_hook.project is None

got = ls.webhooks.get(created.id)
assert got.id == created.id and got.headers == {"Authorization": "Token abc"}, got

listed = ls.webhooks.list(project=3)
assert [w.id for w in listed] == [created.id], listed
assert {w.id for w in ls.webhooks.list()} == {created.id, org_hook.id}

updated = ls.webhooks.update(created.id, is_active=False, send_payload=False)
assert updated.is_active is False and updated.send_payload is False
assert sorted(updated.actions) == ["ANNOTATION_CREATED", "TASKS_CREATED"], "PATCH keeps actions"
assert ls.webhooks.get(created.id).is_active is False

ls.webhooks.delete(created.id)
assert [w.id for w in ls.webhooks.list()] == [org_hook.id]
try:
    ls.webhooks.get(created.id)
    raise SystemExit("a deleted webhook was still found")
except Exception as e:
    assert getattr(e, "status_code", None) == 404, e
print("sdk ok")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_label_studio_python_sdk_manages_webhooks_unchanged() {
    let python = support::python::python_with("label-studio-sdk");
    let pinned = support::python::pinned_version("label-studio-sdk");
    let env = TestEnv::new(|_| {}).await;
    let api = env.start_api(|_| {}).await;
    let key = env.token(1).await;
    let out = tokio::task::spawn_blocking({
        let base = api.base.clone();
        move || {
            Command::new(python)
                .args(["-c", SDK_SCRIPT])
                .env("BASE_URL", base)
                .env("API_KEY", key)
                .env("HOOK_URL", "http://127.0.0.1:9/hook")
                .env("PINNED", pinned)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK script failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.trim(), "sdk ok");
}
