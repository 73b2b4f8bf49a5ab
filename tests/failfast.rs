//! Fail-fast through real Envoy: strict groups, strict request lists, gRPC;
//! no byte reaches an upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use common::{header_values, http, Build, Mesh};

async fn strict_group_fails_fast_without_upstream_request(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let before = mesh.envoy.stat("cluster.b-base.upstream_rq_total").await;
    let resp = mesh.request(&http(), "b").header("x-isogroup", "team-s").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(header_values(&resp, "x-isogroup-failfast"), ["b"]);
    assert_eq!(header_values(&resp, "content-type"), ["application/json"]);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":"isogroup_unavailable","service":"b","group":"team-s","reason":"strict_group"}"#
    );
    mesh.envoy.wait_stat(&build.stat("isogroup_requests_failfast_total"), 1).await;
    assert_eq!(mesh.envoy.stat("cluster.b-base.upstream_rq_total").await, before, "no request reached b");
    // a strict group with its own instance is served normally
    let resp = mesh.request(&http(), "a").header("x-isogroup", "team-s").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503, "a@team-s serves, then its call to b fails fast");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["group"], "team-s");
    assert_eq!(body["next"]["reason"], "strict_group");
}

async fn strict_request_lists(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let cases: &[(&str, &str, u16)] = &[
        ("c", "c", 503),
        ("c", " b , c ", 503),
        ("c", "*", 503),
        ("c", "b", 200),
        ("b", "b", 200), // feature-1 has b: no fallback needed
    ];
    for (host, strict, want) in cases {
        let resp = mesh
            .request(&http(), host)
            .header("x-isogroup", "feature-1")
            .header("x-isogroup-strict", *strict)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), *want, "{host} strict={strict:?}");
        if *want == 503 {
            assert_eq!(
                resp.text().await.unwrap(),
                r#"{"error":"isogroup_unavailable","service":"c","group":"feature-1","reason":"strict_request"}"#
            );
        }
    }
    // the strict header travels on: a -> b -> c fails at c
    let resp = mesh
        .request(&http(), "a")
        .header("x-isogroup", "feature-1")
        .header("x-isogroup-strict", "c")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(common::chain(&body), "a@feature-1 > b@feature-1 > c:failfast strict_request");
    assert_eq!(mesh.envoy.stat("cluster.c-base.upstream_rq_total").await, 2, "only the two 200 cases reached c");
}

async fn grpc_fail_fast_is_trailers_only_unavailable(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let resp = mesh
        .request(&http(), "c")
        .header("content-type", "application/grpc")
        .header("x-isogroup", "feature-1")
        .header("x-isogroup-strict", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "gRPC errors travel in grpc-status");
    assert_eq!(header_values(&resp, "grpc-status"), ["14"]);
    assert_eq!(header_values(&resp, "x-isogroup-failfast"), ["c"]);
    let message = header_values(&resp, "grpc-message").join("");
    assert!(message.contains("isogroup_unavailable") && message.contains("strict_request"), "{message}");
    assert!(resp.bytes().await.unwrap().is_empty(), "trailers-only: no body");
    assert_eq!(mesh.envoy.stat("cluster.c-base.upstream_rq_total").await, 0);
}

on_both_builds!(
    strict_group_fails_fast_without_upstream_request,
    strict_request_lists,
    grpc_fail_fast_is_trailers_only_unavailable
);
