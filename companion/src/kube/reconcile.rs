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
//! The plan is pure (`kube::plan`); one task carries plans out, for what
//! each change touched (an event about one service plans that service).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, Preconditions};
use kube::Client;
use serde_json::Value;
use tokio::sync::watch;

use crate::kube::plan::{key_of, resource_version, Changes, InFlight, Key, ServiceKey, View};
use crate::kube::watch::{Jittered, Timing};
use crate::metrics::Metrics;

fn api(client: &Client, kind: &str, namespace: &str) -> Api<DynamicObject> {
    let version = if kind == "EnvoyFilter" { "v1alpha3" } else { "v1" };
    let gvk = GroupVersionKind::gvk("networking.istio.io", version, kind);
    Api::namespaced_with(client.clone(), namespace, &ApiResource::from_gvk(&gvk))
}

/// From the source to the reconciler: changes pile up until a pass takes
/// them (a pass takes all there are: bursts coalesce).
#[derive(Debug, Default)]
struct Pending {
    /// Leading: something is wanted. Not: nothing is (no write at all).
    leading: bool,
    /// Stopped since the last pass: what was pending is dropped.
    stopped: bool,
    changes: Changes,
}

/// The source's end: what is wanted and observed, as it changes.
#[derive(Debug)]
pub struct Outbox {
    pending: Arc<Mutex<Pending>>,
    wake: watch::Sender<()>,
}

/// The reconciler's end.
#[derive(Debug)]
pub struct Inbox {
    pending: Arc<Mutex<Pending>>,
    wake: watch::Receiver<()>,
}

/// A link from the source to the reconciler; the reconciler ends when the
/// `Outbox` goes away.
pub fn channel() -> (Outbox, Inbox) {
    let pending = Arc::new(Mutex::new(Pending::default()));
    let (tx, rx) = watch::channel(());
    (Outbox { pending: pending.clone(), wake: tx }, Inbox { pending, wake: rx })
}

impl Outbox {
    /// Leading: `changes` on top of what is pending. The first changes
    /// after a `stop` must be whole (the reconciler dropped its view).
    pub fn send(&self, changes: Changes) {
        let Ok(mut p) = self.pending.lock() else { return };
        if p.leading && changes.is_empty() {
            return;
        }
        p.leading = true;
        p.changes.merge(changes);
        drop(p);
        self.wake.send_modify(|()| {});
    }

    /// Not leading: nothing is wanted; what is pending is dropped.
    pub fn stop(&self) {
        let Ok(mut p) = self.pending.lock() else { return };
        if !p.leading {
            return;
        }
        *p = Pending { leading: false, stopped: true, changes: Changes::default() };
        drop(p);
        self.wake.send_modify(|()| {});
    }
}

impl Inbox {
    /// (stopped since the last take, leading, the changes).
    fn take(&mut self) -> (bool, bool, Changes) {
        self.wake.borrow_and_update();
        let Ok(mut p) = self.pending.lock() else { return (false, false, Changes::default()) };
        let stopped = std::mem::take(&mut p.stopped);
        (stopped, p.leading, std::mem::take(&mut p.changes))
    }
}

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

/// Carries out plans until the `Outbox` goes away (not leading: no write
/// at all); conflicts go to `conflicts`. Each pass plans what its changes
/// touched (`kube::plan`), plus writes to retry and writes made and not
/// observed; every `resync`, everything.
pub async fn run(
    client: Client,
    settings: Settings,
    mut inbox: Inbox,
    conflicts: Arc<Mutex<Vec<String>>>,
    metrics: Arc<Metrics>,
) {
    // Writes not observed yet, and when they were made (forgotten after a
    // resync period: the watch has surely shown them by then, or failed).
    let mut in_flight: BTreeMap<Key, (Option<String>, Option<Value>, Instant)> = BTreeMap::new();
    // Failed writes: their backoff, and when they may be tried again.
    let mut retry: BTreeMap<Key, (Jittered, Instant)> = BTreeMap::new();
    let mut next_resync = Instant::now() + settings.resync;
    let mut resync_due = false;
    let mut reports = Reports::default();
    // What is wanted and observed, and each service's conflict.
    let mut view = View::default();
    let mut conflicts_of: BTreeMap<ServiceKey, String> = BTreeMap::new();
    let forget = settings.resync.min(IN_FLIGHT_MAX);
    loop {
        let (stopped, leading, changes) = inbox.take();
        if stopped || !leading {
            // Nothing wanted (not the leader): what was pending is dropped.
            (in_flight, retry) = (BTreeMap::new(), BTreeMap::new());
            reports = Reports::default();
            (view, conflicts_of) = (View::default(), BTreeMap::new());
        }
        if leading {
            let started = Instant::now();
            let whole = changes.whole || std::mem::take(&mut resync_due);
            if changes.whole {
                conflicts_of.clear();
            }
            let mut touched = view.apply(changes);
            if whole {
                touched = view.everything();
            }
            let observed_of = |k: &Key| view.observed(k).map(Arc::clone);
            let observed_rv = |k: &Key| view.observed(k).and_then(|o| resource_version(o).map(str::to_owned));
            // A write is observed once its object's version moved on (then
            // what is observed decides again); one never observed is
            // forgotten after a while (the watch may have missed it).
            in_flight.retain(|k, (rv, _, at)| {
                let keep = at.elapsed() < forget && *rv == observed_rv(k);
                if !keep {
                    touched.objects.insert(k.clone());
                }
                keep
            });
            touched.objects.extend(retry.keys().cloned());
            let sent: InFlight = in_flight.iter().map(|(k, (rv, v, _))| (k.clone(), (rv.clone(), v.clone()))).collect();
            let (plan, checked) = view.plan(&touched, &sent);
            let due: BTreeSet<Key> =
                plan.apply.iter().map(key_of).chain(plan.delete.iter().map(|(k, _)| k.clone())).collect();
            // (every key in `retry` was planned: it is in `touched`)
            retry.retain(|k, _| due.contains(k));
            for (service, conflict) in &checked {
                match conflict {
                    Some(c) => conflicts_of.insert(service.clone(), c.clone()),
                    None => conflicts_of.remove(service),
                };
            }
            let mut failed: Vec<String> = conflicts_of.values().cloned().collect();
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
            if whole {
                reports.checked.retain(|k, _| view.is_wanted(k));
            } else {
                for k in touched.objects.iter().filter(|k| !view.is_wanted(k)) {
                    reports.checked.remove(k);
                }
            }
            for (key, o) in view.wanted_of(view.services_of(&touched)) {
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
            tracing::debug!(whole, services = checked.len(), took = ?started.elapsed(), "istio: reconcile pass");
        }
        // The next retry, the next unobserved write to forget, the resync.
        let retry_at = retry.values().map(|(_, at)| *at);
        let forget_at = in_flight.values().map(|(_, _, at)| *at + forget);
        let wake = retry_at.chain(forget_at).fold(next_resync, Instant::min);
        tokio::select! {
            changed = inbox.wake.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if Instant::now() >= next_resync {
                    metrics.kube_istio_resyncs.inc();
                    next_resync = Instant::now() + settings.resync;
                    resync_due = true;
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
