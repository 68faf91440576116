//! The event of a body Label Studio sent to a webhook: `{"action": …, <the action's key>: …, "project": {…},
//! <nested fields>…}` (`POST /api/relay/label-studio/`), made such that the body webhookd builds from it
//! (`body.rs`) is the one Label Studio sent.

use serde_json::{Map, Value};

use crate::actions::Catalog;
use crate::event::{check_payload_shape, scope, take_action, Event, EventError};

/// The version-1 event of `body`, a body Label Studio sent to a webhook, for `organization`:
/// - the action from `action`;
/// - the scoping project from `project`, unless the action is organization-only, whose `project` is the
///   instance itself (`PROJECT_CREATED`, `PROJECT_DELETED`); an absent or `null` `project` (Label Studio's
///   `TASKS_DELETED` from `DELETE /api/projects/<id>/tasks/`) makes an organization-level event;
/// - the payload from every other key, in the body's order (`PROJECT_UPDATED`'s key is `project`, so its
///   payload holds the project too).
///
/// Label Studio leaves out an empty list, so a list action without its key gets an empty list, which
/// `body::build` leaves out again. The event has no producer id. Errors are the event contract's, with a
/// hint when the body is `{"action": …}` alone (what Label Studio sends when `send_payload` is off).
pub fn event_from_label_studio(
    body: Value,
    organization: i64,
    catalog: &Catalog,
) -> Result<Event, EventError> {
    let Value::Object(mut obj) = body else {
        return Err(EventError::NotObject);
    };
    let (action, spec) = take_action(&mut obj, catalog)?;
    let (project, project_id) = scope(if spec.organization_only {
        None
    } else if spec.key == "project" {
        obj.get("project").cloned()
    } else {
        obj.shift_remove("project")
    })?;
    let mut payload: Map<String, Value> = obj;
    if !payload.contains_key(&spec.key) {
        if spec.many {
            payload.insert(spec.key.clone(), Value::Array(Vec::new()));
        } else if payload.is_empty() && project.is_none() {
            return Err(EventError::PayloadShape {
                action,
                problem: format!(
                    "must contain the key `{}`: the body is the action alone, which Label Studio sends when \
                     the webhook's send_payload is off; turn send_payload on for the webhook that calls webhookd",
                    spec.key
                ),
            });
        }
    }
    check_payload_shape(spec, &payload)?;
    Ok(Event {
        producer_id: None,
        organization,
        action,
        project,
        project_id,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;
    use serde_json::json;

    /// The body webhookd sends for the event relayed from `sent`, with batches of `batch`.
    fn round_trip(sent: &str, batch: usize) -> Vec<String> {
        let catalog = Catalog::builtin();
        let value: Value = serde_json::from_str(sent).unwrap();
        let event = event_from_label_studio(value, 1, &catalog).unwrap();
        let spec = catalog.get(&event.action).unwrap();
        body::build(&event, spec, batch)
            .chunks
            .into_iter()
            .map(|c| String::from_utf8(c).unwrap())
            .collect()
    }

    #[test]
    fn each_action_of_label_studio_comes_back_byte_for_byte() {
        for sent in [
            r#"{"action": "PROJECT_CREATED", "project": {"id": 3, "title": "caf\u00e9 </a> & \ud83d\ude00", "task_number": 0}}"#,
            r#"{"action": "PROJECT_UPDATED", "project": {"id": 3, "title": "new", "control_weights": {"label": {"overall": 1.0}}}}"#,
            r#"{"action": "PROJECT_DELETED", "project": {"id": 3}}"#,
            r#"{"action": "TASKS_CREATED", "tasks": [{"id": 21, "data": {"text": "a/b"}, "meta": {}}], "project": {"id": 2}}"#,
            r#"{"action": "TASKS_DELETED", "tasks": [{"id": 21}], "project": {"id": 2}}"#,
            r#"{"action": "TASKS_DELETED", "tasks": [{"id": 21}, {"id": 22}]}"#,
            r#"{"action": "ANNOTATION_CREATED", "annotation": {"id": 17, "lead_time": 37.13, "big": 123456789012345678901234567890}, "project": {"id": 2}, "task": {"id": 19}}"#,
            r#"{"action": "ANNOTATIONS_CREATED", "annotation": [{"id": 17}, {"id": 18}], "project": {"id": 2}, "task": [{"id": 19}, {"id": 20}]}"#,
            r#"{"action": "ANNOTATION_UPDATED", "annotation": {"id": 17, "lead_time": 1e-05}, "project": {"id": 2}, "task": {"id": 19}}"#,
            r#"{"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 17}], "project": {"id": 2}}"#,
            r#"{"action": "LABEL_LINK_CREATED", "label_link": [{"id": 5, "from_name": "label"}], "project": {"id": 2}}"#,
            r#"{"action": "LABEL_LINK_UPDATED", "label_link": {"id": 5}, "project": {"id": 2}, "label": {"id": 9, "value": {"x": 0.30000000000000004}}}"#,
            r#"{"action": "LABEL_LINK_DELETED", "label_link": {"id": 5}, "project": {"id": 2}}"#,
            // An empty list is left out by Label Studio (and by webhookd), whatever else is there.
            r#"{"action": "ANNOTATIONS_DELETED", "project": {"id": 2}}"#,
            r#"{"action": "ANNOTATIONS_DELETED"}"#,
        ] {
            assert_eq!(round_trip(sent, 5000), [sent], "{sent}");
        }
        // A repeated key keeps its first place and its last value, as Python's json.loads makes it.
        assert_eq!(
            round_trip(
                r#"{"action": "PROJECT_DELETED", "project": {"id": 3, "a": 1, "id": 4}}"#,
                5000
            ),
            [r#"{"action": "PROJECT_DELETED", "project": {"id": 4, "a": 1}}"#]
        );
    }

    #[test]
    fn the_scope_is_the_project_except_for_organization_only_actions() {
        let catalog = Catalog::builtin();
        let event = |v: Value| event_from_label_studio(v, 4, &catalog).unwrap();
        let e = event(json!({"action": "TASKS_CREATED", "tasks": [], "project": {"id": 2}}));
        assert_eq!((e.organization, e.project_id), (4, Some(2)));
        assert!(!e.payload.contains_key("project"));
        let e = event(json!({"action": "PROJECT_UPDATED", "project": {"id": 3}}));
        assert_eq!(e.project_id, Some(3));
        assert_eq!(e.payload["project"], json!({"id": 3}));
        for action in ["PROJECT_CREATED", "PROJECT_DELETED"] {
            let e = event(json!({"action": action, "project": {"id": 3}}));
            assert_eq!((e.project.clone(), e.project_id), (None, None), "{action}");
            assert_eq!(e.payload["project"], json!({"id": 3}));
        }
        let e = event(json!({"action": "TASKS_DELETED", "tasks": [{"id": 1}], "project": null}));
        assert_eq!(e.project_id, None);
    }

    #[test]
    fn a_body_label_studio_would_not_send_names_its_problem() {
        let catalog = Catalog::builtin();
        let error = |v: Value| {
            event_from_label_studio(v, 1, &catalog)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(error(json!([1])), "body must be a JSON object");
        assert_eq!(
            error(json!({"tasks": []})),
            "field `action` must be a string"
        );
        assert_eq!(
            error(json!({"action": 7})),
            "field `action` must be a string"
        );
        assert_eq!(
            error(json!({"action": "TASK_CREATED"})),
            "unknown action \"TASK_CREATED\""
        );
        assert_eq!(
            error(json!({"action": "TASKS_CREATED", "tasks": [], "project": 2})),
            "field `project` must be an object or null"
        );
        assert_eq!(
            error(json!({"action": "TASKS_CREATED", "tasks": [], "project": {"title": "x"}})),
            "field `project` must have an integer `id`"
        );
        assert_eq!(
            error(json!({"action": "TASKS_CREATED", "tasks": {"id": 1}, "project": {"id": 2}})),
            "payload of TASKS_CREATED must hold a list in `tasks`"
        );
        assert_eq!(
            error(json!({"action": "TASKS_CREATED", "tasks": [1], "project": {"id": 2}})),
            "payload of TASKS_CREATED must hold objects in `tasks`; item 0 is not an object"
        );
        assert_eq!(
            error(json!({"action": "ANNOTATION_CREATED", "project": {"id": 2}, "task": {"id": 1}})),
            "payload of ANNOTATION_CREATED must contain the key `annotation`"
        );
        assert_eq!(
            error(json!({"action": "PROJECT_DELETED"})),
            "payload of PROJECT_DELETED must contain the key `project`: the body is the action alone, \
             which Label Studio sends when the webhook's send_payload is off; turn send_payload on for \
             the webhook that calls webhookd"
        );
    }
}
