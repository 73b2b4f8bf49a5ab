//! Hostile input and bad configuration against real Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use common::{chain, http, Build, Envoy, Mesh};

async fn invalid_group_is_ignored_counted_and_stripped(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let cases: &[(&str, &str)] =
        &[("x-isogroup", "Feature-1"), ("x-isogroup", "feature_1"), ("baggage", "a=1, isogroup=BAD, b=2")];
    for (name, value) in cases {
        let resp = mesh.request(&http(), "a").header(*name, *value).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(chain(&body), "a@base > b@base > c@base", "{name}: {value}");
        // The header that carried the invalid value is what must be cleaned.
        if *name == "baggage" {
            assert_eq!(body["headers"]["baggage"], "a=1,b=2", "invalid member stripped, others kept: {body}");
        } else {
            assert!(body["headers"].get(*name).is_none(), "invalid value stripped: {body}");
        }
    }
    // an invalid header does not hide a valid baggage member
    let resp = mesh
        .request(&http(), "a")
        .header("x-isogroup", "NOPE")
        .header("baggage", "isogroup=feature-1")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base");
    mesh.envoy.wait_stat(&build.stat("isogroup_invalid_group_total"), 4).await;
}

async fn hostile_group_bytes_do_not_break_the_worker(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let client = common::http_fresh_connections();
    let non_utf8 = reqwest::header::HeaderValue::from_bytes(b"caf\xe9-\xff\xfe").unwrap();
    let oversized = "a".repeat(8000);
    for round in 0..6 {
        let resp = mesh.request(&client, "c").header("x-isogroup", non_utf8.clone()).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "round {round}: non-UTF-8 group ignored");
        let resp = mesh.request(&client, "c").header("x-isogroup", oversized.as_str()).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200, "round {round}: oversized group ignored");
        let resp = mesh.request(&client, "b").header("x-isogroup", "feature-1").send().await.unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(chain(&body), "b@feature-1 > c@base", "round {round}: the next request is routed");
    }
    mesh.envoy.wait_stat(&build.stat("isogroup_invalid_group_total"), 12).await;
}

async fn bad_plugin_config_refuses_to_start(build: Build) {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"table": {"inline": {"services": {"b": {"hosts": ["b"], "clusters": {"feature-1": "b-feature-1"}}}}}}"#,
            r#"invalid plugin configuration: table.inline.services.b.clusters: no cluster for base group "base""#,
        ),
        (r#"{"group_hedaer": "x"}"#, "invalid plugin configuration: group_hedaer: unknown field `group_hedaer`"),
        (r#"{"failfast_status": 200}"#, r#"invalid plugin configuration: failfast_status: "200" is not valid"#),
    ];
    for (config, want) in cases {
        let rendered = build.config("envoy/demo.yaml").with_plugin_config(config);
        match Envoy::start(&rendered, 9901, 10000).await {
            Ok(envoy) => panic!("envoy started with {config}:\n{}", envoy.log_text()),
            Err(log) => assert!(log.contains(want), "log lacks {want:?}:\n{log}"),
        }
    }
}

on_both_builds!(
    invalid_group_is_ignored_counted_and_stripped,
    hostile_group_bytes_do_not_break_the_worker,
    bad_plugin_config_refuses_to_start
);
