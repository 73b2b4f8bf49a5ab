//! The hand-written JSON reader (`RawTable::from_json`, `RawConfig::from_json`)
//! against serde_json on the same documents: valid ones (compact, pretty,
//! every non-ASCII character as a `\u` escape) read to the same value, and a
//! mutated document the reader accepts, serde_json accepts with the same
//! value (the reader is the stricter one: duplicate keys, no floats).
//!
//! Tables read into the map the filter ships (`NameMap` is `VecMap` unless
//! feature `btree-names` is on, which only the companion asks for): run as
//! `cargo test -p isogroup-core`; a workspace-wide build unifies the
//! companion's features and `the_shipped_name_map_is_under_test` says so.

#![cfg(not(target_arch = "wasm32"))] // proptest runs natively
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use isogroup_core::edge::RawRule;
use isogroup_core::{Limits, Mode, RawConfig, RawGroup, RawService, RawSource, RawTable};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9.-]{0,10}",
        1 => prop::collection::vec(any::<char>(), 0..8).prop_map(String::from_iter),
    ]
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(text(), 0..3)
}

fn group() -> impl Strategy<Value = RawGroup> {
    (texts(), any::<bool>(), prop::option::of(text()), prop::option::of(text())).prop_map(
        |(fallback, strict, description, owner)| RawGroup {
            fallback,
            mode: if strict { Mode::Strict } else { Mode::Permissive },
            description,
            owner,
        },
    )
}

fn service() -> impl Strategy<Value = RawService> {
    (texts(), prop::collection::btree_map(text(), text(), 0..3), prop::collection::vec(any::<u16>(), 0..3))
        .prop_map(|(hosts, clusters, ports)| RawService { hosts, clusters: clusters.into_iter().collect(), ports })
}

fn source() -> impl Strategy<Value = RawSource> {
    (text(), text(), prop::option::of(any::<u64>())).prop_map(|(cidr, group, expires_at)| RawSource {
        cidr,
        group,
        expires_at,
    })
}

fn rule() -> impl Strategy<Value = RawRule> {
    let strings = (
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::option::of(texts()),
        prop::option::of(text()),
        prop::option::of(text()),
    );
    let rest = (
        prop::option::of(texts()),
        prop::option::of(any::<u32>()),
        prop::option::of(text()),
        prop::option::of(text()),
        any::<bool>(),
    );
    (strings, rest).prop_map(
        |(
            (header, cookie, query, values, prefix, regex),
            (source_cidrs, percent, hash_header, group, group_from_value),
        )| RawRule {
            header,
            cookie,
            query,
            values,
            prefix,
            regex,
            source_cidrs,
            percent,
            hash_header,
            group,
            group_from_value,
        },
    )
}

fn table() -> impl Strategy<Value = RawTable> {
    (
        any::<u64>(),
        prop::option::of(text()),
        prop::option::of(text()),
        prop::collection::btree_map(text(), group(), 0..3),
        prop::collection::btree_map(text(), service(), 0..3),
        prop::collection::vec(source(), 0..3),
        prop::collection::vec(rule(), 0..3),
    )
        .prop_map(|(version, epoch, base_group, groups, services, sources, rules)| RawTable {
            version,
            epoch,
            base_group,
            groups: groups.into_iter().collect(),
            services: services.into_iter().collect(),
            sources,
            rules,
        })
}

/// Every non-ASCII character as `\uXXXX` (a surrogate pair above U+FFFF);
/// outside strings JSON text is ASCII, so the whole text can be mapped.
fn ascii_escaped(json: &str) -> String {
    let mut out = String::new();
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04X}"));
            }
        }
    }
    out
}

/// `value` as compact JSON with every object's members in reverse order:
/// map keys out of order, as a hand-written or hostile table may have them.
fn reversed_members(value: &Value) -> String {
    match value {
        Value::Object(m) => {
            let members: Vec<String> =
                m.iter().rev().map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), reversed_members(v))).collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(reversed_members).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

fn encodings(value: &impl serde::Serialize) -> Vec<String> {
    let compact = serde_json::to_string(value).unwrap();
    let reversed = reversed_members(&serde_json::to_value(value).unwrap());
    vec![ascii_escaped(&compact), serde_json::to_string_pretty(value).unwrap(), reversed, compact]
}

/// A plugin configuration as JSON: any subset of the fields, valid types.
fn config() -> impl Strategy<Value = Value> {
    let headers =
        (prop::option::of(text()), prop::option::of(prop::option::of(text())), prop::option::of(any::<u16>()));
    let flags = (prop::option::of(any::<bool>()), prop::option::of(prop::option::of(text())));
    let limits = prop::option::of(prop::collection::btree_map(
        prop::sample::select(vec!["max_services", "max_groups", "max_table_bytes", "max_baggage_members"]),
        any::<u32>(),
        0..3,
    ));
    let edge =
        prop::option::of((texts(), prop::option::of(text()), prop::collection::vec(rule(), 0..3), any::<bool>()));
    let assist = prop::option::of((any::<u32>(), prop::sample::select(vec!["auto", "inbound", "outbound"]), texts()));
    let source = prop::option::of(prop_oneof![
        table().prop_map(|t| json!({ "inline": t })),
        (text(), text(), any::<u32>())
            .prop_map(|(c, a, w)| json!({"companion": {"cluster": c, "authority": a, "wait_s": w}})),
    ]);
    (headers, flags, limits, edge, assist, source).prop_map(|((gh, bk, fs), (ib, ns), limits, edge, assist, source)| {
        let mut m = Map::new();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                m.insert(k.to_owned(), v);
            }
        };
        put("group_header", gh.map(Value::from));
        put("baggage_key", bk.map(|v| json!(v)));
        put("failfast_status", fs.map(Value::from));
        put("inject_baggage", ib.map(Value::from));
        put("namespace", ns.map(|v| json!(v)));
        put("limits", limits.map(|l| json!(l)));
        put(
            "edge",
            edge.map(|(t, d, r, rt)| json!({"trusted_cidrs": t, "default_group": d, "rules": r, "runtime": rt})),
        );
        put("propagation_assist", assist.map(|(s, side, th)| json!({"slots": s, "side": side, "trace_headers": th})));
        put("table", source);
        Value::Object(m)
    })
}

/// One byte deleted, inserted or replaced, biased towards JSON's syntax.
fn mutate(doc: &str, at: usize, op: u8, byte: u8) -> Vec<u8> {
    let mut bytes = doc.as_bytes().to_vec();
    let at = at % (bytes.len() + 1);
    let byte = b"{}[],:\"\\ 0-1e.tnux"[usize::from(byte) % 18];
    match op % 3 {
        0 if at < bytes.len() => drop(bytes.remove(at)),
        1 => bytes.insert(at, byte),
        _ if at < bytes.len() => bytes[at] = byte,
        _ => {}
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn tables_read_as_serde_json_reads_them(t in table()) {
        let limits = Limits::default();
        for doc in encodings(&t) {
            let ours = RawTable::from_json(doc.as_bytes(), &limits);
            prop_assert_eq!(ours.as_ref().ok(), Some(&t), "{}", doc);
            let theirs: RawTable = serde_json::from_str(&doc).unwrap();
            prop_assert_eq!(&theirs, &t);
            let (lenient, unknown) = RawTable::from_companion_json(doc.as_bytes(), &limits).unwrap();
            prop_assert_eq!(&lenient, &t);
            prop_assert!(unknown.is_empty());
        }
    }

    #[test]
    fn configs_read_as_serde_json_reads_them(c in config()) {
        for doc in encodings(&c) {
            let ours = RawConfig::from_json(doc.as_bytes()).map(|r| format!("{r:?}")).map_err(|e| e.to_string());
            let theirs = serde_json::from_str::<RawConfig>(&doc).map(|r| format!("{r:?}")).map_err(|e| e.to_string());
            prop_assert_eq!(ours, Ok(theirs.unwrap()), "{}", doc);
        }
    }

    #[test]
    fn what_the_reader_accepts_serde_json_reads_alike(t in table(), at in any::<usize>(), op in any::<u8>(), byte in any::<u8>()) {
        let doc = serde_json::to_string(&t).unwrap();
        let bytes = mutate(&doc, at, op, byte);
        if let Ok(ours) = RawTable::from_json(&bytes, &Limits::default()) {
            let theirs: Result<RawTable, _> = serde_json::from_slice(&bytes);
            prop_assert_eq!(theirs.as_ref().ok(), Some(&ours), "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn what_serde_json_refuses_the_reader_refuses(c in config(), at in any::<usize>(), op in any::<u8>(), byte in any::<u8>()) {
        let doc = serde_json::to_string(&c).unwrap();
        let bytes = mutate(&doc, at, op, byte);
        if serde_json::from_slice::<RawConfig>(&bytes).is_err() {
            prop_assert!(RawConfig::from_json(&bytes).is_err(), "{}", String::from_utf8_lossy(&bytes));
        }
    }
}

/// Nesting: a value the reader skips (a newer companion's field) may nest
/// exactly as deep as serde_json reads (its recursion limit, 128, refuses
/// the 128th level), counted from the document's root in both.
#[test]
fn skipped_values_nest_as_deep_as_serde_json_reads() {
    for depth in [2, 63, 64, 65, 100, 126, 127, 128, 129, 300] {
        // The table object is one level; the field's value the rest.
        let (open, close) = ("[{\"a\":".repeat((depth - 1) / 2), "}]".repeat((depth - 1) / 2));
        let inner = if depth % 2 == 0 { "[]" } else { "0" };
        let doc = format!(r#"{{"later":{open}{inner}{close}}}"#);
        let theirs = serde_json::from_str::<Value>(&doc).is_ok();
        let ours = RawTable::from_companion_json(doc.as_bytes(), &Limits::default());
        assert_eq!(ours.is_ok(), theirs, "depth {depth}: {:?}", ours.err().map(|e| e.to_string()));
        assert_eq!(theirs, depth < 128, "depth {depth}");
    }
}

/// These tests read into the map the filter ships: `NameMap` is `VecMap`
/// here, not the companion's `BTreeMap`.
#[test]
fn the_shipped_name_map_is_under_test() {
    use std::any::TypeId;
    assert_eq!(
        TypeId::of::<isogroup_core::table::NameMap<String>>(),
        TypeId::of::<isogroup_core::vec_map::VecMap<String>>(),
        "NameMap is not the shipped VecMap in this build: run `cargo test -p isogroup-core` \
         (a workspace-wide build turns on the companion's `btree-names`)"
    );
}

/// A map key given twice: serde_json keeps the last, the reader refuses it.
#[test]
fn duplicate_keys_are_where_the_reader_is_stricter() {
    let doc =
        r#"{"services":{"r":{"hosts":["a"],"clusters":{"base":"x"}},"r":{"hosts":["b"],"clusters":{"base":"y"}}}}"#;
    let theirs: RawTable = serde_json::from_str(doc).unwrap();
    assert_eq!(theirs.services.len(), 1);
    let err = RawTable::from_json(doc.as_bytes(), &Limits::default()).unwrap_err().to_string();
    assert_eq!(err, "services: duplicate key \"r\" at line 1 column 101");
}
