//! The etcd store against a real 3-member etcd cluster on loopback, with 3
//! companion replicas over it: one state, one (epoch, version) on every
//! replica; concurrent writes through different replicas, none lost;
//! replicas and etcd members killed and brought back; garbage under the
//! prefix refused; a wiped and re-seeded store gets a newer epoch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{free_port, table_json, test_dir, wait_until, Companion};
use isogroup_core::epoch::Stamp;
use serde_json::{json, Value};

const TOKEN: &str = "etcd-test-token-0123456789";
/// Generous: 2 loaded cores, raft elections of a few seconds.
const CONVERGE: Duration = Duration::from_secs(60);

async fn replica(etcd_endpoints: &str, prefix: &str) -> Companion {
    let args = ["--etcd".to_owned(), etcd_endpoints.to_owned(), "--etcd-prefix".to_owned(), prefix.to_owned()];
    Companion::spawn(test_dir("etcd-replica"), Some(TOKEN), &args, None).await
}

/// Waits until every replica is ready and serves one (epoch, version) whose
/// body satisfies `want`; returns it.
async fn converged(replicas: &[&Companion], what: &str, want: impl Fn(&Value) -> bool) -> (Option<String>, u64, Value) {
    let mut last = None;
    wait_until(what, CONVERGE, async || {
        let mut seen = Vec::new();
        for r in replicas {
            if !r.ready().await {
                return false;
            }
            seen.push(r.served().await);
        }
        let same = seen.windows(2).all(|w| (&w[0].0, w[0].1, &w[0].2) == (&w[1].0, w[1].1, &w[1].2));
        let ok = same && want(&seen[0].2);
        last = seen.pop();
        ok
    })
    .await;
    last.unwrap()
}

fn clusters(body: &Value, service: &str) -> Value {
    body["services"][service]["clusters"].clone()
}

#[tokio::test]
async fn replicas_share_one_state_through_kills_garbage_and_reseeds() {
    let mut etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let prefix = "/isogroup/";
    let mut replicas =
        vec![replica(&endpoints, prefix).await, replica(&endpoints, prefix).await, replica(&endpoints, prefix).await];

    // An empty store: ready, `{"version": 0}`, no epoch.
    let all: Vec<&Companion> = replicas.iter().collect();
    let (epoch, version, body) = converged(&all, "an empty store served", |b| b["version"] == 0).await;
    assert_eq!((epoch, version, body), (None, 0, json!({"version": 0})));

    // Seed through replica 0: 300 services, more than one transaction holds.
    let (status, seeded) = replicas[0].put_table(&table_json(300)).await;
    assert_eq!(status, 200, "{seeded}");
    let (epoch, v_seed, _) =
        converged(&all, "the seed on every replica", |b| b["services"].as_object().is_some_and(|s| s.len() == 300))
            .await;
    let epoch = epoch.expect("a written store has an epoch");
    assert_eq!(seeded["epoch"], epoch.as_str());
    assert!(v_seed >= seeded["version"].as_u64().unwrap());

    // Concurrent registrations and unregistrations through different replicas.
    let txns_before: f64 = sum_metric(&all, "isogroup_companion_etcd_requests_total{op=\"txn\"}").await;
    let started = Instant::now();
    let mut writes = Vec::new();
    for i in 0..30 {
        let port = replicas[i % 3].port;
        writes.push(tokio::spawn(async move {
            let url = format!("http://127.0.0.1:{port}/v1/services/svc-{i}/groups/team-a");
            let resp = reqwest::Client::new()
                .put(url)
                .bearer_auth(TOKEN)
                .json(&json!({"cluster": format!("svc-{i}-a")}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }));
    }
    for w in writes {
        let (status, body) = w.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    let write_time = started.elapsed();
    let (_, v_regs, body) = converged(&all, "30 registrations on every replica", |b| {
        (0..30).all(|i| b["services"][format!("svc-{i}")]["clusters"]["team-a"] == format!("svc-{i}-a"))
    })
    .await;
    let txns = sum_metric(&all, "isogroup_companion_etcd_requests_total{op=\"txn\"}").await - txns_before;
    println!(
        "30 concurrent registrations over 3 replicas: {write_time:?}, {txns} etcd transactions ({:.2} per registration, conflicts retried), all replicas at version {v_regs}",
        txns / 30.0
    );
    assert!(v_regs > v_seed);
    let mut unregs = Vec::new();
    for i in 0..10 {
        let port = replicas[(i + 1) % 3].port;
        unregs.push(tokio::spawn(async move {
            let url = format!("http://127.0.0.1:{port}/v1/services/svc-{i}/groups/team-a");
            reqwest::Client::new().delete(url).bearer_auth(TOKEN).send().await.unwrap().status().as_u16()
        }));
    }
    for u in unregs {
        assert_eq!(u.await.unwrap(), 200);
    }
    let (_, _, body_after) = converged(&all, "10 unregistrations on every replica", |b| {
        (0..10).all(|i| b["services"][format!("svc-{i}")]["clusters"].get("team-a").is_none())
            && (10..30).all(|i| b["services"][format!("svc-{i}")]["clusters"]["team-a"] == format!("svc-{i}-a"))
    })
    .await;
    assert_eq!(body_after["epoch"], epoch.as_str());
    drop(body);

    // Registration -> every replica, one at a time (measured, not asserted).
    let mut latencies = Vec::new();
    for i in 0..10 {
        let (status, written) = replicas[i % 3].register(&format!("svc-{}", 100 + i), "team-a", "late").await;
        assert_eq!(status, 200, "{written}");
        let v = written["version"].as_u64().unwrap();
        let t = Instant::now();
        wait_until("the write on every replica", CONVERGE, async || {
            for r in &all {
                if r.served().await.1 < v {
                    return false;
                }
            }
            true
        })
        .await;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!("registration answered -> every replica serves it: p50 {:?}, max {:?}", latencies[5], latencies[9]);

    // kill -9 a replica, start it again: it serves the same (epoch, version).
    replicas[1].kill();
    replicas[1] = replica(&endpoints, prefix).await;
    let all: Vec<&Companion> = replicas.iter().collect();
    let (e, v_restart, _) = converged(&all, "the restarted replica in step", |_| true).await;
    assert_eq!(e.as_deref(), Some(epoch.as_str()));
    let (status, _) = replicas[1].register("svc-200", "team-a", "after-restart").await;
    assert_eq!(status, 200);
    converged(&all, "a write through the restarted replica", |b| clusters(b, "svc-200")["team-a"] == "after-restart")
        .await;

    // Kill one etcd member: writes go on (quorum 2 of 3); bring it back.
    // Should it lead, the others elect a new leader first (3 to 6 s with
    // this cluster's 3 s election timeout), and a write sent meanwhile is
    // refused 503 after 4 s without an answer, as without quorum.
    etcd.kill_member(2);
    etcd.wait_writable().await;
    for (i, r) in replicas.iter().enumerate() {
        let (status, body) = r.register("svc-201", &format!("g-{i}"), "one-member-down").await;
        assert_eq!(status, 200, "replica {i} with a member down: {body}");
    }
    converged(&all, "writes with a member down", |b| clusters(b, "svc-201").as_object().is_some_and(|c| c.len() == 4))
        .await;
    etcd.start_member(2);
    etcd.wait_writable().await;
    let (status, _) = replicas[2].register("svc-202", "team-a", "member-back").await;
    assert_eq!(status, 200);
    converged(&all, "after the member came back", |b| clusters(b, "svc-202")["team-a"] == "member-back").await;

    // No quorum: a write answers 503 with the reason, replicas stay ready
    // and keep serving; nothing is half-written.
    let (e_before, v_before, _) = converged(&all, "steady before quorum loss", |_| true).await;
    etcd.kill_member(1);
    etcd.kill_member(2);
    let (status, err) = replicas[0].register("svc-203", "team-a", "no-quorum").await;
    assert_eq!((status, err["error"].as_str()), (503, Some("store_unavailable")), "{err}");
    assert!(err["detail"].as_str().unwrap().contains("etcd"), "{err}");
    for r in &replicas {
        assert!(r.ready().await, "a loaded replica stays ready without its store");
        assert_eq!(r.served().await.1, v_before);
    }
    etcd.start_member(1);
    etcd.start_member(2);
    etcd.wait_writable().await;
    let (_, _, body) = converged(&all, "quorum back", |_| true).await;
    assert!(clusters(&body, "svc-203").get("team-a").is_none(), "the refused write is not there");
    assert!(v_restart <= v_before);
    assert_eq!(e_before.as_deref(), Some(epoch.as_str()));

    // Garbage under the prefix: refused whole, counted, the last good
    // table keeps serving; writes say why; removing it heals.
    let (_, v_good, good) = converged(&all, "steady before garbage", |_| true).await;
    let mut client = etcd.client().await;
    client.put(format!("{prefix}junk"), "hand-written", None).await.unwrap();
    for r in &replicas {
        wait_until("the garbage to be counted", CONVERGE, async || {
            r.metric_sum("isogroup_companion_store_rejects_total").await >= 1.0
        })
        .await;
        assert_eq!(r.served().await.1, v_good);
    }
    let (status, err) = replicas[0].register("svc-204", "team-a", "x").await;
    assert_eq!((status, err["error"].as_str()), (503, Some("store_unreadable")), "{err}");
    assert!(err["detail"].as_str().unwrap().contains("/isogroup/junk"), "names the key: {err}");
    client.delete(format!("{prefix}junk"), None).await.unwrap();
    // A service value that is not a service: refused whole too.
    let rev: Value =
        serde_json::from_slice(client.get(format!("{prefix}meta/rev"), None).await.unwrap().kvs()[0].value()).unwrap();
    let bad_key = format!("{prefix}gen/{}/services/svc-0", rev["generation"].as_str().unwrap());
    let rejects: f64 = sum_metric(&all, "isogroup_companion_store_rejects_total").await;
    client.put(bad_key.clone(), "{\"hosts\": 5}", None).await.unwrap();
    wait_until("the bad value to be counted", CONVERGE, async || {
        sum_metric(&all, "isogroup_companion_store_rejects_total").await >= rejects + 3.0
    })
    .await;
    for r in &replicas {
        assert_eq!(r.served().await.2["services"]["svc-0"], good["services"]["svc-0"]);
    }
    // Replacing the whole table is refused while the store holds garbage.
    let (status, _) = replicas[1].put_table(&table_json(5)).await;
    assert_eq!(status, 503);
    client.delete(bad_key, None).await.unwrap();
    let (status, body) = replicas[1].register("svc-205", "team-a", "healed").await;
    assert_eq!(status, 200, "{body}");
    let (_, _, healed) = converged(&all, "healed", |b| clusters(b, "svc-205")["team-a"] == "healed").await;
    assert!(healed["services"].get("svc-0").is_none(), "the deleted key took its service with it");

    // Wipe and re-seed: a newer epoch, which a poll holding the old
    // (epoch, version) gets at once, even with a lower version.
    let (_, v_old, _) = converged(&all, "steady before wipe", |_| true).await;
    client.delete(prefix, Some(etcd_client::DeleteOptions::new().with_prefix())).await.unwrap();
    converged(&all, "the wiped store served empty", |b| b == &json!({"version": 0})).await;
    let (status, _) = replicas[2].put_table(&table_json(3)).await;
    assert_eq!(status, 200);
    let (new_epoch, v_new, _) =
        converged(&all, "the re-seed", |b| b["services"].as_object().is_some_and(|s| s.len() == 3)).await;
    let new_epoch = new_epoch.unwrap();
    assert!(
        Stamp::new(Some(&new_epoch), v_new) > Stamp::new(Some(&epoch), v_old),
        "{new_epoch}/{v_new} is newer than {epoch}/{v_old}"
    );
    let resp = replicas[0].get(&format!("/v1/table?after={v_old}&epoch={epoch}&wait=20")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-isogroup-epoch"].to_str().unwrap(), new_epoch);
}

/// Read-your-writes across replicas: a change sent to one replica right
/// after the write it depends on went through another is checked against
/// that write, never against a mirror that has not seen it yet.
#[tokio::test]
async fn a_write_through_one_replica_is_seen_by_the_next_change_through_another() {
    let etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let (b, a) = (replica(&endpoints, "/ryw/").await, replica(&endpoints, "/ryw/").await);
    let (status, body) = b.put_table(&table_json(3)).await;
    assert_eq!(status, 200, "{body}");
    converged(&[&a, &b], "the seed on both", |v| v["services"].as_object().is_some_and(|s| s.len() == 3)).await;
    for i in 0..20 {
        let group = format!("feature-{i}");
        let service = format!("svc-{}", i % 3);
        let (status, body) = b.register(&service, &group, &format!("c-{i}-f")).await;
        assert_eq!(status, 200, "register {service}/{group} through B: {body}");
        // At once, no wait for A to see it.
        let (status, body) = a.unregister(&service, &group).await;
        assert_eq!(status, 200, "unregister {service}/{group} through A right after B registered it: {body}");
    }
    let (_, _, body) = converged(&[&a, &b], "every feature group gone on both", |v| {
        (0..3).all(|i| clusters(v, &format!("svc-{i}")).as_object().is_some_and(|c| c.len() == 1))
    })
    .await;
    assert_eq!(clusters(&body, "svc-0"), json!({"base": "c-0"}));

    // Source bindings and runtime rules: their own keys, on every replica;
    // an expired binding is deleted by one guarded write, whichever replica
    // makes it.
    let (status, body) = b
        .admin(reqwest::Method::PUT, "/v1/sources/10.0.0.7", Some(json!({"group": "base", "ttl_s": 2})), Some(TOKEN))
        .await;
    assert_eq!(status, 200, "bind through B: {body}");
    let (status, body) =
        b.admin(reqwest::Method::PUT, "/v1/sources/10.9.0.0/16", Some(json!({"group": "ghost"})), Some(TOKEN)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("unknown_group")), "{body}");
    let rules = json!([{"header": "x-user", "values": ["a"], "group": "base"}]);
    let (status, body) = a.admin(reqwest::Method::PUT, "/v1/rules", Some(rules.clone()), Some(TOKEN)).await;
    assert_eq!(status, 200, "rules through A: {body}");
    converged(&[&a, &b], "the binding and the rules on both", |v| {
        v["sources"][0]["cidr"] == "10.0.0.7/32" && v["rules"] == rules
    })
    .await;
    let mut kv = etcd.client().await;
    let keys = kv.get("/ryw/gen/", Some(etcd_client::GetOptions::new().with_prefix().with_keys_only())).await.unwrap();
    let names: Vec<String> = keys.kvs().iter().map(|k| k.key_str().unwrap().to_owned()).collect();
    assert!(names.iter().any(|k| k.ends_with("/sources")) && names.iter().any(|k| k.ends_with("/rules")), "{names:?}");
    converged(&[&a, &b], "the expired binding deleted on both", |v| v.get("sources").is_none() && v["rules"] == rules)
        .await;

    // The same against a replica whose etcd member lags (paused): its
    // mirror cannot have the write, and the unregister waits for it instead
    // of answering 404.
    let lagging = (etcd.leader().await + 1) % 3;
    let a = replica(&format!("http://127.0.0.1:{}", etcd.client_port(lagging)), "/ryw/").await;
    let b_endpoints: Vec<String> =
        (0..3).filter(|&i| i != lagging).map(|i| format!("http://127.0.0.1:{}", etcd.client_port(i))).collect();
    let b = replica(&b_endpoints.join(","), "/ryw/").await;
    converged(&[&a, &b], "both new replicas in step", |_| true).await;
    etcd.pause_member(lagging);
    let (status, body) = b.register("svc-0", "feature-lag", "c-lag").await;
    assert_eq!(status, 200, "register through B with a member paused: {body}");
    let unregister = tokio::spawn(async move {
        let answer = a.unregister("svc-0", "feature-lag").await;
        (a, answer)
    });
    tokio::time::sleep(Duration::from_millis(500)).await; // the member stays behind a while
    etcd.resume_member(lagging);
    let (a, (status, body)) = unregister.await.unwrap();
    assert_eq!(status, 200, "unregister through A, whose member lagged: {body}");
    converged(&[&a, &b], "the lagged unregister on both", |v| clusters(v, "svc-0") == json!({"base": "c-0"})).await;
}

#[tokio::test]
async fn etcd_down_at_start_is_live_not_ready_and_says_why() {
    // Nothing listens on the port yet.
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let c = replica(&endpoint, "/isogroup/").await;
    let resp = c.get("/readyz").await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "not_ready");
    assert!(body["detail"].as_str().unwrap().contains(&endpoint), "{body}");
    assert_eq!(c.get("/healthz").await.status(), 200, "live");
    assert_eq!(c.get("/v1/table").await.status(), 503);
    assert_eq!(c.metric("isogroup_companion_ready").await, 0.0);
    let (status, err) = c.register("a", "b", "c").await;
    assert_eq!((status, err["error"].as_str()), (503, Some("not_ready")));
    // It keeps retrying (with backoff); once etcd is there it is ready.
    wait_until("a retry to be counted", CONVERGE, async || {
        c.metric_sum("isogroup_companion_etcd_errors_total").await >= 2.0
    })
    .await;
    let etcd = Etcd::start_on(port).await;
    wait_until("ready once etcd is up", CONVERGE, async || c.ready().await).await;
    assert_eq!(c.metric("isogroup_companion_ready").await, 1.0);
    assert_eq!(c.served().await, (None, 0, json!({"version": 0})));
    drop(etcd);
}

async fn sum_metric(replicas: &[&Companion], name: &str) -> f64 {
    let mut total = 0.0;
    for r in replicas {
        total += r.metric_sum(name).await;
    }
    total
}

#[tokio::test]
async fn a_replica_starting_on_10k_services_loads_them_all() {
    let etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let first = replica(&endpoints, "/big/").await;
    wait_until("the first replica ready", CONVERGE, async || first.ready().await).await;
    let (status, body) = first.put_table(&table_json(10_000)).await;
    assert_eq!(status, 200, "{body}");
    let started = Instant::now();
    let second = replica(&endpoints, "/big/").await;
    let (epoch, version, served) = converged(&[&first, &second], "10k services on a new replica", |b| {
        b["services"].as_object().is_some_and(|s| s.len() == 10_000)
    })
    .await;
    let load_time = started.elapsed();
    assert_eq!((epoch.as_deref(), version), (body["epoch"].as_str(), body["version"].as_u64().unwrap()));
    assert_eq!(served["services"]["svc-9999"]["clusters"]["base"], "c-9999");
    let rss_kb = common::rss_kb(second.child.id());
    println!("a replica at 10k services: ready and serving in {load_time:?} (start included), RSS {rss_kb} kB");
    // One registration on a big table is still one read (of meta/rev, to
    // catch up with other replicas' writes) and one transaction.
    let txns = second.metric_sum("isogroup_companion_etcd_requests_total{op=\"txn\"}").await;
    let reads = second.metric_sum("isogroup_companion_etcd_requests_total{op=\"range\"}").await;
    let (status, _) = second.register("svc-5000", "team-a", "big-a").await;
    assert_eq!(status, 200);
    assert_eq!(second.metric_sum("isogroup_companion_etcd_requests_total{op=\"txn\"}").await - txns, 1.0);
    assert_eq!(second.metric_sum("isogroup_companion_etcd_requests_total{op=\"range\"}").await - reads, 1.0);
    converged(&[&first, &second], "the registration on both", |b| {
        b["services"]["svc-5000"]["clusters"]["team-a"] == "big-a"
    })
    .await;
}

/// `POST /v1/reports` to `c` as `instance`.
async fn report_to(c: &Companion, instance: &str, workload: &str, destination: &str, counts: [u64; 5]) {
    let body = json!({"workload": workload, "namespace": "demo", "sample": 8, "window_s": 10,
        "outbound": {destination: {"kept": counts[0], "changed": counts[1], "healed": counts[2],
                                   "dropped": counts[3], "untraced": counts[4]}}});
    let resp = reqwest::Client::new()
        .post(c.url("/v1/reports"))
        .header("x-isogroup-poller", instance)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204, "{}", resp.text().await.unwrap());
}

#[tokio::test]
async fn every_replica_answers_the_same_propagation_from_reports_sent_to_any() {
    let etcd = Etcd::start(3).await;
    let endpoints = etcd.endpoints();
    let prefix = "/isogroup-reports-test/";
    let mut replicas =
        [replica(&endpoints, prefix).await, replica(&endpoints, prefix).await, replica(&endpoints, prefix).await];
    let (status, _) = replicas[0].put_table(&table_json(3)).await;
    assert_eq!(status, 200);
    let all: Vec<&Companion> = replicas.iter().collect();
    let (_, version, table) = converged(&all, "the table on every replica", |b| b["services"].is_object()).await;
    // b's reports reach two replicas, a's a third.
    report_to(&replicas[0], "envoy-b-1", "b", "c", [1, 0, 0, 3, 0]).await;
    report_to(&replicas[1], "envoy-b-2", "b", "c", [1, 1, 2, 0, 4]).await;
    report_to(&replicas[2], "envoy-a-1", "a", "b", [5, 0, 0, 0, 0]).await;
    let want_bc = json!({"workload": "b", "namespace": "demo", "destination": "c", "kept": 2, "changed": 1,
        "healed": 2, "dropped": 3, "untraced": 4, "sample": 8, "drop_share": 5.0 / 8.0});
    let mut answers = Vec::new();
    wait_until("every replica's merged propagation", CONVERGE, async || {
        answers.clear();
        for r in &replicas {
            let resp = r.get("/v1/propagation").await;
            if resp.status() != 200 {
                return false;
            }
            answers.push(resp.json::<Value>().await.unwrap());
        }
        let merged = answers[0]["edges"].as_array().is_some_and(|edges| {
            edges.len() == 2
                && want_bc.as_object().unwrap().iter().all(|(k, v)| &edges[0][k] == v)
                && edges[1]["workload"] == "a"
                && edges[1]["kept"] == 5
        });
        merged && answers.windows(2).all(|w| w[0] == w[1])
    })
    .await;
    assert_eq!(answers[0]["workloads"][0]["workload"], "b");
    assert_eq!(answers[0]["workloads"][0]["dropped"], 3);
    // Each replica wrote its own key beside the table's prefix, leased.
    let mut client = etcd.client().await;
    let keys = client
        .get("/isogroup-reports-test-propagation/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys.kvs().len(), 3, "one key per replica that took a report");
    assert!(keys.kvs().iter().all(|kv| kv.lease() != 0), "every key is leased");
    // Reports never touch the table.
    let (_, version_after, table_after) = converged(&all, "the table unchanged", |_| true).await;
    assert_eq!((version_after, table_after), (version, table));
    // A replica that stops is forgotten with its lease: a's reports (taken
    // by replica 2 alone) leave every other replica's answer.
    replicas[2].kill();
    wait_until("the stopped replica's reports gone", CONVERGE, async || {
        let mut workloads = Vec::new();
        for r in &replicas[..2] {
            let answer: Value = r.get("/v1/propagation").await.json().await.unwrap();
            workloads.push(
                answer["workloads"].as_array().unwrap().iter().map(|w| w["workload"].clone()).collect::<Vec<_>>(),
            );
        }
        workloads.iter().all(|w| w == &[json!("b")])
    })
    .await;
}
