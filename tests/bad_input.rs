//! Bad input against real Envoy: malformed, oversized and non-UTF-8 headers,
//! CR/LF smuggling attempts, and a companion that serves oversized tables,
//! hangs or resets. Every case has a clear outcome and Envoy keeps serving.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use std::time::Duration;

use common::{chain, fake_companion, http, http_fresh_connections, Build, Mesh};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends raw request bytes; the status code and the body.
async fn raw(port: u16, request: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn get(headers: &[u8]) -> Vec<u8> {
    let mut r = b"GET / HTTP/1.1\r\n".to_vec();
    r.extend_from_slice(headers);
    r.extend_from_slice(b"connection: close\r\n\r\n");
    r
}

async fn hostile_headers_have_clear_outcomes(build: Build) {
    let mesh = Mesh::start_with(build.config("envoy/demo.yaml")).await;
    let port = mesh.envoy.listener;
    let big_baggage = format!("baggage: isogroup=feature-1,pad={}\r\n", "x".repeat(9000));
    let many_members = format!("baggage: isogroup=feature-1{}\r\n", ",k=v".repeat(300));
    let long_strict = format!("x-isogroup-strict: {}\r\n", ",".repeat(10_000));
    // (request headers, status, chain for a 200)
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        // non-UTF-8 baggage: the valid header still wins
        (
            b"host: b\r\nx-isogroup: feature-1\r\nbaggage: isogroup=\xff\xfe, a=\x80\r\n".to_vec(),
            200,
            "b@feature-1 > c@base",
        ),
        (b"host: b\r\nbaggage: isogroup=\xff\xfe\r\n".to_vec(), 200, "b@base > c@base"),
        (b"host: b\r\ncookie: isogroup=\xff; x=y\r\n".to_vec(), 200, "b@base > c@base"),
        // percent-encoded CR/LF cannot smuggle a header through the group
        (
            b"host: b\r\nbaggage: isogroup=feature-1%0D%0Ax-isogroup-cluster:%20c-base\r\n".to_vec(),
            200,
            "b@base > c@base",
        ),
        // baggage over the W3C limits is not searched
        (format!("host: b\r\n{big_baggage}").into_bytes(), 200, "b@base > c@base"),
        (format!("host: b\r\n{many_members}").into_bytes(), 200, "b@base > c@base"),
        (format!("host: b\r\nx-isogroup: feature-1\r\n{long_strict}").into_bytes(), 200, "b@feature-1 > c@base"),
        // authority spelled oddly still finds the service
        (b"host: B:80\r\nx-isogroup: feature-1\r\n".to_vec(), 200, "b@feature-1 > c@base"),
        // a bare LF ends a header line for Envoy: the smuggled routing header
        // is a header of its own, and replaced like any client-sent one
        (b"host: b\r\nx-isogroup: feature-1\nx-isogroup-cluster: evil\r\n".to_vec(), 200, "b@feature-1 > c@base"),
        // an obsolete line fold joins into one value: not a group, ignored
        (b"host: b\r\nx-isogroup: feature-1\r\n b\r\n".to_vec(), 200, "b@base > c@base"),
        // two routing headers from the client: both replaced
        (b"host: c\r\nx-isogroup-cluster: b-feature-1\r\nx-isogroup-cluster: a-base\r\n".to_vec(), 200, "c@base"),
    ];
    for (headers, want_status, want_chain) in &cases {
        let (status, body) = raw(port, &get(headers)).await;
        let shown = String::from_utf8_lossy(&headers[..headers.len().min(80)]).into_owned();
        assert_eq!(status, *want_status, "{shown}: {body}");
        let body = body.split_once('{').map(|(_, b)| format!("{{{b}")).unwrap_or_default();
        let json: Value = serde_json::from_str(body.trim_end_matches(|c| c != '}'))
            .unwrap_or_else(|e| panic!("{shown}: {e}: {body}"));
        assert_eq!(chain(&json), *want_chain, "{shown}");
        if let Some(cluster) = json["headers"].get("x-isogroup-cluster") {
            let cluster = cluster.as_str().unwrap_or_default();
            assert!(!cluster.contains('\n') && !cluster.contains("evil"), "{shown}: {cluster}");
        }
    }
    // Envoy's codec refuses what is not HTTP; the filter never sees it.
    let refused: [&[u8]; 2] = [
        b"GET / HTTP/1.1\r\nhost: b\r\ncookie: isogroup=a; x=\x01\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: b\r\nx-iso group: feature-1\r\n\r\n",
    ];
    for r in refused {
        let (status, body) = raw(port, r).await;
        assert_eq!(status, 400, "{:?}: {body}", String::from_utf8_lossy(r));
    }
    // both workers still route (fresh connections alternate under exact balance)
    let fresh = http_fresh_connections();
    for _ in 0..6 {
        let body: Value =
            mesh.request(&fresh, "b").header("x-isogroup", "feature-1").send().await.unwrap().json().await.unwrap();
        assert_eq!(chain(&body), "b@feature-1 > c@base");
    }
    mesh.envoy.wait_stat(&build.stat("isogroup_invalid_group_total"), 5).await;
}

async fn oversized_tables_and_broken_companions_leave_the_last_good_table(build: Build) {
    let rendered = build.config("envoy/companion.yaml").with_plugin_config(
        r#"{"limits": {"max_table_bytes": 20000, "max_services": 50},
 "table": {"companion": {"cluster": "isogroup-companion", "authority": "isogroup-companion", "wait_s": 1}}}"#,
    );
    let demo: Value = serde_json::from_str(include_str!("../demo/table.json")).unwrap();
    let table = |version: u64, b_feature: bool| {
        let mut t = demo.clone();
        t["version"] = version.into();
        if b_feature {
            t["services"]["b"]["clusters"]["feature-1"] = "b-feature-1".into();
        }
        t.to_string()
    };
    let mut too_big = demo.clone();
    too_big["version"] = 6.into();
    too_big["services"]["a"]["hosts"] = (0..2000).map(|i| format!("a-alias-{i}")).collect::<Vec<_>>().into();
    let mut too_many = demo.clone();
    too_many["version"] = 7.into();
    for i in 0..60 {
        too_many["services"][format!("s{i}")] =
            serde_json::json!({"hosts": [format!("s{i}")], "clusters": {"base": "c-base"}});
    }
    let answers = vec![
        Some(table(5, true)),
        Some(too_big.to_string()),
        Some(too_many.to_string()),
        None,                // hangs: the poll times out (wait_s + 5 s)
        Some(String::new()), // resets
        Some(table(9, false)),
    ];
    let server = fake_companion(rendered.port(18080), answers).await;
    let mesh = Mesh::start_with(rendered).await;
    let b_serves = |group: &'static str| {
        let mesh = &mesh;
        async move {
            let body: Value =
                mesh.request(&http(), "b").header("x-isogroup", "feature-1").send().await.ok()?.json().await.ok()?;
            (body["group"] == group).then_some(())
        }
    };
    common::wait_for("table 5", Duration::from_secs(5), || b_serves("feature-1")).await;
    assert_eq!(mesh.envoy.wait_stat(&build.stat("isogroup_table_rejects_total"), 2).await, 2);
    assert_eq!(mesh.envoy.stat(&build.stat("isogroup_table_version")).await, 5, "the last good table serves");
    b_serves("feature-1").await.expect("routing unchanged while the companion misbehaves");
    common::wait_for("table 9 after the hang and the reset", Duration::from_secs(20), || b_serves("base")).await;
    assert_eq!(mesh.envoy.stat(&build.stat("isogroup_table_version")).await, 9);
    let log = mesh.envoy.log_text();
    assert!(log.contains("exceeds the limit of 20000"), "oversized table named in the log");
    // counted while read: the read stops at the 51st service
    assert!(log.contains("services: 51 exceeds the limit of 50 at line 1"), "too many services named in the log");
    server.abort();
}

on_both_builds!(hostile_headers_have_clear_outcomes, oversized_tables_and_broken_companions_leave_the_last_good_table);
