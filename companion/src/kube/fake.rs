//! A fake Kubernetes API server for the Kubernetes mode's tests, over real
//! HTTP so kube-rs (and kubectl) run unchanged. Where the companion's
//! correctness depends on the API server, it behaves as the real one
//! (kube-apiserver 1.32); each such point has a test in `fake_tests.rs`.
//!
//! - list and watch for any installed resource, cluster-wide or in one
//!   namespace, with label selectors (`k`, `!k`, `k=v`, `k!=v`) and field
//!   selectors on name and namespace;
//! - watches resume from a resource version (events replayed from a log),
//!   answer `410 Gone` for one older than the log's compaction point, start
//!   with the current state as ADDED when given no version (and end it with
//!   the `initial-events-end` bookmark for `sendInitialEvents`), send
//!   bookmarks when asked, and can be ended by the test; an object that
//!   stops matching a watch's selector is DELETED for it (and ADDED when it
//!   matches again); a watch that falls behind is ended with `410 Expired`,
//!   never thinned;
//! - server-side apply with per-field ownership (`metadata.managedFields`,
//!   `fieldsV1`, in `fake_ssa.rs`): applies of several managers merge, lists
//!   as the CRD schemas say (Istio's CRDs as Istio ships them, in
//!   `companion/tests/data`: a list without `x-kubernetes-list-type` is
//!   atomic) and by the built-in merge keys for core kinds; a conflict
//!   (`409`, with `details.causes`) only where another manager owns a field
//!   with a different value, `force` takes it; a manager's fields it stops
//!   applying are removed; updates (PUT, merge patch, strategic merge patch
//!   for core kinds) take the fields they change; fields a CRD does not
//!   declare are pruned, or refused under `fieldValidation=Strict`;
//! - preconditions: `metadata.resourceVersion` on update and apply, and
//!   `preconditions` on delete (`409 Conflict`); create `409 AlreadyExists`;
//!   a ConfigMap over 1 MiB is `422 Invalid`, any object over etcd's 1.5 MiB
//!   request limit `413`; `/status` touches only `status`;
//! - a pod deleted through the API terminates first (`deletionTimestamp`,
//!   not ready, its endpoints not ready and terminating) and goes after its
//!   grace; the test's own `delete` removes at once;
//! - what kubectl needs: `/version`, discovery, just enough OpenAPI v3 for it
//!   to leave validation to the server, Tables for `kubectl get`, every
//!   namespace existing;
//! - a write log (`writes`), and writes to one object can be held until the
//!   test releases them (`hold_writes`); each client can have its own
//!   address (`add_endpoint`) to be told apart by in the log or cut off
//!   alone (`stall_from`); another writer can be made to win the race to
//!   the next replace;
//! - a resource not installed answers `404` (a missing CRD or version), and a
//!   resource can be made to fail with any status (e.g. `403`) or to hang,
//!   and the next writes to its `/status` subresource alone to fail;
//! - `events.k8s.io/v1` Events are created and listed like any object, and
//!   checked as the API server checks them (`422 Invalid` naming the field);
//! - every request is recorded as RBAC sees it, so a test can check them
//!   against the shipped RBAC (`companion_rbac`, `denied`).
//!
//! It names no item of this crate (a kube client for it is `FakeClient`, in
//! `kube::tests`): the Envoy end-to-end test `tests/kube_lanes.rs` and the
//! stand-alone `tools/fake-kube` include this very file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast;

#[path = "fake_ssa.rs"]
pub mod ssa;

/// `group/version/plural`, `""` as the core group: `"/v1/pods"`.
pub type Res = String;

pub fn res(group: &str, version: &str, plural: &str) -> Res {
    format!("{group}/{version}/{plural}")
}

/// The resources the Kubernetes source reads and writes, named once for
/// every test that installs or inspects them.
pub mod kinds {
    use super::{res, Res};

    pub fn pods() -> Res {
        res("", "v1", "pods")
    }
    pub fn services() -> Res {
        res("", "v1", "services")
    }
    pub fn configmaps() -> Res {
        res("", "v1", "configmaps")
    }
    pub fn slices() -> Res {
        res("discovery.k8s.io", "v1", "endpointslices")
    }
    pub fn leases() -> Res {
        res("coordination.k8s.io", "v1", "leases")
    }
    pub fn events() -> Res {
        res("events.k8s.io", "v1", "events")
    }
    pub fn isolation_groups() -> Res {
        res("isogroup.io", "v1alpha1", "isolationgroups")
    }
    pub fn destination_rules(version: &str) -> Res {
        res("networking.istio.io", version, "destinationrules")
    }
    pub fn virtual_services() -> Res {
        res("networking.istio.io", "v1", "virtualservices")
    }
    pub fn envoy_filters() -> Res {
        res("networking.istio.io", "v1alpha3", "envoyfilters")
    }
    pub fn namespaces() -> Res {
        res("", "v1", "namespaces")
    }

    /// Every resource the fake knows: the core kinds above and every served
    /// version of its CRDs (what a fake run on its own installs).
    pub fn every() -> Vec<Res> {
        let mut all = vec![pods(), services(), configmaps(), slices(), leases(), events(), namespaces()];
        all.extend(super::crds().keys().cloned());
        all
    }
}

/// The EndpointSlice of `service` in `bookinfo`: each pod with its readiness.
pub fn endpoint_slice(service: &str, ready: &[(&str, bool)]) -> Value {
    let endpoints: Vec<Value> = ready
        .iter()
        .map(|(p, r)| json!({ "addresses": ["10.0.0.1"], "conditions": { "ready": r }, "targetRef": { "kind": "Pod", "name": p } }))
        .collect();
    json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": { "name": format!("{service}-x1"), "namespace": "bookinfo",
                          "labels": { "kubernetes.io/service-name": service } },
            "endpoints": endpoints })
}

#[derive(Clone, Debug)]
struct Ev {
    rv: u64,
    res: Res,
    kind: &'static str,
    obj: Value,
    /// The object before this change (a watch with a selector tells
    /// ADDED / DELETED from it when an object starts or stops matching).
    old: Option<Value>,
}

#[derive(Clone, Debug)]
enum Msg {
    Ev(Ev),
    /// End every watch of this resource.
    Close(Res),
    Bookmark(Res, u64),
}

/// The field manager of the test's own writes (`put`, `put_quietly`): the
/// cluster's other writers, as far as field ownership goes.
pub const TEST_MANAGER: &str = "test-writer";

/// The largest ConfigMap the API server stores: `data` and `binaryData`
/// together (`core.MaxSecretSize`; answered `422 Invalid`).
pub const CONFIGMAP_LIMIT: usize = 1024 * 1024;

/// The largest object etcd takes (its default `--max-request-bytes`).
pub const OBJECT_LIMIT: usize = 3 * 512 * 1024;

#[derive(Default)]
struct State0 {
    rv: u64,
    installed: BTreeSet<Res>,
    objects: BTreeMap<Res, BTreeMap<(String, String), Value>>,
    log: Vec<Ev>,
    /// Watches from a version below this answer 410 Gone.
    compacted: u64,
    fail: BTreeMap<Res, u16>,
    /// The next writes to a resource's `/status` refused: (status, how many).
    fail_status: BTreeMap<Res, (u16, u64)>,
    /// A write that lands just before the next replace of that resource
    /// (another writer winning a race).
    race: BTreeMap<Res, Value>,
    /// Lists and watches started, per resource.
    lists: BTreeMap<Res, u64>,
    watches: BTreeMap<Res, u64>,
    /// Create and get requests, per resource (answered or refused).
    creates: BTreeMap<Res, u64>,
    gets: BTreeMap<Res, u64>,
    /// Every request as RBAC sees it.
    requests: BTreeSet<Request>,
    /// Resources whose requests get no answer (an API server that hangs).
    stalled: BTreeSet<Res>,
    /// How long a deleted pod stays terminating before it is removed.
    pod_grace: std::time::Duration,
    /// Watches ended because they fell behind.
    lagged: u64,
    /// Every write request, in the order answered.
    writes: Vec<Write>,
    /// The addresses served (`url` first, then `add_endpoint`'s).
    endpoints: Vec<String>,
    /// (endpoint, resource) whose requests hang.
    stalled_from: BTreeSet<(usize, Res)>,
    /// Objects whose writes wait until the test releases them.
    holds: Vec<HoldState>,
    next_hold: u64,
}

/// A write request as the fake answered it (the write log).
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    /// `create`, `update` (PUT), `apply`, `patch` (merge or strategic), `delete`.
    pub verb: &'static str,
    pub res: Res,
    /// To the `/status` subresource.
    pub status: bool,
    pub namespace: String,
    pub name: String,
    /// The field manager (`fieldManager`, else from the User-Agent).
    pub manager: String,
    pub agent: String,
    /// The answer's HTTP status.
    pub code: u16,
    /// The address it came through (`FakeApi::url` or an `add_endpoint`).
    pub endpoint: String,
    /// Whether it changed anything (a refused write or an apply that
    /// changes nothing makes no new version).
    pub changed: bool,
    /// The object's resourceVersion after it (None: there is none).
    pub resource_version: Option<String>,
}

struct HoldState {
    id: u64,
    key: (Res, String, String),
    /// Only writes through this endpoint (`None`: any).
    endpoint: Option<usize>,
    arrived: u64,
    released: tokio::sync::watch::Sender<bool>,
}

/// Writes to one object wait until `release` (or the hold is dropped): a
/// test can let a write arrive, change the world, then let it land.
pub struct Hold {
    fake: FakeApi,
    id: u64,
}

impl Hold {
    /// How many writes to the object have arrived since the hold began.
    pub fn arrived(&self) -> u64 {
        let s = self.fake.state.lock().unwrap();
        s.holds.iter().find(|h| h.id == self.id).map_or(0, |h| h.arrived)
    }

    /// Lets the held writes (and later ones) through.
    pub fn release(self) {}
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut s = self.fake.state.lock().unwrap();
        if let Some(i) = s.holds.iter().position(|h| h.id == self.id) {
            let h = s.holds.remove(i);
            let _ = h.released.send(true);
        }
    }
}

/// A request as RBAC authorizes it: (verb, API group, resource with its
/// subresource as `plural/status`, namespace, name).
pub type Request = (String, String, String, Option<String>, Option<String>);

#[derive(Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State0>>,
    tx: broadcast::Sender<Msg>,
    pub url: String,
}

impl FakeApi {
    /// Serves on a free loopback port; `installed` are the resources it knows.
    pub async fn start(installed: &[Res]) -> FakeApi {
        FakeApi::start_with(installed, "127.0.0.1:0", 4096).await
    }

    /// Serves on `addr`; a watch more than `watch_buffer` events behind is
    /// ended with `410 Expired`, as the API server ends a watcher that
    /// cannot keep up.
    pub async fn start_with(installed: &[Res], addr: &str, watch_buffer: usize) -> FakeApi {
        let (tx, _) = broadcast::channel(watch_buffer);
        let state = State0 {
            rv: 100,
            installed: installed.iter().cloned().collect(),
            pod_grace: std::time::Duration::from_millis(200),
            ..State0::default()
        };
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeApi { state: Arc::new(Mutex::new(state)), tx, url };
        fake.state.lock().unwrap().endpoints.push(fake.url.clone());
        let app = axum::Router::new().fallback(handle).with_state(Ctx { fake: fake.clone(), endpoint: 0 });
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    pub fn install(&self, r: &Res) {
        self.state.lock().unwrap().installed.insert(r.clone());
    }

    /// How long a pod deleted through the API stays terminating (its
    /// `deletionTimestamp` set, its endpoints not ready) before it goes.
    pub fn set_pod_grace(&self, grace: std::time::Duration) {
        self.state.lock().unwrap().pod_grace = grace;
    }

    /// Every write request so far, in the order answered.
    pub fn writes(&self) -> Vec<Write> {
        self.state.lock().unwrap().writes.clone()
    }

    /// The versions of one object from the event log, oldest first: its
    /// resourceVersion, the event (`ADDED`, `MODIFIED`, `DELETED`) and the
    /// object then (what a watch from the start would have shown).
    pub fn history(&self, r: &Res, ns: &str, name: &str) -> Vec<(u64, &'static str, Value)> {
        let s = self.state.lock().unwrap();
        s.log
            .iter()
            .filter(|e| {
                &e.res == r
                    && e.obj["metadata"]["namespace"].as_str().unwrap_or_default() == ns
                    && e.obj["metadata"]["name"] == name
            })
            .map(|e| (e.rv, e.kind, e.obj.clone()))
            .collect()
    }

    /// Holds every write to `r` `ns`/`name` (create, update, patch, apply,
    /// delete) before it is looked at, until the `Hold` is released.
    pub fn hold_writes(&self, r: &Res, ns: &str, name: &str) -> Hold {
        let mut s = self.state.lock().unwrap();
        s.next_hold += 1;
        let id = s.next_hold;
        let (released, _) = tokio::sync::watch::channel(false);
        s.holds.push(HoldState {
            id,
            key: (r.clone(), ns.to_owned(), name.to_owned()),
            endpoint: None,
            arrived: 0,
            released,
        });
        Hold { fake: self.clone(), id }
    }

    /// Like `hold_writes`, for the writes that come through the endpoint
    /// at `url` only (one client's, see `add_endpoint`).
    #[allow(dead_code)] // the companion binary's tests (tests/kube_fence.rs)
    pub fn hold_writes_from(&self, url: &str, r: &Res, ns: &str, name: &str) -> Hold {
        let hold = self.hold_writes(r, ns, name);
        let mut s = self.state.lock().unwrap();
        let Some(endpoint) = s.endpoints.iter().position(|u| u == url) else { panic!("no endpoint {url}") };
        if let Some(h) = s.holds.iter_mut().find(|h| h.id == hold.id) {
            h.endpoint = Some(endpoint);
        }
        drop(s);
        hold
    }

    /// Watches ended so far because they fell too far behind.
    pub fn lagged_watches(&self) -> u64 {
        self.state.lock().unwrap().lagged
    }

    /// Every request for `r` answers `status` (0: normal again).
    pub fn fail(&self, r: &Res, status: u16) {
        let mut s = self.state.lock().unwrap();
        if status == 0 {
            s.fail.remove(r);
        } else {
            s.fail.insert(r.clone(), status);
        }
    }

    /// The next `count` writes to `r`'s `/status` subresource answer `code`
    /// and change nothing (logged as answered); other requests are served.
    pub fn fail_status_writes(&self, r: &Res, code: u16, count: u64) {
        self.state.lock().unwrap().fail_status.insert(r.clone(), (code, count));
    }

    /// Another address serving the same state: give each client its own,
    /// and the write log tells their writes apart (`Write::endpoint`) and
    /// `stall_from` can cut one off alone.
    pub async fn add_endpoint(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let endpoint = {
            let mut s = self.state.lock().unwrap();
            s.endpoints.push(url.clone());
            s.endpoints.len() - 1
        };
        let app = axum::Router::new().fallback(handle).with_state(Ctx { fake: self.clone(), endpoint });
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// Requests for `r` through the endpoint at `url` (`url` or one from
    /// `add_endpoint`) get no answer from now on (`false`: answered again).
    pub fn stall_from(&self, url: &str, r: &Res, on: bool) {
        let mut s = self.state.lock().unwrap();
        let Some(endpoint) = s.endpoints.iter().position(|u| u == url) else { panic!("no endpoint {url}") };
        if on {
            s.stalled_from.insert((endpoint, r.clone()));
        } else {
            s.stalled_from.remove(&(endpoint, r.clone()));
        }
    }

    /// Requests for `r` from now on get no answer at all (`false`: they
    /// are answered again; those already waiting stay unanswered).
    pub fn stall(&self, r: &Res, on: bool) {
        let mut s = self.state.lock().unwrap();
        if on {
            s.stalled.insert(r.clone());
        } else {
            s.stalled.remove(r);
        }
    }

    pub fn lists(&self, r: &Res) -> u64 {
        self.state.lock().unwrap().lists.get(r).copied().unwrap_or(0)
    }

    pub fn watches(&self, r: &Res) -> u64 {
        self.state.lock().unwrap().watches.get(r).copied().unwrap_or(0)
    }

    /// Every distinct request served so far that `rules` (from
    /// `companion_rbac`) do not allow.
    pub fn denied(&self, rules: &[(Option<String>, Value)]) -> Vec<Request> {
        let has = |list: &Value, item: &str| list.as_array().is_some_and(|l| l.iter().any(|v| v == item || v == "*"));
        let requests = self.state.lock().unwrap().requests.clone();
        requests
            .into_iter()
            .filter(|(verb, group, resource, ns, name)| {
                !rules.iter().any(|(scope, rule)| {
                    scope.as_ref().is_none_or(|s| Some(s) == ns.as_ref())
                        && has(&rule["apiGroups"], group)
                        && has(&rule["resources"], resource)
                        && has(&rule["verbs"], verb)
                        && rule["resourceNames"]
                            .as_array()
                            .is_none_or(|names| name.as_deref().is_some_and(|n| names.iter().any(|v| v == n)))
                })
            })
            .collect()
    }

    pub fn gets(&self, r: &Res) -> u64 {
        self.state.lock().unwrap().gets.get(r).copied().unwrap_or(0)
    }

    pub fn creates(&self, r: &Res) -> u64 {
        self.state.lock().unwrap().creates.get(r).copied().unwrap_or(0)
    }

    /// Every object of `r` in namespace `ns`.
    pub fn list_in(&self, r: &Res, ns: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.objects
            .get(r)
            .map(|m| m.iter().filter(|((n, _), _)| n == ns).map(|(_, o)| o.clone()).collect())
            .unwrap_or_default()
    }

    pub fn get(&self, r: &Res, ns: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().objects.get(r)?.get(&(ns.to_owned(), name.to_owned())).cloned()
    }

    /// Creates or replaces `obj` (namespace and name from its metadata) and
    /// tells the watchers; the fields it changes become `TEST_MANAGER`'s.
    pub fn put(&self, r: &Res, obj: Value) -> Value {
        let mut s = self.state.lock().unwrap();
        let k = key_of(&obj);
        let old = s.objects.get(r).and_then(|m| m.get(&k)).cloned();
        let mut obj = obj;
        owned_by_update(r, old.as_ref(), &mut obj, TEST_MANAGER, false);
        let (ev, obj) = store(&mut s, r, k, obj, if old.is_some() { "MODIFIED" } else { "ADDED" });
        drop(s);
        let _ = self.tx.send(Msg::Ev(ev));
        obj
    }

    /// Stores `obj` (with its event) just before the next replace of `r` is
    /// handled: that replace then holds a stale resourceVersion.
    pub fn race_next_replace(&self, r: &Res, obj: Value) {
        self.state.lock().unwrap().race.insert(r.clone(), obj);
    }

    /// Changes state without an event: only a re-list sees it.
    pub fn put_quietly(&self, r: &Res, obj: Value) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let k = key_of(&obj);
        let old = s.objects.get(r).and_then(|m| m.get(&k)).cloned();
        let mut obj = obj;
        owned_by_update(r, old.as_ref(), &mut obj, TEST_MANAGER, false);
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        if obj["metadata"]["generation"].is_null() {
            obj["metadata"]["generation"] = json!(1);
        }
        s.objects.entry(r.clone()).or_default().insert(k, obj);
    }

    /// Removes an object at once (a pod too: see `terminate_pod` for the
    /// API server's way) and tells the watchers.
    pub fn delete(&self, r: &Res, ns: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some(ev) = remove(&mut s, r, &(ns.to_owned(), name.to_owned())) {
            drop(s);
            let _ = self.tx.send(Msg::Ev(ev));
        }
    }

    /// What the API server and the EndpointSlice controller do when a pod
    /// is deleted with a grace period: the pod gets `deletionTimestamp` and
    /// a not-ready condition, its endpoints turn not ready and terminating.
    /// `false` if there is no such pod.
    pub fn terminate_pod(&self, ns: &str, name: &str) -> bool {
        let mut s = self.state.lock().unwrap();
        let k = (ns.to_owned(), name.to_owned());
        let Some(mut pod) = s.objects.get(&kinds::pods()).and_then(|m| m.get(&k)).cloned() else { return false };
        let mut events = vec![];
        if pod["metadata"]["deletionTimestamp"].is_null() {
            let old = pod.clone();
            pod["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            pod["metadata"]["deletionGracePeriodSeconds"] = json!(s.pod_grace.as_secs());
            pod["status"]["conditions"] = json!([{ "type": "Ready", "status": "False", "reason": "PodTerminating" }]);
            owned_by_update(&kinds::pods(), Some(&old), &mut pod, "kubelet", false);
            events.push(store(&mut s, &kinds::pods(), k.clone(), pod, "MODIFIED").0);
            for (sk, mut slice) in endpoint_slices_of(&s, ns, name) {
                let old = slice.clone();
                for e in slice["endpoints"].as_array_mut().into_iter().flatten() {
                    if e["targetRef"]["name"] == name {
                        e["conditions"] = json!({ "ready": false, "serving": true, "terminating": true });
                    }
                }
                owned_by_update(&kinds::slices(), Some(&old), &mut slice, "endpointslice-controller.k8s.io", false);
                events.push(store(&mut s, &kinds::slices(), sk, slice, "MODIFIED").0);
            }
        }
        drop(s);
        for ev in events {
            let _ = self.tx.send(Msg::Ev(ev));
        }
        true
    }

    /// The end of a pod's grace: it goes, and its endpoints with it.
    pub fn remove_pod(&self, ns: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        let mut events: Vec<Ev> =
            remove(&mut s, &kinds::pods(), &(ns.to_owned(), name.to_owned())).into_iter().collect();
        for (sk, mut slice) in endpoint_slices_of(&s, ns, name) {
            let old = slice.clone();
            if let Some(list) = slice["endpoints"].as_array_mut() {
                list.retain(|e| e["targetRef"]["name"] != name);
            }
            owned_by_update(&kinds::slices(), Some(&old), &mut slice, "endpointslice-controller.k8s.io", false);
            events.push(store(&mut s, &kinds::slices(), sk, slice, "MODIFIED").0);
        }
        drop(s);
        for ev in events {
            let _ = self.tx.send(Msg::Ev(ev));
        }
    }

    /// Forgets the event log: a watch resuming from an older version gets
    /// `410 Gone` and must re-list.
    pub fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        s.compacted = s.rv;
        s.log.clear();
    }

    /// Ends every watch of `r` (the watcher then resumes from its version).
    pub fn close_watches(&self, r: &Res) {
        let _ = self.tx.send(Msg::Close(r.clone()));
    }

    /// A bookmark at the current version to every watch of `r` that asked.
    pub fn bookmark(&self, r: &Res) {
        let rv = self.state.lock().unwrap().rv;
        let _ = self.tx.send(Msg::Bookmark(r.clone(), rv));
    }

    /// A kubeconfig for kubectl or the companion: this server, no
    /// credentials, namespace `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: isogroup-fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: isogroup-fake\n  context:\n    cluster: isogroup-fake\n    user: isogroup-fake\n    \
             namespace: {namespace}\ncurrent-context: isogroup-fake\nusers:\n- name: isogroup-fake\n  user: {{}}\n",
            self.url
        )
    }

    /// The field managers of an object's `managedFields`, as
    /// (manager, operation), in their order there.
    pub fn managers(&self, r: &Res, ns: &str, name: &str) -> Vec<(String, String)> {
        self.get(r, ns, name)
            .map(|o| ssa::read_managed(&o).into_iter().map(|e| (e.manager, e.operation)).collect())
            .unwrap_or_default()
    }
}

/// The EndpointSlices in `ns` with an endpoint for pod `name`.
fn endpoint_slices_of(s: &State0, ns: &str, name: &str) -> Vec<((String, String), Value)> {
    s.objects
        .get(&kinds::slices())
        .into_iter()
        .flatten()
        .filter(|((sns, _), o)| {
            sns == ns && o["endpoints"].as_array().is_some_and(|l| l.iter().any(|e| e["targetRef"]["name"] == name))
        })
        .map(|(k, o)| (k.clone(), o.clone()))
        .collect()
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (m["namespace"].as_str().unwrap_or("").to_owned(), m["name"].as_str().unwrap_or("").to_owned())
}

/// Now, as the API server writes timestamps (RFC 3339, UTC, seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The schema the API server merges `r` with: a CRD's (the Istio CRDs and
/// the IsolationGroup CRD, as shipped), else the core kinds' merge keys.
fn schema_of(r: &Res) -> ssa::Schema {
    let plural = r.rsplit('/').next().unwrap_or_default();
    crds().get(r).map(|c| c.schema.clone()).unwrap_or_else(|| ssa::core_schema(plural))
}

/// A resource as discovery tells it.
#[derive(Clone)]
struct Kind {
    kind: String,
    singular: String,
    namespaced: bool,
    short_names: Vec<String>,
    schema: ssa::Schema,
}

/// The CRDs the fake serves, by resource: Istio's (test data, as Istio
/// ships them) and isogroup's own.
fn crds() -> &'static BTreeMap<Res, Kind> {
    static CRDS: std::sync::OnceLock<BTreeMap<Res, Kind>> = std::sync::OnceLock::new();
    CRDS.get_or_init(|| {
        let texts = [
            include_str!("../../tests/data/destinationrules.crd.yaml"),
            include_str!("../../tests/data/virtualservices.crd.yaml"),
            include_str!("../../tests/data/envoyfilters.crd.yaml"),
            include_str!("../../../deploy/kubernetes/companion/kubernetes-source/isolationgroup-crd.yaml"),
        ];
        let mut out = BTreeMap::new();
        for text in texts {
            for doc in text.split("\n---\n") {
                let crd: Value = serde_yaml::from_str(doc).unwrap();
                if crd["kind"] != "CustomResourceDefinition" {
                    continue;
                }
                let spec = &crd["spec"];
                let names = &spec["names"];
                for v in spec["versions"].as_array().into_iter().flatten() {
                    let r = res(
                        spec["group"].as_str().unwrap(),
                        v["name"].as_str().unwrap(),
                        names["plural"].as_str().unwrap(),
                    );
                    let kind = Kind {
                        kind: names["kind"].as_str().unwrap().to_owned(),
                        singular: names["singular"].as_str().unwrap_or_default().to_owned(),
                        namespaced: spec["scope"] == "Namespaced",
                        short_names: names["shortNames"]
                            .as_array()
                            .map(|l| l.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
                            .unwrap_or_default(),
                        schema: ssa::Schema::from_openapi(&v["schema"]["openAPIV3Schema"]),
                    };
                    out.insert(r, kind);
                }
            }
        }
        out
    })
}

/// Discovery facts of any resource the fake may serve.
fn kind_of(r: &Res) -> Kind {
    if let Some(k) = crds().get(r) {
        return k.clone();
    }
    let plural = r.rsplit('/').next().unwrap_or_default();
    let (kind, namespaced, short): (&str, bool, &[&str]) = match plural {
        "pods" => ("Pod", true, &["po"]),
        "services" => ("Service", true, &["svc"]),
        "configmaps" => ("ConfigMap", true, &["cm"]),
        "endpointslices" => ("EndpointSlice", true, &[]),
        "leases" => ("Lease", true, &[]),
        "events" => ("Event", true, &["ev"]),
        "namespaces" => ("Namespace", false, &["ns"]),
        _ => ("Unknown", true, &[]),
    };
    Kind {
        kind: kind.to_owned(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| (*s).to_owned()).collect(),
        schema: ssa::core_schema(plural),
    }
}

/// The kind of `r`'s objects (`DestinationRule` for destinationrules).
pub fn kind_name(r: &Res) -> String {
    kind_of(r).kind
}

/// Records an update's field ownership in `new` (see `ssa::record_update`).
fn owned_by_update(r: &Res, old: Option<&Value>, new: &mut Value, manager: &str, status: bool) {
    let api_version = new["apiVersion"].as_str().unwrap_or_default().to_owned();
    let time = now_rfc3339();
    let w = ssa::Writer { manager, subresource: status.then_some("status"), api_version: &api_version, time: &time };
    ssa::record_update(old, new, &schema_of(r), &w);
}

fn store(s: &mut State0, r: &Res, k: (String, String), mut obj: Value, kind: &'static str) -> (Ev, Value) {
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    if obj["metadata"]["uid"].is_null() {
        obj["metadata"]["uid"] = json!(format!("uid-{}", s.rv));
    }
    // A new spec is a new generation, as in the API server.
    let previous = s.objects.get(r).and_then(|m| m.get(&k)).cloned();
    if obj["metadata"]["creationTimestamp"].is_null() {
        obj["metadata"]["creationTimestamp"] = previous
            .as_ref()
            .map(|p| p["metadata"]["creationTimestamp"].clone())
            .filter(|t| !t.is_null())
            .unwrap_or_else(|| json!(now_rfc3339()));
    }
    let generation = match &previous {
        Some(p) if p["spec"] == obj["spec"] => p["metadata"]["generation"].as_u64().unwrap_or(1),
        Some(p) => p["metadata"]["generation"].as_u64().unwrap_or(1) + 1,
        None => 1,
    };
    obj["metadata"]["generation"] = json!(generation);
    s.objects.entry(r.clone()).or_default().insert(k, obj.clone());
    let ev = Ev { rv: s.rv, res: r.clone(), kind, obj: obj.clone(), old: previous };
    s.log.push(ev.clone());
    (ev, obj)
}

fn remove(s: &mut State0, r: &Res, k: &(String, String)) -> Option<Ev> {
    let mut obj = s.objects.get_mut(r)?.remove(k)?;
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    let ev = Ev { rv: s.rv, res: r.clone(), kind: "DELETED", obj: obj.clone(), old: Some(obj) };
    s.log.push(ev.clone());
    Some(ev)
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "code": code, "reason": reason, "message": message });
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

/// What a request path names.
#[derive(Clone)]
struct Target {
    res: Res,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [p] => (*p, None, false),
        [p, n] => (*p, Some((*n).to_owned()), false),
        [p, n, "status"] => (*p, Some((*n).to_owned()), true),
        _ => return None,
    };
    Some(Target { res: res(group, version, plural), namespace, name, status })
}

/// Label selectors (`k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-separated).
fn selector_matches(selector: Option<&str>, obj: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    let labels = &obj["metadata"]["labels"];
    selector.split(',').all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k].as_str() == Some(v.trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k].is_null()
        } else {
            !labels[term].is_null()
        }
    })
}

/// Field selectors on `metadata.name` and `metadata.namespace` (what
/// kubectl and informers use).
fn field_selector_matches(selector: Option<&str>, obj: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    selector.split(',').all(|term| {
        let (field, want, equal) = match term.split_once("!=") {
            Some((f, v)) => (f, v, false),
            None => match term.split_once('=') {
                Some((f, v)) => (f, v.trim_start_matches('='), true),
                None => return true,
            },
        };
        let have = match field {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            _ => return true,
        };
        (have == Some(want)) == equal
    })
}

fn matches(q: &BTreeMap<String, String>, obj: &Value) -> bool {
    selector_matches(q.get("labelSelector").map(String::as_str), obj)
        && field_selector_matches(q.get("fieldSelector").map(String::as_str), obj)
}

/// `group/version` (`v1` for the core group) of a resource.
fn api_version_of(r: &str) -> String {
    match group_version(r) {
        ("", v) => v.to_owned(),
        (g, v) => format!("{g}/{v}"),
    }
}

fn group_version(r: &str) -> (&str, &str) {
    let mut it = r.split('/');
    (it.next().unwrap_or_default(), it.next().unwrap_or_default())
}

/// Discovery and version: what kubectl asks before anything else.
fn discovery(fake: &FakeApi, path: &str) -> Option<Response> {
    let installed: Vec<Res> = fake.state.lock().unwrap().installed.iter().cloned().collect();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let group_versions = |group: &str| -> Vec<String> {
        let mut v: Vec<String> = installed
            .iter()
            .filter_map(|r| {
                let mut it = r.split('/');
                (it.next() == Some(group)).then(|| it.next().unwrap_or_default().to_owned())
            })
            .collect();
        v.dedup();
        // The served version kubectl prefers: the highest, v1 over v1beta1 over v1alpha3.
        v.sort_by_key(|v| std::cmp::Reverse((!v.contains("alpha"), !v.contains("beta"), v.clone())));
        v
    };
    let resources = |group: &str, version: &str| -> Value {
        let list: Vec<Value> = installed
            .iter()
            .filter(|r| r.starts_with(&format!("{group}/{version}/")))
            .flat_map(|r| {
                let plural = r.rsplit('/').next().unwrap_or_default().to_owned();
                let k = kind_of(r);
                let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
                let main = json!({ "name": plural, "singularName": k.singular, "namespaced": k.namespaced,
                                   "kind": k.kind, "verbs": verbs, "shortNames": k.short_names });
                let status = json!({ "name": format!("{plural}/status"), "singularName": "", "namespaced": k.namespaced,
                                     "kind": k.kind, "verbs": ["get", "patch", "update"] });
                [main, status]
            })
            .collect();
        let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list })
    };
    let body = match parts.as_slice() {
        ["version"] => json!({ "major": "1", "minor": "32", "gitVersion": "v1.32.0-isogroup-fake",
                               "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                               "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64" }),
        ["api"] => json!({ "kind": "APIVersions", "versions": ["v1"],
                           "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" }] }),
        ["api", v] => resources("", v),
        ["apis"] => {
            let mut groups: Vec<&str> =
                installed.iter().filter_map(|r| r.split('/').next()).filter(|g| !g.is_empty()).collect();
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let versions: Vec<Value> = group_versions(g)
                        .iter()
                        .map(|v| json!({ "groupVersion": format!("{g}/{v}"), "version": v }))
                        .collect();
                    json!({ "name": g, "versions": versions, "preferredVersion": versions[0] })
                })
                .collect();
            json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
        }
        ["apis", g] => {
            let versions: Vec<Value> =
                group_versions(g).iter().map(|v| json!({ "groupVersion": format!("{g}/{v}"), "version": v })).collect();
            if versions.is_empty() {
                return Some(status(404, "NotFound", "the server could not find the requested resource"));
            }
            json!({ "kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions,
                    "preferredVersion": versions[0] })
        }
        ["apis", g, v] => resources(g, v),
        // OpenAPI v3 only as far as kubectl reads it to learn that the
        // server validates fields itself (`fieldValidation` on PATCH): no
        // schemas, so kubectl validates nothing on its side.
        ["openapi", "v3"] => {
            let mut paths = Map::new();
            for r in &installed {
                let (group, version) = group_version(r);
                let gv = if group.is_empty() { format!("api/{version}") } else { format!("apis/{group}/{version}") };
                paths.insert(gv.clone(), json!({ "serverRelativeURL": format!("/openapi/v3/{gv}?hash=fake") }));
            }
            json!({ "paths": paths })
        }
        ["openapi", "v3", gv @ ..] => {
            let (group, version) = match gv {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return Some(status(404, "NotFound", "no such OpenAPI document")),
            };
            let mut paths = Map::new();
            for r in installed.iter().filter(|r| group_version(r) == (group, version)) {
                let plural = r.rsplit('/').next().unwrap_or_default();
                let k = kind_of(r);
                let prefix =
                    if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
                let scope = if k.namespaced { "/namespaces/{namespace}" } else { "" };
                let op = json!({ "x-kubernetes-group-version-kind": { "group": group, "version": version, "kind": k.kind },
                                 "parameters": [{ "name": "fieldValidation", "in": "query", "schema": { "type": "string" } },
                                                { "name": "fieldManager", "in": "query", "schema": { "type": "string" } },
                                                { "name": "force", "in": "query", "schema": { "type": "boolean" } }],
                                 "responses": {} });
                paths.insert(format!("{prefix}{scope}/{plural}/{{name}}"), json!({ "patch": op }));
            }
            json!({ "openapi": "3.0.0", "info": { "title": "isogroup fake", "version": version }, "paths": paths,
                    "components": { "schemas": {} } })
        }
        ["openapi", ..] => return Some(status(404, "NotFound", "the fake serves OpenAPI v3 only")),
        _ => return None,
    };
    Some(axum::Json(body).into_response())
}

/// A request's server: the state, and which of its addresses it came to.
#[derive(Clone)]
struct Ctx {
    fake: FakeApi,
    endpoint: usize,
}

async fn handle(
    State(Ctx { fake, endpoint }): State<Ctx>,
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::GET {
        if let Some(answer) = discovery(&fake, uri.path()) {
            return answer;
        }
    }
    let Some(t) = parse_path(uri.path()) else { return status(404, "NotFound", "no such path") };
    let stalled = {
        let mut s = fake.state.lock().unwrap();
        if method == Method::GET && t.name.is_none() && q.get("watch").map(String::as_str) != Some("true") {
            *s.lists.entry(t.res.clone()).or_default() += 1;
        }
        let watching = q.get("watch").map(String::as_str) == Some("true");
        let verb = match (&method, &t.name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) if watching => "watch",
            (&Method::GET, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "other",
        };
        let (group, plural) =
            t.res.split_once('/').map(|(g, rest)| (g, rest.rsplit('/').next().unwrap_or(rest))).unwrap();
        let resource = if t.status { format!("{plural}/status") } else { plural.to_owned() };
        s.requests.insert((verb.into(), group.into(), resource, t.namespace.clone(), t.name.clone()));
        if verb == "get" {
            *s.gets.entry(t.res.clone()).or_default() += 1;
        }
        if let Some(code) = s.fail.get(&t.res) {
            return status(*code, "Forbidden", "made to fail by the test");
        }
        if !s.installed.contains(&t.res) {
            return status(404, "NotFound", &format!("the server could not find the requested resource ({})", t.res));
        }
        s.stalled.contains(&t.res) || s.stalled_from.contains(&(endpoint, t.res.clone()))
    };
    if stalled {
        return std::future::pending().await;
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let table = headers.get("accept").and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("as=Table"));
    let manager = manager_of(&q, &headers);
    match (method.clone(), &t.name) {
        (Method::GET, None) if q.get("watch").map(String::as_str) == Some("true") => watch(fake, t, q).await,
        (Method::GET, None) => list(&fake, &t, &q, table),
        // Every namespace exists (objects may be made in any).
        (Method::GET, Some(name)) if t.res == kinds::namespaces() && fake.get(&t.res, "", name).is_none() => {
            axum::Json(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": name },
                               "status": { "phase": "Active" } }))
            .into_response()
        }
        (Method::GET, Some(name)) => match fake.get(&t.res, &ns, name) {
            Some(o) if table => axum::Json(as_table(vec![o], json!({}))).into_response(),
            Some(o) => axum::Json(o).into_response(),
            None => not_found(&t.res, name),
        },
        (Method::POST, None) | (Method::PUT, Some(_)) | (Method::PATCH, Some(_)) | (Method::DELETE, Some(_)) => {
            // Carried out even if the client stops waiting (a timeout), as
            // the API server does with a request it has received.
            let fake = fake.clone();
            let done =
                tokio::spawn(async move { write(&fake, endpoint, method, &t, &q, &headers, &body, &manager).await });
            done.await.unwrap_or_else(|_| status(500, "InternalError", "the write failed"))
        }
        _ => status(405, "MethodNotAllowed", "not in the fake"),
    }
}

/// A write: held first if a test holds writes to its object, then done,
/// then logged.
#[allow(clippy::too_many_arguments)]
async fn write(
    fake: &FakeApi,
    endpoint: usize,
    method: Method,
    t: &Target,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    manager: &str,
) -> Response {
    let ns = t.namespace.clone().unwrap_or_default();
    let name = match &t.name {
        Some(n) => n.clone(),
        None => serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|b| b["metadata"]["name"].as_str().map(str::to_owned))
            .unwrap_or_default(),
    };
    let held = {
        let mut s = fake.state.lock().unwrap();
        let key = (t.res.clone(), ns.clone(), name.clone());
        s.holds.iter_mut().find(|h| h.key == key && h.endpoint.is_none_or(|e| e == endpoint)).map(|h| {
            h.arrived += 1;
            h.released.subscribe()
        })
    };
    if let Some(mut released) = held {
        let _ = released.wait_for(|r| *r).await;
    }
    let verb = match method {
        m if m == Method::POST => "create",
        m if m == Method::PUT => "update",
        m if m == Method::DELETE => "delete",
        _ if headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/apply-patch")) =>
        {
            "apply"
        }
        _ => "patch",
    };
    let (before, refused) = {
        let mut s = fake.state.lock().unwrap();
        let refused = match s.fail_status.get_mut(&t.res) {
            Some((code, left)) if t.status && *left > 0 => {
                *left -= 1;
                Some(*code)
            }
            _ => None,
        };
        (s.rv, refused)
    };
    let answer = match (refused, verb) {
        (Some(code), _) => status(code, "InternalError", "status write made to fail by the test"),
        (None, "create") => create(fake, t, &ns, body, q, manager),
        (None, "update") => replace(fake, t, &ns, &name, body, q, manager),
        (None, "delete") => delete(fake, t, &ns, &name, q, body),
        (None, _) => patch(fake, t, &ns, &name, q, headers, body, manager),
    };
    let mut s = fake.state.lock().unwrap();
    let changed = answer.status().is_success() && s.rv != before;
    let resource_version = s
        .objects
        .get(&t.res)
        .and_then(|m| m.get(&(ns.clone(), name.clone())))
        .and_then(|o| o["metadata"]["resourceVersion"].as_str().map(str::to_owned));
    let agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let endpoint = s.endpoints.get(endpoint).cloned().unwrap_or_default();
    s.writes.push(Write {
        endpoint,
        verb,
        res: t.res.clone(),
        status: t.status,
        namespace: ns,
        name,
        manager: manager.to_owned(),
        agent,
        code: answer.status().as_u16(),
        changed,
        resource_version,
    });
    answer
}

fn not_found(r: &Res, name: &str) -> Response {
    let group = r.split('/').next().unwrap_or_default();
    let plural = r.rsplit('/').next().unwrap_or_default();
    let what = if group.is_empty() { plural.to_owned() } else { format!("{plural}.{group}") };
    status(404, "NotFound", &format!("{what} \"{name}\" not found"))
}

/// The field manager of a write: `fieldManager`, else the client's name
/// from its User-Agent (as the API server derives it).
fn manager_of(q: &BTreeMap<String, String>, headers: &HeaderMap) -> String {
    if let Some(m) = q.get("fieldManager").filter(|m| !m.is_empty()) {
        return m.clone();
    }
    let agent = headers.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("unknown");
    agent.split('/').next().unwrap_or("unknown").to_owned()
}

/// A `meta.k8s.io/v1` Table of `objects`, as `kubectl get` asks for.
fn as_table(objects: Vec<Value>, metadata: Value) -> Value {
    let rows: Vec<Value> = objects
        .into_iter()
        .map(|o| {
            let name = o["metadata"]["name"].clone();
            let created = o["metadata"]["creationTimestamp"].clone();
            let partial =
                json!({ "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"] });
            json!({ "cells": [name, created], "object": partial })
        })
        .collect();
    json!({ "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata,
            "columnDefinitions": [
                { "name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0 },
                { "name": "Created At", "type": "date", "format": "", "description": "Creation time", "priority": 0 }],
            "rows": rows })
}

fn list(fake: &FakeApi, t: &Target, q: &BTreeMap<String, String>, table: bool) -> Response {
    let s = fake.state.lock().unwrap();
    // References first, copies of one page only: a list of 50k objects in
    // pages of 500 would otherwise copy every object for every page.
    let items: Vec<&Value> = s
        .objects
        .get(&t.res)
        .map(|m| {
            m.iter()
                .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
                .filter(|(_, o)| matches(q, o))
                .map(|(_, o)| o)
                .collect()
        })
        .unwrap_or_default();
    // Pages as the API server cuts them: `limit`, then `continue` (here the
    // offset; the real one also pins the resource version).
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let offset = q.get("continue").and_then(|c| c.parse::<usize>().ok()).unwrap_or(0);
    let more = items.len() > offset.saturating_add(limit);
    let items: Vec<Value> = items.into_iter().skip(offset).take(limit).cloned().collect();
    let mut metadata = json!({ "resourceVersion": s.rv.to_string() });
    if more {
        metadata["continue"] = json!((offset + limit).to_string());
    }
    if table {
        return axum::Json(as_table(items, metadata)).into_response();
    }
    axum::Json(json!({ "kind": "List", "apiVersion": "v1", "metadata": metadata, "items": items })).into_response()
}

fn watch_line(kind: &str, obj: &Value) -> String {
    format!("{}\n", json!({ "type": kind, "object": obj }))
}

/// How a change shows in a watch with a selector (the API server's watch
/// cache): an object that starts matching is ADDED, one that stops matching
/// is DELETED (its last matching state at the event's version).
fn as_seen(e: &Ev, wanted: &dyn Fn(&Value) -> bool) -> Option<String> {
    let now = e.kind != "DELETED" && wanted(&e.obj);
    let before = e.old.as_ref().is_some_and(wanted);
    match (before, now) {
        (_, true) if e.kind == "ADDED" => Some(watch_line("ADDED", &e.obj)),
        (true, true) => Some(watch_line("MODIFIED", &e.obj)),
        (false, true) => Some(watch_line("ADDED", &e.obj)),
        (true, false) => {
            let mut last = e.old.clone().unwrap_or_default();
            last["metadata"]["resourceVersion"] = json!(e.rv.to_string());
            Some(watch_line("DELETED", &last))
        }
        (false, false) => None,
    }
}

fn expired(message: &str) -> String {
    let ev = json!({ "type": "ERROR", "object": { "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "code": 410, "reason": "Expired", "message": message } });
    format!("{ev}\n")
}

async fn watch(fake: FakeApi, t: Target, q: BTreeMap<String, String>) -> Response {
    let rx = fake.tx.subscribe();
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    // A streaming list: the current state as ADDED, then a bookmark saying so.
    let initial_events = q.get("sendInitialEvents").map(String::as_str) == Some("true");
    let ns = t.namespace.clone();
    let wanted = Arc::new(move |o: &Value| {
        ns.as_ref().is_none_or(|n| o["metadata"]["namespace"].as_str() == Some(n)) && matches(&q, o)
    });
    let (first, last, gone) = {
        let mut s = fake.state.lock().unwrap();
        *s.watches.entry(t.res.clone()).or_default() += 1;
        let gone = from != 0 && from < s.compacted && !initial_events;
        if from == 0 || initial_events {
            // No version (or "0"), or a streaming list: synthetic ADDED events
            // of everything there now, then what happens next.
            let mut first: Vec<String> = s
                .objects
                .get(&t.res)
                .into_iter()
                .flatten()
                .filter(|(_, o)| wanted(o))
                .map(|(_, o)| watch_line("ADDED", o))
                .collect();
            if initial_events {
                first.push(format!(
                    "{}\n",
                    json!({ "type": "BOOKMARK", "object": { "kind": kind_of(&t.res).kind,
                        "apiVersion": api_version_of(&t.res), "metadata": { "resourceVersion": s.rv.to_string(),
                        "annotations": { "k8s.io/initial-events-end": "true" } } } })
                ));
            }
            (first, s.rv, gone)
        } else {
            let replay: Vec<Ev> = s.log.iter().filter(|e| e.res == t.res && e.rv > from).cloned().collect();
            let last = replay.last().map_or(from, |e| e.rv);
            (replay.iter().filter_map(|e| as_seen(e, &*wanted)).collect(), last, gone)
        }
    };
    if gone {
        return expired("too old resource version").into_response();
    }
    let res = t.res.clone();
    // None: the watch ends; Some(None): nothing for this watcher.
    let live = futures::stream::unfold((rx, false), move |(mut rx, ended)| {
        let res = res.clone();
        let wanted = wanted.clone();
        let fake = fake.clone();
        async move {
            if ended {
                return None;
            }
            loop {
                let line = match rx.recv().await {
                    Ok(Msg::Close(r)) if r == res => return None,
                    Ok(Msg::Ev(e)) if e.res == res && e.rv > last => as_seen(&e, &*wanted),
                    Ok(Msg::Bookmark(r, rv)) if bookmarks && r == res => Some(format!(
                        "{}\n",
                        json!({ "type": "BOOKMARK", "object": { "kind": "Bookmark", "apiVersion": "v1",
                            "metadata": { "resourceVersion": rv.to_string() } } })
                    )),
                    Ok(_) => None,
                    // Too far behind: the API server ends such a watch; the
                    // watcher must list again (events are never skipped).
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        fake.state.lock().unwrap().lagged += 1;
                        return Some((expired("the watch fell behind; list again"), (rx, true)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                if let Some(line) = line {
                    return Some((line, (rx, false)));
                }
            }
        }
    })
    .map(Ok::<_, std::convert::Infallible>);
    let stream = futures::stream::iter(first.into_iter().map(Ok)).chain(live);
    axum::body::Body::from_stream(stream).into_response()
}

#[allow(clippy::result_large_err)] // a test server: the error is the answer
fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| status(400, "BadRequest", &format!("body: {e}")))
}

/// The API server's size checks of a write: a ConfigMap's data over 1 MiB
/// is invalid (`422`), any object over etcd's request limit too large.
#[allow(clippy::result_large_err)]
fn check_size(r: &Res, obj: &Value) -> Result<(), Response> {
    if *r == kinds::configmaps() {
        let size: usize = ["data", "binaryData"]
            .iter()
            .filter_map(|f| obj[*f].as_object())
            .flat_map(|m| m.iter())
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > CONFIGMAP_LIMIT {
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            return Err(status(
                422,
                "Invalid",
                &format!("ConfigMap \"{name}\" is invalid: []: Too long: may not be more than {CONFIGMAP_LIMIT} bytes"),
            ));
        }
    }
    if obj.to_string().len() > OBJECT_LIMIT {
        return Err(status(413, "RequestEntityTooLarge", "etcdserver: request is too large"));
    }
    Ok(())
}

fn create(fake: &FakeApi, t: &Target, ns: &str, body: &[u8], q: &BTreeMap<String, String>, manager: &str) -> Response {
    let mut obj = match parse_body(body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if t.namespace.is_some() {
        obj["metadata"]["namespace"] = json!(ns);
    }
    *fake.state.lock().unwrap().creates.entry(t.res.clone()).or_default() += 1;
    if t.res == kinds::events() {
        if let Err((field, why)) = check_event(&obj) {
            return status(422, "Invalid", &format!("Event.events.k8s.io is invalid: {field}: {why}"));
        }
    }
    if !obj["metadata"]["resourceVersion"].as_str().unwrap_or_default().is_empty() {
        return status(400, "BadRequest", "resourceVersion should not be set on objects to be created");
    }
    if let Err(r) = check_fields(&t.res, &mut obj, q, false) {
        return r;
    }
    if let Err(r) = check_size(&t.res, &obj) {
        return r;
    }
    let k = key_of(&obj);
    let mut s = fake.state.lock().unwrap();
    if s.objects.get(&t.res).is_some_and(|m| m.contains_key(&k)) {
        return status(409, "AlreadyExists", &format!("{} already exists", k.1));
    }
    owned_by_update(&t.res, None, &mut obj, manager, false);
    let (ev, obj) = store(&mut s, &t.res, k, obj, "ADDED");
    drop(s);
    let _ = fake.tx.send(Msg::Ev(ev));
    (StatusCode::CREATED, axum::Json(obj)).into_response()
}

/// A custom resource's fields its CRD does not declare: refused under
/// `fieldValidation=Strict` (what kubectl sends), else pruned, as the API
/// server does with a structural schema.
#[allow(clippy::result_large_err)]
fn check_fields(r: &Res, obj: &mut Value, q: &BTreeMap<String, String>, applying: bool) -> Result<(), Response> {
    let Some(crd) = crds().get(r) else { return Ok(()) };
    let strict = q.get("fieldValidation").map(String::as_str) == Some("Strict");
    let unknown = ssa::unknown_fields(obj, &crd.schema, !strict);
    match unknown.first() {
        Some(field) if strict && applying => {
            Err(status(400, "BadRequest", &format!(".{field}: field not declared in schema")))
        }
        Some(field) if strict => {
            Err(status(400, "BadRequest", &format!("strict decoding error: unknown field \"{field}\"")))
        }
        _ => Ok(()),
    }
}

fn conflict() -> Response {
    status(
        409,
        "Conflict",
        "the object has been modified; please apply your changes to the latest version and try again",
    )
}

#[allow(clippy::too_many_arguments)]
fn replace(
    fake: &FakeApi,
    t: &Target,
    ns: &str,
    name: &str,
    body: &[u8],
    q: &BTreeMap<String, String>,
    manager: &str,
) -> Response {
    let mut given = match parse_body(body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if let Err(r) = check_fields(&t.res, &mut given, q, false) {
        return r;
    }
    let k = (ns.to_owned(), name.to_owned());
    let mut s = fake.state.lock().unwrap();
    if let Some(winner) = s.race.remove(&t.res) {
        let (ev, _) = store(&mut s, &t.res, key_of(&winner), winner, "MODIFIED");
        let _ = fake.tx.send(Msg::Ev(ev));
    }
    let Some(current) = s.objects.get(&t.res).and_then(|m| m.get(&k)).cloned() else {
        return not_found(&t.res, name);
    };
    let rv = given["metadata"]["resourceVersion"].as_str();
    if rv.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str()) {
        return conflict();
    }
    let mut obj = if t.status {
        let mut o = current.clone();
        o["status"] = given["status"].clone();
        o
    } else {
        let mut o = given;
        o["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
        o["status"] = current["status"].clone();
        if o["status"].is_null() {
            o.as_object_mut().map(|m| m.remove("status"));
        }
        o
    };
    if let Err(r) = check_size(&t.res, &obj) {
        return r;
    }
    owned_by_update(&t.res, Some(&current), &mut obj, manager, t.status);
    let (ev, obj) = store(&mut s, &t.res, k, obj, "MODIFIED");
    drop(s);
    let _ = fake.tx.send(Msg::Ev(ev));
    axum::Json(obj).into_response()
}

#[allow(clippy::too_many_arguments)]
fn patch(
    fake: &FakeApi,
    t: &Target,
    ns: &str,
    name: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
    manager: &str,
) -> Response {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let applying = content_type.starts_with("application/apply-patch");
    // An apply body may be YAML (JSON is YAML too).
    let mut given: Value = if applying {
        match serde_yaml::from_slice(body) {
            Ok(v) => v,
            Err(e) => return status(400, "BadRequest", &format!("body: {e}")),
        }
    } else {
        match parse_body(body) {
            Ok(o) => o,
            Err(r) => return r,
        }
    };
    if applying {
        if let Err(r) = check_fields(&t.res, &mut given, q, true) {
            return r;
        }
    }
    let k = (ns.to_owned(), name.to_owned());
    let mut s = fake.state.lock().unwrap();
    let current = s.objects.get(&t.res).and_then(|m| m.get(&k)).cloned();
    let mut obj = if applying {
        let Some(manager) = q.get("fieldManager").cloned() else {
            return status(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            );
        };
        if given["metadata"]["managedFields"].as_array().is_some_and(|m| !m.is_empty()) {
            return status(400, "BadRequest", "metadata.managedFields must be nil");
        }
        // A resourceVersion in the applied object is a precondition on an
        // update; an apply that creates ignores it (the API server wipes it
        // before storing), but not a uid: that one is refused.
        if let Some(rv) = given["metadata"]["resourceVersion"].as_str().filter(|rv| !rv.is_empty()) {
            if current.as_ref().is_some_and(|c| c["metadata"]["resourceVersion"].as_str() != Some(rv)) {
                return conflict();
            }
        }
        if let Some(uid) = given["metadata"]["uid"].as_str().filter(|u| !u.is_empty()) {
            match &current {
                None => {
                    return status(
                        409,
                        "Conflict",
                        &format!("Operation cannot be fulfilled on {name}: uid mismatch: the provided object specified uid {uid}, and no existing object was found"),
                    )
                }
                Some(c) if c["metadata"]["uid"].as_str() != Some(uid) => {
                    return status(409, "Conflict", &format!("Operation cannot be fulfilled on {name}: Precondition failed: UID in precondition: {uid}, UID in object meta: {}", c["metadata"]["uid"].as_str().unwrap_or_default()))
                }
                Some(_) => {}
            }
        }
        let force = q.get("force").map(String::as_str) == Some("true");
        let api_version = given["apiVersion"].as_str().unwrap_or_default().to_owned();
        let time = now_rfc3339();
        let w = ssa::Writer {
            manager: &manager,
            subresource: t.status.then_some("status"),
            api_version: &api_version,
            time: &time,
        };
        let mut o = match ssa::apply(current.as_ref(), &given, &schema_of(&t.res), &w, force) {
            Ok(o) => o,
            Err(c) => {
                let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                   "code": 409, "reason": "Conflict", "message": c.message(),
                                   "details": { "causes": c.causes() } });
                return (StatusCode::CONFLICT, axum::Json(body)).into_response();
            }
        };
        o["apiVersion"] = given["apiVersion"].clone();
        o["kind"] = given["kind"].clone();
        o["metadata"]["name"] = json!(name);
        if t.namespace.is_some() {
            o["metadata"]["namespace"] = json!(ns);
        }
        o
    } else {
        let Some(mut o) = current.clone() else { return not_found(&t.res, name) };
        if content_type.starts_with("application/json-patch") {
            return status(415, "UnsupportedMediaType", "the fake does not do JSON patches (RFC 6902)");
        }
        let strategic = content_type.starts_with("application/strategic-merge-patch");
        if strategic && crds().contains_key(&t.res) {
            return status(
                415,
                "UnsupportedMediaType",
                "strategic merge patch is not supported for custom resources: use a merge patch",
            );
        }
        let rv = given["metadata"]["resourceVersion"].as_str().map(str::to_owned);
        if rv.is_some_and(|rv| Some(rv.as_str()) != o["metadata"]["resourceVersion"].as_str()) {
            return conflict();
        }
        let mut given = given;
        if t.status {
            // Only `status` changes through `/status`.
            given = json!({ "status": given["status"].clone() });
        } else if let Some(m) = given.as_object_mut() {
            m.remove("status");
        }
        if strategic {
            ssa::strategic_merge(&mut o, &given);
        } else {
            ssa::merge_patch(&mut o, &given);
        }
        if let Err(r) = check_fields(&t.res, &mut o, q, false) {
            return r;
        }
        if let Some(c) = &current {
            owned_by_update(&t.res, Some(c), &mut o, manager, t.status);
        }
        o
    };
    if let Err(r) = check_size(&t.res, &obj) {
        return r;
    }
    if current.is_none() {
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
    }
    let kind = if current.is_some() { "MODIFIED" } else { "ADDED" };
    // A write that changes nothing is no new version, as in the API server.
    if let Some(c) = &current {
        let mut same = obj.clone();
        same["metadata"]["managedFields"] = c["metadata"]["managedFields"].clone();
        same["metadata"]["resourceVersion"] = c["metadata"]["resourceVersion"].clone();
        same["metadata"]["generation"] = c["metadata"]["generation"].clone();
        same["metadata"]["creationTimestamp"] = c["metadata"]["creationTimestamp"].clone();
        if same == *c {
            return axum::Json(c.clone()).into_response();
        }
    }
    let (ev, stored) = store(&mut s, &t.res, k, std::mem::take(&mut obj), kind);
    drop(s);
    let _ = fake.tx.send(Msg::Ev(ev));
    let code = if current.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    (code, axum::Json(stored)).into_response()
}

fn delete(fake: &FakeApi, t: &Target, ns: &str, name: &str, q: &BTreeMap<String, String>, body: &[u8]) -> Response {
    let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(existing) = fake.get(&t.res, ns, name) else { return not_found(&t.res, name) };
    let pre = &options["preconditions"];
    if let Some(rv) = pre["resourceVersion"].as_str() {
        if existing["metadata"]["resourceVersion"].as_str() != Some(rv) {
            return status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {name}: the ResourceVersion in the precondition ({rv}) does not match the ResourceVersion in record ({}). The object might have been modified",
                    existing["metadata"]["resourceVersion"].as_str().unwrap_or_default()
                ),
            );
        }
    }
    if let Some(uid) = pre["uid"].as_str() {
        if existing["metadata"]["uid"].as_str() != Some(uid) {
            return status(409, "Conflict", &format!("Operation cannot be fulfilled on {name}: Precondition failed: UID in precondition: {uid}, UID in object meta: {}", existing["metadata"]["uid"]));
        }
    }
    let grace =
        options["gracePeriodSeconds"].as_u64().or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    if t.res == kinds::pods() && grace != Some(0) {
        // A pod terminates first; it goes when its grace is over.
        fake.terminate_pod(ns, name);
        let grace = fake.state.lock().unwrap().pod_grace;
        let (f, pod_ns, pod) = (fake.clone(), ns.to_owned(), name.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            f.remove_pod(&pod_ns, &pod);
        });
        return axum::Json(fake.get(&t.res, ns, name).unwrap_or(existing)).into_response();
    }
    if t.res == kinds::pods() {
        fake.remove_pod(ns, name);
    } else {
        fake.delete(&t.res, ns, name);
    }
    axum::Json(existing).into_response()
}

/// The API server's checks of an `events.k8s.io/v1` Event on create
/// (`ValidateEventCreate`): the field and why.
fn check_event(e: &Value) -> Result<(), (&'static str, String)> {
    let text = |field: &str| e[field].as_str().unwrap_or_default().to_owned();
    let name = e["metadata"]["name"].as_str().unwrap_or_default();
    let dns_label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(dns_label) {
        return Err(("metadata.name", format!("{name:?}: not a DNS-1123 subdomain")));
    }
    if text("eventTime").is_empty() {
        return Err(("eventTime", "Required value".into()));
    }
    if !matches!(text("type").as_str(), "Normal" | "Warning") {
        return Err(("type", format!("{:?}: not Normal or Warning", text("type"))));
    }
    let namespace = e["metadata"]["namespace"].as_str().unwrap_or_default();
    if e["regarding"]["namespace"].as_str().unwrap_or_default().is_empty()
        && !matches!(namespace, "default" | "kube-system")
    {
        // The API server names the field by its internal name.
        return Err((
            "involvedObject.namespace",
            format!("Invalid value: \"\": does not match event.namespace {namespace:?}"),
        ));
    }
    let controller = text("reportingController");
    let (prefix, last) = controller.rsplit_once('/').unwrap_or(("", controller.as_str()));
    if last.is_empty() || last.len() > 63 || prefix.split('.').any(|l| !prefix.is_empty() && !dns_label(l)) {
        return Err(("reportingController", format!("{controller:?}: not a qualified name")));
    }
    for (field, max) in [("reportingInstance", 128), ("action", 128), ("reason", 128)] {
        let value = text(field);
        if value.is_empty() || value.len() > max {
            return Err((field, format!("required, at most {max} characters")));
        }
    }
    if text("note").len() > 1024 {
        return Err(("note", "can have at most 1024 characters".into()));
    }
    for field in ["deprecatedFirstTimestamp", "deprecatedLastTimestamp", "deprecatedCount", "deprecatedSource"] {
        if !e[field].is_null() {
            return Err(("deprecated fields", format!("{field} needs to be unset")));
        }
    }
    Ok(())
}

impl FakeApi {
    /// The field manager that applied an object (the first of its
    /// `managedFields` entries with operation `Apply`), if any.
    pub fn manager(&self, r: &Res, ns: &str, name: &str) -> Option<String> {
        self.managers(r, ns, name).into_iter().find(|(_, op)| op == "Apply").map(|(m, _)| m)
    }
}

impl FakeApi {
    /// How many objects of `r` there are.
    pub fn count(&self, r: &Res) -> usize {
        self.state.lock().unwrap().objects.get(r).map_or(0, |m| m.len())
    }
}

/// The objects a shipped kustomize package renders to (what `kubectl apply
/// -k` would send), by the real `kubectl kustomize` (kubectl >= 1.27).
pub fn kustomize(dir: &std::path::Path) -> Vec<Value> {
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("kubectl kustomize {}: {e} (needs kubectl >= 1.27)", dir.display()));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {} (needs kubectl >= 1.27): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap()).collect()
}

/// The RBAC rules that `objects` bind to the companion's ServiceAccount
/// (`isogroup-system/isogroup-companion`): (the namespace a RoleBinding
/// grants in, or `None` cluster-wide, rule).
pub fn companion_rbac(objects: &[Value]) -> Vec<(Option<String>, Value)> {
    let ours = |s: &Value| {
        s["kind"] == "ServiceAccount" && s["name"] == "isogroup-companion" && s["namespace"] == "isogroup-system"
    };
    let mut rules = vec![];
    for binding in objects.iter().filter(|d| matches!(d["kind"].as_str(), Some("RoleBinding" | "ClusterRoleBinding"))) {
        if !binding["subjects"].as_array().is_some_and(|s| s.iter().any(ours)) {
            continue;
        }
        // A RoleBinding grants in its own namespace, even for a ClusterRole.
        let namespace = binding["metadata"]["namespace"].as_str().map(str::to_owned);
        let role = objects
            .iter()
            .find(|d| d["kind"] == binding["roleRef"]["kind"] && d["metadata"]["name"] == binding["roleRef"]["name"])
            .unwrap_or_else(|| panic!("{} names a role the manifests do not have", binding["metadata"]["name"]));
        rules.extend(role["rules"].as_array().into_iter().flatten().map(|r| (namespace.clone(), r.clone())));
    }
    rules
}
