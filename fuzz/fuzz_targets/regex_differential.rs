//! The rule regex against regex-lite (the engine it replaced) on arbitrary
//! bytes: the pattern up to the first NUL, the value after it (both read as
//! UTF-8, invalid bytes replaced). Whenever the pattern compiles here,
//! regex-lite compiles it too and both say the same about the value, and
//! about the value's every suffix (so one input tries many).
#![no_main]

use isogroup_core::regex::Regex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let pattern = String::from_utf8_lossy(&data[..split]);
    let value = String::from_utf8_lossy(data.get(split + 1..).unwrap_or_default());
    let Ok(ours) = Regex::new(&pattern) else { return };
    let theirs = match regex_lite::Regex::new(&pattern) {
        Ok(re) => re,
        Err(e) => panic!("{pattern:?}: accepted here, regex-lite refuses it: {e}"),
    };
    for (at, _) in value.char_indices().chain([(value.len(), ' ')]) {
        let v = &value[at..];
        assert_eq!(ours.is_match(v), theirs.is_match(v), "{pattern:?} on {v:?}");
    }
});
