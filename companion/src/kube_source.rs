//! Kubernetes source, the watching half: mirror pods labelled
//! `isogroup.io/group`, services, endpoint slices, Istio DestinationRules
//! (`v1`, else `v1beta1`) and `IsolationGroup` objects (each watch its own
//! task, see `kube_watch`), and hand `kube_snapshot::to_table` to the store
//! whenever the result changes. Bursts of events are drained before one
//! rebuild. The rules themselves live in `kube_snapshot` and `kube_groups`
//! (pure, tested).
//!
//! Every replica runs this loop (so a newly elected leader serves at once);
//! only the leader writes `IsolationGroup` statuses.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod as K8sPod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use crate::istio::GROUP_LABEL;
use crate::kube_groups::{self, GroupObject, Verdict};
use crate::kube_snapshot::{fqdn, Endpoint, EndpointSlice, Pod, Service, Snapshot};
use crate::kube_watch::{self, Mirror, Report, Timing};
use crate::metrics::{KindLabels, Metrics};
use crate::store::kube::KubeStore;
use crate::store::{now_ms, Readiness, Store};

/// DestinationRule versions, newest first.
const RULE_VERSIONS: &[&str] = &["v1", "v1beta1"];
const GROUP_VERSIONS: &[&str] = &[kube_groups::VERSION];

/// Timings of the loop (tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long a new subset must exist before its group enters the table.
    pub settle: Duration,
    /// Re-evaluate this often even without events: subsets settle with time.
    pub recheck: Duration,
    pub watch: Timing,
}

impl Options {
    pub fn new(settle: Duration) -> Options {
        Options { settle, recheck: Duration::from_millis(500), watch: Timing::default() }
    }
}

/// Boxed: a pod is kilobytes, a tick is nothing.
enum Update {
    Pod(Report<Pod>),
    Service(Report<Service>),
    Slice(Report<EndpointSlice>),
    Rule(Report<(String, Vec<String>)>),
    Group(Report<GroupObject>),
    Tick,
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

fn group(o: &DynamicObject) -> Option<GroupObject> {
    Some(GroupObject {
        name: o.name_any(),
        generation: o.metadata.generation.unwrap_or(0),
        spec: o.data.get("spec").cloned().unwrap_or_default(),
        status: o.data.get("status").cloned().unwrap_or_default(),
    })
}

/// kube-rs talks TLS through rustls, which needs one process-wide crypto
/// provider chosen explicitly when more than one could be compiled in.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The mirrors of every watched kind, and what settles with time.
#[derive(Default)]
struct Cluster {
    pods: Mirror<Pod>,
    services: Mirror<Service>,
    slices: Mirror<EndpointSlice>,
    rules: Mirror<(String, Vec<String>)>,
    groups: Mirror<GroupObject>,
    /// (namespace, host, subset) → when first seen (ms); 0 for subsets in
    /// the first list, which count as settled (the proxies have them).
    first_seen: BTreeMap<(String, String, String), u64>,
    /// Statuses written (or being written), so one verdict is written once;
    /// a failed write forgets its entry, so the next rebuild tries again.
    written: Written,
}

impl Cluster {
    fn apply(&mut self, update: Update, metrics: &Metrics) {
        let (kind, error) = match update {
            Update::Pod(r) => ("pods", error_of(r, |r| self.pods.apply(r))),
            Update::Service(r) => ("services", error_of(r, |r| self.services.apply(r))),
            Update::Slice(r) => ("endpointslices", error_of(r, |r| self.slices.apply(r))),
            Update::Rule(r) => {
                let first = !self.rules.synced;
                let error = error_of(r, |r| self.rules.apply(r));
                if first && self.rules.synced {
                    // Subsets in the first list count as settled: after a
                    // failover or a rollout, no lane waits again.
                    for ((ns, _), (host, names)) in &self.rules.items {
                        for name in names {
                            self.first_seen.insert((ns.clone(), host.clone(), name.clone()), 0);
                        }
                    }
                }
                ("destinationrules", error)
            }
            Update::Group(r) => ("isolationgroups", error_of(r, |r| self.groups.apply(r))),
            Update::Tick => return,
        };
        if let Some(e) = error {
            metrics.watch_errors.inc();
            metrics.kube_watch_errors.get_or_create(&KindLabels { kind }).inc();
            tracing::warn!(kind, error = %e, "kubernetes watch (retrying after a backoff)");
        }
    }

    fn synced(&self) -> bool {
        self.pods.synced && self.services.synced && self.slices.synced && self.rules.synced && self.groups.synced
    }

    /// Readiness with the detail `/readyz` shows: what is not listed yet,
    /// watch errors, missing kinds.
    fn readiness(&self) -> Readiness {
        let kinds: [(&str, bool, &Option<String>, &Option<String>); 5] = [
            ("pods", self.pods.synced, &self.pods.error, &None),
            ("services", self.services.synced, &self.services.error, &None),
            ("endpointslices", self.slices.synced, &self.slices.error, &None),
            ("destinationrules", self.rules.synced, &self.rules.error, &self.rules.missing),
            ("isolationgroups", self.groups.synced, &self.groups.error, &self.groups.missing),
        ];
        let mut notes = vec![];
        for (kind, synced, error, missing) in kinds {
            if !synced {
                notes.push(format!("{kind}: first list not finished"));
            }
            if let Some(e) = error {
                notes.push(format!("{kind}: watch error (retrying): {e}"));
            }
            if let Some(m) = missing {
                notes.push(format!("warning: {m}; counted as empty"));
            }
        }
        match (self.synced(), notes.is_empty()) {
            (false, _) => Readiness::Loading(notes.join("; ")),
            (true, true) => Readiness::Ready,
            (true, false) => Readiness::Unreachable(notes.join("; ")),
        }
    }

    fn snapshot(&mut self, now: u64) -> Snapshot {
        let mut subsets: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
        for ((ns, _), (host, names)) in &self.rules.items {
            for name in names {
                let since = *self.first_seen.entry((ns.clone(), host.clone(), name.clone())).or_insert(now);
                subsets.entry((ns.clone(), host.clone())).or_default().insert(name.clone(), since);
            }
        }
        self.first_seen.retain(|(ns, host, name), _| {
            subsets.get(&(ns.clone(), host.clone())).is_some_and(|m| m.contains_key(name))
        });
        Snapshot {
            services: self.services.items.values().cloned().collect(),
            pods: self.pods.items.values().cloned().collect(),
            slices: self.slices.items.values().cloned().collect(),
            subsets,
        }
    }
}

/// Applies `r` with `apply`; the error it reports, if any.
fn error_of<T>(r: Report<T>, apply: impl FnOnce(Report<T>) -> Option<Vec<crate::kube_watch::Key>>) -> Option<String> {
    let error = match &r {
        Report::Error(e) => Some(e.clone()),
        _ => None,
    };
    apply(r);
    error
}

type Written = Arc<std::sync::Mutex<BTreeMap<String, serde_json::Value>>>;

/// Watches the cluster and publishes tables until the process ends.
pub async fn run(client: Client, store: Arc<KubeStore>, metrics: Arc<Metrics>, opts: Options) {
    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let t = opts.watch;
    let label = watcher::Config::default().labels(GROUP_LABEL);
    kube_watch::spawn(Api::<K8sPod>::all(client.clone()), label, pod, Update::Pod, tx.clone(), t);
    let all = watcher::Config::default;
    kube_watch::spawn(Api::<K8sService>::all(client.clone()), all(), service, Update::Service, tx.clone(), t);
    kube_watch::spawn(Api::<K8sSlice>::all(client.clone()), all(), slice, Update::Slice, tx.clone(), t);
    let (rc, gc) = (client.clone(), client.clone());
    kube_watch::spawn_optional(
        rc,
        "networking.istio.io",
        "DestinationRule",
        RULE_VERSIONS,
        rule,
        Update::Rule,
        tx.clone(),
        t,
    );
    kube_watch::spawn_optional(
        gc,
        kube_groups::API_GROUP,
        kube_groups::KIND,
        GROUP_VERSIONS,
        group,
        Update::Group,
        tx.clone(),
        t,
    );
    let ticks = tx;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(opts.recheck).await;
            if ticks.send(Update::Tick).await.is_err() {
                return;
            }
        }
    });
    let statuses = kube_watch::dynamic_api(&client, kube_groups::API_GROUP, kube_groups::VERSION, kube_groups::KIND);
    let mut cluster = Cluster::default();
    while let Some(update) = rx.recv().await {
        cluster.apply(update, &metrics);
        // Coalesce a burst: everything already queued, then one rebuild.
        while let Ok(more) = rx.try_recv() {
            cluster.apply(more, &metrics);
        }
        let served = store.served();
        let readiness = cluster.readiness();
        if served.readiness() != readiness {
            match &readiness {
                Readiness::Loading(d) | Readiness::Unreachable(d) => {
                    tracing::info!(detail = %d, "kubernetes: readiness")
                }
                Readiness::Ready => tracing::info!("kubernetes: every watch has listed; ready"),
            }
            served.set_readiness(readiness);
        }
        if !cluster.synced() {
            continue;
        }
        let now = now_ms();
        let snap = cluster.snapshot(now);
        let base = &served.base;
        let mut table = crate::kube_snapshot::to_table(&snap, base, now, opts.settle.as_millis() as u64);
        let objects: Vec<GroupObject> = cluster.groups.items.values().cloned().collect();
        let (groups, verdicts) = kube_groups::to_groups(&objects, base, &served.limits);
        metrics.kube_invalid_groups.set(verdicts.values().filter(|v| v.is_err()).count() as i64);
        table.groups = groups;
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
                metrics.store_rejects.inc();
                tracing::error!(error = %errors, "kubernetes: table refused");
            }
        }
        if store.is_leader() {
            write_statuses(&statuses, &objects, &verdicts, &cluster.written);
        }
    }
}

/// Writes each object's status when its verdict changed (in the background:
/// a slow API server never holds the table back).
fn write_statuses(
    api: &Api<DynamicObject>,
    objects: &[GroupObject],
    verdicts: &BTreeMap<String, Verdict>,
    memo: &Written,
) {
    let Ok(mut written) = memo.lock() else { return };
    let now = k8s_openapi::chrono::Utc::now().to_rfc3339_opts(k8s_openapi::chrono::SecondsFormat::Secs, true);
    written.retain(|name, _| verdicts.contains_key(name));
    for o in objects {
        let Some(verdict) = verdicts.get(&o.name) else { continue };
        let Some(status) = kube_groups::status_update(o, verdict, &now) else {
            written.remove(&o.name);
            continue;
        };
        // Ignoring the time: the same status is in flight already.
        let key = serde_json::json!([
            status["observedGeneration"],
            status["conditions"][0]["status"],
            status["conditions"][0]["message"]
        ]);
        if written.get(&o.name) == Some(&key) {
            continue;
        }
        written.insert(o.name.clone(), key);
        if let Err(why) = verdict {
            tracing::warn!(group = %o.name, error = %why, "kubernetes: IsolationGroup left out of the table");
        }
        let (api, name, memo) = (api.clone(), o.name.clone(), memo.clone());
        tokio::spawn(async move {
            let patch = serde_json::json!({ "status": status });
            if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                tracing::warn!(group = %name, error = %e, "kubernetes: cannot write the IsolationGroup status");
                if let Ok(mut w) = memo.lock() {
                    w.remove(&name);
                }
            }
        });
    }
}
