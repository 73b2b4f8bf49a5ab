//! The incremental table (`kube::index`) against the whole rebuild
//! (`kube_snapshot::to_table` over a snapshot of every mirror): random
//! watch event sequences over a small cluster, where collisions are many
//! (slices moving between services, pods in several slices, rules for
//! other namespaces' hosts, re-lists, missing kinds), compared after every
//! step: the services, the lanes' settle times and the Istio targets.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use isogroup_core::Limits;

use super::{Cluster, Options, Own, Update};
use crate::kube::index::{RouteObj, RuleObj};
use crate::kube::istio::GROUP_LABEL;
use crate::kube::snapshot::{fqdn, service_key, targets, to_table, Clock, Endpoint, EndpointSlice, Labels, Pod};
use crate::kube::snapshot::{Service, Since, Snapshot};
use crate::kube::watch::{Change, Key, Report};
use crate::metrics::Metrics;

/// xorshift64*: reproducible from the seed in a failure message.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Weighted by repetition: most objects meet in namespace `a`.
const NAMESPACES: &[&str] = &["a", "a", "a", "b"];
const SERVICES: &[&str] = &["s0", "s1", "s2"];
const PODS: &[&str] = &["p0", "p1", "p2", "p3", "p4", "p5"];
const SLICES: &[&str] = &["x0", "x1", "x2", "x3"];
/// `Bad_Group` is not a valid group name: its pods do not count.
const GROUPS: &[&str] = &["base", "base", "f1", "f2", "Bad_Group"];
const RULES: &[&str] = &["r0", "r1", "r2"];
const SETTLE_MS: u64 = 2_000;

fn key(ns: &str, name: &str) -> Key {
    (ns.to_owned(), name.to_owned())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn random_pod(rng: &mut Rng, ns: &str, name: &str) -> Pod {
    let mut pairs = vec![("version", if rng.chance(50) { "v1" } else { "v2" })];
    if rng.chance(85) {
        pairs.push((GROUP_LABEL, rng.pick(GROUPS)));
    }
    Pod { namespace: ns.into(), name: name.into(), labels: labels(&pairs) }
}

fn random_slice(rng: &mut Rng, ns: &str) -> EndpointSlice {
    let endpoints = (0..rng.below(4))
        .map(|_| Endpoint { ready: rng.chance(60), pod: (!rng.chance(10)).then(|| rng.pick(PODS).to_owned()) })
        .collect();
    EndpointSlice { namespace: ns.into(), service: rng.pick(SERVICES).into(), endpoints }
}

fn random_rule(rng: &mut Rng, ns: &str) -> RuleObj {
    // mostly a host of this namespace, sometimes another's (which does not apply)
    let host_ns = if rng.chance(80) { ns } else { rng.pick(NAMESPACES) };
    let mut subsets = BTreeMap::new();
    for _ in 0..=rng.below(4) {
        let g = rng.pick(GROUPS);
        let selector = match rng.below(5) {
            0 => labels(&[(GROUP_LABEL, g), ("version", "v1")]),
            1 => labels(&[(GROUP_LABEL, rng.pick(GROUPS))]),
            _ => labels(&[(GROUP_LABEL, g)]),
        };
        subsets.insert(g.to_owned(), selector);
    }
    RuleObj { host: fqdn(host_ns, rng.pick(SERVICES)), subsets, owned: rng.chance(50), ..RuleObj::default() }
}

fn random_route(rng: &mut Rng) -> RouteObj {
    let dests = (0..rng.below(4))
        .map(|_| (fqdn(rng.pick(NAMESPACES), rng.pick(SERVICES)), rng.pick(GROUPS).to_owned()))
        .collect();
    RouteObj { hosts: vec![], dests, owned: true, ..RouteObj::default() }
}

/// One watch report for an object of one kind: applied (sometimes as an
/// object that does not count), deleted, or a whole re-list of random
/// objects.
fn report<T>(rng: &mut Rng, names: &[&str], mut make: impl FnMut(&mut Rng, &str, &str) -> T) -> Vec<Report<T>> {
    let ns = rng.pick(NAMESPACES);
    let name = rng.pick(names);
    match rng.below(40) {
        0 => {
            let mut all = vec![Report::Change(Change::Init)];
            for _ in 0..rng.below(6) {
                let (ns, name) = (rng.pick(NAMESPACES), rng.pick(names));
                all.push(Report::Change(Change::InitApply(key(ns, name), Some(make(rng, ns, name)))));
            }
            all.push(Report::Change(Change::InitDone));
            all
        }
        1 => vec![Report::Error("boom".into())],
        2 => vec![Report::Change(Change::Apply(key(ns, name), None))],
        3..=5 => vec![Report::Change(Change::Delete(key(ns, name)))],
        // a re-list keeping most objects: the common case after a 410
        6 if rng.chance(30) => vec![Report::Change(Change::Init), Report::Change(Change::InitDone)],
        _ => vec![Report::Change(Change::Apply(key(ns, name), Some(make(rng, ns, name))))],
    }
}

fn random_updates(rng: &mut Rng, routes: bool) -> Vec<Update> {
    match rng.below(if routes { 8 } else { 7 }) {
        0 => report(rng, SERVICES, |rng, ns, name| {
            let ports = [vec![], vec![80], vec![80, 81]][rng.below(3)].clone();
            Service { namespace: ns.into(), name: name.into(), ports }
        })
        .into_iter()
        .map(Update::Service)
        .collect(),
        1 | 2 => report(rng, PODS, random_pod).into_iter().map(Update::Pod).collect(),
        3 | 4 => report(rng, SLICES, |rng, ns, _| random_slice(rng, ns)).into_iter().map(Update::Slice).collect(),
        5 if rng.chance(10) => vec![Update::Rule(Report::Missing("no DestinationRule CRD".into()))],
        5 => report(rng, RULES, |rng, ns, _| random_rule(rng, ns)).into_iter().map(Update::Rule).collect(),
        6 => {
            // the leader's record: lanes it saw settle, at random times
            let mut since = Since::new();
            for _ in 0..rng.below(3) {
                let lane = format!("{}/{}", service_key(rng.pick(NAMESPACES), rng.pick(SERVICES)), rng.pick(GROUPS));
                since.insert(lane, rng.next() % 20_000);
            }
            let n = rng.below(2);
            let cm = key("isogroup-system", &format!("isogroup-state-{n}"));
            let record = crate::kube::state::Record { since, leaving: Default::default() };
            let shard = crate::kube::state::Shard { index: Some(n), epoch: None, record };
            vec![Update::Own(Report::Change(Change::Apply(cm, Some(Own::State(shard)))))]
        }
        _ => report(rng, &["v0", "v1", "v2"], |rng, _, _| random_route(rng)).into_iter().map(Update::Route).collect(),
    }
}

fn relist<T>(items: Vec<(Key, T)>) -> Vec<Report<T>> {
    let mut r = vec![Report::Change(Change::Init)];
    r.extend(items.into_iter().map(|(k, v)| Report::Change(Change::InitApply(k, Some(v)))));
    r.push(Report::Change(Change::InitDone));
    r
}

/// A cluster where every lane holds: each service a slice of every pod,
/// ready, and a rule with a subset and a route per group.
fn populated() -> Vec<Update> {
    let mut all = vec![];
    let (mut services, mut pods, mut slices, mut rules, mut routes) = (vec![], vec![], vec![], vec![], vec![]);
    for ns in ["a", "b"] {
        for (i, p) in PODS.iter().enumerate() {
            let pod = Pod { namespace: ns.into(), name: (*p).into(), labels: labels(&[(GROUP_LABEL, GROUPS[i % 3])]) };
            pods.push((key(ns, p), pod));
        }
        for (i, s) in SERVICES.iter().enumerate() {
            services.push((key(ns, s), Service { namespace: ns.into(), name: (*s).into(), ports: vec![80] }));
            let endpoints = PODS.iter().map(|p| Endpoint { ready: true, pod: Some((*p).into()) }).collect();
            slices.push((key(ns, SLICES[i]), EndpointSlice { namespace: ns.into(), service: (*s).into(), endpoints }));
            let subsets = GROUPS[..3].iter().map(|g| ((*g).to_owned(), labels(&[(GROUP_LABEL, g)]))).collect();
            rules.push((key(ns, RULES[i]), RuleObj { host: fqdn(ns, s), subsets, owned: true, ..RuleObj::default() }));
            let dests = GROUPS[..3].iter().map(|g| (fqdn(ns, s), (*g).to_owned())).collect();
            routes.push((
                key(ns, &format!("v{i}")),
                RouteObj { hosts: vec![], dests, owned: true, ..RouteObj::default() },
            ));
        }
    }
    all.extend(relist(services).into_iter().map(Update::Service));
    all.extend(relist(pods).into_iter().map(Update::Pod));
    all.extend(relist(slices).into_iter().map(Update::Slice));
    all.extend(relist(rules).into_iter().map(Update::Rule));
    all.extend(relist(routes).into_iter().map(Update::Route));
    all
}

/// The whole cluster as the whole rebuild reads it.
fn snapshot(c: &Cluster, routes_required: bool) -> Snapshot {
    let mut subsets: BTreeMap<(String, String), BTreeMap<String, Labels>> = BTreeMap::new();
    for ((ns, _), r) in &c.rules.items {
        let entry = subsets.entry((ns.clone(), r.host.clone())).or_default();
        for (name, labels) in &r.subsets {
            entry.entry(name.clone()).or_insert_with(|| labels.clone());
        }
    }
    Snapshot {
        services: c.services.items.values().cloned().collect(),
        pods: c.pods.items.values().cloned().collect(),
        slices: c.slices.items.values().cloned().collect(),
        subsets,
        routes: routes_required.then(|| c.routes.items.values().flat_map(|r| r.dests.iter().cloned()).collect()),
    }
}

fn recorded(c: &Cluster) -> Since {
    let shards = c.own.items.values().filter_map(|o| if let Own::State(s) = o { Some(s) } else { None });
    crate::kube::state::joined(shards).since
}

fn run(seed: u64, steps: usize, routes_required: bool) {
    let mut rng = Rng(seed);
    let metrics = Metrics::new();
    let mut opts = Options::new(Duration::from_millis(SETTLE_MS), "isogroup-system".into());
    if routes_required {
        opts.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    }
    let limits = Limits::default();
    let mut c = Cluster::default();
    let mut now = 10_000;
    let mut entered = 0;
    let mut last = BTreeMap::new();
    // What the reconciler was sent (target-header mode).
    let (mut sent, mut seen) = (BTreeMap::new(), BTreeMap::new());
    let (mut model_last, mut model_held) = (vec![], crate::kube::snapshot::Held::new());
    for step in 0..steps {
        // random events wear a cluster down: start it again now and then
        let updates = if step % 60 == 0 { populated() } else { random_updates(&mut rng, routes_required) };
        for u in updates {
            c.apply(u, &metrics);
        }
        now += rng.next() % 1_500;
        let since_before = c.since.clone();
        c.since_unwritten = false;
        let table = c.table("base", now, &opts, &limits);
        match table {
            Some(super::TableUpdate::Whole(t)) => last = t.services,
            Some(super::TableUpdate::Changes(changes, _)) => {
                for (k, s) in changes {
                    match s {
                        Some(s) => last.insert(k, s),
                        None => last.remove(&k),
                    };
                }
            }
            None => {}
        }
        // what was handed over, whole or as changes, is the table
        assert_eq!(&last, c.index.services(), "seed {seed}, step {step}: handed over");
        let snap = snapshot(&c, routes_required);
        let record = recorded(&c);
        let clock = Clock { now_ms: now, settle_ms: SETTLE_MS, recorded: &record };
        let since_before_copy = since_before.clone();
        let mut since = since_before;
        let whole = to_table(&snap, "base", &clock, &mut since);
        let at = format!("seed {seed}, step {step}, routes required {routes_required}");
        assert_eq!(c.index.services(), &whole.services, "{at}: services");
        let mut lane_groups: Vec<&str> = c.index.lane_groups().collect();
        lane_groups.sort_unstable();
        let mut whole_groups: Vec<&str> =
            whole.services.values().flat_map(|s| s.clusters.keys().map(String::as_str)).collect();
        whole_groups.sort_unstable();
        whole_groups.dedup();
        assert_eq!(lane_groups, whole_groups, "{at}: the groups of lanes");
        assert_eq!(c.since, since, "{at}: since");
        assert_eq!(c.since_unwritten, since_before_copy != c.since, "{at}: whether since changed");
        let incremental: Vec<_> = c.index.targets().cloned().collect();
        assert_eq!(incremental, targets(&snap, "base"), "{at}: targets");
        if routes_required {
            // What the reconciler is sent, change by change, is what a
            // whole send would give now (held lanes, expiries included).
            let mode = (crate::kube::istio::Mode::TargetHeader, "istio-system");
            let changes = c.istio_changes("base", mode, "isogroup-system", now, SETTLE_MS);
            if changes.whole {
                (sent, seen) = (BTreeMap::new(), BTreeMap::new());
            }
            for (k, v) in changes.wanted {
                match v {
                    Some(v) => sent.insert(k, v),
                    None => sent.remove(&k),
                };
            }
            for (k, v) in changes.existing {
                match v {
                    Some(v) => seen.insert(k, v),
                    None => seen.remove(&k),
                };
            }
            // The lanes held, and the targets sent, as the whole
            // `hold_leaving` over every target holds them.
            let mut model: Vec<_> = c.index.targets().cloned().collect();
            crate::kube::snapshot::hold_leaving(&mut model, &model_last, &mut model_held, now, SETTLE_MS);
            model_last.clone_from(&model);
            assert_eq!(c.istio.held, model_held, "{at}: the lanes held");
            let sent_targets: Vec<_> = c.istio.last_targets.values().cloned().collect();
            assert_eq!(sent_targets, model, "{at}: the targets sent");
            let held = c.istio.held.clone();
            c.istio.sent = false;
            let whole = c.istio_changes("base", mode, "isogroup-system", now, SETTLE_MS);
            assert!(whole.whole);
            let whole_sent: BTreeMap<_, _> = whole.wanted.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
            let whole_seen: BTreeMap<_, _> = whole.existing.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
            assert_eq!(sent, whole_sent, "{at}: the wanted objects sent");
            assert_eq!(seen, whole_seen, "{at}: the observed objects sent");
            assert_eq!(c.istio.held, held, "{at}: a whole send holds nothing more");
        }
        entered += last.values().map(|s| s.clusters.len()).sum::<usize>();
    }
    // the sequences must reach tables with lanes, or they prove little
    assert!(entered > steps / 4, "seed {seed}: only {entered} clusters over {steps} steps");
}

#[test]
fn the_incremental_table_equals_a_whole_rebuild_after_every_event() {
    for seed in 1..=40u64 {
        run(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 300, seed % 2 == 0);
    }
}

/// The reconciler's input costs an event its own services: one endpoint
/// turning ready renders that service's objects, not every service's
/// (at 10k services, a whole render per event was most of its latency).
#[test]
fn one_services_event_renders_and_sends_that_service_only() {
    let metrics = Metrics::new();
    let mut opts = Options::new(Duration::from_millis(0), "isogroup-system".into());
    opts.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    let limits = Limits::default();
    let mode = (crate::kube::istio::Mode::TargetHeader, "istio-system");
    let mut c = Cluster::default();
    for u in populated() {
        c.apply(u, &metrics);
    }
    c.table("base", 10_000, &opts, &limits);
    let first = c.istio_changes("base", mode, "isogroup-system", 10_000, 0);
    let services = c.index.targets().count();
    assert!(first.whole && services == 6, "{services} services");
    assert_eq!((c.istio.rendered, first.wanted.len()), (6, 6));
    // nothing changed: nothing rendered or sent
    c.table("base", 10_001, &opts, &limits);
    assert!(c.istio_changes("base", mode, "isogroup-system", 10_001, 0).is_empty());
    assert_eq!(c.istio.rendered, 6);
    // one pod behind a/s0 leaves its slice: that service only
    let endpoints = PODS[..2].iter().map(|p| Endpoint { ready: true, pod: Some((*p).into()) }).collect();
    let sl = EndpointSlice { namespace: "a".into(), service: "s0".into(), endpoints };
    c.apply(Update::Slice(Report::Change(Change::Apply(key("a", SLICES[0]), Some(sl)))), &metrics);
    c.table("base", 10_002, &opts, &limits);
    let changes = c.istio_changes("base", mode, "isogroup-system", 10_002, 0);
    assert!(!changes.whole);
    assert_eq!(changes.wanted.keys().collect::<Vec<_>>(), [&key("a", "s0")]);
    assert_eq!(c.istio.rendered, 7, "one service rendered");
    assert!(changes.existing.is_empty());
    // one DestinationRule observed anew: that object only, nothing rendered
    let rule = RuleObj { host: fqdn("b", "s1"), owned: true, ..RuleObj::default() };
    c.apply(Update::Rule(Report::Change(Change::Apply(key("b", RULES[1]), Some(rule)))), &metrics);
    c.table("base", 10_003, &opts, &limits);
    let changes = c.istio_changes("base", mode, "isogroup-system", 10_003, 0);
    assert!(!changes.whole && changes.wanted.is_empty());
    let observed: Vec<_> = changes.existing.keys().cloned().collect();
    assert_eq!(observed, [("DestinationRule".to_owned(), "b".to_owned(), RULES[1].to_owned())]);
    assert_eq!(c.istio.rendered, 7);
}
