//! Route tables: arbitrary bytes either compile or are rejected whole with
//! typed errors that name a field; a compiled table answers every lookup
//! without panicking, and every route it gives is one the table lists. A
//! table the hand-written reader accepts, serde_json reads to the same value
//! (the reader is the stricter: duplicate keys refused). The table's maps
//! are the shipped `VecMap` (core's `btree-names` is off here), checked on
//! every input so a change of features cannot quietly fuzz another map.
#![no_main]

use std::any::TypeId;

use isogroup_core::decide::{decide, Decision, RequestView};
use isogroup_core::table::NameMap;
use isogroup_core::vec_map::VecMap;
use isogroup_core::{Limits, RawTable, Table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    assert_eq!(TypeId::of::<NameMap<String>>(), TypeId::of::<VecMap<String>>(), "NameMap is not the shipped VecMap");
    let limits = Limits::default();
    let Ok(raw) = RawTable::from_json(data, &limits) else { return };
    let theirs: Option<RawTable> = serde_json::from_slice(data).ok();
    assert_eq!(theirs.as_ref(), Some(&raw), "serde_json reads the table differently");
    let (lenient, unknown) = RawTable::from_companion_json(data, &limits).expect("strict accepted, lenient refused");
    assert_eq!((&lenient, unknown.len()), (&raw, 0), "the lenient read differs");
    match Table::check(&raw, "base", &limits) {
        Ok(t) => {
            for (_, service) in t.services() {
                for (_, group) in t.groups() {
                    let view = RequestView { authority: service.as_bytes(), group: Some(group), strict: Some(b"*"), namespace: None };
                    if let Decision::Route(r) = decide(&t, &view) {
                        let listed = raw.services.get(r.service).and_then(|s| s.clusters.get(r.serving));
                        assert_eq!(listed.map(String::as_str), Some(r.cluster), "a route the table does not list");
                    }
                }
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in &errors {
                let text = e.to_string();
                let fields = ["base_group", "groups", "services"];
                assert!(fields.iter().any(|f| text.starts_with(f)), "{text} names no field");
            }
            let first = Table::compile(&raw, "base", &limits).err().map(|e| e.to_string());
            assert_eq!(first, Some(errors[0].to_string()), "compile reports check's first problem");
        }
    }
});
