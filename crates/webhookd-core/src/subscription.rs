//! Webhook subscriptions and Label Studio's matching rules, with an index the worker keeps in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// Where a webhook listens: its organization and its project (`None` for the whole organization).
type Scope = (i64, Option<i64>);

/// All webhooks by id, by organization and by scope, so matching an event costs no database query and no
/// scan: it reads the organization-level list and the project's list, whatever the total. The maps are
/// persistent (structurally shared), so a copy costs nothing and replacing one organization touches only
/// its own webhooks.
#[derive(Debug, Default, Clone)]
pub struct SubscriptionIndex {
    by_id: imbl::HashMap<i64, Arc<Subscription>>,
    /// The ids of each organization's webhooks, active or not.
    by_org: imbl::HashMap<i64, Arc<[i64]>>,
    /// The active webhooks of each scope, in id order.
    by_scope: imbl::HashMap<Scope, Arc<[Arc<Subscription>]>>,
}

impl SubscriptionIndex {
    /// An index over `subs`.
    pub fn new(subs: impl IntoIterator<Item = Subscription>) -> Self {
        let mut by_org: HashMap<i64, Vec<Subscription>> = HashMap::new();
        for sub in subs {
            by_org.entry(sub.organization).or_default().push(sub);
        }
        let mut index = Self::default();
        for (organization, subs) in by_org {
            index.put_organization(organization, subs);
        }
        index
    }

    /// A copy of this index with organization `organization`'s webhooks replaced by `subs` (those of
    /// another organization in `subs` are ignored). Costs what that organization holds, not the total.
    pub fn with_organization(&self, organization: i64, subs: Vec<Subscription>) -> Self {
        let mut next = self.clone();
        next.remove_organization(organization);
        let subs = subs
            .into_iter()
            .filter(|s| s.organization == organization)
            .collect();
        next.put_organization(organization, subs);
        next
    }

    fn remove_organization(&mut self, organization: i64) {
        let Some(ids) = self.by_org.remove(&organization) else {
            return;
        };
        for id in ids.iter() {
            if let Some(sub) = self.by_id.remove(id) {
                self.by_scope.remove(&(organization, sub.project));
            }
        }
    }

    fn put_organization(&mut self, organization: i64, mut subs: Vec<Subscription>) {
        if subs.is_empty() {
            return;
        }
        subs.sort_by_key(|s| s.id);
        subs.dedup_by_key(|s| s.id);
        let mut scopes: BTreeMap<Scope, Vec<Arc<Subscription>>> = BTreeMap::new();
        let mut ids = Vec::with_capacity(subs.len());
        for sub in subs {
            let sub = Arc::new(sub);
            ids.push(sub.id);
            if sub.is_active {
                scopes
                    .entry((organization, sub.project))
                    .or_default()
                    .push(sub.clone());
            }
            self.by_id.insert(sub.id, sub);
        }
        for (scope, subs) in scopes {
            self.by_scope.insert(scope, subs.into());
        }
        self.by_org.insert(organization, ids.into());
    }

    /// The webhooks that receive `action` in `organization` / `project`, in id order.
    pub fn matching(
        &self,
        organization: i64,
        project: Option<i64>,
        action: &str,
    ) -> Vec<Arc<Subscription>> {
        let receives = |s: &&Arc<Subscription>| s.matches(organization, project, action);
        let org_level = self.scope(organization, None).iter().filter(receives);
        let Some(project) = project else {
            return org_level.cloned().collect();
        };
        let project_level = self
            .scope(organization, Some(project))
            .iter()
            .filter(receives);
        // Two lists in id order, merged.
        let mut found = Vec::new();
        let (mut a, mut b) = (org_level.peekable(), project_level.peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.id <= y.id => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            if let Some(sub) = next {
                found.push(sub.clone());
            }
        }
        found
    }

    fn scope(&self, organization: i64, project: Option<i64>) -> &[Arc<Subscription>] {
        self.by_scope
            .get(&(organization, project))
            .map(|subs| &subs[..])
            .unwrap_or_default()
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

    #[test]
    fn matching_agrees_with_the_rule_over_every_webhook() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let actions = ["A", "B", "C"];
        let mut random_sub = |id: i64, org: i64| {
            let mut s = sub(
                id,
                org,
                [None, Some(1), Some(2), Some(3)][rng.gen_range(0..4)],
            );
            s.is_active = rng.gen_bool(0.8);
            s.send_for_all_actions = rng.gen_bool(0.5);
            s.actions.insert(actions[rng.gen_range(0..3)].to_string());
            s
        };
        let mut all: Vec<Subscription> = (1..=400).map(|id| random_sub(id, id % 5)).collect();
        let mut index = SubscriptionIndex::new(all.clone());
        // Replace two organizations: one changes, one empties.
        let org1: Vec<Subscription> = (1000..1040).map(|id| random_sub(id, 1)).collect();
        all.retain(|s| s.organization != 1 && s.organization != 2);
        all.extend(org1.clone());
        index = index
            .with_organization(1, org1)
            .with_organization(2, vec![]);
        assert_eq!(index.len(), all.len());
        for org in 0..6 {
            for project in [None, Some(1), Some(2), Some(3), Some(4)] {
                for action in actions {
                    let mut expected: Vec<i64> = all
                        .iter()
                        .filter(|s| s.matches(org, project, action))
                        .map(|s| s.id)
                        .collect();
                    expected.sort();
                    let found: Vec<i64> = index
                        .matching(org, project, action)
                        .iter()
                        .map(|s| s.id)
                        .collect();
                    assert_eq!(found, expected, "org {org} project {project:?} {action}");
                }
            }
        }
    }

    #[test]
    fn a_webhook_moved_to_another_project_leaves_its_old_scope() {
        let index = SubscriptionIndex::new([sub(1, 1, Some(7)), sub(2, 1, Some(8))]);
        let next = index.with_organization(1, vec![sub(1, 1, Some(8)), sub(2, 1, Some(8))]);
        assert!(next.matching(1, Some(7), "X").is_empty());
        assert_eq!(next.matching(1, Some(8), "X").len(), 2);
        assert_eq!(next.get(1).unwrap().project, Some(8));
    }
}
