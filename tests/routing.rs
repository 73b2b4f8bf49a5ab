//! Group routing through real Envoy: own instance, fallback, chains, baggage,
//! pass-through, sanitising, annotations.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use common::{chain, header_values, http, Build, Mesh};
use serde_json::Value;

async fn get(mesh: &Mesh, host: &str, headers: &[(&str, &str)]) -> (u16, Vec<String>, Value) {
    let mut req = mesh.request(&http(), host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request through envoy");
    let status = resp.status().as_u16();
    let served = header_values(&resp, "x-isogroup-served");
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, served, body)
}

async fn routes_groups_with_fallback_and_chains(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);
    let cases: &[Case] = &[
        (&[], "a@base > b@base > c@base", &["c=base", "b=base", "a=base"]),
        (
            &[("x-isogroup", "feature-1")],
            "a@feature-1 > b@feature-1 > c@base",
            &["c=base;fallback", "b=feature-1", "a=feature-1"],
        ),
        // feature-2 -> feature-1 -> base
        (
            &[("x-isogroup", "feature-2")],
            "a@feature-2 > b@feature-1 > c@base",
            &["c=base;fallback", "b=feature-1;fallback", "a=feature-2"],
        ),
        // a group nobody registered: base everywhere
        (
            &[("x-isogroup", "nobody")],
            "a@base > b@base > c@base",
            &["c=base;fallback", "b=base;fallback", "a=base;fallback"],
        ),
    ];
    for (headers, want_chain, want_served) in cases {
        let (status, served, body) = get(&mesh, "a", headers).await;
        assert_eq!(status, 200, "{headers:?}: {body}");
        assert_eq!(chain(&body), *want_chain, "{headers:?}");
        assert_eq!(served, *want_served, "{headers:?}");
    }
    assert_eq!(mesh.envoy.wait_stat(&build.stat("isogroup_requests_routed_total"), 12).await, 12);
    assert_eq!(mesh.envoy.wait_stat(&build.stat("isogroup_requests_fallback_total"), 6).await, 6);
}

async fn baggage_carries_the_group(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let cases: &[(&str, &str)] = &[
        ("isogroup=feature-1", "a@feature-1 > b@feature-1 > c@base"),
        ("  user=alice ,  isogroup = feature-1 ;ttl=3 , other=x", "a@feature-1 > b@feature-1 > c@base"),
        ("isogroup=feature%2D2", "a@feature-2 > b@feature-1 > c@base"),
        ("user=alice", "a@base > b@base > c@base"),
    ];
    for (baggage, want) in cases {
        let (status, _, body) = get(&mesh, "a", &[("baggage", baggage)]).await;
        assert_eq!(status, 200);
        assert_eq!(chain(&body), *want, "baggage {baggage:?}");
        // the app forwarded baggage untouched by the filter
        assert_eq!(body["headers"]["baggage"], baggage.trim(), "baggage {baggage:?}");
    }
    // the header wins over baggage
    let (_, _, body) = get(&mesh, "a", &[("x-isogroup", "feature-2"), ("baggage", "isogroup=feature-1")]).await;
    assert_eq!(chain(&body), "a@feature-2 > b@feature-1 > c@base");
}

async fn unknown_service_passes_through(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let resp = mesh
        .request(&http(), "other")
        .header("x-isogroup", "feature-1")
        .header("x-isogroup-strict", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404, "envoy's own route for unknown hosts");
    assert!(header_values(&resp, "x-isogroup-served").is_empty());
    assert_eq!(resp.text().await.unwrap(), "no such service\n");
    mesh.envoy.wait_stat(&build.stat("isogroup_requests_passthrough_total"), 1).await;
}

async fn client_cannot_pick_a_cluster(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    // Routed request: the filter's own value replaces the client's.
    let (status, _, body) =
        get(&mesh, "c", &[("x-isogroup-cluster", "a-feature-1"), ("x-isogroup-target", "feature-1")]).await;
    assert_eq!(status, 200);
    assert_eq!(chain(&body), "c@base");
    assert_eq!(body["headers"]["x-isogroup-cluster"], "c-base");
    assert_eq!(body["headers"]["x-isogroup-target"], "base");
    // Pass-through request: removed, so the default route applies.
    let mut rendered = build.config("envoy/demo.yaml");
    rendered = rendered.with_plugin_config(
        r#"{"table": {"inline": {"services": {"b": {"hosts": ["b"], "clusters": {"base": "b-base"}}}}}}"#,
    );
    drop(mesh);
    let mesh = Mesh::start_with(rendered).await;
    let resp = mesh
        .request(&http(), "c")
        .header("x-isogroup-cluster", "b-feature-1")
        .header("x-isogroup-target", "x")
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(chain(&body), "c@base", "c is not in this table: default route, not the client's cluster");
    assert!(body["headers"].get("x-isogroup-cluster").is_none(), "{body}");
    assert!(body["headers"].get("x-isogroup-target").is_none(), "{body}");
}

async fn debug_explains_the_decision(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let resp = mesh
        .request(&http(), "b")
        .header("x-isogroup", "feature-2")
        .header("x-isogroup-debug", "1")
        .send()
        .await
        .unwrap();
    let decisions = header_values(&resp, "x-isogroup-decision");
    assert_eq!(decisions.len(), 2, "b's hop and c's hop: {decisions:?}");
    let (b, c) = (&decisions[1], &decisions[0]);
    assert!(b.starts_with("vm="), "{b}");
    assert!(
        b.ends_with(
            "table=1; group=feature-2 (header); invalid=0; service=b serving=feature-1 cluster=b-feature-1 fallback"
        ),
        "{b}"
    );
    assert!(
        c.ends_with("table=1; group=feature-2 (header); invalid=0; service=c serving=base cluster=c-base fallback"),
        "{c}"
    );
    // without the debug header: no explanation
    let resp = mesh.request(&http(), "b").header("x-isogroup", "feature-2").send().await.unwrap();
    assert!(header_values(&resp, "x-isogroup-decision").is_empty());
}

on_both_builds!(
    routes_groups_with_fallback_and_chains,
    baggage_carries_the_group,
    unknown_service_passes_through,
    client_cannot_pick_a_cluster,
    debug_explains_the_decision
);
