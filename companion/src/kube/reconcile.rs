//! `serve --kubernetes --istio target-header|cluster-header`: the leader
//! keeps each service's Istio objects (`istio::render_target`) in step with
//! its lanes, by server-side apply (field manager `isogroup`, label
//! `app.kubernetes.io/managed-by: isogroup`), and deletes what it made once
//! a service is gone. It never writes over an object it did not make: a
//! DestinationRule or VirtualService of someone else for the same host, or
//! an object of someone else under the name it would use, is a conflict
//! (logged, counted, shown in `/readyz`), and that service's objects are
//! left alone until the other object goes or is merged (docs/companion.md, "Kubernetes source").
//!
//! The plan is pure (`plan`); one task applies plans in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::Client;
use serde_json::Value;
use tokio::sync::watch;

use crate::kube::istio::{FIELD_MANAGER, MANAGED_BY};
use crate::metrics::Metrics;

/// (kind, namespace, name).
pub type Key = (String, String, String);

/// An Istio object that exists, as the watches see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// Labelled managed-by isogroup.
    pub owned: bool,
    /// The hosts it configures (a DestinationRule's host, a VirtualService's
    /// hosts), as FQDNs.
    pub hosts: Vec<String>,
}

fn key_of(o: &Value) -> Key {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (s(&o["kind"]), s(&o["metadata"]["namespace"]), s(&o["metadata"]["name"]))
}

/// What to do now.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub apply: Vec<Value>,
    pub delete: Vec<Key>,
    /// One line per service left alone, naming the other object.
    pub conflicts: Vec<String>,
}

/// `desired`: every service's objects, grouped per service (a conflict
/// leaves a whole group alone). `applied`: what this leader applied and
/// still believes in force.
pub fn plan(desired: &[Vec<Value>], existing: &[Existing], applied: &BTreeMap<Key, Value>) -> Plan {
    let mut plan = Plan::default();
    let mut wanted: BTreeSet<Key> = BTreeSet::new();
    for group in desired {
        let keys: Vec<Key> = group.iter().map(key_of).collect();
        wanted.extend(keys.iter().cloned());
        let mut conflict = None;
        for (o, key) in group.iter().zip(&keys) {
            let hosts: Vec<&str> = match key.0.as_str() {
                "DestinationRule" => o["spec"]["host"].as_str().into_iter().collect(),
                "VirtualService" => {
                    o["spec"]["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
                }
                _ => vec![],
            };
            let foreign = existing.iter().find(|e| {
                !e.owned
                    && e.kind == key.0
                    && ((e.namespace == key.1 && e.name == key.2)
                        || e.hosts.iter().any(|h| hosts.contains(&h.as_str())))
            });
            if let Some(e) = foreign {
                conflict = Some(format!(
                    "{} {}/{} (not managed by isogroup) configures {}: isogroup leaves {}/{} alone",
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
            plan.conflicts.push(c);
            continue;
        }
        plan.apply.extend(group.iter().zip(&keys).filter(|(o, k)| applied.get(*k) != Some(*o)).map(|(o, _)| o.clone()));
    }
    let mut gone: BTreeSet<Key> =
        existing.iter().filter(|e| e.owned).map(|e| (e.kind.to_owned(), e.namespace.clone(), e.name.clone())).collect();
    gone.extend(applied.keys().cloned());
    plan.delete = gone.into_iter().filter(|k| !wanted.contains(k)).collect();
    plan
}

fn api(client: &Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let version = if kind == "EnvoyFilter" { "v1alpha3" } else { "v1" };
    let gvk = GroupVersionKind::gvk("networking.istio.io", version, kind);
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// What the reconciler is asked to reach: every service's objects, and the
/// Istio objects that exist.
pub type Desired = (Vec<Vec<Value>>, Vec<Existing>);

/// Runs plans until the sender goes away; conflicts go to `conflicts`.
pub async fn run(
    client: Client,
    root_namespace: String,
    mut rx: watch::Receiver<Option<Desired>>,
    conflicts: Arc<Mutex<Vec<String>>>,
    metrics: Arc<Metrics>,
) {
    let mut applied: BTreeMap<Key, Value> = BTreeMap::new();
    // EnvoyFilters are not watched: the ones a former leader made are
    // listed when this replica first has something to reconcile (it leads
    // then, so what the former leader made until its end is listed), and
    // kept until deleted, so those no longer wanted go too.
    let mut found: Option<Vec<Existing>> = None;
    let mut list_failed = false;
    loop {
        let Some((desired, mut existing)) = rx.borrow_and_update().clone() else {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        if found.is_none() {
            let cluster_header = desired.iter().flatten().any(|o| o["kind"] == "EnvoyFilter");
            match owned_envoy_filters(&client, &root_namespace).await {
                Ok(f) => found = Some(f),
                // Target-header mode: none wanted, and its RBAC may not
                // reach the root namespace; one try is enough.
                Err(_) if !cluster_header => found = Some(vec![]),
                Err(e) if !list_failed => {
                    list_failed = true;
                    tracing::warn!(namespace = %root_namespace, error = %e, "istio: cannot list EnvoyFilters (retried on the next change)");
                }
                Err(_) => {}
            }
        }
        existing.extend(found.iter().flatten().cloned());
        let plan = plan(&desired, &existing, &applied);
        let mut failed = plan.conflicts.clone();
        for o in &plan.apply {
            let key = key_of(o);
            let params = PatchParams::apply(FIELD_MANAGER);
            match api(&client, &key.0, &key.1).patch(&key.2, &params, &Patch::Apply(o)).await {
                Ok(_) => {
                    metrics.kube_istio_writes.inc();
                    applied.insert(key, o.clone());
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    failed.push(format!(
                        "{} {}/{}: server-side apply conflict ({}): left alone",
                        key.0, key.1, key.2, e.message
                    ));
                }
                Err(e) => {
                    tracing::warn!(kind = %key.0, namespace = %key.1, name = %key.2, error = %e, "istio: apply failed (retried on the next change)")
                }
            }
        }
        for key in &plan.delete {
            match api(&client, &key.0, &key.1).delete(&key.2, &DeleteParams::default()).await {
                Ok(_) => {
                    metrics.kube_istio_writes.inc();
                    forget(key, &mut applied, &mut found);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => forget(key, &mut applied, &mut found),
                Err(e) => {
                    tracing::warn!(kind = %key.0, name = %key.2, error = %e, "istio: delete failed (retried on the next change)")
                }
            }
        }
        metrics.kube_istio_conflicts.set(failed.len() as i64);
        if let Ok(mut c) = conflicts.lock() {
            if *c != failed {
                for line in failed.iter().filter(|l| !c.contains(l)) {
                    tracing::warn!(conflict = %line, "istio: conflict");
                }
                *c = failed;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The EnvoyFilters in the root namespace labelled as isogroup's.
async fn owned_envoy_filters(client: &Client, root_namespace: &str) -> Result<Vec<Existing>, kube::Error> {
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let list = api(client, "EnvoyFilter", root_namespace).list(&ListParams::default().labels(&selector)).await?;
    Ok(list
        .into_iter()
        .map(|o| Existing {
            kind: "EnvoyFilter",
            namespace: root_namespace.to_owned(),
            name: o.metadata.name.unwrap_or_default(),
            owned: true,
            hosts: vec![],
        })
        .collect())
}

/// A deleted object: no longer applied, no longer found.
fn forget(key: &Key, applied: &mut BTreeMap<Key, Value>, found: &mut Option<Vec<Existing>>) {
    applied.remove(key);
    if let Some(found) = found {
        found.retain(|e| (e.kind, &e.namespace, &e.name) != (key.0.as_str(), &key.1, &key.2));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn obj(kind: &str, ns: &str, name: &str, host: &str) -> Value {
        let spec = if kind == "VirtualService" { json!({ "hosts": [host] }) } else { json!({ "host": host }) };
        json!({ "kind": kind, "metadata": { "namespace": ns, "name": name }, "spec": spec })
    }

    fn existing(kind: &'static str, ns: &str, name: &str, owned: bool, host: &str) -> Existing {
        Existing { kind, namespace: ns.into(), name: name.into(), owned, hosts: vec![host.into()] }
    }

    const H: &str = "reviews.bookinfo.svc.cluster.local";

    #[test]
    fn plans() {
        let reviews = vec![
            obj("DestinationRule", "bookinfo", "isogroup-reviews", H),
            obj("VirtualService", "bookinfo", "isogroup-reviews", H),
        ];
        let key = |k: &str, n: &str| (k.to_owned(), "bookinfo".to_owned(), n.to_owned());
        // nothing yet: apply both
        let p = plan(std::slice::from_ref(&reviews), &[], &BTreeMap::new());
        assert_eq!((p.apply.len(), p.delete.len(), p.conflicts.len()), (2, 0, 0));
        // applied already and unchanged: nothing to do
        let applied: BTreeMap<Key, Value> = reviews.iter().map(|o| (key_of(o), o.clone())).collect();
        assert_eq!(plan(std::slice::from_ref(&reviews), &[], &applied), Plan::default());
        // a service gone: what we made is deleted, what others made is not
        let ours =
            existing("DestinationRule", "bookinfo", "isogroup-ratings", true, "ratings.bookinfo.svc.cluster.local");
        let theirs = existing("DestinationRule", "bookinfo", "ratings", false, "ratings.bookinfo.svc.cluster.local");
        let p = plan(std::slice::from_ref(&reviews), &[ours, theirs], &applied);
        assert_eq!(p.delete, [key("DestinationRule", "isogroup-ratings")]);
        // someone else's DestinationRule for the same host: the service is left alone
        let foreign = existing("DestinationRule", "bookinfo", "reviews", false, H);
        let p = plan(std::slice::from_ref(&reviews), &[foreign], &BTreeMap::new());
        assert!(p.apply.is_empty());
        assert!(
            p.conflicts[0].contains("DestinationRule bookinfo/reviews (not managed by isogroup) configures host"),
            "{:?}",
            p.conflicts
        );
        // someone else's VirtualService for the host, or an object under our name
        let vs = existing("VirtualService", "other", "reviews-routes", false, H);
        assert_eq!(plan(std::slice::from_ref(&reviews), &[vs], &BTreeMap::new()).conflicts.len(), 1);
        let same_name = existing("VirtualService", "bookinfo", "isogroup-reviews", false, "elsewhere");
        let p = plan(std::slice::from_ref(&reviews), &[same_name], &BTreeMap::new());
        assert!(p.conflicts[0].contains("the same name"), "{:?}", p.conflicts);
        // a conflict does not delete what we made before for that service
        let p = plan(&[reviews], &[existing("DestinationRule", "bookinfo", "reviews", false, H)], &applied);
        assert!(p.delete.is_empty());
    }
}
