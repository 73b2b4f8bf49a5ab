//! The table in force and its version. The companion owns the version: every
//! accepted change gets one higher than any before, across restarts too
//! (versions are at least the wall-clock milliseconds).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use isogroup_core::{Limits, RawTable, Table, TableError};
use tokio::sync::{watch, Mutex};

/// The highest version served: a signed 64-bit reader (a Prometheus gauge,
/// a JSON number in most languages) reads it right.
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// Why a table was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("version: {version} is too large to be bumped (versions stay at or below {limit})")]
    VersionTooLarge { version: u64, limit: u64 },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<TableError>),
}

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
    /// Serialises every change (admin writes and file edits alike): each is
    /// a read-modify-write of the current table and takes the next version.
    pub writer: Mutex<()>,
}

impl Store {
    pub fn new(first: Snapshot, base: String, limits: Limits) -> Store {
        let (tx, _) = watch::channel(Arc::new(first));
        Store { tx, base, limits, writer: Mutex::new(()) }
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
    pub fn next_version(&self, asked: u64) -> Result<u64, PublishError> {
        next_version(self.current().version, asked, now_ms())
    }

    /// Validates and publishes `raw` under a new version; held polls wake.
    /// The caller holds `writer`.
    pub fn publish(&self, raw: RawTable) -> Result<Arc<Snapshot>, PublishError> {
        let version = self.next_version(raw.version)?;
        let snap = Snapshot::build(raw, version, &self.base, &self.limits).map_err(PublishError::Invalid)?;
        let snap = Arc::new(snap);
        self.tx.send_replace(snap.clone());
        Ok(snap)
    }

    /// Validates `raw` under the next version without publishing it (an
    /// admin write persists first, then publishes). The caller holds `writer`.
    pub fn prepare(&self, raw: RawTable) -> Result<Snapshot, PublishError> {
        Snapshot::build(raw, self.next_version(0)?, &self.base, &self.limits).map_err(PublishError::Invalid)
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

/// Above `current`, at least `asked` (a hand edit's version) and `now`;
/// refused, naming `version`, when that is above `MAX_VERSION`.
pub fn next_version(current: u64, asked: u64, now: u64) -> Result<u64, PublishError> {
    let next = current.saturating_add(1).max(asked).max(now);
    if next > MAX_VERSION {
        return Err(PublishError::VersionTooLarge { version: current.max(asked), limit: MAX_VERSION });
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::{next_version, MAX_VERSION};

    #[test]
    fn versions_only_go_up() {
        let cases: &[(u64, u64, u64, Result<u64, &str>)] = &[
            // (current, asked by the file, now ms, next)
            (0, 0, 1_000, Ok(1_000)),
            (1_000, 0, 1_000, Ok(1_001)),
            (5_000, 0, 1_000, Ok(5_001)), // clock behind: still higher
            (5_000, 9_000, 1_000, Ok(9_000)),
            (5_000, 3, 6_000, Ok(6_000)),
            (MAX_VERSION - 1, 0, 0, Ok(MAX_VERSION)),
            (0, MAX_VERSION, 0, Ok(MAX_VERSION)),
            // no room left: refused naming the field, never wrapped
            (MAX_VERSION, 0, 0, Err("version: 9223372036854775807 is too large to be bumped")),
            (0, MAX_VERSION + 1, 0, Err("version: 9223372036854775808 is too large to be bumped")),
            (u64::MAX, 0, 0, Err("version: 18446744073709551615 is too large to be bumped")),
            (3, u64::MAX, 5, Err("version: 18446744073709551615 is too large to be bumped")),
        ];
        for &(current, asked, now, want) in cases {
            let got = next_version(current, asked, now).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{current} {asked} {now}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{got}"),
                (got, want) => panic!("{current} {asked} {now}: {got:?}, want {want:?}"),
            }
        }
    }
}
