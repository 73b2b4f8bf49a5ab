//! Kubernetes source, the watching half: mirror pods labelled
//! `isogroup.io/group`, services, endpoint slices and Istio DestinationRules
//! with kube-rs watchers (which re-list after `410 Gone` and restart dropped
//! watches), and publish `kube_snapshot::to_table` whenever the result
//! changes. The rules themselves live in `kube_snapshot` (pure, tested).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::core::v1::{Pod as K8sPod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};

use crate::istio::GROUP_LABEL;
use crate::kube_snapshot::{fqdn, Endpoint, EndpointSlice, Pod, Service, Snapshot};
use crate::metrics::Metrics;
use crate::store::kube::KubeStore;
use crate::store::now_ms;

/// Re-evaluate this often even without events: subsets settle with time.
const RECHECK: Duration = Duration::from_millis(500);

/// One watched kind, mirrored as (namespace, name) → our plain form.
struct Mirror<T> {
    items: BTreeMap<(String, String), T>,
    /// A re-list in progress (after `Init`): swapped in whole at `InitDone`.
    relist: Option<BTreeMap<(String, String), T>>,
    /// The first list is complete: until then the table would be partial.
    synced: bool,
}

impl<T> Mirror<T> {
    fn new() -> Self {
        Mirror { items: BTreeMap::new(), relist: None, synced: false }
    }

    fn apply<K: ResourceExt>(&mut self, event: Event<K>, convert: impl Fn(&K) -> Option<T>) {
        let key = |k: &K| (k.namespace().unwrap_or_default(), k.name_any());
        match event {
            Event::Init => self.relist = Some(BTreeMap::new()),
            Event::InitApply(k) => {
                if let (Some(buf), Some(v)) = (self.relist.as_mut(), convert(&k)) {
                    buf.insert(key(&k), v);
                }
            }
            Event::InitDone => {
                if let Some(buf) = self.relist.take() {
                    self.items = buf;
                }
                self.synced = true;
            }
            Event::Apply(k) => match convert(&k) {
                Some(v) => {
                    self.items.insert(key(&k), v);
                }
                None => {
                    self.items.remove(&key(&k));
                }
            },
            Event::Delete(k) => {
                self.items.remove(&key(&k));
            }
        }
    }
}

/// Boxed: a pod event is kilobytes, a tick is nothing.
enum Update {
    Pod(Box<Event<K8sPod>>),
    Service(Box<Event<K8sService>>),
    Slice(Box<Event<K8sSlice>>),
    Rule(Box<Event<DynamicObject>>),
    Tick,
    /// A watch error: kube-rs retries it; we only count it.
    Error(String),
}

fn pod(p: &K8sPod) -> Option<Pod> {
    Some(Pod { namespace: p.namespace()?, name: p.name_any(), labels: p.labels().clone() })
}

fn service(s: &K8sService) -> Option<Service> {
    let port = s.spec.as_ref()?.ports.as_ref()?.first()?.port;
    Some(Service { namespace: s.namespace()?, name: s.name_any(), port: u16::try_from(port).ok()? })
}

fn slice(s: &K8sSlice) -> Option<EndpointSlice> {
    let service = s.labels().get("kubernetes.io/service-name")?.clone();
    let endpoints = s
        .endpoints
        .iter()
        .map(|e| Endpoint {
            // An unknown readiness is ready, as the EndpointSlice API says.
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
            pod: e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| r.name.clone()),
        })
        .collect();
    Some(EndpointSlice { namespace: s.namespace()?, service, endpoints })
}

/// A DestinationRule's host (as an FQDN) and its subset names.
fn rule(r: &DynamicObject) -> Option<(String, Vec<String>)> {
    let ns = r.namespace()?;
    let host = r.data.get("spec")?.get("host")?.as_str()?;
    let host = match host.matches('.').count() {
        0 => fqdn(&ns, host),
        1 => format!("{host}.svc.cluster.local"),
        _ => host.to_owned(),
    };
    let subsets =
        r.data["spec"]["subsets"].as_array()?.iter().filter_map(|s| s["name"].as_str().map(str::to_owned)).collect();
    Some((host, subsets))
}

fn destination_rules(client: &Client) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule");
    Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
}

/// kube-rs talks TLS through rustls, which needs one process-wide crypto
/// provider chosen explicitly when more than one could be compiled in.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Watches the cluster and publishes tables until the process ends.
pub async fn run(client: Client, store: Arc<KubeStore>, metrics: Arc<Metrics>, settle: Duration) {
    let pods = watcher::watcher(Api::<K8sPod>::all(client.clone()), watcher::Config::default().labels(GROUP_LABEL));
    let services = watcher::watcher(Api::<K8sService>::all(client.clone()), watcher::Config::default());
    let slices = watcher::watcher(Api::<K8sSlice>::all(client.clone()), watcher::Config::default());
    let rules = watcher::watcher(destination_rules(&client), watcher::Config::default());
    let ticks = stream::unfold((), |()| async {
        tokio::time::sleep(RECHECK).await;
        Some((Update::Tick, ()))
    });
    let streams: Vec<BoxStream<'static, Update>> = vec![
        pods.map(|e| e.map_or_else(|e| Update::Error(e.to_string()), |e| Update::Pod(Box::new(e)))).boxed(),
        services.map(|e| e.map_or_else(|e| Update::Error(e.to_string()), |e| Update::Service(Box::new(e)))).boxed(),
        slices.map(|e| e.map_or_else(|e| Update::Error(e.to_string()), |e| Update::Slice(Box::new(e)))).boxed(),
        rules.map(|e| e.map_or_else(|e| Update::Error(e.to_string()), |e| Update::Rule(Box::new(e)))).boxed(),
        ticks.boxed(),
    ];
    let mut updates = stream::select_all(streams);
    let (mut p, mut s, mut sl, mut r) = (Mirror::new(), Mirror::new(), Mirror::new(), Mirror::new());
    // (namespace, host, subset) → when first seen, for the settle delay.
    let mut first_seen: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    while let Some(update) = updates.next().await {
        match update {
            Update::Pod(e) => p.apply(*e, pod),
            Update::Service(e) => s.apply(*e, service),
            Update::Slice(e) => sl.apply(*e, slice),
            Update::Rule(e) => r.apply(*e, rule),
            Update::Tick => {}
            Update::Error(e) => {
                metrics.watch_errors.inc();
                tracing::warn!(error = %e, "kubernetes watch (kube-rs retries)");
                continue;
            }
        }
        if !(p.synced && s.synced && sl.synced && r.synced) {
            continue;
        }
        let now = now_ms();
        let mut subsets: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
        for ((ns, _), (host, names)) in &r.items {
            for name in names {
                let since = *first_seen.entry((ns.clone(), host.clone(), name.clone())).or_insert(now);
                subsets.entry((ns.clone(), host.clone())).or_default().insert(name.clone(), since);
            }
        }
        first_seen.retain(|(ns, host, name), _| {
            subsets.get(&(ns.clone(), host.clone())).is_some_and(|m| m.contains_key(name))
        });
        let snap = Snapshot {
            services: s.items.values().cloned().collect(),
            pods: p.items.values().cloned().collect(),
            slices: sl.items.values().cloned().collect(),
            subsets,
        };
        let base = &crate::store::Store::served(&*store).base;
        let table = crate::kube_snapshot::to_table(&snap, base, now, settle.as_millis() as u64);
        match store.publish(table) {
            Ok(None) => {}
            Ok(Some(snap)) => {
                tracing::info!(
                    version = snap.version,
                    services = snap.table.service_count(),
                    "kubernetes: table published"
                );
            }
            Err(errors) => {
                metrics.file_rejects.inc();
                tracing::error!(error = %errors, "kubernetes: table refused");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The watch loop against a fake API server (axum) that serves list and
    //! watch for the four kinds, can end a watch, and can answer the next
    //! watch with `410 Gone` so the watcher must re-list.

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use axum::extract::{Query, State};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use futures::StreamExt;
    use isogroup_core::{Limits, RawTable};
    use serde_json::{json, Value};
    use tokio::sync::broadcast;

    use crate::metrics::Metrics;
    use crate::store::kube::KubeStore;
    use crate::store::{Served, Store};

    #[derive(Clone)]
    enum Msg {
        Event(&'static str, &'static str, Value),
        /// End the watch of a kind; its next watch gets 410 Gone.
        Gone(&'static str),
    }

    #[derive(Clone)]
    struct Fake {
        objects: Arc<Mutex<BTreeMap<&'static str, BTreeMap<String, Value>>>>,
        gone: Arc<Mutex<Vec<&'static str>>>,
        tx: broadcast::Sender<Msg>,
        version: Arc<Mutex<u64>>,
    }

    fn key(o: &Value) -> String {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or(""),
            o["metadata"]["name"].as_str().unwrap_or("")
        )
    }

    impl Fake {
        fn bump(&self, mut o: Value) -> Value {
            let mut v = self.version.lock().unwrap();
            *v += 1;
            o["metadata"]["resourceVersion"] = json!(v.to_string());
            o
        }
        /// Changes state and tells the watchers.
        fn put(&self, kind: &'static str, o: Value) {
            let o = self.bump(o);
            let existed = self.objects.lock().unwrap().entry(kind).or_default().insert(key(&o), o.clone()).is_some();
            let _ = self.tx.send(Msg::Event(kind, if existed { "MODIFIED" } else { "ADDED" }, o));
        }
        /// Changes state silently (only a re-list sees it).
        fn put_quietly(&self, kind: &'static str, o: Value) {
            let o = self.bump(o);
            self.objects.lock().unwrap().entry(kind).or_default().insert(key(&o), o);
        }
        fn expire_watch(&self, kind: &'static str) {
            self.gone.lock().unwrap().push(kind);
            let _ = self.tx.send(Msg::Gone(kind));
        }
    }

    async fn serve(kind: &'static str, list_kind: &'static str, fake: Fake, watch: bool) -> Response {
        if !watch {
            let items: Vec<Value> =
                fake.objects.lock().unwrap().get(kind).map(|m| m.values().cloned().collect()).unwrap_or_default();
            let rv = fake.version.lock().unwrap().to_string();
            return axum::Json(
                json!({ "kind": list_kind, "apiVersion": "v1", "metadata": { "resourceVersion": rv }, "items": items }),
            )
            .into_response();
        }
        let expired = {
            let mut gone = fake.gone.lock().unwrap();
            let hit = gone.iter().position(|k| *k == kind);
            hit.map(|i| gone.remove(i)).is_some()
        };
        if expired {
            let status = json!({ "type": "ERROR", "object": { "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version" } });
            return format!("{status}\n").into_response();
        }
        let rx = fake.tx.subscribe();
        let events = tokio_stream_from(rx)
            .take_while(move |m| futures::future::ready(!matches!(m, Msg::Gone(k) if *k == kind)))
            .filter_map(move |m| async move {
                match m {
                    Msg::Event(k, t, o) if k == kind => {
                        Some(Ok::<_, std::convert::Infallible>(format!("{}\n", json!({ "type": t, "object": o }))))
                    }
                    _ => None,
                }
            });
        axum::body::Body::from_stream(events).into_response()
    }

    fn tokio_stream_from(rx: broadcast::Receiver<Msg>) -> impl futures::Stream<Item = Msg> {
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(m) => return Some((m, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    #[derive(serde::Deserialize)]
    struct WatchQuery {
        watch: Option<bool>,
    }

    fn pod(name: &str, group: &str) -> Value {
        json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": "bookinfo", "labels": { "isogroup.io/group": group } } })
    }

    fn slice(ready: &[(&str, bool)]) -> Value {
        let endpoints: Vec<Value> = ready
            .iter()
            .map(|(p, r)| json!({ "addresses": ["10.0.0.1"], "conditions": { "ready": r }, "targetRef": { "kind": "Pod", "name": p } }))
            .collect();
        json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                "metadata": { "name": "reviews-x1", "namespace": "bookinfo", "labels": { "kubernetes.io/service-name": "reviews" } },
                "endpoints": endpoints })
    }

    fn rule(subsets: &[&str]) -> Value {
        let subsets: Vec<Value> =
            subsets.iter().map(|s| json!({ "name": s, "labels": { "isogroup.io/group": s } })).collect();
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": { "name": "reviews", "namespace": "bookinfo" }, "spec": { "host": "reviews", "subsets": subsets } })
    }

    async fn wait_for(store: &KubeStore, what: &str, want: impl Fn(&RawTable) -> bool) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cur = store.served().current();
            if want(&cur.raw) {
                return cur.version;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", cur.raw.services);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn groups(t: &RawTable) -> Vec<String> {
        t.services.get("reviews.bookinfo").map(|s| s.clusters.keys().cloned().collect()).unwrap_or_default()
    }

    #[tokio::test]
    async fn watch_loop_follows_the_cluster() {
        let (tx, _) = broadcast::channel(256);
        let fake =
            Fake { objects: Default::default(), gone: Default::default(), tx, version: Arc::new(Mutex::new(100)) };
        fake.put_quietly("services", json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "reviews", "namespace": "bookinfo" }, "spec": { "ports": [{ "port": 9080 }] } }));
        fake.put_quietly("pods", pod("r0", "base"));
        fake.put_quietly("pods", pod("f1", "feature-1"));
        fake.put_quietly("endpointslices", slice(&[("r0", true), ("f1", true)]));
        fake.put_quietly("destinationrules", rule(&["base", "feature-1"]));
        let route = |kind: &'static str, list: &'static str| {
            get(move |State(f): State<Fake>, Query(q): Query<WatchQuery>| async move {
                serve(kind, list, f, q.watch.unwrap_or(false)).await
            })
        };
        let app = axum::Router::new()
            .route("/api/v1/pods", route("pods", "PodList"))
            .route("/api/v1/services", route("services", "ServiceList"))
            .route("/apis/discovery.k8s.io/v1/endpointslices", route("endpointslices", "EndpointSliceList"))
            .route("/apis/networking.istio.io/v1/destinationrules", route("destinationrules", "DestinationRuleList"))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        super::install_crypto();
        let config = kube::Config::new(url.parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        let metrics = Arc::new(Metrics::new());
        let served = Served::new("base".into(), Limits::default(), metrics.clone()).unwrap();
        let store = Arc::new(KubeStore::new(served));
        assert!(!store.served().readiness().is_ready(), "not ready before the first lists");
        tokio::spawn(super::run(client, store.clone(), metrics, Duration::from_millis(300)));

        let mut versions = vec![];
        // ready pod whose subset has settled → the group appears
        versions.push(wait_for(&store, "feature-1", |t| groups(t) == ["base", "feature-1"]).await);
        assert!(store.served().readiness().is_ready());
        let reviews = store.served().current().raw.services["reviews.bookinfo"].clone();
        assert_eq!(reviews.clusters["feature-1"], "outbound|9080|feature-1|reviews.bookinfo.svc.cluster.local");
        // not ready → it disappears
        fake.put("endpointslices", slice(&[("r0", true), ("f1", false)]));
        versions.push(wait_for(&store, "feature-1 gone", |t| groups(t) == ["base"]).await);
        // 410 Gone: the watch ends, the next one expires; the state changed
        // meanwhile without an event, so only a re-list can see it
        fake.put_quietly("endpointslices", slice(&[("r0", true), ("f1", true)]));
        fake.expire_watch("endpointslices");
        versions.push(wait_for(&store, "re-list after 410", |t| groups(t) == ["base", "feature-1"]).await);
        // a label change moves the pod; its group enters once its subset exists and settles
        fake.put("pods", pod("f1", "team-a"));
        versions.push(wait_for(&store, "feature-1 gone after relabel", |t| groups(t) == ["base"]).await);
        let started = Instant::now();
        fake.put("destinationrules", rule(&["base", "feature-1", "team-a"]));
        versions.push(wait_for(&store, "team-a after settle", |t| groups(t) == ["base", "team-a"]).await);
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "entered only after the settle delay: {:?}",
            started.elapsed()
        );
        // a watch restart (the stream just ends) loses nothing
        fake.expire_watch("pods");
        fake.put("pods", pod("f1", "feature-1"));
        versions.push(wait_for(&store, "pod back in feature-1", |t| groups(t) == ["base", "feature-1"]).await);
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions only go up: {versions:?}");
    }
}
