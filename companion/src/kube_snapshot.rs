//! Kubernetes source, the pure half: a snapshot of the cluster (services,
//! pods labelled `isogroup.io/group`, endpoint slices, DestinationRule
//! subsets) → a route table. The watch loop that fills the snapshot is a
//! separate concern; everything that decides lives here and is table-tested.
//!
//! Rules:
//! - a group serves a service only while one of its pods is a *ready*
//!   endpoint of that service (`conditions.ready`);
//! - clusters are Istio subset clusters `outbound|<port>|<group>|<fqdn>`,
//!   base included (base pods carry `isogroup.io/group: base`, so the base
//!   subset never holds feature pods);
//! - no error window: a group enters only once a DestinationRule subset for
//!   it has existed for `settle_ms` (the proxies have it), and it leaves as
//!   soon as its pods are not ready (before anyone removes the subset);
//! - a service without a ready base pod is left out (Envoy's own route then
//!   applies);
//! - hosts: the FQDN, `<name>.<ns>.svc`, `<name>.<ns>`, and the bare name
//!   only when no other namespace has a service of that name (a bare name
//!   means different services in different namespaces).

use std::collections::{BTreeMap, BTreeSet};

use isogroup_core::group::is_valid_group;
use isogroup_core::{RawService, RawTable};

use crate::istio::GROUP_LABEL;

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub pods: Vec<Pod>,
    pub slices: Vec<EndpointSlice>,
    /// (namespace, host FQDN) → subset name → when it was first seen (ms).
    pub subsets: BTreeMap<(String, String), BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Default)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub port: u16,
}

#[derive(Debug, Clone, Default)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
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

/// The route table for `snap` at `now_ms` (version left to the store).
pub fn to_table(snap: &Snapshot, base: &str, now_ms: u64, settle_ms: u64) -> RawTable {
    let pod_group: BTreeMap<(&str, &str), &str> = snap
        .pods
        .iter()
        .filter_map(|p| {
            let g = p.labels.get(GROUP_LABEL)?;
            is_valid_group(g.as_bytes()).then_some(((p.namespace.as_str(), p.name.as_str()), g.as_str()))
        })
        .collect();
    let mut name_count: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &snap.services {
        *name_count.entry(&s.name).or_default() += 1;
    }
    let mut table = RawTable { base_group: Some(base.to_owned()), ..RawTable::default() };
    for s in &snap.services {
        let ready: BTreeSet<&str> = snap
            .slices
            .iter()
            .filter(|sl| sl.namespace == s.namespace && sl.service == s.name)
            .flat_map(|sl| &sl.endpoints)
            .filter(|e| e.ready)
            .filter_map(|e| pod_group.get(&(s.namespace.as_str(), e.pod.as_deref()?)).copied())
            .collect();
        if !ready.contains(base) {
            continue;
        }
        let host = fqdn(&s.namespace, &s.name);
        let settled = snap.subsets.get(&(s.namespace.clone(), host.clone()));
        let mut clusters = BTreeMap::new();
        for g in ready {
            let subset_ready = settled.and_then(|m| m.get(g)).is_some_and(|&since| now_ms >= since + settle_ms);
            if g == base || subset_ready {
                clusters.insert(g.to_owned(), format!("outbound|{}|{g}|{host}", s.port));
            }
        }
        let mut hosts =
            vec![host.clone(), format!("{}.{}.svc", s.name, s.namespace), format!("{}.{}", s.name, s.namespace)];
        if name_count.get(s.name.as_str()) == Some(&1) {
            hosts.push(s.name.clone());
        }
        table.services.insert(format!("{}.{}", s.name, s.namespace), RawService { hosts, clusters, ports: Vec::new() });
    }
    table
}

#[cfg(test)]
mod tests {
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
        Service { namespace: ns.into(), name: name.into(), port: 9080 }
    }

    fn subsets(ns: &str, name: &str, groups: &[(&str, u64)]) -> ((String, String), BTreeMap<String, u64>) {
        ((ns.into(), fqdn(ns, name)), groups.iter().map(|(g, t)| ((*g).to_owned(), *t)).collect())
    }

    /// service key → sorted "group=cluster" for a compact comparison.
    fn summary(t: &RawTable) -> Vec<String> {
        t.services
            .iter()
            .map(|(k, s)| format!("{k}: {}", s.clusters.keys().cloned().collect::<Vec<_>>().join(",")))
            .collect()
    }

    #[test]
    fn snapshot_to_table() {
        let base = Snapshot {
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
            subsets: [subsets("bookinfo", "reviews", &[("base", 0), ("feature-1", 1_000)])].into(),
        };
        let cases: Vec<(&str, Snapshot, u64, Vec<&str>)> = vec![
            (
                "ready pod, settled subset",
                base.clone(),
                10_000,
                vec!["ratings.bookinfo: base", "reviews.bookinfo: base,feature-1"],
            ),
            ("subset too new: not yet", base.clone(), 2_000, vec!["ratings.bookinfo: base", "reviews.bookinfo: base"]),
            (
                "not ready: gone",
                Snapshot {
                    slices: vec![slice("bookinfo", "reviews", &[("reviews-0", true), ("reviews-f1", false)])],
                    ..base.clone()
                },
                10_000,
                vec!["reviews.bookinfo: base"],
            ),
            (
                "label change moves the pod",
                Snapshot {
                    pods: vec![pod("bookinfo", "reviews-0", "base"), pod("bookinfo", "reviews-f1", "team-a")],
                    ..base.clone()
                },
                10_000,
                vec!["reviews.bookinfo: base"],
            ),
            (
                "no ready base pod: service left out",
                Snapshot {
                    slices: vec![slice("bookinfo", "reviews", &[("reviews-0", false), ("reviews-f1", true)])],
                    ..base.clone()
                },
                10_000,
                vec![],
            ),
        ];
        for (what, snap, now, want) in cases {
            let t = to_table(&snap, "base", now, 5_000);
            assert_eq!(summary(&t), want, "{what}");
            Table::check(&t, "base", &Limits::default()).unwrap_or_else(|e| panic!("{what}: {e:?}"));
        }
        let t = to_table(&base, "base", 10_000, 5_000);
        let reviews = &t.services["reviews.bookinfo"];
        assert_eq!(reviews.clusters["feature-1"], "outbound|9080|feature-1|reviews.bookinfo.svc.cluster.local");
        assert_eq!(reviews.clusters["base"], "outbound|9080|base|reviews.bookinfo.svc.cluster.local");
        assert_eq!(
            reviews.hosts,
            ["reviews.bookinfo.svc.cluster.local", "reviews.bookinfo.svc", "reviews.bookinfo", "reviews"]
        );
    }

    #[test]
    fn bare_names_only_when_unique_across_namespaces() {
        let snap = Snapshot {
            services: vec![svc("a", "reviews"), svc("b", "reviews"), svc("a", "ratings")],
            pods: vec![pod("a", "r0", "base"), pod("b", "r0", "base"), pod("a", "t0", "base")],
            slices: vec![
                slice("a", "reviews", &[("r0", true)]),
                slice("b", "reviews", &[("r0", true)]),
                slice("a", "ratings", &[("t0", true)]),
            ],
            subsets: BTreeMap::new(),
        };
        let t = to_table(&snap, "base", 0, 0);
        assert!(!t.services["reviews.a"].hosts.contains(&"reviews".to_owned()));
        assert!(!t.services["reviews.b"].hosts.contains(&"reviews".to_owned()));
        assert!(t.services["ratings.a"].hosts.contains(&"ratings".to_owned()));
        Table::check(&t, "base", &Limits::default()).unwrap();
    }
}
