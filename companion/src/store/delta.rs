//! Deltas (SPEC "Delivery to many proxies"): when a version is published,
//! what changed since each of the last `KEEP` versions published, as the
//! JSON a poll with `delta=1` is answered with; kept only when smaller than
//! half the table. Computed once per version (never per poll), held in the
//! snapshot as one buffer each that every answer shares.
//!
//! The versions before are remembered by content digests (a 128-bit digest
//! of each service's and each other top-level field's JSON), not whole: the
//! companion keeps one table, not nine.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hasher;

use bytes::Bytes;
use isogroup_core::edge::RawRule;
use isogroup_core::table::NameMap;
use isogroup_core::{RawGroup, RawService, RawSource, RawTable};
use serde::Serialize;

use super::served::Snapshot;

/// How many versions before the current one a poll may hold and still get
/// a delta.
pub const KEEP: usize = 8;

/// The delta onto a snapshot from one published before it.
pub struct Delta {
    pub base_version: u64,
    pub base_epoch: Option<String>,
    pub json: Bytes,
}

type Digest = u128;

/// Two SipHash digests of what is written: 128 bits, so two different
/// values of a field never pass for the same (a wrong delta would be a
/// wrong table; the filter cannot tell).
struct DigestWriter(DefaultHasher, DefaultHasher);

impl std::io::Write for DigestWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes);
        self.1.write(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn digest<T: Serialize + ?Sized>(value: &T) -> Digest {
    let mut second = DefaultHasher::new();
    second.write_u8(0xa5);
    let mut w = DigestWriter(DefaultHasher::new(), second);
    // Writing to a hasher cannot fail; a value that cannot be serialised
    // was not served either.
    let _ = serde_json::to_writer(&mut w, value);
    (u128::from(w.0.finish()) << 64) | u128::from(w.1.finish())
}

/// A published table, by digests.
struct Summary {
    version: u64,
    epoch: Option<String>,
    services: HashMap<String, Digest>,
    /// `base_group`, `groups`, `sources`, `rules`.
    fields: [Digest; 4],
}

impl Summary {
    fn of(raw: &RawTable) -> Summary {
        Summary {
            version: raw.version,
            epoch: raw.epoch.clone(),
            services: raw.services.iter().map(|(name, s)| (name.clone(), digest(s))).collect(),
            fields: [digest(&raw.base_group), digest(&raw.groups), digest(&raw.sources), digest(&raw.rules)],
        }
    }
}

/// The last versions published (the current one last).
#[derive(Default)]
pub struct History {
    published: VecDeque<Summary>,
}

impl History {
    /// Remembers `snap` as published; its deltas from the versions before.
    pub fn publish(&mut self, snap: &Snapshot) -> Vec<Delta> {
        let summary = Summary::of(&snap.raw);
        // The same stamp again (a replica re-serving what it had) is no
        // new version: it replaces its entry.
        if self.published.back().is_some_and(|s| s.version == summary.version && s.epoch == summary.epoch) {
            self.published.pop_back();
        }
        while self.published.len() > KEEP {
            self.published.pop_front();
        }
        let deltas = self.published.iter().filter_map(|old| delta(old, &summary, snap)).collect();
        self.published.push_back(summary);
        deltas
    }
}

#[derive(Serialize)]
struct DeltaJson<'a> {
    base: Base<'a>,
    version: u64,
    epoch: Option<&'a str>,
    set: BTreeMap<&'a str, &'a RawService>,
    remove: Vec<&'a str>,
    replace: Replace<'a>,
}

#[derive(Serialize)]
struct Base<'a> {
    version: u64,
    epoch: Option<&'a str>,
}

/// Each field whole, or absent when unchanged (`base_group: null`: the new
/// table names none).
#[derive(Serialize)]
struct Replace<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    base_group: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    groups: Option<&'a NameMap<RawGroup>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sources: Option<&'a [RawSource]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rules: Option<&'a [RawRule]>,
}

/// The delta from `old` to `snap` (summarised as `new`), when smaller than
/// half the table.
fn delta(old: &Summary, new: &Summary, snap: &Snapshot) -> Option<Delta> {
    let raw = &snap.raw;
    let set = raw
        .services
        .iter()
        .filter(|(name, _)| old.services.get(name.as_str()) != new.services.get(name.as_str()))
        .map(|(name, s)| (name.as_str(), s))
        .collect();
    let mut remove: Vec<&str> =
        old.services.keys().filter(|name| !raw.services.contains_key(name.as_str())).map(String::as_str).collect();
    remove.sort_unstable();
    let changed = |i: usize| old.fields[i] != new.fields[i];
    let replace = Replace {
        base_group: changed(0).then_some(raw.base_group.as_deref()),
        groups: changed(1).then_some(&raw.groups),
        sources: changed(2).then_some(raw.sources.as_slice()),
        rules: changed(3).then_some(raw.rules.as_slice()),
    };
    let out = DeltaJson {
        base: Base { version: old.version, epoch: old.epoch.as_deref() },
        version: raw.version,
        epoch: raw.epoch.as_deref(),
        set,
        remove,
        replace,
    };
    let json = serde_json::to_vec(&out).ok()?;
    (json.len() * 2 < snap.json.len()).then(|| Delta {
        base_version: old.version,
        base_epoch: old.epoch.clone(),
        json: Bytes::from(json),
    })
}

#[cfg(test)]
mod tests {
    use isogroup_core::delta::{apply, read_onto, RawDelta};
    use isogroup_core::{Limits, RawTable};
    use serde_json::{json, Value};

    use super::{History, KEEP};
    use crate::store::served::Snapshot;

    const EPOCH: &str = "1700000000000-aa";

    fn raw(v: &Value) -> RawTable {
        RawTable::from_json(&serde_json::to_vec(v).unwrap(), &Limits::default()).unwrap()
    }

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A valid change: services set or removed, groups, base group and
    /// source bindings replaced.
    fn mutate(rng: &mut Rng, t: &mut Value) {
        for _ in 0..=rng.below(2) {
            let name = format!("s{}", rng.below(30));
            match rng.below(7) {
                0..=2 => {
                    let mut clusters = json!({"base": format!("{name}-{}", rng.below(5))});
                    if rng.below(2) == 0 {
                        clusters["g1"] = json!(format!("{name}-g1"));
                    }
                    t["services"][&name] = json!({"hosts": [&name], "clusters": clusters});
                }
                3 if t["services"].as_object().unwrap().len() > 1 => {
                    t["services"].as_object_mut().unwrap().remove(&name);
                }
                4 => t["groups"] = json!({"g1": {"fallback": ["g2"]}, "g2": {}}),
                5 => t["groups"] = json!({"g1": {}, "g2": {"mode": "strict", "owner": "team"}}),
                _ => match rng.below(3) {
                    0 => t["base_group"] = json!("base"),
                    1 => {
                        t.as_object_mut().unwrap().remove("base_group");
                    }
                    _ => t["sources"] = json!([{"cidr": format!("10.{}.0.0/16", rng.below(3)), "group": "g1"}]),
                },
            }
        }
    }

    /// The companion's deltas, applied with core's code (the native and
    /// wasm pollers' `read_onto`, and `apply`) onto the version each names
    /// as its base, give exactly the table published.
    #[test]
    fn every_delta_published_makes_exactly_the_table_published() {
        let limits = Limits::default();
        let mut checked = 0;
        for seed in 1..=12u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut history = History::default();
            let mut services = serde_json::Map::new();
            for i in 0..30 {
                services.insert(format!("s{i}"), json!({"hosts": [format!("s{i}")], "clusters": {"base": "b"}}));
            }
            let mut table = json!({"groups": {"g1": {}, "g2": {}}, "services": services});
            // (version, JSON served) of every version published.
            let mut published: Vec<(u64, Vec<u8>)> = Vec::new();
            for version in 1..=40u64 {
                mutate(&mut rng, &mut table);
                let snap = Snapshot::build(raw(&table), Some(EPOCH.into()), version, "base", &limits).unwrap();
                let deltas = history.publish(&snap);
                assert!(deltas.len() <= KEEP);
                for delta in &deltas {
                    let base = published.iter().find(|(v, _)| *v == delta.base_version).unwrap();
                    assert!(version - base.0 <= KEEP as u64, "only from the last {KEEP}");
                    assert_eq!(delta.base_epoch.as_deref(), Some(EPOCH));
                    assert!(delta.json.len() * 2 < snap.json.len(), "smaller than half the table");
                    let parsed = RawDelta::from_json(&delta.json, &limits).unwrap();
                    let held = RawTable::from_companion_json(&base.1, &limits).unwrap().0;
                    let (read, _) = read_onto(Some(held.clone()), &delta.json, &limits).unwrap();
                    let (applied, _) = apply(held, parsed.delta, "base", &limits).unwrap();
                    assert_eq!(applied, snap.raw, "seed {seed} v{version} from v{}", base.0);
                    assert_eq!(read, snap.raw);
                    checked += 1;
                }
                published.push((version, snap.json.to_vec()));
            }
        }
        assert!(checked > 1000, "{checked} deltas checked");
    }

    #[test]
    fn no_delta_when_it_would_not_be_smaller_than_half_the_table() {
        let mut history = History::default();
        let limits = Limits::default();
        let one = json!({"services": {"a": {"hosts": ["a"], "clusters": {"base": "a"}}}});
        let two = json!({"services": {"a": {"hosts": ["a"], "clusters": {"base": "b"}}}});
        history.publish(&Snapshot::build(raw(&one), Some(EPOCH.into()), 1, "base", &limits).unwrap());
        assert!(history
            .publish(&Snapshot::build(raw(&two), Some(EPOCH.into()), 2, "base", &limits).unwrap())
            .is_empty());
    }
}
