use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{apply, catch_up, push_delta, read_onto, RawDelta};
use crate::{Limits, RawTable, Table};

/// A delta as a companion makes one: every service that differs is set
/// whole, every one gone is removed, every other top-level field that
/// differs is replaced whole (`null` for a base group no longer named).
fn diff(old: &Value, new: &Value) -> Value {
    let empty = Map::new();
    let services = |t: &Value| t.get("services").and_then(Value::as_object).cloned().unwrap_or_default();
    let (old_s, new_s) = (services(old), services(new));
    let set: Map<String, Value> =
        new_s.iter().filter(|(k, v)| old_s.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let remove: Vec<&String> = old_s.keys().filter(|k| !new_s.contains_key(*k)).collect();
    let mut replace = Map::new();
    for field in ["base_group", "groups", "sources", "rules"] {
        let (o, n) = (old.get(field), new.get(field));
        if o != n {
            let whole = match (field, n) {
                (_, Some(v)) => v.clone(),
                ("base_group", None) => Value::Null,
                ("groups", None) => Value::Object(empty.clone()),
                (_, None) => json!([]),
            };
            replace.insert(field.into(), whole);
        }
    }
    json!({
        "base": {"version": old["version"], "epoch": old.get("epoch").cloned().unwrap_or(Value::Null)},
        "version": new["version"],
        "epoch": new.get("epoch").cloned().unwrap_or(Value::Null),
        "set": set, "remove": remove, "replace": replace,
    })
}

fn raw(v: &Value) -> RawTable {
    RawTable::from_companion_json(&serde_json::to_vec(v).unwrap(), &Limits::default()).unwrap().0
}

/// What the delta path ends with: the applied table (checked against the
/// poller's `read_onto`, which must make the same), or why it was refused.
fn delta_path(old: &Value, delta: &Value) -> Result<RawTable, String> {
    let limits = Limits::default();
    let bytes = serde_json::to_vec(delta).unwrap();
    let parsed = RawDelta::from_json(&bytes, &limits).map_err(|e| e.to_string())?;
    let read = read_onto(Some(raw(old)), &bytes, &limits);
    let (applied, table) = apply(raw(old), parsed.delta, "base", &limits).map_err(|e| e.to_string())?;
    assert_eq!(read.unwrap().0, applied, "read_onto makes the applied table");
    assert_eq!(table.version(), applied.version);
    Ok(applied)
}

/// The stamp of `table_v(version)`.
fn held(version: u64) -> crate::epoch::Held {
    crate::epoch::Held { version, epoch: Some("1700000000000-aa".into()) }
}

fn table_v(version: u64) -> Value {
    json!({
        "version": version, "epoch": "1700000000000-aa",
        "groups": {"f1": {"fallback": ["team"]}, "team": {}},
        "services": {
            "a": {"hosts": ["a"], "clusters": {"base": "a-base", "f1": "a-f1"}},
            "b": {"hosts": ["b"], "clusters": {"base": "b-base"}},
        }
    })
}

#[test]
fn a_delta_applies_onto_its_base_and_reads_as_the_poller_reads_it() {
    let old = table_v(1);
    let mut new = table_v(2);
    new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base"}});
    new["services"].as_object_mut().unwrap().remove("b");
    new["services"]["a"]["clusters"]["team"] = json!("a-team");
    new["groups"]["f2"] = json!({"mode": "strict"});
    let delta = diff(&old, &new);
    assert_eq!(delta["remove"], json!(["b"]));
    assert_eq!(delta["set"].as_object().unwrap().keys().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(delta_path(&old, &delta).unwrap(), raw(&new));
}

#[test]
fn a_delta_is_refused_naming_what_is_wrong() {
    let old = table_v(1);
    let mut new = table_v(2);
    new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base"}});
    let good = diff(&old, &new);
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut d = good.clone();
                d["sett"] = json!({});
                d
            },
            "sett: unknown field",
        ),
        // The top level is read as a table's: its other fields, and keys
        // such as the empty one, are not a delta's.
        (
            {
                let mut d = good.clone();
                d["groups"] = json!({});
                d
            },
            "groups: unknown field",
        ),
        (
            {
                let mut d = good.clone();
                d[""] = json!("feature-1");
                d
            },
            "\"\": unknown field",
        ),
        (
            {
                let mut d = good.clone();
                d["set"]["c"]["hosts"] = json!(["c"]);
                d.as_object_mut().unwrap().remove("base");
                d
            },
            "missing field `base`",
        ),
        (
            {
                let mut d = good.clone();
                d["base"]["revision"] = json!(3);
                d
            },
            "base.revision: unknown field",
        ),
        (
            {
                let mut d = good.clone();
                d["base"]["version"] = json!(7);
                d
            },
            "base: not the table held",
        ),
        (
            {
                let mut d = good.clone();
                d["base"]["epoch"] = json!("1700000000001-bb");
                d
            },
            "base: not the table held",
        ),
        (
            {
                let mut d = good.clone();
                d["base"]["epoch"] = Value::Null;
                d
            },
            "base: not the table held",
        ),
        (
            {
                let mut d = good.clone();
                d.as_object_mut().unwrap().remove("base");
                d
            },
            "missing field `base`",
        ),
        (
            {
                let mut d = good.clone();
                d.as_object_mut().unwrap().remove("version");
                d
            },
            "missing field `version`",
        ),
        (
            {
                let mut d = good.clone();
                d["version"] = json!(1);
                d
            },
            "version: not newer than the delta's base",
        ),
        (
            {
                let mut d = good.clone();
                d["remove"] = json!(["zz"]);
                d
            },
            "remove: names a service the base does not have",
        ),
        (
            {
                let mut d = good.clone();
                d["remove"] = json!(["c"]);
                d
            },
            "remove: names a service the base does not have, or one in `set`",
        ),
        // The base has both: out of order, or given twice, is refused too.
        (
            {
                let mut d = good.clone();
                d["remove"] = json!(["b", "a"]);
                d
            },
            "remove: names a service the base does not have, or one in `set`, or out of order",
        ),
        (
            {
                let mut d = good.clone();
                d["remove"] = json!(["a", "a"]);
                d
            },
            "remove: names a service the base does not have, or one in `set`, or out of order",
        ),
        (
            {
                let mut d = good.clone();
                d["replace"]["services"] = json!({});
                d
            },
            "replace: version, epoch and services are not replaced whole",
        ),
        // Results that are not valid tables, named as a whole table's problem is.
        (
            {
                let mut d = good.clone();
                d["set"]["c"]["clusters"] = json!({"f1": "c-f1"});
                d
            },
            "services.c.clusters: no cluster for base group \"base\"",
        ),
        (
            {
                let mut d = good.clone();
                d["set"]["c"]["hosts"] = json!(["a"]);
                d
            },
            "host \"a\"",
        ),
        (
            {
                let mut d = good.clone();
                d["replace"]["groups"] = json!({"f1": {"fallback": ["f1"]}});
                d
            },
            "groups.f1.fallback",
        ),
        (
            {
                let mut d = good.clone();
                d["replace"]["base_group"] = json!("Base");
                d
            },
            "base_group",
        ),
    ];
    for (delta, want) in cases {
        let got = delta_path(&old, &delta).expect_err(want);
        assert!(got.contains(want), "{got:?} does not say {want:?}");
    }
}

#[test]
fn a_key_given_twice_at_the_top_level_is_refused() {
    let bytes = br#"{"base": {"version": 1}, "version": 2, "version": 3, "set": {}}"#;
    let err = RawDelta::from_json(bytes, &Limits::default()).unwrap_err().to_string();
    assert!(err.starts_with("(document): duplicate field `version`"), "{err}");
}

#[test]
fn fields_a_newer_companion_adds_inside_set_and_replace_are_skipped_and_named() {
    let old = table_v(1);
    let delta = json!({
        "base": {"version": 1, "epoch": "1700000000000-aa"}, "version": 2, "epoch": "1700000000000-aa",
        "set": {"c": {"hosts": ["c"], "clusters": {"base": "c-base"}, "weight": 3}},
        "remove": [], "replace": {"labels": {"x": 1}},
    });
    let bytes = serde_json::to_vec(&delta).unwrap();
    let parsed = RawDelta::from_json(&bytes, &Limits::default()).unwrap();
    // In the order read (`replace` sorts before `set`).
    assert_eq!(parsed.unknown, ["labels", "weight"]);
    let applied = delta_path(&old, &delta).unwrap();
    assert_eq!(applied.services.get("c").unwrap().clusters.get("base").unwrap(), "c-base");
}

#[test]
fn a_delta_over_the_byte_limit_is_refused() {
    let old = table_v(1);
    let mut new = table_v(2);
    new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c".repeat(400)}});
    let bytes = serde_json::to_vec(&diff(&old, &new)).unwrap();
    let tiny = Limits { max_table_bytes: bytes.len() - 1, ..Limits::default() };
    let err = RawDelta::from_json(&bytes, &tiny).unwrap_err().to_string();
    assert!(err.starts_with("delta: "), "{err}");
    assert!(RawDelta::from_json(&bytes, &Limits { max_table_bytes: bytes.len(), ..tiny }).is_ok());
}

/// A small deterministic generator: the same sequences on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const GROUPS: &[&str] = &["base", "f1", "f2", "team", "Bad"];

fn random_service(rng: &mut Rng, name: &str) -> Value {
    let mut clusters = BTreeMap::new();
    // Now and then no base cluster, or a bad group name: an invalid table.
    let valid = rng.below(8) != 0;
    if valid {
        clusters.insert("base".to_owned(), json!(format!("{name}-base")));
    }
    for _ in 0..rng.below(3) {
        let group = GROUPS[rng.below(if valid { 4 } else { 5 }) as usize];
        clusters.insert(group.to_owned(), json!(format!("{name}-{group}-{}", rng.below(4))));
    }
    let mut hosts = vec![json!(name)];
    if rng.below(10) == 0 {
        hosts.push(json!(format!("s{}", rng.below(12)))); // may be another service's host
    }
    json!({"hosts": hosts, "clusters": clusters})
}

/// One change to `table`, valid or not.
fn mutate(rng: &mut Rng, table: &mut Value) {
    for _ in 0..=rng.below(3) {
        let name = format!("s{}", rng.below(12));
        match rng.below(6) {
            0 | 1 => table["services"][&name] = random_service(rng, &name),
            2 => {
                table["services"].as_object_mut().unwrap().remove(&name);
            }
            3 => {
                let fallback = GROUPS[rng.below(4) as usize];
                table["groups"][GROUPS[1 + rng.below(3) as usize]] = json!({"fallback": [fallback]});
            }
            4 => table["groups"] = json!({}),
            _ => match rng.below(3) {
                0 => table["base_group"] = json!("base"),
                1 => {
                    table.as_object_mut().unwrap().remove("base_group");
                }
                _ => table["sources"] = json!([{"cidr": "10.0.0.0/8", "group": "f1"}]),
            },
        }
    }
}

/// The differential test: over random change sequences (valid and invalid
/// tables), and deltas spoilt now and then (an unknown key, a wrong base),
/// the delta path ends with exactly the table a whole fetch gives, or is
/// refused, and then the whole is fetched; a valid table is never refused
/// for a delta that is right.
#[test]
fn the_delta_path_ends_with_the_whole_table_or_falls_back() {
    let limits = Limits::default();
    let (mut applied, mut refused, mut spoilt_seen) = (0, 0, 0);
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut held = json!({"version": 1, "epoch": "1700000000000-aa", "services": {"s0": {"hosts": ["s0"], "clusters": {"base": "c"}}}});
        for step in 0..40u64 {
            let mut new = held.clone();
            mutate(&mut rng, &mut new);
            new["version"] = json!(step + 2);
            if rng.below(20) == 0 {
                new["epoch"] = json!(format!("17000000000{:02}-bb", step));
            }
            let whole = serde_json::to_vec(&new).unwrap();
            let whole_table = Table::from_companion_json(&whole, "base", &limits, true).map(|(t, _)| t);
            let mut delta = diff(&held, &new);
            let spoilt = match rng.below(12) {
                0 => {
                    delta["extra"] = json!(1);
                    true
                }
                1 => {
                    delta["base"]["version"] = json!(999);
                    true
                }
                2 => {
                    delta["base"]["epoch"] = json!("1600000000000-00");
                    true
                }
                _ => false,
            };
            match delta_path(&held, &delta) {
                Ok(table) => {
                    assert!(!spoilt, "seed {seed} step {step}: a spoilt delta applied");
                    assert_eq!(table, raw(&new), "seed {seed} step {step}");
                    assert!(whole_table.is_ok(), "seed {seed} step {step}: an invalid table applied");
                    applied += 1;
                }
                Err(why) => {
                    assert!(spoilt || whole_table.is_err(), "seed {seed} step {step}: refused a good delta: {why}");
                    spoilt_seen += usize::from(spoilt);
                    refused += 1;
                }
            }
            // A filter keeps the table in force when the new one is
            // invalid; the companion would never have served it.
            if whole_table.is_ok() {
                held = new;
            }
        }
    }
    assert!(applied > 500 && refused > 100 && spoilt_seen > 100, "{applied} applied, {refused} refused");
}

/// Whitespace anywhere (a pretty printed base and delta), empty `set` and
/// `replace`: the same table.
#[test]
fn pretty_printed_tables_and_deltas_apply_to_the_same_table() {
    let limits = Limits::default();
    let old = table_v(1);
    let mut changes = vec![table_v(2)];
    changes[0]["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base"}});
    let mut removed = table_v(3);
    removed["services"].as_object_mut().unwrap().remove("b");
    changes.push(removed);
    let mut regrouped = table_v(4);
    regrouped["groups"]["f2"] = json!({"mode": "strict"});
    changes.push(regrouped);
    for new in changes {
        let bytes = serde_json::to_vec_pretty(&diff(&old, &new)).unwrap();
        let old_read = RawTable::from_companion_json(&serde_json::to_vec_pretty(&old).unwrap(), &limits).unwrap().0;
        let (applied, _) = read_onto(Some(old_read), &bytes, &limits).unwrap();
        assert_eq!(applied, raw(&new));
    }
}

/// Deltas shared after a whole table: a table at any version among them
/// is brought to the last, one at none of their bases is left as it is,
/// and a delta that does not apply where its base's version is met is
/// refused.
#[test]
fn catch_up_brings_a_table_on_through_the_deltas_after_it() {
    let limits = Limits::default();
    let mut tables = vec![table_v(1)];
    let mut deltas = Vec::new();
    for version in 2..=6u64 {
        let mut new = tables.last().unwrap().clone();
        new["version"] = json!(version);
        new["services"][format!("s{version}")] = json!({"hosts": [format!("s{version}")], "clusters": {"base": "x"}});
        if version == 4 {
            new["services"].as_object_mut().unwrap().remove("b");
        }
        push_delta(&mut deltas, &held(version - 1), &serde_json::to_vec(&diff(tables.last().unwrap(), &new)).unwrap());
        tables.push(new);
    }
    assert_eq!(deltas.iter().filter(|&&b| b == 0).count(), 4, "a NUL between two");
    let last = raw(tables.last().unwrap());
    for table in &tables {
        assert_eq!(catch_up(raw(table), &deltas, &limits).unwrap().0, last, "from v{}", table["version"]);
    }
    let mut other = table_v(9);
    other["services"]["z"] = json!({"hosts": ["z"], "clusters": {"base": "z"}});
    assert_eq!(catch_up(raw(&other), &deltas, &limits).unwrap().0, raw(&other), "the base of none");
    assert_eq!(catch_up(raw(&tables[0]), b"", &limits).unwrap().0, raw(&tables[0]), "no deltas");
    // Version 3 of another epoch (a whole of a new epoch read after these
    // deltas): their base is not this table, so none applies and the table
    // comes out as it went in.
    let mut elsewhere = tables[2].clone();
    elsewhere["epoch"] = json!("1700000000009-zz");
    assert_eq!(catch_up(raw(&elsewhere), &deltas, &limits).unwrap().0, raw(&elsewhere), "another epoch");
    let mut garbage = Vec::new();
    push_delta(&mut garbage, &held(1), b"{");
    assert!(catch_up(raw(&tables[0]), &garbage, &limits).is_err());
}
