//! Property tests for every parser that sees outside input: whatever the
//! bytes, no panic, and the result is either a value or a typed error.
//! (`./build.sh fuzz` runs the same targets coverage-guided, for longer.)

#![cfg(not(target_arch = "wasm32"))] // proptest runs natively; the fuzz targets cover wasm-free code alike
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use isogroup_core::assist::trace_id;
use isogroup_core::authority::{normalize, MAX_HOST_LEN};
use isogroup_core::cidr::{peer_ip, Cidr};
use isogroup_core::edge::query_param;
use isogroup_core::group::{
    baggage_without, cookie_value, from_baggage, from_header, is_valid_group, strict_lists, Lookup,
};
use isogroup_core::request::{scan, Peer};
use isogroup_core::{synth, Limits, Settings, Table};
use proptest::prelude::*;

/// Bytes biased towards the characters the parsers split on.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"abz09-_=;, %+\t\"[]:.*".to_vec()),
            1 => any::<u8>(),
        ],
        0..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn group_sources(v in header_bytes()) {
        match from_header(&v) {
            Lookup::Found(g) => prop_assert!(is_valid_group(g.as_str().as_bytes())),
            Lookup::Invalid => prop_assert!(!is_valid_group(v.trim_ascii())),
            Lookup::Absent => prop_assert!(false, "a header value is never absent"),
        }
        if let Lookup::Found(g) = from_baggage(&v, "isogroup") {
            prop_assert!(is_valid_group(g.as_str().as_bytes()));
        }
        if let Some(rest) = baggage_without(&v, "isogroup") {
            prop_assert_eq!(from_baggage(&rest, "isogroup"), Lookup::Absent);
        }
        let _ = cookie_value(&v, "isogroup");
        let _ = strict_lists(&v, "svc");
        let _ = query_param(&v, "lane");
        let _ = trace_id("traceparent", &v);
        let _ = trace_id("x-request-id", &v);
        let _ = peer_ip(&v);
        let mut buf = [0u8; MAX_HOST_LEN + 1];
        if let Some(host) = normalize(&v, &mut buf) {
            prop_assert!(!host.is_empty() && host.len() <= MAX_HOST_LEN);
            prop_assert!(!host.bytes().any(|b| b.is_ascii_uppercase()));
        }
    }

    #[test]
    fn cidrs(s in "[0-9a-f:./]{0,50}") {
        if let Ok(c) = Cidr::parse(&s) {
            let _ = c.contains("10.0.0.1".parse().unwrap());
        }
    }

    #[test]
    fn plugin_configs(v in prop::collection::vec(any::<u8>(), 0..400)) {
        // Arbitrary bytes: almost always a JSON error, never a panic.
        let _ = Settings::from_json(&v).map_err(|e| e.to_string());
    }

    #[test]
    fn plugin_config_values(field in prop::sample::select(vec![
        "group_header", "baggage_key", "cookie", "base_group", "workload_group", "failfast_status", "inject_baggage",
    ]), value in prop_oneof![
        "[ -~]{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("null".to_owned()),
        Just("[]".to_owned()),
    ]) {
        let json = format!("{{\"{field}\": {value}}}");
        if let Err(e) = Settings::from_json(json.as_bytes()) {
            prop_assert!(e.to_string().starts_with(field), "{} does not name {}", e, field);
        }
    }

    #[test]
    fn route_tables(v in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = Table::from_json(&v, "base", &Limits::default()).map_err(|e| e.to_string());
    }

    #[test]
    fn mutated_tables(seed in 0usize..40, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        // A valid table with one byte changed: parses, or names what broke.
        let mut json = serde_json::to_vec(&synth::table(seed % 7 + 1, seed % 5 + 1)).unwrap();
        let i = at.index(json.len());
        json[i] = byte;
        if let Err(e) = Table::from_json(&json, "base", &Limits::default()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn request_scan(headers in prop::collection::vec((prop::sample::select(vec![
        ":authority", ":path", "x-isogroup", "baggage", "cookie", "x-isogroup-strict", "x-isogroup-cluster",
        "content-type", "x-user", "traceparent",
    ]), header_bytes()), 0..12)) {
        let s = Settings::from_json(br#"{"edge": {"trusted_cidrs": ["10.0.0.0/8"], "rules": [
            {"header": "x-user", "regex": "^a+$", "group": "g"}, {"query": "lane", "prefix": "b", "group": "g"}]},
            "propagation_assist": {},
            "table": {"inline": {"services": {"svc": {"hosts": ["svc"], "clusters": {"base": "c"}}}}}}"#).unwrap();
        let list: Vec<(String, Vec<u8>)> = headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let table = match &s.source { isogroup_core::Source::Inline(t) => t, _ => unreachable!() };
        for ip in [None, Some("10.1.1.1".parse().unwrap()), Some("192.0.2.1".parse().unwrap())] {
            let inc = scan(&list, &s, Peer { ip });
            let d = inc.decide(table);
            let _ = inc.edits(Some(&d), &s);
        }
    }
}
