//! Webhook subscriptions and Label Studio's matching rules, with an index the worker keeps in memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::signature::SigningSecret;

/// What the worker needs to know about one webhook to match events and send to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The webhook's id.
    pub id: i64,
    /// Its organization.
    pub organization: i64,
    /// Its project; `None` for an organization-level webhook.
    pub project: Option<i64>,
    /// Where to POST.
    pub url: String,
    /// `false` sends `{"action": …}` only.
    pub send_payload: bool,
    /// `false` sends only the listed `actions`.
    pub send_for_all_actions: bool,
    /// Static headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// Inactive webhooks receive nothing.
    pub is_active: bool,
    /// The actions it listens to when `send_for_all_actions` is false.
    pub actions: BTreeSet<String>,
    /// Signing secrets, newest first; every one signs (rotation grace).
    pub secrets: Vec<SigningSecret>,
}

impl Subscription {
    /// Label Studio's `get_active_webhooks`: same organization, same project or organization-level, active,
    /// and all actions or the listed one.
    pub fn matches(&self, organization: i64, project: Option<i64>, action: &str) -> bool {
        self.organization == organization
            && (self.project.is_none() || self.project == project)
            && self.is_active
            && (self.send_for_all_actions || self.actions.contains(action))
    }
}

/// All webhooks by organization and by id, so matching an event costs no database query.
#[derive(Debug, Default, Clone)]
pub struct SubscriptionIndex {
    by_org: HashMap<i64, Vec<Arc<Subscription>>>,
    by_id: HashMap<i64, Arc<Subscription>>,
}

impl SubscriptionIndex {
    /// An index over `subs`.
    pub fn new(subs: impl IntoIterator<Item = Subscription>) -> Self {
        let mut index = Self::default();
        for sub in subs {
            index.insert(Arc::new(sub));
        }
        index
    }

    fn insert(&mut self, sub: Arc<Subscription>) {
        self.by_org
            .entry(sub.organization)
            .or_default()
            .push(sub.clone());
        self.by_id.insert(sub.id, sub);
    }

    /// A copy of this index with organization `organization`'s webhooks replaced by `subs`.
    pub fn with_organization(&self, organization: i64, subs: Vec<Subscription>) -> Self {
        let mut next = self.clone();
        if let Some(old) = next.by_org.remove(&organization) {
            for sub in old {
                next.by_id.remove(&sub.id);
            }
        }
        for sub in subs {
            next.insert(Arc::new(sub));
        }
        next
    }

    /// The webhooks that receive `action` in `organization` / `project`, in id order.
    pub fn matching(
        &self,
        organization: i64,
        project: Option<i64>,
        action: &str,
    ) -> Vec<Arc<Subscription>> {
        let mut found: Vec<Arc<Subscription>> = self
            .by_org
            .get(&organization)
            .map(|subs| {
                subs.iter()
                    .filter(|s| s.matches(organization, project, action))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        found.sort_by_key(|s| s.id);
        found
    }

    /// The webhook `id`, active or not.
    pub fn get(&self, id: i64) -> Option<&Arc<Subscription>> {
        self.by_id.get(&id)
    }

    /// How many webhooks the index holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the index holds no webhook.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(id: i64, org: i64, project: Option<i64>) -> Subscription {
        Subscription {
            id,
            organization: org,
            project,
            url: format!("http://127.0.0.1/{id}"),
            send_payload: true,
            send_for_all_actions: true,
            headers: vec![],
            is_active: true,
            actions: BTreeSet::new(),
            secrets: vec![],
        }
    }

    #[test]
    fn matching_follows_label_studio_rules() {
        let mut listed = sub(4, 1, Some(7));
        listed.send_for_all_actions = false;
        listed.actions.insert("ANNOTATION_CREATED".into());
        let mut inactive = sub(5, 1, None);
        inactive.is_active = false;
        let index = SubscriptionIndex::new([
            sub(1, 1, None),
            sub(2, 1, Some(7)),
            sub(3, 1, Some(8)),
            listed,
            inactive,
            sub(6, 2, None),
        ]);
        let ids = |org, project, action| -> Vec<i64> {
            index
                .matching(org, project, action)
                .iter()
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(ids(1, Some(7), "ANNOTATION_CREATED"), [1, 2, 4]);
        assert_eq!(ids(1, Some(7), "TASKS_CREATED"), [1, 2]);
        assert_eq!(ids(1, None, "PROJECT_CREATED"), [1]);
        assert_eq!(ids(2, Some(7), "TASKS_CREATED"), [6]);
        assert_eq!(ids(3, None, "TASKS_CREATED"), Vec::<i64>::new());
        assert!(!index.get(5).unwrap().is_active);
    }

    #[test]
    fn reloading_one_organization_replaces_only_its_webhooks() {
        let index = SubscriptionIndex::new([sub(1, 1, None), sub(2, 2, None)]);
        let mut changed = sub(1, 1, None);
        changed.is_active = false;
        let next = index.with_organization(1, vec![changed, sub(3, 1, None)]);
        assert_eq!(next.len(), 3);
        assert_eq!(
            next.matching(1, None, "X")
                .iter()
                .map(|s| s.id)
                .collect::<Vec<_>>(),
            [3]
        );
        assert_eq!(next.matching(2, None, "X").len(), 1);
        assert_eq!(
            index.matching(1, None, "X").len(),
            1,
            "the old index is untouched"
        );
    }
}
