//! Kubernetes source, the pure half: a snapshot of the cluster (services,
//! pods labelled `isogroup.io/group`, endpoint slices, DestinationRule
//! subsets, VirtualService routes) → a route table. The watch loop that
//! fills the snapshot is a separate concern; everything that decides lives
//! here and is table-tested.
//!
//! Rules:
//! - a service is `<name>.<namespace>` with hosts `name.ns`, `name.ns.svc`
//!   and the FQDN (the filter tries a dotless host as `<host>.<namespace>`
//!   first); every TCP port of the Service is in `ports` (the first is the
//!   default) and clusters are Istio subset clusters
//!   `outbound|{port}|<group>|<fqdn>`;
//! - a service enters only while some endpoint of it, ready or not, is a
//!   base pod (a restarting base pod is not "none") and its base lane is
//!   settled as below; otherwise Envoy's own route applies;
//! - a lane (a group's ready pods behind the service) enters only when all
//!   of these hold, and has held for `settle_ms` since the latest became
//!   true: a DestinationRule subset named after the group whose selector
//!   includes `isogroup.io/group: <group>` and matches the lane's pods; a
//!   ready endpoint (base: any endpoint); in target-header mode, a
//!   VirtualService route to that subset. It leaves as soon as one fails;
//! - what the proxies have acknowledged stays unobservable from here (xDS
//!   acks go to istiod, not to the API server): the settle time is the
//!   margin for istiod's push, and the closest honest bound we can give.

use std::collections::{BTreeMap, BTreeSet};

use isogroup_core::group::is_valid_group;
use isogroup_core::table::PORT_PLACEHOLDER;
use isogroup_core::{RawService, RawTable};

use crate::istio::GROUP_LABEL;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    pub slices: Vec<EndpointSlice>,
    /// (namespace of the rule, host FQDN) → subset name → its selector.
    pub subsets: BTreeMap<(String, String), BTreeMap<String, Labels>>,
    /// (host FQDN, subset) pairs some VirtualService routes to; `None` when
    /// routes are not required (cluster-header mode, or Istio objects not
    /// managed by us).
    pub routes: Option<BTreeSet<(String, String)>>,
}

#[derive(Debug, Clone, Default)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// TCP ports, in the Service's order.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Default)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, Default)]
pub struct EndpointSlice {
    pub namespace: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub ready: bool,
    /// `targetRef.name` of kind Pod.
    pub pod: Option<String>,
}

pub fn fqdn(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local")
}

/// When each lane's conditions last became true, keyed `<service>/<group>`
/// (as in the `isogroup-state` ConfigMap).
pub type Since = BTreeMap<String, u64>;

/// The clock for `to_table`.
pub struct Clock<'a> {
    pub now_ms: u64,
    pub settle_ms: u64,
    /// The first evaluation after the first lists: lanes whose conditions
    /// hold already count as settled (after a failover or a rollout, the
    /// proxies have had them all along).
    pub first: bool,
    /// What the leader recorded (ConfigMap `isogroup-state`): a lane not yet
    /// in `since` starts from there, so a new leader keeps the clock.
    pub recorded: &'a Since,
}

/// The route table for `snap`; `since` is updated (lanes whose conditions
/// hold, and since when).
pub fn to_table(snap: &Snapshot, base: &str, clock: &Clock<'_>, since: &mut Since) -> RawTable {
    let pods: BTreeMap<(&str, &str), &Labels> =
        snap.pods.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), &p.labels)).collect();
    let mut slices: BTreeMap<(&str, &str), Vec<&Endpoint>> = BTreeMap::new();
    for sl in &snap.slices {
        slices.entry((sl.namespace.as_str(), sl.service.as_str())).or_default().extend(&sl.endpoints);
    }
    let mut table = RawTable { base_group: Some(base.to_owned()), ..RawTable::default() };
    let mut holding = Since::new();
    for s in &snap.services {
        if s.ports.is_empty() {
            continue;
        }
        let host = fqdn(&s.namespace, &s.name);
        let key = format!("{}.{}", s.name, s.namespace);
        // group → (any endpoint, ready endpoints' pod labels)
        let mut lanes: BTreeMap<&str, (bool, Vec<&Labels>)> = BTreeMap::new();
        for e in slices.get(&(s.namespace.as_str(), s.name.as_str())).into_iter().flatten() {
            let Some(labels) = e.pod.as_deref().and_then(|p| pods.get(&(s.namespace.as_str(), p))) else { continue };
            let Some(g) = labels.get(GROUP_LABEL).filter(|g| is_valid_group(g.as_bytes())) else { continue };
            let lane = lanes.entry(g.as_str()).or_default();
            lane.0 = true;
            if e.ready {
                lane.1.push(labels);
            }
        }
        let subsets = snap.subsets.get(&(s.namespace.clone(), host.clone()));
        let mut clusters = BTreeMap::new();
        for (g, (any, ready)) in &lanes {
            let is_base = *g == base;
            // base: any endpoint (a restarting base pod still counts)
            let pods_ok = if is_base { *any } else { !ready.is_empty() };
            let subset_ok = subsets.and_then(|m| m.get(*g)).is_some_and(|sel| {
                sel.get(GROUP_LABEL).map(String::as_str) == Some(*g)
                    && (ready.is_empty() && is_base
                        || ready.iter().any(|l| sel.iter().all(|(k, v)| l.get(k) == Some(v))))
            });
            let route_ok = snap.routes.as_ref().is_none_or(|r| r.contains(&(host.clone(), (*g).to_owned())));
            if !(pods_ok && subset_ok && route_ok) {
                continue;
            }
            let lane_key = format!("{key}/{g}");
            let started = since
                .get(&lane_key)
                .or_else(|| clock.recorded.get(&lane_key))
                .copied()
                .unwrap_or(if clock.first { 0 } else { clock.now_ms });
            holding.insert(lane_key, started);
            if clock.now_ms >= started.saturating_add(clock.settle_ms) {
                clusters.insert((*g).to_owned(), format!("outbound|{PORT_PLACEHOLDER}|{g}|{host}"));
            }
        }
        if !clusters.contains_key(base) {
            continue;
        }
        let hosts = vec![key.clone(), format!("{}.{}.svc", s.name, s.namespace), host];
        table.services.insert(key, RawService { hosts, clusters, ports: s.ports.clone() });
    }
    *since = holding;
    table
}

/// The services the cluster has (some endpoint a base pod) and every lane
/// with pods behind each, ready or not: what the Istio objects must cover
/// *before* a lane may settle.
pub fn targets(snap: &Snapshot, base: &str) -> Vec<crate::istio::Target> {
    let pods: BTreeMap<(&str, &str), &Labels> =
        snap.pods.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), &p.labels)).collect();
    let mut groups: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for sl in &snap.slices {
        let entry = groups.entry((sl.namespace.as_str(), sl.service.as_str())).or_default();
        for e in &sl.endpoints {
            let labels = e.pod.as_deref().and_then(|p| pods.get(&(sl.namespace.as_str(), p)));
            if let Some(g) = labels.and_then(|l| l.get(GROUP_LABEL)).filter(|g| is_valid_group(g.as_bytes())) {
                entry.insert(g.as_str());
            }
        }
    }
    let mut out = vec![];
    for s in &snap.services {
        let Some(lanes) = groups.get(&(s.namespace.as_str(), s.name.as_str())) else { continue };
        if s.ports.is_empty() || !lanes.contains(base) {
            continue;
        }
        let groups = std::iter::once(base).chain(lanes.iter().copied().filter(|g| *g != base)).map(str::to_owned);
        out.push(crate::istio::Target {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            fqdn: fqdn(&s.namespace, &s.name),
            ports: s.ports.clone(),
            groups: groups.collect(),
        });
    }
    out
}

/// (namespace, service, group) → until when its subset stays.
pub type Held = BTreeMap<(String, String, String), u64>;

/// A lane that left keeps its subset and route for `grace_ms` more: it left
/// the table first, and a proxy may route by the older table until its next
/// poll, so its cluster must outlive it. `previous` is what the last call
/// returned; `targets` gets the held lanes back.
pub fn hold_leaving(
    targets: &mut [crate::istio::Target],
    previous: &[crate::istio::Target],
    held: &mut Held,
    now_ms: u64,
    grace_ms: u64,
) {
    let key = |t: &crate::istio::Target, g: &str| (t.namespace.clone(), t.name.clone(), g.to_owned());
    let current: BTreeSet<(String, String, String)> =
        targets.iter().flat_map(|t| t.groups.iter().map(move |g| key(t, g))).collect();
    for t in previous {
        for g in &t.groups {
            let k = key(t, g);
            if !current.contains(&k) {
                held.entry(k).or_insert(now_ms.saturating_add(grace_ms));
            }
        }
    }
    held.retain(|k, until| *until > now_ms && !current.contains(k));
    for t in targets.iter_mut() {
        for ((ns, name, g), _) in held.iter() {
            if *ns == t.namespace && *name == t.name && !t.groups.contains(g) {
                t.groups.push(g.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use isogroup_core::{Limits, Table};

    fn pod(ns: &str, name: &str, group: &str) -> Pod {
        Pod { namespace: ns.into(), name: name.into(), labels: [(GROUP_LABEL.to_owned(), group.to_owned())].into() }
    }

    fn slice(ns: &str, service: &str, eps: &[(&str, bool)]) -> EndpointSlice {
        EndpointSlice {
            namespace: ns.into(),
            service: service.into(),
            endpoints: eps.iter().map(|(p, ready)| Endpoint { ready: *ready, pod: Some((*p).into()) }).collect(),
        }
    }

    fn svc(ns: &str, name: &str) -> Service {
        Service { namespace: ns.into(), name: name.into(), ports: vec![9080, 9443] }
    }

    fn subsets(ns: &str, name: &str, groups: &[&str]) -> ((String, String), BTreeMap<String, Labels>) {
        let sel = |g: &str| [(GROUP_LABEL.to_owned(), g.to_owned())].into();
        ((ns.into(), fqdn(ns, name)), groups.iter().map(|g| ((*g).to_owned(), sel(g))).collect())
    }

    /// service key → its groups, for a compact comparison.
    fn summary(t: &RawTable) -> Vec<String> {
        t.services
            .iter()
            .map(|(k, s)| format!("{k}: {}", s.clusters.keys().cloned().collect::<Vec<_>>().join(",")))
            .collect()
    }

    fn base() -> Snapshot {
        Snapshot {
            services: vec![svc("bookinfo", "reviews"), svc("bookinfo", "ratings")],
            pods: vec![
                pod("bookinfo", "reviews-0", "base"),
                pod("bookinfo", "reviews-f1", "feature-1"),
                pod("bookinfo", "ratings-0", "base"),
                pod("bookinfo", "ratings-f1", "feature-1"),
            ],
            slices: vec![
                slice("bookinfo", "reviews", &[("reviews-0", true), ("reviews-f1", true)]),
                slice("bookinfo", "ratings", &[("ratings-0", true), ("ratings-f1", false)]),
            ],
            subsets: [
                subsets("bookinfo", "reviews", &["base", "feature-1"]),
                subsets("bookinfo", "ratings", &["base", "feature-1"]),
            ]
            .into(),
            routes: None,
        }
    }

    fn run(snap: &Snapshot, now: u64, first: bool, since: &mut Since) -> RawTable {
        let recorded = Since::new();
        to_table(snap, "base", &Clock { now_ms: now, settle_ms: 5_000, first, recorded: &recorded }, since)
    }

    #[test]
    fn snapshot_to_table() {
        let mut routes_for_base = base();
        routes_for_base.routes = Some(
            [("reviews.bookinfo.svc.cluster.local", "base"), ("ratings.bookinfo.svc.cluster.local", "base")]
                .map(|(h, s)| (h.to_owned(), s.to_owned()))
                .into(),
        );
        let mut wrong_selector = base();
        wrong_selector.subsets.get_mut(&("bookinfo".into(), fqdn("bookinfo", "reviews"))).unwrap().insert(
            "feature-1".into(),
            [(GROUP_LABEL.to_owned(), "feature-1".to_owned()), ("version".to_owned(), "v9".to_owned())].into(),
        );
        let mut other_label = base();
        other_label
            .subsets
            .get_mut(&("bookinfo".into(), fqdn("bookinfo", "reviews")))
            .unwrap()
            .insert("feature-1".into(), [("app".to_owned(), "reviews".to_owned())].into());
        let cases: Vec<(&str, Snapshot, Vec<&str>)> = vec![
            ("every condition holds", base(), vec!["ratings.bookinfo: base", "reviews.bookinfo: base,feature-1"]),
            (
                "not ready: gone",
                Snapshot {
                    slices: vec![slice("bookinfo", "reviews", &[("reviews-0", true), ("reviews-f1", false)])],
                    ..base()
                },
                vec!["reviews.bookinfo: base"],
            ),
            (
                "label change moves the pod (no team-a subset)",
                Snapshot {
                    pods: vec![pod("bookinfo", "reviews-0", "base"), pod("bookinfo", "reviews-f1", "team-a")],
                    ..base()
                },
                vec!["reviews.bookinfo: base"],
            ),
            (
                "no subset for the lane",
                Snapshot { subsets: [subsets("bookinfo", "reviews", &["base"])].into(), ..base() },
                vec!["reviews.bookinfo: base"],
            ),
            (
                "a subset whose selector the lane's pods do not match",
                wrong_selector,
                vec!["ratings.bookinfo: base", "reviews.bookinfo: base"],
            ),
            (
                "a subset that does not select by the group label",
                other_label,
                vec!["ratings.bookinfo: base", "reviews.bookinfo: base"],
            ),
            (
                "target-header mode: no route to the lane's subset",
                routes_for_base,
                vec!["ratings.bookinfo: base", "reviews.bookinfo: base"],
            ),
            (
                "a restarting base pod keeps the service and its lanes",
                Snapshot {
                    slices: vec![slice("bookinfo", "reviews", &[("reviews-0", false), ("reviews-f1", true)])],
                    ..base()
                },
                vec!["reviews.bookinfo: base,feature-1"],
            ),
            (
                "no base pod at all: left out",
                Snapshot { slices: vec![slice("bookinfo", "reviews", &[("reviews-f1", true)])], ..base() },
                vec![],
            ),
            ("no base subset: left out", Snapshot { subsets: BTreeMap::new(), ..base() }, vec![]),
        ];
        for (what, snap, want) in cases {
            let t = run(&snap, 10_000, true, &mut Since::new());
            assert_eq!(summary(&t), want, "{what}");
            Table::check(&t, "base", &Limits::default()).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        }
        let t = run(&base(), 10_000, true, &mut Since::new());
        let reviews = &t.services["reviews.bookinfo"];
        assert_eq!(reviews.clusters["feature-1"], "outbound|{port}|feature-1|reviews.bookinfo.svc.cluster.local");
        assert_eq!(reviews.ports, [9080, 9443]);
        assert_eq!(reviews.hosts, ["reviews.bookinfo", "reviews.bookinfo.svc", "reviews.bookinfo.svc.cluster.local"]);
    }

    #[test]
    fn lanes_settle_from_the_latest_condition() {
        let mut since = Since::new();
        // the first evaluation: what holds counts as settled
        let first = run(&base(), 10_000, true, &mut since);
        assert_eq!(summary(&first), ["ratings.bookinfo: base", "reviews.bookinfo: base,feature-1"]);
        // feature-1 of ratings becomes ready at 12 s: in at 17 s, not before
        let mut ready = base();
        ready.slices[1] = slice("bookinfo", "ratings", &[("ratings-0", true), ("ratings-f1", true)]);
        assert_eq!(summary(&run(&ready, 12_000, false, &mut since))[0], "ratings.bookinfo: base");
        assert_eq!(since["ratings.bookinfo/feature-1"], 12_000);
        assert_eq!(summary(&run(&ready, 16_999, false, &mut since))[0], "ratings.bookinfo: base");
        assert_eq!(summary(&run(&ready, 17_000, false, &mut since))[0], "ratings.bookinfo: base,feature-1");
        // a condition fails: out at once, and the clock starts again
        let t = run(&base(), 18_000, false, &mut since);
        assert_eq!(summary(&t)[0], "ratings.bookinfo: base");
        assert!(!since.contains_key("ratings.bookinfo/feature-1"));
        assert_eq!(summary(&run(&ready, 19_000, false, &mut since))[0], "ratings.bookinfo: base");
        // a new leader with the old one's record keeps its clock
        let recorded: Since = [
            ("ratings.bookinfo/base", 0),
            ("ratings.bookinfo/feature-1", 12_000),
            ("reviews.bookinfo/base", 0),
            ("reviews.bookinfo/feature-1", 0),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        let mut fresh = Since::new();
        let clock = Clock { now_ms: 17_500, settle_ms: 5_000, first: false, recorded: &recorded };
        assert_eq!(summary(&to_table(&ready, "base", &clock, &mut fresh))[0], "ratings.bookinfo: base,feature-1");
    }

    #[test]
    fn istio_targets_cover_lanes_before_they_are_ready() {
        let t = targets(&base(), "base");
        let summary: Vec<String> = t.iter().map(|t| format!("{} {}", t.fqdn, t.groups.join(","))).collect();
        // ratings' feature-1 pod is not ready: its subset must exist anyway
        assert_eq!(
            summary,
            ["reviews.bookinfo.svc.cluster.local base,feature-1", "ratings.bookinfo.svc.cluster.local base,feature-1"]
        );
        assert_eq!(t[0].ports, [9080, 9443]);
        let none = Snapshot { slices: vec![slice("bookinfo", "reviews", &[("reviews-f1", true)])], ..base() };
        assert!(targets(&none, "base").is_empty(), "no base pod: no objects");
    }

    #[test]
    fn a_leaving_lane_keeps_its_subset_for_the_grace_time() {
        let before = targets(&base(), "base");
        let gone = Snapshot {
            slices: vec![slice("bookinfo", "reviews", &[("reviews-0", true)]), base().slices[1].clone()],
            ..base()
        };
        let mut held = Held::new();
        let mut now = targets(&gone, "base");
        hold_leaving(&mut now, &before, &mut held, 1_000, 5_000);
        assert_eq!(now[0].groups, ["base", "feature-1"], "held");
        let previous = now.clone();
        let mut later = targets(&gone, "base");
        hold_leaving(&mut later, &previous, &mut held, 5_999, 5_000);
        assert_eq!(later[0].groups, ["base", "feature-1"], "still held, the clock not restarted");
        let previous = later.clone();
        let mut expired = targets(&gone, "base");
        hold_leaving(&mut expired, &previous, &mut held, 6_000, 5_000);
        assert_eq!(expired[0].groups, ["base"], "gone after the grace time");
        assert!(held.is_empty());
    }

    #[test]
    fn same_name_in_two_namespaces() {
        let snap = Snapshot {
            services: vec![svc("a", "reviews"), svc("b", "reviews")],
            pods: vec![pod("a", "r0", "base"), pod("b", "r0", "base")],
            slices: vec![slice("a", "reviews", &[("r0", true)]), slice("b", "reviews", &[("r0", true)])],
            subsets: [subsets("a", "reviews", &["base"]), subsets("b", "reviews", &["base"])].into(),
            routes: None,
        };
        let t = run(&snap, 10_000, true, &mut Since::new());
        assert_eq!(t.services["reviews.a"].hosts[0], "reviews.a");
        assert_eq!(t.services["reviews.b"].hosts[0], "reviews.b");
        Table::check(&t, "base", &Limits::default()).unwrap();
    }
}
