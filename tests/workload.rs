//! Workload group: a sidecar whose workload is in a group stamps it on
//! outbound requests that carry none; from the node label, or the config.
//! Both builds; the native one does not read node metadata (a documented
//! difference, docs/native.md), asserted as such.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use std::time::Duration;

use common::{chain, http, wait_for, Build, Mesh, Rendered};
use serde_json::Value;

/// demo.yaml as the sidecar of a workload labelled `isogroup.io/group: feature-1`.
fn labelled(build: Build, label: &str) -> Rendered {
    let mut r = build.config("envoy/demo.yaml");
    let node =
        format!("node:\n  id: sidecar\n  cluster: demo\n  metadata:\n    LABELS:\n      isogroup.io/group: {label}\n");
    r.yaml = format!("{node}{}", r.yaml);
    r
}

async fn node_label_group_is_stamped(build: Build) {
    let mesh = Mesh::start_with(labelled(build, "feature-1")).await;
    let body: Value = mesh.request(&http(), "b").send().await.unwrap().json().await.unwrap();
    if build == Build::Native {
        // Not read by the native build yet: nothing is stamped.
        assert_eq!(chain(&body), "b@base > c@base");
        assert!(body["headers"].get("x-isogroup").is_none(), "{body}");
        assert!(!mesh.envoy.log_text().contains("from the node label"));
        return;
    }
    assert_eq!(chain(&body), "b@feature-1 > c@base");
    assert_eq!(body["headers"]["x-isogroup"], "feature-1");
    assert_eq!(body["headers"]["baggage"], "isogroup=feature-1");
    // a request that carries a group keeps it
    let body: Value =
        mesh.request(&http(), "b").header("x-isogroup", "base").send().await.unwrap().json().await.unwrap();
    assert_eq!(chain(&body), "b@base > c@base");
    // Logged at configure, but Envoy writes its log file out on an interval
    // (`--file-flush-interval-msec`): the line may follow the answers.
    let line = r#"workload group "feature-1" from the node label isogroup.io/group"#;
    wait_for("the node label's group in Envoy's log", Duration::from_secs(10), || async {
        mesh.envoy.log_text().contains(line).then_some(())
    })
    .await;
}

async fn config_workload_group_wins_over_the_label(build: Build) {
    let rendered = labelled(build, "feature-1");
    let original = build.config("envoy/demo.yaml").yaml;
    let start = original.find("                    {\n                      \"table\"").unwrap();
    let config_json = "{\"workload_group\": \"feature-2\", \"inject_baggage\": false,";
    let mut r = rendered;
    let at = r.yaml.find(&original[start..start + 22]).unwrap();
    r.yaml.replace_range(at..at + 22, &format!("                    {config_json}"));
    let mesh = Mesh::start_with(r).await;
    let body: Value = mesh.request(&http(), "b").send().await.unwrap().json().await.unwrap();
    assert_eq!(chain(&body), "b@feature-1 > c@base", "feature-2 falls back to feature-1 at b");
    assert_eq!(body["headers"]["x-isogroup"], "feature-2");
    assert!(body["headers"].get("baggage").is_none(), "inject_baggage: false");
}

on_both_builds!(node_label_group_is_stamped, config_workload_group_wins_over_the_label);
