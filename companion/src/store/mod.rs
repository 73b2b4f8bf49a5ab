//! The store seam: every admin write is a `Change` that a store applies
//! atomically, and every store publishes what it serves (epoch, version,
//! table) through `Served`. The API knows no store; a new store is one new
//! module.

pub mod change;
pub mod delta;
pub mod etcd;
pub mod expiry;
pub mod file;
pub mod parts;
pub mod served;

use std::sync::Arc;

use futures::future::BoxFuture;

pub use change::{Change, ChangeError};
pub use served::{next_version, now_ms, now_s, Readiness, Served, Snapshot, VersionTooLarge};

/// A place that holds the route table.
pub trait Store: Send + Sync {
    /// Applies `change` atomically: all of it is served under one new version,
    /// or nothing changes. A change that changes nothing answers the snapshot
    /// in force without a new version.
    fn apply(&self, change: Change) -> BoxFuture<'_, Result<Arc<Snapshot>, ChangeError>>;

    /// What this replica serves, and whether it is ready.
    fn served(&self) -> &Served;

    /// Why this replica does not serve tables or take writes right now
    /// (Kubernetes: not the leader); `None` when it does.
    fn not_serving(&self) -> Option<String> {
        None
    }

    /// Whether this replica serves, as it changes (Kubernetes: whether it
    /// leads), so that a held poll is released the moment it stops;
    /// `None` for a store that always serves.
    fn serving(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// A poll held (`epoch`, `after`): when that is the epoch served with a
    /// version above the one served, the store went back (etcd restored
    /// from a backup) and every filter holding it ignores this companion,
    /// or the poll is forged (polls carry no token).
    fn saw_poll(&self, _epoch: &str, _after: u64) {}

    /// Warnings for `/readyz` (ready, but an operator should look).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
}
