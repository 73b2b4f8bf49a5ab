//! Pass-through, end to end: before the first table arrives, and for a
//! service the table does not name. Sanitising and injection happen anyway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use std::time::Duration;

use common::{chain, http, wait_for, Build, Mesh};
use serde_json::Value;

async fn before_the_first_table_requests_pass_through_sanitised(build: Build) {
    // The companion config with no companion: no table ever arrives.
    let mesh = Mesh::start_with(build.config("envoy/companion.yaml")).await;
    let resp = mesh
        .request(&http(), "b")
        .header("x-isogroup", "feature-1")
        .header("x-isogroup-cluster", "b-feature-1")
        .header("x-isogroup-target", "feature-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(chain(&body), "b@base > c@base", "Envoy's default route, not the client's cluster");
    assert!(body["headers"].get("x-isogroup-cluster").is_none(), "{body}");
    assert!(body["headers"].get("x-isogroup-target").is_none(), "{body}");
    assert_eq!(body["headers"]["x-isogroup"], "feature-1", "the group travels on");
    mesh.envoy.wait_stat(&build.stat("isogroup_requests_passthrough_total"), 1).await;
    assert_eq!(mesh.envoy.stat(&build.stat("isogroup_table_version")).await, 0);
    // Never reached the companion: the table's age counts from configure.
    wait_for("the table age to grow", Duration::from_secs(30), || async {
        (mesh.envoy.stat(&build.stat("isogroup_table_age_seconds")).await >= 2).then_some(())
    })
    .await;
}

async fn an_edge_injects_the_group_on_a_service_the_table_does_not_name(build: Build) {
    // The edge's table without service a: a is a pass-through at the edge.
    let mut rendered = build.config("envoy/edge.yaml");
    let line = r#""a": {"hosts": ["a"], "clusters": {"base": "a-base", "feature-1": "a-feature-1", "feature-2": "a-feature-2", "team-s": "a-team-s"}},"#;
    assert!(rendered.yaml.contains(line), "edge.yaml names service a as this test expects");
    rendered.yaml = rendered.yaml.replace(line, "");
    let port = rendered.port(10080);
    let _mesh = Mesh::start_with(rendered).await;
    let resp = http()
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "a")
        .header("x-user", "alice")
        .header("baggage", "user=alice")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(chain(&body), "a@base > b@feature-1 > c@base", "a passed through; the lane reached b");
    assert_eq!(body["headers"]["x-isogroup"], "feature-1");
    assert_eq!(body["headers"]["baggage"], "user=alice,isogroup=feature-1");
}

on_both_builds!(
    before_the_first_table_requests_pass_through_sanitised,
    an_edge_injects_the_group_on_a_service_the_table_does_not_name
);
