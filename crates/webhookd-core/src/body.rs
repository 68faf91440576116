//! Label Studio request bodies: `{"action": …}` merged with the payload, split into batches, serialized once.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use crate::actions::ActionSpec;
use crate::event::Event;
use crate::python_json;

/// Label Studio's default `WEBHOOK_BATCH_SIZE`.
pub const DEFAULT_BATCH_SIZE: usize = 5000;

/// The serialized bodies of one event: one full body per batch, and the `{"action": …}` body for webhooks
/// with `send_payload = false`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBodies {
    /// One body per batch (a single one unless the action's list is longer than the batch size).
    pub chunks: Vec<Vec<u8>>,
    /// `{"action": "<ACTION>"}`, what a webhook with `send_payload = false` receives for each batch.
    pub action_only: Vec<u8>,
}

impl EventBodies {
    /// The body a webhook receives for batch `chunk`.
    pub fn body(&self, chunk: usize, send_payload: bool) -> &[u8] {
        if send_payload {
            &self.chunks[chunk]
        } else {
            &self.action_only
        }
    }
}

enum Part<'a> {
    Whole(&'a Value),
    Slice(&'a [Value]),
}

impl Serialize for Part<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Part::Whole(v) => v.serialize(s),
            Part::Slice(items) => items.serialize(s),
        }
    }
}

struct Body<'a> {
    action: &'a str,
    parts: Vec<(&'a str, Part<'a>)>,
}

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.parts.len() + 1))?;
        map.serialize_entry("action", self.action)?;
        for (k, v) in &self.parts {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// How many POSTs (chunks) `event` takes: its instance list cut into batches of `batch_size` for a `many`
/// action, else one. The same count as [`build`] makes, without building anything.
pub fn chunk_count(event: &Event, spec: &ActionSpec, batch_size: usize) -> usize {
    match event.payload.get(spec.key.as_str()) {
        Some(Value::Array(items)) if spec.many && !items.is_empty() => {
            items.len().div_ceil(batch_size.max(1))
        }
        _ => 1,
    }
}

/// Builds the bodies Label Studio would send for `event`, in its key order: `action`, the action's key,
/// `project`, then the nested fields. A `many` action's list is cut into batches of `batch_size`, one POST
/// each; nested lists of the same length are cut alongside. An empty list is left out, as Label Studio does.
pub fn build(event: &Event, spec: &ActionSpec, batch_size: usize) -> EventBodies {
    let batch_size = batch_size.max(1);
    let key = spec.key.as_str();
    let instances = event.payload.get(key);
    let list: Option<&[Value]> = match instances {
        Some(Value::Array(items)) if spec.many => Some(items.as_slice()),
        _ => None,
    };
    let n_chunks = match list {
        Some(items) if !items.is_empty() => items.len().div_ceil(batch_size),
        _ => 1,
    };
    let project = event.project.as_ref();
    let mut chunks = Vec::with_capacity(n_chunks);
    for chunk in 0..n_chunks {
        let range = |len: usize| {
            let start = (chunk * batch_size).min(len);
            start..((chunk + 1) * batch_size).min(len)
        };
        let mut parts: Vec<(&str, Part<'_>)> = Vec::with_capacity(event.payload.len() + 1);
        match (list, instances) {
            (Some(items), _) if !items.is_empty() => {
                parts.push((key, Part::Slice(&items[range(items.len())])))
            }
            (Some(_), _) => {}
            (None, Some(v)) => parts.push((key, Part::Whole(v))),
            (None, None) => {}
        }
        let project_value;
        if let Some(p) = project {
            project_value = Value::Object(p.clone());
            match parts.iter_mut().find(|(k, _)| *k == "project") {
                Some(slot) => slot.1 = Part::Whole(&project_value),
                None => parts.push(("project", Part::Whole(&project_value))),
            }
        }
        for (k, v) in &event.payload {
            if k == key || k == "action" || (k == "project" && project.is_some()) {
                continue;
            }
            match (list, v) {
                (Some(items), Value::Array(nested))
                    if nested.len() == items.len() && !items.is_empty() =>
                {
                    parts.push((k, Part::Slice(&nested[range(nested.len())])))
                }
                _ => parts.push((k, Part::Whole(v))),
            }
        }
        let body = Body {
            action: &event.action,
            parts,
        };
        // Serializing a Value-backed body into a Vec cannot fail.
        chunks.push(python_json::to_vec(&body).unwrap_or_default());
    }
    let action_only = python_json::to_vec(&Body {
        action: &event.action,
        parts: Vec::new(),
    })
    .unwrap_or_default();
    EventBodies {
        chunks,
        action_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::Catalog;
    use serde_json::json;

    fn bodies(v: Value, batch: usize) -> (EventBodies, Vec<Value>) {
        let catalog = Catalog::builtin();
        let e = Event::from_value(v, &catalog).unwrap();
        let b = build(&e, catalog.get(&e.action).unwrap(), batch);
        let parsed = b
            .chunks
            .iter()
            .map(|c| serde_json::from_slice(c).unwrap())
            .collect();
        (b, parsed)
    }

    #[test]
    fn annotation_created_has_label_studio_key_order_and_python_bytes() {
        let (b, _) = bodies(
            json!({"version": 1, "organization": 1, "action": "ANNOTATION_CREATED",
                "project": {"id": 2, "title": "P"},
                "payload": {"task": {"id": 19}, "annotation": {"id": 17, "lead_time": 37.13}}}),
            5000,
        );
        assert_eq!(
            String::from_utf8(b.chunks[0].clone()).unwrap(),
            r#"{"action": "ANNOTATION_CREATED", "annotation": {"id": 17, "lead_time": 37.13}, "project": {"id": 2, "title": "P"}, "task": {"id": 19}}"#
        );
        assert_eq!(b.action_only, br#"{"action": "ANNOTATION_CREATED"}"#);
        assert_eq!(b.body(0, false), b.action_only.as_slice());
    }

    #[test]
    fn project_deleted_without_project_scope() {
        let (_, parsed) = bodies(
            json!({"version": 1, "organization": 1, "action": "PROJECT_DELETED", "project": null,
                "payload": {"project": {"id": 3}}}),
            5000,
        );
        assert_eq!(
            parsed,
            [json!({"action": "PROJECT_DELETED", "project": {"id": 3}})]
        );
    }

    #[test]
    fn project_updated_sends_project_once() {
        let (b, _) = bodies(
            json!({"version": 1, "organization": 1, "action": "PROJECT_UPDATED", "project": {"id": 3, "title": "new"},
                "payload": {"project": {"id": 3, "title": "new"}}}),
            5000,
        );
        assert_eq!(
            b.chunks[0],
            br#"{"action": "PROJECT_UPDATED", "project": {"id": 3, "title": "new"}}"#
        );
    }

    #[test]
    fn long_lists_are_batched_with_nested_lists_alongside() {
        let tasks: Vec<Value> = (0..250).map(|i| json!({"id": i})).collect();
        let (b, parsed) = bodies(
            json!({"version": 1, "organization": 1, "action": "TASKS_CREATED", "project": {"id": 2},
                "payload": {"tasks": tasks}}),
            100,
        );
        assert_eq!(b.chunks.len(), 3);
        let catalog = Catalog::builtin();
        let e = Event::from_value(
            json!({"version": 1, "organization": 1, "action": "TASKS_CREATED", "project": {"id": 2},
                "payload": {"tasks": (0..250).map(|i| json!({"id": i})).collect::<Vec<_>>()}}),
            &catalog,
        )
        .unwrap();
        let spec = catalog.get("TASKS_CREATED").unwrap();
        assert_eq!(chunk_count(&e, spec, 100), 3, "as many as build makes");
        assert_eq!(chunk_count(&e, spec, 5000), 1);
        let sizes: Vec<usize> = parsed
            .iter()
            .map(|p| p["tasks"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [100, 100, 50]);
        assert_eq!(parsed[2]["tasks"][0]["id"], 200);
        assert_eq!(parsed[1]["project"]["id"], 2);

        let anns: Vec<Value> = (0..3).map(|i| json!({"id": i})).collect();
        let task_list: Vec<Value> = (0..3).map(|i| json!({"id": 100 + i})).collect();
        let (_, parsed) = bodies(
            json!({"version": 1, "organization": 1, "action": "ANNOTATIONS_CREATED", "project": {"id": 2},
                "payload": {"annotation": anns, "task": task_list}}),
            2,
        );
        assert_eq!(
            parsed[1],
            json!({"action": "ANNOTATIONS_CREATED", "annotation": [{"id": 2}],
            "project": {"id": 2}, "task": [{"id": 102}]})
        );
    }

    #[test]
    fn an_empty_list_is_left_out_as_label_studio_does() {
        let (_, parsed) = bodies(
            json!({"version": 1, "organization": 1, "action": "ANNOTATIONS_DELETED", "project": {"id": 2},
                "payload": {"annotations": []}}),
            100,
        );
        assert_eq!(
            parsed,
            [json!({"action": "ANNOTATIONS_DELETED", "project": {"id": 2}})]
        );
    }
}
