//! The Kubernetes source as a store: the cluster owns the table (the watch
//! loop in `kube::source` computes it on every replica), the Lease elects the
//! one replica that serves it (`kube::leader`). A follower keeps the latest
//! table ready so that, elected, it serves at once under the newer epoch it
//! made; until then it answers `503 not_leader`. Admin registrations are
//! refused: lanes are pod labels. Source bindings and runtime rules are
//! written by the leader into ConfigMap `isogroup-runtime` (keys `sources`,
//! `rules`), replaced under its resourceVersion (a conflict re-reads and
//! retries); the write answers once the watch serves it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use std::collections::BTreeSet;
use tokio::sync::watch;

use isogroup_core::{RawService, RawTable, Table};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};

use crate::kube::leader::{Fence, Fenced};

use crate::store::parts::Parts;
use crate::store::{next_version, now_ms, Change, ChangeError, Served, Snapshot, Store};

/// Changes to a table's services, by key (`None`: removed).
pub type ServiceChanges = Vec<(String, Option<RawService>)>;

/// Past this many changes not yet served, they are not kept for replay
/// (a follower's backlog): the next table served is copied instead.
const MAX_REPLAY: usize = 4_096;

#[derive(Default)]
struct Role {
    /// `Some` while this replica leads: the epoch it made when elected.
    epoch: Option<String>,
    /// The latest table the cluster gave, served or not. Serving moves it
    /// into the snapshot and takes the replaced snapshot's table back with
    /// the changes replayed on it: no update copies or frees the whole
    /// table (10k services at scale) unless a poller still holds the
    /// replaced snapshot.
    latest: Option<RawTable>,
    /// `latest` may differ from the served table.
    unserved: bool,
    /// The served table in parts, to check and serialise an update by the
    /// services it changes (`None` until a table is served).
    parts: Option<Parts>,
    /// The services `latest` differs in from the served table (`None`:
    /// not known).
    pending: Option<BTreeSet<String>>,
    /// The changes `latest` has over the served table (`None`: not known).
    replay: Option<ServiceChanges>,
}

/// Conflicting writers (another replica's last write, a hand edit) are
/// re-read and retried this many times.
const WRITE_ATTEMPTS: usize = 8;
/// How long a written change may take to come back through the watch.
const SEEN_DEADLINE: Duration = Duration::from_secs(10);

/// Whether every watch has listed, and the current run of watch errors.
#[derive(Default)]
struct WatchHealth {
    listed: bool,
    /// The first and the latest error of the run.
    errors: Option<(Instant, Instant)>,
    /// The longest a failing watch waits before it retries.
    gap: Duration,
}

pub struct KubeStore {
    served: Served,
    role: Mutex<Role>,
    /// Whether this replica leads, for held polls to be released with
    /// `503 not_leader` the moment it steps down (set under `role`).
    leading: watch::Sender<bool>,
    /// The ConfigMaps of the companion's namespace and the runtime
    /// ConfigMap's name (`None`: writes refused).
    runtime: Option<(Api<ConfigMap>, String, String)>,
    /// The leader's epoch and renew deadline, for every leader write.
    fence: Fence,
    /// What the watches say (`set_watch_health`).
    health: Mutex<WatchHealth>,
}

impl KubeStore {
    pub fn new(served: Served) -> KubeStore {
        KubeStore {
            served,
            role: Mutex::new(Role::default()),
            leading: watch::channel(false).0,
            runtime: None,
            fence: Fence::new(Duration::from_secs(10)),
            health: Mutex::new(WatchHealth::default()),
        }
    }

    /// Takes source and rule writes into ConfigMap `name` (the
    /// installation's `isogroup-runtime`) of `namespace`.
    pub fn with_runtime_writes(mut self, client: kube::Client, namespace: &str, name: &str) -> KubeStore {
        self.runtime = Some((Api::namespaced(client, namespace), namespace.to_owned(), name.to_owned()));
        self
    }

    /// The Lease's renew deadline: how long after a renewal leader writes
    /// may still be made.
    pub fn with_renew_deadline(mut self, renew_deadline: Duration) -> KubeStore {
        self.fence = Fence::new(renew_deadline);
        self
    }

    /// The fencing token and deadline every leader write goes through.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// What the watches say: whether all have listed, and a watch error
    /// seen at `error` (if any). A watch that fails retries within `gap`
    /// (its longest backoff); a retry that works says nothing (a quiet
    /// watch has no event), so errors further apart than `gap` are separate
    /// runs, and a run whose latest error is older than `gap` is over.
    pub fn set_watch_health(&self, listed: bool, error: Option<Instant>, gap: Duration) {
        if let Ok(mut h) = self.health.lock() {
            (h.listed, h.gap) = (listed, gap);
            if let Some(at) = error {
                h.errors = match h.errors {
                    Some((first, last)) if at.saturating_duration_since(last) <= gap => Some((first, at)),
                    _ => Some((at, at)),
                };
            }
        }
    }

    /// Whether every watch has listed and none is failing (a replica
    /// campaigns only then).
    pub fn listed(&self) -> bool {
        self.health.lock().is_ok_and(|h| h.listed && h.errors.is_none_or(|(_, last)| last.elapsed() > h.gap))
    }

    /// How long the watches have been failing without a pause (zero when
    /// none is).
    pub fn stale_for(&self) -> Duration {
        let Ok(h) = self.health.lock() else { return Duration::ZERO };
        match h.errors {
            Some((first, last)) if last.elapsed() <= h.gap => last.duration_since(first),
            _ => Duration::ZERO,
        }
    }

    /// The epoch this replica leads under, if it leads.
    pub fn epoch(&self) -> Option<String> {
        self.role.lock().ok().and_then(|r| r.epoch.clone())
    }

    pub fn is_leader(&self) -> bool {
        self.role.lock().is_ok_and(|r| r.epoch.is_some())
    }

    /// Records the table the cluster gives; the leader serves it unless it
    /// is what is served already. `changed`: the services it differs in
    /// from the table given before (`None`: not known).
    pub fn publish(
        &self,
        raw: RawTable,
        changed: Option<BTreeSet<String>>,
    ) -> Result<Option<Arc<Snapshot>>, ChangeError> {
        let Ok(mut role) = self.role.lock() else { return Ok(None) };
        role.latest = Some(raw);
        role.unserved = true;
        role.replay = None;
        role.pending = match (role.pending.take(), changed) {
            (Some(mut all), Some(changed)) => {
                all.extend(changed);
                Some(all)
            }
            _ => None,
        };
        self.serve(&mut role, false)
    }

    /// Whether a whole table was given: `publish_changes` applies to it.
    pub fn has_table(&self) -> bool {
        self.role.lock().is_ok_and(|r| r.latest.is_some())
    }

    /// Like `publish`, for the table given before with `changes` to its
    /// services and these groups, sources and rules (`services` of `rest`
    /// is not read). Without a table given before, nothing happens.
    pub fn publish_changes(
        &self,
        changes: ServiceChanges,
        rest: RawTable,
    ) -> Result<Option<Arc<Snapshot>>, ChangeError> {
        let Ok(mut role) = self.role.lock() else { return Ok(None) };
        let role = &mut *role;
        let Some(latest) = role.latest.as_mut() else { return Ok(None) };
        for (key, service) in &changes {
            match service {
                Some(s) => latest.services.insert(key.clone(), s.clone()),
                None => latest.services.remove(key),
            };
        }
        (latest.base_group, latest.groups, latest.sources, latest.rules) =
            (rest.base_group, rest.groups, rest.sources, rest.rules);
        if let Some(pending) = role.pending.as_mut() {
            pending.extend(changes.iter().map(|(k, _)| k.clone()));
        }
        role.replay = match role.replay.take() {
            Some(mut replay) if replay.len() + changes.len() <= MAX_REPLAY => {
                replay.extend(changes);
                Some(replay)
            }
            _ => None,
        };
        role.unserved = true;
        self.serve(role, false)
    }

    /// Elected with `epoch`: serves the latest table under it at once.
    pub fn become_leader(&self, epoch: String) -> Result<Option<Arc<Snapshot>>, ChangeError> {
        let Ok(mut role) = self.role.lock() else { return Ok(None) };
        role.epoch = Some(epoch.clone());
        self.fence.lead(epoch, Instant::now());
        self.leading.send_replace(true);
        self.serve(&mut role, true)
    }

    /// No longer the leader: every table-derived read answers `503
    /// not_leader` from now, held polls included.
    pub fn step_down(&self) {
        let mut role = self.role.lock();
        if let Ok(role) = role.as_mut() {
            role.epoch = None;
        }
        self.fence.stop();
        // A poisoned lock reads as not leading: told so all the same.
        self.leading.send_replace(false);
        drop(role);
    }

    /// Serves the latest table unless it is served already (a new epoch
    /// serves it again).
    fn serve(&self, role: &mut Role, new_epoch: bool) -> Result<Option<Arc<Snapshot>>, ChangeError> {
        let Some(epoch) = role.epoch.clone() else { return Ok(None) };
        if !role.unserved && !new_epoch {
            return Ok(None);
        }
        let Some(raw) = role.latest.as_ref() else { return Ok(None) };
        let current = self.served.current();
        let services_same = match &role.pending {
            Some(changed) => changed.iter().all(|k| raw.services.get(k) == current.raw.services.get(k)),
            None => raw.services == current.raw.services,
        };
        if !new_epoch
            && current.epoch.as_ref() == Some(&epoch)
            && services_same
            && raw.groups == current.raw.groups
            && raw.sources == current.raw.sources
            && raw.rules == current.raw.rules
        {
            (role.unserved, role.pending, role.replay) = (false, Some(BTreeSet::new()), Some(vec![]));
            return Ok(None);
        }
        let version = next_version(current.version, 0, now_ms())?;
        let (base, limits) = (&self.served.base, &self.served.limits);
        let Some(mut raw) = role.latest.take() else { return Ok(None) };
        raw.version = version;
        raw.epoch = Some(epoch);
        let in_parts = match (&mut role.parts, &role.pending) {
            (Some(parts), Some(changed)) => parts.check(&raw, changed, base, limits).map(|c| {
                parts.apply(c);
                parts.json(&raw)
            }),
            _ => None,
        };
        let snap = match in_parts {
            Some(json) => Snapshot::checked_in_parts(raw, json, base, limits, self.served.empty_table()),
            None => match Table::check(&raw, base, limits) {
                // Checked whole: the exact errors, and the table rejected whole.
                Err(errors) => {
                    role.latest = Some(raw);
                    return Err(ChangeError::Invalid(errors));
                }
                Ok(table) => {
                    let parts = Parts::of(&raw, base);
                    let json = parts.json(&raw);
                    role.parts = Some(parts);
                    Snapshot::of(raw, Arc::new(table), json)
                }
            },
        };
        drop(current);
        let (new, old) = self.served.replace_changed(snap, role.pending.as_ref());
        let latest = match (Arc::try_unwrap(old), role.replay.take()) {
            (Ok(old), Some(replay)) => {
                let mut spare = old.raw;
                for (key, service) in replay {
                    match service {
                        Some(s) => spare.services.insert(key, s),
                        None => spare.services.remove(&key),
                    };
                }
                spare.base_group.clone_from(&new.raw.base_group);
                spare.groups.clone_from(&new.raw.groups);
                spare.sources.clone_from(&new.raw.sources);
                spare.rules.clone_from(&new.raw.rules);
                spare
            }
            // A poller holds the replaced table, or the changes are not known.
            _ => new.raw.clone(),
        };
        role.latest = Some(latest);
        (role.unserved, role.pending, role.replay) = (false, Some(BTreeSet::new()), Some(vec![]));
        Ok(Some(new))
    }
}

impl KubeStore {
    /// A sources or rules change, written by the leader.
    async fn write_runtime(
        &self,
        (api, namespace, name): &(Api<ConfigMap>, String, String),
        change: &Change,
    ) -> Result<Arc<Snapshot>, ChangeError> {
        // Fenced (SPEC "Leadership is fenced"): the replace carries the
        // resourceVersion read just before (after this replica took the
        // Lease), a create is made only within the renew deadline, and each
        // call gets only the time left until it; a stale precondition reads
        // again and decides again.
        let fenced = |e: Fenced, what: &str| match e {
            Fenced::NotLeader => ChangeError::NotLeader(format!("{what}: this replica is no longer the leader")),
            e => ChangeError::Unavailable(format!("{what} ConfigMap {name}: {e}")),
        };
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(why) = self.not_serving() {
                return Err(ChangeError::NotLeader(why));
            }
            let current = self.fence.write(api.get_opt(name)).await.map_err(|e| fenced(e, "reading"))?;
            let data = current.as_ref().and_then(|c| c.data.clone()).unwrap_or_default();
            let (sources, rules) = crate::kube::source::runtime(&data).map_err(ChangeError::Unreadable)?;
            // The change applies to what the ConfigMap holds now, beside
            // the cluster's services (validated together, as served).
            let served = self.served.current();
            let mut raw = served.raw.clone();
            (raw.sources, raw.rules) = (sources, rules);
            let Some(next) = change.apply_to(&raw, &self.served.base)? else { return Ok(served) };
            Snapshot::build(next.clone(), None, 1, &self.served.base, &self.served.limits)
                .map_err(ChangeError::Invalid)?;
            let mut cm = current.unwrap_or_else(|| {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(name.clone());
                cm.metadata.namespace = Some(namespace.clone());
                cm
            });
            let creating = cm.metadata.resource_version.is_none();
            let map = cm.data.get_or_insert_with(Default::default);
            map.insert("sources".to_owned(), to_json(&next.sources)?);
            map.insert("rules".to_owned(), to_json(&next.rules)?);
            let written = if creating {
                self.fence.write(api.create(&PostParams::default(), &cm)).await
            } else {
                self.fence.write(api.replace(name, &PostParams::default(), &cm)).await
            };
            match written {
                Ok(_) => return self.seen(name, &next).await,
                // Someone wrote in between (or created it): read again.
                Err(e) if e.is_conflict() => continue,
                Err(e) => return Err(fenced(e, "writing")),
            }
        }
        Err(ChangeError::Unavailable(format!(
            "ConfigMap {name} changed under {WRITE_ATTEMPTS} writes in a row; try again"
        )))
    }

    /// Waits until the served table has what was written (the watch brings
    /// it back), so the answer's version serves the change.
    async fn seen(&self, name: &str, next: &RawTable) -> Result<Arc<Snapshot>, ChangeError> {
        let deadline = Instant::now() + SEEN_DEADLINE;
        loop {
            let cur = self.served.current();
            if cur.raw.sources == next.sources && cur.raw.rules == next.rules {
                return Ok(cur);
            }
            if Instant::now() > deadline {
                return Err(ChangeError::Unavailable(format!(
                    "written to ConfigMap {name}, not served yet (the watch has not brought it back)"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A runtime list as the ConfigMap holds it (JSON).
fn to_json<T: serde::Serialize>(v: &T) -> Result<String, ChangeError> {
    serde_json::to_string(v).map_err(|e| ChangeError::WriteFailed(format!("encoding runtime data: {e}")))
}

impl Store for KubeStore {
    fn apply(&self, change: Change) -> BoxFuture<'_, Result<Arc<Snapshot>, ChangeError>> {
        Box::pin(async move {
            let runtime_change = matches!(
                change,
                Change::BindSource { .. }
                    | Change::UnbindSource { .. }
                    | Change::SetRules(_)
                    | Change::ExpireSources { .. }
            );
            match &self.runtime {
                Some(runtime) if runtime_change => self.write_runtime(runtime, &change).await,
                _ => Err(ChangeError::ManagedByKubernetes),
            }
        })
    }

    fn served(&self) -> &Served {
        &self.served
    }

    fn serving(&self) -> Option<watch::Receiver<bool>> {
        Some(self.leading.subscribe())
    }

    fn not_serving(&self) -> Option<String> {
        (!self.is_leader()).then(|| "this replica is not the leader; the Service reaches the leader".to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::sync::Arc;

    use isogroup_core::{Limits, RawTable};

    use super::KubeStore;
    use crate::metrics::Metrics;
    use crate::store::{Served, Store};

    fn table(groups: &[&str]) -> RawTable {
        let clusters: serde_json::Map<String, serde_json::Value> =
            groups.iter().map(|g| ((*g).to_owned(), serde_json::json!(format!("c-{g}")))).collect();
        serde_json::from_value(serde_json::json!({"services": {"r": {"hosts": ["r"], "clusters": clusters}}})).unwrap()
    }

    #[test]
    fn only_the_leader_serves_and_a_new_epoch_serves_at_once() {
        let served = Served::new("base".into(), Limits::default(), Arc::new(Metrics::new())).unwrap();
        let store = KubeStore::new(served);
        assert!(store.publish(table(&["base"]), None).unwrap().is_none(), "a follower serves nothing");
        assert!(store.not_serving().is_some());
        let first = store.become_leader("1000-aa".into()).unwrap().unwrap();
        assert_eq!((first.epoch.as_deref(), first.raw.services["r"].clusters.len()), (Some("1000-aa"), 1));
        assert!(store.not_serving().is_none());
        assert!(store.publish(table(&["base"]), None).unwrap().is_none(), "unchanged: no new version");
        let second = store.publish(table(&["base", "f1"]), None).unwrap().unwrap();
        assert!(second.version > first.version);
        store.step_down();
        assert!(store.not_serving().is_some());
        assert!(store.publish(table(&["base"]), None).unwrap().is_none(), "stepped down: serves nothing new");
        // elected again: a newer epoch, the latest table, even if unchanged
        let third = store.become_leader("2000-bb".into()).unwrap().unwrap();
        assert_eq!(third.epoch.as_deref(), Some("2000-bb"));
        assert_eq!(third.raw.services["r"].clusters.len(), 1);
    }

    #[test]
    fn an_update_checked_in_parts_is_served_and_a_bad_one_rejected_whole() {
        let served = Served::new("base".into(), Limits::default(), Arc::new(Metrics::new())).unwrap();
        let store = KubeStore::new(served);
        store.become_leader("1000-aa".into()).unwrap();
        let svc = |host: &str, groups: &[&str]| -> isogroup_core::RawService {
            serde_json::from_value(serde_json::json!({
                "hosts": [host],
                "clusters": groups.iter().map(|g| ((*g).to_owned(), serde_json::json!(format!("c-{g}")))).collect::<serde_json::Map<_, _>>(),
            }))
            .unwrap()
        };
        let mut raw = RawTable::default();
        raw.services.insert("a".into(), svc("a", &["base"]));
        raw.services.insert("b".into(), svc("b", &["base"]));
        let first = store.publish(raw.clone(), None).unwrap().unwrap();
        assert_eq!(first.raw.services.len(), 2);
        // a lane enters a: checked in parts, served with the whole table's JSON
        raw.services.insert("a".into(), svc("a", &["base", "f1"]));
        let second = store.publish(raw.clone(), Some(["a".to_owned()].into())).unwrap().unwrap();
        assert_eq!(second.json, serde_json::to_vec(&second.raw).unwrap());
        assert_eq!(second.table().service_count(), 2);
        assert!(second.table().knows_group("f1"));
        // b takes a's host: rejected whole, with the whole check's error
        raw.services.insert("b".into(), svc("a", &["base"]));
        let Err(err) = store.publish(raw.clone(), Some(["b".to_owned()].into())) else { panic!("accepted") };
        let err = err.to_string();
        assert!(err.contains(r#"services.b.hosts: host "a" already belongs to service "a""#), "{err}");
        assert_eq!(store.served().current().version, second.version, "the served table stays");
        // fixed: the delta since the served table includes b still
        raw.services.insert("b".into(), svc("b", &["base", "f1"]));
        raw.services.remove("a");
        let third = store.publish(raw.clone(), Some(["a".to_owned()].into())).unwrap().unwrap();
        assert_eq!(third.raw.services.keys().collect::<Vec<_>>(), ["b"]);
        assert_eq!(third.json, serde_json::to_vec(&third.raw).unwrap());
        assert!(third.table().knows_group("f1"));
    }

    /// Changes replayed on the replaced snapshot's table (or copied while a
    /// poller holds it) keep the store's table equal to the one applied.
    #[test]
    fn changes_replay_onto_the_replaced_table() {
        let served = Served::new("base".into(), Limits::default(), Arc::new(Metrics::new())).unwrap();
        let store = KubeStore::new(served);
        store.become_leader("1000-aa".into()).unwrap();
        assert!(!store.has_table());
        let svc = |n: usize, lanes: usize| -> isogroup_core::RawService {
            let clusters: serde_json::Map<String, serde_json::Value> = (0..=lanes)
                .map(|l| (if l == 0 { "base".into() } else { format!("f{l}") }, serde_json::json!("c")))
                .collect();
            serde_json::from_value(serde_json::json!({ "hosts": [format!("h{n}")], "clusters": clusters })).unwrap()
        };
        let mut want = RawTable::default();
        for n in 0..5 {
            want.services.insert(format!("s{n}"), svc(n, 0));
        }
        store.publish(want.clone(), None).unwrap().unwrap();
        let mut held = None;
        for step in 0..40usize {
            let n = step * 7 % 6;
            let change = if step % 5 == 4 { None } else { Some(svc(n, step % 3)) };
            match &change {
                Some(s) => want.services.insert(format!("s{n}"), s.clone()),
                None => want.services.remove(&format!("s{n}")),
            };
            if step % 4 == 0 {
                held = Some(store.served().current()); // a poller holds it
            } else if step % 4 == 1 {
                held = None;
            }
            let rest = RawTable { groups: want.groups.clone(), ..RawTable::default() };
            store.publish_changes(vec![(format!("s{n}"), change)], rest).unwrap();
            let cur = store.served().current();
            assert_eq!(cur.raw.services, want.services, "step {step}: served");
            assert_eq!(cur.json, serde_json::to_vec(&cur.raw).unwrap(), "step {step}: JSON");
            let role = store.role.lock().unwrap();
            assert_eq!(role.latest.as_ref().map(|l| &l.services), Some(&want.services), "step {step}: kept");
        }
        drop(held);
    }
}
