//! The second-round table fields: sources, rules, group text, ports. Parse
//! (strict and lenient), validation naming the field, and the serialised
//! round trip.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::*;

const FULL: &str = r#"{
  "version": 7,
  "epoch": "1798761600000-ab12",
  "groups": {
    "feature-1": {"fallback": ["team-a"], "description": "new checkout", "owner": "alice"},
    "team-a": {}
  },
  "services": {
    "reviews": {"hosts": ["reviews"], "clusters": {"base": "reviews-{port}", "feature-1": "reviews-f1"}, "ports": [9080, 9443]}
  },
  "sources": [
    {"cidr": "192.0.2.7/32", "group": "feature-1", "expires_at": 1798761600},
    {"cidr": "192.0.2.0/24", "group": "team-a"}
  ],
  "rules": [
    {"cookie": "team-lane", "group_from_value": true},
    {"header": "x-user", "prefix": "qa-", "group_from_value": true},
    {"source_cidrs": ["198.51.100.0/24"], "group": "team-a"},
    {"percent": 100, "hash_header": "x-id", "group": "feature-1"}
  ]
}"#;

fn raw(json: &str) -> RawTable {
    RawTable::from_json(json.as_bytes(), &Limits::default()).unwrap()
}

#[test]
fn every_new_field_round_trips() {
    let first = raw(FULL);
    assert_eq!(first.sources.len(), 2);
    assert_eq!(first.sources[0].expires_at, Some(1_798_761_600));
    assert_eq!(first.rules[0].group, None);
    assert!(first.rules[0].group_from_value);
    assert_eq!(first.groups.get("feature-1").unwrap().owner.as_deref(), Some("alice"));
    assert_eq!(first.services.get("reviews").unwrap().ports, [9080, 9443]);
    let text = serde_json::to_string(&first).unwrap();
    assert_eq!(raw(&text), first, "{text}");
    assert!(Table::compile(&first, "base", &Limits::default()).is_ok());
}

#[test]
fn empty_new_fields_are_left_out() {
    let json = r#"{"version":1,"groups":{"g":{}},"services":{"r":{"hosts":["r"],"clusters":{"base":"c"}}},
        "sources":[{"cidr":"10.0.0.0/8","group":"g"}],"rules":[{"header":"x","values":["a"],"group":"g"}]}"#;
    let text = serde_json::to_string(&raw(json)).unwrap();
    assert_eq!(
        text,
        r#"{"version":1,"groups":{"g":{}},"services":{"r":{"hosts":["r"],"clusters":{"base":"c"}}},"sources":[{"cidr":"10.0.0.0/8","group":"g"}],"rules":[{"header":"x","values":["a"],"group":"g"}]}"#
    );
    let first_round = r#"{"version":1,"groups":{},"services":{}}"#;
    assert_eq!(serde_json::to_string(&raw(first_round)).unwrap(), first_round);
}

#[test]
fn strict_parse_names_unknown_fields_lenient_skips_them() {
    let cases: &[(&str, &str, &str)] = &[
        (r#"{"sources":[{"cidr":"10.0.0.0/8","group":"g","ttl":1}]}"#, "sources[0].ttl: unknown field `ttl`", "ttl"),
        (
            r#"{"rules":[{"header":"x","values":["a"],"group":"g","weight":2}]}"#,
            "rules[0].weight: unknown field `weight`",
            "weight",
        ),
        (r#"{"groups":{"g":{"colour":"red"}}}"#, "groups.g.colour: unknown field `colour`", "colour"),
        (
            r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c"},"port":1}}}"#,
            "services.r.port: unknown field `port`",
            "port",
        ),
    ];
    let limits = Limits::default();
    for (json, strict, skipped) in cases {
        let err = Table::from_json(json.as_bytes(), "base", &limits).unwrap_err().to_string();
        assert!(err.starts_with(strict), "{json}: {err}");
        let (_, unknown) = Table::from_companion_json(json.as_bytes(), "base", &limits, true).unwrap();
        assert_eq!(unknown, [*skipped], "{json}");
    }
    let missing: &[(&str, &str)] = &[
        (r#"{"sources":[{"group":"g"}]}"#, "sources[0]: missing field `cidr`"),
        (r#"{"sources":[{"cidr":"10.0.0.1"}]}"#, "sources[0]: missing field `group`"),
        (r#"{"sources":[{"cidr":"10.0.0.1","group":"g","expires_at":-1}]}"#, "sources[0].expires_at: invalid value"),
        (r#"{"rules":[{"header":"x","header":"y"}]}"#, "rules[0]: duplicate field `header`"),
        (
            r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c"},"ports":[70000]}}}"#,
            "services.r.ports[0]: invalid value",
        ),
    ];
    for (json, want) in missing {
        let err = Table::from_json(json.as_bytes(), "base", &limits).unwrap_err().to_string();
        assert!(err.starts_with(want), "{json}: {err}");
    }
}

/// A table around `extra` fields: groups `g`, `h`; a service `r`.
fn with(extra: &str) -> String {
    format!(
        r#"{{"groups":{{"g":{{}},"h":{{}}}},"services":{{"r":{{"hosts":["r"],"clusters":{{"base":"c"}}}}}}{extra}}}"#
    )
}

#[test]
fn validation_names_the_field() {
    let long = "x".repeat(257);
    let cases: Vec<(String, &str)> = vec![
        (with(r#","sources":[{"cidr":"nope","group":"g"}]"#), r#"sources[0].cidr: "nope": not an IP address"#),
        (
            with(r#","sources":[{"cidr":"10.0.0.0/8","group":"g"},{"cidr":"10.0.0.1/8","group":"g"}]"#),
            r#"sources[1].cidr: "10.0.0.1/8": host bits set past the prefix length"#,
        ),
        (
            with(r#","sources":[{"cidr":"10.0.0.0/33","group":"g"}]"#),
            r#"sources[0].cidr: "10.0.0.0/33": prefix length too long for the address family"#,
        ),
        (
            with(r#","sources":[{"cidr":"192.0.2.7","group":"g"},{"cidr":"192.0.2.7/32","group":"h"}]"#),
            "sources[1].cidr: the same range as sources[0]",
        ),
        (
            with(r#","sources":[{"cidr":"10.0.0.0/8","group":"Not-Valid"}]"#),
            r#"sources[0].group: "Not-Valid" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#,
        ),
        // a binding to a group the table does not know is no table error
        (with(r#","sources":[{"cidr":"10.0.0.0/8","group":"gone-lane","expires_at":1}]"#), "accepted"),
        (
            with(
                r#","rules":[{"percent":60,"hash_header":"x","group":"g"},{"percent":41,"hash_header":"x","group":"h"}]"#,
            ),
            "rules[1].percent: percent rules add up to 101 (at most 100)",
        ),
        (with(r#","rules":[{"header":"x","values":["a"]}]"#), "rules[0].group: missing (or set group_from_value)"),
        (
            with(r#","rules":[{"header":"x","group":"g","group_from_value":true}]"#),
            "rules[0].group: group and group_from_value exclude each other",
        ),
        (
            with(r#","rules":[{"source_cidrs":["10.0.0.0/8"],"group_from_value":true}]"#),
            "rules[0].group_from_value: goes with a header, cookie or query rule",
        ),
        (
            with(r#","rules":[{"header":"x","values":["a"],"group":"g"},{"cookie":"c","group":"g"}]"#),
            "rules[1]: a header, cookie or query rule needs exactly one of values, prefix, regex",
        ),
        (with(r#","rules":[{"query":"lane","group_from_value":true}]"#), "accepted"),
        (with(r#","rules":[{"header":"x","regex":"(","group_from_value":true}]"#), r#"rules[0].regex: "(": "#),
        (format!(r#"{{"groups":{{"g":{{"description":"{long}"}}}}}}"#), "groups.g.description: 257 bytes, at most 256"),
        (format!(r#"{{"groups":{{"g":{{"owner":"{long}"}}}}}}"#), "groups.g.owner: 257 bytes, at most 256"),
        (format!(r#"{{"groups":{{"g":{{"owner":"{}"}}}}}}"#, "é".repeat(128)), "accepted"),
        (
            r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c"},"ports":[80,0]}}}"#.into(),
            "services.r.ports[1]: 0 is not a port",
        ),
        (
            r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c"},"ports":[80,443,80]}}}"#.into(),
            "services.r.ports[2]: listed twice",
        ),
        (
            r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c-{port}"}}}}"#.into(),
            r#"services.r.clusters.base: "c-{port}" is not a valid cluster name (has {port} but the service lists no ports)"#,
        ),
        (r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c-{port}"},"ports":[80]}}}"#.into(), "accepted"),
    ];
    for (json, want) in &cases {
        let got = match Table::from_json(json.as_bytes(), "base", &Limits::default()) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => e.to_string(),
        };
        assert!(got.starts_with(want), "{json}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn port_clusters_count_against_the_entry_limit() {
    let json = r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c-{port}","g":"g"},"ports":[1,2,3]}}}"#;
    let limits = Limits { max_cluster_entries: 3, ..Limits::default() };
    let err = Table::from_json(json.as_bytes(), "base", &limits).unwrap_err().to_string();
    assert_eq!(err, "services.*.clusters: 4 exceeds the limit of 3");
    assert!(Table::from_json(json.as_bytes(), "base", &Limits { max_cluster_entries: 4, ..limits }).is_ok());
}

#[test]
fn check_lists_every_new_field_problem() {
    let json = with(r#","sources":[{"cidr":"x","group":"G"}],"rules":[{"header":"x","values":["a"]}]"#);
    let raw = raw(&json);
    let errors: Vec<String> =
        Table::check(&raw, "base", &Limits::default()).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors[0].starts_with("sources[0].cidr"), "{errors:?}");
    assert!(errors[1].starts_with("sources[0].group"), "{errors:?}");
    assert!(errors[2].starts_with("rules[0].group"), "{errors:?}");
}

#[test]
fn known_groups() {
    let t = Table::from_json(FULL.as_bytes(), "base", &Limits::default()).unwrap();
    let cases: &[(&str, bool)] =
        &[("base", true), ("feature-1", true), ("team-a", true), ("gone", false), ("", false), ("Base", false)];
    for (name, want) in cases {
        assert_eq!(t.knows_group(name), *want, "{name}");
    }
    assert_eq!(t.sources().len(), 2);
    assert!(!t.rules().is_empty());
    assert_eq!(t.ports(0), [9080, 9443]);
}

const NAMESPACED: &str = r#"{"groups": {"f1": {}}, "services": {
  "reviews.prod": {"hosts": ["reviews.prod", "reviews.prod.svc", "reviews.prod.svc.cluster.local"],
                   "clusters": {"base": "reviews-prod-{port}", "f1": "reviews-prod-f1"}, "ports": [9080, 9443]},
  "reviews.dev": {"hosts": ["reviews.dev"], "clusters": {"base": "reviews-dev"}},
  "ratings": {"hosts": ["ratings"], "clusters": {"base": "ratings-{port}"}, "ports": [8080]}}}"#;

/// The cluster a request lands on, or `pass`.
fn lands(t: &Table, authority: &str, group: Option<&str>, namespace: Option<&str>) -> String {
    let view = RequestView { authority: authority.as_bytes(), group, strict: None, namespace };
    match decide(t, &view) {
        Decision::Route(r) => r.cluster.to_owned(),
        Decision::PassThrough => "pass".into(),
        Decision::FailFast(_) => "failfast".into(),
    }
}

#[test]
fn short_hosts_are_tried_in_the_namespace_first() {
    let t = Table::from_json(NAMESPACED.as_bytes(), "base", &Limits::default()).unwrap();
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("reviews:9080", Some("prod"), "reviews-prod-9080"),
        ("reviews:9443", Some("prod"), "reviews-prod-9443"),
        ("Reviews.:9443", Some("prod"), "reviews-prod-9443"),
        ("reviews", Some("dev"), "reviews-dev"),
        ("reviews", Some("other"), "pass"),
        ("reviews", None, "pass"),
        // a host with a dot is looked up as written
        ("reviews.dev", Some("prod"), "reviews-dev"),
        ("reviews.prod.svc.cluster.local:9443", Some("dev"), "reviews-prod-9443"),
        // a short host the namespace does not hold is still itself
        ("ratings:8080", Some("prod"), "ratings-8080"),
        // IP addresses are never namespaced
        ("[::1]:9080", Some("prod"), "pass"),
    ];
    for (authority, ns, want) in cases {
        assert_eq!(lands(&t, authority, None, *ns), *want, "{authority} in {ns:?}");
    }
    // too long for the buffer: tried as written only
    let long_ns = "n".repeat(63);
    let long_host = "h".repeat(200);
    assert_eq!(lands(&t, &long_host, None, Some(&long_ns)), "pass");
}

#[test]
fn the_port_picks_a_port_cluster() {
    let t = Table::from_json(NAMESPACED.as_bytes(), "base", &Limits::default()).unwrap();
    // (authority, group, cluster)
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("reviews.prod:9080", None, "reviews-prod-9080"),
        ("reviews.prod:9443", None, "reviews-prod-9443"),
        // not a listed port, or none: the first (default) port
        ("reviews.prod:7000", None, "reviews-prod-9080"),
        ("reviews.prod", None, "reviews-prod-9080"),
        // a fixed cluster name ignores the port
        ("reviews.prod:9443", Some("f1"), "reviews-prod-f1"),
        ("ratings:1", None, "ratings-8080"),
    ];
    for (authority, group, want) in cases {
        assert_eq!(lands(&t, authority, *group, None), *want, "{authority} {group:?}");
    }
    let by_name = |port| match decide_service(&t, "reviews.prod", None, None, port) {
        Decision::Route(r) => r.cluster.to_owned(),
        other => format!("{other:?}"),
    };
    assert_eq!(by_name(Some(9443)), "reviews-prod-9443");
    assert_eq!(by_name(Some(1)), "reviews-prod-9080");
    assert_eq!(by_name(None), "reviews-prod-9080");
}

#[test]
fn namespace_config() {
    let cases: &[(&str, Result<Option<&str>, &str>)] = &[
        ("{}", Ok(None)),
        (r#"{"namespace": "prod"}"#, Ok(Some("prod"))),
        (r#"{"namespace": "Prod"}"#, Err(r#"namespace: "Prod" is not valid"#)),
        (r#"{"namespace": "a.b"}"#, Err(r#"namespace: "a.b" is not valid"#)),
    ];
    for (json, want) in cases {
        let got = Settings::from_json(json.as_bytes()).map(|s| s.namespace).map_err(|e| e.to_string());
        match (got, want) {
            (Ok(ns), Ok(w)) => assert_eq!(ns.as_deref(), *w, "{json}"),
            (Err(e), Err(w)) => assert!(e.starts_with(w), "{json}: {e}"),
            (got, _) => panic!("{json}: {got:?}"),
        }
    }
}

/// The owned-bytes entry points (they free the JSON before compiling) read
/// exactly what the borrowed ones do: the same settings or table, the same
/// error.
#[test]
fn owned_json_reads_the_same() {
    let configs = [
        "",
        "  \n",
        "{}",
        r#"{"table": {"inline": {"groups": {"f1": {}}, "services": {"r": {"hosts": ["r"], "clusters": {"base": "r-base", "f1": "r-f1"}}}}}}"#,
        r#"{"table": {"inline": {"services": {"r": {"hosts": ["r"], "clusters": {"f1": "r-f1"}}}}}}"#,
        r#"{"group_header": "Bad Header"}"#,
        "{",
    ];
    for json in configs {
        let borrowed = format!("{:?}", Settings::from_json(json.as_bytes()).map_err(|e| e.to_string()));
        let owned = format!("{:?}", Settings::from_json_vec(json.as_bytes().to_vec()).map_err(|e| e.to_string()));
        assert_eq!(owned, borrowed, "{json:?}");
    }
    for json in [FULL, r#"{"services": {"r": {"hosts": ["r"], "clusters": {}}}, "later": 1}"#, "[]"] {
        let limits = Limits::default();
        let borrowed = format!(
            "{:?}",
            Table::from_companion_json(json.as_bytes(), "base", &limits, true).map_err(|e| e.to_string())
        );
        let owned = format!(
            "{:?}",
            Table::from_companion_vec(json.as_bytes().to_vec(), "base", &limits, true).map_err(|e| e.to_string())
        );
        assert_eq!(owned, borrowed, "{json}");
    }
}
