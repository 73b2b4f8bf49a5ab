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
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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

/// The digests of a table's fields other than its services: `base_group`,
/// `groups`, `sources`, `rules`.
fn fields_of(raw: &RawTable) -> [Digest; 4] {
    [digest(&raw.base_group), digest(&raw.groups), digest(&raw.sources), digest(&raw.rules)]
}

/// A published version: its stamp, its other fields by digest, and the
/// services it changed from the version published before it.
struct Summary {
    version: u64,
    epoch: Option<String>,
    fields: [Digest; 4],
    /// Each service this version set or removed, with its digest in the
    /// version before (`None`: it had no such service).
    changed: HashMap<String, Option<Digest>>,
}

/// The last versions published (the current one last), and every
/// service's digest in the current one: a version's deltas are found from
/// the services changed since each base, so publishing costs in proportion
/// to the change, not to the table (10k services at scale, 8 bases).
#[derive(Default)]
pub struct History {
    published: VecDeque<Summary>,
    services: HashMap<String, Digest>,
}

impl History {
    /// Remembers `snap` as published; its deltas from the versions before.
    /// `changed`: the services (at least) in which it may differ from the
    /// version published before it (`None`: not known, all are compared).
    pub fn publish(&mut self, snap: &Snapshot, changed: Option<&BTreeSet<String>>) -> Vec<Delta> {
        let raw = &snap.raw;
        // The same stamp again (a replica re-serving what it had) is no
        // new version: it replaces its entry, and what that entry changed
        // is undone first.
        let mut changed = changed;
        if self.published.back().is_some_and(|s| s.version == raw.version && s.epoch == raw.epoch) {
            // (`changed` names what differs from the entry undone: all
            // are compared instead.)
            changed = None;
            if let Some(last) = self.published.pop_back() {
                for (name, before) in last.changed {
                    match before {
                        Some(d) => self.services.insert(name, d),
                        None => self.services.remove(&name),
                    };
                }
            }
        }
        while self.published.len() > KEEP {
            self.published.pop_front();
        }
        let changed = match changed.and_then(|names| self.changes_among(raw, names)) {
            Some(changed) => changed,
            None => self.changes_whole(raw),
        };
        let summary = Summary { version: raw.version, epoch: raw.epoch.clone(), fields: fields_of(raw), changed };
        let deltas = (0..self.published.len()).filter_map(|base| self.delta(base, &summary, snap)).collect();
        self.published.push_back(summary);
        deltas
    }

    /// The services among `names` whose digest changed, taken into
    /// `services`; `None` (and nothing taken) when `raw` also differs
    /// elsewhere (its service count says so).
    fn changes_among(&mut self, raw: &RawTable, names: &BTreeSet<String>) -> Option<HashMap<String, Option<Digest>>> {
        let mut changed = Vec::new();
        let mut count = self.services.len();
        for name in names {
            let now = raw.services.get(name).map(digest);
            let before = self.services.get(name).copied();
            if now != before {
                match (before, now) {
                    (None, Some(_)) => count += 1,
                    (Some(_), None) => count -= 1,
                    _ => {}
                }
                changed.push((name, before, now));
            }
        }
        if count != raw.services.len() {
            return None;
        }
        Some(
            changed
                .into_iter()
                .map(|(name, before, now)| {
                    match now {
                        Some(d) => self.services.insert(name.clone(), d),
                        None => self.services.remove(name),
                    };
                    (name.clone(), before)
                })
                .collect(),
        )
    }

    /// Every service compared: those whose digest changed, taken into
    /// `services`.
    fn changes_whole(&mut self, raw: &RawTable) -> HashMap<String, Option<Digest>> {
        let now: HashMap<String, Digest> = raw.services.iter().map(|(name, s)| (name.clone(), digest(s))).collect();
        let mut changed: HashMap<String, Option<Digest>> = now
            .iter()
            .filter_map(|(name, d)| {
                let before = self.services.get(name).copied();
                (before != Some(*d)).then(|| (name.clone(), before))
            })
            .collect();
        for (name, d) in &self.services {
            if !now.contains_key(name) {
                changed.insert(name.clone(), Some(*d));
            }
        }
        self.services = now;
        changed
    }

    /// The delta from the version at `base` in `published` to `snap`
    /// (summarised as `new`, its services taken in already), when smaller
    /// than half the table.
    fn delta(&self, base: usize, new: &Summary, snap: &Snapshot) -> Option<Delta> {
        let old = self.published.get(base)?;
        // Each service changed since the base, with its digest in the base:
        // what the first version after the base to change it had before.
        let mut before: HashMap<&str, Option<Digest>> = HashMap::new();
        for later in self.published.iter().skip(base + 1).chain(std::iter::once(new)) {
            for (name, d) in &later.changed {
                before.entry(name.as_str()).or_insert(*d);
            }
        }
        let raw = &snap.raw;
        let mut set = BTreeMap::new();
        let mut remove = Vec::new();
        for (name, was) in before {
            if self.services.get(name).copied() == was {
                continue;
            }
            match raw.services.get_key_value(name) {
                Some((key, s)) => {
                    set.insert(key.as_str(), s);
                }
                None => remove.push(name),
            }
        }
        remove.sort_unstable();
        Delta::of(old.version, old.epoch.as_deref(), &old.fields, &new.fields, set, remove, snap)
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

impl Delta {
    /// The delta onto `snap` from the version (`version`, `epoch`) whose
    /// other fields had the digests `old`, with the services `set` and
    /// `remove`, when smaller than half the table.
    fn of(
        version: u64,
        epoch: Option<&str>,
        old: &[Digest; 4],
        new: &[Digest; 4],
        set: BTreeMap<&str, &RawService>,
        remove: Vec<&str>,
        snap: &Snapshot,
    ) -> Option<Delta> {
        let raw = &snap.raw;
        let changed = |i: usize| old[i] != new[i];
        let replace = Replace {
            base_group: changed(0).then_some(raw.base_group.as_deref()),
            groups: changed(1).then_some(&raw.groups),
            sources: changed(2).then_some(raw.sources.as_slice()),
            rules: changed(3).then_some(raw.rules.as_slice()),
        };
        let out = DeltaJson {
            base: Base { version, epoch },
            version: raw.version,
            epoch: raw.epoch.as_deref(),
            set,
            remove,
            replace,
        };
        let json = serde_json::to_vec(&out).ok()?;
        (json.len() * 2 < snap.json.len()).then(|| Delta {
            base_version: version,
            base_epoch: epoch.map(str::to_owned),
            json: Bytes::from(json),
        })
    }
}

#[cfg(test)]
#[path = "delta_oracle_tests.rs"]
mod oracle_tests;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use isogroup_core::delta::{apply, read_onto, RawDelta};
    use isogroup_core::{Limits, RawTable};
    use serde_json::{json, Value};

    use super::{History, KEEP};
    use crate::store::served::Snapshot;

    const EPOCH: &str = "1700000000000-aa";

    pub(super) fn raw(v: &Value) -> RawTable {
        RawTable::from_json(&serde_json::to_vec(v).unwrap(), &Limits::default()).unwrap()
    }

    pub(super) struct Rng(pub(super) u64);

    impl Rng {
        pub(super) fn below(&mut self, n: u64) -> u64 {
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
            let mut last = RawTable::default();
            for version in 1..=40u64 {
                mutate(&mut rng, &mut table);
                let snap = Snapshot::build(raw(&table), Some(EPOCH.into()), version, "base", &limits).unwrap();
                // Odd seeds name the services changed, even ones do not.
                let changed: BTreeSet<String> = last
                    .services
                    .keys()
                    .chain(snap.raw.services.keys())
                    .filter(|k| last.services.get(*k) != snap.raw.services.get(*k))
                    .cloned()
                    .collect();
                let deltas = history.publish(&snap, (seed % 2 == 1).then_some(&changed));
                last = snap.raw.clone();
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
        history.publish(&Snapshot::build(raw(&one), Some(EPOCH.into()), 1, "base", &limits).unwrap(), None);
        assert!(history
            .publish(&Snapshot::build(raw(&two), Some(EPOCH.into()), 2, "base", &limits).unwrap(), None)
            .is_empty());
    }
}
