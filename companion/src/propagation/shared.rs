//! The etcd store's reports: each replica writes its own window under its
//! own leased key, and `GET /v1/propagation` on any replica sums every key,
//! so every replica answers the same.
//!
//! The keys live beside the table's prefix, never under it (the table's
//! layout refuses keys it does not know): `<prefix>` `/isogroup/` puts them
//! under `/isogroup-propagation/<replica>`. A key is written every
//! `WRITE_EVERY` when this replica took a report since, under a lease of
//! `LEASE_TTL` kept alive in between: a replica that stops is forgotten
//! within the TTL. A value is at most `MAX_VALUE_BYTES` (etcd refuses a
//! request over 1.5 MiB): the worst edges first, the rest left out and
//! counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, KvClient, LeaseClient, PutOptions};

use super::view::rank_edges;
use super::window::Snapshot;
use super::{now_minute, Propagation};
use crate::metrics::Metrics;

pub const WRITE_EVERY: Duration = Duration::from_secs(3);
pub const LEASE_TTL: i64 = 15;
/// Well under etcd's default request limit (1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Replica keys read at most (each value at most `MAX_VALUE_BYTES`).
const MAX_REPLICAS: i64 = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Answers within this long of a read share it (many consoles, one read).
const READ_FRESH: Duration = Duration::from_secs(1);

pub struct Shared {
    kv: KvClient,
    lease: LeaseClient,
    /// Where every replica's key lives.
    prefix: String,
    /// This replica's key.
    key: String,
    metrics: Arc<Metrics>,
    /// The last read and when: concurrent answers wait for one read.
    last_read: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Snapshot>>)>>,
}

/// The reports' prefix beside the table's `prefix`.
pub fn prefix_for(table_prefix: &str) -> String {
    format!("{}-propagation/", table_prefix.trim_end_matches('/'))
}

impl Shared {
    /// Connects lazily (nothing is read or written here).
    pub async fn connect(endpoints: &[String], table_prefix: &str, metrics: Arc<Metrics>) -> Result<Shared, String> {
        let options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let client = Client::connect(endpoints, Some(options)).await.map_err(|e| format!("--etcd: {e}"))?;
        let decode = (MAX_REPLICAS as usize) * (MAX_VALUE_BYTES + 4096);
        let prefix = prefix_for(table_prefix);
        let replica: String = crate::random::bytes::<8>().iter().map(|b| format!("{b:02x}")).collect();
        Ok(Shared {
            kv: client.kv_client().max_decoding_message_size(decode),
            lease: client.lease_client(),
            key: format!("{prefix}{replica}"),
            prefix,
            metrics,
            last_read: tokio::sync::Mutex::new(None),
        })
    }

    /// Every replica's window, as last written (read at most once a second).
    pub async fn read_all(&self) -> Result<Arc<Vec<Snapshot>>, String> {
        let mut last = self.last_read.lock().await;
        if let Some((at, snapshots)) = last.as_ref() {
            if at.elapsed() < READ_FRESH {
                return Ok(snapshots.clone());
            }
        }
        let snapshots = Arc::new(self.read_keys().await?);
        *last = Some((Instant::now(), snapshots.clone()));
        Ok(snapshots)
    }

    async fn read_keys(&self) -> Result<Vec<Snapshot>, String> {
        let options = GetOptions::new().with_prefix().with_limit(MAX_REPLICAS);
        let answer = self
            .kv
            .clone()
            .get(self.prefix.as_str(), Some(options))
            .await
            .map_err(|e| format!("etcd: reading the replicas' reports: {e}"))?;
        let mut out = Vec::with_capacity(answer.kvs().len());
        for kv in answer.kvs() {
            match serde_json::from_slice::<Snapshot>(kv.value()) {
                Ok(s) => out.push(s),
                Err(e) => {
                    // Another version's or a hand-written value: left out, not fatal.
                    self.metrics.store_rejects.inc();
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "etcd: a replica's reports unreadable: {e}");
                }
            }
        }
        Ok(out)
    }

    /// Writes this replica's window whenever it took a report since the
    /// last write, keeping its lease alive in between. Runs for good.
    pub async fn run(self: Arc<Self>, propagation: Arc<Propagation>) {
        let mut lease = None;
        let mut written = None;
        let mut tick = tokio::time::interval(WRITE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Some(id) = lease {
                if !self.keep_alive(id).await {
                    lease = None;
                }
            }
            let (snapshot, changes) = propagation.local(now_minute());
            if changes == 0 || (written == Some(changes) && lease.is_some()) {
                continue;
            }
            match self.write(lease, snapshot).await {
                Ok(id) => {
                    lease = Some(id);
                    written = Some(changes);
                }
                Err(e) => {
                    self.metrics.etcd_errors.inc();
                    tracing::warn!("etcd: this replica's reports not written (retried): {e}");
                    lease = None;
                }
            }
        }
    }

    async fn keep_alive(&self, id: i64) -> bool {
        let renewed = async {
            let (mut keeper, mut stream) = self.lease.clone().keep_alive(id).await?;
            keeper.keep_alive().await?;
            Ok::<_, etcd_client::Error>(stream.message().await?.is_some_and(|r| r.ttl() > 0))
        };
        matches!(tokio::time::timeout(REQUEST_TIMEOUT, renewed).await, Ok(Ok(true)))
    }

    /// Puts `snapshot` (bounded) under a lease, a new one unless `lease`.
    async fn write(&self, lease: Option<i64>, snapshot: Snapshot) -> Result<i64, etcd_client::Error> {
        let id = match lease {
            Some(id) => id,
            None => self.lease.clone().grant(LEASE_TTL, None).await?.id(),
        };
        let (value, truncated) = bounded(snapshot, MAX_VALUE_BYTES);
        if truncated > 0 {
            self.metrics.reports_shared_truncated.inc_by(truncated);
        }
        self.kv.clone().put(self.key.as_str(), value, Some(PutOptions::new().with_lease(id))).await?;
        Ok(id)
    }
}

/// `snapshot` as JSON of at most `max` bytes: its worst edges first, those
/// that do not fit left out and counted in it (`truncated`).
pub fn bounded(mut snapshot: Snapshot, max: usize) -> (Vec<u8>, u64) {
    rank_edges(&mut snapshot);
    // Room for the rest of the object and the count of what is left out.
    let mut room = max.saturating_sub(
        serde_json::to_vec(&Snapshot { edges: Vec::new(), ..snapshot.clone() }).map_or(0, |v| v.len()) + 32,
    );
    let mut keep = 0;
    for edge in &snapshot.edges {
        let size = serde_json::to_vec(edge).map_or(usize::MAX, |v| v.len()) + 1;
        if size > room {
            break;
        }
        room -= size;
        keep += 1;
    }
    let truncated = (snapshot.edges.len() - keep) as u64;
    snapshot.edges.truncate(keep);
    snapshot.truncated = truncated;
    (serde_json::to_vec(&snapshot).unwrap_or_default(), truncated)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::window::{Bucket, Edge};
    use super::*;

    #[test]
    fn the_prefix_is_beside_the_tables() {
        assert_eq!(prefix_for("/isogroup/"), "/isogroup-propagation/");
        assert_eq!(prefix_for("/t/a/"), "/t/a-propagation/");
        assert!(!prefix_for("/isogroup/").starts_with("/isogroup/"));
    }

    #[test]
    fn a_bounded_copy_keeps_the_worst_edges_and_counts_the_rest() {
        let edges: Vec<Edge> = (0..5_000u32)
            .map(|i| Edge {
                workload: format!("workload-{i:05}"),
                namespace: "demo".into(),
                destination: format!("destination-{i:05}"),
                // every 10th edge drops everything: those rank first
                buckets: vec![Bucket {
                    minute: 1,
                    sample: 8,
                    counts: if i % 10 == 0 { [0, 0, 0, 9, 0] } else { [9, 0, 0, 0, 0] },
                }],
            })
            .collect();
        let snapshot = Snapshot { edges, overflow: vec![(1, 3)], truncated: 0 };
        let whole = serde_json::to_vec(&snapshot).unwrap().len();
        let max = whole / 4;
        let (value, truncated) = bounded(snapshot, max);
        assert!(value.len() <= max, "{} > {max}", value.len());
        let back: Snapshot = serde_json::from_slice(&value).unwrap();
        assert!(truncated > 3_000, "{truncated}");
        assert_eq!(back.truncated, truncated);
        assert_eq!(back.edges.len() as u64 + truncated, 5_000);
        assert_eq!(back.overflow, vec![(1, 3)]);
        assert!(back.edges.iter().take(500).all(|e| e.buckets[0].counts[3] == 9), "the 500 dropping edges come first");
        // a copy that fits is whole
        let (_, none) = bounded(back.clone(), MAX_VALUE_BYTES);
        assert_eq!(none, 0);
    }
}
