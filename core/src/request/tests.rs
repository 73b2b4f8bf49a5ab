//! Table-driven tests of the request pipeline: group sources and their
//! order, trust, injection, sanitising, and the exact header edits.

#[allow(unused_imports)]
use crate::prelude::*;

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
    let inc = scan(&h, s, Peer { ip: peer.map(|p| p.parse().unwrap()), ..Peer::default() }, Some(table(s)));
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
    assert_eq!(
        run(&s, &[("x-isogroup", "f1")], None).3,
        ["set x-isogroup-cluster: svc-f1", "remove x-isogroup-target"]
    );
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
    let inc = scan(&h, &s, Peer::default(), None);
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
    assert!(
        !scan(&inc_headers, &s, Peer { ip: untrusted.map(|p| p.parse().unwrap()), ..Peer::default() }, None).trusted
    );
    assert!(scan(&inc_headers, &s, Peer { ip: trusted.map(|p| p.parse().unwrap()), ..Peer::default() }, None).trusted);
    let with_default = settings(r#""edge": {"default_group": "f1"},"#);
    assert_eq!(run(&with_default, &[], None).1, "edge default");
}

#[test]
fn trace_ids_for_the_assist() {
    let s = settings(r#""propagation_assist": {"trace_headers": ["x-b3-traceid", "traceparent"]},"#);
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let h = headers(&[("traceparent", tp), ("x-b3-traceid", "b3id"), ("x-isogroup", "f1")]);
    let inc = scan(&h, &s, Peer::default(), None);
    assert_eq!(inc.trace_id, Some(&b"b3id"[..]), "the first configured header wins");
    assert_eq!(inc.remember().map(|(t, g)| (t.to_vec(), g.to_string())), Some((b"b3id".to_vec(), "f1".to_owned())));
    let h = headers(&[("traceparent", tp)]);
    let mut inc = scan(&h, &s, Peer::default(), None);
    assert_eq!(inc.trace_id, Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..]));
    assert!(inc.remember().is_none(), "no group: nothing to remember");
    inc.adopt(GroupName::new(b"f1").unwrap(), GroupSource::Assist);
    let d = inc.decide(table(&s));
    assert_eq!(show(&inc.edits(Some(&d), &s)), with(&["set x-isogroup: f1", "set baggage: isogroup=f1"], ROUTE_F1));
    // without the assist configured, no trace id is read
    let plain = settings("");
    assert_eq!(scan(&h, &plain, Peer::default(), None).trace_id, None);
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

#[test]
fn several_baggage_headers() {
    let s = settings("");
    let stamping = settings(r#""workload_group": "f1","#);
    let edge = settings(EDGE);
    let long = format!("isogroup=base,pad={}", "x".repeat(9000));
    type Case<'a> = (&'a Settings, Vec<(&'a str, &'a str)>, Option<&'a str>, &'a str, u32, Vec<String>);
    let cases: Vec<Case> = vec![
        // the member may be in any of them
        (&s, vec![("baggage", "a=1"), ("baggage", "isogroup=f1")], None, "f1", 0, with(&[], ROUTE_F1)),
        // the first valid one wins
        (&s, vec![("baggage", "isogroup=f1"), ("baggage", "isogroup=base")], None, "f1", 0, with(&[], ROUTE_F1)),
        // an invalid member is skipped, counted and stripped from its own header only
        (
            &s,
            vec![("baggage", "isogroup=BAD,a=1"), ("baggage", "b=2,isogroup=f1")],
            None,
            "f1",
            1,
            with(&["remove baggage", "add baggage: a=1", "add baggage: b=2,isogroup=f1"], ROUTE_F1),
        ),
        // one over the limits is not searched, the next one is
        (&s, vec![("baggage", long.as_str()), ("baggage", "isogroup=f1")], None, "f1", 1, with(&[], ROUTE_F1)),
        // a stamped group is merged into one header, every other member kept
        (
            &stamping,
            vec![("baggage", "a=1"), ("baggage", "b=2;p")],
            None,
            "f1",
            0,
            with(&["set x-isogroup: f1", "set baggage: a=1,b=2;p,isogroup=f1"], ROUTE_F1),
        ),
        // an untrusted edge peer's member is removed from every header
        (
            &edge,
            vec![("baggage", "isogroup=f1,a=1"), ("baggage", "b=2, isogroup=f1")],
            Some("203.0.113.5"),
            "-",
            0,
            with(&["remove baggage", "add baggage: a=1", "add baggage: b=2"], ROUTE_BASE),
        ),
    ];
    for (s, list, peer, group, invalid, edits) in cases {
        let (g, _, n, e) = run(s, &list, peer);
        assert_eq!((g.as_str(), n, e), (group, invalid, edits), "{list:?}");
    }
}

#[test]
fn a_custom_or_null_baggage_key() {
    let lane = settings(r#""baggage_key": "lane","#);
    let lane_stamping = settings(r#""baggage_key": "lane", "workload_group": "f1","#);
    let off = settings(r#""baggage_key": null,"#);
    let off_stamping = settings(r#""baggage_key": null, "workload_group": "f1","#);
    type Case<'a> = (&'a Settings, &'a str, &'a str, &'a str, u32, Vec<String>);
    let cases: Vec<Case> = vec![
        // a custom key is read; the default key then means nothing
        (&lane, "a=1,lane=f1", "f1", "baggage", 0, with(&[], ROUTE_F1)),
        (&lane, "isogroup=f1", "-", "none", 0, with(&[], ROUTE_BASE)),
        (
            &lane,
            "lane=BAD,isogroup=x",
            "-",
            "none",
            1,
            with(&["remove baggage", "add baggage: isogroup=x"], ROUTE_BASE),
        ),
        // … and written
        (
            &lane_stamping,
            "isogroup=x",
            "f1",
            "workload",
            0,
            with(&["set x-isogroup: f1", "set baggage: isogroup=x,lane=f1"], ROUTE_F1),
        ),
        // null: baggage is neither read, nor cleaned, nor written
        (&off, "isogroup=f1", "-", "none", 0, with(&[], ROUTE_BASE)),
        (&off, "isogroup=BAD", "-", "none", 0, with(&[], ROUTE_BASE)),
        (&off_stamping, "a=1", "f1", "workload", 0, with(&["set x-isogroup: f1"], ROUTE_F1)),
    ];
    for (s, baggage, group, source, invalid, edits) in cases {
        let got = run(s, &[("baggage", baggage)], None);
        assert_eq!(got, (group.to_owned(), source.to_owned(), invalid, edits), "{:?} {baggage:?}", s.baggage_key);
    }
}

#[test]
fn failfast_status_and_reply() {
    let body = r#"{"error":"isogroup_unavailable","service":"svc","group":"f2","reason":"strict_request"}"#;
    // (config, extra header, status, gRPC)
    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, u16, bool);
    let cases: &[Case] = &[
        ("", None, 503, false),
        (r#""failfast_status": 429,"#, None, 429, false),
        (r#""failfast_status": 599,"#, None, 599, false),
        // gRPC: the filter answers with grpc-status 14; the reply says so
        (r#""failfast_status": 429,"#, Some(("content-type", "application/grpc+proto")), 429, true),
    ];
    for (extra, header, status, grpc) in cases {
        let s = settings(extra);
        // f2 has no instance of svc and the request asks for no fallback
        let mut list = vec![("x-isogroup", "f2"), ("x-isogroup-strict", "svc")];
        list.extend(header);
        let h = headers(&list);
        let inc = scan(&h, &s, Peer::default(), None);
        let Decision::FailFast(f) = inc.decide(table(&s)) else { panic!("{extra}: not a fail-fast") };
        let reply = inc.local_reply(&f, &s);
        let headers = vec![("x-isogroup-failfast", "svc".to_owned()), ("content-type", "application/json".to_owned())];
        let want = LocalReply { status: *status, grpc: *grpc, service: "svc".into(), headers, body: body.into() };
        assert_eq!(reply, want, "{extra} {header:?}");
    }
}

#[test]
fn served_annotation() {
    let on = settings("");
    let off = settings(r#""annotate_response": false,"#);
    let edge = settings(EDGE);
    // (config, headers, authority, peer, annotation)
    type Case<'a> = (&'a Settings, &'a [(&'a str, &'a str)], &'a str, Option<&'a str>, Option<&'a str>);
    let cases: &[Case] = &[
        (&on, &[("x-isogroup", "f1")], "svc", None, Some("svc=f1")),
        (&on, &[], "svc", None, Some("svc=base")),
        (&on, &[("x-isogroup", "f2")], "svc", None, Some("svc=base;fallback")),
        (&off, &[("x-isogroup", "f1")], "svc", None, None),
        (&off, &[("x-isogroup", "f2")], "svc", None, None),
        // nothing routed, nothing served
        (&on, &[("x-isogroup", "f1")], "elsewhere", None, None),
        (&on, &[("x-isogroup", "f2"), ("x-isogroup-strict", "*")], "svc", None, None),
        // isogroup response headers never go back to an untrusted peer
        (&edge, &[("x-user", "alice")], "svc", Some("203.0.113.5"), None),
        (&edge, &[("x-user", "alice")], "svc", Some("10.1.2.3"), Some("svc=f1")),
    ];
    for (s, list, authority, peer, want) in cases {
        let mut h = headers(list);
        h[0].1 = authority.as_bytes().to_vec();
        let inc = scan(&h, s, Peer { ip: peer.map(|p| p.parse().unwrap()), ..Peer::default() }, None);
        let d = inc.decide(table(s));
        let value = inc.served(Some(&d), s).map(|v| {
            let mut out = b"kept ".to_vec(); // appended: what the buffer held stays
            v.write(table(s), &mut out);
            String::from_utf8(out).unwrap()
        });
        assert_eq!(value, want.map(|w| format!("kept {w}")), "{list:?} {authority} {peer:?}");
        assert_eq!(inc.served(None, s), None, "no table: nothing served");
    }
}

#[test]
fn injection_on_a_pass_through_and_before_any_table() {
    let stamp = ["set x-isogroup: f1", "set baggage: isogroup=f1"];
    // (config, headers, peer, edits for a service not in the table, and with no table)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (r#""workload_group": "f1","#, &[], None, stamp.to_vec()),
        (
            r#""workload_group": "f1","#,
            &[("baggage", "a=1")],
            None,
            vec!["set x-isogroup: f1", "set baggage: a=1,isogroup=f1"],
        ),
        (r#""workload_group": "f1", "inject_baggage": false,"#, &[], None, vec!["set x-isogroup: f1"]),
        // a carried group is not re-stamped
        (r#""workload_group": "f1","#, &[("x-isogroup", "base")], None, vec![]),
        // edge rules stamp, and an untrusted peer's own group is still removed
        (EDGE, &[("x-user", "alice")], Some("203.0.113.5"), stamp.to_vec()),
        (
            EDGE,
            &[("x-isogroup", "base"), ("x-isogroup-strict", "*")],
            Some("203.0.113.5"),
            vec!["remove x-isogroup", "remove x-isogroup-strict"],
        ),
        // routing headers are stripped as always (whether sent or not: below)
        (r#""workload_group": "f1","#, &[("x-isogroup-cluster", "evil")], None, stamp.to_vec()),
    ];
    for (extra, list, peer, want) in cases {
        let want = [&want[..], &["remove x-isogroup-cluster", "remove x-isogroup-target"]].concat();
        let s = settings(extra);
        let mut h = headers(list);
        h[0].1 = b"elsewhere:8080".to_vec();
        let inc = scan(&h, &s, Peer { ip: peer.map(|p| p.parse().unwrap()), ..Peer::default() }, None);
        let d = inc.decide(table(&s));
        assert_eq!(d, Decision::PassThrough, "{extra}");
        assert_eq!(show(&inc.edits(Some(&d), &s)), want, "pass-through: {extra} {list:?}");
        // before the first table: the same edits (and for a service the table would know)
        assert_eq!(show(&inc.edits(None, &s)), want, "no table: {extra} {list:?}");
        let mut known = h.clone();
        known[0].1 = b"svc".to_vec();
        assert_eq!(
            show(
                &scan(&known, &s, Peer { ip: peer.map(|p| p.parse().unwrap()), ..Peer::default() }, None)
                    .edits(None, &s)
            ),
            want
        );
    }
}
