//! The cluster specifier's configuration (no Envoy: `select` is tested in
//! tests/native.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::sync::Arc;

use super::SpecifierConfig;

const TABLE: &str = r#"{"table": {"inline": {"version": 1, "groups": {"f1": {}}, "services": {"svc": {"hosts": ["svc"], "clusters": {"base": "svc-base", "f1": "svc-f1"}}}}}}"#;

fn error(config: &str) -> String {
    match SpecifierConfig::new(b"isogroup", config.as_bytes()) {
        Ok(_) => panic!("accepted: {config}"),
        Err(e) => e,
    }
}

#[test]
fn a_plain_string_is_the_default_cluster_and_reads_the_filters_metadata() {
    let c = SpecifierConfig::new(b"isogroup", b" svc-base \n").unwrap();
    assert_eq!(c.default_cluster, b"svc-base");
    assert!(c.decider.is_none());
    assert!(error("  ").contains("default cluster's name is required"));
}

#[test]
fn the_json_form_names_each_bad_field() {
    assert!(error(r#"{"decide": true, "default_cluster": "svc-base", "plugins": {}}"#)
        .contains(r#"unknown field "plugins""#));
    assert!(error(r#"{"decide": true, "plugin": {}}"#).contains("specifier_config.default_cluster"));
    assert!(error(r#"{"decide": "yes", "default_cluster": "b", "plugin": {}}"#).contains("specifier_config.decide"));
    assert!(error(r#"{"decide": true, "default_cluster": "b"}"#).contains("specifier_config.plugin"));
    assert!(error(r#"{"default_cluster": "b", "plugin": {}}"#).contains("only read with"));
    assert!(error(r#"{"decide": true, "default_cluster": "b", "plugin": {"failfast_status": 200}}"#)
        .contains("failfast_status"));
    assert!(error("{}").contains("specifier_config.default_cluster"));
    assert!(error(r#"{"decide": true,"#).contains("not valid JSON"));
}

#[test]
fn deeply_nested_json_is_refused_without_exhausting_the_stack() {
    let deep = format!(
        r#"{{"decide": true, "default_cluster": "b", "plugin": {}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(error(&deep).contains("not valid JSON"));
}

#[test]
fn the_same_plugin_configuration_is_compiled_once_for_every_specifier() {
    let config = |cluster: &str| format!(r#"{{"decide": true, "default_cluster": "{cluster}", "plugin": {TABLE}}}"#);
    let a = SpecifierConfig::new(b"isogroup", config("a-base").as_bytes()).unwrap();
    let b = SpecifierConfig::new(b"isogroup", config("b-base").as_bytes()).unwrap();
    let (a_decider, b_decider) = (a.decider.as_ref().unwrap(), b.decider.as_ref().unwrap());
    assert!(Arc::ptr_eq(a_decider, b_decider));
    assert!(matches!(a_decider.table, super::Tables::Inline(_)));
    let other = SpecifierConfig::new(b"isogroup", config("a-base").replace("svc-f1", "svc-f2").as_bytes()).unwrap();
    assert!(!Arc::ptr_eq(a_decider, other.decider.as_ref().unwrap()));
}

#[test]
fn what_needs_the_filter_is_refused_naming_the_field() {
    let with = |plugin: &str| format!(r#"{{"decide": true, "default_cluster": "b", "plugin": {plugin}}}"#);
    assert!(error(&with(r#"{"edge": {"join_path": "/.isogroup/join"}}"#))
        .contains("specifier_config.plugin.edge.join_path"));
    assert!(error(&with(r#"{"propagation": {"sample": 8}}"#)).contains("specifier_config.plugin.propagation:"));
    assert!(error(&with(r#"{"propagation_assist": {"slots": 64, "ttl_s": 30}}"#))
        .contains("specifier_config.plugin.propagation_assist"));
}

const COMPANION: &str =
    r#""table": {"companion": {"cluster": "CLUSTER", "authority": "companion", "path": "/v1/table", "wait_s": 25}}"#;

fn with_companion(cluster: &str) -> String {
    format!(r#"{{"decide": true, "default_cluster": "b", "plugin": {{{}}}}}"#, COMPANION.replace("CLUSTER", cluster))
}

#[test]
fn a_companion_source_no_bootstrap_extension_polls_is_refused_naming_the_field() {
    let e = error(&with_companion("specifier-test-unpolled"));
    assert!(e.starts_with("specifier_config.plugin.table.companion: no isogroup bootstrap extension"), "{e}");
    assert!(e.contains(r#"cluster "specifier-test-unpolled""#), "{e}");
}

#[test]
fn a_companion_source_a_bootstrap_extension_polls_is_read_from_the_registry() {
    let json = with_companion("specifier-test-polled");
    let plugin = serde_json::from_str::<serde_json::Value>(&json).unwrap()["plugin"].clone();
    let settings = isogroup_core::Settings::from_json(plugin.to_string().as_bytes()).unwrap();
    let isogroup_core::Source::Companion(source) = settings.source else { panic!("a companion source") };
    let _polling = crate::sync::tests_support::polled_by_a_bootstrap((source, settings.base_group, settings.limits));
    let c = SpecifierConfig::new(b"isogroup", json.as_bytes()).unwrap();
    assert!(matches!(c.decider.as_ref().unwrap().table, super::Tables::Companion(_)));
    // The same source with another hold time is not polled.
    let e = error(&json.replace(r#""wait_s": 25"#, r#""wait_s": 26"#));
    assert!(e.contains("wait_s 26") && e.contains(r#""specifier-test-polled" "/v1/table" (wait_s 25)"#), "{e}");
}
