//! `serve --kubernetes --istio target-header|cluster-header`: the leader
//! keeps each service's Istio objects (`istio::render_target`) as wanted,
//! level-triggered: every pass compares the wanted objects with the objects
//! as the watches observe them (`kube::source`'s mirrors, handed over with
//! each wanted set), never with a memory of what was sent (SPEC "Reconcile
//! is level-triggered"). So a `kubectl delete` or an edit of a field the
//! leader sets is undone on the next pass, a new leader finds what an old
//! one left, and a steady state makes no writes.
//!
//! - Owned objects carry `app.kubernetes.io/managed-by: isogroup` and
//!   `isogroup.io/installation: <id>`; only those are written, by forced
//!   server-side apply with the one field manager `isogroup/<id>`, and only
//!   those are deleted (with the observed `resourceVersion` and uid as
//!   preconditions). Drift is judged on the fields the wanted object sets.
//! - Anyone else's DestinationRule or VirtualService for the same host, or
//!   an object not owned under the name it would use, is a conflict
//!   (logged, counted, shown in `/readyz`), and that service's objects are
//!   left alone (docs/companion.md, "Kubernetes source").
//! - A DestinationRule is applied only when the observed VirtualService
//!   names no subset it would drop, and a VirtualService only when the
//!   observed DestinationRule has every subset it names: subsets go in
//!   before the routes to them and come out after.
//! - A failed write is retried after a jittered, growing backoff; every
//!   `resync` the wanted set is compared again even without a change.
//!
//! Why not `kube::runtime::Controller`: its reconcile is per object of one
//! root kind, but what is wanted here is derived per service from five
//! watched kinds, not a Kubernetes object; its self-trigger is fed by
//! `applied_objects()`, so a deleted owned object would be put back only at
//! the next requeue; and one controller per kind cannot order subsets
//! before the routes that name them. The watches are kube-rs
//! `runtime::watcher`s (`kube::watch`), shared with the table, so the
//! reconciler reads the same watch cache the table is built from (and a
//! lane enters the table only once its subset, route or EnvoyFilter is
//! observed there).
//!
//! The plan is pure (`plan`); one task carries plans out.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, Preconditions};
use kube::Client;
use serde_json::Value;
use tokio::sync::watch;

use crate::kube::watch::{Jittered, Timing};
use crate::metrics::Metrics;

/// (kind, namespace, name).
pub type Key = (String, String, String);

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

fn key_of(o: &Value) -> Key {
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

fn resource_version(o: &Value) -> Option<&str> {
    o["metadata"]["resourceVersion"].as_str()
}

/// A write made and not yet observed: the observed resourceVersion it was
/// made against, and what it wrote (`None`: a delete).
pub type InFlight = BTreeMap<Key, (Option<String>, Option<Value>)>;

/// `desired`: every service's objects, grouped per service (a conflict
/// leaves a whole group alone). `existing`: the Istio objects observed.
/// `in_flight`: writes not yet observed (not repeated meanwhile).
pub fn plan(desired: &[Vec<Value>], existing: &[Existing], in_flight: &InFlight) -> Plan {
    let mut plan = Plan::default();
    let observed: BTreeMap<Key, &Arc<Value>> = existing
        .iter()
        .filter(|e| e.owned)
        .filter_map(|e| Some(((e.kind.to_owned(), e.namespace.clone(), e.name.clone()), e.observed.as_ref()?)))
        .collect();
    let seen = |k: &Key| observed.get(k).and_then(|o| resource_version(o)).map(str::to_owned);
    // Objects not owned, by (kind, namespace, name) and by (kind, host):
    // the first in `existing` that shares either is the conflict.
    let mut foreign_by_name: BTreeMap<(&str, &str, &str), usize> = BTreeMap::new();
    let mut foreign_by_host: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (i, e) in existing.iter().enumerate().filter(|(_, e)| !e.owned) {
        foreign_by_name.entry((e.kind, &e.namespace, &e.name)).or_insert(i);
        for h in &e.hosts {
            foreign_by_host.entry((e.kind, h)).or_insert(i);
        }
    }
    let sent =
        |k: &Key, what: Option<&Value>| in_flight.get(k).is_some_and(|(rv, v)| *rv == seen(k) && v.as_ref() == what);
    let mut wanted: BTreeSet<Key> = BTreeSet::new();
    let mut later = vec![];
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
            let by_name = foreign_by_name.get(&(key.0.as_str(), key.1.as_str(), key.2.as_str())).copied();
            let by_host = hosts.iter().filter_map(|h| foreign_by_host.get(&(key.0.as_str(), *h)).copied()).min();
            let foreign = by_name.into_iter().chain(by_host).min().map(|i| &existing[i]);
            if let Some(e) = foreign {
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
            plan.conflicts.push(c);
            continue;
        }
        let find = |kind: &str| group.iter().zip(&keys).find(|(_, k)| k.0 == kind);
        let (rule, route) = (find("DestinationRule"), find("VirtualService"));
        for (o, key) in group.iter().zip(&keys) {
            let current = observed.get(key);
            if current.is_some_and(|c| as_wanted(o, c)) || sent(key, Some(o)) {
                continue;
            }
            // Subsets before the routes that name them, out after them.
            let ready = match key.0.as_str() {
                "DestinationRule" => {
                    let now_routed = route.and_then(|(_, k)| observed.get(k)).map(|vs| routed(vs));
                    let keeps = subsets(o);
                    now_routed.is_none_or(|r| r.is_subset(&keeps))
                }
                "VirtualService" => {
                    let have = rule.and_then(|(_, k)| observed.get(k)).map(|dr| subsets(dr));
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
    let gone: Vec<(&Key, &&Arc<Value>)> =
        observed.iter().filter(|(k, _)| !wanted.contains(*k) && !sent(k, None)).collect();
    // A DestinationRule goes once no route of ours under its name is left.
    let mut rules = vec![];
    for (k, o) in gone {
        if k.0 != "DestinationRule" {
            plan.delete.push((k.clone(), Some(Arc::clone(o))));
        } else if observed.contains_key(&("VirtualService".to_owned(), k.1.clone(), k.2.clone())) {
            plan.waiting += 1;
        } else {
            rules.push((k.clone(), Some(Arc::clone(o))));
        }
    }
    plan.delete.extend(rules);
    plan
}

fn api(client: &Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let version = if kind == "EnvoyFilter" { "v1alpha3" } else { "v1" };
    let gvk = GroupVersionKind::gvk("networking.istio.io", version, kind);
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// What the reconciler is asked to reach: every service's objects, and the
/// Istio objects observed.
pub type Desired = (Vec<Vec<Value>>, Vec<Existing>);

/// How long a write may go unobserved before it is made again.
const IN_FLIGHT_MAX: Duration = Duration::from_secs(2);

/// How the reconciler runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The field manager of owned objects (`isogroup/<installation>`).
    pub manager: String,
    /// Compare again this often without a change.
    pub resync: Duration,
    /// Backoff of failed writes.
    pub timing: Timing,
    /// Every write fenced: only while leading, no later than the renew
    /// deadline, creates only within it.
    pub fence: crate::kube::leader::Fence,
    /// This replica, as its Events name it (`reportingInstance`).
    pub instance: String,
}

/// Carries out plans until the sender goes away (`None`: nothing wanted,
/// e.g. not the leader: no write at all); conflicts go to `conflicts`.
pub async fn run(
    client: Client,
    settings: Settings,
    mut rx: watch::Receiver<Option<Desired>>,
    conflicts: Arc<Mutex<Vec<String>>>,
    metrics: Arc<Metrics>,
) {
    // Writes not observed yet, and when they were made (forgotten after a
    // resync period: the watch has surely shown them by then, or failed).
    let mut in_flight: BTreeMap<Key, (Option<String>, Option<Value>, Instant)> = BTreeMap::new();
    // Failed writes: their backoff, and when they may be tried again.
    let mut retry: BTreeMap<Key, (Jittered, Instant)> = BTreeMap::new();
    let mut next_resync = Instant::now() + settings.resync;
    let mut reports = Reports::default();
    loop {
        let current = rx.borrow_and_update().clone();
        if current.is_none() {
            // Nothing wanted (not the leader): what was pending is dropped.
            (in_flight, retry) = (BTreeMap::new(), BTreeMap::new());
            reports = Reports::default();
        }
        if let Some((desired, existing)) = current {
            // Owned objects as observed, by key (looked up per object).
            let observed: BTreeMap<Key, &Arc<Value>> = existing
                .iter()
                .filter(|e| e.owned)
                .filter_map(|e| Some(((e.kind.to_owned(), e.namespace.clone(), e.name.clone()), e.observed.as_ref()?)))
                .collect();
            let observed_of = |k: &Key| observed.get(k).map(|o| Arc::clone(o));
            let observed_rv = |k: &Key| observed.get(k).and_then(|o| resource_version(o).map(str::to_owned));
            // A write is observed once its object's version moved on (then
            // what is observed decides again); one never observed is
            // forgotten after a while (the watch may have missed it).
            let forget = settings.resync.min(IN_FLIGHT_MAX);
            in_flight.retain(|k, (rv, _, at)| at.elapsed() < forget && *rv == observed_rv(k));
            let view: InFlight = in_flight.iter().map(|(k, (rv, v, _))| (k.clone(), (rv.clone(), v.clone()))).collect();
            let plan = plan(&desired, &existing, &view);
            let due: BTreeSet<Key> =
                plan.apply.iter().map(key_of).chain(plan.delete.iter().map(|(k, _)| k.clone())).collect();
            retry.retain(|k, _| due.contains(k));
            let mut failed = plan.conflicts.clone();
            let now = Instant::now();
            let mut events: Vec<Value> = vec![];
            for o in &plan.apply {
                let key = key_of(o);
                if retry.get(&key).is_some_and(|(_, at)| *at > now) {
                    continue;
                }
                let params = PatchParams::apply(&settings.manager).force();
                // Fenced: an update carries the resourceVersion observed
                // (a precondition); with none observed it creates, which the
                // fence allows only within the renew deadline.
                let mut fenced = o.clone();
                if let Some(rv) = observed_rv(&key) {
                    fenced["metadata"]["resourceVersion"] = Value::String(rv);
                }
                let (objects, patch) = (api(&client, &key.0, &key.1), Patch::Apply(&fenced));
                match settings.fence.write(objects.patch(&key.2, &params, &patch)).await.map_err(fenced_error) {
                    Ok(_) => {
                        metrics.kube_istio_writes.inc();
                        retry.remove(&key);
                        in_flight.insert(key.clone(), (observed_rv(&key), Some(o.clone()), Instant::now()));
                        if let Some(observed) = observed_of(&key) {
                            events.extend(reverted(&key, o, &observed, &settings));
                        }
                    }
                    Err(e) => {
                        if let kube::Error::Api(e) = &e {
                            // A stale precondition is no conflict: decided
                            // again once the watch shows the object.
                            if e.code == 409 && !stale_precondition(e) {
                                failed.push(format!("{} {}/{}: apply refused ({})", key.0, key.1, key.2, e.message));
                            }
                        }
                        let wait = backoff(&mut retry, &key, &settings.timing);
                        tracing::warn!(kind = %key.0, namespace = %key.1, name = %key.2, error = %e, retry_in = ?wait, "istio: apply failed");
                    }
                }
            }
            for (key, observed) in &plan.delete {
                if retry.get(key).is_some_and(|(_, at)| *at > now) {
                    continue;
                }
                // Only the object as observed: not one changed or made anew since.
                let preconditions = observed.as_ref().map(|o| Preconditions {
                    resource_version: resource_version(o).map(str::to_owned),
                    uid: o["metadata"]["uid"].as_str().map(str::to_owned),
                });
                let params = DeleteParams { preconditions, ..DeleteParams::default() };
                match settings
                    .fence
                    .write(api(&client, &key.0, &key.1).delete(&key.2, &params))
                    .await
                    .map_err(fenced_error)
                {
                    Ok(_) => {
                        metrics.kube_istio_writes.inc();
                        retry.remove(key);
                        in_flight.insert(key.clone(), (observed_rv(key), None, Instant::now()));
                    }
                    Err(kube::Error::Api(e)) if e.code == 404 => {
                        retry.remove(key);
                    }
                    Err(e) => {
                        let wait = backoff(&mut retry, key, &settings.timing);
                        tracing::warn!(kind = %key.0, name = %key.2, error = %e, retry_in = ?wait, "istio: delete failed");
                    }
                }
            }
            // Fields other managers set that the leader does not: kept,
            // reported once (looked at again only when the object changed).
            let wanted: BTreeMap<Key, &Value> = desired.iter().flatten().map(|o| (key_of(o), o)).collect();
            reports.checked.retain(|k, _| wanted.contains_key(k));
            for (key, o) in &wanted {
                let Some(observed) = observed_of(key) else { continue };
                let rv = resource_version(&observed).map(str::to_owned);
                if reports.checked.get(key) == Some(&rv) {
                    continue;
                }
                reports.checked.insert(key.clone(), rv);
                events.extend(kept(key, o, &observed, &settings));
            }
            reports.write(&client, &settings, events).await;
            metrics.kube_istio_conflicts.set(failed.len() as i64);
            if let Ok(mut c) = conflicts.lock() {
                if *c != failed {
                    for line in failed.iter().filter(|l| !c.contains(l)) {
                        tracing::warn!(conflict = %line, "istio: conflict");
                    }
                    *c = failed;
                }
            }
        }
        let wake = retry.values().map(|(_, at)| *at).min().map_or(next_resync, |at| at.min(next_resync));
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= next_resync {
                    metrics.kube_istio_resyncs.inc();
                    next_resync = Instant::now() + settings.resync;
                }
            }
        }
    }
}

/// Events written, and what was looked at for fields others keep.
#[derive(Default)]
struct Reports {
    /// Event names created (or found created): not written again.
    reported: BTreeSet<String>,
    /// Event names whose create failed, and when (tried again a resync later).
    failing: BTreeMap<String, Instant>,
    /// The resourceVersion at which each owned object was looked at.
    checked: BTreeMap<Key, Option<String>>,
}

/// Most Event names remembered (past it, forgotten: a repeat is `409`).
const REPORTED_MAX: usize = 10_000;

impl Reports {
    /// Creates each Event not created yet (fenced: a create, only within
    /// the renew deadline).
    async fn write(&mut self, client: &Client, settings: &Settings, events: Vec<Value>) {
        for e in events {
            let (Some(name), Some(ns)) = (e["metadata"]["name"].as_str(), e["metadata"]["namespace"].as_str()) else {
                continue;
            };
            let name = name.to_owned();
            if self.reported.contains(&name) || self.failing.get(&name).is_some_and(|at| at.elapsed() < settings.resync)
            {
                continue;
            }
            let event: k8s_openapi::api::events::v1::Event = match serde_json::from_value(e.clone()) {
                Ok(e) => e,
                Err(err) => {
                    tracing::error!(event = %name, error = %err, "istio: an Event that does not parse (a bug)");
                    continue;
                }
            };
            let api: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
            match settings
                .fence
                .write(api.create(&kube::api::PostParams::default(), &event))
                .await
                .map_err(fenced_error)
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(err) => {
                    if self.failing.insert(name.clone(), Instant::now()).is_none() {
                        tracing::warn!(event = %name, error = %err, "istio: cannot write an Event (retrying)");
                    }
                    continue;
                }
            }
            self.failing.remove(&name);
            if self.reported.len() >= REPORTED_MAX {
                self.reported.clear();
            }
            self.reported.insert(name);
        }
    }
}

fn regarding<'a>(key: &'a Key, observed: &'a Value) -> crate::kube::drift::Regarding<'a> {
    let api_version = if key.0 == "EnvoyFilter" { "networking.istio.io/v1alpha3" } else { "networking.istio.io/v1" };
    crate::kube::drift::Regarding { api_version, kind: &key.0, observed }
}

fn now_micros() -> String {
    k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Micros, true)
}

/// The Event for an owned object put back: the fields it puts back and the
/// managers (from `managedFields`) that had changed them. One per edit
/// (the observed resourceVersion).
fn reverted(key: &Key, wanted: &Value, observed: &Value, settings: &Settings) -> Option<Value> {
    use crate::kube::drift;
    let paths = drift::drifted(wanted, observed);
    if paths.is_empty() {
        return None;
    }
    let managed = &observed["metadata"]["managedFields"];
    let mut by: Vec<String> = vec![];
    for p in &paths {
        for m in drift::owners(managed, p, &settings.manager) {
            if !by.contains(&m) {
                by.push(m);
            }
        }
    }
    let who = if by.is_empty() { "another writer (no field manager owns them)".to_owned() } else { by.join(", ") };
    let note = format!("{} changed by {who}: put back as {} sets them", drift::shown(&paths), settings.manager);
    let meta = &observed["metadata"];
    let occurrence =
        [meta["uid"].as_str().unwrap_or_default(), resource_version(observed).unwrap_or_default(), "reverted"];
    let now = now_micros();
    Some(drift::event(&regarding(key, observed), &occurrence, true, "EditReverted", &note, &settings.instance, &now))
}

/// The Events for fields of an owned object set only by other managers:
/// left alone, one Event per manager and set of fields.
fn kept(key: &Key, wanted: &Value, observed: &Value, settings: &Settings) -> Vec<Value> {
    use crate::kube::drift;
    let uid = observed["metadata"]["uid"].as_str().unwrap_or_default();
    let now = now_micros();
    drift::kept(wanted, &observed["metadata"]["managedFields"], &settings.manager)
        .into_iter()
        .map(|(manager, paths)| {
            let fields = drift::shown(&paths);
            let note = format!("{fields} set by {manager}: kept ({} does not set them)", settings.manager);
            let occurrence = [uid, manager.as_str(), fields.as_str(), "kept"];
            drift::event(&regarding(key, observed), &occurrence, false, "FieldsKept", &note, &settings.instance, &now)
        })
        .collect()
}

/// A fenced write's failure as a client error (not leading, or no answer
/// before the renew deadline: a timeout, retried only by a leader).
fn fenced_error(e: crate::kube::leader::Fenced) -> kube::Error {
    match e {
        crate::kube::leader::Fenced::Api(e) => e,
        other => kube::Error::Service(other.to_string().into()),
    }
}

/// `409` for a resourceVersion that is no longer the object's (not a field
/// owned by another manager).
fn stale_precondition(e: &kube::core::ErrorResponse) -> bool {
    e.reason == "Conflict" && (e.message.contains("has been modified") || e.message.contains("Precondition failed"))
}

/// Schedules the next try of `key`; the wait.
fn backoff(retry: &mut BTreeMap<Key, (Jittered, Instant)>, key: &Key, timing: &Timing) -> Duration {
    let entry = retry.entry(key.clone()).or_insert_with(|| (Jittered::new(timing), Instant::now()));
    let wait = entry.0.next().unwrap_or(timing.backoff_max);
    entry.1 = Instant::now() + wait;
    wait
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
