//! A fake Kubernetes API server for the Kubernetes source's tests: just what
//! they assert, over real HTTP so kube-rs runs unchanged.
//!
//! - list and watch for any installed resource, cluster-wide or in one
//!   namespace, with label selectors (`k`, `k=v`, comma-separated);
//! - watches resume from a resource version (events replayed from a log),
//!   answer `410 Gone` for one older than the log's compaction point, send
//!   bookmarks when asked, and can be ended by the test;
//! - get, create (`409 AlreadyExists`), replace with a resource-version
//!   check (`409 Conflict`), merge patch, server-side apply (field managers,
//!   a conflict unless `force`), delete; `/status` touches only `status`;
//!   another writer can be made to win the race to the next replace;
//! - a resource not installed answers `404` (a missing CRD or version), and a
//!   resource can be made to fail with any status (e.g. `403`) or to hang;
//! - `events.k8s.io/v1` Events are created and listed like any object, and
//!   checked as the API server checks them (`422 Invalid` naming the field);
//! - every request is recorded as RBAC sees it, so a test can check them
//!   against the shipped RBAC (`companion_rbac`, `denied`).
//!
//! It names no item of this crate (a kube client for it is `FakeClient`, in
//! `kube::tests`): the Envoy end-to-end test `tests/kube_lanes.rs` includes
//! this very file and serves it to the real companion binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;

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
}

#[derive(Clone, Debug)]
enum Msg {
    Ev(Ev),
    /// End every watch of this resource.
    Close(Res),
    Bookmark(Res, u64),
}

#[derive(Default)]
struct State0 {
    rv: u64,
    installed: BTreeSet<Res>,
    objects: BTreeMap<Res, BTreeMap<(String, String), Value>>,
    log: Vec<Ev>,
    /// Watches from a version below this answer 410 Gone.
    compacted: u64,
    fail: BTreeMap<Res, u16>,
    /// (res, namespace, name) → the field manager that last applied it.
    managers: BTreeMap<(Res, String, String), String>,
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
        let (tx, _) = broadcast::channel(4096);
        let state = State0 { rv: 100, installed: installed.iter().cloned().collect(), ..State0::default() };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let fake = FakeApi { state: Arc::new(Mutex::new(state)), tx, url };
        let app = axum::Router::new().fallback(handle).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    pub fn install(&self, r: &Res) {
        self.state.lock().unwrap().installed.insert(r.clone());
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
    /// tells the watchers.
    pub fn put(&self, r: &Res, obj: Value) -> Value {
        let mut s = self.state.lock().unwrap();
        let k = key_of(&obj);
        let existed = s.objects.get(r).is_some_and(|m| m.contains_key(&k));
        let (ev, obj) = store(&mut s, r, k, obj, if existed { "MODIFIED" } else { "ADDED" });
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
        let mut obj = obj;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        if obj["metadata"]["generation"].is_null() {
            obj["metadata"]["generation"] = json!(1);
        }
        let k = key_of(&obj);
        s.objects.entry(r.clone()).or_default().insert(k, obj);
    }

    pub fn delete(&self, r: &Res, ns: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        if let Some(ev) = remove(&mut s, r, &(ns.to_owned(), name.to_owned())) {
            drop(s);
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
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (m["namespace"].as_str().unwrap_or("").to_owned(), m["name"].as_str().unwrap_or("").to_owned())
}

fn store(s: &mut State0, r: &Res, k: (String, String), mut obj: Value, kind: &'static str) -> (Ev, Value) {
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    if obj["metadata"]["uid"].is_null() {
        obj["metadata"]["uid"] = json!(format!("uid-{}", s.rv));
    }
    // A new spec is a new generation, as in the API server.
    let previous = s.objects.get(r).and_then(|m| m.get(&k));
    let generation = match previous {
        Some(p) if p["spec"] == obj["spec"] => p["metadata"]["generation"].as_u64().unwrap_or(1),
        Some(p) => p["metadata"]["generation"].as_u64().unwrap_or(1) + 1,
        None => 1,
    };
    obj["metadata"]["generation"] = json!(generation);
    s.objects.entry(r.clone()).or_default().insert(k, obj.clone());
    let ev = Ev { rv: s.rv, res: r.clone(), kind, obj: obj.clone() };
    s.log.push(ev.clone());
    (ev, obj)
}

fn remove(s: &mut State0, r: &Res, k: &(String, String)) -> Option<Ev> {
    let mut obj = s.objects.get_mut(r)?.remove(k)?;
    s.rv += 1;
    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
    let ev = Ev { rv: s.rv, res: r.clone(), kind: "DELETED", obj };
    s.log.push(ev.clone());
    Some(ev)
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({ "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "code": code, "reason": reason, "message": message });
    (StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), axum::Json(body)).into_response()
}

/// What a request path names.
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

fn selector_matches(selector: Option<&str>, obj: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else { return true };
    let labels = &obj["metadata"]["labels"];
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim_end_matches('=')].as_str() == Some(v),
        None => !labels[term].is_null(),
    })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

async fn handle(
    State(fake): State<FakeApi>,
    method: Method,
    uri: Uri,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
        s.stalled.contains(&t.res)
    };
    if stalled {
        return std::future::pending().await;
    }
    let ns = t.namespace.clone().unwrap_or_default();
    match (method, &t.name) {
        (Method::GET, None) if q.get("watch").map(String::as_str) == Some("true") => watch(fake, t, q).await,
        (Method::GET, None) => list(&fake, &t, &q),
        (Method::GET, Some(name)) => match fake.get(&t.res, &ns, name) {
            Some(o) => axum::Json(o).into_response(),
            None => status(404, "NotFound", &format!("{name} not found")),
        },
        (Method::POST, None) => create(&fake, &t, &ns, &body),
        (Method::PUT, Some(name)) => replace(&fake, &t, &ns, name, &body),
        (Method::PATCH, Some(name)) => patch(&fake, &t, &ns, name, &q, &headers, &body),
        (Method::DELETE, Some(name)) => {
            let existed = fake.get(&t.res, &ns, name);
            fake.delete(&t.res, &ns, name);
            match existed {
                Some(o) => axum::Json(o).into_response(),
                None => status(404, "NotFound", &format!("{name} not found")),
            }
        }
        _ => status(405, "MethodNotAllowed", "not in the fake"),
    }
}

fn list(fake: &FakeApi, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let s = fake.state.lock().unwrap();
    // References first, copies of one page only: a list of 50k objects in
    // pages of 500 would otherwise copy every object for every page.
    let items: Vec<&Value> = s
        .objects
        .get(&t.res)
        .map(|m| {
            m.iter()
                .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
                .filter(|(_, o)| selector_matches(q.get("labelSelector").map(String::as_str), o))
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
    axum::Json(json!({ "kind": "List", "apiVersion": "v1", "metadata": metadata, "items": items })).into_response()
}

async fn watch(fake: FakeApi, t: Target, q: BTreeMap<String, String>) -> Response {
    let rx = fake.tx.subscribe();
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let selector = q.get("labelSelector").cloned();
    let (replay, gone) = {
        let mut s = fake.state.lock().unwrap();
        *s.watches.entry(t.res.clone()).or_default() += 1;
        let gone = from != 0 && from < s.compacted;
        let replay: Vec<Ev> = s.log.iter().filter(|e| e.res == t.res && e.rv > from).cloned().collect();
        (replay, gone)
    };
    if gone {
        let ev = json!({ "type": "ERROR", "object": { "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version" } });
        return format!("{ev}\n").into_response();
    }
    let ns = t.namespace.clone();
    let res = t.res.clone();
    let wanted = move |e: &Ev| {
        e.res == res
            && ns.as_ref().is_none_or(|n| e.obj["metadata"]["namespace"].as_str() == Some(n))
            && selector_matches(selector.as_deref(), &e.obj)
    };
    let last = replay.last().map_or(from, |e| e.rv);
    let first: Vec<String> = replay
        .iter()
        .filter(|e| wanted(e))
        .map(|e| format!("{}\n", json!({ "type": e.kind, "object": e.obj })))
        .collect();
    let res = t.res.clone();
    let live = futures::stream::unfold((rx, last), |(mut rx, last)| async move {
        loop {
            match rx.recv().await {
                Ok(m) => return Some((m, (rx, last))),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .take_while({
        let res = res.clone();
        move |m| futures::future::ready(!matches!(m, Msg::Close(r) if *r == res))
    })
    .filter_map(move |m| {
        let line = match m {
            Msg::Ev(e) if e.rv > last && wanted(&e) => {
                Some(format!("{}\n", json!({ "type": e.kind, "object": e.obj })))
            }
            Msg::Bookmark(r, rv) if bookmarks && r == res => Some(format!(
                "{}\n",
                json!({ "type": "BOOKMARK", "object": { "kind": "Bookmark", "apiVersion": "v1",
                    "metadata": { "resourceVersion": rv.to_string() } } })
            )),
            _ => None,
        };
        futures::future::ready(line.map(Ok::<_, std::convert::Infallible>))
    });
    let stream = futures::stream::iter(first.into_iter().map(Ok)).chain(live);
    axum::body::Body::from_stream(stream).into_response()
}

#[allow(clippy::result_large_err)] // a test server: the error is the answer
fn parse_body(body: &[u8]) -> Result<Value, Response> {
    serde_json::from_slice(body).map_err(|e| status(400, "BadRequest", &format!("body: {e}")))
}

fn create(fake: &FakeApi, t: &Target, ns: &str, body: &[u8]) -> Response {
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
    let k = key_of(&obj);
    let mut s = fake.state.lock().unwrap();
    if s.objects.get(&t.res).is_some_and(|m| m.contains_key(&k)) {
        return status(409, "AlreadyExists", &format!("{} already exists", k.1));
    }
    let (ev, obj) = store(&mut s, &t.res, k, obj, "ADDED");
    drop(s);
    let _ = fake.tx.send(Msg::Ev(ev));
    (StatusCode::CREATED, axum::Json(obj)).into_response()
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

fn replace(fake: &FakeApi, t: &Target, ns: &str, name: &str, body: &[u8]) -> Response {
    let given = match parse_body(body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let k = (ns.to_owned(), name.to_owned());
    let mut s = fake.state.lock().unwrap();
    if let Some(winner) = s.race.remove(&t.res) {
        let (ev, _) = store(&mut s, &t.res, key_of(&winner), winner, "MODIFIED");
        let _ = fake.tx.send(Msg::Ev(ev));
    }
    let Some(current) = s.objects.get(&t.res).and_then(|m| m.get(&k)).cloned() else {
        return status(404, "NotFound", &format!("{name} not found"));
    };
    let rv = given["metadata"]["resourceVersion"].as_str();
    if rv.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str()) {
        return status(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version",
        );
    }
    let obj = if t.status {
        let mut o = current;
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
    let (ev, obj) = store(&mut s, &t.res, k, obj, "MODIFIED");
    drop(s);
    let _ = fake.tx.send(Msg::Ev(ev));
    axum::Json(obj).into_response()
}

fn patch(
    fake: &FakeApi,
    t: &Target,
    ns: &str,
    name: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let given = match parse_body(body) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let k = (ns.to_owned(), name.to_owned());
    let mut s = fake.state.lock().unwrap();
    let current = s.objects.get(&t.res).and_then(|m| m.get(&k)).cloned();
    let obj = if content_type.starts_with("application/apply-patch") {
        let Some(manager) = q.get("fieldManager").cloned() else {
            return status(422, "Invalid", "fieldManager is required for apply patch");
        };
        let owner = s.managers.get(&(t.res.clone(), k.0.clone(), k.1.clone())).cloned();
        let force = q.get("force").map(String::as_str) == Some("true");
        if current.is_some() && owner.as_deref() != Some(manager.as_str()) && !force {
            return status(
                409,
                "Conflict",
                &format!("Apply failed with 1 conflict: conflict with \"{}\"", owner.unwrap_or_default()),
            );
        }
        s.managers.insert((t.res.clone(), k.0.clone(), k.1.clone()), manager);
        // The applied configuration is the whole object this manager owns.
        let mut o = given;
        o["metadata"]["name"] = json!(name);
        if t.namespace.is_some() {
            o["metadata"]["namespace"] = json!(ns);
        }
        if let Some(c) = &current {
            o["metadata"]["uid"] = c["metadata"]["uid"].clone();
            if !t.status {
                if let Some(st) = c.get("status") {
                    o["status"] = st.clone();
                }
            }
        }
        o
    } else {
        let Some(mut o) = current.clone() else { return status(404, "NotFound", &format!("{name} not found")) };
        if t.status {
            let mut st = o["status"].take();
            merge(&mut st, &given["status"]);
            o["status"] = st;
        } else {
            merge(&mut o, &given);
        }
        o
    };
    let kind = if current.is_some() { "MODIFIED" } else { "ADDED" };
    let (ev, obj) = store(&mut s, &t.res, k, obj, kind);
    drop(s);
    let _ = fake.tx.send(Msg::Ev(ev));
    axum::Json(obj).into_response()
}

impl FakeApi {
    /// The field manager that last applied an object, if any.
    pub fn manager(&self, r: &Res, ns: &str, name: &str) -> Option<String> {
        self.state.lock().unwrap().managers.get(&(r.clone(), ns.to_owned(), name.to_owned())).cloned()
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
