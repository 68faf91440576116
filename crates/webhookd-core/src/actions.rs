//! The action catalog: every Label Studio webhook action, plus custom actions from a config file.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One action a webhook can subscribe to, as Label Studio's `WebhookAction.ACTIONS` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// The action's identifier, e.g. `ANNOTATION_CREATED`; also the AMQP routing key.
    pub action: String,
    /// Human-readable name shown by `/api/webhooks/info/`.
    pub name: String,
    /// Free-text description (empty for every built-in action, as in Label Studio).
    #[serde(default)]
    pub description: String,
    /// The body key that carries the action's instances (`annotation`, `tasks`, …).
    pub key: String,
    /// Whether the key holds a list of instances (and may be sent in batches).
    pub many: bool,
    /// Whether only organization-level webhooks (no project) can receive the action.
    #[serde(default, rename = "organization-only", alias = "organization_only")]
    pub organization_only: bool,
}

/// The action of test pings: not in the catalog, so producers cannot publish it.
pub const PING: &str = "PING";
/// The action logged for a delivery whose event is no longer stored (so its action is unknown).
pub const UNKNOWN_ACTION: &str = "";

/// The twelve built-in Label Studio actions: (action, name, key, many, organization-only), in `/info/` order.
pub(crate) const BUILTIN: [(&str, &str, &str, bool, bool); 12] = [
    ("PROJECT_CREATED", "Project created", "project", false, true),
    (
        "PROJECT_UPDATED",
        "Project updated",
        "project",
        false,
        false,
    ),
    ("PROJECT_DELETED", "Project deleted", "project", false, true),
    ("TASKS_CREATED", "Task created", "tasks", true, false),
    ("TASKS_DELETED", "Task deleted", "tasks", true, false),
    (
        "ANNOTATION_CREATED",
        "Annotation created",
        "annotation",
        false,
        false,
    ),
    (
        "ANNOTATIONS_CREATED",
        "Annotations created",
        "annotation",
        true,
        false,
    ),
    (
        "ANNOTATION_UPDATED",
        "Annotation updated",
        "annotation",
        false,
        false,
    ),
    (
        "ANNOTATIONS_DELETED",
        "Annotation deleted",
        "annotations",
        true,
        false,
    ),
    (
        "LABEL_LINK_CREATED",
        "Label link created",
        "label_link",
        true,
        false,
    ),
    (
        "LABEL_LINK_UPDATED",
        "Label link updated",
        "label_link",
        false,
        false,
    ),
    (
        "LABEL_LINK_DELETED",
        "Label link deleted",
        "label_link",
        false,
        false,
    ),
];

/// Why a custom-actions file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read custom actions file {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a JSON list of action objects.
    #[error("custom actions file {path} is not a JSON list of actions: {source}")]
    Parse {
        /// The file's path.
        path: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// An action entry is unusable.
    #[error("custom action {action:?}: {reason}")]
    Invalid {
        /// The offending action name.
        action: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The set of known actions, looked up by name; built-ins first, in Label Studio's order.
#[derive(Debug, Clone)]
pub struct Catalog {
    ordered: Vec<ActionSpec>,
    by_name: HashMap<String, usize>,
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Catalog {
    /// The twelve Label Studio actions.
    pub fn builtin() -> Self {
        let ordered: Vec<ActionSpec> = BUILTIN
            .iter()
            .map(|&(action, name, key, many, organization_only)| ActionSpec {
                action: action.to_owned(),
                name: name.to_owned(),
                description: String::new(),
                key: key.to_owned(),
                many,
                organization_only,
            })
            .collect();
        Self::from_specs(ordered)
    }

    fn from_specs(ordered: Vec<ActionSpec>) -> Self {
        let by_name = ordered
            .iter()
            .enumerate()
            .map(|(i, spec)| (spec.action.clone(), i))
            .collect();
        Self { ordered, by_name }
    }

    /// Adds custom actions (Label Studio's "extend webhooks"); a custom action may not redefine a built-in one.
    pub fn with_custom(mut self, custom: Vec<ActionSpec>) -> Result<Self, CatalogError> {
        for spec in custom {
            validate_custom(&spec)?;
            if self.by_name.contains_key(&spec.action) {
                return Err(CatalogError::Invalid {
                    action: spec.action,
                    reason: "is already defined",
                });
            }
            self.by_name.insert(spec.action.clone(), self.ordered.len());
            self.ordered.push(spec);
        }
        Ok(self)
    }

    /// The built-in actions plus those listed in a JSON file (a list of `ActionSpec` objects).
    pub fn with_custom_file(self, path: &Path) -> Result<Self, CatalogError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: shown.clone(),
            source,
        })?;
        let custom: Vec<ActionSpec> =
            serde_json::from_str(&text).map_err(|source| CatalogError::Parse {
                path: shown,
                source,
            })?;
        self.with_custom(custom)
    }

    /// The action named `action`, if known.
    pub fn get(&self, action: &str) -> Option<&ActionSpec> {
        self.by_name.get(action).map(|&i| &self.ordered[i])
    }

    /// Every action, built-ins first in Label Studio's order.
    pub fn iter(&self) -> impl Iterator<Item = &ActionSpec> {
        self.ordered.iter()
    }
}

fn validate_custom(spec: &ActionSpec) -> Result<(), CatalogError> {
    let name_ok = !spec.action.is_empty()
        && spec.action.len() <= 128
        && spec
            .action
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    let reason = if !name_ok {
        Some("action must be 1-128 characters of A-Z, 0-9 and _")
    } else if spec.key.is_empty() || spec.key == "action" {
        Some("key must be non-empty and not \"action\"")
    } else if spec.name.is_empty() {
        Some("name must be non-empty")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CatalogError::Invalid {
            action: spec.action.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_has_the_twelve_label_studio_actions_in_order() {
        let catalog = Catalog::builtin();
        let names: Vec<&str> = catalog.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(names.len(), 12);
        assert_eq!(names[0], "PROJECT_CREATED");
        assert_eq!(names[11], "LABEL_LINK_DELETED");
        let created = catalog.get("ANNOTATIONS_CREATED").unwrap();
        assert_eq!((created.key.as_str(), created.many), ("annotation", true));
        let org_only: Vec<&str> = catalog
            .iter()
            .filter(|s| s.organization_only)
            .map(|s| s.action.as_str())
            .collect();
        assert_eq!(org_only, ["PROJECT_CREATED", "PROJECT_DELETED"]);
        assert!(catalog.get("TASK_CREATED").is_none());
    }

    #[test]
    fn custom_actions_extend_the_catalog() {
        let catalog = Catalog::builtin()
            .with_custom(vec![ActionSpec {
                action: "TASK_COMPLETED".into(),
                name: "Task completed".into(),
                description: "all annotations done".into(),
                key: "task".into(),
                many: false,
                organization_only: false,
            }])
            .unwrap();
        assert_eq!(catalog.iter().count(), 13);
        assert_eq!(catalog.get("TASK_COMPLETED").unwrap().key, "task");
    }

    #[test]
    fn custom_actions_cannot_redefine_or_be_malformed() {
        let spec = |action: &str, key: &str| ActionSpec {
            action: action.into(),
            name: "n".into(),
            description: String::new(),
            key: key.into(),
            many: false,
            organization_only: false,
        };
        let err = Catalog::builtin()
            .with_custom(vec![spec("PROJECT_CREATED", "project")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "custom action \"PROJECT_CREATED\": is already defined"
        );
        assert!(Catalog::builtin()
            .with_custom(vec![spec("bad name", "x")])
            .is_err());
        assert!(Catalog::builtin()
            .with_custom(vec![spec("GOOD", "action")])
            .is_err());
    }

    #[test]
    fn custom_actions_load_from_a_json_file() {
        let dir = std::env::temp_dir().join(format!("webhookd-actions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("actions.json");
        std::fs::write(
            &path,
            r#"[{"action":"STORAGE_SYNCED","name":"Storage synced","key":"storage","many":false,"organization-only":false}]"#,
        )
        .unwrap();
        let catalog = Catalog::builtin().with_custom_file(&path).unwrap();
        assert_eq!(
            catalog.get("STORAGE_SYNCED").unwrap().name,
            "Storage synced"
        );
        std::fs::write(&path, "{").unwrap();
        let err = Catalog::builtin().with_custom_file(&path).unwrap_err();
        assert!(err.to_string().contains("is not a JSON list of actions"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
