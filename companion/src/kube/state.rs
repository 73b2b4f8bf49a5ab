//! The leader's settle record, `isogroup-state-<n>` ConfigMaps in the
//! companion's namespace (SPEC "Leadership is fenced", "Reconcile is
//! level-triggered"): per lane (`<service>/<group>`) when its conditions
//! began to hold (it is admitted `--settle-ms` later), and per lane leaving
//! (`<namespace>/<service>/<group>`) until when its subset is kept. A new
//! leader keeps both clocks: a lane it finds unrecorded starts now, a
//! leaving lane's subset outlives a failover for its grace.
//!
//! Sharded by a hash of each key so that no shard passes 512 KiB (the API
//! server refuses a ConfigMap over 1 MiB): 25,000 lanes take a few shards.
//! The shard count only grows (doubling), so a key stays where it is until
//! then. Each shard also holds the epoch of the leader that wrote it last:
//! a new leader first writes its epoch into every shard, each under the
//! resourceVersion it has just read (after taking the Lease), and trusts
//! the record only once that is done; from then on any write an older
//! leader still has in flight carries a stale precondition and is refused.
//! Every write goes through the `Fence` (time left until the renew
//! deadline; creates only within it); a write refused for a stale
//! precondition is read again and decided again, never forced.
//!
//! The single `isogroup-state` ConfigMap of earlier versions (key
//! `settled`) is read while no shard exists.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use tokio::sync::watch;

use crate::kube::istio::{INSTALLATION_LABEL, MANAGED_BY};
use crate::kube::leader::{Fence, Fenced};
use crate::kube::names::Names;
use crate::kube::snapshot::{Held, Since};

/// The most one shard may hold, in bytes of data (half the API server's
/// ConfigMap limit).
pub const SHARD_MAX: usize = 512 * 1024;
/// Data keys of a shard.
const EPOCH_KEY: &str = "epoch";
const SINCE_KEY: &str = "since";
const LEAVING_KEY: &str = "leaving";
/// The key of the single ConfigMap of earlier versions.
const LEGACY_KEY: &str = "settled";

/// What the record holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// `<service>/<group>` → when its conditions began to hold (ms).
    pub since: Since,
    /// `<namespace>/<service>/<group>` → until when its subset is kept (ms).
    pub leaving: BTreeMap<String, u64>,
}

impl Record {
    /// Joins another shard's part (a key in two shards, while the count
    /// grows: the later time, which admits later and keeps longer).
    fn join(&mut self, other: Record) {
        for (k, v) in other.since {
            let e = self.since.entry(k).or_insert(v);
            *e = (*e).max(v);
        }
        for (k, v) in other.leaving {
            let e = self.leaving.entry(k).or_insert(v);
            *e = (*e).max(v);
        }
    }
}

/// Held subsets as the record keys them.
pub fn leaving_of(held: &Held) -> BTreeMap<String, u64> {
    held.iter().map(|((ns, name, g), until)| (format!("{ns}/{name}/{g}"), *until)).collect()
}

/// The record's leaving lanes as `Held`.
pub fn held_of(leaving: &BTreeMap<String, u64>) -> Held {
    leaving
        .iter()
        .filter_map(|(k, until)| {
            let mut parts = k.splitn(3, '/');
            let (ns, name, g) = (parts.next()?, parts.next()?, parts.next()?);
            Some(((ns.to_owned(), name.to_owned(), g.to_owned()), *until))
        })
        .collect()
}

/// One ConfigMap of the record as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// `None`: the single ConfigMap of earlier versions.
    pub index: Option<usize>,
    pub epoch: Option<String>,
    pub record: Record,
}

/// A ConfigMap of `names`' record, parsed (`None`: not one, or unreadable,
/// which is logged).
pub fn parse(names: &Names, cm: &ConfigMap) -> Option<Shard> {
    let name = cm.metadata.name.as_deref()?;
    let data = cm.data.clone().unwrap_or_default();
    let json = |key: &str| -> Option<BTreeMap<String, u64>> {
        match serde_json::from_str(data.get(key)?) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, configmap = name, "kubernetes: data.{key} is not a JSON object of key → ms; ignored");
                None
            }
        }
    };
    if names.legacy_state.as_deref() == Some(name) {
        let since = json(LEGACY_KEY)?;
        return Some(Shard { index: None, epoch: None, record: Record { since, leaving: BTreeMap::new() } });
    }
    let index = names.shard_index(name)?;
    let record = Record { since: json(SINCE_KEY).unwrap_or_default(), leaving: json(LEAVING_KEY).unwrap_or_default() };
    Some(Shard { index: Some(index), epoch: data.get(EPOCH_KEY).cloned(), record })
}

/// The record the shards hold together (the older single ConfigMap only
/// while there is no shard).
pub fn joined<'a>(shards: impl IntoIterator<Item = &'a Shard>) -> Record {
    let (mut record, mut legacy, mut any) = (Record::default(), None, false);
    for s in shards {
        match s.index {
            Some(_) => {
                any = true;
                record.join(s.record.clone());
            }
            None => legacy = Some(s.record.clone()),
        }
    }
    match legacy {
        Some(old) if !any => old,
        _ => record,
    }
}

fn shard_of(key: &str, count: usize) -> usize {
    // FNV-1a 64: stable across versions and replicas.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % count.max(1) as u64) as usize
}

/// A shard's part of the record: its keys, borrowed, in order.
#[derive(Default, Clone)]
struct Part<'a> {
    since: Vec<(&'a str, u64)>,
    leaving: Vec<(&'a str, u64)>,
}

/// Sorted (key, ms) pairs, written as the JSON object a
/// `BTreeMap<String, u64>` of them is written as.
struct Sorted<'a, 'b>(&'b [(&'a str, u64)]);

impl serde::Serialize for Sorted<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A shard's data: the epoch, its part of the record.
fn encode(epoch: &str, part: &Part<'_>) -> BTreeMap<String, String> {
    let text = |m: &[(&str, u64)]| serde_json::to_string(&Sorted(m)).unwrap_or_default();
    BTreeMap::from([
        (EPOCH_KEY.to_owned(), epoch.to_owned()),
        (SINCE_KEY.to_owned(), text(&part.since)),
        (LEAVING_KEY.to_owned(), text(&part.leaving)),
    ])
}

fn data_size(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// The record in shards: at least `at_least` of them, doubling until each
/// one's data is within `SHARD_MAX`. Written about once a second at 50k
/// lanes: the keys are borrowed into the shards, not copied.
pub fn split(epoch: &str, record: &Record, at_least: usize) -> Vec<BTreeMap<String, String>> {
    let mut count = at_least.max(1);
    loop {
        let mut parts = vec![Part::default(); count];
        for (k, v) in &record.since {
            parts[shard_of(k, count)].since.push((k, *v));
        }
        for (k, v) in &record.leaving {
            parts[shard_of(k, count)].leaving.push((k, *v));
        }
        let shards: Vec<BTreeMap<String, String>> = parts.iter().map(|p| encode(epoch, p)).collect();
        // 4096 shards hold far more than any table's lanes (the table's own
        // size limit comes first): no doubling past that.
        if shards.iter().all(|d| data_size(d) <= SHARD_MAX) || count >= 4096 {
            return shards;
        }
        count *= 2;
    }
}

/// What the source wants recorded, under the epoch it leads with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub epoch: String,
    pub record: Record,
}

/// A shard as this writer last read or wrote it.
struct Seen {
    rv: String,
    data: BTreeMap<String, String>,
}

/// Where the record is kept.
pub struct Writer {
    pub api: Api<ConfigMap>,
    pub namespace: String,
    pub names: Names,
    pub installation: String,
    pub manager: String,
    pub fence: Fence,
}

impl Writer {
    fn config_map(&self, n: usize, rv: Option<String>, data: BTreeMap<String, String>) -> ConfigMap {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(self.names.shard(n));
        cm.metadata.namespace = Some(self.namespace.clone());
        cm.metadata.resource_version = rv;
        cm.metadata.labels = Some(BTreeMap::from([
            (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
            (INSTALLATION_LABEL.to_owned(), self.installation.clone()),
        ]));
        cm.data = Some(data);
        cm
    }

    fn params(&self) -> PostParams {
        PostParams { field_manager: Some(self.manager.clone()), ..PostParams::default() }
    }

    /// Reads every shard now (after this replica took the Lease).
    async fn read(&self) -> Result<(BTreeMap<usize, Seen>, Vec<Shard>), Fenced> {
        let list = self.fence.write(self.api.list(&ListParams::default())).await?;
        let (mut seen, mut shards) = (BTreeMap::new(), vec![]);
        for cm in list.items {
            let Some(shard) = parse(&self.names, &cm) else { continue };
            if let (Some(n), Some(rv)) = (shard.index, cm.metadata.resource_version.clone()) {
                seen.insert(n, Seen { rv, data: cm.data.clone().unwrap_or_default() });
            }
            shards.push(shard);
        }
        Ok((seen, shards))
    }

    /// Puts `epoch` into every shard, each under the resourceVersion just
    /// read; the record as it stands once they all carry it.
    async fn claim(&self, epoch: &str) -> Result<(BTreeMap<usize, Seen>, Record), Fenced> {
        loop {
            let (mut seen, shards) = self.read().await?;
            let mut stale = false;
            for (n, s) in &mut seen {
                if s.data.get(EPOCH_KEY).map(String::as_str) == Some(epoch) {
                    continue;
                }
                let mut data = s.data.clone();
                data.insert(EPOCH_KEY.to_owned(), epoch.to_owned());
                let cm = self.config_map(*n, Some(s.rv.clone()), data.clone());
                match self.fence.write(self.api.replace(&self.names.shard(*n), &self.params(), &cm)).await {
                    Ok(written) => {
                        *s = Seen { rv: written.metadata.resource_version.unwrap_or_default(), data };
                    }
                    // Written meanwhile (an older leader's last write):
                    // read everything again.
                    Err(e) if e.is_conflict() => {
                        stale = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !stale {
                let parsed: Vec<Shard> = shards;
                return Ok((seen, joined(&parsed)));
            }
        }
    }

    /// Brings every shard to `wanted`; `Ok(false)`: some shard was written
    /// meanwhile (read again, decide again).
    async fn write(&self, seen: &mut BTreeMap<usize, Seen>, wanted: &Wanted) -> Result<bool, Fenced> {
        let at_least = seen.keys().next_back().map_or(1, |n| n + 1);
        let shards = split(&wanted.epoch, &wanted.record, at_least);
        for (n, data) in shards.into_iter().enumerate() {
            if seen.get(&n).is_some_and(|s| s.data == data) {
                continue;
            }
            let written = match seen.get(&n) {
                Some(s) => {
                    let cm = self.config_map(n, Some(s.rv.clone()), data.clone());
                    self.fence.write(self.api.replace(&self.names.shard(n), &self.params(), &cm)).await
                }
                // A create carries no precondition: made only within the
                // renew deadline (the fence), and an existing one refuses it.
                None => {
                    self.fence.write(self.api.create(&self.params(), &self.config_map(n, None, data.clone()))).await
                }
            };
            match written {
                Ok(cm) => {
                    seen.insert(n, Seen { rv: cm.metadata.resource_version.unwrap_or_default(), data });
                }
                Err(e) if e.is_conflict() => {
                    tracing::info!(shard = %self.names.shard(n), "kubernetes: settle record changed meanwhile; reading it again");
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

/// Keeps the record as wanted while this replica leads: first its epoch
/// into every shard, then the record it reads handed to `trusted` (the
/// source merges it and wants from then on), then each `wanted` written.
pub async fn run(
    writer: Writer,
    mut wanted: watch::Receiver<Option<Arc<Wanted>>>,
    trusted: watch::Sender<Option<(String, Record)>>,
) {
    let mut claimed: Option<(String, BTreeMap<usize, Seen>)> = None;
    let retry = Duration::from_millis(200);
    loop {
        let mut wait = Duration::from_millis(250);
        match writer.fence.epoch() {
            None => {
                if claimed.take().is_some() {
                    trusted.send_replace(None);
                }
            }
            Some(epoch) if claimed.as_ref().is_none_or(|(e, _)| *e != epoch) => match writer.claim(&epoch).await {
                Ok((seen, record)) => {
                    tracing::info!(
                        epoch,
                        lanes = record.since.len(),
                        leaving = record.leaving.len(),
                        shards = seen.len(),
                        "kubernetes: settle record claimed under this epoch"
                    );
                    claimed = Some((epoch.clone(), seen));
                    trusted.send_replace(Some((epoch, record)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kubernetes: cannot claim the settle record (retrying)");
                    wait = retry;
                }
            },
            Some(epoch) => {
                let want = wanted.borrow_and_update().clone().filter(|w| w.epoch == epoch);
                if let (Some(want), Some((_, seen))) = (want, claimed.as_mut()) {
                    match writer.write(seen, &want).await {
                        Ok(true) => {}
                        Ok(false) => {
                            // Re-decided from a fresh read: re-claimed.
                            claimed = None;
                            wait = retry;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "kubernetes: cannot write the settle record (retrying)");
                            if matches!(e, Fenced::Timeout) {
                                // It may have landed: read it again.
                                claimed = None;
                            }
                            wanted.mark_changed();
                            wait = retry;
                        }
                    }
                }
            }
        }
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn twenty_five_thousand_lanes_fit_in_shards_under_the_object_limit() {
        let mut record = Record::default();
        for i in 0..25_000u64 {
            let lane = format!("reviews-{i:05}.bookinfo-team-{}/feature-{:04}", i % 50, i % 977);
            record.since.insert(lane, 1_765_000_000_000 + i);
        }
        for i in 0..2_000u64 {
            record.leaving.insert(format!("bookinfo-team-{}/reviews-{i:05}/old-{i}", i % 50), 1_765_000_100_000 + i);
        }
        let whole: usize = serde_json::to_string(&record.since).unwrap().len();
        assert!(whole > 1024 * 1024, "the test needs a record over the object limit: {whole} bytes");
        let shards = split("1765000000000-abcd", &record, 1);
        assert!(shards.len() >= 2, "{} shards", shards.len());
        let names = Names::new("isogroup-system", "isogroup-system");
        let mut read = vec![];
        for (n, data) in shards.iter().enumerate() {
            let size = data_size(data);
            assert!(size <= SHARD_MAX, "shard {n}: {size} bytes");
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta { name: Some(names.shard(n)), ..Default::default() },
                data: Some(data.clone()),
                ..Default::default()
            };
            read.push(parse(&names, &cm).unwrap());
        }
        assert_eq!(joined(&read), record, "read back whole");
        // each shard written as its part of the record, as a map of its own
        for (n, data) in shards.iter().enumerate() {
            let own: BTreeMap<&String, &u64> =
                record.since.iter().filter(|(k, _)| shard_of(k, shards.len()) == n).collect();
            assert_eq!(data[SINCE_KEY], serde_json::to_string(&own).unwrap(), "shard {n}");
        }
        // a key stays in its shard while the count stays
        let again = split("1765000000001-ef01", &record, shards.len());
        assert_eq!(again.len(), shards.len());
        assert_eq!(again[0][SINCE_KEY], shards[0][SINCE_KEY]);
    }

    #[test]
    fn the_single_record_of_earlier_versions_is_read_until_a_shard_exists() {
        let names = Names::new("isogroup-system", "isogroup-system");
        let cm = |name: &str, data: &[(&str, &str)]| ConfigMap {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: Some(data.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..Default::default()
        };
        let legacy = parse(&names, &cm("isogroup-state", &[("settled", r#"{"reviews.bookinfo/f1": 5}"#)])).unwrap();
        assert_eq!(joined([&legacy]).since["reviews.bookinfo/f1"], 5);
        let shard =
            parse(&names, &cm("isogroup-state-0", &[("epoch", "e"), ("since", r#"{"reviews.bookinfo/f2": 7}"#)]))
                .unwrap();
        let both = joined([&legacy, &shard]);
        assert_eq!(both.since.keys().collect::<Vec<_>>(), ["reviews.bookinfo/f2"]);
        // another installation's record is not this one's
        let other = Names::new("team-a", "isogroup-system");
        assert_eq!(parse(&other, &cm("isogroup-state", &[("settled", "{}")])), None);
        assert_eq!(parse(&other, &cm("isogroup-state-0", &[("since", "{}")])), None);
    }

    #[test]
    fn held_subsets_round_trip_through_the_record() {
        let held: Held = [(("bookinfo".into(), "reviews".into(), "f1".into()), 9_000)].into();
        assert_eq!(held_of(&leaving_of(&held)), held);
    }
}
