//! Kubernetes source, the watching half: mirror pods labelled
//! `isogroup.io/group`, services, endpoint slices, Istio DestinationRules
//! (`v1`, else `v1beta1`), VirtualServices and (cluster-header) the root
//! namespace's EnvoyFilters, and `IsolationGroup` objects (each watch its
//! own task, see `kube::watch`), and hand the table to the store whenever it
//! changes; with lanes left out when it would be over a limit or invalid
//! (`kube::degrade`). The leader hands the Istio objects it wants, with
//! those observed, to the reconciler (`kube::reconcile`; what it was sent
//! and is to be sent: `kube::changes`). Bursts of events
//! are drained before one rebuild, and a rebuild evaluates only the
//! services the events touched (`kube::index`). The rules themselves live
//! in `kube::snapshot` and `kube::groups` (pure, tested).
//!
//! Every replica runs this loop (so a newly elected leader serves at once);
//! only the leader writes `IsolationGroup` statuses (`kube::status`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod as K8sPod, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sSlice;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use isogroup_core::edge::RawRule;
use isogroup_core::table::RawSource;
use isogroup_core::{Limits, RawTable, Table};

use crate::kube::changes::{IstioChanges, IstioMirrors};
use crate::kube::groups::{self, GroupObject};
use crate::kube::index::{FilterObj, Index, Mirrors, RouteObj, RuleObj};
use crate::kube::istio::{GROUP_LABEL, INSTALLATION_LABEL, MANAGED_BY};
use crate::kube::snapshot::{fqdn, Clock, Endpoint, EndpointSlice, Pod, Service, Since};
use crate::kube::store::{KubeStore, ServiceChanges};
use crate::kube::watch::{self, Change, Mirror, Report, Timing};
use crate::metrics::{KindLabels, Metrics};
use crate::store::{now_ms, Readiness, Store};

/// DestinationRule and VirtualService versions, newest first.
const ISTIO_VERSIONS: &[&str] = &["v1", "v1beta1"];
/// Changes to the settle record (`kube::state`) that no settling lane
/// waits for are written at most this often.
const STATE_COALESCE: Duration = Duration::from_secs(1);
/// Source bindings and runtime rules (keys `sources`, `rules`: JSON lists
/// in the table's schema), in the companion's namespace (the default
/// installation's name; see `kube::names`).
pub const RUNTIME_CONFIGMAP: &str = "isogroup-runtime";

/// The ConfigMaps the companion reads.
#[derive(Debug, Clone)]
enum Own {
    /// A shard of the leader's settle record (`kube::state`).
    State(crate::kube::state::Shard),
    /// Parsed, not yet checked against the limits in force.
    Runtime(Result<(Vec<RawSource>, Vec<RawRule>), String>),
}
const GROUP_VERSIONS: &[&str] = &[groups::VERSION];

/// Timings of the loop (tests shorten them).
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a new subset must exist before its group enters the table.
    pub settle: Duration,
    /// Re-evaluate this often even without events: subsets settle with time.
    pub recheck: Duration,
    pub watch: Timing,
    /// The companion's namespace (its ConfigMaps).
    pub namespace: String,
    /// `--istio`: keep DestinationRules and routes (the mesh root namespace
    /// for EnvoyFilters); `None`: off.
    pub istio: Option<(crate::kube::istio::Mode, String)>,
    /// `--installation`: the id on every object it owns.
    pub installation: String,
    /// `--resync-s`: the Istio objects are compared again this often.
    pub resync: Duration,
    /// This replica (its pod), as Events name their reporter's instance.
    pub instance: String,
}

impl Options {
    /// A lane needs a VirtualService route to its subset (target-header).
    fn routes_required(&self) -> bool {
        matches!(self.istio, Some((crate::kube::istio::Mode::TargetHeader, _)))
    }

    /// A lane needs its service's EnvoyFilter (cluster-header).
    fn filters_required(&self) -> bool {
        matches!(self.istio, Some((crate::kube::istio::Mode::ClusterHeader, _)))
    }
}

impl Options {
    /// The installation is the namespace, as by default.
    pub fn new(settle: Duration, namespace: String) -> Options {
        Options {
            settle,
            recheck: Duration::from_millis(500),
            watch: Timing::default(),
            installation: namespace.clone(),
            namespace,
            istio: None,
            resync: Duration::from_secs(60),
            instance: String::new(),
        }
    }
}

/// Boxed: a pod is kilobytes, a tick is nothing.
enum Update {
    Pod(Report<Pod>),
    Service(Report<Service>),
    Slice(Report<EndpointSlice>),
    Rule(Report<RuleObj>),
    Route(Report<RouteObj>),
    Filter(Report<FilterObj>),
    Group(Report<GroupObject>),
    Own(Report<Own>),
    Tick,
}

fn pod(p: &K8sPod) -> Option<Pod> {
    let labels = p.labels().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Some(Pod { namespace: p.namespace()?, name: p.name_any(), labels })
}

fn service(s: &K8sService) -> Option<Service> {
    let ports = s
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    Some(Service { namespace: s.namespace()?, name: s.name_any(), ports })
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

/// An Istio host as an FQDN: a short name is relative to the object's
/// namespace.
fn istio_host(ns: &str, host: &str) -> String {
    if host.starts_with('*') {
        // A wildcard is not a short name (Istio resolves none).
        return host.to_owned();
    }
    match host.matches('.').count() {
        0 => fqdn(ns, host),
        1 => format!("{host}.svc.cluster.local"),
        _ => host.to_owned(),
    }
}

/// Owned by this installation: both labels (SPEC "Installations").
fn owned(o: &DynamicObject, installation: &str) -> bool {
    let labels = o.labels();
    labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
        && labels.get(INSTALLATION_LABEL).map(String::as_str) == Some(installation)
}

/// What the reconciler compares of an owned object.
fn observed(o: &DynamicObject) -> Arc<serde_json::Value> {
    // managedFields: who made a drift (`kube::drift`).
    let metadata = serde_json::json!({
        "namespace": o.metadata.namespace,
        "name": o.metadata.name,
        "labels": o.metadata.labels,
        "resourceVersion": o.metadata.resource_version,
        "uid": o.metadata.uid,
        "managedFields": o.metadata.managed_fields,
    });
    Arc::new(serde_json::json!({ "metadata": metadata, "spec": o.data.get("spec").cloned().unwrap_or_default() }))
}

fn rule(r: &DynamicObject, installation: &str) -> Option<RuleObj> {
    let ns = r.namespace()?;
    let host = istio_host(&ns, r.data.get("spec")?.get("host")?.as_str()?);
    let subsets = r.data["spec"]["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let labels = s["labels"]
                .as_object()
                .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
                .unwrap_or_default();
            Some((s["name"].as_str()?.to_owned(), labels))
        })
        .collect();
    let owned = owned(r, installation);
    let policy = r.data["spec"].get("trafficPolicy").filter(|_| host.starts_with('*')).cloned().map(Arc::new);
    Some(RuleObj { host, subsets, owned, observed: owned.then(|| observed(r)), policy })
}

/// An EnvoyFilter: owned, the vhosts its patches match.
fn filter(f: &DynamicObject, installation: &str) -> Option<FilterObj> {
    if !owned(f, installation) {
        return Some(FilterObj::default());
    }
    let vhosts = f.data["spec"]["configPatches"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let (host, port) = p["match"]["routeConfiguration"]["vhost"]["name"].as_str()?.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect();
    Some(FilterObj { vhosts, owned: true, observed: Some(observed(f)) })
}

fn route(v: &DynamicObject, installation: &str) -> Option<RouteObj> {
    let ns = v.namespace()?;
    let hosts = v.data["spec"]["hosts"].as_array()?.iter().filter_map(|h| Some(istio_host(&ns, h.as_str()?))).collect();
    let mut dests = vec![];
    for http in v.data["spec"]["http"].as_array().into_iter().flatten() {
        for r in http["route"].as_array().into_iter().flatten() {
            let d = &r["destination"];
            if let (Some(host), Some(subset)) = (d["host"].as_str(), d["subset"].as_str()) {
                dests.push((istio_host(&ns, host), subset.to_owned()));
            }
        }
    }
    let owned = owned(v, installation);
    Some(RouteObj { hosts, dests, owned, observed: owned.then(|| observed(v)) })
}

/// The installation's settle record (`isogroup-state-<n>`) or runtime data
/// (`isogroup-runtime`); other ConfigMaps do not count.
fn own(c: &ConfigMap, names: &crate::kube::names::Names) -> Option<Own> {
    if c.metadata.name.as_deref()? == names.runtime {
        return Some(Own::Runtime(runtime(&c.data.clone().unwrap_or_default())));
    }
    crate::kube::state::parse(names, c).map(Own::State)
}

/// `sources` and `rules` in the table's own schema (strict: a misspelt
/// field is an error naming it, as in a table file).
pub(crate) fn runtime(data: &BTreeMap<String, String>) -> Result<(Vec<RawSource>, Vec<RawRule>), String> {
    let list = |key: &str| -> Result<serde_json::Value, String> {
        match data.get(key) {
            None => Ok(serde_json::Value::Array(vec![])),
            Some(text) => serde_json::from_str(text).map_err(|e| format!("data.{key}: not JSON: {e}")),
        }
    };
    let doc = serde_json::json!({ "sources": list("sources")?, "rules": list("rules")? });
    let raw = RawTable::from_json(doc.to_string().as_bytes(), &isogroup_core::Limits::default())
        .map_err(|e| format!("ConfigMap {RUNTIME_CONFIGMAP}: {e}"))?;
    Ok((raw.sources, raw.rules))
}

/// Whether runtime data passes the table's own checks (named errors).
fn check_runtime(sources: &[RawSource], rules: &[RawRule], base: &str, limits: &Limits) -> Result<(), String> {
    let probe = RawTable {
        base_group: Some(base.to_owned()),
        sources: sources.to_vec(),
        rules: rules.to_vec(),
        ..RawTable::default()
    };
    Table::check(&probe, base, limits).map(|_| ()).map_err(|errors| {
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        format!("ConfigMap {RUNTIME_CONFIGMAP}: {}", all.join("; "))
    })
}

/// An `IsolationGroup`, with this installation's entry of its status
/// (`status.installations.<id>`; others' entries are theirs).
fn group(o: &DynamicObject, installation: &str) -> Option<GroupObject> {
    Some(GroupObject {
        name: o.name_any(),
        generation: o.metadata.generation.unwrap_or(0),
        spec: o.data.get("spec").cloned().unwrap_or_default(),
        status: groups::own_status(&o.data, installation),
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
    rules: Mirror<RuleObj>,
    routes: Mirror<RouteObj>,
    filters: Mirror<FilterObj>,
    groups: Mirror<GroupObject>,
    own: Mirror<Own>,
    /// The last runtime data that passed, kept while a bad edit is fixed.
    runtime: (Vec<RawSource>, Vec<RawRule>),
    /// Why the runtime data in the ConfigMap is not used (readiness detail).
    runtime_error: Option<String>,
    /// When each lane's conditions began to hold (see `kube::snapshot`).
    since: Since,
    /// The mirrors indexed by service, and the table's services.
    index: Index,
    /// The groups of the table last handed to the store.
    published_groups: BTreeMap<String, isogroup_core::table::RawGroup>,
    /// When the last watch error came (taken by each rebuild).
    watch_error: Option<std::time::Instant>,
    /// Whether this replica has written its settle record since it leads.
    recorded: bool,
    /// The settle record as the shards hold it (joined when one changes).
    record: crate::kube::state::Record,
    /// A shard changed since `record` was joined.
    record_stale: bool,
    /// The epoch whose claimed settle record this leader has merged: it
    /// trusts what it reads, reconciles and writes only from then on.
    trusted: Option<String>,
    /// Whether this replica led at the last rebuild.
    led: bool,
    /// `since` changed after the last write of `isogroup-state`.
    since_unwritten: bool,
    /// When `isogroup-state` was last written.
    state_written: Option<std::time::Instant>,
    /// What the reconciler was sent and is to be sent (`kube::changes`).
    istio: IstioChanges,
    /// Istio conflicts the reconciler reports (readiness detail).
    conflicts: Arc<std::sync::Mutex<Vec<String>>>,
    /// Lanes (`<service>/<group>`) left out of the table because with them
    /// it would be over a limit or invalid, and why.
    left_out: BTreeMap<String, String>,
}

impl Cluster {
    fn apply(&mut self, update: Update, metrics: &Metrics) {
        let istio_kind = match &update {
            Update::Rule(r) => Some(("DestinationRule", touched(r))),
            Update::Route(r) => Some(("VirtualService", touched(r))),
            Update::Filter(r) => Some(("EnvoyFilter", touched(r))),
            _ => None,
        };
        // (a re-list makes the index evaluate everything: then everything
        // goes to the reconciler again)
        if let Some((kind, Some((ns, name)))) = istio_kind {
            self.istio.observed((kind.to_owned(), ns, name));
        }
        let rule_update = match &update {
            Update::Rule(r) => Some(touched(r)),
            _ => None,
        };
        let (kind, error) = match update {
            Update::Pod(r) => {
                let touched = touched(&r);
                let error = error_of(r, |r| self.pods.apply(r), Some(&mut self.index));
                if let Some(k) = touched {
                    self.index.pod_changed(&k, &self.slices.items);
                }
                ("pods", error)
            }
            Update::Service(r) => {
                let touched = touched(&r);
                let error = error_of(r, |r| self.services.apply(r), Some(&mut self.index));
                if let Some(k) = touched {
                    self.index.service_changed(&k);
                }
                ("services", error)
            }
            Update::Slice(r) => (
                "endpointslices",
                apply_indexed(&mut self.slices, &mut self.index, r, Index::slice_removed, Index::slice_added),
            ),
            Update::Rule(r) => (
                "destinationrules",
                apply_indexed(&mut self.rules, &mut self.index, r, Index::rule_removed, Index::rule_added),
            ),
            Update::Route(r) => (
                "virtualservices",
                apply_indexed(
                    &mut self.routes,
                    &mut self.index,
                    r,
                    |i, _, o| i.route_removed(o),
                    |i, _, o| i.route_added(o),
                ),
            ),
            Update::Filter(r) => (
                "envoyfilters",
                apply_indexed(
                    &mut self.filters,
                    &mut self.index,
                    r,
                    |i, _, o| i.filter_removed(o),
                    |i, _, o| i.filter_added(o),
                ),
            ),
            Update::Group(r) => ("isolationgroups", error_of(r, |r| self.groups.apply(r), None)),
            Update::Own(r) => {
                self.record_stale = true;
                ("configmaps", error_of(r, |r| self.own.apply(r), None))
            }
            Update::Tick => return,
        };
        if let Some(rule) = rule_update {
            self.istio.rule_updated(rule, &self.rules);
        }
        if let Some(e) = error {
            self.watch_error = Some(std::time::Instant::now());
            metrics.watch_errors.inc();
            metrics.kube_watch_errors.get_or_create(&KindLabels { kind }).inc();
            tracing::warn!(kind, error = %e, "kubernetes watch (retrying after a backoff)");
        }
    }

    fn synced(&self) -> bool {
        self.pods.synced
            && self.services.synced
            && self.slices.synced
            && self.rules.synced
            && self.routes.synced
            && self.filters.synced
            && self.groups.synced
            && self.own.synced
    }

    /// Readiness with the detail `/readyz` shows: what is not listed yet,
    /// watch errors, missing kinds.
    fn readiness(&self) -> Readiness {
        let kinds: [(&str, bool, &Option<String>, &Option<String>); 8] = [
            ("pods", self.pods.synced, &self.pods.error, &None),
            ("services", self.services.synced, &self.services.error, &None),
            ("endpointslices", self.slices.synced, &self.slices.error, &None),
            ("destinationrules", self.rules.synced, &self.rules.error, &self.rules.missing),
            ("virtualservices", self.routes.synced, &self.routes.error, &self.routes.missing),
            ("envoyfilters", self.filters.synced, &self.filters.error, &self.filters.missing),
            ("isolationgroups", self.groups.synced, &self.groups.error, &self.groups.missing),
            ("configmaps", self.own.synced, &self.own.error, &self.runtime_error),
        ];
        // Errors (a watch failing: the table may be stale) and warnings
        // (ready, degraded): both in the detail, errors first.
        let (mut errors, mut warnings) = (vec![], vec![]);
        for (kind, synced, error, missing) in kinds {
            if !synced {
                errors.push(format!("{kind}: first list not finished"));
            }
            if let Some(e) = error {
                errors.push(format!("{kind}: watch error (retrying): {e}"));
            }
            match missing {
                Some(m) if kind == "configmaps" => warnings.push(format!("warning: {m}; the last valid data stays")),
                Some(m) => warnings.push(format!("warning: {m}; counted as empty")),
                None => {}
            }
        }
        if let Ok(c) = self.conflicts.lock() {
            warnings.extend(c.iter().map(|c| format!("istio conflict: {c}")));
        }
        if !self.left_out.is_empty() {
            let lanes: Vec<String> = self.left_out.iter().map(|(lane, why)| format!("{lane} ({why})")).collect();
            warnings.push(format!("lanes left out of the table, newest first: {}", lanes.join(", ")));
        }
        let no_errors = errors.is_empty();
        errors.extend(warnings);
        let detail = errors.join("; ");
        match (self.synced(), no_errors, detail.is_empty()) {
            (false, _, _) => Readiness::Loading(detail),
            (true, true, true) => Readiness::Ready,
            (true, true, false) => Readiness::Degraded(detail),
            (true, false, _) => Readiness::Unreachable(detail),
        }
    }

    /// Drops what the watches touched since the reconciler was last sent
    /// changes (no reconciler, or not leading: it is sent anew).
    fn forget_istio_changes(&mut self) {
        self.istio.forget(&mut self.index);
    }

    /// What changed for the reconciler since the last call
    /// (`IstioChanges::changes`); lanes newly held or let go are to be
    /// recorded.
    fn istio_changes(
        &mut self,
        base: &str,
        mode: (crate::kube::istio::Mode, &str),
        installation: &str,
        now: u64,
        grace: u64,
    ) -> crate::kube::plan::Changes {
        let held_before = self.istio.held.len();
        let mirrors = IstioMirrors { rules: &self.rules, routes: &self.routes, filters: &self.filters };
        let changes = self.istio.changes(&mut self.index, &mirrors, base, mode, installation, now, grace);
        // Leaving lanes are on record, so their subsets outlive a failover.
        self.since_unwritten |= self.istio.held.len() != held_before;
        changes
    }

    /// The table now, whole or as its changes since the last call, or
    /// `None` when its services and runtime data are what the last call
    /// gave; `since` moves on.
    fn table(&mut self, base: &str, now_ms: u64, opts: &Options, limits: &Limits) -> Option<TableUpdate> {
        self.runtime_error = None;
        let mut runtime = None;
        for own in self.own.items.values() {
            match own {
                Own::State(_) => {}
                Own::Runtime(Ok((sources, rules))) => runtime = Some((sources, rules)),
                Own::Runtime(Err(e)) => self.runtime_error = Some(e.clone()),
            }
        }
        if std::mem::take(&mut self.record_stale) {
            self.record = crate::kube::state::joined(self.own.items.values().filter_map(|o| match o {
                Own::State(shard) => Some(shard),
                Own::Runtime(_) => None,
            }));
        }
        let recorded = &self.record.since;
        let before = std::mem::take(&mut self.runtime);
        match runtime {
            None if self.runtime_error.is_none() => {}
            None => self.runtime = before.clone(),
            Some((sources, rules)) => match check_runtime(sources, rules, base, limits) {
                Ok(()) => self.runtime = (sources.clone(), rules.clone()),
                Err(e) => {
                    self.runtime = before.clone();
                    self.runtime_error = Some(e);
                }
            },
        }
        let clock = Clock { now_ms, settle_ms: opts.settle.as_millis() as u64, recorded };
        let required = (opts.routes_required(), opts.filters_required());
        let mirrors =
            Mirrors::of(&self.services, &self.pods, &self.slices, &self.rules, &self.routes, &self.filters, required);
        self.since_unwritten |= self.index.rebuild(&mirrors, base, &clock, &mut self.since);
        match self.index.take_changed() {
            None => Some(TableUpdate::Whole(self.raw_table(base))),
            Some(keys) if keys.is_empty() && before == self.runtime => None,
            Some(keys) => {
                let services = self.index.services();
                let changes = keys.into_iter().map(|k| (k.clone(), services.get(&k).cloned())).collect();
                Some(TableUpdate::Changes(changes, self.rest(base)))
            }
        }
    }

    /// The table without its services.
    fn rest(&self, base: &str) -> RawTable {
        let (sources, rules) = self.runtime.clone();
        RawTable { base_group: Some(base.to_owned()), sources, rules, ..RawTable::default() }
    }

    /// The table as it stands (without groups).
    fn raw_table(&self, base: &str) -> RawTable {
        RawTable { services: self.index.services().clone(), ..self.rest(base) }
    }
}

/// What a rebuild hands the store (groups not filled in yet).
enum TableUpdate {
    Whole(RawTable),
    /// The services changed since the table handed before, and the rest of
    /// the table (its `services` empty).
    Changes(ServiceChanges, RawTable),
}

/// The object an event changes, if it is one object (not a re-list).
fn touched<T>(r: &Report<T>) -> Option<crate::kube::watch::Key> {
    match r {
        Report::Change(Change::Apply(k, _) | Change::Delete(k)) => Some(k.clone()),
        _ => None,
    }
}

/// Applies `r` to `mirror` and keeps `index` in step: the object an event
/// replaces or deletes leaves the index first, the one it stores enters
/// after (a re-list marks the index stale instead). The error `r` reports.
fn apply_indexed<T>(
    mirror: &mut Mirror<T>,
    index: &mut Index,
    r: Report<T>,
    removed: fn(&mut Index, &crate::kube::watch::Key, &T),
    added: fn(&mut Index, &crate::kube::watch::Key, &T),
) -> Option<String> {
    let touched = touched(&r);
    if let Some((k, old)) = touched.as_ref().and_then(|k| Some((k, mirror.items.get(k)?))) {
        removed(index, k, old);
    }
    let error = error_of(r, |r| mirror.apply(r), Some(index));
    if let Some((k, new)) = touched.as_ref().and_then(|k| Some((k, mirror.items.get(k)?))) {
        added(index, k, new);
    }
    error
}

/// Applies `r` with `apply` (a re-list marks `index` stale); the error it
/// reports, if any.
fn error_of<T>(
    r: Report<T>,
    apply: impl FnOnce(Report<T>) -> Option<Vec<crate::kube::watch::Key>>,
    index: Option<&mut Index>,
) -> Option<String> {
    let error = match &r {
        Report::Error(e) => Some(e.clone()),
        _ => None,
    };
    if let (None, Some(index)) = (apply(r), index) {
        index.relisted();
    }
    error
}

/// Watches the cluster and publishes tables until the process ends.
pub async fn run(client: Client, store: Arc<KubeStore>, metrics: Arc<Metrics>, opts: Options) {
    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let t = opts.watch;
    let label = watcher::Config::default().labels(GROUP_LABEL);
    watch::spawn(Api::<K8sPod>::all(client.clone()), label, pod, Update::Pod, tx.clone(), t);
    let all = watcher::Config::default;
    watch::spawn(Api::<K8sService>::all(client.clone()), all(), service, Update::Service, tx.clone(), t);
    watch::spawn(Api::<K8sSlice>::all(client.clone()), all(), slice, Update::Slice, tx.clone(), t);
    let istio = "networking.istio.io";
    let c = || client.clone();
    let id = opts.installation.clone();
    let rule = move |r: &DynamicObject| rule(r, &id);
    watch::spawn_optional(c(), istio, "DestinationRule", ISTIO_VERSIONS, rule, Update::Rule, tx.clone(), t);
    // VirtualServices: routes to lanes (target-header) and conflicts.
    if opts.istio.is_some() {
        let id = opts.installation.clone();
        let route = move |v: &DynamicObject| route(v, &id);
        watch::spawn_optional(c(), istio, "VirtualService", ISTIO_VERSIONS, route, Update::Route, tx.clone(), t);
    }
    // EnvoyFilters (cluster-header), in the root namespace: this
    // installation's, and the names of others' (never written over).
    if let (true, Some((_, root))) = (opts.filters_required(), &opts.istio) {
        let gvk = kube::api::GroupVersionKind::gvk(istio, "v1alpha3", "EnvoyFilter");
        let api = Api::<DynamicObject>::namespaced_with(c(), root, &kube::api::ApiResource::from_gvk(&gvk));
        let id = opts.installation.clone();
        let filter = move |f: &DynamicObject| filter(f, &id);
        watch::spawn(api, watcher::Config::default(), filter, Update::Filter, tx.clone(), t);
    }
    let (group_api, kind) = (groups::API_GROUP, groups::KIND);
    let id = opts.installation.clone();
    let group = move |g: &DynamicObject| group(g, &id);
    watch::spawn_optional(c(), group_api, kind, GROUP_VERSIONS, group, Update::Group, tx.clone(), t);
    let names = crate::kube::names::Names::new(&opts.installation, &opts.namespace);
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), &opts.namespace);
    let own_names = names.clone();
    let own = move |c: &ConfigMap| own(c, &own_names);
    watch::spawn(configmaps.clone(), all(), own, Update::Own, tx.clone(), t);
    // The settle record's writer (`kube::state`): claims it under each new
    // epoch, hands back what it then reads, and writes what is wanted.
    let (record_tx, record_rx) = tokio::sync::watch::channel(None);
    let (trusted_tx, trusted_rx) = tokio::sync::watch::channel(None);
    let writer = crate::kube::state::Writer {
        api: configmaps.clone(),
        namespace: opts.namespace.clone(),
        names,
        installation: opts.installation.clone(),
        manager: crate::kube::istio::field_manager(&opts.installation),
        fence: store.fence(),
    };
    tokio::spawn(crate::kube::state::run(writer, record_rx, trusted_tx));
    let ticks = tx;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(opts.recheck).await;
            if ticks.send(Update::Tick).await.is_err() {
                return;
            }
        }
    });
    let statuses = watch::dynamic_api(&client, groups::API_GROUP, groups::VERSION, groups::KIND);
    let statuses = crate::kube::status::StatusWriter::new(statuses, &opts.installation, store.fence(), opts.watch);
    let mut cluster = Cluster::default();
    // Without --istio, VirtualServices are not watched.
    cluster.routes.synced = opts.istio.is_none();
    cluster.filters.synced = !opts.filters_required();
    let conflicts: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    cluster.conflicts = conflicts.clone();
    let (outbox, inbox) = crate::kube::reconcile::channel();
    if opts.istio.is_some() {
        let settings = crate::kube::reconcile::Settings {
            manager: crate::kube::istio::field_manager(&opts.installation),
            resync: opts.resync,
            timing: opts.watch,
            fence: store.fence(),
            instance: if opts.instance.is_empty() {
                crate::kube::istio::field_manager(&opts.installation)
            } else {
                opts.instance.clone()
            },
        };
        let (c, m) = (client.clone(), metrics.clone());
        tokio::spawn(crate::kube::reconcile::run(c, settings, inbox, conflicts, m));
    }
    let mut trusted_rx = trusted_rx;
    while let Some(update) = rx.recv().await {
        cluster.apply(update, &metrics);
        // Coalesce a burst: everything already queued, then one rebuild.
        while let Ok(more) = rx.try_recv() {
            cluster.apply(more, &metrics);
        }
        // A failing watch retries within its longest (jittered) backoff.
        let gap = opts.watch.backoff_max * 3 / 2 + opts.recheck * 2;
        store.set_watch_health(cluster.synced(), cluster.watch_error.take(), gap);
        // A new leader trusts the settle record only once its epoch is in
        // every shard (`kube::state`): then the record decides each lane's
        // clock (one it does not hold starts now) and which leaving lanes
        // keep their subsets, and only then does it reconcile and record.
        let epoch = store.epoch();
        if epoch.is_none() {
            cluster.trusted = None;
        } else if trusted_rx.has_changed().unwrap_or(false) || cluster.trusted != epoch {
            let claimed = trusted_rx.borrow_and_update().clone();
            if let Some((claimed_epoch, record)) = claimed.filter(|(e, _)| Some(e) == epoch.as_ref()) {
                let now = now_ms();
                // Claimed again in the same term (after a refused write):
                // the record's times only; a new term: the rest starts now.
                let new_term = cluster.trusted.as_ref() != Some(&claimed_epoch);
                for (lane, at) in &mut cluster.since {
                    match record.since.get(lane) {
                        Some(recorded) => *at = *recorded,
                        None if new_term => *at = now,
                        None => {}
                    }
                }
                if new_term {
                    // What this replica held or rendered in an earlier term
                    // is stale: the record says which lanes are leaving.
                    cluster.istio.last_targets.clear();
                    cluster.istio.sent = false;
                    cluster.istio.held.clear();
                }
                for (k, until) in crate::kube::state::held_of(&record.leaving) {
                    if until > now {
                        let e = cluster.istio.held.entry(k).or_insert(until);
                        *e = (*e).max(until);
                    }
                }
                cluster.index.relisted();
                tracing::debug!(epoch = %claimed_epoch, lanes = record.since.len(), "kubernetes: settle record merged");
                (cluster.trusted, cluster.recorded) = (Some(claimed_epoch), false);
            }
        }
        let trusted = epoch.is_some() && cluster.trusted == epoch;
        let served = store.served();
        let readiness = cluster.readiness();
        if served.readiness() != readiness {
            match &readiness {
                Readiness::Loading(d) | Readiness::Unreachable(d) | Readiness::Degraded(d) => {
                    tracing::info!(detail = %d, "kubernetes: readiness")
                }
                Readiness::Ready => tracing::info!("kubernetes: every watch has listed; ready"),
            }
            served.set_readiness(readiness);
        }
        if !cluster.synced() {
            continue;
        }
        let base = &served.base;
        let started = std::time::Instant::now();
        let table = cluster.table(base, now_ms(), &opts, &served.limits);
        let built = started.elapsed();
        let objects: Vec<GroupObject> = cluster.groups.items.values().cloned().collect();
        let (groups, verdicts) = groups::to_groups(&objects, base, &served.limits);
        metrics.kube_invalid_groups.set(verdicts.values().filter(|v| v.is_err()).count() as i64);
        // Unchanged: nothing to check or serve (a rejected table stays
        // rejected), unless this replica has just been elected: a standby
        // does not check what it is given, so it is checked (and degraded
        // if need be) now.
        let elected = store.is_leader() && !cluster.led;
        cluster.led = store.is_leader();
        let table = match table {
            None if elected => Some(TableUpdate::Whole(cluster.raw_table(base))),
            None if groups == cluster.published_groups => None,
            None => Some(TableUpdate::Changes(vec![], cluster.rest(base))),
            some => some,
        };
        if let Some(table) = table {
            cluster.published_groups.clone_from(&groups);
            let limits = &served.limits;
            // Over max_groups (counted here: a standby does not check what
            // it is given), or degraded already: whole, with lanes left out.
            let over = |raw: &RawTable| crate::kube::degrade::group_count(raw, base) > limits.max_groups;
            let mut published = match table {
                _ if !cluster.left_out.is_empty() => Err(None),
                TableUpdate::Changes(changes, mut rest) if store.has_table() => {
                    rest.groups = groups.clone();
                    let mut names: std::collections::BTreeSet<&str> = cluster.index.lane_groups().collect();
                    names.extend(groups.keys().map(String::as_str));
                    names.insert(base);
                    if names.len() > limits.max_groups {
                        Err(None)
                    } else {
                        store.publish_changes(changes, rest).map_err(Some)
                    }
                }
                TableUpdate::Changes(..) => {
                    let mut whole = cluster.raw_table(base);
                    whole.groups = groups.clone();
                    if over(&whole) {
                        Err(None)
                    } else {
                        store.publish(whole, None).map_err(Some)
                    }
                }
                TableUpdate::Whole(mut whole) => {
                    whole.groups = groups.clone();
                    if over(&whole) {
                        Err(None)
                    } else {
                        store.publish(whole, None).map_err(Some)
                    }
                }
            };
            if matches!(published, Err(None) | Err(Some(crate::store::ChangeError::Invalid(_)))) {
                let mut whole = cluster.raw_table(base);
                whole.groups = groups.clone();
                match crate::kube::degrade::degrade(&mut whole, &cluster.since, base, limits) {
                    Ok(left) => {
                        if left != cluster.left_out {
                            for (lane, why) in left.iter().filter(|(l, _)| !cluster.left_out.contains_key(*l)) {
                                tracing::warn!(lane = %lane, why = %why, "kubernetes: lane left out of the table (newest first)");
                            }
                        }
                        cluster.left_out = left;
                    }
                    Err(why) => {
                        tracing::error!(error = %why, "kubernetes: the table is invalid without any lane");
                        cluster.left_out.clear();
                    }
                }
                let lanes_out = cluster.left_out.keys().filter(|k| k.contains('/')).count();
                metrics.lanes_left_out.set(lanes_out as i64);
                published = store.publish(whole, None).map_err(Some);
                let readiness = cluster.readiness();
                if served.readiness() != readiness {
                    served.set_readiness(readiness);
                }
            }
            let published = published.map_err(|e| e.map_or_else(String::new, |e| e.to_string()));
            tracing::debug!(?built, total = ?started.elapsed(), "kubernetes: rebuild (table from the mirrors, then validated and served)");
            match published {
                Ok(None) => {}
                Ok(Some(snap)) => {
                    tracing::info!(
                        version = snap.version,
                        services = snap.raw.services.len(),
                        "kubernetes: table published"
                    );
                }
                Err(errors) => {
                    metrics.store_rejects.inc();
                    tracing::error!(error = %errors, "kubernetes: table refused");
                }
            }
        }
        if store.is_leader() && trusted {
            statuses.write(&objects, &verdicts, &cluster.left_out);
            if let Some((mode, root)) = &opts.istio {
                let grace = opts.settle.as_millis() as u64;
                let changes = cluster.istio_changes(base, (*mode, root), &opts.installation, now_ms(), grace);
                outbox.send(changes);
            } else {
                // No reconciler to hand them to: dropped here, or they
                // would grow with every name the watches ever saw.
                cluster.forget_istio_changes();
            }
            // A lane still settling needs its start on record at once (a
            // starting replica counts an unrecorded lane as settled); other
            // changes (lanes that left, lanes settled on entry) are
            // coalesced: at 50k lanes the record is megabytes per write.
            let due =
                cluster.index.has_unsettled() || cluster.state_written.is_none_or(|at| at.elapsed() >= STATE_COALESCE);
            if let (Some(epoch), true) = (&epoch, !cluster.recorded || (cluster.since_unwritten && due)) {
                (cluster.recorded, cluster.since_unwritten) = (true, false);
                cluster.state_written = Some(std::time::Instant::now());
                let record = crate::kube::state::Record {
                    since: cluster.since.clone(),
                    leaving: crate::kube::state::leaving_of(&cluster.istio.held),
                };
                tracing::debug!(lanes = record.since.len(), "kubernetes: settle record wanted");
                // Shared with the writer, not copied (50k lanes at scale).
                record_tx.send_replace(Some(Arc::new(crate::kube::state::Wanted { epoch: epoch.clone(), record })));
            }
        } else {
            cluster.recorded = false;
            // Not the leader: the reconciler stops (no retry or resync of
            // what it wanted while it led); leading again, it is sent anew.
            outbox.stop();
            cluster.istio.sent = false;
            cluster.forget_istio_changes();
        }
    }
}

#[cfg(test)]
#[path = "incremental_tests.rs"]
mod incremental_tests;
