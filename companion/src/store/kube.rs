//! The Kubernetes source as a store: the cluster owns the table (the watch
//! loop in `kube_source` computes it on every replica), the Lease elects the
//! one replica that serves it (`kube_leader`). A follower keeps the latest
//! table ready so that, elected, it serves at once under the newer epoch it
//! made; until then it answers `503 not_leader`. Admin registrations are
//! refused: lanes are pod labels.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use isogroup_core::RawTable;

use super::{next_version, now_ms, Change, ChangeError, Served, Snapshot, Store};

#[derive(Default)]
struct Role {
    /// `Some` while this replica leads: the epoch it made when elected.
    epoch: Option<String>,
    /// The latest table the cluster gives (leader or not).
    latest: Option<RawTable>,
}

pub struct KubeStore {
    served: Served,
    role: Mutex<Role>,
}

impl KubeStore {
    pub fn new(served: Served) -> KubeStore {
        KubeStore { served, role: Mutex::new(Role::default()) }
    }

    pub fn is_leader(&self) -> bool {
        self.role.lock().is_ok_and(|r| r.epoch.is_some())
    }

    /// Records the table the cluster gives; the leader serves it unless it
    /// is what is served already.
    pub fn publish(&self, raw: RawTable) -> Result<Option<Arc<Snapshot>>, ChangeError> {
        let Ok(mut role) = self.role.lock() else { return Ok(None) };
        role.latest = Some(raw);
        self.serve(&role, false)
    }

    /// Elected with `epoch`: serves the latest table under it at once.
    pub fn become_leader(&self, epoch: String) -> Result<Option<Arc<Snapshot>>, ChangeError> {
        let Ok(mut role) = self.role.lock() else { return Ok(None) };
        role.epoch = Some(epoch);
        self.serve(&role, true)
    }

    /// No longer the leader: `/v1/table` answers `503 not_leader` from now.
    pub fn step_down(&self) {
        if let Ok(mut role) = self.role.lock() {
            role.epoch = None;
        }
    }

    fn serve(&self, role: &Role, new_epoch: bool) -> Result<Option<Arc<Snapshot>>, ChangeError> {
        let (Some(epoch), Some(raw)) = (&role.epoch, &role.latest) else { return Ok(None) };
        let current = self.served.current();
        if !new_epoch
            && current.epoch.as_ref() == Some(epoch)
            && raw.services == current.raw.services
            && raw.groups == current.raw.groups
            && raw.sources == current.raw.sources
            && raw.rules == current.raw.rules
        {
            return Ok(None);
        }
        let version = next_version(current.version, 0, now_ms())?;
        let snap = Snapshot::build(raw.clone(), Some(epoch.clone()), version, &self.served.base, &self.served.limits)
            .map_err(ChangeError::Invalid)?;
        Ok(Some(self.served.publish(snap)))
    }
}

impl Store for KubeStore {
    fn apply(&self, _change: Change) -> BoxFuture<'_, Result<Arc<Snapshot>, ChangeError>> {
        Box::pin(async { Err(ChangeError::ManagedByKubernetes) })
    }

    fn served(&self) -> &Served {
        &self.served
    }

    fn not_serving(&self) -> Option<String> {
        (!self.is_leader()).then(|| "this replica is not the leader; the Service reaches the leader".to_owned())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

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
        assert!(store.publish(table(&["base"])).unwrap().is_none(), "a follower serves nothing");
        assert!(store.not_serving().is_some());
        let first = store.become_leader("1000-aa".into()).unwrap().unwrap();
        assert_eq!((first.epoch.as_deref(), first.raw.services["r"].clusters.len()), (Some("1000-aa"), 1));
        assert!(store.not_serving().is_none());
        assert!(store.publish(table(&["base"])).unwrap().is_none(), "unchanged: no new version");
        let second = store.publish(table(&["base", "f1"])).unwrap().unwrap();
        assert!(second.version > first.version);
        store.step_down();
        assert!(store.not_serving().is_some());
        assert!(store.publish(table(&["base"])).unwrap().is_none(), "stepped down: serves nothing new");
        // elected again: a newer epoch, the latest table, even if unchanged
        let third = store.become_leader("2000-bb".into()).unwrap().unwrap();
        assert_eq!(third.epoch.as_deref(), Some("2000-bb"));
        assert_eq!(third.raw.services["r"].clusters.len(), 1);
    }
}
