//! Webhook subscriptions and Label Studio's matching rules, with an index the worker keeps in memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::signature::SigningSecret;

/// What the worker needs to know about one webhook to match events and send to it.
///
/// A worker holds one per webhook (100,000 and more), so its parts are sized exactly: boxed strings and slices
/// (no spare capacity, no allocation when empty) and the listed actions as a bit set of the built-in ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    /// The webhook's id.
    pub id: i64,
    /// Its organization.
    pub organization: i64,
    /// Its project; `None` for an organization-level webhook.
    pub project: Option<i64>,
    /// Where to POST.
    pub url: Box<str>,
    /// `false` sends `{"action": …}` only.
    pub send_payload: bool,
    /// `false` sends only the listed `actions`.
    pub send_for_all_actions: bool,
    /// Static headers sent with every request.
    pub headers: Box<[(Box<str>, Box<str>)]>,
    /// Inactive webhooks receive nothing.
    pub is_active: bool,
    /// The actions it listens to when `send_for_all_actions` is false.
    pub actions: ActionSet,
    /// Signing secrets, newest first; every one signs (rotation grace).
    pub secrets: Box<[SigningSecret]>,
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

/// A webhook's listed actions: one bit per built-in action, and any custom ones (from the catalog's file)
/// sorted in a boxed slice, which allocates nothing while empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionSet {
    builtin: u16,
    custom: Box<[Box<str>]>,
}

/// The bit of a built-in action (its place in [`crate::actions::BUILTIN`]).
fn builtin_bit(action: &str) -> Option<u16> {
    let place = match action {
        "PROJECT_CREATED" => 0,
        "PROJECT_UPDATED" => 1,
        "PROJECT_DELETED" => 2,
        "TASKS_CREATED" => 3,
        "TASKS_DELETED" => 4,
        "ANNOTATION_CREATED" => 5,
        "ANNOTATIONS_CREATED" => 6,
        "ANNOTATION_UPDATED" => 7,
        "ANNOTATIONS_DELETED" => 8,
        "LABEL_LINK_CREATED" => 9,
        "LABEL_LINK_UPDATED" => 10,
        "LABEL_LINK_DELETED" => 11,
        _ => return None,
    };
    Some(1 << place)
}

impl ActionSet {
    /// Whether `action` is in the set.
    pub fn contains(&self, action: &str) -> bool {
        match builtin_bit(action) {
            Some(bit) => self.builtin & bit != 0,
            None => self.custom.binary_search_by(|a| (**a).cmp(action)).is_ok(),
        }
    }

    /// Adds `action`.
    pub fn insert(&mut self, action: &str) {
        match builtin_bit(action) {
            Some(bit) => self.builtin |= bit,
            None => {
                if let Err(at) = self.custom.binary_search_by(|a| (**a).cmp(action)) {
                    let mut custom = std::mem::take(&mut self.custom).into_vec();
                    custom.insert(at, action.into());
                    self.custom = custom.into_boxed_slice();
                }
            }
        }
    }

    /// The actions, built-in ones first (in the catalog's order), then custom ones in name order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        crate::actions::BUILTIN
            .iter()
            .enumerate()
            .filter(|(place, _)| self.builtin & (1 << place) != 0)
            .map(|(_, spec)| spec.0)
            .chain(self.custom.iter().map(|a| &**a))
    }

    /// How many actions the set holds.
    pub fn len(&self) -> usize {
        self.builtin.count_ones() as usize + self.custom.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<S: AsRef<str>> FromIterator<S> for ActionSet {
    fn from_iter<I: IntoIterator<Item = S>>(actions: I) -> Self {
        let mut builtin = 0;
        let mut custom: Vec<Box<str>> = Vec::new();
        for action in actions {
            let action = action.as_ref();
            match builtin_bit(action) {
                Some(bit) => builtin |= bit,
                None => custom.push(action.into()),
            }
        }
        custom.sort_unstable();
        custom.dedup();
        Self {
            builtin,
            custom: custom.into_boxed_slice(),
        }
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
        Self::default().reloaded(subs)
    }

    /// The index of `subs`, every webhook and organization (those not in `subs` are gone), sharing with this
    /// one every webhook that is equal to its copy here and every organization whose webhooks are all equal:
    /// a full reload that finds nothing changed allocates no second copy of the webhooks.
    pub fn reloaded(&self, subs: impl IntoIterator<Item = Subscription>) -> Self {
        let mut reload = self.full_reload();
        for sub in subs {
            reload.push(sub);
        }
        reload.finish()
    }

    /// A full reload fed one webhook at a time (as rows arrive), then [`Reload::finish`]ed; see
    /// [`SubscriptionIndex::reloaded`].
    pub fn full_reload(&self) -> Reload<'_> {
        Reload {
            old: self,
            by_org: HashMap::new(),
        }
    }

    /// A copy of this index with organization `organization`'s webhooks replaced by `subs` (those of
    /// another organization in `subs` are ignored). Costs what that organization holds, not the total; the
    /// webhooks equal to their copy here stay shared.
    pub fn with_organization(&self, organization: i64, subs: Vec<Subscription>) -> Self {
        let subs = subs
            .into_iter()
            .filter(|s| s.organization == organization)
            .map(|s| self.shared(s))
            .collect();
        let subs = by_id(subs);
        let mut next = self.clone();
        if !self.holds_exactly(organization, &subs) {
            next.remove_organization(organization);
            next.put_organization(organization, subs);
        }
        next
    }

    /// `sub`, as this index's own `Arc` of it when this index holds an equal copy.
    fn shared(&self, sub: Subscription) -> Arc<Subscription> {
        match self.by_id.get(&sub.id) {
            Some(held) if **held == sub => held.clone(),
            _ => Arc::new(sub),
        }
    }

    /// Whether `organization`'s webhooks here are exactly `subs` (sorted by id, the same `Arc`s).
    fn holds_exactly(&self, organization: i64, subs: &[Arc<Subscription>]) -> bool {
        let ids = self
            .by_org
            .get(&organization)
            .map(|ids| &ids[..])
            .unwrap_or_default();
        ids.len() == subs.len()
            && ids.iter().zip(subs).all(|(id, sub)| {
                self.by_id
                    .get(id)
                    .is_some_and(|held| Arc::ptr_eq(held, sub))
            })
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

    /// Adds `organization`'s webhooks `subs`, sorted by id without duplicates ([`by_id`]).
    fn put_organization(&mut self, organization: i64, subs: Vec<Arc<Subscription>>) {
        if subs.is_empty() {
            return;
        }
        let mut scopes: BTreeMap<Scope, Vec<Arc<Subscription>>> = BTreeMap::new();
        let mut ids = Vec::with_capacity(subs.len());
        for sub in subs {
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

/// `subs` sorted by id, without duplicates (the first of an id is kept).
fn by_id(mut subs: Vec<Arc<Subscription>>) -> Vec<Arc<Subscription>> {
    subs.sort_by_key(|s| s.id);
    subs.dedup_by_key(|s| s.id);
    subs
}

/// A full reload in progress ([`SubscriptionIndex::full_reload`]): the webhooks pushed so far, grouped by
/// organization, each already the old index's `Arc` when equal to it, so that only what changed is held twice.
pub struct Reload<'a> {
    old: &'a SubscriptionIndex,
    by_org: HashMap<i64, Vec<Arc<Subscription>>>,
}

impl Reload<'_> {
    /// Adds one webhook; they may come in any order.
    pub fn push(&mut self, sub: Subscription) {
        let sub = self.old.shared(sub);
        self.by_org.entry(sub.organization).or_default().push(sub);
    }

    /// The new index: the old one with each organization that changed replaced and those no longer loaded
    /// removed; the organizations that did not change keep the old index's structure.
    pub fn finish(self) -> SubscriptionIndex {
        let Reload { old, by_org } = self;
        let gone: Vec<i64> = old
            .by_org
            .keys()
            .filter(|o| !by_org.contains_key(o))
            .copied()
            .collect();
        let mut changed = Vec::new();
        for (organization, subs) in by_org {
            let subs = by_id(subs);
            if !old.holds_exactly(organization, &subs) {
                changed.push((organization, subs));
            }
        }
        let mut next = old.clone();
        // Every organization that goes or changes is removed before any is put back, so a webhook that moved
        // from one to another is not removed again after its new organization put it in.
        for &organization in gone.iter().chain(changed.iter().map(|(o, _)| o)) {
            next.remove_organization(organization);
        }
        for (organization, subs) in changed {
            next.put_organization(organization, subs);
        }
        next
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
            url: format!("http://127.0.0.1/{id}").into(),
            send_payload: true,
            send_for_all_actions: true,
            headers: Default::default(),
            is_active: true,
            actions: ActionSet::default(),
            secrets: Default::default(),
        }
    }

    #[test]
    fn matching_follows_label_studio_rules() {
        let mut listed = sub(4, 1, Some(7));
        listed.send_for_all_actions = false;
        listed.actions.insert("ANNOTATION_CREATED");
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
        // Custom actions and built-in ones (a bit each in `ActionSet`).
        let actions = ["A", "TASKS_CREATED", "LABEL_LINK_DELETED", "C"];
        let mut random_sub = |id: i64, org: i64| {
            let mut s = sub(
                id,
                org,
                [None, Some(1), Some(2), Some(3)][rng.gen_range(0..4)],
            );
            s.is_active = rng.gen_bool(0.8);
            s.send_for_all_actions = rng.gen_bool(0.5);
            s.actions.insert(actions[rng.gen_range(0..4)]);
            s.actions.insert(actions[rng.gen_range(0..4)]);
            s
        };
        let mut all: Vec<Subscription> = (1..=400).map(|id| random_sub(id, id % 5)).collect();
        let first = SubscriptionIndex::new(all.clone());
        // Replace two organizations: one changes, one empties.
        let org1: Vec<Subscription> = (1000..1040).map(|id| random_sub(id, 1)).collect();
        all.retain(|s| s.organization != 1 && s.organization != 2);
        all.extend(org1.clone());
        // Organization 3: one webhook changes, one moves to organization 4, one is new.
        for s in all.iter_mut().filter(|s| s.organization == 3).take(2) {
            if s.id % 2 == 0 {
                s.is_active = !s.is_active;
            } else {
                s.organization = 4;
            }
        }
        all.push(random_sub(2000, 3));
        let by_org = |org: i64| -> Vec<Subscription> {
            all.iter()
                .filter(|s| s.organization == org)
                .cloned()
                .collect()
        };
        let index = first
            .with_organization(1, org1)
            .with_organization(2, vec![])
            .with_organization(3, by_org(3))
            .with_organization(4, by_org(4));
        // The same changes, by a full reload of the first index (in another order).
        let reloaded = first.reloaded(all.iter().rev().cloned());
        for index in [&index, &reloaded] {
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
            for s in &all {
                assert_eq!(**index.get(s.id).unwrap(), *s);
            }
        }
    }

    #[test]
    fn a_reload_shares_every_unchanged_webhook() {
        let index = SubscriptionIndex::new((1..=30).map(|id| sub(id, id % 3, None)));
        let mut changed = sub(4, 1, None);
        changed.url = "http://127.0.0.1/changed".into();
        let rows = || {
            (1..=30)
                .filter(|&id| id != 4)
                .map(|id| sub(id, id % 3, None))
        };
        let next = index.reloaded(rows().chain([changed.clone()]));
        for id in (1..=30).filter(|&id| id != 4) {
            assert!(
                Arc::ptr_eq(index.get(id).unwrap(), next.get(id).unwrap()),
                "webhook {id} is shared"
            );
        }
        assert_eq!(**next.get(4).unwrap(), changed);
        assert_eq!(index.get(4).unwrap().url, "http://127.0.0.1/4".into());
        // Organizations 0 and 2 did not change: their lists are the old index's own.
        assert!(Arc::ptr_eq(&index.by_org[&0], &next.by_org[&0]));
        assert!(Arc::ptr_eq(
            &index.by_scope[&(2, None)],
            &next.by_scope[&(2, None)]
        ));
        assert!(!Arc::ptr_eq(
            &index.by_scope[&(1, None)],
            &next.by_scope[&(1, None)]
        ));
        // One organization's reload shares too; a webhook gone is gone.
        let one = next.with_organization(1, rows().filter(|s| s.organization == 1).collect());
        assert!(one.get(4).is_none());
        assert!(Arc::ptr_eq(next.get(1).unwrap(), one.get(1).unwrap()));
        // Nothing changed: nothing new.
        let same = index.reloaded((1..=30).map(|id| sub(id, id % 3, None)));
        for id in 1..=30 {
            assert!(Arc::ptr_eq(index.get(id).unwrap(), same.get(id).unwrap()));
        }
        // An organization no longer loaded is removed.
        let fewer = index.reloaded(
            (1..=30)
                .filter(|id| id % 3 != 2)
                .map(|id| sub(id, id % 3, None)),
        );
        assert_eq!(fewer.len(), 20);
        assert!(fewer.matching(2, None, "X").is_empty());
    }

    #[test]
    fn action_sets_hold_built_in_and_custom_actions() {
        for (place, spec) in crate::actions::BUILTIN.iter().enumerate() {
            assert_eq!(builtin_bit(spec.0), Some(1 << place), "{}", spec.0);
        }
        let mut set: ActionSet = [
            "TASKS_CREATED",
            "MY_ACTION",
            "ANNOTATION_CREATED",
            "MY_ACTION",
            "A",
        ]
        .into_iter()
        .collect();
        assert_eq!(set.len(), 4);
        assert!(set.contains("TASKS_CREATED") && set.contains("MY_ACTION") && set.contains("A"));
        assert!(!set.contains("TASKS_DELETED") && !set.contains("B") && !set.contains(""));
        set.insert("B");
        set.insert("TASKS_DELETED");
        set.insert("A");
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [
                "TASKS_CREATED",
                "TASKS_DELETED",
                "ANNOTATION_CREATED",
                "A",
                "B",
                "MY_ACTION"
            ]
        );
        let mut listed: Vec<&str> = set.iter().collect();
        listed.reverse();
        let same: ActionSet = listed.into_iter().collect();
        assert_eq!(same, set);
        assert!(ActionSet::default().is_empty());
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
