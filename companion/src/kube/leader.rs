//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does
//! it: the holder renews every `retry`; another replica takes the Lease only
//! once it has seen no change to it for the duration the Lease names (its
//! own clock, so skew between nodes does not matter); a leader that cannot renew within
//! `renew_deadline` (shorter than `duration`) steps down before anyone else
//! may take over (an API server that does not answer counts: each call gets
//! only the time left until that deadline). Every write carries the Lease's
//! resource version, so of two replicas racing, one gets `409 Conflict`.
//!
//! Elected, a replica makes a new epoch, max(now, previous + 1) with the
//! previous one read from the Lease's annotation, and writes it in the same
//! update that takes the Lease; then it labels its own pod
//! `isogroup.io/leader: "true"` (the Service selects it) and takes the label
//! off any other pod still carrying it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::chrono::Utc;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::kube::store::KubeStore;
use crate::metrics::Metrics;

/// The pod label the companion's Service selects (the default
/// installation's; see `kube::names`).
pub const LEADER_LABEL: &str = "isogroup.io/leader";
/// Where the Lease keeps the current leader's epoch.
pub const EPOCH_ANNOTATION: &str = "isogroup.io/epoch";

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica: its pod's name.
    pub identity: String,
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
    /// The label on the leader's pod (`kube::names`).
    pub leader_label: String,
    /// `--max-stale-s`: a leader whose watches have failed this long steps
    /// down (and does not campaign until they work again).
    pub max_stale: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    pub fn new(namespace: String, identity: String) -> LeaseConfig {
        LeaseConfig {
            namespace,
            name: "isogroup-companion".into(),
            identity,
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            leader_label: LEADER_LABEL.into(),
            max_stale: Duration::from_secs(30),
        }
    }
}

/// The leader's fencing token and how long its writes may take (SPEC
/// "Leadership is fenced"): its epoch, and the renew deadline counted from
/// its last renewal (the instant the renewal was sent). Every leader write
/// gets only the time left until that deadline, so none lands after a
/// standby may have taken over; creates are made only while it has not
/// passed. Shared by every writer of the replica (cheap to clone).
#[derive(Clone, Debug)]
pub struct Fence {
    term: Arc<std::sync::Mutex<Option<(String, Instant)>>>,
    renew_deadline: Duration,
}

/// Why a fenced write did not happen.
#[derive(Debug)]
pub enum Fenced {
    /// Not the leader, or its renew deadline has passed: nothing was sent.
    NotLeader,
    /// No answer before the renew deadline (it may have landed or not).
    Timeout,
    Api(kube::Error),
}

impl std::fmt::Display for Fenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fenced::NotLeader => write!(f, "not the leader (or past its renew deadline)"),
            Fenced::Timeout => write!(f, "no answer before the lease's renew deadline"),
            Fenced::Api(e) => write!(f, "{e}"),
        }
    }
}

impl Fenced {
    /// Refused for a stale precondition (`409`): re-decide from a fresh
    /// observation.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Fenced::Api(kube::Error::Api(e)) if e.code == 409)
    }
}

impl Fence {
    pub fn new(renew_deadline: Duration) -> Fence {
        Fence { term: Arc::default(), renew_deadline }
    }

    /// Leading under `epoch` since a renewal sent at `renewed`.
    pub fn lead(&self, epoch: String, renewed: Instant) {
        if let Ok(mut t) = self.term.lock() {
            *t = Some((epoch, renewed));
        }
    }

    /// Renewed (the renewal was sent at `at`).
    pub fn renewed(&self, at: Instant) {
        if let Ok(mut t) = self.term.lock() {
            if let Some((_, renewed)) = t.as_mut() {
                *renewed = at;
            }
        }
    }

    pub fn stop(&self) {
        if let Ok(mut t) = self.term.lock() {
            *t = None;
        }
    }

    /// The epoch while leading within the renew deadline.
    pub fn epoch(&self) -> Option<String> {
        self.term().map(|(e, _)| e)
    }

    /// The end of the time this leader's writes may take.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.term().map(|(_, d)| d)
    }

    fn term(&self) -> Option<(String, tokio::time::Instant)> {
        let t = self.term.lock().ok()?;
        let (epoch, renewed) = t.as_ref()?;
        let deadline = *renewed + self.renew_deadline;
        (Instant::now() < deadline).then(|| (epoch.clone(), deadline.into()))
    }

    /// Runs a leader write with the time left until the renew deadline; not
    /// at all unless leading within it. Not retried here: a caller retries
    /// only through another `write`, which re-checks the deadline.
    pub async fn write<T>(&self, call: impl std::future::Future<Output = Result<T, kube::Error>>) -> Result<T, Fenced> {
        let Some(deadline) = self.deadline() else { return Err(Fenced::NotLeader) };
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Fenced::Api(e)),
            Err(_) => Err(Fenced::Timeout),
        }
    }
}

/// What this replica knows between rounds.
#[derive(Default)]
struct Election {
    /// The Lease's resource version when last seen, and when that was.
    observed: Option<(String, Instant)>,
    /// Leading since the last successful renewal at this instant.
    renewed: Option<Instant>,
    /// The pod labels match the role: as leader, its own pod labelled and
    /// no other; as follower, its own pod unlabelled.
    labelled: bool,
}

/// Runs the election until the process ends.
pub async fn run(client: Client, store: Arc<KubeStore>, cfg: LeaseConfig, metrics: Arc<Metrics>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let pods: Api<Pod> = Api::namespaced(client, &cfg.namespace);
    // Unlabelled at first: a restarted replica must not keep a label from
    // its last life.
    let mut e = Election::default();
    loop {
        // An API server that does not answer must not keep a leader past
        // its renew deadline (a standby may take over at `duration`): each
        // call gets only the time left until then.
        let budget = time_left(&cfg, &e);
        if tokio::time::timeout(budget, round(&leases, &store, &cfg, &mut e, &metrics)).await.is_err() {
            tracing::warn!(?budget, "kubernetes: no answer from the API server on the lease in time");
            check_deadline(&store, &cfg, &mut e, &metrics);
        }
        if !e.labelled {
            let budget = time_left(&cfg, &e);
            let labelling = async {
                if e.renewed.is_some() {
                    label_leader(&pods, &cfg.identity, &cfg.leader_label).await
                } else {
                    set_label(&pods, &cfg.identity, &cfg.leader_label, false, None).await.is_ok()
                }
            };
            e.labelled = tokio::time::timeout(budget, labelling).await.unwrap_or(false);
        }
        metrics.kube_leader.set(i64::from(e.renewed.is_some()));
        tokio::time::sleep(cfg.retry).await;
    }
}

/// How long the next call may take: as leader, until the renew deadline
/// (none left: at once, so `check_deadline` steps down); else the deadline.
fn time_left(cfg: &LeaseConfig, e: &Election) -> Duration {
    e.renewed.map_or(cfg.renew_deadline, |at| cfg.renew_deadline.saturating_sub(at.elapsed()))
}

fn now() -> MicroTime {
    MicroTime(Utc::now())
}

fn duration_s(d: Duration) -> i32 {
    i32::try_from(d.as_millis().div_ceil(1000)).unwrap_or(i32::MAX).max(1)
}

async fn round(leases: &Api<Lease>, store: &KubeStore, cfg: &LeaseConfig, e: &mut Election, metrics: &Metrics) {
    let lease = match leases.get_opt(&cfg.name).await {
        Ok(l) => l,
        Err(err) => {
            tracing::warn!(error = %err, lease = %cfg.name, "kubernetes: cannot read the lease");
            return check_deadline(store, cfg, e, metrics);
        }
    };
    // A replica campaigns only once every watch has listed and none is
    // failing: elected, it must serve (and record) what the cluster holds.
    let may_lead = store.listed();
    let Some(mut lease) = lease else {
        if !may_lead {
            return;
        }
        let epoch = crate::random::new_epoch(None);
        let fresh = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                annotations: Some(BTreeMap::from([(EPOCH_ANNOTATION.to_owned(), epoch.clone())])),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration_s(cfg.duration)),
                acquire_time: Some(now()),
                renew_time: Some(now()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        let sent = Instant::now();
        match leases.create(&PostParams::default(), &fresh).await {
            Ok(_) => elected(store, e, epoch, sent, metrics),
            Err(err) => tracing::info!(error = %err, "kubernetes: lease creation lost or failed"),
        }
        return;
    };
    let rv = lease.metadata.resource_version.clone().unwrap_or_default();
    if e.observed.as_ref().is_none_or(|(seen, _)| *seen != rv) {
        e.observed = Some((rv, Instant::now()));
    }
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder == cfg.identity && e.renewed.is_some() && store.stale_for() >= cfg.max_stale {
        // Its watches have failed for --max-stale-s: the table it serves
        // may be that old. It steps down (held polls answered `503
        // not_leader` at once) and hands the Lease back so a replica whose
        // watches work takes over without waiting for it to expire.
        tracing::warn!(stale = ?store.stale_for(), "kubernetes: watches failing for --max-stale-s; stepping down");
        step_down(store, e, metrics);
        spec.holder_identity = None;
        if let Err(err) = leases.replace(&cfg.name, &PostParams::default(), &lease).await {
            tracing::warn!(error = %err, "kubernetes: cannot hand the lease back; it expires instead");
        }
        return;
    }
    if holder == cfg.identity && e.renewed.is_some() {
        spec.renew_time = Some(now());
        let sent = Instant::now();
        match leases.replace(&cfg.name, &PostParams::default(), &lease).await {
            Ok(l) => {
                // Counted from when the renewal was sent: the other
                // replicas' clocks start at the latest when it lands.
                e.renewed = Some(sent);
                store.fence().renewed(sent);
                e.observed = l.metadata.resource_version.map(|rv| (rv, Instant::now()));
            }
            Err(err) => {
                tracing::warn!(error = %err, "kubernetes: lease renewal failed");
                check_deadline(store, cfg, e, metrics);
            }
        }
        return;
    }
    if e.renewed.is_some() {
        // Someone else holds it now: this replica is no longer the leader.
        tracing::warn!(holder, "kubernetes: lease taken by another replica; stepping down");
        return step_down(store, e, metrics);
    }
    // The holder's duration, as written in the Lease (client-go does the
    // same): replicas started with another --lease-ms, e.g. during the
    // rollout that changes it, wait as long as the holder counts on.
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(cfg.duration, Duration::from_secs);
    let expired = e.observed.as_ref().is_some_and(|(_, at)| at.elapsed() >= duration);
    // Free, expired, or ours from a previous life (same pod, restarted).
    if !may_lead || !(holder.is_empty() || expired || holder == cfg.identity) {
        return;
    }
    let previous = lease.metadata.annotations.as_ref().and_then(|a| a.get(EPOCH_ANNOTATION)).cloned();
    let epoch = crate::random::new_epoch(previous.as_deref());
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if holder != cfg.identity {
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds = Some(duration_s(cfg.duration));
    spec.acquire_time = Some(now());
    spec.renew_time = Some(now());
    lease.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(EPOCH_ANNOTATION.to_owned(), epoch.clone());
    let sent = Instant::now();
    match leases.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(l) => {
            e.observed = l.metadata.resource_version.map(|rv| (rv, Instant::now()));
            tracing::info!(previous = %holder, epoch, "kubernetes: took the lease");
            elected(store, e, epoch, sent, metrics);
        }
        Err(err) => tracing::info!(error = %err, "kubernetes: lease taken by another replica first"),
    }
}

/// On shutdown: hands the Lease back (holder cleared) if this replica holds
/// it, so a standby takes over within one `retry` instead of waiting for it
/// to expire; and takes its pod's label off. Best effort.
pub async fn release(client: Client, store: &KubeStore, cfg: &LeaseConfig) {
    if !store.is_leader() {
        return;
    }
    store.step_down();
    // Shutdown waits for this: an API server that does not answer gets the
    // renew deadline, then the Lease expires instead.
    if tokio::time::timeout(cfg.renew_deadline, hand_back(client, cfg)).await.is_err() {
        tracing::warn!("kubernetes: no answer from the API server; the lease expires instead");
    }
}

async fn hand_back(client: Client, cfg: &LeaseConfig) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let pods: Api<Pod> = Api::namespaced(client, &cfg.namespace);
    let _ = set_label(&pods, &cfg.identity, &cfg.leader_label, false, None).await;
    let Ok(Some(mut lease)) = leases.get_opt(&cfg.name).await else { return };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    match leases.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!("kubernetes: lease released"),
        Err(e) => tracing::warn!(error = %e, "kubernetes: cannot release the lease; it expires instead"),
    }
}

fn elected(store: &KubeStore, e: &mut Election, epoch: String, sent: Instant, metrics: &Metrics) {
    e.renewed = Some(sent);
    e.labelled = false;
    metrics.kube_leader.set(1);
    metrics.kube_leader_changes.inc();
    let served = store.become_leader(epoch.clone());
    store.fence().renewed(sent);
    match served {
        Ok(snap) => tracing::info!(epoch, version = snap.map(|s| s.version), "kubernetes: leading"),
        Err(err) => tracing::error!(error = %err, "kubernetes: leading, but the table is refused"),
    }
}

fn check_deadline(store: &KubeStore, cfg: &LeaseConfig, e: &mut Election, metrics: &Metrics) {
    if e.renewed.is_some_and(|at| at.elapsed() >= cfg.renew_deadline) {
        tracing::warn!(deadline = ?cfg.renew_deadline, "kubernetes: could not renew the lease in time; stepping down");
        step_down(store, e, metrics);
    }
}

fn step_down(store: &KubeStore, e: &mut Election, metrics: &Metrics) {
    store.step_down();
    e.renewed = None;
    // The label comes off in `run`, retried while the API is unreachable.
    e.labelled = false;
    metrics.kube_leader.set(0);
    metrics.kube_leader_changes.inc();
}

/// Sets or removes the leader label on pod `name`; with `rv`, only on the
/// pod as observed then (a leader's write is fenced by a precondition).
async fn set_label(pods: &Api<Pod>, name: &str, label: &str, on: bool, rv: Option<String>) -> Result<(), kube::Error> {
    let value = if on { json!("true") } else { serde_json::Value::Null };
    let mut patch = json!({ "metadata": { "labels": { label: value } } });
    if let Some(rv) = rv {
        patch["metadata"]["resourceVersion"] = json!(rv);
    }
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

/// Labels this pod and unlabels any other: true once both are done. Each
/// patch carries the resourceVersion read just before (after this replica
/// took the Lease); `run` gives the whole of it only the time left until
/// the renew deadline. A stale one is read again on the next round.
async fn label_leader(pods: &Api<Pod>, identity: &str, label: &str) -> bool {
    let own = match pods.get(identity).await {
        Ok(p) => p,
        Err(err) => {
            tracing::warn!(error = %err, pod = identity, "kubernetes: cannot read this pod to label it (retrying)");
            return false;
        }
    };
    let labelled = own.labels().get(label).is_some_and(|v| v == "true");
    if !labelled {
        if let Err(err) = set_label(pods, identity, label, true, own.metadata.resource_version).await {
            tracing::warn!(error = %err, pod = identity, "kubernetes: cannot label this pod as the leader (retrying)");
            return false;
        }
    }
    let others = match pods.list(&ListParams::default().labels(&format!("{label}=true"))).await {
        Ok(list) => list.items,
        Err(err) => {
            tracing::warn!(error = %err, "kubernetes: cannot list pods labelled as leader (retrying)");
            return false;
        }
    };
    let mut done = true;
    for pod in others {
        let Some(name) = pod.metadata.name.clone().filter(|n| n != identity) else { continue };
        if let Err(err) = set_label(pods, &name, label, false, pod.metadata.resource_version).await {
            tracing::warn!(error = %err, pod = name, "kubernetes: cannot unlabel a former leader (retrying)");
            done = false;
        }
    }
    done
}
