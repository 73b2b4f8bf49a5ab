//! Lanes at the edge through real Envoy (envoy/lanes.yaml), with the table
//! fed at runtime: a browser joins and leaves a lane through the join path,
//! a source binding routes a machine (127.0.0.2) with no header until it
//! expires, a runtime table rule routes matching requests, and a gateway
//! with `runtime: false` ignores bindings, table rules and the lane cookie.
//! One Envoy and one table server for the whole file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{chain, wait_for, Build, Mesh};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A client whose connections come from `local`, each request on a new
/// one (so every worker serves some), following no redirect.
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().ok())
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The demo's table plus a binding for 127.0.0.2 and one runtime rule,
/// `x-lane-rule: v<version>` (so a probe tells which table a worker has).
fn table(version: u64, expires_at: u64) -> String {
    format!(
        r#"{{"version": {version},
  "groups": {{"feature-1": {{}}, "feature-2": {{"fallback": ["feature-1"]}}, "team-s": {{"mode": "strict"}}}},
  "services": {{
    "a": {{"hosts": ["a"], "clusters": {{"base": "a-base", "feature-1": "a-feature-1", "feature-2": "a-feature-2", "team-s": "a-team-s"}}}},
    "b": {{"hosts": ["b"], "clusters": {{"base": "b-base", "feature-1": "b-feature-1"}}}},
    "c": {{"hosts": ["c"], "clusters": {{"base": "c-base"}}}}}},
  "sources": [{{"cidr": "127.0.0.2/32", "group": "feature-1", "expires_at": {expires_at}}}],
  "rules": [{{"header": "x-lane-rule", "values": ["v{version}"], "group": "feature-2"}}]}}"#
    )
}

/// A companion stand-in: answers a poll at once when its table is newer
/// than the poll's `after=`, else holds it until the table changes.
async fn table_server(port: u16, tables: watch::Receiver<(u64, String)>) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let mut tables = tables.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let after: u64 = head
                    .split_once("after=")
                    .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                    .unwrap_or(0);
                let body = loop {
                    let (version, body) = tables.borrow_and_update().clone();
                    if version > after {
                        break body;
                    }
                    if tables.changed().await.is_err() {
                        return;
                    }
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    })
}

struct Edge {
    /// Kept alive for the test (its Envoy and demo services).
    _mesh: Mesh,
    gateway: u16,
    pinned: u16,
}

impl Edge {
    /// (status, headers, JSON body) of a GET to `port` as host `a`.
    async fn get(
        &self,
        client: &reqwest::Client,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = client.get(format!("http://127.0.0.1:{port}{path}")).header("host", "a");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let (status, h) = (resp.status().as_u16(), resp.headers().clone());
        (status, h, resp.json().await.unwrap_or(Value::Null))
    }

    async fn chain(&self, client: &reqwest::Client, port: u16, headers: &[(&str, &str)]) -> String {
        chain(&self.get(client, port, "/", headers).await.2)
    }

    /// Waits until every worker of both gateways has table `version`: eight
    /// requests in a row, each on a new connection, route by the table's rule
    /// (gateway) and by the plugin's rule (pinned, so it has a table at all).
    async fn table_version(&self, version: u64) {
        let probe = client_from("127.0.0.1");
        let rule = format!("v{version}");
        let streak = std::cell::Cell::new(0);
        wait_for(&format!("table version {version} on every worker"), Duration::from_secs(20), || async {
            let routed = self.chain(&probe, self.gateway, &[("x-lane-rule", &rule)]).await == FEATURE_2
                && self.chain(&probe, self.pinned, &[("x-pin", "1")]).await == FEATURE_1;
            streak.set(if routed { streak.get() + 1 } else { 0 });
            (streak.get() >= 8).then_some(())
        })
        .await;
    }
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
}

const BASE: &str = "a@base > b@base > c@base";
const FEATURE_1: &str = "a@feature-1 > b@feature-1 > c@base";
const FEATURE_2: &str = "a@feature-2 > b@feature-1 > c@base";

async fn joins_bindings_and_runtime_rules_at_the_edge(build: Build) {
    let rendered = build.config("envoy/lanes.yaml");
    let (tables, rx) = watch::channel((1, table(1, now_s() + 3600)));
    let server = table_server(rendered.port(18080), rx).await;
    let edge =
        Edge { gateway: rendered.port(10080), pinned: rendered.port(10081), _mesh: Mesh::start_with(rendered).await };
    edge.table_version(1).await;
    let browser = client_from("127.0.0.1");
    let (gw, pinned) = (edge.gateway, edge.pinned);

    // Join: a redirect that sets the cookie; the next request rides the lane.
    let (status, h, body) = edge.get(&browser, gw, "/.isogroup/join?lane=feature-2&return=/after", &[]).await;
    assert_eq!((status, header(&h, "location")), (302, "/after".to_owned()), "{body}");
    let set = header(&h, "set-cookie");
    assert_eq!(set, "isogroup-lane=feature-2; Path=/; SameSite=Lax");
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_eq!(edge.chain(&browser, gw, &[("cookie", &cookie)]).await, FEATURE_2);
    // the lane cookie beats the machine's binding too
    assert_eq!(edge.chain(&client_from("127.0.0.2"), gw, &[("cookie", "isogroup-lane=feature-2")]).await, FEATURE_2);
    // Leave: the cookie is cleared, and without it the request is base again.
    let (status, h, _) = edge.get(&browser, gw, "/.isogroup/join?lane=", &[]).await;
    assert_eq!((status, header(&h, "location")), (302, "/".to_owned()));
    assert_eq!(header(&h, "set-cookie"), "isogroup-lane=; Path=/; SameSite=Lax; Max-Age=0");
    assert_eq!(edge.chain(&browser, gw, &[]).await, BASE);
    // Refused: a lane the table does not know, a return that leaves the host.
    let (status, h, body) = edge.get(&browser, gw, "/.isogroup/join?lane=nope", &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unknown_lane")), "{body}");
    assert!(h.get("set-cookie").is_none());
    let (status, _, body) = edge.get(&browser, gw, "/.isogroup/join?lane=feature-1&return=//evil.example/", &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_return")), "{body}");
    // an unknown lane cookie is skipped and not forwarded
    let (_, _, body) = edge.get(&browser, gw, "/", &[("cookie", "isogroup-lane=nope; k=v")]).await;
    assert_eq!((chain(&body).as_str(), body["headers"]["cookie"].as_str()), (BASE, Some("k=v")));

    // A source binding: 127.0.0.2 rides feature-1 with no header; others don't.
    let machine = client_from("127.0.0.2");
    assert_eq!(edge.chain(&machine, gw, &[]).await, FEATURE_1);
    assert_eq!(edge.chain(&client_from("127.0.0.3"), gw, &[]).await, BASE);
    // A runtime table rule.
    assert_eq!(edge.chain(&browser, gw, &[("x-lane-rule", "v1")]).await, FEATURE_2);
    // runtime: false ignores both, and the lane cookie (no join path there).
    assert_eq!(edge.chain(&machine, pinned, &[]).await, BASE);
    assert_eq!(edge.chain(&browser, pinned, &[("x-lane-rule", "v1")]).await, BASE);
    assert_eq!(edge.chain(&browser, pinned, &[("cookie", "isogroup-lane=feature-2")]).await, BASE);
    let (status, _, _) = edge.get(&browser, pinned, "/.isogroup/join?lane=feature-2", &[]).await;
    assert_eq!(status, 200, "no join path on the pinned gateway: forwarded");

    // Expiry, by the filter's own clock: a binding ending a few seconds from now.
    let expires_at = now_s() + 5;
    tables.send((2, table(2, expires_at))).unwrap();
    edge.table_version(2).await;
    if now_s() + 1 < expires_at {
        assert_eq!(edge.chain(&machine, gw, &[]).await, FEATURE_1, "before its expiry");
    }
    let routed = wait_for("the binding expires", Duration::from_secs(30), || async {
        let c = edge.chain(&machine, gw, &[]).await;
        (c == BASE).then_some(now_s())
    })
    .await;
    assert!(routed >= expires_at, "base only once expired ({routed} < {expires_at})");
    server.abort();
}

on_both_builds!(joins_bindings_and_runtime_rules_at_the_edge);
