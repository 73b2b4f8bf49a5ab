//! Table-driven tests of every decision step and every validation error.
//! They run natively and, compiled to wasm32-wasip1, under Node.js's WASI.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::*;

const TABLE: &str = r#"{
  "version": 42,
  "groups": {
    "feature-1": { "fallback": ["team-a"] },
    "team-a":    { "fallback": [] },
    "team-s":    { "mode": "strict" },
    "deep":      { "fallback": ["mid", "other"] },
    "mid":       { "fallback": ["team-a"] },
    "other":     {},
    "lane":      { "fallback": ["team-s"] }
  },
  "services": {
    "reviews": {
      "hosts": ["reviews", "reviews.default.svc.cluster.local"],
      "clusters": {
        "base":      "reviews-base",
        "feature-1": "reviews-f1",
        "team-s":    "reviews-s"
      }
    },
    "ratings": {
      "hosts": ["ratings"],
      "clusters": { "base": "ratings-base", "team-a": "ratings-a", "other": "ratings-other" }
    },
    "details": {
      "hosts": ["details", "[::1]"],
      "clusters": { "base": "details-base", "other": "details-other" }
    }
  }
}"#;

fn table() -> Table {
    Table::from_json(TABLE.as_bytes(), "base", &Limits::default()).unwrap()
}

/// What a decision comes to, as one comparable string.
fn outcome(d: Decision<'_>) -> String {
    match d {
        Decision::PassThrough => "pass".into(),
        Decision::Route(r) => {
            format!("{}={} via {}{}", r.service, r.serving, r.cluster, if r.fallback { " (fallback)" } else { "" })
        }
        Decision::FailFast(f) => {
            format!("failfast {} {} {}", f.service, f.group, f.reason.as_str())
        }
    }
}

#[test]
fn decisions() {
    let t = table();
    // (authority, group, strict header, expected)
    let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
        // step 2: unknown service passes through, group or not
        ("productpage", None, None, "pass"),
        ("productpage", Some("feature-1"), Some("*"), "pass"),
        ("", None, None, "pass"),
        // no group: base
        ("reviews", None, None, "reviews=base via reviews-base"),
        ("reviews", None, Some("*"), "reviews=base via reviews-base"),
        ("reviews", Some("base"), Some("*"), "reviews=base via reviews-base"),
        // authority normalisation: port, case, trailing dot, IPv6
        ("REVIEWS:9080", Some("feature-1"), None, "reviews=feature-1 via reviews-f1"),
        ("reviews.default.svc.cluster.local.", Some("feature-1"), None, "reviews=feature-1 via reviews-f1"),
        ("[::1]:8080", Some("other"), None, "details=other via details-other"),
        // step 3: own instance
        ("reviews", Some("feature-1"), None, "reviews=feature-1 via reviews-f1"),
        // fallback chain: feature-1 -> team-a -> base
        ("ratings", Some("feature-1"), None, "ratings=team-a via ratings-a (fallback)"),
        ("details", Some("feature-1"), None, "details=base via details-base (fallback)"),
        // depth first: deep -> mid -> team-a before other
        ("ratings", Some("deep"), None, "ratings=team-a via ratings-a (fallback)"),
        ("details", Some("deep"), None, "details=other via details-other (fallback)"),
        // a group the table does not know goes to base
        ("reviews", Some("nobody"), None, "reviews=base via reviews-base (fallback)"),
        // step 4: strict group fails fast, wins over strict_request
        ("ratings", Some("team-s"), None, "failfast ratings team-s strict_group"),
        ("ratings", Some("team-s"), Some("ratings"), "failfast ratings team-s strict_group"),
        ("reviews", Some("team-s"), None, "reviews=team-s via reviews-s"),
        // strict request: listed service, list with spaces, `*`, not listed
        ("ratings", Some("feature-1"), Some("ratings"), "failfast ratings feature-1 strict_request"),
        ("ratings", Some("feature-1"), Some(" details , ratings "), "failfast ratings feature-1 strict_request"),
        ("ratings", Some("feature-1"), Some("*"), "failfast ratings feature-1 strict_request"),
        ("ratings", Some("feature-1"), Some("details"), "ratings=team-a via ratings-a (fallback)"),
        ("reviews", Some("feature-1"), Some("*"), "reviews=feature-1 via reviews-f1"),
        ("reviews", Some("nobody"), Some("reviews"), "failfast reviews nobody strict_request"),
        // only the request's own group's mode matters: a permissive group
        // falling back to a strict one falls back on, past it
        ("reviews", Some("lane"), None, "reviews=team-s via reviews-s (fallback)"),
        ("ratings", Some("lane"), None, "ratings=base via ratings-base (fallback)"),
        ("ratings", Some("lane"), Some("ratings"), "failfast ratings lane strict_request"),
        ("ratings", Some("team-s"), None, "failfast ratings team-s strict_group"),
    ];
    for (authority, group, strict, want) in cases {
        let req = RequestView {
            authority: authority.as_bytes(),
            group: *group,
            strict: strict.map(str::as_bytes),
            namespace: None,
        };
        assert_eq!(outcome(decide(&t, &req)), *want, "{authority:?} {group:?} {strict:?}");
    }
}

#[test]
fn decide_by_service_name() {
    let t = table();
    assert_eq!(
        outcome(decide_service(&t, "ratings", Some("feature-1"), None, None)),
        "ratings=team-a via ratings-a (fallback)"
    );
    assert_eq!(outcome(decide_service(&t, "nope", Some("feature-1"), None, None)), "pass");
}

#[test]
fn compiled_table_facts() {
    let t = table();
    assert_eq!(t.version(), 42);
    assert_eq!(t.service_count(), 3);
    assert_eq!(t.group_name(t.base()), "base");
    assert_eq!(t.services().map(|(_, n)| n).collect::<Vec<_>>(), ["details", "ratings", "reviews"]);
}

#[test]
fn table_base_group_override() {
    let json = r#"{"base_group":"stable","services":{"a":{"hosts":["a"],"clusters":{"stable":"a0"}}}}"#;
    let t = Table::from_json(json.as_bytes(), "base", &Limits::default()).unwrap();
    let req = RequestView { authority: b"a", group: Some("x"), strict: None, namespace: None };
    assert_eq!(outcome(decide(&t, &req)), "a=stable via a0 (fallback)");
}

fn table_error(json: &str, limits: Limits) -> String {
    match Table::from_json(json.as_bytes(), "base", &limits) {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn table_validation_errors() {
    let svc = |clusters: &str| format!(r#"{{"services":{{"reviews":{{"hosts":["reviews"],"clusters":{clusters}}}}}}}"#);
    let groups = |g: &str| {
        format!(r#"{{"groups":{g},"services":{{"a":{{"hosts":["a"],"clusters":{{"base":"a0","x":"ax","y":"ay"}}}}}}}}"#)
    };
    let cases: Vec<(String, &str)> = vec![
        (svc(r#"{"feature-1":"c"}"#), r#"services.reviews.clusters: no cluster for base group "base""#),
        (svc(r#"{"base":"c","Bad":"d"}"#), r#"services.reviews.clusters.Bad: "Bad" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#),
        (svc(r#"{"base":"has space"}"#), r#"services.reviews.clusters.base: "has space" is not a valid cluster name (only printable ASCII without spaces)"#),
        (svc(r#"{"base":""}"#), r#"services.reviews.clusters.base: "" is not a valid cluster name (empty)"#),
        (r#"{"services":{"Reviews":{"hosts":["r"],"clusters":{"base":"c"}}}}"#.into(), r#"services.Reviews: "Reviews" is not a valid service name (lower-case letters, digits, '-' and '.', at most 253)"#),
        (r#"{"services":{"r":{"hosts":[],"clusters":{"base":"c"}}}}"#.into(), "services.r.hosts: the list is empty; a service needs at least one host"),
        (r#"{"services":{"r":{"hosts":["*.r"],"clusters":{"base":"c"}}}}"#.into(), r#"services.r.hosts: "*.r" is not a valid host (a host has no '/' and no wildcard)"#),
        (r#"{"services":{"r":{"hosts":["a b"],"clusters":{"base":"c"}}}}"#.into(), r#"services.r.hosts: "a b" is not a valid host (empty, too long, or not printable ASCII)"#),
        (
            r#"{"services":{"a":{"hosts":["shared"],"clusters":{"base":"c"}},"b":{"hosts":["Shared."],"clusters":{"base":"c"}}}}"#.into(),
            r#"services.b.hosts: host "Shared." already belongs to service "a""#,
        ),
        (groups(r#"{"x":{"mode":"strict","fallback":["y"]}}"#), "groups.x: a strict group cannot have a fallback"),
        (groups(r#"{"base":{"fallback":["x"]}}"#), "groups.base: the base group cannot have a fallback"),
        (groups(r#"{"x":{"fallback":["nope"]}}"#), r#"groups.x.fallback: unknown group "nope" (not in groups, not the base group, not serving any service)"#),
        (groups(r#"{"x":{"fallback":["y"]},"y":{"fallback":["x"]}}"#), "groups.x.fallback: cycle x -> y -> x"),
        (groups(r#"{"x":{"fallback":["x"]}}"#), "groups.x.fallback: cycle x -> x"),
        (groups(r#"{"Bad":{}}"#), r#"groups.Bad: "Bad" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#),
        (groups(r#"{"x":{"mode":"loose"}}"#), "groups.x.mode: unknown variant `loose`, expected `permissive` or `strict` at line 1 column 30"),
        (r#"{"base_group":"Base"}"#.into(), r#"base_group: "Base" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#),
        (r#"{"servicez":{}}"#.into(), "servicez: unknown field `servicez`, expected one of `version`, `epoch`, `base_group`, `groups`, `services`, `sources`, `rules` at line 1 column 11"),
        (r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c"},"port":1}}}"#.into(), "services.r.port: unknown field `port`, expected one of `hosts`, `clusters`, `ports` at line 1 column 62"),
        ("not json".into(), "(document): expected ident at line 1 column 2"),
        (r#"{"version":-1}"#.into(), "version: invalid value: integer `-1`, expected u64 at line 1 column 13"),
        // one document: a doubled or padded body is not half-read
        (r#"{"version":1}{"version":2}"#.into(), "(document): trailing characters at line 1 column 14"),
        ("{} x".into(), "(document): trailing characters at line 1 column 4"),
        ("{} \n".into(), "accepted"),
        // a key that does not parse: the map it is in, never `?`
        ("{\u{0}".into(), "(document): key must be a string at line 1 column 2"),
        (r#"{"services":{"a":{"clusters":{1:"#.into(), "services.a.clusters: key must be a string at line 1 column 31"),
        ("{}".into(), "accepted"),
    ];
    for (json, want) in &cases {
        assert_eq!(table_error(json, Limits::default()), *want, "{json}");
    }
}

#[test]
fn fallback_depth_limit() {
    // g0 -> g1 -> … -> g9: depth 9 from g0
    let mut groups = Vec::new();
    for i in 0..10 {
        let fb = if i < 9 { format!(r#"["g{}"]"#, i + 1) } else { "[]".into() };
        groups.push(format!(r#""g{i}":{{"fallback":{fb}}}"#));
    }
    let json = format!(r#"{{"groups":{{{}}}}}"#, groups.join(","));
    assert_eq!(table_error(&json, Limits::default()), "groups.g0.fallback: chain depth 9 exceeds the limit of 8");
    let deep_ok = Limits { max_fallback_depth: 9, ..Limits::default() };
    assert_eq!(table_error(&json, deep_ok), "accepted");
}

#[test]
fn size_limits() {
    let two = r#"{"groups":{"x":{},"y":{}},"services":{"a":{"hosts":["a"],"clusters":{"base":"c","x":"d"}},"b":{"hosts":["b"],"clusters":{"base":"c"}}}}"#;
    let lim = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        l
    };
    // counted while read: the member past the limit stops the read at its key
    assert_eq!(table_error(two, lim(|l| l.max_services = 1)), "services: 2 exceeds the limit of 1 at line 1 column 93");
    assert_eq!(table_error(two, lim(|l| l.max_groups = 2)), "groups: 3 exceeds the limit of 2");
    assert_eq!(
        table_error(two, lim(|l| l.max_cluster_entries = 2)),
        "services.*.clusters: 3 exceeds the limit of 2 at line 1 column 127"
    );
    assert_eq!(
        table_error(two, lim(|l| l.max_table_bytes = 10)),
        format!("table: {} bytes exceeds the limit of 10", two.len())
    );
    assert_eq!(table_error(two, Limits::default()), "accepted");
    // each limit is inclusive: exactly at it passes
    assert_eq!(table_error(two, lim(|l| l.max_services = 2)), "accepted");
    assert_eq!(table_error(two, lim(|l| l.max_groups = 3)), "accepted");
    assert_eq!(table_error(two, lim(|l| l.max_cluster_entries = 3)), "accepted");
    assert_eq!(table_error(two, Limits { max_table_bytes: two.len(), ..Limits::default() }), "accepted");
    // limits come from the plugin configuration and apply to its inline table
    let config = format!(r#"{{"limits":{{"max_services":1}},"table":{{"inline":{two}}}}}"#);
    assert_eq!(config_error(&config), "table.inline.services: 2 exceeds the limit of 1");
}

/// Tables just over each default limit, built without a 64 MiB document
/// where the count alone decides.
#[test]
fn tables_over_the_default_limits_are_rejected() {
    let limits = Limits::default();
    // 64 MiB of JSON: refused before parsing
    let mut big = vec![b' '; 64 * 1024 * 1024 + 1];
    big[..2].copy_from_slice(b"{}");
    let err = RawTable::from_json(&big, &limits).unwrap_err().to_string();
    assert_eq!(err, "table: 67108865 bytes exceeds the limit of 67108864");
    // 100 000 services
    let mut raw = RawTable::default();
    for i in 0..=100_000 {
        raw.services.insert(format!("s{i}"), RawService::default());
    }
    let err = Table::compile(&raw, "base", &limits).unwrap_err().to_string();
    assert_eq!(err, "services: 100001 exceeds the limit of 100000");
    // 1 000 groups, the base group among them
    let groups = |n: usize| {
        let mut raw = RawTable::default();
        raw.services.insert(
            "a".into(),
            RawService {
                hosts: vec!["a".into()],
                clusters: [("base".into(), "a0".into())].into_iter().collect(),
                ports: vec![],
            },
        );
        for i in 1..n {
            raw.groups.insert(format!("g{i}"), RawGroup::default());
        }
        raw
    };
    assert!(Table::compile(&groups(1_000), "base", &limits).is_ok());
    let err = Table::compile(&groups(1_001), "base", &limits).unwrap_err().to_string();
    assert_eq!(err, "groups: 1001 exceeds the limit of 1000");
    // 1 000 000 cluster entries: 1 001 services of 1 000 groups each would
    // take ~100 MB to build, so the count is checked at the default number
    // here and the mechanism at a small limit in `size_limits`.
    assert_eq!(limits.max_cluster_entries, 1_000_000);
}

fn config_error(json: &str) -> String {
    match Settings::from_json(json.as_bytes()) {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_defaults() {
    let s = Settings::from_json(b"").unwrap();
    assert_eq!(s.group_header, "x-isogroup");
    assert_eq!(s.baggage_key.as_deref(), Some("isogroup"));
    assert_eq!(s.cookie, "isogroup");
    assert_eq!(s.strict_header, "x-isogroup-strict");
    assert_eq!(s.cluster_header, "x-isogroup-cluster");
    assert_eq!(s.target_header, "x-isogroup-target");
    assert!(s.write_cluster_header && s.write_target_header);
    let s = Settings::from_json(br#"{"target_header": null}"#).unwrap();
    assert!(s.write_cluster_header && !s.write_target_header);
    assert_eq!(s.target_header, "x-isogroup-target", "still stripped under its default name");
    assert_eq!(s.base_group, "base");
    assert_eq!(s.workload_group, None);
    assert!(s.inject_baggage && s.annotate_response);
    assert_eq!(s.failfast_status, 503);
    assert_eq!(
        s.limits,
        Limits {
            max_services: 100_000,
            max_groups: 1_000,
            max_cluster_entries: 1_000_000,
            max_table_bytes: 64 * 1024 * 1024,
            max_fallback_depth: 8,
            max_baggage_bytes: 8192,
            max_baggage_members: 180,
        },
        "the SPEC's defaults (and W3C's baggage limits)"
    );
    assert!(matches!(s.source, Source::None));
    let s =
        Settings::from_json(br#"{"baggage_key":null,"table":{"companion":{"cluster":"c","authority":"companion"}}}"#)
            .unwrap();
    assert_eq!(s.baggage_key, None);
    match s.source {
        Source::Companion(c) => assert_eq!((c.path.as_str(), c.wait_s), ("/v1/table", 25)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_validation_errors() {
    let cases: &[(&str, &str)] = &[
        (r#"{"group_header":"X-Group"}"#, r#"group_header: "X-Group" is not a valid header name (lower-case token characters)"#),
        (r#"{"cluster_header":"a b"}"#, r#"cluster_header: "a b" is not a valid header name (lower-case token characters)"#),
        (r#"{"baggage_key":""}"#, r#"baggage_key: "" is not valid (a baggage key is a non-empty token)"#),
        (r#"{"cookie":"a=b"}"#, r#"cookie: "a=b" is not valid (a cookie name is a non-empty token)"#),
        (r#"{"base_group":"BASE"}"#, r#"base_group: "BASE" is not a valid group name (DNS-1123 label)"#),
        (r#"{"workload_group":"-x"}"#, r#"workload_group: "-x" is not a valid group name (DNS-1123 label)"#),
        (r#"{"failfast_status":200}"#, r#"failfast_status: "200" is not valid (an HTTP error status, 400 to 599)"#),
        (r#"{"failfast_status":"503"}"#, r#"failfast_status: invalid type: string "503", expected u16 at line 1 column 24"#),
        (r#"{"colour":1}"#, "colour: unknown field `colour`, expected one of `group_header`, `baggage_key`, `cookie`, `strict_header`, `cluster_header`, `target_header`, `base_group`, `workload_group`, `namespace`, `inject_baggage`, `annotate_response`, `failfast_status`, `limits`, `edge`, `propagation_assist`, `workload`, `propagation`, `table` at line 1 column 9"),
        (r#"{"limits":{"max_sevices":1}}"#, "limits.max_sevices: unknown field `max_sevices`, expected one of `max_services`, `max_groups`, `max_cluster_entries`, `max_table_bytes`, `max_fallback_depth`, `max_baggage_bytes`, `max_baggage_members` at line 1 column 24"),
        (r#"{"table":{"file":"x"}}"#, "table: unknown variant `file`, expected `inline` or `companion` at line 1 column 16"),
        (r#"{"table":{"inline":{"services":{"r":{"hosts":["r"],"clusters":{}}}}}}"#, r#"table.inline.services.r.clusters: no cluster for base group "base""#),
        (r#"{"base_group":"stable","table":{"inline":{"services":{"r":{"hosts":["r"],"clusters":{"base":"c"}}}}}}"#, r#"table.inline.services.r.clusters: no cluster for base group "stable""#),
        (r#"{"table":{"companion":{"cluster":"","authority":"c"}}}"#, r#"table.companion.cluster: "" is not valid (the Envoy cluster of the companion, not empty)"#),
        (r#"{"table":{"companion":{"cluster":"c","authority":"c","path":"v1"}}}"#, r#"table.companion.path: "v1" is not valid (an absolute path starting with '/')"#),
        (r#"{"table":{"companion":{"cluster":"c","authority":"c","wait_s":0}}}"#, r#"table.companion.wait_s: "0" is not valid (seconds, 1 to 300)"#),
        (r#""x""#, r#"(document): invalid type: string "x", expected struct RawConfig at line 1 column 3"#),
        (
            r#"{"cluster_header":null,"target_header":null}"#,
            r#"cluster_header: "null" is not valid (cluster_header and target_header cannot both be null: the filter must write one routing header)"#,
        ),
        (r#"{"cookie":"a"} {"cookie":"b"}"#, "(document): trailing characters at line 1 column 16"),
        ("{\u{0}", "(document): key must be a string at line 1 column 2"),
        (r#"{"edge":{"rules":[{"#, "edge.rules[0]: EOF while parsing an object at line 1 column 19"),
        ("{}", "accepted"),
        // Colliding header names: the scan would read one as the other, and
        // a client's routing header would pass as a group or a strict flag.
        (r#"{"group_header":"x-isogroup-cluster"}"#, r#"group_header: "x-isogroup-cluster" is also the name of cluster_header (each header name has one role)"#),
        (r#"{"group_header":"x-isogroup-cluster","cluster_header":null}"#, r#"group_header: "x-isogroup-cluster" is also the name of cluster_header (each header name has one role)"#),
        (r#"{"strict_header":"x-isogroup-target"}"#, r#"strict_header: "x-isogroup-target" is also the name of target_header (each header name has one role)"#),
        (r#"{"cluster_header":"x-route","target_header":"x-route"}"#, r#"cluster_header: "x-route" is also the name of target_header (each header name has one role)"#),
        (r#"{"group_header":"x-g","strict_header":"x-g"}"#, r#"group_header: "x-g" is also the name of strict_header (each header name has one role)"#),
        (r#"{"target_header":"x-isogroup"}"#, r#"group_header: "x-isogroup" is also the name of target_header (each header name has one role)"#),
        (r#"{"group_header":"cookie"}"#, r#"group_header: "cookie" is also the name of a header the filter reads itself (each header name has one role)"#),
        (r#"{"target_header":"x-isogroup-debug"}"#, r#"target_header: "x-isogroup-debug" is also the name of a header the filter reads itself (each header name has one role)"#),
        (r#"{"group_header":"x-lane","strict_header":"x-lane-strict","cluster_header":"x-lane-cluster","target_header":null}"#, "accepted"),
    ];
    for (json, want) in cases {
        assert_eq!(config_error(json), *want, "{json}");
    }
}

#[test]
fn check_lists_every_problem() {
    let json = r#"{"groups":{"x":{"fallback":["nope"]},"s":{"mode":"strict","fallback":["x"]}},
        "services":{"a":{"hosts":["a"],"clusters":{"x":"ax"}},"b":{"hosts":["a"],"clusters":{"base":"b0"}}}}"#;
    let raw: RawTable = serde_json::from_str(json).unwrap();
    let errors: Vec<String> =
        Table::check(&raw, "base", &Limits::default()).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "groups.s: a strict group cannot have a fallback",
            r#"groups.x.fallback: unknown group "nope" (not in groups, not the base group, not serving any service)"#,
            r#"services.a.clusters: no cluster for base group "base""#,
            r#"services.b.hosts: host "a" already belongs to service "a""#,
        ]
    );
    // compile reports the first of them
    assert_eq!(Table::compile(&raw, "base", &Limits::default()).unwrap_err().to_string(), errors[0]);
}

/// Every problem of a table, in `check`'s order, as text.
fn check_errors(json: &str, limits: &Limits) -> Vec<String> {
    let raw: RawTable = serde_json::from_str(json).unwrap();
    match Table::check(&raw, "base", limits) {
        Ok(_) => vec!["accepted".to_owned()],
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

/// `"g0":{"fallback":["g1"]}, …, "g{len}":{}`: a chain of `len` edges.
fn chain(prefix: &str, len: usize) -> String {
    let links = (0..len).map(|i| format!(r#""{prefix}{i}":{{"fallback":["{prefix}{}"]}}"#, i + 1));
    links.chain([format!(r#""{prefix}{len}":{{}}"#)]).collect::<Vec<_>>().join(",")
}

#[test]
fn check_lists_every_cycle_chain_and_limit() {
    let base_svc = r#""services":{"a":{"hosts":["a"],"clusters":{"base":"a0"}}}"#;
    let unknown = |g: &str, f: &str| {
        format!(
            r#"groups.{g}.fallback: unknown group "{f}" (not in groups, not the base group, not serving any service)"#
        )
    };
    let cases: Vec<(String, Limits, Vec<String>)> = vec![
        // two separate cycles: both, each once
        (
            format!(r#"{{"groups":{{"x":{{"fallback":["y"]}},"y":{{"fallback":["x"]}},"c0":{{"fallback":["c1"]}},"c1":{{"fallback":["c2"]}},"c2":{{"fallback":["c0"]}}}},{base_svc}}}"#),
            Limits::default(),
            vec!["groups.c0.fallback: cycle c0 -> c1 -> c2 -> c0".into(), "groups.x.fallback: cycle x -> y -> x".into()],
        ),
        // two cycles through one group; a self-loop listed twice is one cycle
        (
            format!(r#"{{"groups":{{"x":{{"fallback":["y","z"]}},"y":{{"fallback":["x"]}},"z":{{"fallback":["x"]}},"s":{{"fallback":["s","s"]}}}},{base_svc}}}"#),
            Limits::default(),
            vec!["groups.s.fallback: cycle s -> s".into(), "groups.x.fallback: cycle x -> y -> x".into(), "groups.x.fallback: cycle x -> z -> x".into()],
        ),
        // a cycle does not hide an over-deep chain that sorts after it
        (
            format!(r#"{{"groups":{{"a":{{"fallback":["a"]}},{}}},{base_svc}}}"#, chain("g", 10)),
            Limits::default(),
            vec![
                "groups.a.fallback: cycle a -> a".into(),
                "groups.g0.fallback: chain depth 10 exceeds the limit of 8".into(),
                "groups.g1.fallback: chain depth 9 exceeds the limit of 8".into(),
            ],
        ),
        // every over-deep chain, from each group where it starts
        (
            format!(r#"{{"groups":{{{},{}}},{base_svc}}}"#, chain("p", 3), chain("q", 4)),
            Limits { max_fallback_depth: 2, ..Limits::default() },
            vec![
                "groups.p0.fallback: chain depth 3 exceeds the limit of 2".into(),
                "groups.q0.fallback: chain depth 4 exceeds the limit of 2".into(),
                "groups.q1.fallback: chain depth 3 exceeds the limit of 2".into(),
            ],
        ),
        // every limit at once, and the other problems beside them
        (
            r#"{"groups":{"x":{"mode":"strict","fallback":["nope"]}},"services":{
                "a":{"hosts":["a"],"clusters":{"base":"a0","x":"ax","y":"ay"}},
                "b":{"hosts":["a","*"],"clusters":{"y":"by","Z":"bz"}}}}"#.into(),
            Limits { max_services: 1, max_groups: 2, max_cluster_entries: 4, ..Limits::default() },
            vec![
                "services: 2 exceeds the limit of 1".into(),
                "services.*.clusters: 5 exceeds the limit of 4".into(),
                "groups: 3 exceeds the limit of 2".into(),
                r#"services.b.clusters.Z: "Z" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#.into(),
                "groups.x: a strict group cannot have a fallback".into(),
                unknown("x", "nope"),
                r#"services.b.hosts: host "a" already belongs to service "a""#.into(),
                r#"services.b.hosts: "*" is not a valid host (a host has no '/' and no wildcard)"#.into(),
                r#"services.b.clusters: no cluster for base group "base""#.into(),
            ],
        ),
        // an invalid base group does not hide the rest
        (
            r#"{"base_group":"Base","groups":{"Base":{"fallback":["x"]}},"services":{"a":{"hosts":["a"],"clusters":{"base":"a0"}}}}"#.into(),
            Limits::default(),
            vec![
                r#"base_group: "Base" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#.into(),
                r#"groups.Base: "Base" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#.into(),
                "groups.Base: the base group cannot have a fallback".into(),
                unknown("Base", "x"),
                r#"services.a.clusters: no cluster for base group "Base""#.into(),
            ],
        ),
        // a chain exactly at the limit, then one group known only from a cluster
        (
            format!(
                r#"{{"groups":{{{},"g8":{{"fallback":["h"]}}}},"services":{{"a":{{"hosts":["a"],"clusters":{{"base":"a0","h":"ah"}}}}}}}}"#,
                chain("g", 7)
            ),
            Limits::default(),
            vec!["accepted".into()],
        ),
        // a long cycle is shortened, and counted once however many times it is listed
        (
            format!(r#"{{"groups":{{{},"c9":{{"fallback":["c0","c0"]}}}},{base_svc}}}"#, chain("c", 9).replace(r#""c9":{}"#, r#""c99":{}"#)),
            Limits { max_fallback_depth: 20, ..Limits::default() },
            vec!["groups.c0.fallback: cycle c0 -> c1 -> c2 -> c3 -> c4 -> c5 -> c6 -> c7 -> … (2 more) -> c0".into()],
        ),
    ];
    for (json, limits, want) in &cases {
        assert_eq!(check_errors(json, limits), *want, "{json}");
        // compile stops early, at the same first problem
        let raw: RawTable = serde_json::from_str(json).unwrap();
        let first = Table::compile(&raw, "base", limits).err().map_or("accepted".to_owned(), |e| e.to_string());
        assert_eq!(first, want[0], "{json}");
    }
}

#[test]
fn check_of_a_hostile_table_walks_without_recursion() {
    // 20 000 groups in one chain, each also falling back to the first: far
    // past the group limit, one cycle per group, and deeper than a recursive
    // walk could go on a test thread's stack.
    let n = 20_000;
    let mut raw = RawTable::default();
    for i in 0..n {
        let next = if i + 1 < n { vec![format!("g{}", i + 1), "g0".to_owned()] } else { vec!["g0".to_owned()] };
        raw.groups.insert(format!("g{i}"), RawGroup { fallback: next, mode: Mode::Permissive, ..RawGroup::default() });
    }
    let errors = Table::check(&raw, "base", &Limits::default()).unwrap_err();
    assert_eq!(errors[0].to_string(), format!("groups: {} exceeds the limit of 1000", n + 1));
    let cycles = errors.iter().filter(|e| matches!(e, TableError::FallbackCycle { .. })).count();
    let too_deep = errors.iter().filter(|e| matches!(e, TableError::FallbackTooDeep { .. })).count();
    assert_eq!((cycles, too_deep, errors.len()), (n, n - 9, 1 + n + n - 9));
    assert!(errors.iter().all(|e| e.to_string().len() < 200), "long cycles are shortened");
}

/// SPEC "Runtime rules in sidecars": a table's rules are checked everywhere
/// (a regex over its compile budget rejects the table, naming the field) and
/// kept compiled only where `edge.runtime` runs them.
#[test]
fn table_rules_are_checked_everywhere_and_kept_only_for_runtime() {
    let limits = Limits::default();
    let good = br#"{"rules": [{"header": "x-user", "regex": "^dev-[a-z]+$", "group": "dev"}]}"#;
    for runtime_rules in [false, true] {
        let (table, _) = Table::from_companion_json(good, "base", &limits, runtime_rules).unwrap();
        assert_eq!(table.rules().is_empty(), !runtime_rules);
        let (table, _) = Table::from_companion_vec(good.to_vec(), "base", &limits, runtime_rules).unwrap();
        assert_eq!(table.rules().is_empty(), !runtime_rules);
    }
    let hostile = br#"{"rules": [{"header": "x-user", "values": ["a"], "group": "a"},
        {"header": "x-user", "regex": "(?:(?:(?:(?:(?:(?:x{0}){100}){100}){100}){100}){100}){100}", "group": "dev"}]}"#;
    for runtime_rules in [false, true] {
        let err = Table::from_companion_json(hostile, "base", &limits, runtime_rules).unwrap_err().to_string();
        assert!(err.starts_with("rules[1].regex: "), "{err}");
        assert!(err.ends_with("the pattern is too large (repetitions multiply it)"), "{err}");
    }
    // The companion's check (every write goes through it) refuses it too.
    let raw = RawTable::from_json(hostile, &limits).unwrap();
    let errors = Table::check(&raw, "base", &limits).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].to_string().starts_with("rules[1].regex: "), "{}", errors[0]);
    // An inline table in the plugin config: the same.
    let config = |runtime: bool| {
        let json = format!(
            r#"{{"edge": {{"runtime": {runtime}}}, "table": {{"inline": {}}}}}"#,
            std::str::from_utf8(good).unwrap()
        );
        match Settings::from_json(json.as_bytes()).unwrap().source {
            crate::Source::Inline(t) => t.rules().is_empty(),
            _ => unreachable!(),
        }
    };
    assert_eq!((config(false), config(true)), (true, false));
}

#[test]
fn companion_tables_skip_unknown_fields_and_name_them() {
    let json = br#"{"version": 3, "shiny": true, "groups": {"g": {"fallback": [], "colour": "red"}},
        "services": {"r": {"hosts": ["r"], "clusters": {"base": "c", "g": "c-g"}, "weight": {"a": [1]}}}}"#;
    let limits = Limits::default();
    let (table, unknown) = Table::from_companion_json(json, "base", &limits, true).unwrap();
    assert_eq!(table.version(), 3);
    assert_eq!(table.service_count(), 1);
    assert_eq!(unknown, ["shiny", "colour", "weight"]);
    // The same document is refused where tables stay strict, naming the first field.
    let err = Table::from_json(json, "base", &limits).unwrap_err().to_string();
    assert!(err.starts_with("shiny: unknown field `shiny`"), "{err}");
    // A strict parse after a lenient one is strict again.
    assert!(RawTable::from_json(br#"{"x": 1}"#, &limits).is_err());
    // Skipping unknown fields skips no validation.
    let bad = br#"{"services": {"r": {"hosts": ["r"], "clusters": {"g": "c-g"}, "new": 1}}}"#;
    assert!(Table::from_companion_json(bad, "base", &limits, true).is_err());
    let duplicate = br#"{"version": 1, "version": 2}"#;
    assert!(Table::from_companion_json(duplicate, "base", &limits, true).is_err());
}

#[test]
fn a_dotless_host_is_tried_in_the_namespace_first() {
    let json = r#"{"services":{"a":{"hosts":["reviews.prod"],"clusters":{"base":"a0"}},
                   "b":{"hosts":["reviews"],"clusters":{"base":"b0"}}}}"#;
    let t = Table::from_json(json.as_bytes(), "base", &Limits::default()).unwrap();
    let long_ns = "n".repeat(crate::authority::MAX_HOST_LEN);
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("reviews", Some("prod"), "a=base via a0"),
        ("REVIEWS:9080", Some("prod"), "a=base via a0"),
        ("reviews", Some("dev"), "b=base via b0"),
        ("reviews", None, "b=base via b0"),
        ("reviews.prod", Some("dev"), "a=base via a0"),
        // `reviews.<ns>` longer than any host: not tried.
        ("reviews", Some(&long_ns), "b=base via b0"),
    ];
    for (authority, namespace, want) in cases {
        let req = RequestView { authority: authority.as_bytes(), group: None, strict: None, namespace: *namespace };
        assert_eq!(outcome(decide(&t, &req)), *want, "{authority:?} {namespace:?}");
    }
}
