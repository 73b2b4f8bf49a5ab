//! `isogroup-demo show`: the demo requests and a readable table of the path
//! each one took (a -> b -> c), with fallback and fail-fast marked.
//! `isogroup-demo send`: many requests in one group, each its own trace, and
//! how many took each path.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use isogroup_core::propagation::sampled;
use serde_json::Value;

struct Case {
    what: &'static str,
    headers: &'static [(&'static str, &'static str)],
    /// The group the request asks for, to mark hops served by another group.
    group: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case { what: "no group", headers: &[], group: None },
    Case { what: "x-isogroup: feature-1", headers: &[("x-isogroup", "feature-1")], group: Some("feature-1") },
    Case {
        what: "baggage: isogroup=feature-1",
        headers: &[("baggage", "user=alice, isogroup=feature-1")],
        group: Some("feature-1"),
    },
    Case {
        what: "x-isogroup: feature-2 (falls back to feature-1)",
        headers: &[("x-isogroup", "feature-2")],
        group: Some("feature-2"),
    },
    Case { what: "x-isogroup: nobody (unknown group)", headers: &[("x-isogroup", "nobody")], group: Some("nobody") },
    Case {
        what: "x-isogroup: feature-1, x-isogroup-strict: c",
        headers: &[("x-isogroup", "feature-1"), ("x-isogroup-strict", "c")],
        group: Some("feature-1"),
    },
    Case { what: "x-isogroup: team-s (strict group)", headers: &[("x-isogroup", "team-s")], group: Some("team-s") },
];

pub async fn run(via: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = reqwest::Client::new();
    let mut traces = TraceIds::new();
    println!("{:<50} {:<6} path taken (a -> b -> c)", "request", "status");
    println!("{}", "-".repeat(110));
    for case in CASES {
        // Each request its own trace, as a traced client sends it: the
        // sidecars' propagation reports follow traces (untraced calls count
        // as possibly broken).
        let mut req = client
            .get(format!("http://{via}/"))
            .header("host", "a")
            .header("traceparent", traceparent(&traces.next_id()));
        for (k, v) in case.headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let mut served: Vec<String> = resp
            .headers()
            .get_all("x-isogroup-served")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        // With sidecars each hop is annotated twice (the caller's outbound
        // side and the callee's inbound side).
        served.dedup();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        println!("{:<50} {:<6} {}", case.what, status, path(&body, case.group));
        println!("{:<50} {:<6} x-isogroup-served: {}", "", "", served.join(", "));
    }
    Ok(())
}

/// `a@feature-1 -> b@feature-1 -> c@base (fallback)` from the nested answers.
fn path(body: &Value, group: Option<&str>) -> String {
    let mut hops = Vec::new();
    let mut node = body;
    loop {
        if let Some(err) = node.get("error").and_then(Value::as_str) {
            let service = node.get("service").and_then(Value::as_str).unwrap_or("?");
            let reason = node.get("reason").and_then(Value::as_str).unwrap_or(err);
            hops.push(format!("{service}: FAIL-FAST 503 ({reason})"));
            break;
        }
        let (Some(service), Some(served)) =
            (node.get("service").and_then(Value::as_str), node.get("group").and_then(Value::as_str))
        else {
            hops.push(format!("? {node}"));
            break;
        };
        let fallback = group.is_some_and(|g| g != served);
        hops.push(format!("{service}@{served}{}", if fallback { " (fallback)" } else { "" }));
        match node.get("next") {
            Some(next) => node = next,
            None => break,
        }
    }
    hops.join(" -> ")
}

/// What the sidecars' `propagation.sample` is in the demo (envoy/sidecars/sidecar.yaml).
const DEMO_SAMPLE: u32 = 8;

pub async fn send(via: &str, group: &str, count: u32) -> Result<(), Box<dyn std::error::Error>> {
    let client = reqwest::Client::new();
    let mut traces = TraceIds::new();
    let mut paths: BTreeMap<String, u32> = BTreeMap::new();
    let mut in_sample = 0;
    for _ in 0..count {
        let trace_id = traces.next_id();
        if sampled(trace_id.as_bytes(), DEMO_SAMPLE) {
            in_sample += 1;
        }
        let resp = client
            .get(format!("http://{via}/"))
            .header("host", "a")
            .header("x-isogroup", group)
            .header("traceparent", traceparent(&trace_id))
            .send()
            .await?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        *paths.entry(format!("{status} {}", path(&body, Some(group)))).or_default() += 1;
    }
    println!("{count} requests in {group}, each its own traceparent ({in_sample} in the sidecars' sample, 1 in {DEMO_SAMPLE}):");
    for (path, n) in paths {
        println!("  {n:>4} x {path}");
    }
    Ok(())
}

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-00f067aa0ba902b7-01")
}

/// Trace ids unique to this run: a clock-seeded sequence through splitmix64.
struct TraceIds {
    seed: u64,
    n: u64,
}

impl TraceIds {
    fn new() -> TraceIds {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        TraceIds { seed, n: 0 }
    }

    /// 32 hex digits, as `traceparent` carries them.
    fn next_id(&mut self) -> String {
        self.n += 1;
        format!("{:016x}{:016x}", splitmix64(self.seed ^ self.n), splitmix64(self.seed.wrapping_add(self.n)))
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
