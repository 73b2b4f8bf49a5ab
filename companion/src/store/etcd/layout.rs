//! The key layout under the prefix (default `/isogroup/`), and reading a set
//! of keys back into a table. Pure: the etcd client lives elsewhere.
//!
//! ```text
//! meta/epoch                    the store's epoch, put once with its first write
//! meta/rev                      {"generation": "<g>"}; its mod_revision is the version
//! gen/<g>/base_group            the base group's name (only when the table names one)
//! gen/<g>/groups/<group>        {"fallback": [...], "mode": "strict"}
//! gen/<g>/services/<service>    {"hosts": [...], "clusters": {...}}
//! gen/<g>/sources               [{"cidr": "192.0.2.7/32", "group": "…", "expires_at": …}, …]
//! gen/<g>/rules                 [{"header": "x-user", "values": [...], "group": "…"}, …]
//! ```
//! `sources` and `rules` are absent while empty. Each is one key: a binding
//! or the rule list changes one small value, and the rules are always
//! written whole.
//! Only the generation `meta/rev` names is served. A write that fits one
//! transaction edits that generation in place; a bigger one writes a new
//! generation, then switches `meta/rev` to it (deleting the old one) in one
//! small transaction, so readers never see part of a write.

use std::collections::BTreeMap;

use isogroup_core::edge::RawRule;
use isogroup_core::epoch::Epoch;
use isogroup_core::{RawGroup, RawService, RawSource, RawTable};
use serde::{Deserialize, Serialize};

pub const EPOCH: &str = "meta/epoch";
pub const REV: &str = "meta/rev";

/// `meta/rev`'s value.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rev {
    generation: String,
}

pub fn rev_value(generation: &str) -> Vec<u8> {
    serde_json::to_vec(&Rev { generation: generation.to_owned() }).unwrap_or_default()
}

/// The key prefix of one generation.
pub fn generation_prefix(generation: &str) -> String {
    format!("gen/{generation}/")
}

/// One key of the mirror: its value and the revision that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// What the keys under the prefix say.
// One value per store, rarely moved: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Never written (or wiped): served as `{"version": 0}`, no epoch.
    Empty,
    State(State),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub epoch: String,
    /// `meta/rev`'s mod_revision.
    pub version: u64,
    pub generation: String,
    pub raw: RawTable,
}

/// Generations with keys present other than `current` (abandoned or in
/// flight), for a later switch to delete.
pub fn other_generations<'a>(keys: impl Iterator<Item = &'a String>, current: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = keys
        .filter_map(|k| k.strip_prefix("gen/")?.split_once('/').map(|(g, _)| g.to_owned()))
        .filter(|g| Some(g.as_str()) != current)
        .collect();
    out.dedup();
    out
}

/// Reads the keys (relative to the prefix) into a state, or lists every key
/// that cannot be read, each named with `prefix` in front.
pub fn read(entries: &BTreeMap<String, Entry>, prefix: &str) -> Result<Stored, Vec<String>> {
    let mut errors = Vec::new();
    let mut bad = |key: &str, why: String| errors.push(format!("{prefix}{key}: {why}"));
    // Every key must be one the layout knows, wherever it is.
    for key in entries.keys() {
        let known = key == EPOCH
            || key == REV
            || key.strip_prefix("gen/").and_then(|rest| rest.split_once('/')).is_some_and(|(g, rest)| {
                valid_generation(g)
                    && (rest == "base_group"
                        || rest == "sources"
                        || rest == "rules"
                        || rest.strip_prefix("groups/").is_some_and(|n| !n.is_empty() && !n.contains('/'))
                        || rest.strip_prefix("services/").is_some_and(|n| !n.is_empty() && !n.contains('/')))
            });
        if !known {
            bad(key, "not a key of the isogroup layout".into());
        }
    }
    let epoch = entries.get(EPOCH);
    let Some(rev) = entries.get(REV) else {
        if epoch.is_some() {
            bad(REV, "missing while meta/epoch is present".into());
        }
        return if errors.is_empty() { Ok(Stored::Empty) } else { Err(errors) };
    };
    let epoch = match epoch.map(|e| std::str::from_utf8(&e.value).ok().filter(|s| Epoch::parse(s).is_some())) {
        None => {
            bad(EPOCH, "missing while meta/rev is present".into());
            None
        }
        Some(None) => {
            bad(EPOCH, "not an epoch (\"<unix-ms>-<random>\")".into());
            None
        }
        Some(Some(e)) => Some(e.to_owned()),
    };
    let generation = match serde_json::from_slice::<Rev>(&rev.value) {
        Ok(r) if valid_generation(&r.generation) => Some(r.generation),
        Ok(r) => {
            bad(REV, format!("generation {:?} is not letters and digits", r.generation));
            None
        }
        Err(e) => {
            bad(REV, format!("expected {{\"generation\": \"…\"}}: {e}"));
            None
        }
    };
    let mut raw = RawTable::default();
    if let Some(generation) = &generation {
        let own = generation_prefix(generation);
        for (key, entry) in entries.range(own.clone()..).take_while(|(k, _)| k.starts_with(&own)) {
            let rest = &key[own.len()..];
            if rest == "base_group" {
                match std::str::from_utf8(&entry.value) {
                    Ok(name) => raw.base_group = Some(name.to_owned()),
                    Err(_) => bad(key, "not UTF-8".into()),
                }
            } else if rest == "sources" {
                match serde_json::from_slice::<Vec<RawSource>>(&entry.value) {
                    Ok(list) => raw.sources = list,
                    Err(e) => bad(key, format!("not a list of source bindings: {e}")),
                }
            } else if rest == "rules" {
                match serde_json::from_slice::<Vec<RawRule>>(&entry.value) {
                    Ok(list) => raw.rules = list,
                    Err(e) => bad(key, format!("not a list of rules: {e}")),
                }
            } else if let Some(name) = rest.strip_prefix("groups/") {
                match serde_json::from_slice::<RawGroup>(&entry.value) {
                    Ok(g) => {
                        raw.groups.insert(name.to_owned(), g);
                    }
                    Err(e) => bad(key, format!("not a group: {e}")),
                }
            } else if let Some(name) = rest.strip_prefix("services/") {
                match serde_json::from_slice::<RawService>(&entry.value) {
                    Ok(s) => {
                        raw.services.insert(name.to_owned(), s);
                    }
                    Err(e) => bad(key, format!("not a service: {e}")),
                }
            }
        }
    }
    match (epoch, generation, u64::try_from(rev.mod_revision)) {
        (Some(epoch), Some(generation), Ok(version)) if errors.is_empty() => {
            Ok(Stored::State(State { epoch, version, generation, raw }))
        }
        _ => Err(errors),
    }
}

/// The keys (relative to the prefix) and values that hold `raw` in
/// `generation`.
pub fn entries_of(raw: &RawTable, generation: &str) -> BTreeMap<String, Vec<u8>> {
    let own = generation_prefix(generation);
    let mut out = BTreeMap::new();
    if let Some(base) = &raw.base_group {
        out.insert(format!("{own}base_group"), base.as_bytes().to_vec());
    }
    for (name, group) in &raw.groups {
        out.insert(format!("{own}groups/{name}"), serde_json::to_vec(group).unwrap_or_default());
    }
    for (name, service) in &raw.services {
        out.insert(format!("{own}services/{name}"), serde_json::to_vec(service).unwrap_or_default());
    }
    if !raw.sources.is_empty() {
        out.insert(format!("{own}sources"), serde_json::to_vec(&raw.sources).unwrap_or_default());
    }
    if !raw.rules.is_empty() {
        out.insert(format!("{own}rules"), serde_json::to_vec(&raw.rules).unwrap_or_default());
    }
    out
}

/// The table field a key (relative to the prefix) holds, as a `400` names
/// it: `services.<name>`, `groups.<name>`, `sources`, `rules`, `base_group`.
pub fn field_of(key: &str) -> String {
    let rest = key.strip_prefix("gen/").and_then(|r| r.split_once('/')).map_or(key, |(_, rest)| rest);
    match rest.split_once('/') {
        Some((kind, name)) => format!("{kind}.{name}"),
        None => rest.to_owned(),
    }
}

/// The first value whose put (key with `prefix_len` bytes of prefix, and
/// value) is over `limit` bytes: `(field, size)`.
pub fn oversized(entries: &BTreeMap<String, Vec<u8>>, prefix_len: usize, limit: usize) -> Option<(String, usize)> {
    entries
        .iter()
        .map(|(k, v)| (k, prefix_len + k.len() + v.len()))
        .find(|(_, size)| *size > limit)
        .map(|(k, size)| (field_of(k), size))
}

/// A generation id: 1 to 32 ASCII letters or digits.
fn valid_generation(g: &str) -> bool {
    !g.is_empty() && g.len() <= 32 && g.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use isogroup_core::RawTable;

    use super::{entries_of, field_of, other_generations, oversized, read, rev_value, Entry, Stored, EPOCH, REV};

    fn entries(pairs: &[(&str, &str, i64)]) -> BTreeMap<String, Entry> {
        pairs
            .iter()
            .map(|(k, v, r)| (k.to_string(), Entry { value: v.as_bytes().to_vec(), mod_revision: *r }))
            .collect()
    }

    const SVC: &str = r#"{"hosts":["r"],"clusters":{"base":"r0"}}"#;

    #[test]
    fn a_table_round_trips_through_its_keys() {
        let raw: RawTable = serde_json::from_str(
            r#"{"base_group": "main", "groups": {"x": {"fallback": ["main"], "description": "<b>x</b>", "owner": "o"}},
                "services": {"r.ns": {"hosts": ["r"], "clusters": {"main": "r0", "x": "rx"}}},
                "sources": [{"cidr": "10.0.0.7/32", "group": "x", "expires_at": 99}, {"cidr": "10.1.0.0/16", "group": "x"}],
                "rules": [{"header": "x-user", "values": ["a"], "group": "x"}, {"cookie": "lane", "group_from_value": true}]}"#,
        )
        .unwrap();
        let mut map: BTreeMap<String, Entry> =
            entries_of(&raw, "g1").into_iter().map(|(k, value)| (k, Entry { value, mod_revision: 3 })).collect();
        map.insert(REV.into(), Entry { value: rev_value("g1"), mod_revision: 9 });
        map.insert(EPOCH.into(), Entry { value: b"5-ab".to_vec(), mod_revision: 2 });
        // another generation's keys (a write in flight) are not served
        map.insert("gen/g2/services/q".into(), Entry { value: SVC.into(), mod_revision: 10 });
        let Ok(Stored::State(state)) = read(&map, "/p/") else { panic!("{:?}", read(&map, "/p/")) };
        assert_eq!((state.epoch.as_str(), state.version, state.generation.as_str()), ("5-ab", 9, "g1"));
        assert_eq!(state.raw, raw);
        assert_eq!(other_generations(map.keys(), Some("g1")), ["g2"]);
    }

    /// (key, value, mod_revision)
    type Key = (&'static str, &'static str, i64);

    #[test]
    fn reading_keys() {
        let rev = String::from_utf8(rev_value("g1")).unwrap();
        let rev: &'static str = Box::leak(rev.into_boxed_str());
        let ok = [(EPOCH, "5-ab", 2), (REV, rev, 4), ("gen/g1/services/r", SVC, 3)];
        // (extra or replaced keys, what reading says)
        let cases: Vec<(Vec<Key>, &str)> = vec![
            (vec![], "state"),
            (vec![("gen/g1/services/r", r#"{"hosts":["r"]}"#, 3)], "/p/gen/g1/services/r: not a service: missing field `clusters` at line 1 column 15"),
            (vec![("gen/g1/services/r", "garbage", 3)], "/p/gen/g1/services/r: not a service: expected value at line 1 column 1"),
            (vec![("gen/g1/groups/x", r#"{"mode":"loose"}"#, 3)], "/p/gen/g1/groups/x: not a group: unknown variant `loose`, expected `permissive` or `strict` at line 1 column 15"),
            (vec![("junk", "1", 3)], "/p/junk: not a key of the isogroup layout"),
            (vec![("gen/g1/other/x", "1", 3)], "/p/gen/g1/other/x: not a key of the isogroup layout"),
            (vec![("gen/g1/sources/x", "[]", 3)], "/p/gen/g1/sources/x: not a key of the isogroup layout"),
            (vec![("gen/g1/sources", r#"[{"cidr": "10.0.0.1/32"}]"#, 3)], "/p/gen/g1/sources: not a list of source bindings: missing field `group` at line 1 column 24"),
            (vec![("gen/g1/rules", r#"{"header": "x"}"#, 3)], "/p/gen/g1/rules: not a list of rules: invalid type: map, expected a sequence at line 1 column 0"),
            (vec![("gen/g-1/services/r", SVC, 3)], "/p/gen/g-1/services/r: not a key of the isogroup layout"),
            (vec![(EPOCH, "yesterday", 2)], "/p/meta/epoch: not an epoch (\"<unix-ms>-<random>\")"),
            (vec![(REV, "7", 4)], "/p/meta/rev: expected {\"generation\": \"…\"}: invalid type: integer `7`, expected struct Rev at line 1 column 1"),
        ];
        for (changes, want) in cases {
            let mut map = entries(&ok);
            map.extend(entries(&changes));
            let got = match read(&map, "/p/") {
                Ok(Stored::State(s)) if s.raw.services.contains_key("r") => "state".to_owned(),
                Ok(other) => format!("{other:?}"),
                Err(errors) => errors.join("; "),
            };
            assert_eq!(got, want, "{changes:?}");
        }
        // empty and half-empty stores
        assert_eq!(read(&BTreeMap::new(), "/p/"), Ok(Stored::Empty));
        assert_eq!(
            read(&entries(&[("gen/g9/services/r", SVC, 3)]), "/p/"),
            Ok(Stored::Empty),
            "a first write in flight"
        );
        assert_eq!(
            read(&entries(&[(EPOCH, "5-ab", 2)]), "/p/"),
            Err(vec!["/p/meta/rev: missing while meta/epoch is present".to_owned()])
        );
        assert_eq!(
            read(&entries(&[(REV, rev, 2)]), "/p/"),
            Err(vec!["/p/meta/epoch: missing while meta/rev is present".to_owned()])
        );
    }

    #[test]
    fn oversized_values_are_named_by_field() {
        for (key, field) in [
            ("gen/g1/services/r.ns", "services.r.ns"),
            ("gen/g1/groups/team-a", "groups.team-a"),
            ("gen/g1/sources", "sources"),
            ("gen/g1/rules", "rules"),
            ("gen/g1/base_group", "base_group"),
        ] {
            assert_eq!(field_of(key), field);
        }
        let rules = serde_json::from_str(r#"[{"header": "x-user", "values": ["a"], "group": "x"}]"#).unwrap();
        let raw = RawTable { rules, ..RawTable::default() };
        let entries = entries_of(&raw, "g1");
        let rules = entries["gen/g1/rules"].len();
        let at = "gen/g1/rules".len() + rules + 3;
        assert_eq!(oversized(&entries, 3, at), None, "at the limit");
        assert_eq!(oversized(&entries, 3, at - 1), Some(("rules".to_owned(), at)));
    }
}
