//! Table deltas (SPEC "Delivery to many proxies"): arbitrary bytes taken as
//! a delta onto one fixed base table. Nothing panics; the parse-then-patch
//! path (`RawDelta::from_json`, `delta::patch`, `delta::apply`) and the
//! poller's one pass (`delta::read_onto`) accept and refuse alike and make
//! the same table; `delta::catch_up` makes the same of the delta after its
//! base's stamp and skips it after any other stamp. Under lower limits
//! (which short inputs reach) every path refuses alike, naming the limit.
//!
//! The differential reference is written here over `serde_json::Value`, not
//! core's reader: the SPEC's keys exactly at the top level and in `base`,
//! unknown fields skipped inside `set` values and `replace` (each object
//! then read as serde reads it, core's `serde` feature), and the patch's
//! rules (base held, version newer, `remove` in name order, each once,
//! naming base services not in `set`). Core accepting means the reference
//! accepts and makes the same table, with the same unknown field names;
//! core refusing a patch means the reference refuses it for the same
//! reason. Core refuses what the reference reads only for a key given twice
//! (which `Value` collapses); every refusal of the reader names a place.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use isogroup_core::delta::{self, RawDelta};
use isogroup_core::epoch::{compare, Held};
use isogroup_core::{Key, Limits, RawService, RawTable, Table, TableError};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// The table every input is a delta onto: a few services, groups, sources,
/// a base group and an epoch (the seeds are deltas onto it).
const BASE: &str = r#"{
  "version": 7, "epoch": "1700000000000-ab", "base_group": "base",
  "groups": {"base": {}, "dev": {"fallback": ["base"]}, "qa": {"fallback": ["dev"], "mode": "strict"}},
  "services": {
    "api": {"hosts": ["api"], "clusters": {"base": "api-base", "dev": "api-dev"}},
    "db": {"hosts": ["db"], "clusters": {"base": "db-base"}, "ports": [5432]},
    "web": {"hosts": ["web", "web.example.com"], "clusters": {"base": "web-base", "qa": "web-qa"}}
  },
  "sources": [{"cidr": "10.0.0.0/8", "group": "dev"}]
}"#;

fn base() -> &'static RawTable {
    static BASE_TABLE: OnceLock<RawTable> = OnceLock::new();
    BASE_TABLE.get_or_init(|| RawTable::from_json(BASE.as_bytes(), &Limits::default()).expect("the base table reads"))
}

const TOP_KEYS: &[&str] = &["base", "version", "epoch", "set", "remove", "replace"];
const BASE_KEYS: &[&str] = &["version", "epoch"];
const TABLE_KEYS: &[&str] = &["version", "epoch", "base_group", "groups", "services", "sources", "rules"];
const SERVICE_KEYS: &[&str] = &["hosts", "clusters", "ports"];
const GROUP_KEYS: &[&str] = &["fallback", "mode", "description", "owner"];
const SOURCE_KEYS: &[&str] = &["cidr", "group", "expires_at"];
const RULE_KEYS: &[&str] = &[
    "header",
    "cookie",
    "query",
    "values",
    "prefix",
    "regex",
    "source_cidrs",
    "percent",
    "hash_header",
    "group",
    "group_from_value",
];

/// The patch's three refusals, exactly as core words them.
const NOT_HELD: (&str, &str) = ("base", "not the table held");
const NOT_NEWER: (&str, &str) = ("version", "not newer than the delta's base");
const BAD_REMOVE: (&str, &str) = ("remove", "names a service the base does not have, or one in `set`, or out of order");

/// Why the reference refuses a delta: it does not read (`Read`), or one of
/// the patch's rules refuses it.
#[derive(Debug, PartialEq)]
enum Refusal {
    Read(String),
    Patch((&'static str, &'static str)),
}

fn read_err(what: impl std::fmt::Display) -> Refusal {
    Refusal::Read(what.to_string())
}

/// `object` without the keys `known` does not list, their names (as core
/// shows them) added to `unknown`: a newer companion's fields.
fn strip(object: &Map<String, Value>, known: &[&str], unknown: &mut BTreeSet<String>) -> Map<String, Value> {
    let mut kept = Map::new();
    for (key, value) in object {
        if known.contains(&key.as_str()) {
            kept.insert(key.clone(), value.clone());
        } else {
            unknown.insert(Key(key).to_string());
        }
    }
    kept
}

/// Each object in the array `value` stripped to `known` (anything else left
/// for serde to refuse).
fn strip_each(value: &Value, known: &[&str], unknown: &mut BTreeSet<String>) -> Value {
    match value {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| match item {
                    Value::Object(o) => Value::Object(strip(o, known, unknown)),
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn field<T: serde::de::DeserializeOwned>(value: Option<&Value>, default: T) -> Result<T, Refusal> {
    match value {
        None => Ok(default),
        Some(v) => serde_json::from_value(v.clone()).map_err(read_err),
    }
}

/// `data` with every number that is not an integer serde_json holds
/// exactly (a fraction, an exponent, past i64 or u64) written `0.0`. Core
/// checks a number's grammar and computes only the integers it reads, so it
/// skips `1e400` in an unknown field where serde_json refuses it as out of
/// range; no field core reads takes such a number (it refuses them, and
/// serde refuses `0.0` there alike). Anything else is left as it is: a
/// malformed document stays malformed.
fn floats_zeroed(data: &[u8]) -> Vec<u8> {
    let (mut out, mut at, mut in_string) = (Vec::with_capacity(data.len()), 0, false);
    while let Some(&b) = data.get(at) {
        if in_string {
            out.push(b);
            match b {
                b'\\' => {
                    out.extend(data.get(at + 1));
                    at += 2;
                    continue;
                }
                b'"' => in_string = false,
                _ => {}
            }
            at += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let len =
                data[at..].iter().take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')).count();
            let token = &data[at..at + len];
            let exact = std::str::from_utf8(token).is_ok_and(|t| t.parse::<u64>().is_ok() || t.parse::<i64>().is_ok());
            if is_json_number(token) && !exact {
                out.extend_from_slice(b"0.0");
            } else {
                out.extend_from_slice(token);
            }
            at += len;
            continue;
        }
        in_string = b == b'"';
        out.push(b);
        at += 1;
    }
    out
}

/// RFC 8259's number grammar, the whole of `token`.
fn is_json_number(token: &[u8]) -> bool {
    let digits = |t: &[u8]| t.iter().take_while(|c| c.is_ascii_digit()).count();
    let t = token.strip_prefix(b"-").unwrap_or(token);
    let int = digits(t);
    if int == 0 || (int > 1 && t[0] == b'0') {
        return false;
    }
    let mut t = &t[int..];
    if let Some(rest) = t.strip_prefix(b".") {
        let frac = digits(rest);
        if frac == 0 {
            return false;
        }
        t = &rest[frac..];
    }
    if let Some(rest) = t.strip_prefix(b"e").or_else(|| t.strip_prefix(b"E")) {
        let rest = rest.strip_prefix(b"+").or_else(|| rest.strip_prefix(b"-")).unwrap_or(rest);
        let exp = digits(rest);
        if exp == 0 {
            return false;
        }
        t = &rest[exp..];
    }
    t.is_empty()
}

/// The table `data` makes of `base` as the SPEC words a delta, with the
/// unknown field names skipped inside it.
fn reference(data: &[u8], base: &RawTable) -> Result<(RawTable, BTreeSet<String>), Refusal> {
    let document: Value = serde_json::from_slice(&floats_zeroed(data)).map_err(read_err)?;
    let top = document.as_object().ok_or_else(|| read_err("not an object"))?;
    if let Some(key) = top.keys().find(|k| !TOP_KEYS.contains(&k.as_str())) {
        return Err(read_err(format!("unknown key {key}")));
    }
    let stamp = top.get("base").ok_or_else(|| read_err("no base"))?;
    let stamp = stamp.as_object().ok_or_else(|| read_err("base not an object"))?;
    if let Some(key) = stamp.keys().find(|k| !BASE_KEYS.contains(&k.as_str())) {
        return Err(read_err(format!("unknown key base.{key}")));
    }
    let base_version: u64 = field(stamp.get("version"), 0)?;
    let base_epoch: Option<String> = field(stamp.get("epoch"), None)?;
    let version: u64 = field(Some(top.get("version").ok_or_else(|| read_err("no version"))?), 0)?;
    let epoch: Option<String> = field(top.get("epoch"), None)?;

    let mut unknown = BTreeSet::new();
    let mut set = BTreeMap::new();
    if let Some(value) = top.get("set") {
        let services = value.as_object().ok_or_else(|| read_err("set not an object"))?;
        for (name, service) in services {
            let service = match service {
                Value::Object(o) => Value::Object(strip(o, SERVICE_KEYS, &mut unknown)),
                other => other.clone(),
            };
            set.insert(name.clone(), serde_json::from_value::<RawService>(service).map_err(read_err)?);
        }
    }
    let remove: Vec<String> = field(top.get("remove"), Vec::new())?;
    let mut replaced = RawTable::default();
    let mut replaces: Vec<String> = Vec::new();
    if let Some(value) = top.get("replace") {
        let fields = value.as_object().ok_or_else(|| read_err("replace not an object"))?;
        let mut kept = strip(fields, TABLE_KEYS, &mut unknown);
        for whole in ["version", "epoch", "services"] {
            if kept.contains_key(whole) {
                return Err(read_err(format!("replace.{whole}")));
            }
        }
        if let Some(Value::Object(groups)) = kept.get("groups") {
            let groups = groups
                .iter()
                .map(|(name, g)| match g {
                    Value::Object(o) => (name.clone(), Value::Object(strip(o, GROUP_KEYS, &mut unknown))),
                    other => (name.clone(), other.clone()),
                })
                .collect();
            kept.insert("groups".into(), Value::Object(groups));
        }
        for (name, known) in [("sources", SOURCE_KEYS), ("rules", RULE_KEYS)] {
            if let Some(list) = kept.get(name) {
                let list = strip_each(list, known, &mut unknown);
                kept.insert(name.into(), list);
            }
        }
        replaces = kept.keys().cloned().collect();
        replaced = serde_json::from_value(Value::Object(kept)).map_err(read_err)?;
    }

    // The patch's rules, in core's order (so a refusal has core's reason).
    if (base_version, &base_epoch) != (base.version, &base.epoch) {
        return Err(Refusal::Patch(NOT_HELD));
    }
    if compare(epoch.as_deref(), version, base_epoch.as_deref(), base_version) != std::cmp::Ordering::Greater {
        return Err(Refusal::Patch(NOT_NEWER));
    }
    let in_order = remove.windows(2).all(|w| w[0] < w[1]);
    let known = remove.iter().all(|name| base.services.contains_key(name.as_str()) && !set.contains_key(name));
    if !in_order || !known {
        return Err(Refusal::Patch(BAD_REMOVE));
    }

    let mut services: BTreeMap<String, RawService> =
        base.services.iter().map(|(name, s)| (name.clone(), s.clone())).collect();
    for name in &remove {
        services.remove(name);
    }
    services.extend(set);
    let mut table = base.clone();
    table.version = version;
    table.epoch = epoch;
    table.services = services.into_iter().collect();
    for name in &replaces {
        match name.as_str() {
            "base_group" => table.base_group = replaced.base_group.take(),
            "groups" => table.groups = std::mem::take(&mut replaced.groups),
            "sources" => table.sources = std::mem::take(&mut replaced.sources),
            _ => table.rules = std::mem::take(&mut replaced.rules),
        }
    }
    Ok((table, unknown))
}

/// Any JSON value without a key given twice in one object (`Value` keeps
/// the last; core refuses the delta).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key) {
                return Err(serde::de::Error::custom("a key given twice"));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(self)
    }
}

/// The patch refusal `e` is, if it is one.
fn patch_refusal(e: &TableError) -> Option<(&'static str, &'static str)> {
    let TableError::Json { path, message } = e else { return None };
    [NOT_HELD, NOT_NEWER, BAD_REMOVE].into_iter().find(|(p, m)| p == path && m == message)
}

/// A refusal of the reader names where: the document, one of the delta's
/// members (or a place inside one), or an unknown top-level key; a problem
/// inside an unknown key's value can only be malformed JSON.
fn assert_names_a_place(e: &TableError, data: &[u8]) {
    let text = e.to_string();
    let TableError::Json { path, message } = e else {
        let fields = ["services", "groups", "delta"];
        assert!(fields.iter().any(|f| text.starts_with(f)), "{text} names no field");
        return;
    };
    assert!(message.contains(" at line "), "{text}: no position");
    let first = path.split(['.', '[']).next().unwrap_or_default();
    if path == "(document)" || TOP_KEYS.contains(&first) {
        return;
    }
    let malformed = serde_json::from_slice::<Value>(data).is_err();
    assert!(message.starts_with("unknown field") || malformed, "{text} names no member");
}

/// The same unknown names: as a set (core keeps each as read, twice if
/// given twice; `Value` keeps one), all of them unless core kept its most.
fn assert_same_unknown(core: &[String], reference: &BTreeSet<String>) {
    const MAX_UNKNOWN_KEPT: usize = 16;
    let core_set: BTreeSet<String> = core.iter().cloned().collect();
    if core.len() < MAX_UNKNOWN_KEPT {
        assert_eq!(&core_set, reference, "core skips other unknown fields");
    } else {
        assert!(core_set.is_subset(reference), "core skipped {core_set:?}, the reference {reference:?}");
    }
}

/// Whether `e` is a refusal for one of the limits `small_limits` lowers.
fn is_limit(e: &TableError) -> bool {
    match e {
        TableError::TooManyBytes { field: "delta", .. } => true,
        TableError::Json { path, message } => {
            ["services", "groups", "services.*.clusters"].contains(&path.as_str())
                && message.contains(" exceeds the limit of ")
        }
        _ => false,
    }
}

/// Limits a short input reaches (the defaults are past the fuzzer's).
fn small_limits() -> Limits {
    Limits { max_services: 4, max_groups: 3, max_cluster_entries: 6, max_table_bytes: 600, ..Limits::default() }
}

fn held(version: u64, epoch: Option<&str>) -> Held {
    Held { version, epoch: epoch.map(str::to_owned) }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let base = base();

    // 1. The parse-then-patch path and the poller's one pass agree.
    let read = delta::read_onto(Some(base.clone()), data, &limits);
    let parsed = RawDelta::from_json(data, &limits);
    let patched = parsed.clone().and_then(|p| Ok((delta::patch(base.clone(), p.delta)?, p.unknown)));
    assert_eq!(read, patched, "read_onto and from_json + patch differ");
    assert!(delta::read_onto(None, data, &limits).is_err(), "a delta onto nothing held");

    // 2. Against the reference.
    let theirs = reference(data, base);
    match &read {
        Ok((table, unknown)) => {
            let (their_table, their_unknown) = theirs.expect("core accepts a delta the reference refuses");
            assert_eq!(table, &their_table, "the reference patches otherwise");
            assert_same_unknown(unknown, &their_unknown);
            let parsed = parsed.expect("accepted above").delta;
            assert!(parsed.has_base(base.version, base.epoch.as_deref()));
            // `apply` makes the same table, compiled as a whole one is.
            match delta::apply(base.clone(), parsed, "base", &limits) {
                Ok((raw, compiled)) => {
                    assert_eq!(&raw, table, "apply patches otherwise");
                    assert_eq!(compiled.version(), table.version);
                }
                Err(e) => {
                    let text = e.to_string();
                    let fields = ["base_group", "groups", "services", "sources", "rules"];
                    assert!(fields.iter().any(|f| text.starts_with(f)), "{text} names no field");
                    let whole = Table::compile(table, "base", &limits).err().map(|e| e.to_string());
                    assert_eq!(whole, Some(text), "apply refuses as compiling the table does");
                }
            }
        }
        Err(e) => {
            if let Some(reason) = patch_refusal(e) {
                assert_eq!(theirs.err(), Some(Refusal::Patch(reason)), "the reference patches otherwise");
            } else {
                assert_names_a_place(e, data);
                // A delta the reference reads is refused only for a key
                // given twice (the size limits are past the fuzzer's
                // inputs).
                if !matches!(theirs, Err(Refusal::Read(_))) {
                    let twice = serde_json::from_slice::<NoDuplicateKeys>(&floats_zeroed(data)).is_err();
                    assert!(twice, "core refuses a delta the reference reads ({theirs:?}): {e}");
                }
            }
        }
    }

    // Lower limits refuse more, naming the limit, and accept the same: the
    // limits are counted as the delta is read, alike on every path.
    let small = small_limits();
    let read_small = delta::read_onto(Some(base.clone()), data, &small);
    let patched_small =
        RawDelta::from_json(data, &small).and_then(|p| Ok((delta::patch(base.clone(), p.delta)?, p.unknown)));
    assert_eq!(read_small, patched_small, "read_onto and from_json + patch differ under lower limits");
    match (&read_small, &read) {
        (Ok(_), _) => assert_eq!(read_small, read, "lower limits accept otherwise"),
        (Err(e), Ok(_)) => assert!(is_limit(e), "lower limits refuse for another reason: {e}"),
        (Err(e), Err(whole)) => assert!(e == whole || is_limit(e), "lower limits refuse otherwise: {e}"),
    }

    // 3. `catch_up`: after its base's stamp, as read; after another, skipped.
    // (`push_delta` takes JSON, which holds no NUL.)
    if data.contains(&0) {
        return;
    }
    let stamp = held(base.version, base.epoch.as_deref());
    let mut after_base = Vec::new();
    delta::push_delta(&mut after_base, &stamp, data);
    assert_eq!(delta::catch_up(base.clone(), &after_base, &limits), read, "catch_up reads otherwise");
    assert_eq!(delta::catch_up(base.clone(), &after_base, &small), read_small, "catch_up limits otherwise");
    let others = [
        held(base.version + 1, base.epoch.as_deref()),
        held(base.version, Some("1700000000001-ab")),
        held(base.version, None),
    ];
    let mut after_others = Vec::new();
    for other in &others {
        delta::push_delta(&mut after_others, other, data);
    }
    let skipped = delta::catch_up(base.clone(), &after_others, &limits);
    assert_eq!(skipped, Ok((base.clone(), Vec::new())), "a delta of another base is not skipped");
    // Skipped, applied, then skipped again: the table has moved on from
    // the base once applied.
    delta::push_delta(&mut after_others, &stamp, data);
    delta::push_delta(&mut after_others, &stamp, data);
    assert_eq!(delta::catch_up(base.clone(), &after_others, &limits), read, "catch_up reads a chain otherwise");
});
