//! Joins and lane cookies while the table arrives and churns (issue: a join
//! of a known lane answered 400, and a lane-cookie request went to base,
//! right after a table change). An edge gateway (envoy/lanes.yaml: 2
//! workers, `join_path` and `runtime` on) fed by the companion, which starts
//! after the load does and then changes the table every 100 ms (runtime
//! rules, source bindings, the groups a service has); at least 10,000 rounds of
//! join-then-route-by-cookie once the process has a table. Every answer from
//! then on must be right on every worker, and each worker must have served
//! at least 50 table versions (read from its `x-isogroup-decision`), so the
//! churn really reached every VM.
//!
//! What it found: the first table reaches the poller's VM at once and every
//! other VM only on its next tick (200 ms); a stream on one of those found no
//! table. A VM without a table now takes the process's before a stream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chain, http, Build, Companion, Mesh, ADMIN_TOKEN};
use serde_json::{json, Value};

const ROUNDS: usize = 10_000;
const CLIENTS: usize = 8;
const MIN_VERSIONS_PER_WORKER: usize = 50;
/// A VM takes at most one version per 200 ms tick: the rounds go on until
/// the table has changed this often (on a fast machine 10,000 rounds take
/// less time than 50 ticks).
const MIN_CHANGES: usize = 3 * MIN_VERSIONS_PER_WORKER;

const TABLE: &str = r#"{"version": 1,
  "groups": {"feature-1": {}, "feature-2": {"fallback": ["feature-1"]}, "team-s": {"mode": "strict"}},
  "services": {
    "a": {"hosts": ["a"], "clusters": {"base": "a-base", "feature-1": "a-feature-1", "feature-2": "a-feature-2", "team-s": "a-team-s"}},
    "b": {"hosts": ["b"], "clusters": {"base": "b-base", "feature-1": "b-feature-1"}},
    "c": {"hosts": ["c"], "clusters": {"base": "c-base"}}}}"#;

/// The gateway: runtime and join path on, 127.0.0.1 trusted so that it
/// answers `x-isogroup-debug` (the lane cookie counts from any peer).
const GATEWAY: &str = r#"{
  "edge": {"runtime": true, "join_path": "/.isogroup/join", "trusted_cidrs": ["127.0.0.1/32"]},
  "table": {"companion": {"cluster": "isogroup-companion", "authority": "isogroup-companion", "path": "/v1/table", "wait_s": 25}}
}"#;

/// One table change through the admin API: a runtime rule replaced, a
/// source binding made or removed, a lane added to or removed from c.
async fn change(client: &reqwest::Client, companion: &Companion, n: usize) {
    let req = match n % 3 {
        0 => client
            .put(companion.url("/v1/rules"))
            .json(&json!([{"header": "x-churn", "values": [format!("v{n}")], "group": "feature-2"}])),
        1 if (n / 3).is_multiple_of(2) => {
            client.put(companion.url("/v1/sources/127.0.0.9")).json(&json!({"group": "feature-2"}))
        }
        1 => client.delete(companion.url("/v1/sources/127.0.0.9")),
        _ if (n / 3).is_multiple_of(2) => {
            client.put(companion.url("/v1/services/c/groups/feature-9")).json(&json!({"cluster": "c-base"}))
        }
        _ => client.delete(companion.url("/v1/services/c/groups/feature-9")),
    };
    let resp = req.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert!(resp.status().is_success(), "change {n}: {}", resp.status());
}

/// `vm=<id>; table=<version>; group=…` → (id, version), for the gateway's
/// own decision (the one that took the lane cookie).
fn gateway_decision(values: &[String]) -> Option<(String, u64)> {
    let d = values.iter().find(|v| v.contains("(lane cookie)"))?;
    let field = |name: &str| d.split("; ").find_map(|p| p.strip_prefix(name)).map(str::to_owned);
    Some((field("vm=")?, field("table=")?.parse().ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_lane_cookies_stay_right_while_the_table_churns() {
    joins_and_lane_cookies_while_the_table_churns(Build::Wasm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_lane_cookies_stay_right_while_the_table_churns_native() {
    joins_and_lane_cookies_while_the_table_churns(Build::Native).await;
}

async fn joins_and_lane_cookies_while_the_table_churns(build: Build) {
    let rendered = build.config("envoy/lanes.yaml").with_plugin_config(GATEWAY);
    let companion_port = rendered.port(18080);
    let gateway = rendered.port(10080);
    // Envoy first, the companion later: the load runs while the first table
    // arrives, which one VM's poller takes at once and the others after.
    let _mesh = Mesh::start_with(rendered).await;
    // Set once an answer shows that some VM has a table: from then on the
    // process has one, and every request sent later must find it.
    let has_table = Arc::new(AtomicBool::new(false));
    let next_round = Arc::new(AtomicUsize::new(0));
    let changes = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (next_round, has_table, changes) = (next_round.clone(), has_table.clone(), changes.clone());
        clients.push(tokio::spawn(async move {
            // A new connection per request, so both workers serve; no redirect
            // followed. No local address: a bind before connect cannot reuse a
            // loopback port in TIME_WAIT (connect's own choice can, with
            // tcp_tw_reuse), and thousands of rounds ran the range out.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let url = |path: &str| format!("http://127.0.0.1:{gateway}{path}");
            let mut wrong = Vec::new();
            let mut versions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
            while next_round.load(Ordering::Relaxed) < ROUNDS || changes.load(Ordering::Relaxed) < MIN_CHANGES {
                if t0.elapsed() > Duration::from_secs(150) {
                    wrong.push("the rounds did not finish in 150 s".to_owned());
                    break;
                }
                // Before any table a join is refused and a lane cookie
                // skipped: right then, wrong once the process has a table.
                let after_table = has_table.load(Ordering::SeqCst);
                if after_table {
                    next_round.fetch_add(1, Ordering::Relaxed);
                }
                let ms = t0.elapsed().as_millis();
                let resp = client.get(url("/.isogroup/join?lane=feature-1")).header("host", "a").send().await.unwrap();
                let status = resp.status().as_u16();
                let cookie = common::header_values(&resp, "set-cookie").join(" | ");
                if (status, cookie.as_str()) == (302, "isogroup-lane=feature-1; Path=/; SameSite=Lax") {
                    has_table.store(true, Ordering::SeqCst);
                } else if after_table || status != 400 {
                    wrong.push(format!("{ms} ms: join: {status} {cookie} {}", resp.text().await.unwrap_or_default()));
                }
                let after_table = has_table.load(Ordering::SeqCst);
                let ms = t0.elapsed().as_millis();
                let resp = client
                    .get(url("/"))
                    .header("host", "b")
                    .header("cookie", "isogroup-lane=feature-1")
                    .header("x-isogroup-debug", "1")
                    .send()
                    .await
                    .unwrap();
                let values = common::header_values(&resp, "x-isogroup-decision");
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                match gateway_decision(&values) {
                    Some((vm, version)) if chain(&body) == "b@feature-1 > c@base" => {
                        has_table.store(true, Ordering::SeqCst);
                        versions.entry(vm).or_default().insert(version);
                    }
                    _ if !after_table && values.iter().any(|v| v.contains("table=none")) => {}
                    _ => wrong.push(format!("{ms} ms: route by cookie: {} [{}]", chain(&body), values.join(" | "))),
                }
            }
            (wrong, versions)
        }));
    }
    // The companion, once the load runs against VMs without a table.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let companion = Arc::new(Companion::start(companion_port, TABLE).await);
    let done = Arc::new(AtomicBool::new(false));
    let churn = {
        let (companion, done, changes) = (companion.clone(), done.clone(), changes.clone());
        tokio::spawn(async move {
            let client = http();
            let mut n = 0;
            while !done.load(Ordering::Relaxed) {
                change(&client, &companion, n).await;
                n += 1;
                changes.store(n, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };
    let mut wrong = Vec::new();
    let mut versions: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for c in clients {
        let (w, v) = c.await.unwrap();
        wrong.extend(w);
        for (vm, set) in v {
            versions.entry(vm).or_default().extend(set);
        }
    }
    done.store(true, Ordering::Relaxed);
    let changes = churn.await.unwrap();
    let per_worker: BTreeMap<&String, usize> = versions.iter().map(|(vm, set)| (vm, set.len())).collect();
    println!(
        "{} rounds in {:.1} s, {changes} table changes; distinct versions served per gateway VM: {per_worker:?}; {} wrong",
        next_round.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{} wrong answers, the first: {:#?}", wrong.len(), &wrong[..wrong.len().min(10)]);
    assert_eq!(versions.len(), 2, "both workers' gateway VMs answered: {per_worker:?}");
    for (vm, n) in &per_worker {
        assert!(*n >= MIN_VERSIONS_PER_WORKER, "gateway VM {vm} served {n} table versions: {per_worker:?}");
    }
}
