//! Random table changes and the deltas a companion makes of them, for the
//! differential tests of both filter builds' delta paths (the wasm
//! filter's `src/tests/delta.rs`, the native module's poller): one
//! generator, so both builds are tried on the same kind of sequences.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// A delta as a companion makes one (its `store/delta.rs`): every service
/// that differs set whole, every one gone removed (in name order), every
/// other top-level field that differs replaced whole.
pub fn diff(old: &Value, new: &Value) -> Value {
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
                ("groups", None) => json!({}),
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

/// A small deterministic generator: the same sequences on every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// One of `items` (the first when there are none to pick from).
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let n = u64::try_from(items.len()).unwrap_or(1).max(1);
        items.get(usize::try_from(self.below(n)).unwrap_or(0)).copied().unwrap_or_default()
    }
}

/// The groups the changes use; the last is not a valid group name.
pub const GROUPS: &[&str] = &["base", "feature-1", "feature-2", "team-s", "Bad"];

/// The table the sequences start from (version 1, epoch `1000-aa`).
pub fn first_table() -> Value {
    json!({
        "version": 1, "epoch": "1000-aa",
        "groups": {"feature-1": {}, "feature-2": {"fallback": ["feature-1"]}, "team-s": {"mode": "strict"}},
        "services": {"s0": {"hosts": ["s0"], "clusters": {"base": "s0-base"}}},
    })
}

pub fn random_service(rng: &mut Rng, name: &str) -> Value {
    let mut clusters = BTreeMap::new();
    // Now and then no base cluster, or a bad group name: an invalid table.
    let valid = rng.below(8) != 0;
    if valid {
        clusters.insert("base".to_owned(), json!(format!("{name}-base")));
    }
    let groups = if valid { GROUPS.get(..4).unwrap_or(GROUPS) } else { GROUPS };
    for _ in 0..rng.below(3) {
        let group = rng.pick(groups);
        clusters.insert(group.to_owned(), json!(format!("{name}-{group}-{}", rng.below(4))));
    }
    let mut hosts = vec![json!(name)];
    if rng.below(10) == 0 {
        hosts.push(json!(format!("s{}", rng.below(12)))); // may be another service's host
    }
    json!({"hosts": hosts, "clusters": clusters})
}

/// One change, valid or not: mostly one service, now and then groups,
/// the base group or the source bindings.
pub fn mutate(rng: &mut Rng, table: &mut Value) {
    let name = format!("s{}", rng.below(12));
    match rng.below(8) {
        0..=3 => table["services"][&name] = random_service(rng, &name),
        4 => {
            if let Some(services) = table["services"].as_object_mut() {
                services.remove(&name);
            }
        }
        5 => {
            let fallback = rng.pick(GROUPS.get(..4).unwrap_or(GROUPS));
            let group = rng.pick(GROUPS.get(1..4).unwrap_or(GROUPS));
            table["groups"][group] = json!({"fallback": [fallback]});
        }
        6 => match rng.below(2) {
            0 => table["base_group"] = json!("base"),
            _ => {
                if let Some(fields) = table.as_object_mut() {
                    fields.remove("base_group");
                }
            }
        },
        _ => table["sources"] = json!([{"cidr": format!("10.{}.0.0/16", rng.below(4)), "group": "feature-1"}]),
    }
}
