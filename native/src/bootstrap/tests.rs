//! The bootstrap extension's configuration (no Envoy: its polling is
//! sync.rs's, run in tests/native.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use isogroup_core::{CompanionSource, Limits};

use super::parse;

const SOURCE: &str = r#"{"table": {"companion": {"cluster": "isogroup-companion", "authority": "isogroup-companion", "path": "/v1/table", "wait_s": 25}}}"#;

fn error(name: &str, config: &str) -> String {
    match parse(name.as_bytes(), config.as_bytes()) {
        Ok(key) => panic!("accepted {config}: {key:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_companion_source_is_the_same_key_as_the_filters() {
    let (source, base_group, limits) = parse(b"isogroup", SOURCE.as_bytes()).unwrap();
    let expected = CompanionSource {
        cluster: "isogroup-companion".into(),
        authority: "isogroup-companion".into(),
        path: "/v1/table".into(),
        wait_s: 25,
    };
    assert_eq!((source, base_group.as_str(), limits), (expected, "base", Limits::default()));
    let with_base = SOURCE.replacen('{', r#"{"base_group": "main", "#, 1);
    assert_eq!(parse(b"isogroup", with_base.as_bytes()).unwrap().1, "main");
}

#[test]
fn each_bad_field_is_named() {
    assert!(error("other", SOURCE).contains(r#"extension_name "other": expected "isogroup""#));
    assert!(error("isogroup", &SOURCE.replacen('{', r#"{"edge": {}, "#, 1))
        .contains(r#"extension_config: unknown field "edge""#));
    assert!(error("isogroup", "{}").contains("extension_config.table.companion: required"));
    let inline = r#"{"table": {"inline": {"version": 1, "groups": {}, "services": {}}}}"#;
    assert!(error("isogroup", inline).contains("extension_config.table.companion: required"));
    assert!(error("isogroup", &SOURCE.replace(r#""wait_s": 25"#, r#""wait_s": 0"#))
        .contains("extension_config: table.companion.wait_s"));
    assert!(error("isogroup", &SOURCE.replace(r#""cluster": "isogroup-companion""#, r#""cluster": """#))
        .contains("table.companion.cluster"));
    assert!(error("isogroup", &SOURCE.replacen('{', r#"{"base_group": "Not A Group", "#, 1)).contains("base_group"));
    assert!(error("isogroup", "[]").contains("extension_config: expected a JSON object"));
    assert!(error("isogroup", "{\"table\":").contains("extension_config: not valid JSON"));
}

#[test]
fn deeply_nested_json_is_refused_without_exhausting_the_stack() {
    let deep = format!(r#"{{"table": {}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    assert!(error("isogroup", &deep).contains("extension_config: not valid JSON"));
}
