//! Property tests of the request pipeline's promises, over random header
//! lists, peers and tables:
//! - an untrusted edge peer's own group (header, baggage member, cookie,
//!   strict header) never changes the decision, and none of it is forwarded
//!   except what the filter itself stamped;
//! - the routing headers a client sent never reach the upstream: after the
//!   edits they hold exactly what the decision set, or nothing;
//! - a decision's cluster is the table's cluster for that service and the
//!   serving group;
//! - with `join_path`, a lane cookie is forwarded only when it names a group
//!   the table knows (any peer may use it: it is not "own group").

#![cfg(not(target_arch = "wasm32"))] // proptest runs natively
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::net::IpAddr;
use std::sync::OnceLock;

use isogroup_core::decide::{decide, Decision, RequestView};
use isogroup_core::edge::cookie_without;
use isogroup_core::group::{baggage_without, cookie_value, from_baggage, is_valid_group, Lookup};
use isogroup_core::request::{scan, Edit, Peer};
use isogroup_core::{synth, Limits, Settings, Source, Table};
use proptest::prelude::*;

type Headers = Vec<(String, Vec<u8>)>;

const TABLE: &str = r#"{"groups": {"f1": {"fallback": ["f2"]}, "f2": {}, "team-s": {"mode": "strict"}},
  "services": {
    "svc": {"hosts": ["svc"], "clusters": {"base": "svc-base", "f1": "svc-f1", "team-s": "svc-s"}},
    "other": {"hosts": ["other"], "clusters": {"base": "other-base", "f2": "other-f2"}}},
  "sources": [{"cidr": "203.0.113.0/24", "group": "f1"}, {"cidr": "192.0.2.7", "group": "gone", "expires_at": 1}],
  "rules": [{"header": "x-user", "values": ["bob"], "group": "f2"}, {"cookie": "pick", "group_from_value": true}]}"#;

const EDGE: &str = r#""edge": {"trusted_cidrs": ["10.0.0.0/8"], "rules": [
    {"header": "x-user", "values": ["alice"], "group": "f1"},
    {"cookie": "lane", "values": ["blue"], "group": "team-s"},
    {"source_cidrs": ["192.0.2.0/24"], "group": "f2"}]},"#;

/// The plugin configurations the properties run under: mesh and edge, with
/// the routing headers written or not, a workload group, no baggage key.
fn configs() -> &'static [Settings] {
    static CONFIGS: OnceLock<Vec<Settings>> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let extras = [
            "",
            r#""workload_group": "f2","#,
            r#""target_header": null,"#,
            r#""cluster_header": null, "baggage_key": null,"#,
            EDGE,
            &format!(r#"{EDGE} "inject_baggage": false, "target_header": null,"#),
            &format!(r#"{}, "default_group": "f2"}},"#, EDGE.trim_end_matches("},")),
            &format!(r#"{}, "runtime": true, "join_path": "/.isogroup/join"}},"#, EDGE.trim_end_matches("},")),
        ];
        extras
            .iter()
            .map(|extra| {
                let json = format!(r#"{{ {extra} "table": {{"inline": {TABLE}}} }}"#);
                Settings::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{json}: {e}"))
            })
            .collect()
    })
}

fn table(s: &Settings) -> &Table {
    match &s.source {
        Source::Inline(t) => t,
        _ => unreachable!("every config here has an inline table"),
    }
}

/// Group-ish values: known groups, unknown ones, invalid ones, junk.
fn group_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["f1", "f2", "team-s", "base", "nobody", "F1", "", " f1 ", "a_b"])
            .prop_map(String::from),
        "[a-z0-9-]{1,8}",
        "[ -~]{0,12}",
    ]
}

fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
    prop_oneof![
        group_value().prop_map(|g| ("x-isogroup".to_owned(), g.into_bytes())),
        prop::collection::vec(
            prop_oneof![
                group_value().prop_map(|g| format!("isogroup={g}")),
                group_value().prop_map(|g| format!(" isogroup = {g};p=1")),
                Just("k=v".to_owned()),
                "[ -~]{0,10}",
            ],
            0..4
        )
        .prop_map(|m| ("baggage".to_owned(), m.join(",").into_bytes())),
        prop::collection::vec(
            prop_oneof![
                group_value().prop_map(|g| format!("isogroup={g}")),
                Just("lane=blue".to_owned()),
                group_value().prop_map(|g| format!("isogroup-lane={g}")),
                group_value().prop_map(|g| format!("pick={g}")),
                Just("k=v".to_owned()),
                "[ -~]{0,10}",
            ],
            0..4
        )
        .prop_map(|c| ("cookie".to_owned(), c.join("; ").into_bytes())),
        prop::sample::select(vec!["*", "svc", "other", " svc , other ", "nope", ""])
            .prop_map(|v| ("x-isogroup-strict".to_owned(), v.as_bytes().to_vec())),
        "[ -~]{0,20}".prop_map(|v| ("x-isogroup-cluster".to_owned(), v.into_bytes())),
        "[ -~]{0,20}".prop_map(|v| ("x-isogroup-target".to_owned(), v.into_bytes())),
        prop::sample::select(vec!["alice", "bob"]).prop_map(|v| ("x-user".to_owned(), v.as_bytes().to_vec())),
        Just(("content-type".to_owned(), b"application/grpc".to_vec())),
    ]
}

fn request() -> impl Strategy<Value = Headers> {
    let authority = prop::sample::select(vec!["svc", "SVC:8080", "other", "other.", "unknown", ""]);
    let path = prop::sample::select(vec!["/", "/p?lane=blue", "/p?x=1"]);
    (authority, path, prop::collection::vec(header(), 0..8)).prop_map(|(a, p, rest)| {
        let mut h = vec![(":authority".to_owned(), a.as_bytes().to_vec()), (":path".to_owned(), p.as_bytes().to_vec())];
        h.extend(rest);
        h
    })
}

fn peer() -> impl Strategy<Value = Option<IpAddr>> {
    prop::sample::select(vec![None, Some("10.1.2.3"), Some("192.0.2.7"), Some("203.0.113.9"), Some("::1")])
        .prop_map(|p| p.map(|p| p.parse().unwrap()))
}

/// What Envoy does with the edits: `Set` replaces every value, `Add`
/// appends one, `Remove` drops them all.
fn apply(headers: &Headers, edits: &[Edit<'_>]) -> Headers {
    let mut out = headers.clone();
    for edit in edits {
        match edit {
            Edit::Set(name, value) => {
                out.retain(|(k, _)| k != name);
                out.push(((*name).to_owned(), value.to_vec()));
            }
            Edit::Add(name, value) => out.push(((*name).to_owned(), value.to_vec())),
            Edit::Remove(name) => out.retain(|(k, _)| k != name),
        }
    }
    out
}

fn values<'h>(headers: &'h Headers, name: &str) -> Vec<&'h [u8]> {
    headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_slice()).collect()
}

/// The request without anything that names its own group.
fn without_own_group(headers: &Headers) -> Headers {
    headers
        .iter()
        .filter(|(k, _)| k != "x-isogroup" && k != "x-isogroup-strict")
        .filter_map(|(k, v)| match k.as_str() {
            "baggage" => baggage_without(v, "isogroup").map(|v| (k.clone(), v)),
            "cookie" => cookie_without(v, "isogroup").map(|v| (k.clone(), v)),
            _ => Some((k.clone(), v.clone())),
        })
        .collect()
}

/// A decision as one comparable string.
fn outcome(d: &Decision<'_>) -> String {
    match d {
        Decision::PassThrough => "pass".into(),
        Decision::Route(r) => format!("{}={} via {}", r.service, r.serving, r.cluster),
        Decision::FailFast(f) => format!("failfast {} {} {}", f.service, f.group, f.reason.as_str()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn an_untrusted_peer_never_picks_its_group(headers in request(), ip in peer(), which in 4usize..8) {
        let s = &configs()[which]; // the edge configs
        prop_assume!(!s.edge.as_ref().unwrap().trusts(ip));
        let inc = scan(&headers, s, Peer { ip, now_s: 0 }, Some(table(s)));
        let clean = without_own_group(&headers);
        let clean_inc = scan(&clean, s, Peer { ip, now_s: 0 }, Some(table(s)));
        // the same group, from the same place, and the same decision as
        // without any of the peer's own group values
        prop_assert_eq!((inc.group, inc.source), (clean_inc.group, clean_inc.source));
        let d = inc.decide(table(s));
        prop_assert_eq!(outcome(&d), outcome(&clean_inc.decide(table(s))));
        // and none of them is forwarded: only what the filter stamped
        let sent = apply(&headers, &inc.edits(Some(&d), s));
        let stamped = inc.group.map(|g| g.to_string());
        let own: Vec<String> = values(&sent, "x-isogroup").iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        prop_assert!(own.is_empty() || own == stamped.iter().cloned().collect::<Vec<_>>(), "x-isogroup {:?}", own);
        for b in values(&sent, "baggage") {
            match from_baggage(b, "isogroup") {
                Lookup::Absent => {}
                Lookup::Found(g) => prop_assert_eq!(Some(g.to_string()), stamped.clone()),
                Lookup::Invalid => prop_assert!(false, "an invalid member forwarded: {:?}", String::from_utf8_lossy(b)),
            }
        }
        for c in values(&sent, "cookie") {
            prop_assert_eq!(cookie_value(c, "isogroup"), None);
            if s.edge.as_ref().is_some_and(|e| e.join_path.is_some()) {
                let lane = cookie_value(c, "isogroup-lane").map(|v| String::from_utf8_lossy(v).into_owned());
                prop_assert!(lane.as_deref().is_none_or(|g| table(s).knows_group(g)), "lane cookie {:?} forwarded", lane);
            }
        }
        prop_assert!(values(&sent, "x-isogroup-strict").is_empty());
    }

    #[test]
    fn a_client_never_picks_a_cluster(headers in request(), ip in peer(), which in 0usize..8, no_table in any::<bool>()) {
        let s = &configs()[which];
        let inc = scan(&headers, s, Peer { ip, now_s: 0 }, (!no_table).then(|| table(s)));
        let d = inc.decide(table(s));
        let decision = (!no_table).then_some(&d);
        let sent = apply(&headers, &inc.edits(decision, s));
        let (cluster, target): (Vec<&[u8]>, Vec<&[u8]>) = match decision {
            Some(Decision::Route(r)) => (
                if s.write_cluster_header { vec![r.cluster.as_bytes()] } else { vec![] },
                if s.write_target_header { vec![r.serving.as_bytes()] } else { vec![] },
            ),
            _ => (vec![], vec![]),
        };
        prop_assert_eq!(values(&sent, "x-isogroup-cluster"), cluster);
        prop_assert_eq!(values(&sent, "x-isogroup-target"), target);
        // whatever group was found is a valid one
        prop_assert!(inc.group.is_none_or(|g| is_valid_group(g.as_str().as_bytes())));
    }

    #[test]
    fn a_route_is_the_tables_cluster(
        services in 1usize..30,
        groups in 1usize..12,
        service in 0usize..40,
        group in prop::option::of(0usize..15),
        strict in prop::option::of(prop::sample::select(vec!["*", "svc-1", "svc-2,svc-3"])),
    ) {
        let raw = synth::table(services, groups);
        let t = Table::compile(&raw, "base", &Limits::default()).unwrap();
        let authority = format!("{}.default.svc.cluster.local", synth::service(service));
        let group = group.map(synth::group);
        let view = RequestView { authority: authority.as_bytes(), group: group.as_deref(), strict: strict.map(str::as_bytes), namespace: None };
        match decide(&t, &view) {
            Decision::Route(r) => {
                let listed = raw.services.get(r.service).and_then(|s| s.clusters.get(r.serving));
                prop_assert_eq!(listed.map(String::as_str), Some(r.cluster));
                prop_assert_eq!(r.fallback, Some(r.serving) != group.as_deref() && group.is_some());
            }
            Decision::FailFast(f) => {
                // only where the group has no cluster of its own
                let own = group.as_ref().and_then(|g| raw.services.get(f.service)?.clusters.get(g));
                prop_assert!(group.is_some() && own.is_none() && service < services);
            }
            Decision::PassThrough => prop_assert!(service >= services, "svc-{} is in the table", service),
        }
    }
}
