//! Route tables: arbitrary bytes either compile or are rejected whole with
//! typed errors; a compiled table answers every lookup without panicking.
#![no_main]

use isogroup_core::decide::{decide, RequestView};
use isogroup_core::{Limits, RawTable, Table};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(raw) = RawTable::from_json(data, &limits) else { return };
    match Table::check(&raw, "base", &limits) {
        Ok(t) => {
            for (_, service) in t.services() {
                for (_, group) in t.groups() {
                    let view = RequestView { authority: service.as_bytes(), group: Some(group), strict: Some(b"*") };
                    let _ = decide(&t, &view);
                }
            }
        }
        Err(errors) => assert!(!errors.is_empty()),
    }
});
