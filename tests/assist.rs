//! Propagation assist through real Envoy (envoy/assist.yaml): service a drops
//! x-isogroup and baggage but forwards traceparent; the group survives. Each
//! test runs on both builds (the wasm filter and the native module).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use common::{chain, http, Build, Mesh};
use serde_json::Value;

fn traceparent(n: u64) -> String {
    format!("00-{n:032x}-00f067aa0ba902b7-01")
}

/// A request to service a through the inbound listener on `port`.
async fn through_inbound(port: u16, headers: &[(&str, String)]) -> Value {
    let mut req = http().get(format!("http://127.0.0.1:{port}/")).header("host", "a");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn group_survives_an_app_that_forwards_only_traceparent_wasm() {
    group_survives_an_app_that_forwards_only_traceparent(Build::Wasm).await;
}

#[tokio::test]
async fn group_survives_an_app_that_forwards_only_traceparent_native() {
    group_survives_an_app_that_forwards_only_traceparent(Build::Native).await;
}

async fn group_survives_an_app_that_forwards_only_traceparent(build: Build) {
    let rendered = build.config("envoy/assist.yaml");
    let inbound = rendered.port(10001);
    let mesh = Mesh::start_custom(rendered, &["a"]).await;
    let tp = traceparent(0xabc);
    let body = through_inbound(inbound, &[("x-isogroup", "feature-1".into()), ("traceparent", tp.clone())]).await;
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base");
    assert!(body["next"]["headers"]["x-isogroup"] == "feature-1", "restored on a's outbound call: {body}");
    // without a group there is nothing to restore
    let body = through_inbound(inbound, &[("traceparent", traceparent(0xdef))]).await;
    assert_eq!(chain(&body), "a@base > b@base > c@base");
    // no traceparent from the client: Envoy's generated x-request-id, which
    // the app forwards too, carries the lane just as well
    let body = through_inbound(inbound, &[("x-isogroup", "feature-1".into())]).await;
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base");
    // an unknown trace id on the outbound side is not guessed
    let body: Value = mesh
        .request(&http(), "b")
        .header("traceparent", traceparent(0x5eed))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chain(&body), "b@base > c@base");
}

/// The slot a trace id lands in (`isogroup/assist/<n>`, n from its FNV-1a
/// hash as core's `assist::slot_of` takes it).
fn slot(n: u64, slots: u64) -> u64 {
    let tp = traceparent(n);
    let fnv = tp[3..35].bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    (fnv.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % slots
}

#[tokio::test]
async fn a_later_trace_evicts_an_earlier_one_in_its_slot_wasm() {
    a_later_trace_evicts_an_earlier_one_in_its_slot(Build::Wasm).await;
}

#[tokio::test]
async fn a_later_trace_evicts_an_earlier_one_in_its_slot_native() {
    a_later_trace_evicts_an_earlier_one_in_its_slot(Build::Native).await;
}

async fn a_later_trace_evicts_an_earlier_one_in_its_slot(build: Build) {
    // A TTL far beyond the test's length: only eviction can make trace 1 go.
    let mut rendered = build.config("envoy/assist.yaml");
    rendered.yaml = rendered.yaml.replace(r#""ttl_s": 30"#, r#""ttl_s": 3600"#);
    let inbound = rendered.port(10001);
    let _mesh = Mesh::start_custom(rendered, &["a"]).await;
    let remember = |n: u64| async move {
        through_inbound(inbound, &[("x-isogroup", "feature-1".into()), ("traceparent", traceparent(n))]).await
    };
    let body = remember(1).await;
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base");
    // Traces 2..=200 through the 64-slot store: the last one sharing trace 1's slot holds it.
    let last_in_slot = (2..=200u64).rev().find(|n| slot(*n, 64) == slot(1, 64)).expect("a trace in trace 1's slot");
    for n in 2..=200u64 {
        let body = remember(n).await;
        assert_eq!(body["next"]["group"], "feature-1", "trace {n}");
    }
    let body = through_inbound(inbound, &[("traceparent", traceparent(last_in_slot))]).await;
    assert_eq!(body["next"]["group"], "feature-1", "trace {last_in_slot} holds the slot");
    let body = through_inbound(inbound, &[("traceparent", traceparent(1))]).await;
    assert_eq!(body["group"], "base", "no group on the request itself");
    assert_eq!(body["next"]["group"], "base", "trace 1 was evicted: the store is bounded by its slots");
}
