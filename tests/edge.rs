//! Edge mode through real Envoy (envoy/edge.yaml): every rule kind, sticky
//! percentages, trust of the direct peer, injection for later hops.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use std::net::IpAddr;

use common::{chain, Build, Mesh};
use serde_json::Value;

/// A client whose connections come from `local` (any 127/8 address is ours).
fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(local.parse::<IpAddr>().ok()).build().unwrap()
}

struct Gateway {
    _mesh: Mesh,
    port: u16,
}

impl Gateway {
    async fn start(build: Build) -> Gateway {
        let rendered = build.config("envoy/edge.yaml");
        let port = rendered.port(10080);
        Gateway { _mesh: Mesh::start_with(rendered).await, port }
    }

    async fn get(
        &self,
        client: &reqwest::Client,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (reqwest::header::HeaderMap, Value) {
        let mut req = client.get(format!("http://127.0.0.1:{}{path}", self.port)).header("host", "a");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let h = resp.headers().clone();
        (h, resp.json().await.unwrap_or(Value::Null))
    }
}

async fn each_rule_kind_routes_as_configured(build: Build) {
    let gw = Gateway::start(build).await;
    let untrusted = client_from("127.0.0.1");
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("/", &[], "a@base > b@base > c@base"),
        ("/", &[("x-user", "alice")], "a@feature-1 > b@feature-1 > c@base"),
        ("/", &[("x-user", "qa-42")], "a@feature-2 > b@feature-1 > c@base"),
        ("/", &[("x-user", "dev-joe")], "a@team-s > b:failfast strict_group"),
        ("/", &[("x-user", "dev-Joe")], "a@base > b@base > c@base"),
        ("/", &[("cookie", "theme=dark; lane=blue")], "a@feature-1 > b@feature-1 > c@base"),
        ("/page?x=1&lane=green", &[], "a@feature-2 > b@feature-1 > c@base"),
        // first match wins: header rule 1 before the cookie rule
        ("/", &[("x-user", "qa-1"), ("cookie", "lane=blue")], "a@feature-2 > b@feature-1 > c@base"),
    ];
    for (path, headers, want) in cases {
        let (_, body) = gw.get(&untrusted, path, headers).await;
        assert_eq!(chain(&body), *want, "{path} {headers:?}");
    }
    // the chosen group travels on as header and baggage (other members kept)
    let (_, body) = gw.get(&untrusted, "/", &[("x-user", "alice"), ("baggage", "user=alice")]).await;
    assert_eq!(body["headers"]["x-isogroup"], "feature-1");
    assert_eq!(body["headers"]["baggage"], "user=alice,isogroup=feature-1");
    // source CIDR rule: a peer from 127.0.0.3
    let (_, body) = gw.get(&client_from("127.0.0.3"), "/", &[]).await;
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base");
}

async fn percentage_split_is_sticky_and_close_to_its_weight(build: Build) {
    let gw = Gateway::start(build).await;
    let client = client_from("127.0.0.1");
    let ids = 400;
    let mut in_lane = 0;
    for n in 0..ids {
        let id = format!("user-{n}");
        let (_, body) = gw.get(&client, "/", &[("x-user-id", &id)]).await;
        let group = body["group"].as_str().unwrap().to_owned();
        // the SPEC's bucket, computed independently here: FNV-1a 64 mod 100 < 30
        let hash = id.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
        let want = if hash % 100 < 30 { "feature-2" } else { "base" };
        assert_eq!(group, want, "{id}");
        in_lane += u32::from(group == "feature-2");
        if n % 50 == 0 {
            for _ in 0..3 {
                let (_, again) = gw.get(&client, "/", &[("x-user-id", &id)]).await;
                assert_eq!(again["group"], group.as_str(), "sticky for {id}");
            }
        }
    }
    let share = f64::from(in_lane) / f64::from(ids);
    println!("percentage rule 30%: {in_lane}/{ids} = {:.1}%", share * 100.0);
    assert!((0.22..0.38).contains(&share), "share {share}");
}

async fn only_trusted_peers_bring_their_own_group(build: Build) {
    let gw = Gateway::start(build).await;
    let own = [("x-isogroup", "feature-2"), ("baggage", "isogroup=feature-2,k=v"), ("x-isogroup-debug", "1")];
    // untrusted: own group ignored and removed; no isogroup response headers
    let (headers, body) = gw.get(&client_from("127.0.0.1"), "/", &own).await;
    assert_eq!(chain(&body), "a@base > b@base > c@base");
    assert!(body["headers"].get("x-isogroup").is_none(), "{body}");
    assert_eq!(body["headers"]["baggage"], "k=v");
    assert!(headers.get("x-isogroup-served").is_none(), "stripped for untrusted peers");
    assert!(headers.get("x-isogroup-decision").is_none());
    let (_, body) = gw.get(&client_from("127.0.0.1"), "/", &[("cookie", "isogroup=feature-1; k=v")]).await;
    assert_eq!(chain(&body), "a@base > b@base > c@base");
    assert_eq!(body["headers"]["cookie"], "k=v");
    let (_, body) = gw.get(&client_from("127.0.0.1"), "/", &[("x-user", "alice"), ("x-isogroup-strict", "c")]).await;
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base", "an untrusted strict header is dropped");
    // trusted (127.0.0.2): its own group wins over the rules; annotations come back
    let (headers, body) =
        gw.get(&client_from("127.0.0.2"), "/", &[("x-isogroup", "feature-2"), ("x-user", "alice")]).await;
    assert_eq!(chain(&body), "a@feature-2 > b@feature-1 > c@base");
    let served: Vec<&str> = headers.get_all("x-isogroup-served").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(served, ["c=base;fallback", "b=feature-1;fallback", "a=feature-2"]);
    let (_, body) = gw.get(&client_from("127.0.0.2"), "/", &[("cookie", "isogroup=feature-1")]).await;
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base");
    assert_eq!(body["headers"]["x-isogroup"], "feature-1", "a trusted cookie is stamped on for later hops");
    let (_, body) =
        gw.get(&client_from("127.0.0.2"), "/", &[("x-isogroup", "feature-1"), ("x-isogroup-strict", "c")]).await;
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c:failfast strict_request");
}

on_both_builds!(
    each_rule_kind_routes_as_configured,
    percentage_split_is_sticky_and_close_to_its_weight,
    only_trusted_peers_bring_their_own_group
);
