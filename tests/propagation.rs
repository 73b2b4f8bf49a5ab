//! Propagation reports end to end (SPEC "Propagation reports"): the demo's
//! services, each with its own Envoy as a sidecar (envoy/sidecars/sidecar.yaml,
//! its own `workload`, poller and assist slots) behind the gateway
//! (envoy/sidecars/gateway.yaml), and the real companion. a@feature-1 forwards
//! only `traceparent`, b@feature-1 forwards no header at all; every sidecar
//! records and reports with the assist's `heal: false`, then a@feature-1's
//! sidecar is restarted with `heal: true`.
//!
//! The test sends its own trace ids and computes which ones the sidecars
//! sample (core's `sampled`, FNV-1a 64 of the id mod `sample`): the counts
//! `/v1/propagation` gives are exactly the sampled share of what it sent
//! (`untraced`, which has no trace to sample, counts every request).
//!
//! Wasm only: the native module refuses `propagation` (docs/native.md,
//! tests/native.rs), a documented difference.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use common::{chain, demo_bin, free_port, http, root, wait_for, Companion, Envoy, Proc, Rendered, DEMO_INSTANCES};
use isogroup_core::edge::fnv1a;
use isogroup_core::propagation::sampled;
use serde_json::{json, Value};
use webdriver::Browser;

/// The demo table with b@feature-1 registered.
const TABLE: &str = r#"{
  "version": 1,
  "groups": {
    "feature-1": { "fallback": [] },
    "feature-2": { "fallback": ["feature-1"] },
    "team-s": { "mode": "strict" }
  },
  "services": {
    "a": { "hosts": ["a"], "clusters": { "base": "a-base", "feature-1": "a-feature-1", "feature-2": "a-feature-2", "team-s": "a-team-s" } },
    "b": { "hosts": ["b"], "clusters": { "base": "b-base", "feature-1": "b-feature-1" } },
    "c": { "hosts": ["c"], "clusters": { "base": "c-base" } }
  }
}"#;

/// `propagation.sample` in envoy/sidecars/sidecar.yaml.
const SAMPLE: u32 = 8;
/// `propagation_assist.slots` (its default): the test's trace ids each get
/// their own slot, so no record is evicted before its outbound request.
const SLOTS: u32 = 4096;

/// The workload that forwards only the trace headers, and the one that
/// forwards nothing.
const TRACE_ONLY: &str = "a-feature-1";
const NOTHING: &str = "b-feature-1";

/// Ports as build.sh's demo lays them out (an instance's app port p: its
/// sidecar's inbound p - 3000, outbound p - 2000, admin p - 1000; the
/// gateway 10000 and 9901; the companion 18080), each mapped to a free one.
struct Ports(BTreeMap<u16, u16>);

impl Ports {
    fn new() -> Ports {
        let mut defaults = vec![10000, 9901, 18080];
        for &(p, ..) in DEMO_INSTANCES {
            defaults.extend([p, p - 3000, p - 2000, p - 1000]);
        }
        Ports(defaults.into_iter().map(|d| (d, free_port())).collect())
    }

    fn of(&self, default: u16) -> u16 {
        self.0[&default]
    }

    /// Every workload's sidecar inbound port, as placeholders.
    fn inbound_placeholders(&self) -> Vec<(String, String)> {
        DEMO_INSTANCES.iter().map(|&(p, s, g, _)| (format!("{s}-{g}"), self.of(p - 3000).to_string())).collect()
    }

    /// A template with these ports: each port it names maps back to its
    /// default (for `Envoy::start`, which asks by default port).
    fn render(&self, template: &str, values: &[(String, String)]) -> Rendered {
        let mut yaml = std::fs::read_to_string(root().join(template)).unwrap();
        for (name, value) in values {
            yaml = yaml.replace(&format!("{{{{{name}}}}}"), value);
        }
        assert!(!yaml.contains("{{"), "{template}: a placeholder left");
        Rendered { yaml, ports: self.0.clone() }
    }
}

fn workload(service: &str, group: &str) -> String {
    format!("{service}-{group}")
}

/// The sidecar of the instance whose app listens on (default) `app`.
async fn sidecar(ports: &Ports, name: &str, app: u16, heal: bool) -> Envoy {
    let mut values = ports.inbound_placeholders();
    values.extend([
        ("workload".into(), name.to_owned()),
        ("heal".into(), heal.to_string()),
        ("app".into(), ports.of(app).to_string()),
        ("inbound".into(), ports.of(app - 3000).to_string()),
        ("outbound".into(), ports.of(app - 2000).to_string()),
        ("admin".into(), ports.of(app - 1000).to_string()),
        ("companion".into(), ports.of(18080).to_string()),
    ]);
    let rendered = ports.render("envoy/sidecars/sidecar.yaml", &values);
    let envoy = Envoy::start(&rendered, app - 1000, app - 2000).await.unwrap_or_else(|log| panic!("{name}: {log}"));
    envoy.wait_stat("wasmcustom.isogroup_table_version", 1).await;
    envoy
}

/// The companion, the gateway, and every demo workload: its app and its sidecar.
struct SidecarMesh {
    ports: Ports,
    companion: Companion,
    gateway: Envoy,
    sidecars: BTreeMap<String, Envoy>,
    _apps: Vec<Proc>,
}

impl SidecarMesh {
    async fn start() -> SidecarMesh {
        let ports = Ports::new();
        let companion = Companion::start(ports.of(18080), TABLE).await;
        let mut apps = Vec::new();
        let mut sidecars = BTreeMap::new();
        for &(p, service, group, next) in DEMO_INSTANCES {
            let name = workload(service, group);
            let mut cmd = Command::new(demo_bin());
            cmd.args(["serve", "--service", service, "--group", group, "--listen"])
                .arg(format!("127.0.0.1:{}", ports.of(p)))
                .arg("--via")
                .arg(format!("127.0.0.1:{}", ports.of(p - 2000)));
            if let Some(next) = next {
                cmd.args(["--next", next]);
            }
            match name.as_str() {
                TRACE_ONLY => cmd.arg("--forward-only-trace-headers"),
                NOTHING => cmd.arg("--forward-nothing"),
                _ => &mut cmd,
            };
            apps.push(Proc::spawn(&name, &mut cmd));
        }
        // The sidecars start side by side (each waits for its first table).
        let starts = DEMO_INSTANCES.iter().map(|&(p, s, g, _)| {
            let name = workload(s, g);
            let ports = &ports;
            async move {
                let envoy = sidecar(ports, &name, p, false).await;
                (name, envoy)
            }
        });
        sidecars.extend(futures::future::join_all(starts).await);
        let mut values = ports.inbound_placeholders();
        values.extend([
            ("admin".into(), ports.of(9901).to_string()),
            ("listener".into(), ports.of(10000).to_string()),
            ("companion".into(), ports.of(18080).to_string()),
        ]);
        let gateway = Envoy::start(&ports.render("envoy/sidecars/gateway.yaml", &values), 9901, 10000)
            .await
            .unwrap_or_else(|log| panic!("gateway: {log}"));
        gateway.wait_stat("wasmcustom.isogroup_table_version", 1).await;
        for &(p, s, g, _) in DEMO_INSTANCES {
            let port = ports.of(p);
            wait_for(&format!("{s}@{g} listening"), Duration::from_secs(10), || async move {
                std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
            })
            .await;
        }
        SidecarMesh { ports, companion, gateway, sidecars, _apps: apps }
    }

    /// A request to a through the gateway in `group`, with trace `id`: the chain.
    async fn send(&self, group: &str, id: &str) -> String {
        let body: Value = http()
            .get(self.gateway.url())
            .header("host", "a")
            .header("x-isogroup", group)
            .header("traceparent", format!("00-{id}-00f067aa0ba902b7-01"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        chain(&body)
    }

    /// What each sidecar counted and the companion took, for a failure.
    async fn diagnostics(&self) -> String {
        let mut out = String::new();
        for (name, envoy) in &self.sidecars {
            out.push_str(&format!("{name}: {:?}\n", envoy.stats("isogroup_propagation").await));
            let log = envoy.log_text();
            for line in log.lines().filter(|l| l.contains("][warning][") || l.contains("][error][")).take(5) {
                out.push_str(&format!("  {line}\n"));
            }
        }
        let metrics = http().get(self.companion.url("/metrics")).send().await.unwrap().text().await.unwrap_or_default();
        for line in metrics.lines().filter(|l| l.contains("report") || l.contains("propagation")) {
            out.push_str(&format!("companion: {line}\n"));
        }
        out
    }

    async fn propagation(&self) -> Value {
        http().get(self.companion.url("/v1/propagation")).send().await.unwrap().json().await.unwrap_or(Value::Null)
    }
}

/// Trace ids (32 hex digits) with pairwise distinct assist slots, `n` of them
/// after `skip` such ids.
fn trace_ids(skip: usize, n: usize) -> Vec<String> {
    let mut slots = BTreeSet::new();
    (1u64..)
        .map(|i| format!("{:032x}", u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
        .filter(|id| slots.insert(isogroup_core::assist::slot_of(fnv1a(id.as_bytes()), SLOTS)))
        .skip(skip)
        .take(n)
        .collect()
}

fn count_sampled(ids: &[String]) -> u64 {
    ids.iter().filter(|id| sampled(id.as_bytes(), SAMPLE)).count() as u64
}

/// Counts per edge, from `/v1/propagation`: (workload, destination) → class → n.
fn edges(p: &Value) -> BTreeMap<(String, String), BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for e in p["edges"].as_array().into_iter().flatten() {
        let key =
            (e["workload"].as_str().unwrap_or("?").to_owned(), e["destination"].as_str().unwrap_or("?").to_owned());
        let counts = ["kept", "changed", "healed", "dropped", "untraced"]
            .iter()
            .map(|c| ((*c).to_owned(), e[*c].as_u64().unwrap_or(0)))
            .collect();
        out.insert(key, counts);
    }
    out
}

fn counts(kept: u64, healed: u64, dropped: u64, untraced: u64) -> BTreeMap<String, u64> {
    [("kept", kept), ("changed", 0), ("healed", healed), ("dropped", dropped), ("untraced", untraced)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn edge(w: &str, d: &str) -> (String, String) {
    (w.to_owned(), d.to_owned())
}

/// Waits (reports come every 10 s per sidecar) until `/v1/propagation`
/// gives exactly `want` for every edge it names; the last answer.
async fn wait_edges(mesh: &SidecarMesh, what: &str, want: &BTreeMap<(String, String), BTreeMap<String, u64>>) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let found = isogroup_test_support::wait_for(what, Duration::from_secs(60), || async {
        let p = mesh.propagation().await;
        let ok = edges(&p) == *want;
        *last.lock().unwrap() = p.clone();
        ok.then_some(p)
    })
    .await;
    match found {
        Ok(p) => p,
        Err(e) => {
            let diagnostics = mesh.diagnostics().await;
            panic!("{e}: want {want:?}, /v1/propagation gives {:#}\n{diagnostics}", last.lock().unwrap())
        }
    }
}

/// b-feature-1's untraced count as the companion has it (None before any).
async fn untraced_reported(mesh: &SidecarMesh) -> Option<u64> {
    edges(&mesh.propagation().await).get(&edge(NOTHING, "c")).map(|c| c["untraced"])
}

/// Lane requests into b-feature-1 (feature-2, unsampled traces: no other
/// edge counts them) until its outbound side counts one `untraced`. Its
/// inbound side saw the lane first; the two listeners' filters share that
/// through shared data on their ticks (the host-call budget allows no read
/// on the request path), so the first lane requests after a quiet minute
/// may go uncounted: SPEC's "served lane traffic in the last 60 s", seen
/// with a tick's delay. Returns b-feature-1's untraced count once the
/// companion has all of it (equal to the sidecar's own counter).
async fn warm_up(mesh: &SidecarMesh, spare: &mut impl Iterator<Item = String>) -> u64 {
    const UNTRACED: &str = "wasmcustom.isogroup_propagation_untraced_total";
    let sidecar = &mesh.sidecars[NOTHING];
    let before = sidecar.stat(UNTRACED).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sidecar.stat(UNTRACED).await == before {
        assert!(std::time::Instant::now() < deadline, "b-feature-1 never counted an untraced call");
        let id = spare.next().expect("spare trace ids");
        assert_eq!(mesh.send("feature-2", &id).await, "a@feature-2 > b@feature-1 > c@base", "trace {id}");
    }
    wait_for("the warm-up's untraced count at the companion", Duration::from_secs(60), || async {
        let counted = sidecar.stat(UNTRACED).await;
        (untraced_reported(mesh).await == Some(counted)).then_some(counted)
    })
    .await
}

/// The console's Propagation view (headless chromium) shows exactly these
/// edges with these counts (its live refresh follows the reports).
async fn console_shows(
    b: &Browser,
    mesh: &SidecarMesh,
    what: &str,
    want: &BTreeMap<(String, String), BTreeMap<String, u64>>,
) {
    b.goto(&mesh.companion.url("/ui/#propagation")).await;
    let rows = "return [...document.querySelectorAll('#propagation-edges tbody tr')]\
                  .map(tr => [...tr.querySelectorAll('td')].map(td => td.textContent));";
    let want_rows: BTreeSet<Vec<String>> = want
        .iter()
        .map(|((w, d), c)| {
            let mut row = vec![w.clone(), "demo".into(), d.clone()];
            row.extend(["kept", "changed", "healed", "dropped", "untraced"].iter().map(|k| c[*k].to_string()));
            row
        })
        .collect();
    let last = std::sync::Mutex::new(Value::Null);
    let shown = isogroup_test_support::wait_for(what, Duration::from_secs(30), || async {
        let v = b.run(rows, json!([])).await;
        *last.lock().unwrap() = v.clone();
        let got: BTreeSet<Vec<String>> = v
            .as_array()?
            .iter()
            .map(|r| r.as_array().into_iter().flatten().take(8).map(|c| c.as_str().unwrap_or("").to_owned()).collect())
            .collect();
        (got == want_rows).then_some(())
    })
    .await;
    if let Err(e) = shown {
        panic!("{e}: want rows {want_rows:?}, the page shows {:?}", last.lock().unwrap());
    }
    let status = b.text("#propagation-status").await;
    assert!(status.starts_with("Advisory"), "{status}");
}

#[tokio::test]
async fn the_two_broken_workloads_are_named_then_the_trace_forwarding_one_is_healed() {
    let mut mesh = SidecarMesh::start().await;

    // Lane traffic through the gateway: feature-1 enters at a@feature-1
    // (which drops the group: b@base answers), feature-2 at a@feature-2,
    // which keeps it, so b@feature-1 (feature-2's fallback) serves lane
    // traffic and forwards nothing.
    let (f1, f2, f3) = (trace_ids(0, 40), trace_ids(40, 40), trace_ids(80, 40));
    let mut spare = trace_ids(120, 400).into_iter().filter(|id| !sampled(id.as_bytes(), SAMPLE));
    let warmed = warm_up(&mesh, &mut spare).await;
    for id in &f1 {
        assert_eq!(mesh.send("feature-1", id).await, "a@feature-1 > b@base > c@base", "trace {id}");
    }
    for id in &f2 {
        assert_eq!(mesh.send("feature-2", id).await, "a@feature-2 > b@feature-1 > c@base", "trace {id}");
    }
    let (s1, s2) = (count_sampled(&f1), count_sampled(&f2));
    assert!(s1 > 0 && s2 > 0 && s1 < 40, "the ids cover sampled and unsampled traces ({s1}, {s2})");

    // What every sidecar reports: the healthy edges keep (base requests,
    // the recorded trace without a group, are kept too), the two broken
    // ones drop the sampled feature-1 traces and lose every feature-2
    // request's trace (untraced has no trace to sample: every call counts).
    let mut want = BTreeMap::from([
        (edge("a-feature-1", "b"), counts(0, 0, s1, 0)),
        (edge("a-feature-2", "b"), counts(s2, 0, 0, 0)),
        (edge("b-base", "c"), counts(s1, 0, 0, 0)),
        (edge("b-feature-1", "c"), counts(0, 0, 0, warmed + f2.len() as u64)),
    ]);
    let p = wait_edges(&mesh, "the sidecars' reports", &want).await;
    assert_eq!(p["advisory"], true, "{p}");
    let broken: BTreeSet<&str> = p["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| ["healed", "dropped", "untraced", "changed"].iter().any(|c| w[*c].as_u64().unwrap_or(0) > 0))
        .map(|w| w["workload"].as_str().unwrap())
        .collect();
    assert_eq!(broken, BTreeSet::from([TRACE_ONLY, NOTHING]), "{p:#}");
    // Worst first: a-feature-1 drops every sampled lane request.
    assert_eq!(p["workloads"][0]["workload"], TRACE_ONLY, "{p:#}");
    assert_eq!(p["workloads"][0]["drop_share"].as_f64(), Some(1.0), "{p:#}");
    assert_eq!(p["edges"][0]["workload"], TRACE_ONLY, "{p:#}");
    // The doctor (what a CI job runs) names the same two, and fails on the
    // one that drops.
    let doctor = Command::new(common::companion_bin())
        .args(["doctor", "--url", &mesh.companion.url(""), "--max-drop-share", "0.5"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("drops the group: workload {TRACE_ONLY} ")), "{out}");
    for name in [TRACE_ONLY, NOTHING] {
        assert!(out.lines().any(|l| l.starts_with(name)), "{name} in {out}");
    }
    let b = Browser::start().await;
    console_shows(&b, &mesh, "the console's Propagation view", &want).await;
    b.screenshot(&root().join(".run/console/propagation-sidecars.png")).await;
    // The filter's own metrics say the same, per sidecar.
    let trace_only = &mesh.sidecars[TRACE_ONLY];
    assert_eq!(trace_only.stat("wasmcustom.isogroup_propagation_dropped_total").await, s1);
    assert_eq!(
        mesh.sidecars[NOTHING].stat("wasmcustom.isogroup_propagation_untraced_total").await,
        warmed + f2.len() as u64
    );

    // The assist on for the trace-forwarding workload: its sidecar restarts
    // with `heal: true`, and its lane requests reach b@feature-1 again.
    drop(mesh.sidecars.remove(TRACE_ONLY));
    let healed = sidecar(&mesh.ports, TRACE_ONLY, 18001, true).await;
    mesh.sidecars.insert(TRACE_ONLY.into(), healed);
    let warmed = warm_up(&mesh, &mut spare).await;
    for id in &f3 {
        assert_eq!(mesh.send("feature-1", id).await, "a@feature-1 > b@feature-1 > c@base", "trace {id}");
    }
    let s3 = count_sampled(&f3);
    assert!(s3 > 0, "some of the ids are sampled");
    want.insert(edge("a-feature-1", "b"), counts(0, s3, s1, 0));
    want.insert(edge("b-feature-1", "c"), counts(0, 0, 0, warmed + f3.len() as u64));
    wait_edges(&mesh, "the healed counts", &want).await;
    console_shows(&b, &mesh, "the healed counts in the console", &want).await;
    assert_eq!(mesh.sidecars[TRACE_ONLY].stat("wasmcustom.isogroup_propagation_healed_total").await, s3);
}
