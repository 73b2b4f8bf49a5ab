//! Two isogroup configurations in one Envoy and one vm_id: shared data is
//! scoped by the table source, so each listener routes by its own table,
//! and listeners that share a source share one poller.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use std::time::Duration;

use common::{demo_instance, http, wait_for, Build, Companion, Envoy};

/// b has a feature-1 lane in team A's table only.
const TABLE_A: &str = r#"{"version": 1, "services": {"b": {"hosts": ["b"], "clusters": {"base": "b-base", "feature-1": "b-feature-1"}}}}"#;
const TABLE_B: &str = r#"{"version": 1, "services": {"b": {"hosts": ["b"], "clusters": {"base": "b-base"}}}}"#;

/// The group serving b for `x-isogroup: feature-1` on `port`.
async fn serving(client: &reqwest::Client, port: u16) -> Option<String> {
    let resp = client
        .get(format!("http://127.0.0.1:{port}/"))
        .header("host", "b")
        .header("x-isogroup", "feature-1")
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = resp.json().await.ok()?;
    body["group"].as_str().map(str::to_owned)
}

async fn wait_serving(client: &reqwest::Client, port: u16, group: &str) {
    wait_for(&format!("b@{group} on port {port}"), Duration::from_secs(10), || async {
        (serving(client, port).await.as_deref() == Some(group)).then_some(())
    })
    .await;
}

async fn each_listener_routes_by_its_own_source(build: Build) {
    let rendered = build.config("envoy/two-sources.yaml");
    let _base = demo_instance("b", "base", rendered.port(18010)).await;
    let _lane = demo_instance("b", "feature-1", rendered.port(18011)).await;
    let _a = Companion::start(rendered.port(18080), TABLE_A).await;
    let _b = Companion::start(rendered.port(18081), TABLE_B).await;
    let envoy = Envoy::start(&rendered, 9901, 10000).await.unwrap_or_else(|log| panic!("{log}"));
    let client = http();
    wait_serving(&client, rendered.port(10000), "feature-1").await;
    wait_serving(&client, rendered.port(10001), "base").await;
    // Both sources polled and accepted their own table; neither took the other's.
    assert_eq!(envoy.wait_stat(&build.stat("isogroup_table_updates_total"), 2).await, 2);
    for _ in 0..20 {
        assert_eq!(serving(&client, rendered.port(10000)).await.as_deref(), Some("feature-1"));
        assert_eq!(serving(&client, rendered.port(10001)).await.as_deref(), Some("base"));
    }
}

async fn listeners_that_share_a_source_poll_once(build: Build) {
    let mut rendered = build.config("envoy/two-sources.yaml");
    rendered.yaml = rendered.yaml.replace(
        r#""cluster": "companion-b", "authority": "companion-b""#,
        r#""cluster": "companion-a", "authority": "companion-a""#,
    );
    let _base = demo_instance("b", "base", rendered.port(18010)).await;
    let _lane = demo_instance("b", "feature-1", rendered.port(18011)).await;
    let companion = Companion::start(rendered.port(18080), TABLE_A).await;
    let envoy = Envoy::start(&rendered, 9901, 10000).await.unwrap_or_else(|log| panic!("{log}"));
    let client = http();
    wait_serving(&client, rendered.port(10000), "feature-1").await;
    wait_serving(&client, rendered.port(10001), "feature-1").await;
    // One long-poll held for the whole process, whatever the listener count.
    wait_for("a held poll", Duration::from_secs(10), || async {
        (companion.metric("isogroup_companion_held_polls").await == 1.0).then_some(())
    })
    .await;
    let version = companion.set_instance("b", "feature-1", None).await;
    wait_serving(&client, rendered.port(10000), "base").await;
    wait_serving(&client, rendered.port(10001), "base").await;
    envoy.wait_stat(&build.stat("isogroup_table_version"), version).await;
    wait_for("a held poll", Duration::from_secs(10), || async {
        (companion.metric("isogroup_companion_held_polls").await == 1.0).then_some(())
    })
    .await;
    // Two tables accepted in all (the first and the change), not two per listener.
    assert_eq!(envoy.stat(&build.stat("isogroup_table_updates_total")).await, 2);
    let polls = companion.metric("isogroup_companion_polls_total").await;
    assert!(polls <= 4.0, "{polls} polls for two tables: more than one poller");
}

on_both_builds!(each_listener_routes_by_its_own_source, listeners_that_share_a_source_poll_once);
