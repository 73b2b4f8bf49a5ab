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
/// The server-side apply field manager.
pub const FIELD_MANAGER: &str = "isogroup";
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
}

/// Where and how to render.
pub struct Options<'a> {
    pub mode: Mode,
    pub base: &'a str,
    /// The mesh's root namespace (EnvoyFilters that apply to every proxy).
    pub root_namespace: &'a str,
}

fn metadata(name: &str, namespace: &str) -> Value {
    json!({ "name": name, "namespace": namespace, "labels": { MANAGED_BY.0: MANAGED_BY.1 } })
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
    let name = format!("isogroup-{}", t.name);
    let subsets: Vec<Value> = t.groups.iter().map(|g| json!({ "name": g, "labels": { GROUP_LABEL: g } })).collect();
    let mut objects = vec![json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": metadata(&name, &t.namespace),
        "spec": { "host": t.fqdn, "subsets": subsets },
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
        "metadata": metadata(&name, &t.namespace),
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
            "metadata": metadata(&format!("isogroup-{}-{}", t.name, t.namespace), opts.root_namespace),
            "spec": { "configPatches": patches },
        }));
    }
    objects
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
        out.push(Target { namespace: ns, name, fqdn, ports, groups });
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
        let opts = Options { mode, base: "base", root_namespace: "istio-system" };
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
                "EnvoyFilter istio-system/isogroup-reviews-bookinfo"
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
}
