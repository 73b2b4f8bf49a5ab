//! Deltas found from the services each version changed equal those of the
//! whole comparison (every service's digest in each base against every
//! service's digest now), kept here as the oracle, over random sequences
//! of changes, with the changed names given (exactly, or with names that
//! did not change) or not.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use isogroup_core::{Limits, RawTable};
use serde_json::{json, Value};

use super::tests::{raw, Rng};
use super::{digest, fields_of, Delta, Digest, History, KEEP};
use crate::store::served::Snapshot;

/// A published table, by digests of every service.
struct WholeSummary {
    version: u64,
    epoch: Option<String>,
    services: HashMap<String, Digest>,
    fields: [Digest; 4],
}

/// The whole comparison: every service of every base against the table.
#[derive(Default)]
struct WholeHistory {
    published: VecDeque<WholeSummary>,
}

impl WholeHistory {
    fn publish(&mut self, snap: &Snapshot) -> Vec<Delta> {
        let raw = &snap.raw;
        let summary = WholeSummary {
            version: raw.version,
            epoch: raw.epoch.clone(),
            services: raw.services.iter().map(|(name, s)| (name.clone(), digest(s))).collect(),
            fields: fields_of(raw),
        };
        if self.published.back().is_some_and(|s| s.version == summary.version && s.epoch == summary.epoch) {
            self.published.pop_back();
        }
        while self.published.len() > KEEP {
            self.published.pop_front();
        }
        let deltas = self
            .published
            .iter()
            .filter_map(|old| {
                let set = raw
                    .services
                    .iter()
                    .filter(|(name, _)| old.services.get(name.as_str()) != summary.services.get(name.as_str()))
                    .map(|(name, s)| (name.as_str(), s))
                    .collect();
                let mut remove: Vec<&str> = old
                    .services
                    .keys()
                    .filter(|name| !raw.services.contains_key(name.as_str()))
                    .map(String::as_str)
                    .collect();
                remove.sort_unstable();
                Delta::of(old.version, old.epoch.as_deref(), &old.fields, &summary.fields, set, remove, snap)
            })
            .collect();
        self.published.push_back(summary);
        deltas
    }
}

/// Services set (to one of a few values, so that some come back to what a
/// base had), removed and added back, and now and then groups, base group
/// or sources replaced.
fn mutate(rng: &mut Rng, t: &mut Value) {
    // Mostly small changes; now and then most of the table (no delta).
    let n = if rng.below(10) == 0 { 40 } else { 1 + rng.below(3) };
    for _ in 0..n {
        let name = format!("s{}", rng.below(40));
        match rng.below(8) {
            0..=3 => {
                let mut clusters = json!({"base": format!("{name}-{}", rng.below(3))});
                if rng.below(2) == 0 {
                    clusters["g1"] = json!(format!("{name}-g1"));
                }
                t["services"][&name] = json!({"hosts": [&name], "clusters": clusters});
            }
            4 | 5 if t["services"].as_object().unwrap().len() > 1 => {
                t["services"].as_object_mut().unwrap().remove(&name);
            }
            6 => t["groups"] = json!({"g1": {"fallback": ["g2"]}, "g2": {}}),
            7 => t["groups"] = json!({"g1": {}, "g2": {}}),
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

/// The names whose service differs between `a` and `b`.
fn differing(a: &RawTable, b: &RawTable) -> BTreeSet<String> {
    a.services.keys().chain(b.services.keys()).filter(|k| a.services.get(*k) != b.services.get(*k)).cloned().collect()
}

type Seen = Vec<(u64, Option<String>, Vec<u8>)>;

fn seen(deltas: &[Delta]) -> Seen {
    deltas.iter().map(|d| (d.base_version, d.base_epoch.clone(), d.json.to_vec())).collect()
}

#[test]
fn deltas_from_the_changed_services_equal_the_whole_comparison() {
    let limits = Limits::default();
    let (mut compared, mut hinted, mut with_deltas) = (0, 0, 0);
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (mut history, mut whole) = (History::default(), WholeHistory::default());
        let services: serde_json::Map<String, Value> = (0..30)
            .map(|i| (format!("s{i}"), json!({"hosts": [format!("s{i}")], "clusters": {"base": "b"}})))
            .collect();
        let mut table = json!({"groups": {"g1": {}, "g2": {}}, "services": services});
        let mut epoch = "1700000000000-aa".to_owned();
        let mut version = 0u64;
        let mut last = RawTable::default();
        for step in 0..120 {
            mutate(&mut rng, &mut table);
            // Mostly a new version; now and then the same stamp again (a
            // replica re-serving what it had), or a new epoch.
            match rng.below(12) {
                0 if version > 0 => {}
                1 => {
                    epoch = format!("17000000{:05}-bb", step);
                    version += 1;
                }
                _ => version += 1,
            }
            let snap = Snapshot::build(raw(&table), Some(epoch.clone()), version.max(1), "base", &limits).unwrap();
            // The names given: none, exactly those changed, or more.
            let mut names = differing(&last, &snap.raw);
            for _ in 0..rng.below(4) {
                names.insert(format!("s{}", rng.below(45)));
            }
            let given = (rng.below(5) != 0).then_some(&names);
            hinted += usize::from(given.is_some());
            let got = seen(&history.publish(&snap, given));
            let want = seen(&whole.publish(&snap));
            assert_eq!(got, want, "seed {seed} step {step} (names given: {})", given.is_some());
            with_deltas += usize::from(!want.is_empty());
            compared += want.len();
            last = snap.raw.clone();
        }
    }
    assert!(compared > 10_000 && hinted > 3_000 && with_deltas > 3_000, "{compared} {hinted} {with_deltas}");
}

/// Names given that leave out a service added or removed are caught by the
/// count, and all are compared instead.
#[test]
fn names_given_that_miss_an_added_or_removed_service_fall_back_to_the_whole_comparison() {
    let limits = Limits::default();
    let (mut history, mut whole) = (History::default(), WholeHistory::default());
    let mut table = json!({"services": {}});
    for i in 0..30 {
        table["services"][format!("s{i}")] = json!({"hosts": [format!("s{i}")], "clusters": {"base": "b"}});
    }
    let epoch = Some("1700000000000-aa".to_owned());
    let first = Snapshot::build(raw(&table), epoch.clone(), 1, "base", &limits).unwrap();
    assert_eq!(seen(&history.publish(&first, None)), seen(&whole.publish(&first)));
    table["services"].as_object_mut().unwrap().remove("s3");
    table["services"]["s40"] = json!({"hosts": ["s40"], "clusters": {"base": "b"}});
    table["services"]["s41"] = json!({"hosts": ["s41"], "clusters": {"base": "b"}});
    let second = Snapshot::build(raw(&table), epoch, 2, "base", &limits).unwrap();
    let got = seen(&history.publish(&second, Some(&BTreeSet::from(["s3".to_owned()]))));
    let want = seen(&whole.publish(&second));
    assert_eq!(got, want);
    let delta: BTreeMap<String, Value> = serde_json::from_slice(&want[0].2).unwrap();
    assert_eq!(delta["set"].as_object().unwrap().len(), 2, "{delta:?}");
}
