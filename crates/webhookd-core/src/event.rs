//! The event contract (version 1): what producers publish, parsed and validated against the catalog.

use serde_json::{Map, Value};

use crate::actions::{ActionSpec, Catalog};

/// The only envelope version this build understands.
pub const ENVELOPE_VERSION: u64 = 1;
/// The longest producer event id accepted, in bytes of UTF-8: the id travels as the AMQP `message-id`, a
/// short string of at most 255 bytes.
pub const MAX_PRODUCER_ID_LEN: usize = 255;

/// A validated action event, ready to be matched and delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The producer's own event id, used to deliver a re-published event once.
    pub producer_id: Option<String>,
    /// The organization whose webhooks may receive the event.
    pub organization: i64,
    /// The action name (a catalog entry).
    pub action: String,
    /// The scoping project object, sent as the body's `project` key; `None` reaches only organization webhooks.
    pub project: Option<Map<String, Value>>,
    /// The project's id, taken from `project.id`.
    pub project_id: Option<i64>,
    /// The action's key and nested fields, as Label Studio's body shapes.
    pub payload: Map<String, Value>,
}

/// Why a message is not a valid event; the text is what the dead-letter queue records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The body is not JSON at all.
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is JSON but not an object.
    #[error("body must be a JSON object")]
    NotObject,
    /// `version` is missing or not 1.
    #[error("field `version` must be 1, got {0}")]
    Version(String),
    /// A field has the wrong type or value.
    #[error("field `{field}` {problem}")]
    Field {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The action is not in the catalog.
    #[error("unknown action {0:?}")]
    UnknownAction(String),
    /// An organization-only action was published with a project.
    #[error("action {0} is organization-only and cannot carry a project")]
    OrganizationOnly(String),
    /// The payload does not have the action's shape.
    #[error("payload of {action} {problem}")]
    PayloadShape {
        /// The action.
        action: String,
        /// What is wrong with the payload.
        problem: String,
    },
}

impl Event {
    /// Parses and validates a raw message body.
    pub fn parse(body: &[u8], catalog: &Catalog) -> Result<Event, EventError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| EventError::NotJson(e.to_string()))?;
        Self::from_value(value, catalog)
    }

    /// Validates an already-parsed envelope.
    pub fn from_value(value: Value, catalog: &Catalog) -> Result<Event, EventError> {
        let Value::Object(mut obj) = value else {
            return Err(EventError::NotObject);
        };
        match obj.get("version") {
            Some(v) if v.as_u64() == Some(ENVELOPE_VERSION) => {}
            Some(v) => return Err(EventError::Version(v.to_string())),
            None => return Err(EventError::Version("nothing".into())),
        }
        let producer_id = match obj.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                check_producer_id(&s)?;
                Some(s)
            }
            Some(other) => return Err(bad_id(&format!("got {}", json_type(&other)))),
        };
        let organization = match obj.get("organization").and_then(Value::as_i64) {
            Some(org) if org > 0 => org,
            _ => return Err(field("organization", "must be a positive integer".into())),
        };
        let (action, spec) = take_action(&mut obj, catalog)?;
        let (project, project_id) = scope(obj.remove("project"))?;
        if spec.organization_only && project.is_some() {
            return Err(EventError::OrganizationOnly(action));
        }
        let payload = match obj.remove("payload") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(p)) => p,
            Some(_) => return Err(field("payload", "must be an object".into())),
        };
        check_payload_shape(spec, &payload)?;
        Ok(Event {
            producer_id,
            organization,
            action,
            project,
            project_id,
            payload,
        })
    }

    /// The envelope as producers publish it (version 1), used to store and re-read the event.
    pub fn to_envelope(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("version".into(), Value::from(ENVELOPE_VERSION));
        if let Some(id) = &self.producer_id {
            obj.insert("id".into(), Value::String(id.clone()));
        }
        obj.insert("organization".into(), Value::from(self.organization));
        obj.insert("action".into(), Value::String(self.action.clone()));
        obj.insert(
            "project".into(),
            self.project
                .clone()
                .map(Value::Object)
                .unwrap_or(Value::Null),
        );
        obj.insert("payload".into(), Value::Object(self.payload.clone()));
        Value::Object(obj)
    }
}

pub(crate) fn field(field: &'static str, problem: String) -> EventError {
    EventError::Field { field, problem }
}

/// Takes `action` out of `obj` (keeping the order of the other keys): a string naming a catalog action.
pub(crate) fn take_action<'c>(
    obj: &mut Map<String, Value>,
    catalog: &'c Catalog,
) -> Result<(String, &'c ActionSpec), EventError> {
    let action = match obj.shift_remove("action") {
        Some(Value::String(s)) => s,
        _ => return Err(field("action", "must be a string".into())),
    };
    match catalog.get(&action) {
        Some(spec) => Ok((action, spec)),
        None => Err(EventError::UnknownAction(action)),
    }
}

/// A scoping project and its id (both `None` for an organization-level event).
pub(crate) type Scope = (Option<Map<String, Value>>, Option<i64>);

/// The scoping project of a `project` value (absent, `null`, or an object with an integer `id`) and its id.
pub(crate) fn scope(project: Option<Value>) -> Result<Scope, EventError> {
    match project {
        None | Some(Value::Null) => Ok((None, None)),
        Some(Value::Object(p)) => match p.get("id").and_then(Value::as_i64) {
            Some(id) => Ok((Some(p), Some(id))),
            None => Err(field("project", "must have an integer `id`".into())),
        },
        Some(_) => Err(field("project", "must be an object or null".into())),
    }
}

/// Whether `id` may be a producer event id: 1 to `MAX_PRODUCER_ID_LEN` bytes of UTF-8, no control characters.
/// The error names the field `id`, the rule and what was wrong.
pub fn check_producer_id(id: &str) -> Result<(), EventError> {
    if id.is_empty() {
        Err(bad_id("got an empty string"))
    } else if id.len() > MAX_PRODUCER_ID_LEN {
        Err(bad_id(&format!("got {} bytes", id.len())))
    } else if id.chars().any(char::is_control) {
        Err(bad_id("got a control character"))
    } else {
        Ok(())
    }
}

fn bad_id(got: &str) -> EventError {
    field(
        "id",
        format!(
            "must be a string of 1 to {MAX_PRODUCER_ID_LEN} bytes of UTF-8 without control characters, {got}"
        ),
    )
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The payload must carry the action's key with the right type: a list for `many` actions, an object otherwise.
pub(crate) fn check_payload_shape(
    spec: &ActionSpec,
    payload: &Map<String, Value>,
) -> Result<(), EventError> {
    let shape_err = |problem: String| EventError::PayloadShape {
        action: spec.action.clone(),
        problem,
    };
    let Some(instances) = payload.get(&spec.key) else {
        return Err(shape_err(format!("must contain the key `{}`", spec.key)));
    };
    match (spec.many, instances) {
        (true, Value::Array(items)) => {
            if let Some(pos) = items.iter().position(|i| !i.is_object()) {
                return Err(shape_err(format!(
                    "must hold objects in `{}`; item {pos} is not an object",
                    spec.key
                )));
            }
            Ok(())
        }
        (true, _) => Err(shape_err(format!("must hold a list in `{}`", spec.key))),
        (false, Value::Object(_)) => Ok(()),
        (false, _) => Err(shape_err(format!("must hold an object in `{}`", spec.key))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Event, EventError> {
        Event::from_value(v, &Catalog::builtin())
    }

    #[test]
    fn a_full_envelope_parses() {
        let e = parse(json!({"version": 1, "id": "evt-1", "organization": 1, "action": "ANNOTATION_CREATED",
            "project": {"id": 7, "title": "P"}, "payload": {"annotation": {"id": 17}, "task": {"id": 19}}}))
        .unwrap();
        assert_eq!(e.producer_id.as_deref(), Some("evt-1"));
        assert_eq!((e.organization, e.project_id), (1, Some(7)));
        assert_eq!(e.payload["task"]["id"], 19);
        let back = parse(e.to_envelope()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn an_id_may_be_up_to_255_bytes_of_any_printable_utf8() {
        let base = json!({"version": 1, "organization": 1, "action": "PROJECT_DELETED",
            "payload": {"project": {"id": 1}}});
        for id in [
            "x".repeat(255),
            "😀".repeat(63),
            "évènement 17 / 項目".to_owned(),
        ] {
            let mut envelope = base.clone();
            envelope["id"] = json!(id);
            assert_eq!(parse(envelope).unwrap().producer_id, Some(id));
        }
    }

    #[test]
    fn each_bad_envelope_names_its_problem() {
        let base = json!({"version": 1, "organization": 1, "action": "TASKS_CREATED",
            "project": {"id": 7}, "payload": {"tasks": [{"id": 1}]}});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            parse(b).unwrap_err().to_string()
        };
        assert_eq!(
            Event::parse(b"{nope", &Catalog::builtin())
                .unwrap_err()
                .to_string(),
            "body is not valid JSON: key must be a string at line 1 column 2"
        );
        assert_eq!(parse(json!([1])).unwrap_err(), EventError::NotObject);
        assert_eq!(
            with("version", json!(2)),
            "field `version` must be 1, got 2"
        );
        assert_eq!(
            with("organization", json!("x")),
            "field `organization` must be a positive integer"
        );
        assert_eq!(
            with("action", json!("TASK_CREATED")),
            "unknown action \"TASK_CREATED\""
        );
        assert_eq!(
            with("project", json!({"title": "x"})),
            "field `project` must have an integer `id`"
        );
        assert_eq!(
            with("payload", json!([])),
            "field `payload` must be an object"
        );
        assert_eq!(
            with("payload", json!({"tasks": {"id": 1}})),
            "payload of TASKS_CREATED must hold a list in `tasks`"
        );
        assert_eq!(
            with("payload", json!({"task": []})),
            "payload of TASKS_CREATED must contain the key `tasks`"
        );
        let id_rule =
            "field `id` must be a string of 1 to 255 bytes of UTF-8 without control characters";
        assert_eq!(
            with("id", json!("😀".repeat(128))),
            format!("{id_rule}, got 512 bytes")
        );
        assert_eq!(
            with("id", json!("x".repeat(256))),
            format!("{id_rule}, got 256 bytes")
        );
        assert_eq!(
            with("id", json!("")),
            format!("{id_rule}, got an empty string")
        );
        assert_eq!(
            with("id", json!("a\nb")),
            format!("{id_rule}, got a control character")
        );
        assert_eq!(with("id", json!(17)), format!("{id_rule}, got a number"));
        let org_only = parse(
            json!({"version": 1, "organization": 1, "action": "PROJECT_CREATED",
            "project": {"id": 7}, "payload": {"project": {"id": 7}}}),
        );
        assert_eq!(
            org_only.unwrap_err().to_string(),
            "action PROJECT_CREATED is organization-only and cannot carry a project"
        );
    }
}
