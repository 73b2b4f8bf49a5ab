//! Live table sync: the companion publishes, one poller per Envoy process
//! fetches, and every worker VM follows within a second. Both builds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{chain, fake_companion, header_values, http, wait_for, Build, Companion, Mesh};

const TABLE: &str = include_str!("../demo/table.json");

/// The companion config with everything started: companion first, so the
/// first poll finds it.
async fn start(build: Build) -> (Companion, Mesh) {
    let rendered = build.config("envoy/companion.yaml");
    let companion = Companion::start(rendered.port(18080), TABLE).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat(&build.stat("isogroup_table_version"), 1).await;
    (companion, mesh)
}

/// Ten clients on ten kept-alive connections: five per worker (exact balance).
fn clients() -> Vec<reqwest::Client> {
    (0..10).map(|_| http()).collect()
}

/// What each connection sees for `x-isogroup: feature-1` to b: the serving
/// group and the VM that decided.
async fn observe(mesh: &Mesh, clients: &[reqwest::Client]) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for c in clients {
        let resp = mesh.request(c, "b").header("x-isogroup", "feature-1").header("x-isogroup-debug", "1").send().await;
        let Ok(resp) = resp else { continue };
        let decision = header_values(&resp, "x-isogroup-decision").last().cloned().unwrap_or_default();
        let vm = decision.split(';').next().unwrap_or_default().to_owned();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        seen.push((vm, body["group"].as_str().unwrap_or("?").to_owned()));
    }
    seen
}

/// Waits until every connection sees b served by `group`; returns how long.
async fn until_all_see(mesh: &Mesh, clients: &[reqwest::Client], group: &str) -> Duration {
    let started = Instant::now();
    wait_for(&format!("every worker to serve b@{group}"), Duration::from_secs(5), || async {
        let seen = observe(mesh, clients).await;
        (seen.len() == clients.len() && seen.iter().all(|(_, g)| g == group)).then_some(())
    })
    .await;
    started.elapsed()
}

async fn registrations_reach_every_worker_within_a_second(build: Build) {
    let (companion, mesh) = start(build).await;
    let clients = clients();
    until_all_see(&mesh, &clients, "base").await;
    let vms: BTreeSet<String> = observe(&mesh, &clients).await.into_iter().map(|(vm, _)| vm).collect();
    assert_eq!(vms.len(), 2, "both workers answer: {vms:?}");
    let mut times = Vec::new();
    for round in 0..8 {
        let (cluster, group) = if round % 2 == 0 { (Some("b-feature-1"), "feature-1") } else { (None, "base") };
        let version = companion.set_instance("b", "feature-1", cluster).await;
        // SPEC's one second is measured and printed (docs/benchmarks-history.md); the
        // deadline in until_all_see is a margin a loaded machine meets.
        let took = until_all_see(&mesh, &clients, group).await;
        println!("round {round}: version {version} on every worker after {took:?}");
        mesh.envoy.wait_stat(&build.stat("isogroup_table_version"), version).await;
        times.push(took);
    }
    times.sort();
    println!(
        "propagation over {} updates: median {:?}, worst {:?}",
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    );
    // one table accepted per update, counted once per process (plus the first)
    assert_eq!(mesh.envoy.wait_stat(&build.stat("isogroup_table_updates_total"), 9).await, 9);
    // one poller per Envoy process, and long polls held: few polls when idle
    assert_eq!(companion.metric("isogroup_companion_pollers").await, 1.0);
    // Idle: one poll held at the companion, and no new polls while it is.
    // Observed over many reads of the gauge, not a blind sleep.
    let held = || async { (companion.metric("isogroup_companion_held_polls").await == 1.0).then_some(()) };
    wait_for("a held long poll", Duration::from_secs(10), held).await;
    let before = companion.metric("isogroup_companion_polls_total").await;
    for _ in 0..40 {
        assert_eq!(companion.metric("isogroup_companion_held_polls").await, 1.0, "the poll stays held while idle");
    }
    let idle = companion.metric("isogroup_companion_polls_total").await - before;
    assert!(idle <= 1.0, "a held long poll, not a poll loop: {idle} polls");
}

async fn companion_down_keeps_the_last_table_then_resumes(build: Build) {
    let (companion, mesh) = start(build).await;
    let clients = clients();
    let port = companion.port;
    companion.set_instance("b", "feature-1", Some("b-feature-1")).await;
    until_all_see(&mesh, &clients, "feature-1").await;
    let dir = companion.crash();
    // routing continues on the last table while the companion is gone
    for _ in 0..10 {
        let seen = observe(&mesh, &clients).await;
        assert!(seen.iter().all(|(_, g)| g == "feature-1"), "{seen:?}");
    }
    let age = mesh.envoy.wait_stat(&build.stat("isogroup_table_age_seconds"), 1).await;
    assert!(age >= 1, "the table's age grows while the companion is down");
    // back on the same file: the registration survived, updates resume
    let companion = Companion::start_in(port, dir).await;
    companion.set_instance("b", "feature-1", None).await;
    let took = until_all_see(&mesh, &clients, "base").await;
    assert!(took < Duration::from_secs(3), "resumed after backoff: {took:?}");
}

async fn garbage_and_invalid_tables_are_rejected_whole(build: Build) {
    // A fake companion: serves a valid table, then garbage, then an invalid
    // table, then holds every further poll.
    let rendered = build.config("envoy/companion.yaml");
    let valid = TABLE.replace("\"version\": 1", "\"version\": 7").replace(
        r#""b": { "hosts": ["b"], "clusters": { "base": "b-base" } }"#,
        r#""b": { "hosts": ["b"], "clusters": { "base": "b-base", "feature-1": "b-feature-1" } }"#,
    );
    let invalid =
        TABLE.replace("\"version\": 1", "\"version\": 8").replace(r#""base": "c-base""#, r#""feature-1": "c-base""#);
    let answers = vec![Some(valid), Some("<html>502 bad gateway</html>".to_owned()), Some(invalid)];
    let server = fake_companion(rendered.port(18080), answers).await;
    let mesh = Mesh::start_with(rendered).await;
    let clients = clients();
    until_all_see(&mesh, &clients, "feature-1").await;
    assert_eq!(mesh.envoy.wait_stat(&build.stat("isogroup_table_rejects_total"), 2).await, 2);
    assert_eq!(mesh.envoy.stat(&build.stat("isogroup_table_version")).await, 7, "the last good table stays");
    let seen = observe(&mesh, &clients).await;
    assert!(seen.iter().all(|(_, g)| g == "feature-1"), "routing unchanged: {seen:?}");
    let body: serde_json::Value =
        mesh.request(&http(), "a").header("x-isogroup", "feature-1").send().await.unwrap().json().await.unwrap();
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base");
    // Envoy writes its log file out on an interval: wait for the line (the
    // native build counts a reject at once, before the line is written out).
    wait_for("the reject in Envoy's log", Duration::from_secs(10), || async {
        mesh.envoy.log_text().contains("table rejected, the last good one keeps serving").then_some(())
    })
    .await;
    server.abort();
}

on_both_builds!(
    registrations_reach_every_worker_within_a_second,
    companion_down_keeps_the_last_table_then_resumes,
    garbage_and_invalid_tables_are_rejected_whole
);

/// SPEC "Delivery to many proxies" with the real Envoy (two workers): one-
/// service changes to a table large enough for deltas reach every worker
/// as deltas, none discarded, and what every worker routes by is the
/// companion's table. The wasm arm is the shipped wasm (its poller's VM
/// and the others each apply the delta); the native module asks for deltas
/// too (its one poller applies it; workers share the table).
async fn one_service_changes_reach_every_worker_as_deltas(build: Build) {
    let mut table: serde_json::Value = serde_json::from_str(TABLE).unwrap();
    for i in 0..30 {
        let name = format!("pad-{i}");
        table["services"][&name] = serde_json::json!({"hosts": [&name], "clusters": {"base": format!("{name}-base")}});
    }
    let rendered = build.config("envoy/companion.yaml");
    let companion = Companion::start(rendered.port(18080), &table.to_string()).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat(&build.stat("isogroup_table_version"), 1).await;
    let clients = clients();
    until_all_see(&mesh, &clients, "base").await;
    let answered = companion.metric("isogroup_companion_delta_answers_total").await;
    for round in 0..4 {
        let (cluster, group) = if round % 2 == 0 { (Some("b-feature-1"), "feature-1") } else { (None, "base") };
        let version = companion.set_instance("b", "feature-1", cluster).await;
        until_all_see(&mesh, &clients, group).await;
        mesh.envoy.wait_stat(&build.stat("isogroup_table_version"), version).await;
    }
    let deltas = companion.metric("isogroup_companion_delta_answers_total").await - answered;
    assert!(deltas >= 4.0, "the poller got the changes as deltas: {deltas}");
    assert_eq!(mesh.envoy.stat(&build.stat("isogroup_table_delta_fallbacks_total")).await, 0, "none discarded");
    assert_eq!(mesh.envoy.stat(&build.stat("isogroup_table_rejects_total")).await, 0);
    let log = mesh.envoy.log_text();
    assert!(!log.contains("table delta discarded"), "every delta applied onto its base");
}

on_both_builds!(one_service_changes_reach_every_worker_as_deltas);
