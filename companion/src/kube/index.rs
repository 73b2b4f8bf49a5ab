//! The watch loop's incremental table: the mirrors indexed by service, so
//! an event re-evaluates only the services it touches (`kube::snapshot`'s
//! per-service rules) instead of every service of the cluster. What it
//! keeps per service is exactly what a whole rebuild would compute now;
//! `kube::source`'s tests compare the two after every step of random event
//! sequences.
//!
//! A service is evaluated again when one of these changed: the Service; one
//! of its EndpointSlices (before or after the change); a pod one of its
//! slices lists; a DestinationRule for its host in its namespace; a
//! VirtualService route to its host. Lanes that hold but have not settled
//! are evaluated again on every rebuild (time alone lets them in). A
//! re-list of any kind rebuilds the indexes and evaluates everything.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use isogroup_core::RawService;
use serde_json::Value;

use crate::kube::istio::Target;
use crate::kube::snapshot::{evaluate, fqdn, lanes_of, service_key, Clock, EndpointSlice, Labels, Pod, Service, Since};
use crate::kube::watch::{Key, Mirror};

/// A DestinationRule: its host (as an FQDN), its subsets' selectors, and
/// whether this installation owns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleObj {
    pub host: String,
    pub subsets: BTreeMap<String, Labels>,
    pub owned: bool,
    /// Owned: the object as observed (what the reconciler compares).
    pub observed: Option<Arc<Value>>,
    /// A wildcard host's `trafficPolicy` (carried into generated rules).
    pub policy: Option<Arc<Value>>,
}

/// A VirtualService: its hosts, the (host, subset) pairs its HTTP routes go
/// to, and whether this installation owns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteObj {
    pub hosts: Vec<String>,
    pub dests: Vec<(String, String)>,
    pub owned: bool,
    /// Owned: the object as observed.
    pub observed: Option<Arc<Value>>,
}

/// An EnvoyFilter of the root namespace (cluster-header mode): if this
/// installation owns it, the outbound virtual hosts (`<fqdn>:<port>`) it
/// patches and the object as observed (others' count only by name).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FilterObj {
    pub vhosts: Vec<(String, u16)>,
    pub owned: bool,
    pub observed: Option<Arc<Value>>,
}

/// The mirrors the table is computed from, borrowed.
pub struct Mirrors<'a> {
    pub services: &'a BTreeMap<Key, Service>,
    pub pods: &'a BTreeMap<Key, Pod>,
    pub slices: &'a BTreeMap<Key, EndpointSlice>,
    pub rules: &'a BTreeMap<Key, RuleObj>,
    pub routes: &'a BTreeMap<Key, RouteObj>,
    pub filters: &'a BTreeMap<Key, FilterObj>,
    /// A lane needs a VirtualService route to its subset (target-header).
    pub routes_required: bool,
    /// A lane needs its service's EnvoyFilter (cluster-header).
    pub filters_required: bool,
}

impl<'a> Mirrors<'a> {
    pub fn of(
        services: &'a Mirror<Service>,
        pods: &'a Mirror<Pod>,
        slices: &'a Mirror<EndpointSlice>,
        rules: &'a Mirror<RuleObj>,
        routes: &'a Mirror<RouteObj>,
        filters: &'a Mirror<FilterObj>,
        (routes_required, filters_required): (bool, bool),
    ) -> Mirrors<'a> {
        Mirrors {
            services: &services.items,
            pods: &pods.items,
            slices: &slices.items,
            rules: &rules.items,
            routes: &routes.items,
            filters: &filters.items,
            routes_required,
            filters_required,
        }
    }
}

#[derive(Debug)]
pub struct Index {
    /// (namespace, service) → the names of its EndpointSlices.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// (namespace, pod) → the names of the EndpointSlices that list it.
    slices_with_pod: HashMap<Key, Vec<String>>,
    /// (namespace, host FQDN) → the names of the DestinationRules for it.
    rules_for: HashMap<Key, BTreeSet<String>>,
    /// (host FQDN, subset) → how many VirtualService routes go there.
    routes: HashMap<(String, String), usize>,
    /// (host FQDN, port) → how many owned EnvoyFilters patch its vhost.
    filtered: HashMap<(String, u16), usize>,
    /// Services (namespace, name) to evaluate again.
    dirty: BTreeSet<Key>,
    /// The indexes are to be rebuilt from the mirrors and every service
    /// evaluated (start, re-list).
    stale: bool,
    /// Services with a lane that holds but has not settled yet.
    unsettled: BTreeSet<Key>,
    /// The table's services, by table key.
    entries: BTreeMap<String, RawService>,
    /// Group → how many entries have a lane of it (what `max_groups`
    /// counts, kept so a rebuild need not walk every entry).
    lane_groups: HashMap<String, usize>,
    /// What the Istio objects must cover, by (namespace, name).
    targets: BTreeMap<Key, Target>,
    /// The table keys of the entries changed since `take_changed` last
    /// answered (`None`: every entry was evaluated anew).
    changed: Option<BTreeSet<String>>,
    /// The services whose target changed since `take_targets_changed`
    /// last answered (`None`: maybe every one).
    targets_changed: Option<BTreeSet<Key>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            slices_of: HashMap::new(),
            slices_with_pod: HashMap::new(),
            rules_for: HashMap::new(),
            routes: HashMap::new(),
            filtered: HashMap::new(),
            dirty: BTreeSet::new(),
            stale: true,
            unsettled: BTreeSet::new(),
            entries: BTreeMap::new(),
            lane_groups: HashMap::new(),
            targets: BTreeMap::new(),
            changed: None,
            targets_changed: None,
        }
    }
}

/// The service a DestinationRule in `namespace` for `host` applies to: the
/// one of that namespace whose FQDN it is.
fn service_of_rule(namespace: &str, host: &str) -> Option<Key> {
    let name = host.strip_suffix(".svc.cluster.local")?.strip_suffix(namespace)?.strip_suffix('.')?;
    Some((namespace.to_owned(), name.to_owned()))
}

/// Every (namespace, name) whose FQDN is `host`.
fn services_of_host(host: &str) -> impl Iterator<Item = Key> + '_ {
    let short = host.strip_suffix(".svc.cluster.local").unwrap_or_default();
    short.match_indices('.').map(move |(at, _)| (short[at + 1..].to_owned(), short[..at].to_owned()))
}

impl Index {
    /// Everything is to be evaluated again, the indexes rebuilt first.
    pub fn relisted(&mut self) {
        self.stale = true;
    }

    pub fn service_changed(&mut self, key: &Key) {
        self.dirty.insert(key.clone());
    }

    /// A pod changed: the services whose slices list it.
    pub fn pod_changed(&mut self, key: &Key, slices: &BTreeMap<Key, EndpointSlice>) {
        let (ns, _) = key;
        for name in self.slices_with_pod.get(key).into_iter().flatten() {
            if let Some(sl) = slices.get(&(ns.clone(), name.clone())) {
                self.dirty.insert((ns.clone(), sl.service.clone()));
            }
        }
    }

    pub fn slice_removed(&mut self, (ns, name): &Key, sl: &EndpointSlice) {
        let service = (ns.clone(), sl.service.clone());
        if let Some(names) = self.slices_of.get_mut(&service) {
            names.remove(name);
            if names.is_empty() {
                self.slices_of.remove(&service);
            }
        }
        for pod in sl.endpoints.iter().filter_map(|e| e.pod.clone()) {
            let pod = (ns.clone(), pod);
            if let Some(names) = self.slices_with_pod.get_mut(&pod) {
                names.retain(|n| n != name);
                if names.is_empty() {
                    self.slices_with_pod.remove(&pod);
                }
            }
        }
        self.dirty.insert(service);
    }

    pub fn slice_added(&mut self, (ns, name): &Key, sl: &EndpointSlice) {
        let service = (ns.clone(), sl.service.clone());
        self.slices_of.entry(service.clone()).or_default().insert(name.clone());
        for pod in sl.endpoints.iter().filter_map(|e| e.pod.clone()) {
            let names = self.slices_with_pod.entry((ns.clone(), pod)).or_default();
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        self.dirty.insert(service);
    }

    pub fn rule_removed(&mut self, (ns, name): &Key, r: &RuleObj) {
        let host = (ns.clone(), r.host.clone());
        if let Some(names) = self.rules_for.get_mut(&host) {
            names.remove(name);
            if names.is_empty() {
                self.rules_for.remove(&host);
            }
        }
        self.dirty.extend(service_of_rule(ns, &r.host));
    }

    pub fn rule_added(&mut self, (ns, name): &Key, r: &RuleObj) {
        self.rules_for.entry((ns.clone(), r.host.clone())).or_default().insert(name.clone());
        self.dirty.extend(service_of_rule(ns, &r.host));
    }

    pub fn route_removed(&mut self, r: &RouteObj) {
        for dest in &r.dests {
            if let Some(n) = self.routes.get_mut(dest) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.routes.remove(dest);
                }
            }
            self.dirty.extend(services_of_host(&dest.0));
        }
    }

    pub fn route_added(&mut self, r: &RouteObj) {
        for dest in &r.dests {
            *self.routes.entry(dest.clone()).or_default() += 1;
            self.dirty.extend(services_of_host(&dest.0));
        }
    }

    pub fn filter_removed(&mut self, f: &FilterObj) {
        for vhost in &f.vhosts {
            if let Some(n) = self.filtered.get_mut(vhost) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.filtered.remove(vhost);
                }
            }
            self.dirty.extend(services_of_host(&vhost.0));
        }
    }

    pub fn filter_added(&mut self, f: &FilterObj) {
        for vhost in &f.vhosts {
            *self.filtered.entry(vhost.clone()).or_default() += 1;
            self.dirty.extend(services_of_host(&vhost.0));
        }
    }

    /// The indexes from the mirrors as they are.
    fn reindex(&mut self, m: &Mirrors<'_>) {
        self.slices_of.clear();
        self.slices_with_pod.clear();
        self.rules_for.clear();
        self.routes.clear();
        self.filtered.clear();
        for f in m.filters.values() {
            self.filter_added(f);
        }
        for (k, sl) in m.slices {
            self.slice_added(k, sl);
        }
        for (k, r) in m.rules {
            self.rule_added(k, r);
        }
        for r in m.routes.values() {
            self.route_added(r);
        }
        self.dirty.clear();
    }

    /// Evaluates what changed since the last call (everything on the first
    /// call and after a re-list); `since` moves on as `to_table` moves it.
    /// Whether `since` changed.
    pub fn rebuild(&mut self, m: &Mirrors<'_>, base: &str, clock: &Clock<'_>, since: &mut Since) -> bool {
        if self.stale {
            self.reindex(m);
            self.stale = false;
            self.changed = None;
            self.targets_changed = None;
            self.entries.clear();
            self.lane_groups.clear();
            self.targets.clear();
            self.unsettled.clear();
            let mut holding = Since::new();
            for key in m.services.keys() {
                self.evaluate(key, m, base, clock, since, &mut holding);
            }
            let changed = *since != holding;
            *since = holding;
            return changed;
        }
        let mut since_changed = false;
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.extend(self.unsettled.iter().cloned());
        for key in &dirty {
            let prefix = format!("{}/", service_key(&key.0, &key.1));
            let before: Vec<(String, u64)> = since
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            let mut holding = Since::new();
            let table_key = service_key(&key.0, &key.1);
            let old = self.entries.remove(&table_key);
            if let Some(old) = &old {
                for g in old.clusters.keys() {
                    if let Some(n) = self.lane_groups.get_mut(g) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.lane_groups.remove(g);
                        }
                    }
                }
            }
            let old_target = self.targets.remove(key);
            self.unsettled.remove(key);
            self.evaluate(key, m, base, clock, since, &mut holding);
            if old.as_ref() != self.entries.get(&table_key) {
                if let Some(changed) = self.changed.as_mut() {
                    changed.insert(table_key);
                }
            }
            if old_target.as_ref() != self.targets.get(key) {
                if let Some(changed) = self.targets_changed.as_mut() {
                    changed.insert(key.clone());
                }
            }
            since_changed |=
                before.len() != holding.len() || before.iter().zip(&holding).any(|(a, b)| (&a.0, &a.1) != b);
            for (k, _) in before {
                since.remove(&k);
            }
            since.extend(holding);
        }
        since_changed
    }

    /// Evaluates one service against `since` (the previous record), adding
    /// its holding lanes to `holding`.
    fn evaluate(
        &mut self,
        key: &Key,
        m: &Mirrors<'_>,
        base: &str,
        clock: &Clock<'_>,
        since: &Since,
        holding: &mut Since,
    ) {
        let Some(s) = m.services.get(key) else { return };
        let ns = &key.0;
        let slices = self.slices_of.get(key).into_iter().flatten();
        let endpoints =
            slices.filter_map(|name| m.slices.get(&(ns.clone(), name.clone()))).flat_map(|sl| &sl.endpoints);
        let lanes = lanes_of(endpoints, |pod| m.pods.get(&(ns.clone(), pod.to_owned())).map(|p| &p.labels));
        let rules = self.rules_for.get(&(ns.clone(), fqdn(ns, &s.name)));
        let subset = |g: &str| {
            rules.into_iter().flatten().find_map(|name| m.rules.get(&(ns.clone(), name.clone()))?.subsets.get(g))
        };
        // Cluster-header mode: a lane is reached through its service's
        // EnvoyFilter, on every port (base goes by the VirtualService).
        let filtered = |host: &str| s.ports.iter().all(|p| self.filtered.contains_key(&(host.to_owned(), *p)));
        let routed = |host: &str, g: &str| {
            (!m.routes_required || self.routes.contains_key(&(host.to_owned(), g.to_owned())))
                && (!m.filters_required || g == base || filtered(host))
        };
        let e = evaluate(s, &lanes, subset, routed, base, clock, since);
        holding.extend(e.holding);
        if e.unsettled {
            self.unsettled.insert(key.clone());
        }
        if let Some((k, service)) = e.entry {
            for g in service.clusters.keys() {
                *self.lane_groups.entry(g.clone()).or_default() += 1;
            }
            self.entries.insert(k, service);
        }
        if let Some(t) = e.target {
            self.targets.insert(key.clone(), t);
        }
    }

    /// The table keys of the services changed since the last call
    /// (`None`: maybe every one).
    pub fn take_changed(&mut self) -> Option<BTreeSet<String>> {
        self.changed.replace(BTreeSet::new())
    }

    /// The services whose target changed since the last call (`None`:
    /// maybe every one).
    pub fn take_targets_changed(&mut self) -> Option<BTreeSet<Key>> {
        self.targets_changed.replace(BTreeSet::new())
    }

    /// One service's target, if it has one.
    pub fn target(&self, key: &Key) -> Option<&Target> {
        self.targets.get(key)
    }

    /// Whether some lane holds but has not settled yet.
    pub fn has_unsettled(&self) -> bool {
        !self.unsettled.is_empty()
    }

    /// The groups some entry has a lane of.
    pub fn lane_groups(&self) -> impl Iterator<Item = &str> {
        self.lane_groups.keys().map(String::as_str)
    }

    /// The table's services now.
    pub fn services(&self) -> &BTreeMap<String, RawService> {
        &self.entries
    }

    /// What the Istio objects must cover now, in (namespace, name) order.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_map_back_to_their_services() {
        let k = |ns: &str, n: &str| (ns.to_owned(), n.to_owned());
        assert_eq!(service_of_rule("bookinfo", "reviews.bookinfo.svc.cluster.local"), Some(k("bookinfo", "reviews")));
        assert_eq!(service_of_rule("other", "reviews.bookinfo.svc.cluster.local"), None, "another namespace's host");
        assert_eq!(service_of_rule("bookinfo", "reviews.xbookinfo.svc.cluster.local"), None);
        assert_eq!(service_of_rule("bookinfo", "example.com"), None);
        let all: Vec<Key> = services_of_host("reviews.bookinfo.svc.cluster.local").collect();
        assert_eq!(all, [k("bookinfo", "reviews")]);
        assert_eq!(services_of_host("example.com").count(), 0);
        for (ns, name) in [("bookinfo", "reviews"), ("a", "b")] {
            assert!(services_of_host(&fqdn(ns, name)).any(|s| s == k(ns, name)));
            assert_eq!(service_of_rule(ns, &fqdn(ns, name)), Some(k(ns, name)));
        }
    }
}
