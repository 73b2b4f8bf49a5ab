//! The second round's edge order: own group (trusted), lane cookie (with
//! `join_path`), source bindings and table rules (with `runtime`), plugin
//! rules, `default_group`; `group_from_value`; the join reply.

#[allow(unused_imports)]
use crate::prelude::*;

use super::*;
use crate::{Limits, Settings};

/// The table: lanes `lane-a`, `lane-b`, `team` (only in `groups`); bindings
/// and rules at runtime.
const TABLE: &str = r#"{"groups": {"team": {}}, "services": {
    "svc": {"hosts": ["svc"], "clusters": {"base": "svc-base", "lane-a": "svc-a", "lane-b": "svc-b"}}},
  "sources": [
    {"cidr": "127.0.0.2", "group": "lane-a", "expires_at": 1000},
    {"cidr": "127.0.0.0/24", "group": "lane-b"},
    {"cidr": "192.0.2.9", "group": "gone-lane"}],
  "rules": [
    {"header": "x-team", "group_from_value": true},
    {"header": "x-rt", "values": ["1"], "group": "lane-b"}]}"#;

fn table() -> Table {
    Table::from_json(TABLE.as_bytes(), "base", &Limits::default()).unwrap()
}

fn settings(edge: &str) -> Settings {
    Settings::from_json(format!(r#"{{"edge": {edge}}}"#).as_bytes()).unwrap()
}

const FULL: &str = r#"{"trusted_cidrs": ["10.0.0.0/8"], "runtime": true, "join_path": "/.isogroup/join",
    "default_group": "team", "rules": [
    {"header": "x-user", "values": ["alice"], "group": "lane-a"},
    {"cookie": "pick", "prefix": "lane-", "group_from_value": true}]}"#;

fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![(":authority".to_owned(), b"svc".to_vec()), (":path".to_owned(), b"/".to_vec())];
    h.extend(list.iter().map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec())));
    h
}

/// (group, where it came from, the forwarded cookie headers) for a request.
fn pick(s: &Settings, t: Option<&Table>, list: &[(&str, &str)], peer: &str, now: u64) -> (String, String, Vec<String>) {
    let h = headers(list);
    let inc = scan(&h, s, Peer { ip: peer.parse().ok(), now_s: now }, t);
    let cookies = inc
        .edits(None, s)
        .iter()
        .filter_map(|e| match e {
            Edit::Remove("cookie") => Some("-".to_owned()),
            Edit::Add("cookie", v) => Some(String::from_utf8_lossy(v).into_owned()),
            _ => None,
        })
        .collect();
    (inc.group.map_or("-".to_owned(), |g| g.to_string()), inc.source.describe(), cookies)
}

#[test]
fn first_hit_wins_in_spec_order() {
    let t = table();
    let s = settings(FULL);
    let trusted = "10.0.0.1";
    let other = "203.0.113.1";
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u64, (&'a str, &'a str));
    let cases: Vec<Case> = vec![
        // 1. a trusted peer's own group beats everything after it
        (&[("x-isogroup", "lane-b"), ("cookie", "isogroup-lane=lane-a")], trusted, 0, ("lane-b", "header")),
        (&[("cookie", "isogroup=lane-b; isogroup-lane=lane-a")], trusted, 0, ("lane-b", "cookie")),
        // an untrusted peer's own group is not taken, its lane cookie is
        (&[("x-isogroup", "lane-b"), ("cookie", "isogroup-lane=lane-a")], other, 0, ("lane-a", "lane cookie")),
        // 2. the lane cookie beats bindings and rules
        (&[("cookie", "isogroup-lane=lane-b"), ("x-user", "alice")], "127.0.0.2", 0, ("lane-b", "lane cookie")),
        // an unknown lane cookie is skipped: the binding answers
        (&[("cookie", "isogroup-lane=nope")], "127.0.0.2", 0, ("lane-a", "source binding 0")),
        // 3. bindings: longest prefix, expired ones ignored by the clock given
        (&[("x-user", "alice")], "127.0.0.2", 999, ("lane-a", "source binding 0")),
        (&[], "127.0.0.2", 1000, ("lane-b", "source binding 1")),
        (&[], "127.0.0.7", 0, ("lane-b", "source binding 1")),
        // a binding to a lane the table does not know routes like an unknown lane
        (&[], "192.0.2.9", 0, ("gone-lane", "source binding 2")),
        // 4. the plugin's rules, then 5. the table's rules
        (&[("x-user", "alice"), ("x-rt", "1")], other, 0, ("lane-a", "edge rule 0")),
        (&[("cookie", "pick=lane-b"), ("x-rt", "1")], other, 0, ("lane-b", "edge rule 1")),
        // group_from_value: only a group the table knows (and the rule's own test)
        (&[("cookie", "pick=lane-zzz"), ("x-rt", "1")], other, 0, ("lane-b", "table rule 1")),
        (&[("x-team", "team")], other, 0, ("team", "table rule 0")),
        (&[("x-team", " lane-a ")], other, 0, ("lane-a", "table rule 0")),
        (&[("x-team", "nope")], other, 0, ("team", "edge default")),
        (&[("x-team", "Bad!")], other, 0, ("team", "edge default")),
        // 6. default_group
        (&[], other, 0, ("team", "edge default")),
    ];
    for (list, peer, now, want) in cases {
        let (g, src, _) = pick(&s, Some(&t), list, peer, now);
        assert_eq!((g.as_str(), src.as_str()), want, "{list:?} from {peer} at {now}");
    }
}

#[test]
fn runtime_off_ignores_bindings_and_table_rules() {
    let t = table();
    let pinned = settings(r#"{"rules": [{"header": "x-team", "group_from_value": true}]}"#);
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, (&'a str, &'a str));
    let cases: &[Case] = &[
        (&[], "127.0.0.2", ("-", "none")),
        (&[("x-rt", "1")], "203.0.113.1", ("-", "none")),
        // the plugin's own group_from_value rule still works
        (&[("x-team", "lane-b"), ("x-rt", "1")], "127.0.0.2", ("lane-b", "edge rule 0")),
        // without join_path the lane cookie is not ours: neither read nor removed
        (&[("cookie", "isogroup-lane=lane-a")], "127.0.0.2", ("-", "none")),
    ];
    for (list, peer, want) in cases {
        let (g, src, cookies) = pick(&pinned, Some(&t), list, peer, 0);
        assert_eq!((g.as_str(), src.as_str()), *want, "{list:?} from {peer}");
        assert!(cookies.is_empty(), "{cookies:?}");
    }
    // the peer is read only when something needs it
    let edge = |s: &Settings| s.edge.as_ref().unwrap().needs_peer(Some(&t));
    assert!(!edge(&pinned));
    assert!(edge(&settings(r#"{"runtime": true}"#)));
    let empty =
        Table::from_json(br#"{"rules":[{"header":"x","values":["a"],"group":"b"}]}"#, "base", &Limits::default())
            .unwrap();
    assert!(!settings(r#"{"runtime": true}"#).edge.as_ref().unwrap().needs_peer(Some(&empty)));
    assert!(!settings(r#"{"runtime": true}"#).edge.as_ref().unwrap().needs_peer(None));
    let by_address =
        Table::from_json(br#"{"rules":[{"source_cidrs":["10.0.0.0/8"],"group":"b"}]}"#, "base", &Limits::default())
            .unwrap();
    assert!(settings(r#"{"runtime": true}"#).edge.as_ref().unwrap().needs_peer(Some(&by_address)));
}

#[test]
fn lane_cookie_values_the_table_does_not_know_are_removed() {
    let t = table();
    let s = settings(FULL);
    let other = "203.0.113.1";
    // (cookie header, group, source, forwarded cookie edits)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("isogroup-lane=lane-a; k=v", "lane-a", "lane cookie", &[]),
        ("k=v; isogroup-lane=gone", "team", "edge default", &["-", "k=v"]),
        ("isogroup-lane=Bad", "team", "edge default", &["-"]),
        ("isogroup-lane=", "team", "edge default", &["-"]),
        // an untrusted peer's own cookie goes too, in the same rewrite
        ("isogroup=lane-b; isogroup-lane=gone; k=v", "team", "edge default", &["-", "k=v"]),
        // beside a good value, a bad one still removes the cookie (the group
        // travels on in the stamped header)
        ("isogroup-lane=lane-a; isogroup-lane=gone", "lane-a", "lane cookie", &["-"]),
        ("isogroup-lane=Bad; k=v; isogroup-lane=lane-b", "lane-b", "lane cookie", &["-", "k=v"]),
    ];
    for (cookie, group, source, edits) in cases {
        let (g, src, cookies) = pick(&s, Some(&t), &[("cookie", cookie)], other, 0);
        assert_eq!(
            (g.as_str(), src.as_str(), cookies),
            (*group, *source, edits.iter().map(|e| e.to_string()).collect()),
            "{cookie}"
        );
    }
    // before any table: a valid lane cookie is neither taken nor removed
    let (g, _, cookies) = pick(&s, None, &[("cookie", "isogroup-lane=lane-a")], other, 0);
    assert_eq!((g.as_str(), cookies.len()), ("team", 0));
}

#[test]
fn the_join_path_is_answered_for_any_peer() {
    let t = table();
    let s = settings(FULL);
    let h = vec![
        (":method".to_owned(), b"GET".to_vec()),
        (":path".to_owned(), b"/.isogroup/join?lane=lane-b&return=/shop".to_vec()),
        (":authority".to_owned(), b"gw".to_vec()),
    ];
    let inc = scan(&h, &s, Peer { ip: "203.0.113.1".parse().ok(), now_s: 0 }, Some(&t));
    let reply = inc.join(&s, Some(&t)).unwrap();
    assert_eq!(reply.status, 302);
    assert_eq!(
        reply.headers[..2],
        [("location", "/shop".to_owned()), ("set-cookie", "isogroup-lane=lane-b; Path=/; SameSite=Lax".to_owned())]
    );
    // another path, or no join_path configured: not a join
    let other = headers(&[]);
    assert!(scan(&other, &s, Peer::default(), Some(&t)).join(&s, Some(&t)).is_none());
    let off = settings(r#"{"runtime": true}"#);
    assert!(scan(&h, &off, Peer::default(), Some(&t)).join(&off, Some(&t)).is_none());
}

#[test]
fn edge_config_errors() {
    let cases: &[(&str, &str)] = &[
        (r#"{"join_path": "join"}"#, r#"edge.join_path: "join" is not an absolute path"#),
        (r#"{"join_path": "//x"}"#, r#"edge.join_path: "//x" is not an absolute path"#),
        (r#"{"join_path": "/j?x=1"}"#, r#"edge.join_path: "/j?x=1" is not an absolute path"#),
        (r#"{"runtime": "yes"}"#, "edge.runtime: invalid type"),
        (
            r#"{"rules": [{"header": "x", "group_from_value": true, "group": "g"}]}"#,
            "edge.rules[0].group: group and group_from_value exclude each other",
        ),
        (r#"{"rules": [{"header": "x", "values": ["a"], "extra": 1}]}"#, "edge.rules[0].extra: unknown field `extra`"),
    ];
    for (edge, want) in cases {
        let err = Settings::from_json(format!(r#"{{"edge": {edge}}}"#).as_bytes()).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.starts_with(want)), "{edge}: {err:?}");
    }
}
