//! Plugin configuration: arbitrary bytes either configure or name a field.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = isogroup_core::Settings::from_json(data) {
        assert!(!e.to_string().is_empty());
    }
});
