//! What a replica serves: the current snapshot (epoch, version, table),
//! watched by long-polls, and whether the replica is ready. Every store
//! publishes through one of these; the API only reads it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use isogroup_core::epoch::Stamp;
use isogroup_core::{Limits, RawTable, Table, TableError};
use tokio::sync::watch;

use super::delta::{Delta, History};
use crate::metrics::Metrics;

/// The highest version served: a signed 64-bit reader (a Prometheus gauge,
/// a JSON number in most languages) reads it right.
pub const MAX_VERSION: u64 = i64::MAX as u64;

/// A version that cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version: {version} is too large to be bumped (versions stay at or below {limit})")]
pub struct VersionTooLarge {
    pub version: u64,
    pub limit: u64,
}

/// One accepted table: the raw form (what changes start from), the compiled
/// form (for `/v1/resolve`), the JSON served to pollers and, once published,
/// the deltas onto it from the versions published before (one buffer each,
/// shared by every answer).
pub struct Snapshot {
    pub epoch: Option<String>,
    pub version: u64,
    pub raw: RawTable,
    compiled: Compiled,
    pub json: Bytes,
    deltas: Vec<Delta>,
    /// `json` gzipped, made on first ask (non-filter clients only).
    gzip: OnceLock<Bytes>,
}

/// The compiled table: at once, or on first use for a table checked in
/// parts (with what serves if that fails: it cannot, and is logged if it
/// does).
enum Compiled {
    Now(Arc<Table>),
    Later { cell: OnceLock<Arc<Table>>, base: String, limits: Limits, fallback: Arc<Table> },
}

impl Snapshot {
    /// Validates `raw` and stamps it with `epoch` and `version`.
    pub fn build(
        mut raw: RawTable,
        epoch: Option<String>,
        version: u64,
        base: &str,
        limits: &Limits,
    ) -> Result<Snapshot, Vec<TableError>> {
        raw.version = version;
        raw.epoch = epoch.clone();
        let table = Table::check(&raw, base, limits)?;
        // Compact: at 10k services pretty printing is a third more bytes
        // to write, send and parse.
        let json = serde_json::to_vec(&raw).unwrap_or_default();
        Ok(Snapshot::of(raw, Arc::new(table), json))
    }

    /// A table checked whole (`table`), stamped already, with its JSON.
    pub fn of(raw: RawTable, table: Arc<Table>, json: Vec<u8>) -> Snapshot {
        let (epoch, version, json) = (raw.epoch.clone(), raw.version, Bytes::from(json));
        Snapshot {
            epoch,
            version,
            raw,
            compiled: Compiled::Now(table),
            json,
            deltas: Vec::new(),
            gzip: OnceLock::new(),
        }
    }

    /// A table checked in parts (`store::parts`), stamped already, with its
    /// JSON: compiled on first use; `fallback` serves if that fails.
    pub fn checked_in_parts(
        raw: RawTable,
        json: Vec<u8>,
        base: &str,
        limits: &Limits,
        fallback: Arc<Table>,
    ) -> Snapshot {
        let compiled = Compiled::Later { cell: OnceLock::new(), base: base.to_owned(), limits: *limits, fallback };
        let (epoch, version, json) = (raw.epoch.clone(), raw.version, Bytes::from(json));
        Snapshot { epoch, version, raw, compiled, json, deltas: Vec::new(), gzip: OnceLock::new() }
    }

    /// The compiled table.
    pub fn table(&self) -> &Table {
        match &self.compiled {
            Compiled::Now(table) => table,
            Compiled::Later { cell, base, limits, fallback } => cell.get_or_init(|| {
                Table::check(&self.raw, base, limits).map(Arc::new).unwrap_or_else(|errors| {
                    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    tracing::error!(version = self.version, errors = %all.join("; "),
                        "a table checked in parts does not compile; resolving against an empty one");
                    fallback.clone()
                })
            }),
        }
    }

    /// A store never written: `{"version": 0}`, no epoch, which no filter
    /// installs over a table it has.
    /// Fails only for a base group name that is not valid.
    pub fn empty(base: &str, limits: &Limits) -> Result<Snapshot, Vec<TableError>> {
        let raw = RawTable::default();
        let table = Table::check(&raw, base, limits)?;
        Ok(Snapshot::of(raw, Arc::new(table), br#"{"version": 0}"#.to_vec()))
    }

    /// Where this snapshot stands in the (epoch, version) order.
    pub fn stamp(&self) -> Stamp<'_> {
        Stamp::new(self.epoch.as_deref(), self.version)
    }

    /// The table's JSON gzipped: once per version, then shared like `json`.
    pub fn json_gzip(&self) -> Bytes {
        self.gzip
            .get_or_init(|| {
                use std::io::Write;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                // Writing to memory cannot fail.
                let _ = gz.write_all(&self.json);
                Bytes::from(gz.finish().unwrap_or_default())
            })
            .clone()
    }

    /// The delta onto this table from the one stamped (`epoch`, `version`),
    /// when that is one of the versions published just before it and the
    /// delta is smaller than half the table.
    pub fn delta_from(&self, version: u64, epoch: Option<&str>) -> Option<&Bytes> {
        self.deltas.iter().find(|d| d.base_version == version && d.base_epoch.as_deref() == epoch).map(|d| &d.json)
    }
}

/// Whether the replica answers `/v1/table` (SPEC "Readiness").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// The whole state is not loaded yet: `/readyz` and `/v1/table` answer 503.
    Loading(String),
    Ready,
    /// Ready, with warnings (e.g. lanes left out of the table, a conflict):
    /// `/readyz` answers 200 `degraded` with the detail.
    Degraded(String),
    /// Loaded once, the store unreachable now: still ready, serving the last
    /// state; writes answer 503.
    Unreachable(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        !matches!(self, Readiness::Loading(_))
    }
}

/// The current snapshot and readiness; and, paced by the publish interval,
/// the snapshot held long-polls are answered with.
pub struct Served {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
    /// What held polls see: `tx` at most once per `min_publish`.
    held_tx: Arc<watch::Sender<Arc<Snapshot>>>,
    pacing: Arc<Mutex<Pacing>>,
    /// The last published versions, to compute deltas from.
    history: Mutex<History>,
    readiness: Mutex<Readiness>,
    metrics: Arc<Metrics>,
    pub base: String,
    pub limits: Limits,
    empty: Arc<Table>,
}

impl Served {
    /// Starts empty and not ready; fails for an invalid base group name.
    pub fn new(base: String, limits: Limits, metrics: Arc<Metrics>) -> Result<Served, String> {
        let empty = Snapshot::empty(&base, &limits)
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
        let empty_table = Table::check(&empty.raw, &base, &limits)
            .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))?;
        let empty = Arc::new(empty);
        let (tx, _) = watch::channel(empty.clone());
        let (held_tx, _) = watch::channel(empty);
        metrics.ready.set(0);
        let readiness = Mutex::new(Readiness::Loading("loading the state".into()));
        Ok(Served {
            tx: Arc::new(tx),
            held_tx: Arc::new(held_tx),
            pacing: Arc::new(Mutex::new(Pacing::default())),
            history: Mutex::new(History::default()),
            readiness,
            metrics,
            base,
            limits,
            empty: Arc::new(empty_table),
        })
    }

    /// SPEC "Publish interval": held polls get a new version at most once
    /// per `interval` (zero: at once, the default here; `serve` sets it).
    pub fn set_min_publish(&self, interval: Duration) {
        if let Ok(mut pacing) = self.pacing.lock() {
            pacing.interval = interval;
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Every snapshot as it is published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// What held long-polls wait on: the current snapshot, paced by the
    /// publish interval (bursts coalesce into their last version).
    pub fn subscribe_held(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.held_tx.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The empty table's compiled form (what serves if a table checked in
    /// parts does not compile).
    pub fn empty_table(&self) -> Arc<Table> {
        Arc::clone(&self.empty)
    }

    /// Serves `snap` from now on; held polls wake.
    pub fn publish(&self, snap: Snapshot) -> Arc<Snapshot> {
        self.replace(snap).0
    }

    /// Serves `snap` from now on; the snapshot served before it, too.
    /// Its deltas are computed here, once per published version.
    pub fn replace(&self, snap: Snapshot) -> (Arc<Snapshot>, Arc<Snapshot>) {
        self.replace_changed(snap, None)
    }

    /// Like `replace`, for a snapshot whose services differ from the one
    /// served only (if at all) in those `changed` names (`None`: not
    /// known): its deltas then cost in proportion to the change.
    pub fn replace_changed(
        &self,
        mut snap: Snapshot,
        changed: Option<&BTreeSet<String>>,
    ) -> (Arc<Snapshot>, Arc<Snapshot>) {
        if let Ok(mut history) = self.history.lock() {
            snap.deltas = history.publish(&snap, changed);
        }
        let snap = Arc::new(snap);
        self.metrics.table_updated(snap.version);
        let old = self.tx.send_replace(snap.clone());
        self.release_to_held();
        (snap, old)
    }

    /// Hands the current snapshot to held polls now, or, within the publish
    /// interval of the last release, once it has passed (one timer at a
    /// time: it releases whatever is current then).
    fn release_to_held(&self) {
        let Ok(mut pacing) = self.pacing.lock() else { return };
        if pacing.timer_armed {
            return;
        }
        let now = Instant::now();
        let due = pacing.released_at.map(|at| at + pacing.interval).filter(|due| *due > now);
        let (Some(due), Ok(runtime)) = (due, tokio::runtime::Handle::try_current()) else {
            pacing.released_at = Some(now);
            self.held_tx.send_replace(self.current());
            return;
        };
        pacing.timer_armed = true;
        let (tx, held_tx, pacing_cell) = (self.tx.clone(), self.held_tx.clone(), self.pacing.clone());
        runtime.spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            if let Ok(mut pacing) = pacing_cell.lock() {
                pacing.timer_armed = false;
                pacing.released_at = Some(Instant::now());
                held_tx.send_replace(tx.borrow().clone());
            }
        });
    }

    pub fn readiness(&self) -> Readiness {
        self.readiness.lock().map(|r| r.clone()).unwrap_or(Readiness::Loading("state lock poisoned".into()))
    }

    pub fn set_readiness(&self, readiness: Readiness) {
        self.metrics.ready.set(i64::from(readiness.is_ready()));
        if let Ok(mut r) = self.readiness.lock() {
            *r = readiness;
        }
    }
}

/// When held polls last got a new version, and whether a release is due.
#[derive(Default)]
struct Pacing {
    interval: Duration,
    released_at: Option<Instant>,
    timer_armed: bool,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the epoch: source bindings expire in these.
pub fn now_s() -> u64 {
    now_ms() / 1000
}

/// Above `current`, at least `asked` (a hand edit's version) and `now`;
/// refused, naming `version`, when that is above `MAX_VERSION`.
pub fn next_version(current: u64, asked: u64, now: u64) -> Result<u64, VersionTooLarge> {
    let next = current.saturating_add(1).max(asked).max(now);
    if next > MAX_VERSION {
        return Err(VersionTooLarge { version: current.max(asked), limit: MAX_VERSION });
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
