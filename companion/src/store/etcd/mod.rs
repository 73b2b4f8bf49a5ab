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
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Txn, TxnOp};
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
/// A write retried this many times against other replicas' writes gives up
/// with `503` (each retry first catches up with what they wrote).
const MAX_ATTEMPTS: usize = 50;
/// How long a write waits for this replica's mirror to show it.
const CATCH_UP: Duration = Duration::from_secs(10);
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A write that fails (a member gone, an election under way) is retried for
/// this long, then answered `503` with the reason. A retried transaction
/// that had in fact committed fails its guard, and the change is then found
/// already applied: retrying never applies a change twice.
const WRITE_DEADLINE: Duration = Duration::from_secs(20);

pub struct EtcdStore {
    endpoints: Vec<String>,
    prefix: String,
    /// Requests with a timeout (reads and writes).
    kv: Client,
    served: Served,
    mirror: Mutex<Mirror>,
    /// The revision the mirror has reached.
    seen: watch::Sender<i64>,
    /// One write at a time from this replica (others are retried in etcd).
    writer: tokio::sync::Mutex<()>,
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
    pub async fn connect(endpoints: Vec<String>, prefix: String, served: Served) -> Result<Arc<EtcdStore>, String> {
        if prefix.is_empty() {
            return Err("--etcd-prefix: must not be empty".into());
        }
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3))
            .with_require_leader(true);
        let kv = Client::connect(&endpoints, Some(options)).await.map_err(|e| format!("--etcd: {e}"))?;
        served.set_readiness(Readiness::Loading(format!("reading the state from etcd at {}", endpoints.join(","))));
        Ok(Arc::new(EtcdStore {
            endpoints,
            prefix,
            kv,
            served,
            mirror: Mutex::new(Mirror::default()),
            seen: watch::Sender::new(0),
            writer: tokio::sync::Mutex::new(()),
        }))
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

    async fn txn(&self, txn: Txn) -> Result<Outcome, ChangeError> {
        self.count("txn");
        let response = self.kv.clone().txn(txn).await.map_err(|e| {
            self.served.metrics().etcd_errors.inc();
            ChangeError::Unavailable(format!("etcd: {e}"))
        })?;
        let revision = response.header().map_or(0, |h| h.revision());
        Ok(if response.succeeded() { Outcome::Committed(revision) } else { Outcome::Conflict(revision) })
    }

    /// Writes `next` once, guarded by what `base` saw.
    async fn write(&self, base: &Base, next: &RawTable, epoch: &str) -> Result<Outcome, ChangeError> {
        if let Some(generation) = &base.generation {
            let wanted = layout::entries_of(next, generation);
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
        let mut batch = Vec::new();
        let mut bytes = 0;
        for (key, value) in &entries {
            let size = key.len() + value.len() + self.prefix.len();
            if !batch.is_empty() && (batch.len() + 1 > MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES) {
                self.txn(Txn::new().and_then(std::mem::take(&mut batch))).await?;
                bytes = 0;
            }
            bytes += size;
            batch.push(TxnOp::put(self.key(key), value.clone(), None));
        }
        if !batch.is_empty() {
            self.txn(Txn::new().and_then(batch)).await?;
        }
        let outcome = self.txn(Txn::new().when(compares).and_then(switch)).await;
        if !matches!(outcome, Ok(Outcome::Committed(_))) {
            // Not served, and never will be: clean up (best effort; a later
            // switch deletes whatever is left).
            let mut kv = self.kv.clone();
            self.count("delete");
            let _ = kv
                .delete(self.key(&layout::generation_prefix(&generation)), Some(DeleteOptions::new().with_prefix()))
                .await;
        }
        outcome
    }

    /// Waits until the mirror has reached `revision` (false on timeout).
    async fn caught_up(&self, revision: i64) -> bool {
        let mut seen = self.seen.subscribe();
        tokio::time::timeout(CATCH_UP, seen.wait_for(|r| *r >= revision)).await.is_ok_and(|r| r.is_ok())
    }

    async fn apply_change(&self, change: Change) -> Result<Arc<Snapshot>, ChangeError> {
        let _guard = self.writer.lock().await;
        let started = std::time::Instant::now();
        loop {
            match self.try_apply(&change).await {
                Err(ChangeError::Unavailable(why)) if started.elapsed() < WRITE_DEADLINE => {
                    tracing::warn!(error = %why, "etcd: write failed; retrying");
                    tokio::time::sleep(crate::random::jitter(Duration::from_millis(500))).await;
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
            self.kv.clone().get(self.key(layout::REV), Some(GetOptions::new().with_keys_only())).await.map_err(
                |e| {
                    self.served.metrics().etcd_errors.inc();
                    ChangeError::Unavailable(format!("etcd: {e}"))
                },
            )?;
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

impl Store for EtcdStore {
    fn apply(&self, change: Change) -> BoxFuture<'_, Result<Arc<Snapshot>, ChangeError>> {
        Box::pin(self.apply_change(change))
    }

    fn served(&self) -> &Served {
        &self.served
    }
}

fn join(errors: &[isogroup_core::TableError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
