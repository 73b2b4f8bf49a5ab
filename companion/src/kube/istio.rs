//! The Istio objects a service needs so Istio routes by group: one renderer
//! for `isogroup-companion istio-manifests` (from a table) and for the
//! Kubernetes mode's reconciler (from the cluster). Pure: values out.
//!
//! Every group, base included, is a DestinationRule subset on the pod label
//! `isogroup.io/group`: an Istio service's default cluster holds every pod,
//! lane pods too, so base must be a subset of its own or it leaks into
//! lanes. A VirtualService in the service's namespace sends traffic without
//! a group header to the base subset, and, in target-header mode,
//! `x-isogroup-target: <group>` to that group's subset. Neither sets a
//! timeout or retries: Istio's defaults stay. In cluster-header mode an
//! EnvoyFilter gives each of the service's outbound virtual hosts
//! (`<fqdn>:<port>`) a first route following `x-isogroup-cluster`, with
//! Istio's own route defaults written out (no timeout, its retry policy),
//! since a patched-in route gets Envoy's defaults instead (15 s timeout, no
//! retries). It lives in the mesh's root namespace: istiod gives a proxy the
//! EnvoyFilters of the root namespace plus those of the proxy's own
//! namespace (`PushContext::EnvoyFilters`), and the routes patched are the
//! clients', which run in every namespace.

use std::collections::BTreeSet;

use isogroup_core::table::PORT_PLACEHOLDER;
use isogroup_core::Table;
use serde_json::{json, Value};

/// The label that puts a pod into a group.
pub const GROUP_LABEL: &str = "isogroup.io/group";
/// On every object the companion writes; it touches no object without it.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "isogroup");
/// Beside `MANAGED_BY` on every object an installation owns: its id. An
/// object is owned only with both (SPEC "Installations").
pub const INSTALLATION_LABEL: &str = "isogroup.io/installation";

/// The one server-side apply field manager of an installation's owned
/// objects (applied with force).
pub fn field_manager(installation: &str) -> String {
    format!("isogroup/{installation}")
}

/// The name of a service's DestinationRule and VirtualService (in the
/// service's own namespace, so unique by the service's name).
pub fn object_name(service: &str) -> String {
    format!("isogroup-{service}")
}

/// The name of a service's EnvoyFilter, in the mesh's root namespace: the
/// service's name and a hash of its full name, so `a-b` in `c` and `a` in
/// `b-c` do not meet (the hash part has a fixed length, so two different
/// names could only meet on a 40-bit hash collision).
pub fn envoy_filter_name(namespace: &str, service: &str) -> String {
    // FNV-1a 64 of "<name>.<namespace>", the first 40 bits in hex.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in service.bytes().chain(std::iter::once(b'.')).chain(namespace.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("isogroup-{service}-{:010x}", h >> 24)
}
/// The header the filter writes for target-header mode.
const TARGET_HEADER: &str = "x-isogroup-target";
const CLUSTER_HEADER: &str = "x-isogroup-cluster";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    TargetHeader,
    ClusterHeader,
}

/// One service as Istio knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub fqdn: String,
    /// Its ports, the default first.
    pub ports: Vec<u16>,
    /// Its groups, base first.
    pub groups: Vec<String>,
    /// The `trafficPolicy` of the most specific wildcard DestinationRule
    /// covering it (its own DestinationRule shadows that one in Istio, so
    /// the policy is carried over).
    pub traffic_policy: Option<Value>,
}

/// Where and how to render.
pub struct Options<'a> {
    pub mode: Mode,
    pub base: &'a str,
    /// The mesh's root namespace (EnvoyFilters that apply to every proxy).
    pub root_namespace: &'a str,
    /// The installation that owns the objects (`None`: printed manifests,
    /// owned by none).
    pub installation: Option<&'a str>,
}

fn metadata(name: &str, namespace: &str, installation: Option<&str>) -> Value {
    let mut labels = json!({ MANAGED_BY.0: MANAGED_BY.1 });
    if let Some(id) = installation {
        labels[INSTALLATION_LABEL] = json!(id);
    }
    json!({ "name": name, "namespace": namespace, "labels": labels })
}

/// Istio's own defaults for a route it generates (`route.DefaultRetryPolicy`
/// and a disabled timeout), for a route patched in by an EnvoyFilter.
fn istio_route_defaults() -> Value {
    json!({
        "cluster_header": CLUSTER_HEADER,
        "timeout": "0s",
        "retry_policy": {
            "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            "num_retries": 2,
            "retry_host_predicate": [{
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": { "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate" },
            }],
            "host_selection_retry_max_attempts": 5,
            "retriable_status_codes": [503],
        },
    })
}

/// The objects for one service: DestinationRule, VirtualService and (cluster
/// header) EnvoyFilter.
pub fn render_target(t: &Target, opts: &Options<'_>) -> Vec<Value> {
    let name = object_name(&t.name);
    let subsets: Vec<Value> = t.groups.iter().map(|g| json!({ "name": g, "labels": { GROUP_LABEL: g } })).collect();
    let mut rule_spec = json!({ "host": t.fqdn, "subsets": subsets });
    if let Some(policy) = &t.traffic_policy {
        rule_spec["trafficPolicy"] = policy.clone();
    }
    let mut objects = vec![json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": metadata(&name, &t.namespace, opts.installation),
        "spec": rule_spec,
    })];
    // No destination port: the request's own port, so one route serves
    // every port of the service.
    let to = |subset: &str| json!([{ "destination": { "host": t.fqdn, "subset": subset } }]);
    let mut http: Vec<Value> = match opts.mode {
        Mode::TargetHeader => t
            .groups
            .iter()
            .filter(|g| g.as_str() != opts.base)
            .map(|g| {
                json!({
                    "name": format!("group-{g}"),
                    "match": [{ "headers": { TARGET_HEADER: { "exact": g } } }],
                    "route": to(g),
                })
            })
            .collect(),
        Mode::ClusterHeader => vec![],
    };
    http.push(json!({ "name": "base", "route": to(opts.base) }));
    objects.push(json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": metadata(&name, &t.namespace, opts.installation),
        "spec": { "hosts": [t.fqdn], "http": http },
    }));
    if opts.mode == Mode::ClusterHeader {
        let patches: Vec<Value> = t
            .ports
            .iter()
            .map(|port| {
                json!({
                    "applyTo": "HTTP_ROUTE",
                    "match": {
                        "context": "SIDECAR_OUTBOUND",
                        "routeConfiguration": { "vhost": { "name": format!("{}:{port}", t.fqdn) } },
                    },
                    "patch": {
                        "operation": "INSERT_FIRST",
                        "value": {
                            "name": "isogroup-cluster-header",
                            "match": { "prefix": "/", "headers": [{ "name": CLUSTER_HEADER, "present_match": true }] },
                            "route": istio_route_defaults(),
                        },
                    },
                })
            })
            .collect();
        objects.push(json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": metadata(&envoy_filter_name(&t.namespace, &t.name), opts.root_namespace, opts.installation),
            "spec": { "configPatches": patches },
        }));
    }
    objects
}

/// Whether the DestinationRule host `pattern` (a wildcard: `*`, `*.local`,
/// `*.ns.svc.cluster.local`) covers `fqdn`, and how specifically: the
/// length of the suffix it names (`*`: 0).
pub fn wildcard_covers(pattern: &str, fqdn: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    let suffix = pattern.strip_prefix("*.")?;
    let rest = fqdn.strip_suffix(suffix)?;
    rest.ends_with('.').then_some(suffix.len())
}

/// The `trafficPolicy` a service's generated DestinationRule carries: that
/// of the wildcard DestinationRule Istio would have applied without it.
/// Istio looks in the service's namespace, then the mesh's root namespace,
/// and in each takes the most specific host; ties by name. `rules` are
/// (namespace, name, host, trafficPolicy) of wildcard DestinationRules.
pub fn carried_policy<'r>(
    namespace: &str,
    fqdn: &str,
    root_namespace: &str,
    rules: impl Iterator<Item = (&'r str, &'r str, &'r str, &'r Value)>,
) -> Option<Value> {
    // (namespace first, then the longest suffix, then the name)
    type Rank<'n> = (u8, std::cmp::Reverse<usize>, &'n str);
    let mut best: Option<(Rank<'r>, &Value)> = None;
    for (ns, name, host, policy) in rules {
        let place = if ns == namespace {
            0
        } else if ns == root_namespace {
            1
        } else {
            continue;
        };
        let Some(specific) = wildcard_covers(host, fqdn) else { continue };
        let rank = (place, std::cmp::Reverse(specific), name);
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((rank, policy));
        }
    }
    best.map(|(_, p)| p.clone())
}

/// `istio-manifests`: the services of a table, as targets. The FQDN and
/// port come from Istio cluster names (`outbound|<port>|<subset>|<fqdn>`,
/// `{port}` with the service's `ports`), else from the service's name, the
/// namespace given and the default port.
pub fn targets_of(table: &Table, raw: &isogroup_core::RawTable, namespace: &str, default_port: u16) -> Vec<Target> {
    let base = table.group_name(table.base()).to_owned();
    let mut out = vec![];
    for (key, service) in &raw.services {
        let istio = service.clusters.get(&base).and_then(|c| {
            let parts: Vec<&str> = c.split('|').collect();
            match parts[..] {
                ["outbound", port, _, fqdn] => Some((port.to_owned(), fqdn.to_owned())),
                _ => None,
            }
        });
        let (fqdn, ports) = match istio {
            Some((port, fqdn)) if port == PORT_PLACEHOLDER => (fqdn, service.ports.clone()),
            Some((port, fqdn)) => (fqdn, port.parse().map(|p| vec![p]).unwrap_or_else(|_| vec![default_port])),
            None => (format!("{key}.{namespace}.svc.cluster.local"), vec![default_port]),
        };
        let ports = if ports.is_empty() { vec![default_port] } else { ports };
        // <name>.<namespace>.svc.cluster.local: the service's own namespace.
        let mut labels = fqdn.split('.');
        let name = labels.next().unwrap_or(key).to_owned();
        let ns = labels.next().unwrap_or(namespace).to_owned();
        let mut groups: BTreeSet<&String> = service.clusters.keys().collect();
        groups.remove(&base);
        let groups = std::iter::once(base.clone()).chain(groups.into_iter().cloned()).collect();
        out.push(Target { namespace: ns, name, fqdn, ports, groups, traffic_policy: None });
    }
    out
}

/// Multi-document YAML. Each document is JSON, which is YAML.
pub fn to_yaml_stream(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("---\n{}\n", serde_json::to_string_pretty(o).unwrap_or_default())).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use isogroup_core::{Limits, RawTable};

    const TABLE: &str = r#"{"groups": {"feature-1": {}},
      "services": {
        "reviews": {"hosts": ["reviews"], "ports": [9080, 9443], "clusters": {
          "base": "outbound|{port}|base|reviews.bookinfo.svc.cluster.local",
          "feature-1": "outbound|{port}|feature-1|reviews.bookinfo.svc.cluster.local"}},
        "ratings": {"hosts": ["ratings"], "clusters": {"base": "ratings-base"}}}}"#;

    fn objects(mode: Mode) -> Vec<Value> {
        let raw: RawTable = serde_json::from_str(TABLE).unwrap();
        let table = Table::check(&raw, "base", &Limits::default()).unwrap();
        let opts = Options { mode, base: "base", root_namespace: "istio-system", installation: Some("mesh-a") };
        targets_of(&table, &raw, "default", 8080).iter().flat_map(|t| render_target(t, &opts)).collect()
    }

    fn names(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                format!(
                    "{} {}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["namespace"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    #[test]
    fn target_header_mode() {
        let objects = objects(Mode::TargetHeader);
        assert_eq!(
            names(&objects),
            [
                "DestinationRule default/isogroup-ratings",
                "VirtualService default/isogroup-ratings",
                "DestinationRule bookinfo/isogroup-reviews",
                "VirtualService bookinfo/isogroup-reviews"
            ]
        );
        let dr = &objects[2];
        assert_eq!(dr["metadata"]["labels"]["app.kubernetes.io/managed-by"], "isogroup");
        assert_eq!(dr["metadata"]["labels"]["isogroup.io/installation"], "mesh-a");
        assert!(dr["spec"].get("trafficPolicy").is_none(), "no wildcard rule: no policy");
        assert_eq!(dr["spec"]["host"], "reviews.bookinfo.svc.cluster.local");
        assert_eq!(
            dr["spec"]["subsets"],
            json!([{"name": "base", "labels": {"isogroup.io/group": "base"}}, {"name": "feature-1", "labels": {"isogroup.io/group": "feature-1"}}])
        );
        let vs = &objects[3]["spec"];
        assert_eq!(vs["hosts"], json!(["reviews.bookinfo.svc.cluster.local"]));
        assert_eq!(vs["http"][0]["match"][0]["headers"]["x-isogroup-target"]["exact"], "feature-1");
        assert_eq!(
            vs["http"][0]["route"][0]["destination"],
            json!({"host": "reviews.bookinfo.svc.cluster.local", "subset": "feature-1"})
        );
        assert_eq!(vs["http"][1]["name"], "base");
        assert!(vs["http"][1].get("match").is_none(), "the last route is the default");
        assert_eq!(vs["http"][1]["route"][0]["destination"]["subset"], "base");
        for route in vs["http"].as_array().unwrap() {
            assert!(route.get("timeout").is_none() && route.get("retries").is_none(), "Istio's defaults kept");
        }
        // a service without Istio cluster names: FQDN from the namespace given
        assert_eq!(objects[0]["spec"]["host"], "ratings.default.svc.cluster.local");
    }

    #[test]
    fn cluster_header_mode() {
        let objects = objects(Mode::ClusterHeader);
        let reviews: Vec<&Value> = objects
            .iter()
            .filter(|o| o["metadata"]["name"].as_str().unwrap().starts_with("isogroup-reviews"))
            .collect();
        assert_eq!(
            names(&reviews.iter().map(|v| (*v).clone()).collect::<Vec<_>>()),
            [
                "DestinationRule bookinfo/isogroup-reviews",
                "VirtualService bookinfo/isogroup-reviews",
                "EnvoyFilter istio-system/isogroup-reviews-4e01fc8a18"
            ]
        );
        // un-headered traffic goes to the base subset
        let vs = &reviews[1]["spec"]["http"];
        assert_eq!(vs.as_array().unwrap().len(), 1);
        assert_eq!(vs[0]["route"][0]["destination"]["subset"], "base");
        // one patch per port, each keeping Istio's route defaults
        let patches = reviews[2]["spec"]["configPatches"].as_array().unwrap();
        let vhosts: Vec<&str> =
            patches.iter().map(|p| p["match"]["routeConfiguration"]["vhost"]["name"].as_str().unwrap()).collect();
        assert_eq!(vhosts, ["reviews.bookinfo.svc.cluster.local:9080", "reviews.bookinfo.svc.cluster.local:9443"]);
        let patch = &patches[0];
        assert_eq!(
            (patch["applyTo"].as_str(), patch["match"]["context"].as_str()),
            (Some("HTTP_ROUTE"), Some("SIDECAR_OUTBOUND"))
        );
        assert_eq!(patch["patch"]["operation"], "INSERT_FIRST");
        let route = &patch["patch"]["value"]["route"];
        assert_eq!(route["cluster_header"], "x-isogroup-cluster");
        assert_eq!(route["timeout"], "0s");
        assert_eq!(route["retry_policy"]["num_retries"], 2);
        let yaml = to_yaml_stream(&objects);
        assert_eq!(yaml.matches("---\n").count(), objects.len());
    }

    #[test]
    fn envoy_filter_names_do_not_collide_across_namespaces() {
        // `a-b` in `c` and `a` in `b-c`: once both `isogroup-a-b-c`
        let (one, other) = (envoy_filter_name("c", "a-b"), envoy_filter_name("b-c", "a"));
        assert_ne!(one, other);
        assert!(one.starts_with("isogroup-a-b-") && other.starts_with("isogroup-a-"), "{one} {other}");
        assert_eq!(one, envoy_filter_name("c", "a-b"), "stable");
        // a DNS-1123 name at the longest service name
        let long = envoy_filter_name("ns", &"s".repeat(63));
        assert!(long.len() <= 253 && long.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
    }

    #[test]
    fn wildcard_policies_are_carried_most_specific_first() {
        let fqdn = "reviews.bookinfo.svc.cluster.local";
        assert_eq!(wildcard_covers("*", fqdn), Some(0));
        assert_eq!(wildcard_covers("*.local", fqdn), Some(5));
        assert_eq!(wildcard_covers("*.svc.cluster.local", fqdn), Some(17));
        assert_eq!(wildcard_covers("*.bookinfo.svc.cluster.local", fqdn), Some(26));
        assert_eq!(wildcard_covers("*.other.svc.cluster.local", fqdn), None);
        assert_eq!(wildcard_covers("*.ookinfo.svc.cluster.local", fqdn), None, "a whole label");
        assert_eq!(wildcard_covers("reviews.bookinfo.svc.cluster.local", fqdn), None, "not a wildcard");
        let p = |n: u64| json!({ "connectionPool": { "tcp": { "maxConnections": n } } });
        let (p1, p2, p3, p4, p5) = (p(1), p(2), p(3), p(4), p(5));
        let rules = [
            ("istio-system", "mesh", "*", &p1),
            ("istio-system", "local", "*.local", &p2),
            ("istio-system", "ns", "*.bookinfo.svc.cluster.local", &p3),
            ("bookinfo", "all", "*", &p4),
            ("elsewhere", "other", "*.bookinfo.svc.cluster.local", &p5),
        ];
        let pick = |n: usize| carried_policy("bookinfo", fqdn, "istio-system", rules[..n].iter().copied());
        assert_eq!(pick(1), Some(p1.clone()), "the mesh root's `*`");
        assert_eq!(pick(2), Some(p2.clone()), "`*.local` is more specific");
        assert_eq!(pick(3), Some(p3.clone()), "the namespace's hosts more still");
        assert_eq!(pick(4), Some(p4.clone()), "the service's own namespace before the root");
        assert_eq!(pick(5), Some(p4.clone()), "another namespace's rule does not count");
        assert_eq!(carried_policy("bookinfo", fqdn, "istio-system", rules[4..].iter().copied()), None);
        // rendered into the DestinationRule
        let mut t = Target {
            namespace: "bookinfo".into(),
            name: "reviews".into(),
            fqdn: fqdn.into(),
            ports: vec![9080],
            groups: vec!["base".into()],
            traffic_policy: Some(json!({ "tls": { "mode": "ISTIO_MUTUAL" } })),
        };
        let opts =
            Options { mode: Mode::TargetHeader, base: "base", root_namespace: "istio-system", installation: None };
        let dr = &render_target(&t, &opts)[0];
        assert_eq!(dr["spec"]["trafficPolicy"], json!({ "tls": { "mode": "ISTIO_MUTUAL" } }));
        assert!(dr["metadata"]["labels"].get("isogroup.io/installation").is_none(), "printed: owned by none");
        t.traffic_policy = None;
        assert!(render_target(&t, &opts)[0]["spec"].get("trafficPolicy").is_none());
    }
}
