//! Group header, baggage, cookie, strict list, authority, query, trace ids,
//! and the whole request pipeline (scan → decide → edits) on arbitrary bytes.
#![no_main]

use isogroup_core::group::{baggage_without, cookie_value, from_baggage, from_header, strict_lists, Lookup};
use isogroup_core::request::{scan, Edit, Peer};
use isogroup_core::{Decision, Settings, Source};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 10] = [
    ":authority",
    ":path",
    "x-isogroup",
    "baggage",
    "cookie",
    "x-isogroup-strict",
    "x-isogroup-cluster",
    "content-type",
    "x-user",
    "traceparent",
];

fuzz_target!(|data: &[u8]| {
    let _ = from_header(data);
    if let Lookup::Found(g) = from_baggage(data, "isogroup") {
        assert!(isogroup_core::group::is_valid_group(g.as_str().as_bytes()));
    }
    let _ = baggage_without(data, "isogroup");
    let _ = cookie_value(data, "isogroup");
    let _ = strict_lists(data, "svc");
    let _ = isogroup_core::edge::query_param(data, "lane");
    let _ = isogroup_core::assist::trace_id("traceparent", data);
    let _ = isogroup_core::cidr::peer_ip(data);
    // Split the input into headers: first byte of each chunk picks the name.
    let headers: Vec<(String, Vec<u8>)> = data
        .split(|&b| b == b'\n')
        .filter_map(|chunk| Some((NAMES[usize::from(*chunk.first()?) % NAMES.len()].to_owned(), chunk[1..].to_vec())))
        .collect();
    let Ok(s) = Settings::from_json(
        br#"{"edge": {"trusted_cidrs": ["10.0.0.0/8"], "rules": [{"header": "x-user", "regex": "^a+$", "group": "g"},
        {"percent": 50, "hash_header": "x-user", "group": "h"}]}, "propagation_assist": {},
        "table": {"inline": {"groups": {"g": {"fallback": ["h"]}, "h": {}, "s": {"mode": "strict"}},
        "services": {"svc": {"hosts": ["svc"], "clusters": {"base": "c", "h": "ch"}}}}}}"#,
    ) else {
        return;
    };
    let Source::Inline(table) = &s.source else { return };
    for ip in [None, Some([10, 1, 2, 3].into()), Some([192, 0, 2, 1].into())] {
        let inc = scan(&headers, &s, Peer { ip, now_s: 0 }, Some(table));
        let d = inc.decide(table);
        for decision in [Some(&d), None] {
            let edits = inc.edits(decision, &s);
            // A client-sent routing header never survives: set by the route,
            // removed otherwise. An untrusted peer's strict header is removed.
            let sent = |name: &str| headers.iter().any(|(k, _)| k == name);
            let set = |name: &str| edits.iter().any(|e| matches!(e, Edit::Set(n, _) if *n == name));
            let removed = |name: &str| edits.iter().any(|e| matches!(e, Edit::Remove(n) if *n == name));
            let routed = matches!(decision, Some(Decision::Route(_)));
            for name in ["x-isogroup-cluster", "x-isogroup-target"] {
                assert!(!sent(name) || removed(name) || (routed && set(name)), "{name} forwarded as sent");
                assert!(routed || !set(name), "{name} set without a route");
            }
            assert!(inc.trusted || !sent("x-isogroup-strict") || removed("x-isogroup-strict"));
        }
    }
});
