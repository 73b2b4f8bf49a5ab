//! Table-driven tests of the request pipeline: group sources and their
//! order, trust, injection, sanitising, and the exact header edits.

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

use super::*;
use crate::{Limits, Settings};

fn settings(extra: &str) -> Settings {
    let json = format!(
        r#"{{ {extra} "table": {{"inline": {{"groups": {{"f1": {{}}}}, "services": {{
            "svc": {{"hosts": ["svc"], "clusters": {{"base": "svc-base", "f1": "svc-f1"}}}}}}}}}}}}"#
    );
    Settings::from_json(json.as_bytes()).unwrap()
}

fn table(s: &Settings) -> &Table {
    match &s.source {
        crate::Source::Inline(t) => t,
        _ => unreachable!(),
    }
}

fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![(":authority".to_owned(), b"svc".to_vec()), (":path".to_owned(), b"/".to_vec())];
    h.extend(list.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())));
    h
}

fn show(edits: &[Edit]) -> Vec<String> {
    edits
        .iter()
        .map(|e| match e {
            Edit::Set(k, v) => format!("set {k}: {}", String::from_utf8_lossy(v)),
            Edit::Add(k, v) => format!("add {k}: {}", String::from_utf8_lossy(v)),
            Edit::Remove(k) => format!("remove {k}"),
        })
        .collect()
}

/// (group, source, invalid count, edits) for a request.
fn run(s: &Settings, list: &[(&str, &str)], peer: Option<&str>) -> (String, String, u32, Vec<String>) {
    let h = headers(list);
    let inc = scan(&h, s, Peer { ip: peer.map(|p| p.parse().unwrap()) });
    let decision = inc.decide(table(s));
    let group = inc.group.map_or("-".to_owned(), |g| g.to_string());
    (group, inc.source.describe(), inc.invalid, show(&inc.edits(Some(&decision), s)))
}

const ROUTE_BASE: [&str; 2] = ["set x-isogroup-cluster: svc-base", "set x-isogroup-target: base"];
const ROUTE_F1: [&str; 2] = ["set x-isogroup-cluster: svc-f1", "set x-isogroup-target: f1"];

fn with(first: &[&str], route: [&str; 2]) -> Vec<String> {
    first.iter().copied().chain(route).map(String::from).collect()
}

#[test]
fn mesh_mode_sources_and_edits() {
    let s = settings("");
    let many = format!("isogroup=f1,{}", "k=v,".repeat(200));
    let long = format!("isogroup=f1,pad={}", "x".repeat(9000));
    let many_members = [("baggage", many.as_str())];
    let too_long = [("baggage", long.as_str())];
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str, u32, Vec<String>);
    let cases: Vec<Case> = vec![
        (&[], "-", "none", 0, with(&[], ROUTE_BASE)),
        (&[("x-isogroup", "f1")], "f1", "header", 0, with(&[], ROUTE_F1)),
        (&[("baggage", "a=1, isogroup=f1")], "f1", "baggage", 0, with(&[], ROUTE_F1)),
        // the header wins; baggage is not even parsed
        (&[("x-isogroup", "f1"), ("baggage", "isogroup=BAD")], "f1", "header", 0, with(&[], ROUTE_F1)),
        // invalid header: skipped, counted, stripped; baggage found next
        (
            &[("x-isogroup", "F1"), ("baggage", "isogroup=f1")],
            "f1",
            "baggage",
            1,
            with(&["remove x-isogroup"], ROUTE_F1),
        ),
        // invalid then valid header values: the valid one is kept alone
        (&[("x-isogroup", "F1"), ("x-isogroup", "f1")], "f1", "header", 1, with(&["set x-isogroup: f1"], ROUTE_F1)),
        // invalid baggage member: stripped, other members kept
        (
            &[("baggage", "a=1,isogroup=BAD;p,b=2")],
            "-",
            "none",
            1,
            with(&["remove baggage", "add baggage: a=1,b=2"], ROUTE_BASE),
        ),
        // client-sent routing headers are overwritten by the route
        (&[("x-isogroup-cluster", "evil"), ("x-isogroup-target", "evil")], "-", "none", 0, with(&[], ROUTE_BASE)),
        // baggage over the limits is not searched (counted, forwarded as is)
        (&many_members, "-", "none", 1, with(&[], ROUTE_BASE)),
        (&too_long, "-", "none", 1, with(&[], ROUTE_BASE)),
        // the cookie counts only in edge mode
        (&[("cookie", "isogroup=f1")], "-", "none", 0, with(&[], ROUTE_BASE)),
    ];
    for (list, group, source, invalid, edits) in cases {
        assert_eq!(run(&s, list, None), (group.to_owned(), source.to_owned(), invalid, edits), "{list:?}");
    }
}

#[test]
fn a_routing_header_can_be_left_unwritten_and_is_still_stripped() {
    let s = settings(r#""target_header": null,"#);
    assert_eq!(run(&s, &[("x-isogroup", "f1")], None).3, ["set x-isogroup-cluster: svc-f1"]);
    assert_eq!(
        run(&s, &[("x-isogroup-target", "evil")], None).3,
        ["set x-isogroup-cluster: svc-base", "remove x-isogroup-target"]
    );
}

#[test]
fn sanitises_pass_through_requests() {
    let s = settings("");
    let h = vec![
        (":authority".to_owned(), b"elsewhere".to_vec()),
        ("x-isogroup-cluster".to_owned(), b"evil".to_vec()),
        ("x-isogroup-target".to_owned(), b"evil".to_vec()),
    ];
    let inc = scan(&h, &s, Peer::default());
    let d = inc.decide(table(&s));
    assert_eq!(d, Decision::PassThrough);
    assert_eq!(show(&inc.edits(Some(&d), &s)), ["remove x-isogroup-cluster", "remove x-isogroup-target"]);
    // before any table arrives, too
    assert_eq!(show(&inc.edits(None, &s)), ["remove x-isogroup-cluster", "remove x-isogroup-target"]);
}

#[test]
fn workload_group_is_stamped_when_none_is_carried() {
    let s = settings(r#""workload_group": "f1","#);
    assert_eq!(
        run(&s, &[("baggage", "a=1")], None),
        ("f1".into(), "workload".into(), 0, with(&["set x-isogroup: f1", "set baggage: a=1,isogroup=f1"], ROUTE_F1))
    );
    // a carried group wins over the workload's
    assert_eq!(run(&s, &[("x-isogroup", "base")], None).1, "header");
    let no_baggage = settings(r#""workload_group": "f1", "inject_baggage": false,"#);
    assert_eq!(run(&no_baggage, &[], None).3, with(&["set x-isogroup: f1"], ROUTE_F1));
}

const EDGE: &str = r#""edge": {"trusted_cidrs": ["10.0.0.0/8"], "default_group": null, "rules": [
    {"header": "x-user", "values": ["alice"], "group": "f1"},
    {"source_cidrs": ["192.0.2.0/24"], "group": "f1"}]},"#;

#[test]
fn edge_mode_trust_rules_and_injection() {
    let s = settings(EDGE);
    let trusted = Some("10.1.2.3");
    let untrusted = Some("203.0.113.5");
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>, &'a str, &'a str, Vec<String>);
    let cases: Vec<Case> = vec![
        // untrusted: own group, baggage member, cookie and strict header removed, then the rules
        (
            &[
                ("x-isogroup", "f1"),
                ("baggage", "a=1,isogroup=f1"),
                ("cookie", "k=v; isogroup=f1"),
                ("x-isogroup-strict", "*"),
            ],
            untrusted,
            "-",
            "none",
            with(
                &[
                    "remove x-isogroup",
                    "remove baggage",
                    "add baggage: a=1",
                    "remove cookie",
                    "add cookie: k=v",
                    "remove x-isogroup-strict",
                ],
                ROUTE_BASE,
            ),
        ),
        (
            &[("x-isogroup", "base"), ("x-user", "alice")],
            untrusted,
            "f1",
            "edge rule 0",
            with(&["set x-isogroup: f1", "set baggage: isogroup=f1"], ROUTE_F1),
        ),
        (
            &[],
            Some("192.0.2.1"),
            "f1",
            "edge rule 1",
            with(&["set x-isogroup: f1", "set baggage: isogroup=f1"], ROUTE_F1),
        ),
        // trusted: its own group wins over the rules, nothing stripped or injected
        (&[("x-isogroup", "base"), ("x-user", "alice")], trusted, "base", "header", with(&[], ROUTE_BASE)),
        // trusted cookie: adopted and stamped on for later hops
        (
            &[("cookie", "isogroup=f1")],
            trusted,
            "f1",
            "cookie",
            with(&["set x-isogroup: f1", "set baggage: isogroup=f1"], ROUTE_F1),
        ),
        // invalid trusted cookie: counted and stripped
        (
            &[("cookie", "isogroup=F1; k=v")],
            trusted,
            "-",
            "none",
            with(&["remove cookie", "add cookie: k=v"], ROUTE_BASE),
        ),
        // no peer address: untrusted
        (&[("x-isogroup", "f1")], None, "-", "none", with(&["remove x-isogroup"], ROUTE_BASE)),
    ];
    for (list, peer, group, source, edits) in cases {
        let (g, src, _, e) = run(&s, list, peer);
        assert_eq!((g.as_str(), src.as_str(), e), (group, source, edits), "{list:?} from {peer:?}");
    }
    let inc_headers = headers(&[]);
    assert!(!scan(&inc_headers, &s, Peer { ip: untrusted.map(|p| p.parse().unwrap()) }).trusted);
    assert!(scan(&inc_headers, &s, Peer { ip: trusted.map(|p| p.parse().unwrap()) }).trusted);
    let with_default = settings(r#""edge": {"default_group": "f1"},"#);
    assert_eq!(run(&with_default, &[], None).1, "edge default");
}

#[test]
fn trace_ids_for_the_assist() {
    let s = settings(r#""propagation_assist": {"trace_headers": ["x-b3-traceid", "traceparent"]},"#);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let h = headers(&[("traceparent", tp), ("x-b3-traceid", "b3id"), ("x-isogroup", "f1")]);
    let inc = scan(&h, &s, Peer::default());
    assert_eq!(inc.trace_id, Some(&b"b3id"[..]), "the first configured header wins");
    assert_eq!(inc.remember().map(|(t, g)| (t.to_vec(), g.to_string())), Some((b"b3id".to_vec(), "f1".to_owned())));
    let h = headers(&[("traceparent", tp)]);
    let mut inc = scan(&h, &s, Peer::default());
    assert_eq!(inc.trace_id, Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..]));
    assert!(inc.remember().is_none(), "no group: nothing to remember");
    inc.adopt(GroupName::new(b"f1").unwrap(), GroupSource::Assist);
    let d = inc.decide(table(&s));
    assert_eq!(show(&inc.edits(Some(&d), &s)), with(&["set x-isogroup: f1", "set baggage: isogroup=f1"], ROUTE_F1));
    // without the assist configured, no trace id is read
    let plain = settings("");
    assert_eq!(scan(&h, &plain, Peer::default()).trace_id, None);
}

#[test]
fn baggage_limits_are_inclusive() {
    let limits = Limits::default();
    let padded = |len: usize| format!("isogroup=f1,pad={}", "x".repeat(len - "isogroup=f1,pad=".len()));
    let members = |n: usize| format!("isogroup=f1{}", ",k=v".repeat(n - 1));
    let s = settings("");
    // (baggage, group, invalid count): at a limit it is searched, one over it is not
    let cases = [
        (padded(limits.max_baggage_bytes), "f1", 0),
        (padded(limits.max_baggage_bytes + 1), "-", 1),
        (members(limits.max_baggage_members), "f1", 0),
        (members(limits.max_baggage_members + 1), "-", 1),
    ];
    for (baggage, group, invalid) in &cases {
        let (g, _, n, _) = run(&s, &[("baggage", baggage)], None);
        assert_eq!((g.as_str(), n), (*group, *invalid), "{} bytes", baggage.len());
    }
    // the limits are the plugin's to set
    let tight = settings(r#""limits": {"max_baggage_members": 2, "max_baggage_bytes": 20},"#);
    assert_eq!(run(&tight, &[("baggage", "a=1,isogroup=f1")], None).0, "f1");
    assert_eq!(run(&tight, &[("baggage", "a=1,b=2,isogroup=f1")], None).0, "-");
    assert_eq!(run(&tight, &[("baggage", "isogroup=f1,long=xxx")], None).0, "f1", "20 bytes");
    assert_eq!(run(&tight, &[("baggage", "isogroup=f1,long=xxxx")], None).0, "-", "21 bytes");
}
