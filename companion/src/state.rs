//! The table in force and its version. The companion owns the version: every
//! accepted change gets one higher than any before, across restarts too
//! (versions are at least the wall-clock milliseconds).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use isogroup_core::{Limits, RawTable, Table, TableError};
use tokio::sync::watch;

/// One accepted table: the raw form (what admin edits start from), the
/// compiled form (for `/v1/resolve`) and the JSON served to pollers.
pub struct Snapshot {
    pub version: u64,
    pub raw: RawTable,
    pub table: Table,
    pub json: Vec<u8>,
}

impl Snapshot {
    /// Validates `raw` and stamps it with `version`.
    pub fn build(mut raw: RawTable, version: u64, base: &str, limits: &Limits) -> Result<Snapshot, Vec<TableError>> {
        raw.version = version;
        let table = Table::check(&raw, base, limits)?;
        let json = serde_json::to_vec_pretty(&raw).unwrap_or_default();
        Ok(Snapshot { version, raw, table, json })
    }
}

/// The current snapshot, watched by long-polls.
pub struct Store {
    tx: watch::Sender<Arc<Snapshot>>,
    pub base: String,
    pub limits: Limits,
}

impl Store {
    pub fn new(first: Snapshot, base: String, limits: Limits) -> Store {
        let (tx, _) = watch::channel(Arc::new(first));
        Store { tx, base, limits }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// The version for the next accepted change: above the current one, at
    /// least now in ms (so a restart never goes back), and at least what a
    /// hand-edited file asks for.
    pub fn next_version(&self, asked: u64) -> u64 {
        next_version(self.current().version, asked, now_ms())
    }

    /// Validates and publishes `raw` under a new version; held polls wake.
    pub fn publish(&self, raw: RawTable) -> Result<Arc<Snapshot>, Vec<TableError>> {
        let version = self.next_version(raw.version);
        let snap = Arc::new(Snapshot::build(raw, version, &self.base, &self.limits)?);
        self.tx.send_replace(snap.clone());
        Ok(snap)
    }

    /// Validates `raw` under the next version without publishing it (an
    /// admin write persists first, then publishes).
    pub fn prepare(&self, raw: RawTable) -> Result<Snapshot, Vec<TableError>> {
        Snapshot::build(raw, self.next_version(0), &self.base, &self.limits)
    }

    pub fn install(&self, snap: Snapshot) -> Arc<Snapshot> {
        let snap = Arc::new(snap);
        self.tx.send_replace(snap.clone());
        snap
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn next_version(current: u64, asked: u64, now: u64) -> u64 {
    (current + 1).max(asked).max(now)
}

#[cfg(test)]
mod tests {
    use super::next_version;

    #[test]
    fn versions_only_go_up() {
        let cases: &[(u64, u64, u64, u64)] = &[
            // (current, asked by the file, now ms, next)
            (0, 0, 1_000, 1_000),
            (1_000, 0, 1_000, 1_001),
            (5_000, 0, 1_000, 5_001), // clock behind: still higher
            (5_000, 9_000, 1_000, 9_000),
            (5_000, 3, 6_000, 6_000),
        ];
        for &(current, asked, now, want) in cases {
            assert_eq!(next_version(current, asked, now), want, "{current} {asked} {now}");
        }
    }
}
