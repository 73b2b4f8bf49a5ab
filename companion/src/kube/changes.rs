//! What the leader hands the Istio reconciler (`kube::reconcile`): the
//! objects of the services whose target changed since the last send, and
//! the Istio objects observed anew, with the bookkeeping that decides them
//! (the targets last rendered, lanes held after they left, whether the
//! reconciler holds what was sent, wildcard DestinationRules).

use std::collections::{BTreeMap, BTreeSet};

use crate::kube::index::{FilterObj, Index, RouteObj, RuleObj};
use crate::kube::plan::{Changes, Existing, Key};
use crate::kube::watch::Mirror;

/// The Istio change set's bookkeeping, between two sends.
#[derive(Default)]
pub(crate) struct IstioChanges {
    /// The Istio targets last rendered (with the lanes held and the
    /// carried policy), by service, and lanes held after they left.
    pub(crate) last_targets: BTreeMap<crate::kube::watch::Key, crate::kube::istio::Target>,
    pub(crate) held: crate::kube::snapshot::Held,
    /// The reconciler holds what this replica sent since it leads: later
    /// changes go as changes (otherwise the next go whole).
    pub(crate) sent: bool,
    /// DestinationRules, VirtualServices and EnvoyFilters observed anew
    /// since the reconciler was last sent changes.
    touched: BTreeSet<Key>,
    /// The DestinationRules with a wildcard host's `trafficPolicy` (their
    /// change changes any service's objects: all are rendered again).
    wildcards: BTreeSet<crate::kube::watch::Key>,
    /// Services rendered (what an event costs the reconciler; tests).
    pub(crate) rendered: u64,
}

/// The mirrors of the Istio kinds, as the change set reads them.
pub(crate) struct IstioMirrors<'a> {
    pub(crate) rules: &'a Mirror<RuleObj>,
    pub(crate) routes: &'a Mirror<RouteObj>,
    pub(crate) filters: &'a Mirror<FilterObj>,
}

impl IstioChanges {
    /// An Istio object observed anew (sent as observed with the next changes).
    pub(crate) fn observed(&mut self, key: Key) {
        self.touched.insert(key);
    }

    /// A DestinationRule event (`None`: a re-list) after `rules` took it.
    /// A wildcard DestinationRule's policy is carried into any service's
    /// rule: one coming, going or changing renders every service again.
    pub(crate) fn rule_updated(&mut self, rule: Option<crate::kube::watch::Key>, rules: &Mirror<RuleObj>) {
        match rule {
            Some(k) => {
                let was = self.wildcards.remove(&k);
                let is = rules.items.get(&k).is_some_and(|r| r.policy.is_some());
                if is {
                    self.wildcards.insert(k);
                }
                if was || is {
                    self.sent = false;
                }
            }
            None => {
                self.wildcards =
                    rules.items.iter().filter(|(_, r)| r.policy.is_some()).map(|(k, _)| k.clone()).collect();
            }
        }
    }

    /// Drops what the watches touched since the reconciler was last sent
    /// changes (no reconciler, or not leading: it is sent anew).
    pub(crate) fn forget(&mut self, index: &mut Index) {
        self.touched.clear();
        index.take_targets_changed();
    }

    /// What changed for the reconciler since the last call: the objects of
    /// the services whose target changed (rendered again: one event, its
    /// services; everything after a re-list, a new term or a wildcard
    /// policy change), and the Istio objects observed anew. Lanes that
    /// left are held for `grace` (`snapshot::hold_leaving_one`, per service).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn changes(
        &mut self,
        index: &mut Index,
        mirrors: &IstioMirrors<'_>,
        base: &str,
        (mode, root): (crate::kube::istio::Mode, &str),
        installation: &str,
        now: u64,
        grace: u64,
    ) -> Changes {
        let opts = crate::kube::istio::Options { mode, base, root_namespace: root, installation: Some(installation) };
        let targets_changed = index.take_targets_changed();
        let whole = !self.sent || targets_changed.is_none();
        self.sent = true;
        let mut services: BTreeSet<crate::kube::watch::Key> = BTreeSet::new();
        // Lanes held past their grace: their services' objects change
        // (`hold_leaving_one` lets them go).
        let expired = self.held.iter().filter(|(_, until)| **until <= now);
        services.extend(expired.map(|((ns, name, _), _)| (ns.clone(), name.clone())));
        if whole {
            services.extend(index.targets().map(|t| (t.namespace.clone(), t.name.clone())));
            services.extend(self.last_targets.keys().cloned());
        } else {
            services.extend(targets_changed.into_iter().flatten());
        }
        // Wildcard DestinationRules' policies, carried into ours.
        let wildcards: Vec<(&str, &str, &str, &serde_json::Value)> = self
            .wildcards
            .iter()
            .filter_map(|k| Some((k, mirrors.rules.items.get(k)?)))
            .filter_map(|((ns, name), r)| Some((ns.as_str(), name.as_str(), r.host.as_str(), &**r.policy.as_ref()?)))
            .collect();
        let mut changes = Changes { whole, ..Default::default() };
        for key in services {
            let mut target = index.target(&key).cloned();
            let previous = self.last_targets.get(&key);
            crate::kube::snapshot::hold_leaving_one(&key, target.as_mut(), previous, &mut self.held, now, grace);
            if let Some(t) = target.as_mut().filter(|_| !wildcards.is_empty()) {
                t.traffic_policy =
                    crate::kube::istio::carried_policy(&t.namespace, &t.fqdn, root, wildcards.iter().copied());
            }
            if !whole && target.as_ref() == previous {
                continue;
            }
            let objects = target.as_ref().map(|t| crate::kube::istio::render_target(t, &opts));
            self.rendered += u64::from(objects.is_some());
            match target {
                Some(t) => self.last_targets.insert(key.clone(), t),
                None => self.last_targets.remove(&key),
            };
            changes.wanted.insert(key, objects);
        }
        let touched = std::mem::take(&mut self.touched);
        if whole {
            let all = mirrors.rules.items.keys().map(|(ns, name)| ("DestinationRule", ns, name));
            let all = all.chain(mirrors.routes.items.keys().map(|(ns, name)| ("VirtualService", ns, name)));
            let all = all.chain(mirrors.filters.items.keys().map(|(ns, name)| ("EnvoyFilter", ns, name)));
            for (kind, ns, name) in all {
                let key = (kind.to_owned(), ns.clone(), name.clone());
                let seen = existing(mirrors, &key);
                changes.existing.insert(key, seen);
            }
        } else {
            for key in touched {
                let seen = existing(mirrors, &key);
                changes.existing.insert(key, seen);
            }
        }
        changes
    }
}

/// An Istio object as the reconciler sees it, if it exists.
fn existing(mirrors: &IstioMirrors<'_>, (kind, ns, name): &Key) -> Option<Existing> {
    let k = (ns.clone(), name.clone());
    let (kind, owned, hosts, observed) = match kind.as_str() {
        "DestinationRule" => {
            mirrors.rules.items.get(&k).map(|r| ("DestinationRule", r.owned, vec![r.host.clone()], &r.observed))?
        }
        "VirtualService" => {
            mirrors.routes.items.get(&k).map(|r| ("VirtualService", r.owned, r.hosts.clone(), &r.observed))?
        }
        "EnvoyFilter" => mirrors.filters.items.get(&k).map(|f| ("EnvoyFilter", f.owned, vec![], &f.observed))?,
        _ => return None,
    };
    Some(Existing { kind, namespace: ns.clone(), name: name.clone(), owned, hosts, observed: observed.clone() })
}
