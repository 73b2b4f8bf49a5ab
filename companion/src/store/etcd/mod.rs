//! The etcd store (`serve --etcd URL[,URL…]`): replicas share one state,
//! and every replica serves the same (epoch, version) for it. The version is
//! the etcd revision of the last write that changed what is served
//! (`meta/rev`'s mod_revision); the epoch is put with the store's first write.
//!
//! Each replica mirrors the keys under the prefix (a paged read at one
//! revision, then a watch from the next) and publishes what they say. A
//! change first reads `meta/rev` (linearizable) and waits until the mirror
//! holds that write, so it is checked against every write already answered
//! by any replica (read-your-writes across replicas). It is then one
//! transaction guarded by `meta/rev`'s mod_revision as this replica saw it:
//! when another replica wrote in between, the guard fails, the mirror
//! catches up, and the change is applied again (never lost, never a `409`).
//! An uncontended registration is 2 etcd requests: that read and the
//! transaction. See `layout` for the keys.

mod follow;
pub mod layout;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, Txn, TxnOp, TxnOpResponse,
};
use futures::future::BoxFuture;
use isogroup_core::RawTable;
use tokio::sync::watch;

use self::layout::{Entry, Stored};
use super::{Change, ChangeError, Readiness, Served, Snapshot, Store};
use crate::metrics::EtcdLabels;

/// etcd 3.4 refuses a transaction with more than 128 operations or a request
/// over 1.5 MiB; stay below both, with room for the key prefix and framing.
const MAX_TXN_OPS: usize = 120;
const MAX_TXN_BYTES: usize = 1 << 20;
/// One key and value put alone: etcd's default request limit (1.5 MiB)
/// less room for the transaction's framing. A value over it is refused
/// `400` naming its field before anything is written.
const MAX_PUT_BYTES: usize = 1_572_864 - 8_192;
/// The largest message this replica decodes from etcd (the client's default
/// is 4 MiB; a page or a watch response can be bigger, see `follow`).
pub(crate) const MAX_DECODE_BYTES: usize = 256 << 20;
/// A write retried this many times against other replicas' writes gives up
/// with `503` (each retry first catches up with what they wrote).
const MAX_ATTEMPTS: usize = 50;
/// How long a write waits for this replica's mirror to show it.
const CATCH_UP: Duration = Duration::from_secs(10);
/// Per-request timeout (reads of the follower).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A write whose etcd requests get no answer for this long (no quorum, a
/// partition, every member down) is refused `503` with the reason: each
/// request of a write is bounded by it, and failures are retried only
/// within it. Every answer from etcd (a conflict included) starts it again,
/// so conflicting writes are still retried. A retried transaction that had
/// in fact committed fails its guard, and the change is then found already
/// applied: retrying never applies a change twice.
const STALL: Duration = Duration::from_millis(4_000);
/// A poll proving the store went back (see `saw_poll`) mints a new epoch
/// only this long after this replica loaded the store (default; `serve
/// --rollback-window-s`).
pub const ROLLBACK_WINDOW: Duration = Duration::from_secs(300);
/// Orphaned generations deleted per load, at most.
const SWEEP_MAX: usize = 32;

pub struct EtcdStore {
    endpoints: Vec<String>,
    prefix: String,
    /// Requests with a timeout (reads and writes), decoding up to
    /// `MAX_DECODE_BYTES`.
    kv: KvClient,
    served: Served,
    mirror: Mutex<Mirror>,
    /// The revision the mirror has reached: from applied events and
    /// progress notifications only (see `follow`).
    seen: watch::Sender<i64>,
    /// One write at a time from this replica (others are retried in etcd).
    writer: tokio::sync::Mutex<()>,
    /// When the write in progress gives up if etcd keeps not answering.
    deadline: Mutex<Instant>,
    rollback: Mutex<Rollback>,
    /// This store, for tasks started from `&self` (`saw_poll`).
    myself: std::sync::OnceLock<std::sync::Weak<EtcdStore>>,
    /// A rollback check is under way.
    checking: std::sync::atomic::AtomicBool,
}

/// Rollback evidence (see `saw_poll`).
struct Rollback {
    window: Duration,
    /// When this replica first loaded the store.
    loaded_at: Option<Instant>,
    /// A new epoch was minted (or tried) since that load.
    minted: bool,
    /// The last evidence seen outside the window, for `/readyz`.
    warning: Option<String>,
}

/// The keys under the prefix (relative to it), as of `revision`.
#[derive(Default)]
struct Mirror {
    entries: BTreeMap<String, Entry>,
    revision: i64,
    loaded: bool,
    /// Why the stored state is not served, while it is not.
    rejected: Option<String>,
    /// The last epoch seen: a re-seeded store's new epoch goes above it.
    last_epoch: Option<String>,
}

/// What a write reads from the mirror.
struct Base {
    raw: RawTable,
    epoch: Option<String>,
    generation: Option<String>,
    rev_mod_revision: i64,
    /// The served generation's keys and values.
    keys: BTreeMap<String, Vec<u8>>,
    /// Other generations with keys present (to delete at the next switch).
    others: Vec<String>,
    last_epoch: Option<String>,
}

enum Outcome {
    /// Written at this revision.
    Committed(i64),
    /// Another write came first; the store was at this revision.
    Conflict(i64),
}

impl EtcdStore {
    /// Connects lazily: nothing is read here, `follow` does it (and retries).
    /// `rollback_window`: see `saw_poll`.
    pub async fn connect(
        endpoints: Vec<String>,
        prefix: String,
        served: Served,
        rollback_window: Duration,
    ) -> Result<Arc<EtcdStore>, String> {
        let kv = kv_client(&endpoints, &prefix).await?;
        served.set_readiness(Readiness::Loading(format!("reading the state from etcd at {}", endpoints.join(","))));
        let store = Arc::new(EtcdStore {
            endpoints,
            prefix,
            kv,
            served,
            mirror: Mutex::new(Mirror::default()),
            seen: watch::Sender::new(0),
            writer: tokio::sync::Mutex::new(()),
            deadline: Mutex::new(Instant::now()),
            rollback: Mutex::new(Rollback { window: rollback_window, loaded_at: None, minted: false, warning: None }),
            myself: std::sync::OnceLock::new(),
            checking: std::sync::atomic::AtomicBool::new(false),
        });
        let _ = store.myself.set(Arc::downgrade(&store));
        Ok(store)
    }

    /// The client for the watch: no per-request timeout (a watch lives long),
    /// keep-alives to notice a dead member.
    async fn watch_client(&self) -> Result<Client, etcd_client::Error> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        Client::connect(&self.endpoints, Some(options)).await
    }

    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.prefix)
    }

    fn count(&self, op: &'static str) {
        self.served.metrics().etcd_requests.get_or_create(&EtcdLabels { op }).inc();
    }

    /// Publishes what the mirror says, or counts and names why it cannot.
    fn refresh(&self, mirror: &mut Mirror) {
        let built = match layout::read(&mirror.entries, &self.prefix) {
            Ok(Stored::Empty) => Snapshot::empty(&self.served.base, &self.served.limits).map_err(|e| join(&e)),
            Ok(Stored::State(state)) => {
                mirror.last_epoch = Some(state.epoch.clone());
                mirror.rejected = None;
                let current = self.served.current();
                if current.epoch.as_deref() == Some(&state.epoch) && current.version == state.version {
                    let same = state.raw.services == current.raw.services
                        && state.raw.groups == current.raw.groups
                        && state.raw.base_group == current.raw.base_group
                        && state.raw.sources == current.raw.sources
                        && state.raw.rules == current.raw.rules;
                    if !same {
                        // Edited by hand without a new meta/rev: serving it
                        // under the same version would split the replicas.
                        // The next write through the API carries it.
                        self.served.metrics().store_rejects.inc();
                        tracing::warn!(
                            version = state.version,
                            "etcd: the served generation changed without a new meta/rev; \
                             the table in force stays until the next write"
                        );
                    }
                    return;
                }
                Snapshot::build(state.raw, Some(state.epoch), state.version, &self.served.base, &self.served.limits)
                    .map_err(|e| format!("the stored table is invalid: {}", join(&e)))
            }
            Err(errors) => Err(errors.join("; ")),
        };
        match built {
            Ok(snap) => {
                mirror.rejected = None;
                let current = self.served.current();
                if snap.epoch != current.epoch || snap.version != current.version {
                    let snap = self.served.publish(snap);
                    tracing::info!(version = snap.version, epoch = ?snap.epoch, "etcd: table published");
                }
            }
            Err(why) => {
                self.served.metrics().store_rejects.inc();
                tracing::error!(error = %why, "etcd: the stored state is refused; the table in force stays");
                mirror.rejected = Some(why);
            }
        }
    }

    fn base(&self) -> Result<Base, ChangeError> {
        let mirror = self.mirror.lock().map_err(|_| ChangeError::Unavailable("mirror lock poisoned".into()))?;
        if let Some(why) = &mirror.rejected {
            return Err(ChangeError::Unreadable(format!("the store holds data this replica cannot read: {why}")));
        }
        let stored = layout::read(&mirror.entries, &self.prefix).map_err(|e| ChangeError::Unreadable(e.join("; ")))?;
        let generations = layout::other_generations(mirror.entries.keys(), None);
        let (raw, epoch, generation) = match stored {
            Stored::Empty => (RawTable::default(), None, None),
            Stored::State(s) => (s.raw, Some(s.epoch), Some(s.generation)),
        };
        let own = generation.as_deref().map(layout::generation_prefix);
        let keys = match &own {
            Some(own) => mirror
                .entries
                .range(own.clone()..)
                .take_while(|(k, _)| k.starts_with(own.as_str()))
                .map(|(k, e)| (k.clone(), e.value.clone()))
                .collect(),
            None => BTreeMap::new(),
        };
        let others = generations.into_iter().filter(|g| Some(g) != generation.as_ref()).collect();
        Ok(Base {
            raw,
            epoch,
            generation,
            rev_mod_revision: mirror.entries.get(layout::REV).map_or(0, |e| e.mod_revision),
            keys,
            others,
            last_epoch: mirror.last_epoch.clone(),
        })
    }

    /// The guard and meta operations every write carries.
    fn guarded(&self, base: &Base, epoch: &str, generation: &str) -> (Vec<Compare>, Vec<TxnOp>) {
        let mut compares = vec![Compare::mod_revision(self.key(layout::REV), CompareOp::Equal, base.rev_mod_revision)];
        let mut ops = vec![TxnOp::put(self.key(layout::REV), layout::rev_value(generation), None)];
        if base.epoch.is_none() {
            // Put only if absent, in the first write's transaction.
            compares.push(Compare::create_revision(self.key(layout::EPOCH), CompareOp::Equal, 0));
            ops.push(TxnOp::put(self.key(layout::EPOCH), epoch, None));
        }
        (compares, ops)
    }

    /// Runs one etcd request of a write, bounded by the write's deadline;
    /// an answer moves the deadline on.
    async fn bounded<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, ChangeError> {
        let deadline = self.deadline.lock().map(|d| *d).unwrap_or_else(|_| Instant::now());
        match tokio::time::timeout_at(deadline.into(), request).await {
            Ok(Ok(answer)) => {
                if let Ok(mut d) = self.deadline.lock() {
                    *d = Instant::now() + STALL;
                }
                Ok(answer)
            }
            Ok(Err(e)) => {
                self.served.metrics().etcd_errors.inc();
                Err(ChangeError::Unavailable(format!("etcd: {e}")))
            }
            Err(_) => {
                self.served.metrics().etcd_errors.inc();
                Err(ChangeError::Unavailable(format!(
                    "etcd: no answer in {STALL:?} (no quorum, or no member reachable)"
                )))
            }
        }
    }

    /// A guarded transaction: `Conflict` carries the mod_revision of
    /// `meta/rev` as the write that came first left it (read in the same
    /// transaction), which is what the mirror must reach before a retry;
    /// never the store's revision, which another application's keys move.
    async fn txn(&self, txn: Txn) -> Result<Outcome, ChangeError> {
        self.count("txn");
        let txn = txn.or_else(vec![TxnOp::get(self.key(layout::REV), Some(GetOptions::new().with_keys_only()))]);
        let response = self.bounded(self.kv.clone().txn(txn)).await?;
        if response.succeeded() {
            return Ok(Outcome::Committed(response.header().map_or(0, |h| h.revision())));
        }
        let rev = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().map_or(0, |kv| kv.mod_revision())),
            _ => None,
        });
        Ok(Outcome::Conflict(rev.unwrap_or(0)))
    }

    /// An unguarded batch of puts into a generation not served yet. etcd
    /// refusing it as too large names the largest value in it.
    async fn put_batch(&self, batch: Vec<TxnOp>, largest: (&str, usize)) -> Result<(), ChangeError> {
        self.count("txn");
        match self.bounded(self.kv.clone().txn(Txn::new().and_then(batch))).await {
            Err(ChangeError::Unavailable(why)) if why.contains("too large") => Err(ChangeError::TooLarge(format!(
                "{}: {} bytes; etcd refused the write as too large (its --max-request-bytes): {why}",
                layout::field_of(largest.0),
                largest.1
            ))),
            other => other.map(|_| ()),
        }
    }

    /// Deletes a generation this replica wrote and did not switch to, unless
    /// `meta/rev` names it (a switch whose answer was lost may have
    /// committed). Best effort: what is left, a later sweep deletes.
    async fn discard(&self, generation: &str) {
        self.count("txn");
        let txn = Txn::new()
            .when(vec![Compare::value(self.key(layout::REV), CompareOp::NotEqual, layout::rev_value(generation))])
            .and_then(vec![TxnOp::delete(
                self.key(&layout::generation_prefix(generation)),
                Some(DeleteOptions::new().with_prefix()),
            )]);
        // Its own short deadline: the write's may have run out.
        let discard = tokio::time::timeout(STALL, self.kv.clone().txn(txn)).await;
        if !matches!(discard, Ok(Ok(_))) {
            tracing::warn!(generation, "etcd: could not delete an abandoned generation; a later load sweeps it");
        }
    }

    /// Writes `next` once, guarded by what `base` saw.
    async fn write(&self, base: &Base, next: &RawTable, epoch: &str) -> Result<Outcome, ChangeError> {
        // The served generation's keys (a new one's are as long: the sizes
        // are what count here).
        let wanted = layout::entries_of(next, base.generation.as_deref().unwrap_or("0000000000000000"));
        if let Some((field, size)) = layout::oversized(&wanted, self.prefix.len(), MAX_PUT_BYTES) {
            return Err(ChangeError::TooLarge(format!(
                "{field}: {size} bytes in one etcd value; etcd takes at most {MAX_PUT_BYTES} (its request limit, 1.5 MiB by default, less framing)"
            )));
        }
        if let Some(generation) = &base.generation {
            let mut ops = Vec::new();
            let mut bytes = 0;
            for (key, value) in &wanted {
                if base.keys.get(key) != Some(value) {
                    bytes += key.len() + value.len() + self.prefix.len();
                    ops.push(TxnOp::put(self.key(key), value.clone(), None));
                }
            }
            for key in base.keys.keys().filter(|k| !wanted.contains_key(*k)) {
                bytes += key.len() + self.prefix.len();
                ops.push(TxnOp::delete(self.key(key), None));
            }
            if ops.len() + 2 <= MAX_TXN_OPS && bytes <= MAX_TXN_BYTES {
                let (compares, meta) = self.guarded(base, epoch, generation);
                ops.extend(meta);
                return self.txn(Txn::new().when(compares).and_then(ops)).await;
            }
        }
        self.write_generation(base, next, epoch).await
    }

    /// Writes `next` as a new generation in as many transactions as it needs,
    /// then switches to it in one small transaction that also deletes the
    /// old generations. A switch that loses to another write deletes what it
    /// wrote.
    async fn write_generation(&self, base: &Base, next: &RawTable, epoch: &str) -> Result<Outcome, ChangeError> {
        let generation = format!("{:016x}", crate::random::u64());
        let entries = layout::entries_of(next, &generation);
        let (compares, mut switch) = self.guarded(base, epoch, &generation);
        let mut olds: Vec<&String> = base.generation.iter().chain(base.others.iter()).collect();
        olds.truncate(MAX_TXN_OPS - switch.len());
        for old in olds {
            switch.push(TxnOp::delete(
                self.key(&layout::generation_prefix(old)),
                Some(DeleteOptions::new().with_prefix()),
            ));
        }
        let total: usize = entries.iter().map(|(k, v)| k.len() + v.len() + self.prefix.len()).sum();
        if entries.len() + switch.len() <= MAX_TXN_OPS && total <= MAX_TXN_BYTES {
            switch.extend(entries.iter().map(|(k, v)| TxnOp::put(self.key(k), v.clone(), None)));
            return self.txn(Txn::new().when(compares).and_then(switch)).await;
        }
        // Every path out of here that does not serve the new generation
        // deletes it.
        let outcome = self.write_batches(&entries).await;
        let outcome = match outcome {
            Ok(()) => self.txn(Txn::new().when(compares).and_then(switch)).await,
            Err(e) => Err(e),
        };
        if !matches!(outcome, Ok(Outcome::Committed(_))) {
            self.discard(&generation).await;
        }
        outcome
    }

    /// Puts `entries` in batches that each fit one transaction.
    async fn write_batches(&self, entries: &BTreeMap<String, Vec<u8>>) -> Result<(), ChangeError> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut largest: (&str, usize) = ("", 0);
        for (key, value) in entries {
            let size = key.len() + value.len() + self.prefix.len();
            if !batch.is_empty() && (batch.len() + 1 > MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES) {
                self.put_batch(std::mem::take(&mut batch), largest).await?;
                bytes = 0;
                largest = ("", 0);
            }
            bytes += size;
            if size > largest.1 {
                largest = (key, size);
            }
            batch.push(TxnOp::put(self.key(key), value.clone(), None));
        }
        if !batch.is_empty() {
            self.put_batch(batch, largest).await?;
        }
        Ok(())
    }

    /// Waits until the mirror has reached `revision` (false on timeout).
    /// Every revision waited for is one that wrote `meta/rev`, an event the
    /// watch delivers: never the store's revision, which other
    /// applications' keys move.
    async fn caught_up(&self, revision: i64) -> bool {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(CATCH_UP, seen.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    async fn apply_change(&self, change: Change) -> Result<Arc<Snapshot>, ChangeError> {
        let _guard = self.writer.lock().await;
        if let Ok(mut d) = self.deadline.lock() {
            *d = Instant::now() + STALL;
        }
        loop {
            match self.try_apply(&change).await {
                Err(ChangeError::Unavailable(why)) => {
                    let pause = crate::random::jitter(Duration::from_millis(300));
                    let deadline = self.deadline.lock().map(|d| *d).unwrap_or_else(|_| Instant::now());
                    if Instant::now() + pause >= deadline {
                        return Err(ChangeError::Unavailable(why));
                    }
                    tracing::warn!(error = %why, "etcd: write failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                other => return other,
            }
        }
    }

    /// Read-your-writes across replicas: waits until the mirror holds the
    /// last write made through any replica, so a change that depends on a
    /// write just made through another replica is checked against it. Every
    /// write puts `meta/rev`, so its mod_revision (a linearizable read)
    /// names the last one.
    async fn catch_up_with_store(&self) -> Result<(), ChangeError> {
        self.count("range");
        let response =
            self.bounded(self.kv.clone().get(self.key(layout::REV), Some(GetOptions::new().with_keys_only()))).await?;
        let last_write = response.kvs().first().map_or(0, |kv| kv.mod_revision());
        if self.caught_up(last_write).await {
            return Ok(());
        }
        Err(ChangeError::Unavailable(format!(
            "etcd: this replica's view did not reach revision {last_write} (the last write) in {CATCH_UP:?}"
        )))
    }

    async fn try_apply(&self, change: &Change) -> Result<Arc<Snapshot>, ChangeError> {
        self.catch_up_with_store().await?;
        for attempt in 0..MAX_ATTEMPTS {
            let base = self.base()?;
            let Some(next) = change.apply_to(&base.raw, &self.served.base)? else {
                return Ok(self.served.current());
            };
            let epoch = base.epoch.clone().unwrap_or_else(|| crate::random::new_epoch(base.last_epoch.as_deref()));
            // Validate before writing: nothing invalid reaches the store.
            Snapshot::build(next.clone(), Some(epoch.clone()), 1, &self.served.base, &self.served.limits)
                .map_err(ChangeError::Invalid)?;
            match self.write(&base, &next, &epoch).await? {
                Outcome::Committed(revision) => {
                    if self.caught_up(revision).await {
                        return Ok(self.served.current());
                    }
                    // Written, but our watch lags: answer with what we wrote.
                    let version = u64::try_from(revision).unwrap_or(0);
                    let snap = Snapshot::build(next, Some(epoch), version, &self.served.base, &self.served.limits)
                        .map_err(ChangeError::Invalid)?;
                    return Ok(Arc::new(snap));
                }
                Outcome::Conflict(revision) => {
                    // `revision`: meta/rev's mod_revision after the write
                    // that came first.
                    self.served.metrics().etcd_conflicts.inc();
                    tracing::debug!(attempt, revision, "etcd: another write came first; retrying");
                    if !self.caught_up(revision).await {
                        return Err(ChangeError::Unavailable(format!(
                            "etcd: this replica's view did not reach revision {revision} in {CATCH_UP:?}"
                        )));
                    }
                }
            }
        }
        Err(ChangeError::Unavailable(format!("etcd: {MAX_ATTEMPTS} attempts lost to other writes")))
    }
}

impl EtcdStore {
    /// Called once the mirror holds the whole state for the first time.
    fn loaded(&self) {
        if let Ok(mut r) = self.rollback.lock() {
            r.loaded_at.get_or_insert_with(Instant::now);
        }
    }

    /// Deletes up to `SWEEP_MAX` generations abandoned by writers that died
    /// between batches: those none of whose keys is newer than `meta/rev`.
    /// A write still in flight is never one of them (its keys are newer
    /// than the `meta/rev` it read), and one whose keys are all older than
    /// the last switch can only fail its guard. Guarded by `meta/rev`, so a
    /// switch in between leaves everything to the next load.
    async fn sweep(&self, entries: &BTreeMap<String, layout::Entry>) {
        let Some(rev) = entries.get(layout::REV) else { return };
        let served = serde_json::from_slice::<serde_json::Value>(&rev.value)
            .ok()
            .and_then(|v| v.get("generation")?.as_str().map(str::to_owned));
        let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
        for (key, entry) in entries {
            if let Some((generation, _)) = key.strip_prefix("gen/").and_then(|r| r.split_once('/')) {
                let n = newest.entry(generation).or_insert(0);
                *n = (*n).max(entry.mod_revision);
            }
        }
        let orphans: Vec<&str> = newest
            .into_iter()
            .filter(|(g, newest)| Some(*g) != served.as_deref() && *newest < rev.mod_revision)
            .map(|(g, _)| g)
            .take(SWEEP_MAX)
            .collect();
        if orphans.is_empty() {
            return;
        }
        let deletes = orphans
            .iter()
            .map(|g| TxnOp::delete(self.key(&layout::generation_prefix(g)), Some(DeleteOptions::new().with_prefix())))
            .collect::<Vec<_>>();
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(self.key(layout::REV), CompareOp::Equal, rev.mod_revision)])
            .and_then(deletes);
        self.count("txn");
        match self.kv.clone().txn(txn).await {
            Ok(r) if r.succeeded() => tracing::info!(?orphans, "etcd: abandoned generations deleted"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "etcd: abandoned generations not deleted; the next load tries again"),
        }
    }

    /// Confirms the evidence with etcd (a replica whose copy lags behind
    /// another's sees such polls too: then etcd's `meta/rev` is at or above
    /// `after`, and nothing happens), counts it, and mints a new epoch once
    /// per load within the window after it; otherwise remembers a warning.
    async fn on_rollback(&self, epoch: String, after: u64) {
        self.count("range");
        let stored = match self.kv.clone().get(self.key(layout::REV), Some(GetOptions::new().with_keys_only())).await {
            Ok(r) => r.kvs().first().map_or(0, |kv| kv.mod_revision()),
            Err(e) => {
                tracing::warn!(error = %e, "etcd: a poll above the version served could not be checked");
                return;
            }
        };
        if u64::try_from(stored).unwrap_or(0) >= after {
            return;
        }
        self.served.metrics().rollback_polls.inc();
        let mint = {
            let Ok(mut r) = self.rollback.lock() else { return };
            let within = r.loaded_at.is_some_and(|at| at.elapsed() < r.window);
            if within {
                // At most once per load.
                !std::mem::replace(&mut r.minted, true)
            } else {
                r.warning = Some(format!(
                    "rollback: a poll held epoch {epoch} at version {after}, above the store's ({stored}): \
                     the store went back (restored from a backup?) and filters holding it ignore this \
                     companion, or the poll is forged. If the store was restored, run \
                     `isogroup-companion epoch --new`"
                ));
                false
            }
        };
        if !mint {
            return;
        }
        let _guard = self.writer.lock().await;
        match replace_epoch(&mut self.kv.clone(), &self.prefix, Some((&epoch, after))).await {
            Ok(Some(new)) => tracing::warn!(
                old = %epoch, %new, after, stored,
                "etcd: a poll held a version above the store's under this epoch (a restored store): new epoch"
            ),
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "etcd: a new epoch after a rollback could not be written"),
        }
    }
}

impl Store for EtcdStore {
    fn apply(&self, change: Change) -> BoxFuture<'_, Result<Arc<Snapshot>, ChangeError>> {
        Box::pin(self.apply_change(change))
    }

    fn served(&self) -> &Served {
        &self.served
    }

    /// A poll holding the epoch served at a version above the one served:
    /// the store went back (etcd restored from a backup; the revision, so
    /// the version, went back under the same epoch) and every filter that
    /// holds the later version ignores this companion. Polls carry no
    /// token, so this mints a new epoch only within the window after this
    /// replica loaded the store and at most once per load (after a restore
    /// every replica is restarted); otherwise `/readyz` warns and
    /// `isogroup_companion_rollback_polls_total` counts.
    fn saw_poll(&self, epoch: &str, after: u64) {
        let current = self.served.current();
        if current.epoch.as_deref() != Some(epoch) || after <= current.version {
            return;
        }
        // One check at a time: many filters poll at once.
        if self.checking.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let epoch = epoch.to_owned();
        if let Some(store) = self.myself.get().and_then(std::sync::Weak::upgrade) {
            tokio::spawn(async move {
                store.on_rollback(epoch, after).await;
                store.checking.store(false, std::sync::atomic::Ordering::Release);
            });
        } else {
            self.checking.store(false, std::sync::atomic::Ordering::Release);
        }
    }

    fn warnings(&self) -> Vec<String> {
        self.rollback.lock().ok().and_then(|r| r.warning.clone()).into_iter().collect()
    }
}

/// A client for reads and writes with a per-request timeout, decoding up to
/// `MAX_DECODE_BYTES`.
async fn kv_client(endpoints: &[String], prefix: &str) -> Result<KvClient, String> {
    if prefix.is_empty() {
        return Err("--etcd-prefix: must not be empty".into());
    }
    let options = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
        .with_require_leader(true);
    let client = Client::connect(endpoints, Some(options)).await.map_err(|e| format!("--etcd: {e}"))?;
    Ok(client.kv_client().max_decoding_message_size(MAX_DECODE_BYTES))
}

/// Puts a new epoch, newer than the stored one, and `meta/rev` again (so
/// the version moves too) in one transaction guarded by both keys; returns
/// it. With `only_if` (epoch, version), nothing happens (`None`) unless the
/// stored epoch is that one and `meta/rev` is below that version (another
/// replica replaced the epoch already, or the store is not behind). A
/// store never written has no epoch to replace.
pub async fn replace_epoch(
    kv: &mut KvClient,
    prefix: &str,
    only_if: Option<(&str, u64)>,
) -> Result<Option<String>, String> {
    let (epoch_key, rev_key) = (format!("{prefix}{}", layout::EPOCH), format!("{prefix}{}", layout::REV));
    for _ in 0..5 {
        let epoch = kv.get(epoch_key.clone(), None).await.map_err(|e| format!("etcd: {e}"))?;
        let rev = kv.get(rev_key.clone(), None).await.map_err(|e| format!("etcd: {e}"))?;
        let (Some(epoch), Some(rev)) = (epoch.kvs().first(), rev.kvs().first()) else {
            return Err(format!("{prefix}: the store has never been written: no epoch to replace"));
        };
        let old = String::from_utf8_lossy(epoch.value()).into_owned();
        let behind = |after: u64| u64::try_from(rev.mod_revision()).unwrap_or(0) < after;
        if only_if.is_some_and(|(e, after)| e != old || !behind(after)) {
            return Ok(None);
        }
        let new = crate::random::new_epoch(Some(&old));
        let txn = Txn::new()
            .when(vec![
                Compare::mod_revision(epoch_key.clone(), CompareOp::Equal, epoch.mod_revision()),
                Compare::mod_revision(rev_key.clone(), CompareOp::Equal, rev.mod_revision()),
            ])
            .and_then(vec![
                TxnOp::put(epoch_key.clone(), new.clone(), None),
                TxnOp::put(rev_key.clone(), rev.value().to_vec(), None),
            ]);
        if kv.txn(txn).await.map_err(|e| format!("etcd: {e}"))?.succeeded() {
            return Ok(Some(new));
        }
    }
    Err("etcd: other writes kept changing the store; try again".into())
}

/// `isogroup-companion epoch --new --etcd …`: see `replace_epoch`.
pub async fn new_epoch_by_hand(endpoints: &[String], prefix: &str) -> Result<String, String> {
    let mut kv = kv_client(endpoints, prefix).await?;
    replace_epoch(&mut kv, prefix, None).await?.ok_or_else(|| "no epoch replaced".to_owned())
}

fn join(errors: &[isogroup_core::TableError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
