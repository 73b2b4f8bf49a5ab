//! Three companion replicas over a real 3-member etcd cluster, and an Envoy
//! whose companion cluster balances over them, with a client sending
//! requests without pause: registrations through different replicas reach
//! every worker; a replica killed (-9) and started again, an etcd member
//! killed and brought back, every replica rolled: no lane stops routing, the
//! table version in Envoy never goes back, and Envoy accepts about one table
//! per real change (every replica serves one version for one state). Then
//! the store is wiped and re-seeded: a newer epoch with lower versions wins
//! the Envoys back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{companion_bin, free_port, http, wait_for, Mesh, Proc, Rendered, ADMIN_TOKEN};

const TABLE: &str = include_str!("../demo/table.json");
/// Generous: 2 loaded cores, raft elections of a few seconds.
const SLOW: Duration = Duration::from_secs(60);

/// A 3-member etcd on loopback (Debian's etcd-server), data on /dev/shm.
struct Etcd {
    members: Vec<(String, u16, u16, Option<Proc>)>,
    dir: PathBuf,
    token: String,
}

impl Etcd {
    fn start() -> Etcd {
        let token = format!("isogroup-e2e-{}-{}", std::process::id(), free_port());
        let base =
            if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(&token);
        std::fs::create_dir_all(&dir).unwrap();
        let members = (0..3).map(|i| (format!("m{i}"), free_port(), free_port(), None)).collect();
        let mut etcd = Etcd { members, dir, token };
        for i in 0..3 {
            etcd.start_member(i);
        }
        etcd
    }

    fn start_member(&mut self, i: usize) {
        let cluster: Vec<String> =
            self.members.iter().map(|(name, _, peer, _)| format!("{name}=http://127.0.0.1:{peer}")).collect();
        let (name, client, peer, _) = &self.members[i];
        let (client, peer) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
        let proc = Proc::spawn(
            &format!("etcd {name}"),
            Command::new("etcd")
                .args(["--name", name, "--data-dir"])
                .arg(self.dir.join(name))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-token", &self.token])
                .args(["--heartbeat-interval", "200", "--election-timeout", "3000", "--log-level", "error"])
                .args(["--logger", "zap"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        self.members[i].3 = Some(proc);
    }

    fn kill_member(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].3.take() {
            p.kill();
        }
    }

    /// Every member stopped, its data deleted, and started again: a new
    /// cluster with the same flags, whose revisions start again from 1.
    fn wipe(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        for (name, ..) in &self.members {
            let _ = std::fs::remove_dir_all(self.dir.join(name));
        }
        for i in 0..self.members.len() {
            self.start_member(i);
        }
    }

    fn endpoints(&self) -> String {
        self.members.iter().map(|(_, c, _, _)| format!("http://127.0.0.1:{c}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `isogroup-companion serve --etcd` on a fixed port (Envoy's cluster names it).
fn replica(port: u16, endpoints: &str) -> Proc {
    Proc::spawn(
        &format!("companion :{port}"),
        Command::new(companion_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--etcd", endpoints])
            .env("ISOGROUP_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

async fn wait_ready(port: u16) {
    wait_for(&format!("companion :{port} ready"), SLOW, || async move {
        let resp = http().get(format!("http://127.0.0.1:{port}/readyz")).send().await.ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
}

/// Waits until the replica on `port` serves `version` or later. A replica
/// applies a change against its own mirror of etcd, which follows the other
/// replicas' writes through a watch; it catches up with the last write
/// before checking a change, so this wait is belt and braces.
async fn caught_up(port: u16, version: u64) {
    wait_for(&format!("replica :{port} at version {version}"), SLOW, || async move {
        let resp = http().get(format!("http://127.0.0.1:{port}/v1/table")).send().await.ok()?;
        let etag = resp.headers().get("etag")?.to_str().ok()?.trim_matches('"').parse::<u64>().ok()?;
        (etag >= version).then_some(())
    })
    .await;
}

/// PUT (Some(cluster)) or DELETE (None) through the replica on `port`; the
/// new version.
async fn set_instance(port: u16, service: &str, group: &str, cluster: Option<&str>) -> u64 {
    let url = format!("http://127.0.0.1:{port}/v1/services/{service}/groups/{group}");
    // Right after an etcd member is killed a write may wait for the replica's
    // watch to fail over (keep-alive: up to 8 s) before it answers, and one
    // sent while etcd elects a new leader (3 to 6 s with this cluster's 3 s
    // election timeout) is refused `503 store_unavailable` after 4 s without
    // an answer from etcd, as a write without quorum is: sent again then.
    // This test asserts that no write is lost, not how fast one is
    // (docs/benchmarks-history.md has that).
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    wait_for(&format!("admin call through :{port}"), SLOW, || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let req = match cluster {
                Some(c) => client.put(url).json(&serde_json::json!({ "cluster": c })),
                None => client.delete(url),
            };
            let resp = req.bearer_auth(ADMIN_TOKEN).send().await.unwrap();
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            if status == 503 && body["error"] == "store_unavailable" {
                return None;
            }
            assert!(status.is_success(), "admin call through :{port}: {status} {body}");
            body["version"].as_u64()
        }
    })
    .await
}

/// The shipped companion config with its cluster over three endpoints (the
/// rendered one first).
fn over_replicas(r: &mut Rendered, ports: &[u16; 3]) {
    let first = ports[0];
    let one = |p: u16| {
        format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {p} }} }} }} }}")
    };
    let start = r.yaml.find("cluster_name: isogroup-companion").unwrap();
    let old = format!("lb_endpoints: [{}]", one(first));
    let at = start + r.yaml[start..].find(&old).unwrap();
    let new = format!("lb_endpoints: [{}]", ports.iter().map(|&p| one(p)).collect::<Vec<_>>().join(", "));
    r.yaml.replace_range(at..at + old.len(), &new);
}

/// Which group served `host` for `x-isogroup: feature-1`.
async fn served_group(mesh: &Mesh, client: &reqwest::Client, host: &str) -> Option<String> {
    let resp = mesh.request(client, host).header("x-isogroup", "feature-1").send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body: serde_json::Value = resp.json().await.ok()?;
    body["group"].as_str().map(str::to_owned)
}

/// Waits until ten kept-alive connections (both workers) see b served by
/// `group` for feature-1; returns how long that took.
async fn until_every_worker(mesh: &Mesh, clients: &[reqwest::Client], group: &str) -> Duration {
    let started = Instant::now();
    wait_for(&format!("every worker to serve b@{group}"), SLOW, || async {
        for c in clients {
            if served_group(mesh, c, "b").await.as_deref() != Some(group) {
                return None;
            }
        }
        Some(())
    })
    .await;
    started.elapsed()
}

#[tokio::test]
async fn lanes_keep_routing_through_replica_and_etcd_kills_and_a_roll() {
    let mut etcd = Etcd::start();
    let endpoints = etcd.endpoints();
    let mut rendered = Rendered::from_file("envoy/companion.yaml");
    let ports = [rendered.port(18080), free_port(), free_port()];
    over_replicas(&mut rendered, &ports);
    let mut replicas: Vec<Proc> = ports.iter().map(|&p| replica(p, &endpoints)).collect();
    for &p in &ports {
        wait_ready(p).await;
    }
    // Seed the store with the demo table through one replica.
    let resp = http()
        .put(format!("http://127.0.0.1:{}/v1/table", ports[1]))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(TABLE)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "seed: {}", resp.status());
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("wasmcustom.isogroup_table_version", 1).await;
    let clients: Vec<reqwest::Client> = (0..10).map(|_| http()).collect();
    until_every_worker(&mesh, &clients, "base").await;
    // b@base holds without a table too (Envoy's default route): a@feature-1,
    // which only the table routes, proves every worker has followed it.
    wait_for("every worker routing a@feature-1", SLOW, || async {
        for c in &clients {
            if served_group(&mesh, c, "a").await.as_deref() != Some("feature-1") {
                return None;
            }
        }
        Some(())
    })
    .await;
    let updates_at_start = mesh.envoy.stat("wasmcustom.isogroup_table_updates_total").await;

    // A client without pause: a@feature-1 exists from the seed on and must
    // never stop routing; the table version in Envoy must never go back.
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let load = {
        let (stop, requests, failures) = (stop.clone(), requests.clone(), failures.clone());
        let url = mesh.envoy.url();
        let admin = mesh.envoy.admin;
        tokio::spawn(async move {
            let client = http();
            let mut last_version = 0;
            while !stop.load(Ordering::Relaxed) {
                let resp = client.get(&url).header("host", "a").header("x-isogroup", "feature-1").send().await;
                requests.fetch_add(1, Ordering::Relaxed);
                let group = match resp {
                    Ok(r) if r.status().is_success() => {
                        r.json::<serde_json::Value>().await.ok().and_then(|b| b["group"].as_str().map(str::to_owned))
                    }
                    Ok(r) => Some(format!("status {}", r.status())),
                    Err(e) => Some(format!("error {e}")),
                };
                if group.as_deref() != Some("feature-1") {
                    failures.lock().unwrap().push(format!("a for feature-1: {group:?}"));
                }
                let stats =
                    client.get(format!("http://127.0.0.1:{admin}/stats?filter=isogroup_table_version")).send().await;
                if let Ok(text) = match stats {
                    Ok(r) => r.text().await,
                    Err(e) => Err(e),
                } {
                    for v in text.lines().filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok()) {
                        if v < last_version {
                            failures.lock().unwrap().push(format!("table version went back: {last_version} -> {v}"));
                        }
                        last_version = last_version.max(v);
                    }
                }
            }
        })
    };

    // Registrations and unregistrations through each replica in turn.
    let mut changes = 0;
    let mut latencies = Vec::new();
    let mut version = 0;
    for round in 0..6 {
        let port = ports[round % 3];
        let (cluster, group) = if round % 2 == 0 { (Some("b-feature-1"), "feature-1") } else { (None, "base") };
        caught_up(port, version).await;
        version = set_instance(port, "b", "feature-1", cluster).await;
        changes += 1;
        latencies.push(until_every_worker(&mesh, &clients, group).await);
    }
    latencies.sort();
    println!(
        "registration -> every Envoy worker, 3 replicas over etcd: median {:?}, worst {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // b@feature-1 stays registered from here on: it must keep routing too.
    set_instance(ports[0], "b", "feature-1", Some("b-feature-1")).await;
    changes += 1;
    until_every_worker(&mesh, &clients, "feature-1").await;

    // kill -9 a replica and start it again.
    replicas[1].kill();
    set_instance(ports[2], "c", "feature-1", Some("c-base")).await;
    changes += 1;
    replicas[1] = replica(ports[1], &endpoints);
    wait_ready(ports[1]).await;
    // Kill an etcd member, write, bring it back, write.
    etcd.kill_member(0);
    let registered = set_instance(ports[1], "c", "feature-2", Some("c-base")).await;
    changes += 1;
    etcd.start_member(0);
    caught_up(ports[0], registered).await;
    set_instance(ports[0], "c", "feature-2", None).await;
    changes += 1;
    // Roll every replica, one after the other.
    for i in 0..3 {
        replicas[i].kill();
        replicas[i] = replica(ports[i], &endpoints);
        wait_ready(ports[i]).await;
    }
    let last = set_instance(ports[2], "c", "feature-1", None).await;
    changes += 1;
    mesh.envoy.wait_stat("wasmcustom.isogroup_table_version", last).await;
    until_every_worker(&mesh, &clients, "feature-1").await;

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    let sent = requests.load(Ordering::Relaxed);
    assert!(sent > 50, "the client kept sending: {sent}");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // About one accepted table per change: replicas never make Envoy
    // download the same state again under another version.
    let updates = mesh.envoy.stat("wasmcustom.isogroup_table_updates_total").await - updates_at_start;
    println!("{changes} changes, {updates} tables accepted by Envoy, {sent} requests without a failure");
    assert!(updates <= changes + 2, "{updates} tables accepted for {changes} changes");

    // The store wiped and re-seeded: its versions start low again, under a
    // newer epoch, and the Envoys follow it (an empty store never replaces
    // the table in force).
    let before_wipe = mesh.envoy.stat("wasmcustom.isogroup_table_version").await;
    etcd.wipe();
    wait_for("a replica serving the empty store", SLOW, || async {
        let body: serde_json::Value =
            http().get(format!("http://127.0.0.1:{}/v1/table", ports[0])).send().await.ok()?.json().await.ok()?;
        (body == serde_json::json!({"version": 0})).then_some(())
    })
    .await;
    until_every_worker(&mesh, &clients, "feature-1").await;
    let reseeded = TABLE.replace(r#""b": { "hosts": ["b"], "clusters": { "base": "b-base" } }"#, r#""b": { "hosts": ["b"], "clusters": { "base": "b-base" } }, "d": { "hosts": ["d"], "clusters": { "base": "b-base" } }"#);
    assert_ne!(reseeded, TABLE, "the demo table names b as this test expects");
    let resp = wait_for("the re-seed accepted", SLOW, || async {
        let resp = http()
            .put(format!("http://127.0.0.1:{}/v1/table", ports[0]))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(reseeded.clone())
            .send()
            .await
            .ok()?;
        resp.status().is_success().then_some(resp)
    })
    .await;
    let body: serde_json::Value = resp.json().await.unwrap();
    let version = body["version"].as_u64().unwrap();
    assert!(version < before_wipe, "a wiped store starts low: {version} vs {before_wipe}");
    // b@feature-1 is gone in the re-seeded table: every worker falls back to base.
    until_every_worker(&mesh, &clients, "base").await;
    assert_eq!(mesh.envoy.stat("wasmcustom.isogroup_table_version").await, version);
}
