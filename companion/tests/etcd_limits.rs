//! The etcd store at its limits, against a real 3-member etcd on loopback:
//! pages over the client's default 4 MiB decode limit, an etcd shared with
//! another writer, values over etcd's request limit, failed batches and
//! orphaned generations, no quorum, and rollbacks (forged polls, a snapshot
//! restore, `epoch --new`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::etcd::Etcd;
use common::{table_json, test_dir, wait_until, Companion};
use etcd_client::GetOptions;
use isogroup_core::epoch::Stamp;
use serde_json::{json, Value};

const TOKEN: &str = "etcd-limits-token-0123456789";
/// Generous: 2 loaded cores, raft elections of a few seconds.
const CONVERGE: Duration = Duration::from_secs(60);

async fn replica_with(endpoints: &str, prefix: &str, extra: &[&str]) -> Companion {
    let mut args = vec!["--etcd".to_owned(), endpoints.to_owned(), "--etcd-prefix".to_owned(), prefix.to_owned()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let c = Companion::spawn(test_dir("etcd-limits"), Some(TOKEN), &args, None).await;
    wait_until("the replica ready", CONVERGE, async || c.ready().await).await;
    c
}

async fn replica(endpoints: &str, prefix: &str) -> Companion {
    replica_with(endpoints, prefix, &[]).await
}

async fn ready_serving(c: &Companion, what: &str, want: impl Fn(&Value) -> bool) -> (Option<String>, u64, Value) {
    let mut last = None;
    wait_until(what, CONVERGE, async || {
        if !c.ready().await {
            return false;
        }
        let seen = c.served().await;
        let ok = want(&seen.2);
        last = Some(seen);
        ok
    })
    .await;
    last.unwrap()
}

fn services(body: &Value) -> usize {
    body["services"].as_object().map_or(0, |s| s.len())
}

/// A service `name` whose value is about `bytes` (many hosts).
fn wide_service(name: &str, bytes: usize) -> Value {
    let mut hosts = vec![name.to_owned()];
    let mut size = 0;
    let mut j = 0;
    while size < bytes {
        let host = format!("h{j}.{name}");
        size += host.len() + 3;
        hosts.push(host);
        j += 1;
    }
    json!({"hosts": hosts, "clusters": {"base": format!("c-{name}")}})
}

/// `n` services whose values are about `bytes` each.
fn wide_table(n: usize, bytes: usize) -> Value {
    let map: serde_json::Map<String, Value> =
        (0..n).map(|i| (format!("svc-{i}"), wide_service(&format!("svc-{i}"), bytes))).collect();
    json!({"groups": {"team-a": {}}, "services": map})
}

/// The keys under `prefix` (relative to it).
async fn keys(etcd: &Etcd, prefix: &str) -> Vec<String> {
    let mut kv = etcd.client().await;
    let got = kv.get(prefix, Some(GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    got.kvs().iter().map(|k| k.key_str().unwrap()[prefix.len()..].to_owned()).collect()
}

/// The generations with keys under `prefix`.
async fn generations(etcd: &Etcd, prefix: &str) -> Vec<String> {
    let mut out: Vec<String> = keys(etcd, prefix)
        .await
        .iter()
        .filter_map(|k| k.strip_prefix("gen/")?.split_once('/').map(|(g, _)| g.to_owned()))
        .collect();
    out.dedup();
    out
}

#[tokio::test]
async fn a_store_whose_pages_exceed_4_mib_loads_on_a_new_replica() {
    let etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let first = replica(&endpoints, "/wide/").await;
    // 1,200 services of ~5 KB: ~6 MB, over 4 MiB in any page of 1,000 keys.
    let table = wide_table(1_200, 5_000);
    assert!(serde_json::to_vec(&table).unwrap().len() > 5 << 20);
    let (status, body) = first.put_table(&table).await;
    assert_eq!(status, 200, "{body}");
    let second = replica(&endpoints, "/wide/").await;
    let (epoch, version, served) =
        ready_serving(&second, "a new replica to load ~6 MB", |b| services(b) == 1_200).await;
    assert_eq!((epoch.as_deref(), version), (body["epoch"].as_str(), body["version"].as_u64().unwrap()));
    assert_eq!(served["services"]["svc-1199"]["clusters"]["base"], "c-svc-1199");
    // And it follows: a write through it is seen by both.
    let (status, written) = second.register("svc-7", "team-a", "wide-a").await;
    assert_eq!(status, 200, "{written}");
    ready_serving(&first, "the write on the first replica", |b| {
        b["services"]["svc-7"]["clusters"]["team-a"] == "wide-a"
    })
    .await;
}

/// Another application writes its own keys into the same etcd all the time:
/// the store's revision runs ahead of every key under our prefix. A write
/// that loses to another replica's must still catch up at once (a progress
/// notification, not a 10 s wait and a 503).
#[tokio::test]
async fn conflicting_writes_on_an_etcd_shared_with_another_writer_do_not_stall() {
    let etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let (a, b) = (replica(&endpoints, "/shared/").await, replica(&endpoints, "/shared/").await);
    let (status, body) = a.put_table(&table_json(3)).await;
    assert_eq!(status, 200, "{body}");
    ready_serving(&b, "the seed on B", |v| services(v) == 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Several writers: nearly every revision between two of ours is theirs.
    let mut others = Vec::new();
    for w in 0..6 {
        let stop = stop.clone();
        let mut kv = etcd.client().await;
        others.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let _ = kv.put(format!("/other-app/w{w}/k{}", i % 100), i.to_string(), None).await;
                i += 1;
            }
            i
        }));
    }
    let conflicts = async || {
        a.metric_sum("isogroup_companion_etcd_conflicts_total").await
            + b.metric_sum("isogroup_companion_etcd_conflicts_total").await
    };
    let mut round = 0;
    while conflicts().await < 3.0 && round < 60 {
        let group = format!("g-{round}");
        // A write that waits for a revision only another application wrote
        // would stall 10 s: answered within 5 s, or failed.
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let send = |port: u16, service: &str| {
            client
                .put(format!("http://127.0.0.1:{port}/v1/services/{service}/groups/{group}"))
                .bearer_auth(TOKEN)
                .json(&json!({"cluster": format!("{service}-{group}")}))
                .send()
        };
        let (ra, rb) = tokio::join!(send(a.port, "svc-0"), send(b.port, "svc-1"));
        let (ra, rb) = (ra.expect("A answers within 5 s"), rb.expect("B answers within 5 s"));
        assert_eq!(ra.status(), 200, "round {round} through A: {}", ra.text().await.unwrap());
        assert_eq!(rb.status(), 200, "round {round} through B: {}", rb.text().await.unwrap());
        round += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut other_writes = 0;
    for o in others {
        other_writes += o.await.unwrap();
    }
    let seen = conflicts().await;
    println!("{round} rounds, {seen} conflicts, {other_writes} writes by the other application");
    assert!(seen >= 1.0, "no write lost to another: the test did not test conflicts");
    ready_serving(&a, "every write on A", |v| {
        (0..round).all(|r| v["services"]["svc-1"]["clusters"][format!("g-{r}")] == format!("svc-1-g-{r}"))
    })
    .await;
}

/// A value over etcd's request limit (1.5 MiB) is refused `400` naming the
/// field, at once, and nothing is written.
#[tokio::test]
async fn a_value_over_the_request_limit_is_refused_400_naming_the_field() {
    let etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let a = replica(&endpoints, "/big-value/").await;
    let (status, _) = a.put_table(&table_json(3)).await;
    assert_eq!(status, 200);
    let gens = generations(&etcd, "/big-value/").await;
    let mut table = wide_table(1, 1_700_000);
    table["services"]["svc-1"] = json!({"hosts": ["svc-1"], "clusters": {"base": "c-1"}});
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let resp = client.put(a.url("/v1/table")).bearer_auth(TOKEN).json(&table).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "value_too_large", "{body}");
    assert!(body["detail"].as_str().unwrap().starts_with("services.svc-0:"), "names the field: {body}");
    assert_eq!(generations(&etcd, "/big-value/").await, gens, "nothing written");
    assert_eq!(services(&a.served().await.2), 3);
}

/// A batch that etcd refuses half-way through a new generation leaves
/// nothing behind; orphans left by a replica that died mid-write are swept
/// when a replica loads the store.
#[tokio::test]
async fn a_failed_batch_leaves_no_partial_generation_and_orphans_are_swept() {
    // etcd refuses requests over 512 KiB: a generation's first batch (small
    // services) goes in, the second (one service of ~700 KB) is refused.
    let etcd = Etcd::start_with(3, &["--max-request-bytes", "524288"]).await;
    let endpoints = etcd.endpoints();
    let prefix = "/partial/";
    let a = replica(&endpoints, prefix).await;
    let (status, body) = a.put_table(&table_json(3)).await;
    assert_eq!(status, 200, "{body}");
    let served_gen = generations(&etcd, prefix).await;
    assert_eq!(served_gen.len(), 1);
    let mut table = wide_table(200, 2_000);
    table["services"]["zzz"] = wide_service("zzz", 700_000);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let resp = client.put(a.url("/v1/table")).bearer_auth(TOKEN).json(&table).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert!(status == 400 || status == 503, "{status} {body}");
    assert!(body["detail"].as_str().unwrap().contains("too large"), "{body}");
    assert_eq!(generations(&etcd, prefix).await, served_gen, "the refused write left nothing behind");
    assert_eq!(services(&a.served().await.2), 3);

    // A replica that died between batches: its keys stay, older than the
    // next write's meta/rev. A replica loading the store sweeps them.
    let mut kv = etcd.client().await;
    for i in 0..3 {
        kv.put(format!("{prefix}gen/0rphan/services/s{i}"), r#"{"hosts":["x"],"clusters":{"base":"x"}}"#, None)
            .await
            .unwrap();
    }
    let (status, _) = a.register("svc-0", "team-a", "after-orphan").await;
    assert_eq!(status, 200);
    assert!(generations(&etcd, prefix).await.contains(&"0rphan".to_owned()));
    let b = replica(&endpoints, prefix).await;
    wait_until("the orphan swept", CONVERGE, async || !generations(&etcd, prefix).await.contains(&"0rphan".to_owned()))
        .await;
    assert_eq!(generations(&etcd, prefix).await, served_gen);
    let (_, _, body) = ready_serving(&b, "B serving", |v| services(v) == 3).await;
    assert_eq!(body["services"]["svc-0"]["clusters"]["team-a"], "after-orphan");
}

/// Two of three members stopped: a write is refused `503` within 5 s.
#[tokio::test]
async fn a_write_without_quorum_is_refused_within_5_s() {
    let mut etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let a = replica(&endpoints, "/quorum/").await;
    let (status, _) = a.put_table(&table_json(3)).await;
    assert_eq!(status, 200);
    // One member stopped (alive, answering nothing), one killed.
    let leader = etcd.leader().await;
    etcd.pause_member(leader);
    etcd.kill_member((leader + 1) % 3);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let started = std::time::Instant::now();
    let resp = client
        .put(a.url("/v1/services/svc-0/groups/team-a"))
        .bearer_auth(TOKEN)
        .json(&json!({"cluster": "no-quorum"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer within the client's 5 s deadline ({:?}): {e}", started.elapsed()));
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    println!("no quorum: refused in {:?}", started.elapsed());
    assert_eq!((status, body["error"].as_str()), (503, Some("store_unavailable")), "{body}");
    assert!(a.ready().await, "a loaded replica stays ready");
    etcd.resume_member(leader);
}

/// Polls carry no token: a forged one (the current epoch, a version above
/// the current one) outside the window after load changes nothing but a
/// warning and a metric. Inside the window it mints a new epoch, once.
/// `epoch --new` mints one by hand.
#[tokio::test]
async fn forged_rollback_polls_and_epoch_new() {
    let etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let prefix = "/forged/";
    let closed = replica_with(&endpoints, prefix, &["--rollback-window-s", "0"]).await;
    let (status, body) = closed.put_table(&table_json(3)).await;
    assert_eq!(status, 200, "{body}");
    let epoch = body["epoch"].as_str().unwrap().to_owned();
    let version = body["version"].as_u64().unwrap();
    for forged in [version + 1, version + 1_000_000, u64::MAX / 2] {
        let resp = closed.get(&format!("/v1/table?after={forged}&epoch={epoch}&wait=0")).await;
        assert_eq!(resp.status(), 304);
    }
    // Checked with etcd (not a lagging replica), counted, a warning.
    let mut ready = Value::Null;
    wait_until("the /readyz warning", CONVERGE, async || {
        ready = closed.get("/readyz").await.json().await.unwrap();
        ready["warnings"][0].as_str().is_some()
    })
    .await;
    let warning = ready["warnings"][0].as_str().unwrap();
    assert!(warning.contains("rollback") && warning.contains("epoch --new"), "{ready}");
    assert_eq!(ready["status"], "ready");
    assert!(closed.metric_sum("isogroup_companion_rollback_polls_total").await >= 1.0);
    let served = closed.served().await;
    assert_eq!((served.0.as_deref(), served.1), (Some(epoch.as_str()), version), "no epoch change outside the window");

    // A replica inside its window: the first such poll mints a newer epoch
    // (which every replica then serves); a second changes nothing.
    let open = replica(&endpoints, prefix).await;
    ready_serving(&open, "the open replica loaded", |v| services(v) == 3).await;
    let resp = open.get(&format!("/v1/table?after={}&epoch={epoch}&wait=10", version + 5)).await;
    assert_eq!(resp.status(), 200);
    let minted = resp.headers()["x-isogroup-epoch"].to_str().unwrap().to_owned();
    assert!(Stamp::new(Some(&minted), 0) > Stamp::new(Some(&epoch), u64::MAX), "{minted} > {epoch}");
    let (e, v, _) =
        ready_serving(&closed, "the new epoch on the other replica", |v| v["epoch"] == minted.as_str()).await;
    assert_eq!(e.as_deref(), Some(minted.as_str()));
    let resp = open.get(&format!("/v1/table?after={}&epoch={minted}&wait=0", v + 5)).await;
    assert_eq!(resp.status(), 304);
    assert_eq!(open.served().await.0.as_deref(), Some(minted.as_str()), "at most one new epoch per load");

    // By hand: `isogroup-companion epoch --new`.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_isogroup-companion"))
        .args(["epoch", "--new", "--etcd", &endpoints, "--etcd-prefix", prefix])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (by_hand, _, body) = ready_serving(&closed, "the epoch made by hand", |v| v["epoch"] != minted.as_str()).await;
    let by_hand = by_hand.unwrap();
    assert!(Stamp::new(Some(&by_hand), 0) > Stamp::new(Some(&minted), u64::MAX), "{by_hand} > {minted}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&by_hand), "prints it");
    assert_eq!(services(&body), 3, "the table is unchanged");
}

/// etcd restored from a snapshot: its revision, so the version, goes back
/// under the same epoch. Every replica restarted; the first poll from a
/// filter that holds a later version (the evidence) gets a new epoch.
#[tokio::test]
async fn a_snapshot_restore_then_restart_wins_pollers_back_with_a_new_epoch() {
    let mut etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let prefix = "/restore/";
    let mut a = replica(&endpoints, prefix).await;
    let (status, body) = a.put_table(&table_json(3)).await;
    assert_eq!(status, 200, "{body}");
    let epoch = body["epoch"].as_str().unwrap().to_owned();
    let dir = test_dir("etcd-snapshot");
    let snapshot = dir.join("backup.db");
    etcd.snapshot_save(0, &snapshot);
    let (status, later) = a.register("svc-0", "team-a", "after-backup").await;
    assert_eq!(status, 200, "{later}");
    let held = later["version"].as_u64().unwrap();
    a.kill();
    etcd.restore(&snapshot).await;
    let a = replica(&endpoints, prefix).await;
    let b = replica(&endpoints, prefix).await;
    let (e, v, _) = ready_serving(&a, "the restored state", |v| services(v) == 3).await;
    assert_eq!(e.as_deref(), Some(epoch.as_str()));
    assert!(v < held, "the restore took the version back: {v} < {held}");
    // A filter holding (epoch, held) polls: it gets a newer epoch at once.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let resp = client.get(b.url(&format!("/v1/table?after={held}&epoch={epoch}&wait=15"))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let minted = resp.headers()["x-isogroup-epoch"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert!(Stamp::new(Some(&minted), 0) > Stamp::new(Some(&epoch), held), "{minted} > {epoch}");
    assert!(body["services"]["svc-0"]["clusters"].get("team-a").is_none(), "the restored table: {body}");
    ready_serving(&a, "the new epoch on every replica", |v| v["epoch"] == minted.as_str()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
