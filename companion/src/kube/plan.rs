//! What the Istio reconciler (`kube::reconcile`) is to write, pure: the
//! wanted objects, grouped per service, against the Istio objects as the
//! watches observe them. The reconciler keeps both as a `View`, changed
//! per event (`Changes`: the services whose wanted objects changed, the
//! objects observed anew), and plans only what a change touched
//! (`Touched`): an event about one service costs that service, not the
//! cluster's 10k. A whole pass (a resync, a new term) touches everything.
//!
//! - Subsets before the routes that name them, out after them: a
//!   DestinationRule is applied only when the observed VirtualService names
//!   no subset it would drop, a VirtualService only when the observed
//!   DestinationRule has every subset it names.
//! - Anyone else's object for the same host (or under the name the leader
//!   would use) is a conflict, and that service's objects are left alone.
//! - An owned object no service wants is deleted (its DestinationRule once
//!   no owned VirtualService of its name is left).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

/// (kind, namespace, name).
pub type Key = (String, String, String);

/// The service whose objects are planned together: (namespace, name).
pub type ServiceKey = (String, String);

/// An Istio object that exists, as the watches see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// Labelled managed-by isogroup and with this installation's id.
    pub owned: bool,
    /// The hosts it configures (a DestinationRule's host, a VirtualService's
    /// hosts), as FQDNs.
    pub hosts: Vec<String>,
    /// An owned object as observed (its `metadata` and `spec`).
    pub observed: Option<Arc<Value>>,
}

impl Existing {
    #[cfg(test)]
    pub fn key(&self) -> Key {
        (self.kind.to_owned(), self.namespace.clone(), self.name.clone())
    }
}

pub fn key_of(o: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&o["kind"]), s(&o["metadata"]["namespace"]), s(&o["metadata"]["name"]))
}

/// What to do now.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// In order: DestinationRules first.
    pub apply: Vec<Value>,
    /// In order: DestinationRules last.
    pub delete: Vec<(Key, Option<Arc<Value>>)>,
    /// One line per service left alone, naming the other object.
    pub conflicts: Vec<String>,
    /// Writes that wait for another object to be observed first.
    pub waiting: usize,
}

/// Whether `observed` has every field `wanted` sets, with its value (what a
/// forced apply of `wanted` would leave unchanged). Lists compare element
/// by element (Istio's lists are atomic: an apply replaces them whole).
pub fn sets(wanted: &Value, observed: &Value) -> bool {
    match (wanted, observed) {
        (Value::Object(w), Value::Object(o)) => w.iter().all(|(k, v)| o.get(k).is_some_and(|ov| sets(v, ov))),
        (Value::Array(w), Value::Array(o)) => w.len() == o.len() && w.iter().zip(o).all(|(a, b)| sets(a, b)),
        _ => wanted == observed,
    }
}

/// Whether the observed object is as wanted: labels and spec.
fn as_wanted(wanted: &Value, observed: &Value) -> bool {
    sets(&wanted["metadata"]["labels"], &observed["metadata"]["labels"]) && sets(&wanted["spec"], &observed["spec"])
}

fn subsets(dr: &Value) -> BTreeSet<&str> {
    dr["spec"]["subsets"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect()
}

fn routed(vs: &Value) -> BTreeSet<&str> {
    let http = vs["spec"]["http"].as_array().into_iter().flatten();
    http.flat_map(|h| h["route"].as_array().into_iter().flatten())
        .filter_map(|r| r["destination"]["subset"].as_str())
        .collect()
}

pub fn resource_version(o: &Value) -> Option<&str> {
    o["metadata"]["resourceVersion"].as_str()
}

/// The hosts a wanted object configures (what another's object for the
/// same host conflicts with).
fn hosts_of(kind: &str, o: &Value) -> Vec<String> {
    let hosts: Vec<&str> = match kind {
        "DestinationRule" => o["spec"]["host"].as_str().into_iter().collect(),
        "VirtualService" => o["spec"]["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    hosts.into_iter().map(str::to_owned).collect()
}

/// A write made and not yet observed: the observed resourceVersion it was
/// made against, and what it wrote (`None`: a delete).
pub type InFlight = BTreeMap<Key, (Option<String>, Option<Value>)>;

/// What changed since the reconciler last looked.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// These replace everything held (a new term, a re-list, a wildcard
    /// DestinationRule's policy changed): every service is planned.
    pub whole: bool,
    /// Services' objects, wanted anew (`None`: none wanted any more).
    pub wanted: BTreeMap<ServiceKey, Option<Vec<Value>>>,
    /// Istio objects observed anew (`None`: gone).
    pub existing: BTreeMap<Key, Option<Existing>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.whole && self.wanted.is_empty() && self.existing.is_empty()
    }

    /// `later` on top of these (not taken yet: one pass takes both).
    pub fn merge(&mut self, later: Changes) {
        if later.whole {
            *self = later;
            return;
        }
        self.wanted.extend(later.wanted);
        self.existing.extend(later.existing);
    }
}

/// What a change touched: the services to plan again, and the objects
/// whose deletion is to be decided again (each also plans the service
/// that wants it, if one does).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Touched {
    pub services: BTreeSet<ServiceKey>,
    pub objects: BTreeSet<Key>,
}

/// The wanted objects and the observed ones, as the reconciler holds them.
#[derive(Debug, Default)]
pub struct View {
    /// Per service, its objects (DestinationRule, VirtualService and maybe
    /// an EnvoyFilter), with their keys.
    wanted: BTreeMap<ServiceKey, Vec<(Key, Value)>>,
    /// Each wanted object's service.
    owner: BTreeMap<Key, ServiceKey>,
    /// (kind, host) → the services wanting an object of that kind for it.
    wanted_hosts: BTreeMap<(String, String), BTreeSet<ServiceKey>>,
    /// Every Istio object observed, owned or not.
    existing: BTreeMap<Key, Existing>,
    /// (kind, host) → the objects not owned that configure it (namespace,
    /// name: the first is the one a conflict names).
    foreign_hosts: BTreeMap<(String, String), BTreeSet<(String, String)>>,
}

impl View {
    /// Takes `changes` in; what they touched.
    pub fn apply(&mut self, changes: Changes) -> Touched {
        let whole = changes.whole;
        if whole {
            *self = View::default();
        }
        let mut touched = Touched::default();
        for (service, objects) in changes.wanted {
            if let Some(old) = self.wanted.remove(&service) {
                for (key, o) in &old {
                    self.owner.remove(key);
                    for h in hosts_of(&key.0, o) {
                        let k = (key.0.clone(), h);
                        if let Some(set) = self.wanted_hosts.get_mut(&k) {
                            set.remove(&service);
                            if set.is_empty() {
                                self.wanted_hosts.remove(&k);
                            }
                        }
                    }
                    touched.objects.insert(key.clone());
                }
            }
            if let Some(objects) = objects {
                let keyed: Vec<(Key, Value)> = objects.into_iter().map(|o| (key_of(&o), o)).collect();
                for (key, o) in &keyed {
                    self.owner.insert(key.clone(), service.clone());
                    for h in hosts_of(&key.0, o) {
                        self.wanted_hosts.entry((key.0.clone(), h)).or_default().insert(service.clone());
                    }
                }
                self.wanted.insert(service.clone(), keyed);
            }
            touched.services.insert(service);
        }
        for (key, seen) in changes.existing {
            let old = self.existing.remove(&key);
            // Another's object: the services it conflicts with by host,
            // before and after.
            for e in old.iter().chain(seen.iter()).filter(|e| !e.owned) {
                for h in &e.hosts {
                    if let Some(services) = self.wanted_hosts.get(&(key.0.clone(), h.clone())) {
                        touched.services.extend(services.iter().cloned());
                    }
                }
            }
            if let Some(old) = old.filter(|e| !e.owned) {
                for h in &old.hosts {
                    let k = (key.0.clone(), h.clone());
                    if let Some(set) = self.foreign_hosts.get_mut(&k) {
                        set.remove(&(key.1.clone(), key.2.clone()));
                        if set.is_empty() {
                            self.foreign_hosts.remove(&k);
                        }
                    }
                }
            }
            if let Some(seen) = seen {
                if !seen.owned {
                    for h in &seen.hosts {
                        let k = (key.0.clone(), h.clone());
                        self.foreign_hosts.entry(k).or_default().insert((key.1.clone(), key.2.clone()));
                    }
                }
                self.existing.insert(key.clone(), seen);
            }
            // A route gone may let its DestinationRule go.
            if key.0 == "VirtualService" {
                touched.objects.insert(("DestinationRule".to_owned(), key.1.clone(), key.2.clone()));
            }
            touched.objects.insert(key);
        }
        if whole {
            touched = self.everything();
        }
        touched
    }

    /// Every service and every object: a whole pass.
    pub fn everything(&self) -> Touched {
        Touched { services: self.wanted.keys().cloned().collect(), objects: self.existing.keys().cloned().collect() }
    }

    /// An owned object as observed.
    pub fn observed(&self, key: &Key) -> Option<&Arc<Value>> {
        self.existing.get(key).filter(|e| e.owned).and_then(|e| e.observed.as_ref())
    }

    /// The wanted objects of `services`, by key.
    pub fn wanted_of<'a>(
        &'a self,
        services: impl IntoIterator<Item = &'a ServiceKey> + 'a,
    ) -> impl Iterator<Item = &'a (Key, Value)> + 'a {
        services.into_iter().filter_map(|s| self.wanted.get(s)).flatten()
    }

    /// Whether some service wants the object.
    pub fn is_wanted(&self, key: &Key) -> bool {
        self.owner.contains_key(key)
    }

    /// The services `touched` plans: those named and those wanting an
    /// object named.
    pub fn services_of<'a>(&'a self, touched: &'a Touched) -> BTreeSet<&'a ServiceKey> {
        let mut services: BTreeSet<&ServiceKey> = touched.services.iter().collect();
        services.extend(touched.objects.iter().filter_map(|k| self.owner.get(k)));
        services
    }

    /// The object not owned that a wanted object of kind `kind` under
    /// (namespace, name) with `hosts` meets, if any: the first by
    /// (namespace, name) of those under the same name or for a same host.
    fn foreign(&self, key: &Key, hosts: &[String]) -> Option<&Existing> {
        let by_name = self.existing.get(key).filter(|e| !e.owned).map(|_| (&key.1, &key.2));
        let by_host = hosts
            .iter()
            .filter_map(|h| self.foreign_hosts.get(&(key.0.clone(), h.clone()))?.first())
            .map(|(ns, name)| (ns, name))
            .min();
        let (ns, name) = by_name.into_iter().chain(by_host).min()?;
        self.existing.get(&(key.0.clone(), ns.clone(), name.clone()))
    }

    /// The plan for what `touched` touched, and each of its services'
    /// conflict (`None`: none, or no longer wanted).
    pub fn plan(&self, touched: &Touched, in_flight: &InFlight) -> (Plan, Vec<(ServiceKey, Option<String>)>) {
        let mut plan = Plan::default();
        let mut conflicts = vec![];
        let seen = |k: &Key| self.observed(k).and_then(|o| resource_version(o)).map(str::to_owned);
        let sent = |k: &Key, what: Option<&Value>| {
            in_flight.get(k).is_some_and(|(rv, v)| *rv == seen(k) && v.as_ref() == what)
        };
        let mut later = vec![];
        for service in self.services_of(touched) {
            let Some(group) = self.wanted.get(service) else {
                conflicts.push((service.clone(), None));
                continue;
            };
            let mut conflict = None;
            for (key, o) in group {
                let hosts = hosts_of(&key.0, o);
                if let Some(e) = self.foreign(key, &hosts) {
                    conflict = Some(format!(
                        "{} {}/{} (not owned by this installation) configures {}: isogroup leaves {}/{} alone",
                        e.kind,
                        e.namespace,
                        e.name,
                        if e.name == key.2 { "the same name".to_owned() } else { format!("host {}", hosts.join(",")) },
                        key.1,
                        key.2
                    ));
                    break;
                }
            }
            if let Some(c) = conflict {
                plan.conflicts.push(c.clone());
                conflicts.push((service.clone(), Some(c)));
                continue;
            }
            conflicts.push((service.clone(), None));
            let find = |kind: &str| group.iter().find(|(k, _)| k.0 == kind).map(|(k, _)| k);
            let (rule, route) = (find("DestinationRule"), find("VirtualService"));
            for (key, o) in group {
                let current = self.observed(key);
                if current.is_some_and(|c| as_wanted(o, c)) || sent(key, Some(o)) {
                    continue;
                }
                // Subsets before the routes that name them, out after them.
                let ready = match key.0.as_str() {
                    "DestinationRule" => {
                        let now_routed = route.and_then(|k| self.observed(k)).map(|vs| routed(vs));
                        let keeps = subsets(o);
                        now_routed.is_none_or(|r| r.is_subset(&keeps))
                    }
                    "VirtualService" => {
                        let have = rule.and_then(|k| self.observed(k)).map(|dr| subsets(dr));
                        have.is_some_and(|have| routed(o).is_subset(&have))
                    }
                    _ => true,
                };
                if !ready {
                    plan.waiting += 1;
                } else if key.0 == "DestinationRule" {
                    plan.apply.push(o.clone());
                } else {
                    later.push(o.clone());
                }
            }
        }
        plan.apply.extend(later);
        // Owned objects no service wants: a DestinationRule goes once no
        // route of ours under its name is left.
        let mut rules = vec![];
        for k in &touched.objects {
            let Some(o) = self.observed(k) else { continue };
            if self.is_wanted(k) || sent(k, None) {
                continue;
            }
            if k.0 != "DestinationRule" {
                plan.delete.push((k.clone(), Some(Arc::clone(o))));
            } else if self.observed(&("VirtualService".to_owned(), k.1.clone(), k.2.clone())).is_some() {
                plan.waiting += 1;
            } else {
                rules.push((k.clone(), Some(Arc::clone(o))));
            }
        }
        plan.delete.extend(rules);
        (plan, conflicts)
    }
}

/// The whole plan: `desired`, every service's objects, grouped per service
/// (a conflict leaves a whole group alone); `existing`, the Istio objects
/// observed; `in_flight`, writes not yet observed (not repeated meanwhile).
#[cfg(test)]
pub fn plan(desired: &[Vec<Value>], existing: &[Existing], in_flight: &InFlight) -> Plan {
    let service = |group: &Vec<Value>| {
        let (_, ns, name) = group.first().map(key_of).unwrap_or_default();
        (ns, name)
    };
    let changes = Changes {
        whole: true,
        wanted: desired.iter().map(|g| (service(g), Some(g.clone()))).collect(),
        existing: existing.iter().map(|e| (e.key(), Some(e.clone()))).collect(),
    };
    let mut view = View::default();
    let touched = view.apply(changes);
    view.plan(&touched, in_flight).0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    const H: &str = "reviews.bookinfo.svc.cluster.local";

    fn dr(subsets: &[&str]) -> Value {
        let subsets: Vec<Value> = subsets.iter().map(|s| json!({ "name": s, "labels": { "g": s } })).collect();
        json!({ "kind": "DestinationRule", "metadata": { "namespace": "bookinfo", "name": "isogroup-reviews", "labels": { "own": "yes" } },
                "spec": { "host": H, "subsets": subsets } })
    }

    fn vs(subsets: &[&str]) -> Value {
        let http: Vec<Value> =
            subsets.iter().map(|s| json!({ "route": [{ "destination": { "host": H, "subset": s } }] })).collect();
        json!({ "kind": "VirtualService", "metadata": { "namespace": "bookinfo", "name": "isogroup-reviews", "labels": { "own": "yes" } },
                "spec": { "hosts": [H], "http": http } })
    }

    /// `o` as observed: owned, with a resourceVersion (and what the API
    /// server or another manager adds).
    fn seen(o: &Value, rv: &str) -> Existing {
        let mut obs = o.clone();
        obs["metadata"]["resourceVersion"] = json!(rv);
        obs["metadata"]["labels"]["added"] = json!("by someone");
        let (kind, ns, name) = key_of(o);
        let kind = if kind == "DestinationRule" { "DestinationRule" } else { "VirtualService" };
        Existing { kind, namespace: ns, name, owned: true, hosts: vec![H.into()], observed: Some(Arc::new(obs)) }
    }

    fn foreign(kind: &'static str, ns: &str, name: &str, host: &str) -> Existing {
        Existing {
            kind,
            namespace: ns.into(),
            name: name.into(),
            owned: false,
            hosts: vec![host.into()],
            observed: None,
        }
    }

    fn kinds(p: &Plan) -> Vec<String> {
        p.apply.iter().map(|o| o["kind"].as_str().unwrap().to_owned()).collect()
    }

    #[test]
    fn drift_is_judged_on_the_fields_wanted() {
        let want = json!({ "a": 1, "b": { "c": [1, { "d": 2 }] } });
        assert!(sets(&want, &json!({ "a": 1, "x": 9, "b": { "c": [1, { "d": 2, "e": 3 }], "y": 0 } })));
        assert!(!sets(&want, &json!({ "a": 2, "b": { "c": [1, { "d": 2 }] } })), "a value changed");
        assert!(!sets(&want, &json!({ "a": 1, "b": { "c": [1] } })), "a list shortened");
        assert!(!sets(&want, &json!({ "a": 1 })), "a field removed");
    }

    #[test]
    fn plans_follow_what_is_observed() {
        let group = vec![dr(&["base", "f1"]), vs(&["f1", "base"])];
        let none = InFlight::new();
        // nothing observed: the subsets first, the route waits for them
        let p = plan(std::slice::from_ref(&group), &[], &none);
        assert_eq!((kinds(&p), p.waiting), (vec!["DestinationRule".to_owned()], 1));
        // the subsets observed: the route
        let p = plan(std::slice::from_ref(&group), &[seen(&group[0], "5")], &none);
        assert_eq!(kinds(&p), ["VirtualService"]);
        // both observed as wanted (plus fields others added): nothing to do
        let both = [seen(&group[0], "5"), seen(&group[1], "6")];
        assert_eq!(plan(std::slice::from_ref(&group), &both, &none), Plan::default());
        // a field the leader sets edited: put back
        let mut edited = group[0].clone();
        edited["spec"]["subsets"][1]["labels"]["g"] = json!("other");
        let p = plan(std::slice::from_ref(&group), &[seen(&edited, "7"), both[1].clone()], &none);
        assert_eq!(kinds(&p), ["DestinationRule"]);
        // deleted: put back (the route still names only subsets it keeps)
        let p = plan(std::slice::from_ref(&group), &both[1..], &none);
        assert_eq!(kinds(&p), ["DestinationRule"]);
        // a write sent and not observed yet is not repeated; once the
        // object is observed at another version, it counts again
        let sent: InFlight = [(key_of(&group[0]), (None, Some(group[0].clone())))].into();
        assert_eq!(plan(std::slice::from_ref(&group), &both[1..], &sent).apply, Vec::<Value>::new());
        let p = plan(std::slice::from_ref(&group), &[seen(&edited, "8"), both[1].clone()], &sent);
        assert_eq!(kinds(&p), ["DestinationRule"]);
        // a lane leaving: the route goes first, the subset once it is gone
        let fewer = vec![dr(&["base"]), vs(&["base"])];
        let p = plan(std::slice::from_ref(&fewer), &both, &none);
        assert_eq!((kinds(&p), p.waiting), (vec!["VirtualService".to_owned()], 1));
        let routed_base = [both[0].clone(), seen(&fewer[1], "9")];
        assert_eq!(kinds(&plan(std::slice::from_ref(&fewer), &routed_base, &none)), ["DestinationRule"]);
        // the service gone: its route deleted first, its rule after
        let p = plan(&[], &both, &none);
        assert_eq!(p.delete.iter().map(|(k, _)| k.0.as_str()).collect::<Vec<_>>(), ["VirtualService"]);
        let p = plan(&[], &both[..1], &none);
        assert_eq!(p.delete.iter().map(|(k, _)| k.0.as_str()).collect::<Vec<_>>(), ["DestinationRule"]);
        assert_eq!(p.delete[0].1.as_ref().unwrap()["metadata"]["resourceVersion"], "5", "deleted as observed");
    }

    #[test]
    fn objects_not_owned_are_conflicts_never_written() {
        let group = vec![dr(&["base"]), vs(&["base"])];
        let none = InFlight::new();
        let theirs = foreign("DestinationRule", "bookinfo", "reviews", H);
        let p = plan(std::slice::from_ref(&group), std::slice::from_ref(&theirs), &none);
        assert!(p.apply.is_empty() && p.delete.is_empty());
        assert!(p.conflicts[0]
            .contains("DestinationRule bookinfo/reviews (not owned by this installation) configures host"));
        let same_name = foreign("VirtualService", "bookinfo", "isogroup-reviews", "elsewhere");
        assert!(plan(std::slice::from_ref(&group), &[same_name], &none).conflicts[0].contains("the same name"));
        // not owned, not wanted: never deleted
        let p = plan(&[], &[theirs], &none);
        assert!(p.delete.is_empty());
        // a conflict does not delete what we made before for that service
        let both = [seen(&group[0], "5"), seen(&group[1], "6"), foreign("DestinationRule", "bookinfo", "r", H)];
        assert!(plan(&[group], &both, &none).delete.is_empty());
    }
}

#[cfg(test)]
mod incremental {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn service(i: usize) -> ServiceKey {
        ("ns".to_owned(), format!("svc-{i}"))
    }

    fn host(i: usize) -> String {
        format!("svc-{i}.ns.svc.cluster.local")
    }

    /// Service `i`'s DestinationRule and VirtualService with these groups.
    fn objects(i: usize, groups: &[&str]) -> Vec<Value> {
        let name = format!("isogroup-svc-{i}");
        let subsets: Vec<Value> = groups.iter().map(|g| json!({ "name": g, "labels": { "g": g } })).collect();
        let http: Vec<Value> =
            groups.iter().map(|g| json!({ "route": [{ "destination": { "host": host(i), "subset": g } }] })).collect();
        let meta = json!({ "namespace": "ns", "name": name, "labels": { "own": "yes" } });
        vec![
            json!({ "kind": "DestinationRule", "metadata": meta, "spec": { "host": host(i), "subsets": subsets } }),
            json!({ "kind": "VirtualService", "metadata": meta, "spec": { "hosts": [host(i)], "http": http } }),
        ]
    }

    fn seen(o: &Value, rv: usize, owned: bool) -> (Key, Option<Existing>) {
        let mut obs = o.clone();
        obs["metadata"]["resourceVersion"] = json!(rv.to_string());
        let (kind, namespace, name) = key_of(o);
        let kind = if kind == "DestinationRule" { "DestinationRule" } else { "VirtualService" };
        let hosts = if kind == "DestinationRule" {
            vec![o["spec"]["host"].as_str().unwrap().to_owned()]
        } else {
            vec![o["spec"]["hosts"][0].as_str().unwrap().to_owned()]
        };
        let e = Existing { kind, namespace, name, owned, hosts, observed: owned.then(|| Arc::new(obs)) };
        (e.key(), Some(e))
    }

    const N: usize = 50;

    /// N services, every object observed as wanted.
    fn steady() -> View {
        let mut view = View::default();
        let wanted = (0..N).map(|i| (service(i), Some(objects(i, &["base", "f1"])))).collect();
        let existing = (0..N).flat_map(|i| objects(i, &["base", "f1"])).map(|o| seen(&o, 1, true)).collect();
        let touched = view.apply(Changes { whole: true, wanted, existing });
        let (plan, checked) = view.plan(&touched, &InFlight::new());
        assert_eq!((plan, checked.len()), (Plan::default(), N), "a steady state: nothing to do, every service planned");
        view
    }

    fn planned(checked: &[(ServiceKey, Option<String>)]) -> Vec<ServiceKey> {
        checked.iter().map(|(s, _)| s.clone()).collect()
    }

    #[test]
    fn a_change_to_one_service_plans_that_service_only() {
        let mut view = steady();
        let none = InFlight::new();
        // service 7 gets a lane: its subsets first, nothing else planned
        let wanted = objects(7, &["base", "f1", "f2"]);
        let touched = view.apply(Changes { wanted: [(service(7), Some(wanted.clone()))].into(), ..Changes::default() });
        let (plan, checked) = view.plan(&touched, &none);
        assert_eq!(planned(&checked), [service(7)]);
        assert_eq!((plan.apply, plan.waiting), (vec![wanted[0].clone()], 1));
        // its rule observed: that service again, its route now
        let (k, e) = seen(&wanted[0], 2, true);
        let touched = view.apply(Changes { existing: [(k, e)].into(), ..Changes::default() });
        let (plan, checked) = view.plan(&touched, &none);
        assert_eq!(planned(&checked), [service(7)]);
        assert_eq!(plan.apply, vec![wanted[1].clone()]);
        // another's DestinationRule for service 9's host: service 9 only, a conflict
        let theirs = json!({ "kind": "DestinationRule", "metadata": { "namespace": "other", "name": "theirs" },
                              "spec": { "host": host(9) } });
        let (k, e) = seen(&theirs, 3, false);
        let touched = view.apply(Changes { existing: [(k.clone(), e)].into(), ..Changes::default() });
        let (plan, checked) = view.plan(&touched, &none);
        assert_eq!(planned(&checked), [service(9)]);
        assert!(checked[0].1.as_ref().unwrap().contains("DestinationRule other/theirs"), "{checked:?}");
        assert!(plan.apply.is_empty() && plan.delete.is_empty());
        // it goes: service 9 planned again, no conflict
        let touched = view.apply(Changes { existing: [(k, None)].into(), ..Changes::default() });
        let (_, checked) = view.plan(&touched, &none);
        assert_eq!(checked, [(service(9), None)]);
        // service 3 gone: its route deleted, no service planned
        let touched = view.apply(Changes { wanted: [(service(3), None)].into(), ..Changes::default() });
        let (plan, checked) = view.plan(&touched, &none);
        assert_eq!(checked, [(service(3), None)]);
        let deleted: Vec<&str> = plan.delete.iter().map(|(k, _)| k.0.as_str()).collect();
        assert_eq!((deleted, plan.waiting), (vec!["VirtualService"], 1), "the route first, its rule waits");
        // the route observed gone: its rule now
        let route = key_of(&objects(3, &[])[1]);
        let touched = view.apply(Changes { existing: [(route, None)].into(), ..Changes::default() });
        let (plan, checked) = view.plan(&touched, &none);
        assert!(checked.is_empty());
        let deleted: Vec<&str> = plan.delete.iter().map(|(k, _)| k.0.as_str()).collect();
        assert_eq!(deleted, ["DestinationRule"]);
    }

    /// xorshift64*.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    #[test]
    fn a_view_kept_per_change_plans_as_one_made_whole() {
        let groups: [&[&str]; 3] = [&["base"], &["base", "f1"], &["base", "f1", "f2"]];
        for seed in 1..=20u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut view = View::default();
            let mut wanted: BTreeMap<ServiceKey, Vec<Value>> = BTreeMap::new();
            let mut existing: BTreeMap<Key, Existing> = BTreeMap::new();
            for step in 0..200 {
                let i = (next(&mut rng) % 8) as usize;
                let mut changes = Changes::default();
                match next(&mut rng) % 6 {
                    0 => {
                        changes.wanted.insert(service(i), None);
                    }
                    1 | 2 => {
                        let g = groups[(next(&mut rng) % 3) as usize];
                        changes.wanted.insert(service(i), Some(objects(i, g)));
                    }
                    3 => {
                        // observed: ours as some set of groups, or gone
                        let g = groups[(next(&mut rng) % 3) as usize];
                        let o = &objects(i, g)[(next(&mut rng) % 2) as usize];
                        let (k, e) = seen(o, step, true);
                        changes.existing.insert(k, e.filter(|_| !next(&mut rng).is_multiple_of(4)));
                    }
                    _ => {
                        // another's object, for a host or under our name
                        let j = (next(&mut rng) % 8) as usize;
                        let name = if next(&mut rng).is_multiple_of(2) {
                            format!("x{j}")
                        } else {
                            format!("isogroup-svc-{i}")
                        };
                        let kind = if next(&mut rng).is_multiple_of(2) { "DestinationRule" } else { "VirtualService" };
                        let o = json!({ "kind": kind, "metadata": { "namespace": "ns", "name": name },
                                        "spec": { "host": host(j), "hosts": [host(j)] } });
                        let (k, e) = seen(&o, step, false);
                        let gone = next(&mut rng).is_multiple_of(3) || existing.get(&k).is_some_and(|e| e.owned);
                        changes.existing.insert(k, e.filter(|_| !gone));
                    }
                }
                for (s, o) in &changes.wanted {
                    match o {
                        Some(o) => wanted.insert(s.clone(), o.clone()),
                        None => wanted.remove(s),
                    };
                }
                for (k, e) in &changes.existing {
                    match e {
                        Some(e) => existing.insert(k.clone(), e.clone()),
                        None => existing.remove(k),
                    };
                }
                view.apply(changes);
                let desired: Vec<Vec<Value>> = wanted.values().cloned().collect();
                let all: Vec<Existing> = existing.values().cloned().collect();
                let whole = plan(&desired, &all, &InFlight::new());
                let (kept, _) = view.plan(&view.everything(), &InFlight::new());
                assert_eq!(kept, whole, "seed {seed}, step {step}");
            }
        }
    }
}
