//! The Kubernetes source as a store: the cluster owns the table (the watch
//! loop in `kube_source` publishes it), so admin writes are refused. Each
//! start makes a new epoch. (Leader election on a Lease, with the epoch
//! kept on it, is SPEC's next step for this store.)

use std::sync::Arc;

use futures::future::BoxFuture;
use isogroup_core::RawTable;

use super::{next_version, now_ms, Change, ChangeError, Readiness, Served, Snapshot, Store};

pub struct KubeStore {
    epoch: String,
    served: Served,
}

impl KubeStore {
    pub fn new(served: Served) -> KubeStore {
        served.set_readiness(Readiness::Loading("listing pods, services, endpoint slices, DestinationRules".into()));
        KubeStore { epoch: crate::random::new_epoch(None), served }
    }

    /// Publishes the table the cluster gives, unless it is what is served;
    /// the first one makes the replica ready.
    pub fn publish(&self, raw: RawTable) -> Result<Option<Arc<Snapshot>>, ChangeError> {
        let current = self.served.current();
        let ready = self.served.readiness().is_ready();
        if ready && raw.services == current.raw.services && raw.groups == current.raw.groups {
            return Ok(None);
        }
        let version = next_version(current.version, 0, now_ms())?;
        let snap = Snapshot::build(raw, Some(self.epoch.clone()), version, &self.served.base, &self.served.limits)
            .map_err(ChangeError::Invalid)?;
        let snap = self.served.publish(snap);
        self.served.set_readiness(Readiness::Ready);
        Ok(Some(snap))
    }
}

impl Store for KubeStore {
    fn apply(&self, _change: Change) -> BoxFuture<'_, Result<Arc<Snapshot>, ChangeError>> {
        Box::pin(async {
            Err(ChangeError::ReadOnly("the Kubernetes source owns the table; register by labelling pods"))
        })
    }

    fn served(&self) -> &Served {
        &self.served
    }
}
