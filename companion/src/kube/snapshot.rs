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

use std::collections::BTreeMap;
#[cfg(test)]
use std::collections::BTreeSet;

use isogroup_core::group::is_valid_group;
use isogroup_core::table::PORT_PLACEHOLDER;
use isogroup_core::RawService;

use crate::kube::istio::{Target, GROUP_LABEL};

/// Label pairs sorted by key, in one allocation: a pod has a few labels,
/// and a `BTreeMap` node has room for eleven (50k pods at scale).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        let at = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        self.0.get(at).map(|(_, v)| &**v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    /// Whether every pair of `selector` is in these labels.
    pub fn matches(&self, selector: &Labels) -> bool {
        selector.iter().all(|(k, v)| self.get(k) == Some(v))
    }
}

impl FromIterator<(String, String)> for Labels {
    /// A key given twice keeps its last value, as a map would.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Labels {
        let map: BTreeMap<String, String> = pairs.into_iter().collect();
        Labels(map.into_iter().map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str())).collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Labels {
        pairs.into_iter().collect()
    }
}

/// The whole cluster at once: what `to_table` and `targets`, the whole
/// rebuild, read. The watch loop keeps its mirrors indexed instead
/// (`kube::index`) and evaluates only the services an event touched, with
/// the same per-service rules (`lanes_of`, `evaluate`); tests hold the two
/// equal, so the whole rebuild lives on as their reference.
#[cfg(test)]
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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// TCP ports, in the Service's order.
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    /// The `kubernetes.io/service-name` label.
    pub service: String,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub ready: bool,
    /// `targetRef.name` of kind Pod.
    pub pod: Option<String>,
}

pub fn fqdn(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.cluster.local")
}

/// The table key of a service (`<name>.<namespace>`).
pub fn service_key(namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}")
}

/// When each lane's conditions last became true, keyed `<service>/<group>`
/// (as in the `isogroup-state` ConfigMap).
pub type Since = BTreeMap<String, u64>;

/// The clock for `to_table`.
pub struct Clock<'a> {
    pub now_ms: u64,
    pub settle_ms: u64,
    /// What the leader recorded (ConfigMap `isogroup-state`): a lane not yet
    /// in `since` starts from there, so a new leader keeps the clock.
    pub recorded: &'a Since,
}

/// One service's endpoints by lane: group → (some endpoint, ready or not;
/// the ready endpoints' pod labels). Endpoints of pods without a valid
/// group label do not count.
pub type Lanes<'a> = BTreeMap<&'a str, (bool, Vec<&'a Labels>)>;

/// The lanes behind one service; `labels_of` finds a pod of the service's
/// namespace by name.
pub fn lanes_of<'a>(
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
    labels_of: impl Fn(&str) -> Option<&'a Labels>,
) -> Lanes<'a> {
    let mut lanes = Lanes::new();
    for e in endpoints {
        let Some(labels) = e.pod.as_deref().and_then(&labels_of) else { continue };
        let Some(g) = labels.get(GROUP_LABEL).filter(|g| is_valid_group(g.as_bytes())) else { continue };
        let lane = lanes.entry(g).or_default();
        lane.0 = true;
        if e.ready {
            lane.1.push(labels);
        }
    }
    lanes
}

/// What one service gives.
#[derive(Debug, Default)]
pub struct Evaluated {
    /// Its table entry (key, service), when it enters.
    pub entry: Option<(String, RawService)>,
    /// What the Istio objects must cover (some endpoint a base pod).
    pub target: Option<Target>,
    /// Its lanes whose conditions hold, and since when (`Since` keys).
    pub holding: Vec<(String, u64)>,
    /// Some lane holds but has not settled: time alone changes the entry.
    pub unsettled: bool,
}

/// The rules of the module comment for one service: `subset` finds the
/// DestinationRule subset of a group for this service's host, `routed`
/// whether a route to (host, group) exists as needed; `since` is what the
/// previous evaluation recorded.
pub fn evaluate<'a>(
    s: &Service,
    lanes: &Lanes<'_>,
    subset: impl Fn(&str) -> Option<&'a Labels>,
    routed: impl Fn(&str, &str) -> bool,
    base: &str,
    clock: &Clock<'_>,
    since: &Since,
) -> Evaluated {
    let mut out = Evaluated::default();
    if s.ports.is_empty() {
        return out;
    }
    let host = fqdn(&s.namespace, &s.name);
    let key = service_key(&s.namespace, &s.name);
    if lanes.contains_key(base) {
        let others = lanes.keys().copied().filter(|g| *g != base);
        out.target = Some(Target {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            fqdn: host.clone(),
            ports: s.ports.clone(),
            groups: std::iter::once(base).chain(others).map(str::to_owned).collect(),
            traffic_policy: None,
        });
    }
    let mut clusters = BTreeMap::new();
    for (g, (any, ready)) in lanes {
        let is_base = *g == base;
        // base: any endpoint (a restarting base pod still counts)
        let pods_ok = if is_base { *any } else { !ready.is_empty() };
        let subset_ok = subset(g).is_some_and(|sel| {
            sel.get(GROUP_LABEL) == Some(*g) && (ready.is_empty() && is_base || ready.iter().any(|l| l.matches(sel)))
        });
        if !(pods_ok && subset_ok && routed(&host, g)) {
            continue;
        }
        let lane_key = format!("{key}/{g}");
        let started = since
            .get(&lane_key)
            .or_else(|| clock.recorded.get(&lane_key))
            .copied()
            // Unrecorded: starting now, on a new leader's first pass too
            // (SPEC "Leadership is fenced"); a proxy may not have its
            // subset yet.
            .unwrap_or(clock.now_ms);
        out.holding.push((lane_key, started));
        if clock.now_ms >= started.saturating_add(clock.settle_ms) {
            clusters.insert((*g).to_owned(), format!("outbound|{PORT_PLACEHOLDER}|{g}|{host}"));
        } else {
            out.unsettled = true;
        }
    }
    if clusters.contains_key(base) {
        let hosts = vec![key.clone(), format!("{}.{}.svc", s.name, s.namespace), host];
        out.entry = Some((key, RawService { hosts, clusters, ports: s.ports.clone() }));
    }
    out
}

#[cfg(test)]
/// Every service of `snap` evaluated, in the order of `snap.services`.
fn evaluate_all(snap: &Snapshot, base: &str, clock: &Clock<'_>, since: &Since) -> Vec<Evaluated> {
    let pods: BTreeMap<(&str, &str), &Labels> =
        snap.pods.iter().map(|p| ((p.namespace.as_str(), p.name.as_str()), &p.labels)).collect();
    let mut slices: BTreeMap<(&str, &str), Vec<&Endpoint>> = BTreeMap::new();
    for sl in &snap.slices {
        slices.entry((sl.namespace.as_str(), sl.service.as_str())).or_default().extend(&sl.endpoints);
    }
    let routed =
        |host: &str, g: &str| snap.routes.as_ref().is_none_or(|r| r.contains(&(host.to_owned(), g.to_owned())));
    snap.services
        .iter()
        .map(|s| {
            let ns = s.namespace.as_str();
            let endpoints = slices.get(&(ns, s.name.as_str())).into_iter().flatten().copied();
            let lanes = lanes_of(endpoints, |p| pods.get(&(ns, p)).copied());
            let subsets = snap.subsets.get(&(s.namespace.clone(), fqdn(ns, &s.name)));
            evaluate(s, &lanes, |g| subsets.and_then(|m| m.get(g)), routed, base, clock, since)
        })
        .collect()
}

#[cfg(test)]
/// The route table for `snap`; `since` is updated (lanes whose conditions
/// hold, and since when).
pub fn to_table(snap: &Snapshot, base: &str, clock: &Clock<'_>, since: &mut Since) -> isogroup_core::RawTable {
    let mut table = isogroup_core::RawTable { base_group: Some(base.to_owned()), ..Default::default() };
    let mut holding = Since::new();
    for e in evaluate_all(snap, base, clock, since) {
        holding.extend(e.holding);
        if let Some((key, service)) = e.entry {
            table.services.insert(key, service);
        }
    }
    *since = holding;
    table
}

#[cfg(test)]
/// The services the cluster has (some endpoint a base pod) and every lane
/// with pods behind each, ready or not: what the Istio objects must cover
/// *before* a lane may settle.
pub fn targets(snap: &Snapshot, base: &str) -> Vec<Target> {
    let (recorded, since) = (Since::new(), Since::new());
    let clock = Clock { now_ms: 0, settle_ms: 0, recorded: &recorded };
    evaluate_all(snap, base, &clock, &since).into_iter().filter_map(|e| e.target).collect()
}

/// (namespace, service, group) → until when its subset stays.
pub type Held = BTreeMap<(String, String, String), u64>;

/// A lane that left keeps its subset and route for `grace_ms` more: it left
/// the table first, and a proxy may route by the older table until its next
/// poll, so its cluster must outlive it. `previous` is what the last call
/// returned; `targets` gets the held lanes back. The whole-set form, kept
/// as the model the per-service `hold_leaving_one` is tested against.
#[cfg(test)]
pub fn hold_leaving(targets: &mut [Target], previous: &[Target], held: &mut Held, now_ms: u64, grace_ms: u64) {
    let key = |t: &Target, g: &str| (t.namespace.clone(), t.name.clone(), g.to_owned());
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

/// `hold_leaving` for one service (`key`): its target now, if it has one,
/// and the one last returned for it. What the whole call does for that
/// service: called for every service whose target changed and every one
/// with a held lane past its time, it holds as the whole call would.
pub fn hold_leaving_one(
    key: &(String, String),
    target: Option<&mut Target>,
    previous: Option<&Target>,
    held: &mut Held,
    now_ms: u64,
    grace_ms: u64,
) {
    let (ns, name) = key;
    let current = |g: &str| target.as_ref().is_some_and(|t| t.groups.iter().any(|c| c == g));
    for g in previous.into_iter().flat_map(|t| &t.groups) {
        if !current(g) {
            held.entry((ns.clone(), name.clone(), g.clone())).or_insert(now_ms.saturating_add(grace_ms));
        }
    }
    let from = (ns.clone(), name.clone(), String::new());
    let mine: Vec<(String, u64)> = held
        .range(from..)
        .take_while(|((n, s, _), _)| n == ns && s == name)
        .map(|((_, _, g), until)| (g.clone(), *until))
        .collect();
    let mut kept = vec![];
    for (g, until) in mine {
        if until > now_ms && !current(&g) {
            kept.push(g);
        } else {
            held.remove(&(ns.clone(), name.clone(), g));
        }
    }
    if let Some(t) = target {
        for g in kept {
            if !t.groups.contains(&g) {
                t.groups.push(g);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use isogroup_core::{Limits, RawTable, Table};

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

    /// The table once what holds at 10 s has settled (5 s later).
    fn settled(snap: &Snapshot) -> isogroup_core::RawTable {
        let mut since = Since::new();
        run(snap, 10_000, &mut since);
        run(snap, 15_000, &mut since)
    }

    fn run(snap: &Snapshot, now: u64, since: &mut Since) -> isogroup_core::RawTable {
        let recorded = Since::new();
        to_table(snap, "base", &Clock { now_ms: now, settle_ms: 5_000, recorded: &recorded }, since)
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
            let t = settled(&snap);
            assert_eq!(summary(&t), want, "{what}");
            Table::check(&t, "base", &Limits::default()).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        }
        let t = settled(&base());
        let reviews = &t.services["reviews.bookinfo"];
        assert_eq!(reviews.clusters["feature-1"], "outbound|{port}|feature-1|reviews.bookinfo.svc.cluster.local");
        assert_eq!(reviews.ports, [9080, 9443]);
        assert_eq!(reviews.hosts, ["reviews.bookinfo", "reviews.bookinfo.svc", "reviews.bookinfo.svc.cluster.local"]);
    }

    #[test]
    fn lanes_settle_from_the_latest_condition() {
        let mut since = Since::new();
        // the first evaluation: what holds and is unrecorded starts now
        let first = run(&base(), 5_000, &mut since);
        assert!(summary(&first).is_empty(), "{:?}", summary(&first));
        assert_eq!(since["reviews.bookinfo/feature-1"], 5_000);
        let settled = run(&base(), 10_000, &mut since);
        assert_eq!(summary(&settled), ["ratings.bookinfo: base", "reviews.bookinfo: base,feature-1"]);
        // feature-1 of ratings becomes ready at 12 s: in at 17 s, not before
        let mut ready = base();
        ready.slices[1] = slice("bookinfo", "ratings", &[("ratings-0", true), ("ratings-f1", true)]);
        assert_eq!(summary(&run(&ready, 12_000, &mut since))[0], "ratings.bookinfo: base");
        assert_eq!(since["ratings.bookinfo/feature-1"], 12_000);
        assert_eq!(summary(&run(&ready, 16_999, &mut since))[0], "ratings.bookinfo: base");
        assert_eq!(summary(&run(&ready, 17_000, &mut since))[0], "ratings.bookinfo: base,feature-1");
        // a condition fails: out at once, and the clock starts again
        let t = run(&base(), 18_000, &mut since);
        assert_eq!(summary(&t)[0], "ratings.bookinfo: base");
        assert!(!since.contains_key("ratings.bookinfo/feature-1"));
        assert_eq!(summary(&run(&ready, 19_000, &mut since))[0], "ratings.bookinfo: base");
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
        let clock = Clock { now_ms: 17_500, settle_ms: 5_000, recorded: &recorded };
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
        let t = settled(&snap);
        assert_eq!(t.services["reviews.a"].hosts[0], "reviews.a");
        assert_eq!(t.services["reviews.b"].hosts[0], "reviews.b");
        Table::check(&t, "base", &Limits::default()).unwrap();
    }
}
