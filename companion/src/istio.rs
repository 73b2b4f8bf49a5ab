//! `isogroup-companion istio-manifests`: what a namespace needs so Istio can
//! route by group, for the groups the table has now. Pure: table in,
//! Kubernetes objects (as JSON values) out.
//!
//! Every group, base included, is a DestinationRule subset on the pod label
//! `isogroup.io/group`: an Istio service's default cluster holds every pod,
//! feature pods too, so base must be a subset of its own or it leaks into
//! lanes. Then either
//! - target-header mode (Istio-native): a VirtualService per service that
//!   sends `x-isogroup-target: <group>` to that subset, everything else to
//!   the base subset; or
//! - cluster-header mode: an EnvoyFilter that gives each service's outbound
//!   virtual host a first route following `x-isogroup-cluster`.

use isogroup_core::Table;
use serde_json::{json, Value};

/// The label that puts a pod into a group.
pub const GROUP_LABEL: &str = "isogroup.io/group";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    TargetHeader,
    ClusterHeader,
}

pub struct Options<'a> {
    pub namespace: &'a str,
    pub mode: Mode,
    /// Port for services whose clusters name none (`outbound|<port>|…`).
    pub default_port: u16,
}

/// The service's FQDN and port, from its Istio cluster names when they are
/// in Istio form, else from its hosts and the options.
fn fqdn_and_port(table: &Table, service: &str, opts: &Options<'_>) -> (String, u16) {
    let base = table.group_name(table.base());
    let from_cluster = isogroup_core::decide_service(table, service, Some(base), None, None);
    if let isogroup_core::Decision::Route(r) = from_cluster {
        let parts: Vec<&str> = r.cluster.split('|').collect();
        if let [_, port, _, fqdn] = parts[..] {
            if let Ok(port) = port.parse() {
                return (fqdn.to_owned(), port);
            }
        }
    }
    (format!("{service}.{}.svc.cluster.local", opts.namespace), opts.default_port)
}

/// The groups with an instance of `service`, base first.
fn groups_of(table: &Table, service: &str) -> Vec<String> {
    let base = table.group_name(table.base()).to_owned();
    let mut groups = vec![base.clone()];
    for (_, g) in table.groups() {
        if g == base {
            continue;
        }
        if let isogroup_core::Decision::Route(r) = isogroup_core::decide_service(table, service, Some(g), None, None) {
            if !r.fallback {
                groups.push(g.to_owned());
            }
        }
    }
    groups
}

pub fn render(table: &Table, opts: &Options<'_>) -> Vec<Value> {
    let base = table.group_name(table.base()).to_owned();
    let mut objects = Vec::new();
    let mut filter_patches = Vec::new();
    for (_, service) in table.services() {
        let (fqdn, port) = fqdn_and_port(table, service, opts);
        let groups = groups_of(table, service);
        let name = format!("isogroup-{service}");
        let subsets: Vec<Value> = groups.iter().map(|g| json!({ "name": g, "labels": { GROUP_LABEL: g } })).collect();
        objects.push(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": { "name": name, "namespace": opts.namespace },
            "spec": { "host": fqdn, "subsets": subsets },
        }));
        match opts.mode {
            Mode::TargetHeader => {
                let mut http: Vec<Value> = groups
                    .iter()
                    .filter(|g| **g != base)
                    .map(|g| {
                        json!({
                            "name": format!("group-{g}"),
                            "match": [{ "headers": { "x-isogroup-target": { "exact": g } } }],
                            "route": [{ "destination": { "host": fqdn, "subset": g, "port": { "number": port } } }],
                        })
                    })
                    .collect();
                http.push(json!({
                    "name": "base",
                    "route": [{ "destination": { "host": fqdn, "subset": base, "port": { "number": port } } }],
                }));
                objects.push(json!({
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "VirtualService",
                    "metadata": { "name": name, "namespace": opts.namespace },
                    "spec": { "hosts": [fqdn], "http": http },
                }));
            }
            Mode::ClusterHeader => filter_patches.push(json!({
                "applyTo": "HTTP_ROUTE",
                "match": {
                    "context": "SIDECAR_OUTBOUND",
                    "routeConfiguration": { "vhost": { "name": format!("{fqdn}:{port}") } },
                },
                "patch": {
                    "operation": "INSERT_FIRST",
                    "value": {
                        "name": "isogroup-cluster-header",
                        "match": { "prefix": "/", "headers": [{ "name": "x-isogroup-cluster", "present_match": true }] },
                        "route": { "cluster_header": "x-isogroup-cluster" },
                    },
                },
            })),
        }
    }
    if opts.mode == Mode::ClusterHeader {
        objects.push(json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": { "name": "isogroup-cluster-header", "namespace": opts.namespace },
            "spec": { "configPatches": filter_patches },
        }));
    }
    objects
}

/// Multi-document YAML. Each document is JSON, which is YAML.
pub fn to_yaml_stream(objects: &[Value]) -> String {
    objects.iter().map(|o| format!("---\n{}\n", serde_json::to_string_pretty(o).unwrap_or_default())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use isogroup_core::Limits;

    const TABLE: &str = r#"{"groups": {"feature-1": {}},
      "services": {
        "reviews": {"hosts": ["reviews"], "clusters": {
          "base": "outbound|9080|base|reviews.bookinfo.svc.cluster.local",
          "feature-1": "outbound|9080|feature-1|reviews.bookinfo.svc.cluster.local"}},
        "ratings": {"hosts": ["ratings"], "clusters": {"base": "ratings-base"}}}}"#;

    fn table() -> Table {
        Table::from_json(TABLE.as_bytes(), "base", &Limits::default()).unwrap()
    }

    #[test]
    fn target_header_mode() {
        let objects =
            render(&table(), &Options { namespace: "bookinfo", mode: Mode::TargetHeader, default_port: 8080 });
        let kinds: Vec<(&str, &str)> =
            objects.iter().map(|o| (o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap())).collect();
        assert_eq!(
            kinds,
            [
                ("DestinationRule", "isogroup-ratings"),
                ("VirtualService", "isogroup-ratings"),
                ("DestinationRule", "isogroup-reviews"),
                ("VirtualService", "isogroup-reviews")
            ]
        );
        let dr = &objects[2];
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
            json!({"host": "reviews.bookinfo.svc.cluster.local", "subset": "feature-1", "port": {"number": 9080}})
        );
        assert_eq!(vs["http"][1]["name"], "base");
        assert!(vs["http"][1].get("match").is_none(), "the last route is the default");
        assert_eq!(vs["http"][1]["route"][0]["destination"]["subset"], "base");
        // a service without Istio cluster names: FQDN from the namespace, default port
        assert_eq!(objects[0]["spec"]["host"], "ratings.bookinfo.svc.cluster.local");
        assert_eq!(objects[1]["spec"]["http"][0]["route"][0]["destination"]["port"]["number"], 8080);
    }

    #[test]
    fn cluster_header_mode() {
        let objects =
            render(&table(), &Options { namespace: "bookinfo", mode: Mode::ClusterHeader, default_port: 8080 });
        assert_eq!(objects.iter().filter(|o| o["kind"] == "DestinationRule").count(), 2);
        let ef = objects.last().unwrap();
        assert_eq!(ef["kind"], "EnvoyFilter");
        let patch = &ef["spec"]["configPatches"][1];
        assert_eq!(patch["applyTo"], "HTTP_ROUTE");
        assert_eq!(patch["match"]["context"], "SIDECAR_OUTBOUND");
        assert_eq!(patch["match"]["routeConfiguration"]["vhost"]["name"], "reviews.bookinfo.svc.cluster.local:9080");
        assert_eq!(patch["patch"]["operation"], "INSERT_FIRST");
        assert_eq!(patch["patch"]["value"]["route"]["cluster_header"], "x-isogroup-cluster");
        assert_eq!(patch["patch"]["value"]["match"]["headers"][0]["name"], "x-isogroup-cluster");
        let yaml = to_yaml_stream(&objects);
        assert_eq!(yaml.matches("---\n").count(), objects.len());
        for doc in yaml.split("---\n").filter(|d| !d.is_empty()) {
            let _: Value = serde_json::from_str(doc).unwrap();
        }
    }
}
