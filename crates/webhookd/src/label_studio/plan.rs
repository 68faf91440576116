//! What `webhookd label-studio connect` has to change, computed from what Label Studio and webhookd have:
//! pure, so that every rule (one relay per project, none beside an organization-level relay, import once) is
//! tested without either.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{json, Map, Value};
use webhookd_api::error::ApiError;
use webhookd_api::validation::{check_actions_fit_project, parse_webhook};
use webhookd_core::Catalog;
use webhookd_store::webhooks::{NewWebhook, WebhookRecord};

/// The path of webhookd's relay endpoint; a Label Studio webhook whose URL ends with it is a relay.
pub(crate) const RELAY_PATH: &str = "/api/relay/label-studio/";

/// A Label Studio project.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LsProject {
    pub id: i64,
    pub title: String,
}

impl LsProject {
    pub(crate) fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            id: v["id"].as_i64()?,
            title: v["title"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// A Label Studio webhook, as its API shows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LsWebhook {
    pub id: i64,
    pub project: Option<i64>,
    pub url: String,
    pub send_payload: bool,
    pub send_for_all_actions: bool,
    pub headers: Map<String, Value>,
    pub is_active: bool,
    pub actions: Vec<String>,
}

impl LsWebhook {
    pub(crate) fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            id: v["id"].as_i64()?,
            project: v["project"].as_i64(),
            url: v["url"].as_str()?.to_owned(),
            send_payload: v["send_payload"].as_bool().unwrap_or(true),
            send_for_all_actions: v["send_for_all_actions"].as_bool().unwrap_or(true),
            headers: v["headers"].as_object().cloned().unwrap_or_default(),
            is_active: v["is_active"].as_bool().unwrap_or(true),
            actions: v["actions"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Whether it is a relay to webhookd (ours, at this or an earlier relay URL).
    pub(crate) fn is_relay(&self) -> bool {
        url::Url::parse(&self.url).is_ok_and(|u| u.path().ends_with(RELAY_PATH))
    }

    /// Its scope, for messages.
    fn scope(&self) -> String {
        match self.project {
            Some(p) => format!("project {p}"),
            None => "organization-level".into(),
        }
    }

    /// The fields a PATCH must repeat so that Label Studio keeps them: 1.23 empties `actions` when a PATCH
    /// leaves them out.
    fn turned_off(&self) -> Value {
        json!({"is_active": false, "send_for_all_actions": self.send_for_all_actions,
               "actions": self.actions})
    }
}

/// What the plan is computed from.
pub(crate) struct Inputs<'a> {
    pub projects: &'a [LsProject],
    pub ls_webhooks: &'a [LsWebhook],
    /// The relay webhook's URL: `--relay-url` + `/api/relay/label-studio/`.
    pub relay_url: &'a str,
    /// Its `Authorization` header, `Token <webhookd key>`; `None` when a token is still to be minted (a dry
    /// run), which no existing relay has.
    pub relay_authorization: Option<&'a str>,
    /// `--import`: also the organization's webhooks in webhookd (to recognise what is already imported).
    pub import: Option<&'a [WebhookRecord]>,
    pub organization: i64,
    pub catalog: &'a Catalog,
}

/// One change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Create the relay webhook on a project.
    CreateRelay { project: i64, title: String },
    /// Bring a relay webhook back to the relay's settings.
    UpdateRelay {
        webhook: i64,
        project: Option<i64>,
        why: String,
    },
    /// Delete a relay webhook that would relay events twice.
    DeleteRelay {
        webhook: i64,
        project: i64,
        why: &'static str,
    },
    /// Copy a Label Studio webhook into webhookd, then turn the original off if it is on.
    Import {
        original: LsWebhook,
        copy: NewWebhook,
    },
    /// The webhook is already in webhookd (webhook `copy`): turn the Label Studio original off.
    TurnOff { original: LsWebhook, copy: i64 },
}

impl Step {
    /// The Label Studio request body of a step that sends one (create, update, turn off).
    pub(crate) fn label_studio_body(&self, relay_authorization: &str, relay_url: &str) -> Value {
        let relay = || {
            json!({"url": relay_url, "send_payload": true, "send_for_all_actions": true,
                   "headers": {"Authorization": relay_authorization}, "is_active": true, "actions": []})
        };
        match self {
            Step::CreateRelay { project, .. } => {
                let mut body = relay();
                body["project"] = json!(project);
                body
            }
            Step::UpdateRelay { .. } => relay(),
            Step::Import { original, .. } | Step::TurnOff { original, .. } => original.turned_off(),
            Step::DeleteRelay { .. } => Value::Null,
        }
    }
}

impl fmt::Display for Step {
    /// What the step does, in words; header values and URL passwords are never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateRelay { project, title } => {
                write!(
                    f,
                    "create the relay webhook on project {project} ({title:?})"
                )
            }
            Step::UpdateRelay {
                webhook,
                project,
                why,
            } => {
                let scope = match project {
                    Some(p) => format!("project {p}"),
                    None => "organization-level".into(),
                };
                write!(f, "update relay webhook {webhook} ({scope}): {why}")
            }
            Step::DeleteRelay {
                webhook,
                project,
                why,
            } => write!(
                f,
                "delete relay webhook {webhook} (project {project}): {why}"
            ),
            Step::Import { original, copy } => {
                write!(
                    f,
                    "import Label Studio webhook {} ({}, {}) into webhookd{}{}",
                    original.id,
                    original.scope(),
                    crate::config::redact_url(&original.url),
                    if copy.is_active {
                        ""
                    } else {
                        " (off, as it is)"
                    },
                    if original.is_active {
                        ", then turn it off in Label Studio"
                    } else {
                        ""
                    }
                )
            }
            Step::TurnOff { original, copy } => write!(
                f,
                "turn off Label Studio webhook {} ({}, {}): webhookd's webhook {copy} delivers it",
                original.id,
                original.scope(),
                crate::config::redact_url(&original.url),
            ),
        }
    }
}

/// The changes, in the order to make them (relays first, so that nothing is missed while the originals are
/// turned off), and what was left alone and why.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub notes: Vec<String>,
    /// The organization-level relay webhook, when there is one.
    pub organization_relay: Option<i64>,
    /// Projects relayed once the plan is carried out.
    pub relayed_projects: usize,
}

/// Computes the plan.
pub(crate) fn plan(inputs: &Inputs<'_>) -> Plan {
    let mut plan = Plan::default();
    let (relays, others): (Vec<&LsWebhook>, Vec<&LsWebhook>) =
        inputs.ls_webhooks.iter().partition(|h| h.is_relay());
    let why_differs = |hook: &LsWebhook| -> Option<String> {
        let mut why = Vec::new();
        if hook.url != inputs.relay_url {
            why.push("another relay URL");
        }
        let expected_header = inputs
            .relay_authorization
            .map(|a| json!({"Authorization": a}));
        if Some(Value::Object(hook.headers.clone())) != expected_header {
            why.push(match inputs.relay_authorization {
                Some(_) => "another token",
                None => "a new token",
            });
        }
        if !hook.send_payload {
            why.push("without payload");
        }
        if !hook.send_for_all_actions {
            why.push("not all actions");
        }
        if !hook.is_active {
            why.push("off");
        }
        (!why.is_empty()).then(|| why.join(", "))
    };
    let update = |hook: &LsWebhook, why: String| Step::UpdateRelay {
        webhook: hook.id,
        project: hook.project,
        why,
    };

    // The organization-level relay (made from the Label Studio host) relays every project's events, and the
    // organization-only ones: per-project relays would send the same events again.
    let org_relays: Vec<&LsWebhook> = relays
        .iter()
        .copied()
        .filter(|h| h.project.is_none())
        .collect();
    if let Some(org) = org_relays.first() {
        plan.organization_relay = Some(org.id);
        if let Some(why) = why_differs(org) {
            plan.steps.push(update(org, why));
        }
        for extra in &org_relays[1..] {
            plan.notes.push(format!(
                "Label Studio webhook {} is a second organization-level relay: delete it from the Label \
                 Studio host, or every event is relayed twice",
                extra.id
            ));
        }
    } else {
        for project in inputs.projects {
            let kept = relays
                .iter()
                .find(|h| h.project == Some(project.id) && kept_relay(&relays, h, &why_differs));
            match kept {
                Some(kept) => {
                    if let Some(why) = why_differs(kept) {
                        plan.steps.push(update(kept, why));
                    }
                }
                None => plan.steps.push(Step::CreateRelay {
                    project: project.id,
                    title: project.title.clone(),
                }),
            }
        }
    }
    plan.relayed_projects = inputs.projects.len();
    for hook in relays.iter().filter(|h| h.project.is_some()) {
        let kept = plan.organization_relay.is_none() && kept_relay(&relays, hook, &why_differs);
        if !kept {
            plan.steps.push(Step::DeleteRelay {
                webhook: hook.id,
                project: hook.project.unwrap_or_default(),
                why: match plan.organization_relay {
                    Some(_) => "the organization-level relay relays this project",
                    None => "another relay webhook relays this project",
                },
            });
        }
    }

    if let Some(known) = inputs.import {
        for original in others {
            import(inputs, known, original, &mut plan);
        }
    }
    // Relays before imports before deletions: nothing is missed while originals are turned off.
    plan.steps.sort_by_key(|s| match s {
        Step::CreateRelay { .. } | Step::UpdateRelay { .. } => 0,
        Step::Import { .. } | Step::TurnOff { .. } => 1,
        Step::DeleteRelay { .. } => 2,
    });
    plan
}

/// Whether `hook` is the relay kept on its project: the first that is right as it is, else the oldest.
fn kept_relay(
    relays: &[&LsWebhook],
    hook: &LsWebhook,
    why_differs: &dyn Fn(&LsWebhook) -> Option<String>,
) -> bool {
    let same: Vec<&LsWebhook> = relays
        .iter()
        .copied()
        .filter(|h| h.project == hook.project)
        .collect();
    let kept = same
        .iter()
        .find(|h| why_differs(h).is_none())
        .or_else(|| same.first());
    kept.is_some_and(|k| k.id == hook.id)
}

/// The import of one Label Studio webhook: copied unless webhookd has it (same scope, URL and settings);
/// the original turned off unless it is off.
fn import(inputs: &Inputs<'_>, known: &[WebhookRecord], original: &LsWebhook, plan: &mut Plan) {
    let same_place: Vec<&WebhookRecord> = known
        .iter()
        .filter(|k| k.project == original.project && k.url == original.url)
        .collect();
    let actions: BTreeSet<&str> = original.actions.iter().map(String::as_str).collect();
    let equivalent = |k: &WebhookRecord| {
        k.send_payload == original.send_payload
            && k.send_for_all_actions == original.send_for_all_actions
            && k.headers == original.headers
            && (original.send_for_all_actions
                || k.actions
                    .iter()
                    .map(String::as_str)
                    .collect::<BTreeSet<_>>()
                    == actions)
    };
    let name = format!(
        "Label Studio webhook {} ({}, {})",
        original.id,
        original.scope(),
        crate::config::redact_url(&original.url)
    );
    if let Some(copy) = same_place.iter().find(|k| equivalent(k)) {
        if original.is_active {
            plan.steps.push(Step::TurnOff {
                original: original.clone(),
                copy: copy.id,
            });
        }
        return;
    }
    if let Some(other) = same_place.first() {
        plan.notes.push(format!(
            "{name} is not imported: webhookd's webhook {} has the same URL and scope but other settings; \
             make them agree (or delete one) and run again",
            other.id
        ));
        return;
    }
    let body = json!({"project": original.project, "url": original.url,
        "send_payload": original.send_payload, "send_for_all_actions": original.send_for_all_actions,
        "headers": original.headers, "is_active": original.is_active, "actions": original.actions});
    let checked = parse_webhook(&body, inputs.catalog).and_then(|input| {
        let copy = NewWebhook::new(inputs.organization, original.project, "").with(input.fields);
        check_actions_fit_project(copy.project, &copy.actions, inputs.catalog).map(|()| copy)
    });
    match checked {
        Ok(copy) => plan.steps.push(Step::Import {
            original: original.clone(),
            copy,
        }),
        Err(e) => plan.notes.push(format!(
            "{name} is not imported (it stays as it is in Label Studio): {}",
            describe(&e)
        )),
    }
}

/// An API error as one line: the field messages of a validation error, otherwise its text.
pub(crate) fn describe(e: &ApiError) -> String {
    match e {
        ApiError::Validation(fields) => fields
            .iter()
            .map(|(field, messages)| format!("{field}: {}", messages.join(" ")))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    const RELAY: &str = "http://webhookd:8080/api/relay/label-studio/";
    const AUTH: &str = "Token k1";

    fn project(id: i64) -> LsProject {
        LsProject {
            id,
            title: format!("P{id}"),
        }
    }

    fn hook(id: i64, project: Option<i64>, url: &str) -> LsWebhook {
        LsWebhook {
            id,
            project,
            url: url.into(),
            send_payload: true,
            send_for_all_actions: true,
            headers: Map::new(),
            is_active: true,
            actions: Vec::new(),
        }
    }

    fn relay(id: i64, project: Option<i64>) -> LsWebhook {
        let mut h = hook(id, project, RELAY);
        h.headers.insert("Authorization".into(), json!(AUTH));
        h
    }

    fn record(id: i64, from: &LsWebhook) -> WebhookRecord {
        WebhookRecord {
            id,
            organization: 1,
            project: from.project,
            url: from.url.clone(),
            send_payload: from.send_payload,
            send_for_all_actions: from.send_for_all_actions,
            headers: from.headers.clone(),
            is_active: false,
            consecutive_failures: 0,
            failing_since: None,
            disabled_reason: None,
            disabled_at: None,
            actions: from.actions.clone(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn run(
        projects: &[LsProject],
        hooks: &[LsWebhook],
        import: Option<&[WebhookRecord]>,
        auth: Option<&str>,
    ) -> Plan {
        plan(&Inputs {
            projects,
            ls_webhooks: hooks,
            relay_url: RELAY,
            relay_authorization: auth,
            import,
            organization: 1,
            catalog: &Catalog::builtin(),
        })
    }

    #[test]
    fn every_project_gets_one_relay_and_a_second_run_changes_nothing() {
        let projects = [project(1), project(2)];
        let p = run(&projects, &[], None, Some(AUTH));
        assert_eq!(
            p.steps,
            [
                Step::CreateRelay {
                    project: 1,
                    title: "P1".into()
                },
                Step::CreateRelay {
                    project: 2,
                    title: "P2".into()
                },
            ]
        );
        let body = p.steps[0].label_studio_body(AUTH, RELAY);
        assert_eq!(
            body,
            json!({"url": RELAY, "send_payload": true, "send_for_all_actions": true,
                   "headers": {"Authorization": AUTH}, "is_active": true, "actions": [], "project": 1})
        );
        let hooks = [relay(10, Some(1)), relay(11, Some(2))];
        let again = run(&projects, &hooks, Some(&[]), Some(AUTH));
        assert_eq!(again.steps, []);
        assert_eq!((again.relayed_projects, again.notes.len()), (2, 0));
    }

    #[test]
    fn a_relay_that_differs_is_updated_and_duplicates_are_deleted() {
        let mut stale = relay(10, Some(1));
        stale.url = "http://old:8080/api/relay/label-studio/".into();
        stale.is_active = false;
        stale.send_for_all_actions = false;
        let mut other_token = relay(20, Some(2));
        other_token
            .headers
            .insert("Authorization".into(), json!("Token old"));
        let p = run(
            &[project(1), project(2), project(3)],
            &[
                stale,
                relay(11, Some(1)),
                other_token,
                relay(21, Some(2)),
                relay(22, Some(2)),
            ],
            None,
            Some(AUTH),
        );
        assert_eq!(
            p.steps,
            [
                Step::CreateRelay {
                    project: 3,
                    title: "P3".into()
                },
                Step::DeleteRelay {
                    webhook: 10,
                    project: 1,
                    why: "another relay webhook relays this project"
                },
                Step::DeleteRelay {
                    webhook: 20,
                    project: 2,
                    why: "another relay webhook relays this project"
                },
                Step::DeleteRelay {
                    webhook: 22,
                    project: 2,
                    why: "another relay webhook relays this project"
                },
            ],
            "the relay that is right is kept"
        );
        let mut wrong = relay(10, Some(1));
        wrong.url = "http://old:8080/api/relay/label-studio/".into();
        wrong.is_active = false;
        let p = run(&[project(1)], &[wrong], None, Some(AUTH));
        assert_eq!(
            p.steps,
            [Step::UpdateRelay {
                webhook: 10,
                project: Some(1),
                why: "another relay URL, off".into()
            }]
        );
        assert_eq!(
            p.steps[0].to_string(),
            "update relay webhook 10 (project 1): another relay URL, off"
        );
    }

    #[test]
    fn a_dry_run_without_a_token_yet_shows_every_relay_getting_the_new_one() {
        let p = run(&[project(1)], &[relay(10, Some(1))], None, None);
        assert_eq!(
            p.steps,
            [Step::UpdateRelay {
                webhook: 10,
                project: Some(1),
                why: "a new token".into()
            }]
        );
    }

    #[test]
    fn an_organization_level_relay_replaces_the_project_relays() {
        let p = run(
            &[project(1), project(2)],
            &[relay(10, Some(1)), relay(5, None), relay(6, None)],
            None,
            Some(AUTH),
        );
        assert_eq!(p.organization_relay, Some(5));
        assert_eq!(
            p.steps,
            [Step::DeleteRelay {
                webhook: 10,
                project: 1,
                why: "the organization-level relay relays this project"
            }]
        );
        assert_eq!(
            p.notes.len(),
            1,
            "a second organization-level relay is reported"
        );
        assert!(p.notes[0].contains("webhook 6"), "{:?}", p.notes);
        let mut org = relay(5, None);
        org.headers.clear();
        let p = run(&[project(1)], &[org], None, Some(AUTH));
        assert_eq!(
            p.steps,
            [Step::UpdateRelay {
                webhook: 5,
                project: None,
                why: "another token".into()
            }]
        );
    }

    #[test]
    fn import_copies_each_webhook_once_and_turns_the_original_off() {
        let mut listed = hook(3, Some(1), "https://hooks.example.com/a?key=1");
        listed.send_for_all_actions = false;
        listed.actions = vec!["TASKS_CREATED".into(), "ANNOTATION_CREATED".into()];
        listed
            .headers
            .insert("Authorization".into(), json!("Basic c2VjcmV0"));
        let mut off = hook(4, None, "https://user:pw@hooks.example.com/org");
        off.is_active = false;
        off.send_payload = false;
        let hooks = [relay(10, Some(1)), listed.clone(), off.clone()];
        let p = run(&[project(1)], &hooks, Some(&[]), Some(AUTH));
        let [Step::Import {
            original: a,
            copy: ca,
        }, Step::Import {
            original: b,
            copy: cb,
        }] = p.steps.as_slice()
        else {
            panic!("two imports expected: {:?}", p.steps)
        };
        assert_eq!((a, b), (&listed, &off));
        assert_eq!(
            (
                ca.project,
                ca.url.as_str(),
                ca.send_for_all_actions,
                ca.is_active
            ),
            (Some(1), "https://hooks.example.com/a?key=1", false, true)
        );
        assert_eq!(ca.actions, ["ANNOTATION_CREATED", "TASKS_CREATED"]);
        assert_eq!(ca.headers, listed.headers);
        assert_eq!(
            (cb.project, cb.send_payload, cb.is_active),
            (None, false, false)
        );
        assert_eq!(
            p.steps[0].label_studio_body(AUTH, RELAY),
            json!({"is_active": false, "send_for_all_actions": false,
                   "actions": ["TASKS_CREATED", "ANNOTATION_CREATED"]}),
            "turning it off keeps its actions (a PATCH without them empties them)"
        );
        let shown = p.steps.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert!(
            !shown.join("\n").contains("c2VjcmV0") && !shown.join("\n").contains(":pw@"),
            "{shown:?}"
        );
        assert_eq!(
            shown[1],
            "import Label Studio webhook 4 (organization-level, https://user:***@hooks.example.com/org) \
             into webhookd (off, as it is)"
        );

        // Second run: the copies exist, the originals are off: nothing.
        let mut listed_off = listed.clone();
        listed_off.is_active = false;
        let known = [record(1, &listed), record(2, &off)];
        let p = run(
            &[project(1)],
            &[relay(10, Some(1)), listed_off, off.clone()],
            Some(&known),
            Some(AUTH),
        );
        assert_eq!((p.steps.len(), p.notes.len()), (0, 0), "{p:?}");
        // Copied but the original still on (an interrupted run): only turn it off.
        let p = run(&[project(1)], &hooks, Some(&known), Some(AUTH));
        assert_eq!(
            p.steps,
            [Step::TurnOff {
                original: listed.clone(),
                copy: 1
            }]
        );
    }

    #[test]
    fn a_webhook_webhookd_refuses_or_already_has_otherwise_is_left_alone_with_the_reason() {
        let mut reserved = hook(3, Some(1), "https://hooks.example.com/a");
        reserved
            .headers
            .insert("Webhook-Signature".into(), json!("x"));
        let mut org_only = hook(4, Some(1), "https://hooks.example.com/b");
        org_only.send_for_all_actions = false;
        org_only.actions = vec!["PROJECT_CREATED".into()];
        let differs = hook(5, Some(1), "https://hooks.example.com/c");
        let mut known = record(9, &differs);
        known.send_payload = false;
        let p = run(
            &[],
            &[reserved, org_only, differs],
            Some(&[known]),
            Some(AUTH),
        );
        assert_eq!(p.steps, []);
        assert_eq!(p.notes.len(), 3, "{:?}", p.notes);
        assert!(
            p.notes[0].contains("headers: Header \"Webhook-Signature\" cannot be set"),
            "{}",
            p.notes[0]
        );
        assert!(p.notes[1].contains("organization-only"), "{}", p.notes[1]);
        assert!(
            p.notes[2].contains("webhookd's webhook 9"),
            "{}",
            p.notes[2]
        );
    }

    #[test]
    fn relays_are_never_imported_and_relay_urls_are_recognised_by_path() {
        assert!(hook(1, None, "https://x.example/prefix/api/relay/label-studio/").is_relay());
        assert!(!hook(1, None, "https://x.example/api/relay/label-studio/other").is_relay());
        let p = run(&[], &[relay(1, Some(4))], Some(&[]), Some(AUTH));
        assert!(p.steps.iter().all(|s| !matches!(s, Step::Import { .. })));
    }
}
