//! Propagation assist through real Envoy (envoy/assist.yaml): service a drops
//! x-isogroup and baggage but forwards traceparent; the group survives.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use common::{chain, http, rss_kb, Mesh, Rendered};
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
async fn group_survives_an_app_that_forwards_only_traceparent() {
    let rendered = Rendered::from_file("envoy/assist.yaml");
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

#[tokio::test]
async fn the_store_stays_bounded_under_many_trace_ids() {
    let rendered = Rendered::from_file("envoy/assist.yaml");
    let inbound = rendered.port(10001);
    let mesh = Mesh::start_custom(rendered, &["a"]).await;
    let first = traceparent(1);
    let body = through_inbound(inbound, &[("x-isogroup", "feature-1".into()), ("traceparent", first.clone())]).await;
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base");
    let before = rss_kb(mesh.envoy.proc.pid());
    // 3000 distinct traces through a 64-slot store
    for n in 2..3002u64 {
        let body =
            through_inbound(inbound, &[("x-isogroup", "feature-1".into()), ("traceparent", traceparent(n))]).await;
        assert_eq!(body["next"]["group"], "feature-1", "trace {n}");
    }
    let after = rss_kb(mesh.envoy.proc.pid());
    println!("envoy RSS {before} kB -> {after} kB over 3000 distinct trace ids");
    assert!(after < before + 20_000, "bounded: {before} kB -> {after} kB");
    // the first trace's slot has long been reused by later traces
    let slot_reused = (2..3002u64).any(|n| {
        let key = |t: &str| {
            let id = &t[3..35];
            id.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3)) % 64
        };
        key(&traceparent(n)) == key(&first)
    });
    assert!(slot_reused);
    let body = through_inbound(inbound, &[("traceparent", first)]).await;
    assert_eq!(body["group"], "base", "no group on the request itself");
    assert_eq!(body["next"]["group"], "base", "the evicted entry is gone: bounded, not growing");
}
