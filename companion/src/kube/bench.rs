//! The Kubernetes source at scale (BENCHMARKS.md): a synthetic API state of
//! 10k services, 50k pods and 100 lanes in the fake API server, with the
//! Istio reconciler on (`--istio target-header`: the leader makes every
//! service's DestinationRule and VirtualService, and a lane enters the table
//! only once its subset and route are observed); a pod turning ready → the
//! new table, p50/p99, and the memory the companion's state adds. Ignored
//! by default (minutes in a debug build); run with `cargo test --profile
//! server -p isogroup-companion --bin isogroup-companion kube_bench --
//! --ignored --nocapture` (the shipped profile: `--release` is the wasm
//! filter's size profile). `KUBE_BENCH_SETTLE_MS` (default 0) sets the settle window
//! and `KUBE_BENCH_EVENTS` (default 200) the number of flips;
//! `KUBE_BENCH_SCALE=n` runs it on 1/n of the services and pods.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use isogroup_core::Limits;
use serde_json::{json, Value};

use crate::kube::fake::{kinds, FakeApi};
use crate::kube::source::Options;
use crate::kube::store::KubeStore;
use crate::kube::tests::FakeClient;
use crate::kube::watch::Timing;
use crate::metrics::Metrics;
use crate::store::{Served, Store};

const SERVICES: usize = 10_000;
const NAMESPACES: usize = 100;
const LANES: usize = 100;
/// Lane pods per lane: 100 lanes × 400 = 40k, plus 10k base pods.
const LANE_PODS: usize = 400;
/// Each event flips a lane pod twice (not ready, then ready): 400 samples.
const EVENTS: usize = 200;
/// Between flips: the samples spread over ~10 s, so the leader's settle
/// record, written at most once a second, falls among them (back to back,
/// 100 samples took ~0.6 s and met at most one such write).
const EVENT_GAP: Duration = Duration::from_millis(20);

fn rss_kb() -> u64 {
    isogroup_test_support::rss_kb(std::process::id())
}

fn ns(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

fn pod(i: usize, name: &str, group: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": name, "namespace": ns(i), "labels": { "isogroup.io/group": group, "app": format!("svc-{i}") } } })
}

fn slice(i: usize, pods: &[(String, bool)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(p, r)| json!({ "addresses": ["10.0.0.1"], "conditions": { "ready": r }, "targetRef": { "kind": "Pod", "name": p } }))
        .collect();
    json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": { "name": format!("svc-{i}-x1"), "namespace": ns(i), "labels": { "kubernetes.io/service-name": format!("svc-{i}") } },
            "endpoints": endpoints })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run with --ignored in a release build (./build.sh bench)"]
async fn kube_bench() {
    // Where a rebuild's time goes: `kube::source`'s debug line per rebuild.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("isogroup_companion::kube::source=debug"))
        .with_writer(std::io::stderr)
        .try_init();
    let (pods, services, slices) = (kinds::pods(), kinds::services(), kinds::slices());
    let rules = kinds::destination_rules("v1");
    let settle_ms: u64 = std::env::var("KUBE_BENCH_SETTLE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let events: usize = std::env::var("KUBE_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(EVENTS);
    // A smaller cluster to try the bench out (1/n of the services and pods).
    let scale: usize = std::env::var("KUBE_BENCH_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1);
    let (services_n, lane_pods) = (SERVICES / scale, LANE_PODS / scale);
    let fake = FakeApi::start(&[
        pods.clone(),
        services.clone(),
        slices.clone(),
        rules.clone(),
        kinds::virtual_services(),
        kinds::isolation_groups(),
        kinds::configmaps(),
    ])
    .await;
    // svc-i: one base pod; lane l has a pod behind services l*100 + k*... (400 each)
    let mut behind: Vec<Vec<(String, bool)>> = (0..services_n).map(|i| vec![(format!("svc-{i}-base"), true)]).collect();
    let mut lanes_of: Vec<Vec<String>> = vec![vec!["base".to_owned()]; services_n];
    for l in 0..LANES {
        for k in 0..lane_pods {
            let i = (l * 97 + k * 25) % services_n;
            let name = format!("svc-{i}-lane-{l}-{k}");
            fake.put_quietly(&pods, pod(i, &name, &format!("lane-{l}")));
            behind[i].push((name, true));
            lanes_of[i].push(format!("lane-{l}"));
        }
    }
    for i in 0..services_n {
        fake.put_quietly(&pods, pod(i, &format!("svc-{i}-base"), "base"));
        fake.put_quietly(
            &services,
            json!({ "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": format!("svc-{i}"), "namespace": ns(i) }, "spec": { "ports": [{ "port": 8080 }] } }),
        );
        fake.put_quietly(&slices, slice(i, &behind[i]));
        lanes_of[i].sort();
        lanes_of[i].dedup();
    }
    // The leader makes every DestinationRule and VirtualService itself.
    let clusters_total: usize = lanes_of.iter().map(Vec::len).sum();
    let pods_total = fake_count(&fake, &pods);
    eprintln!("kube_bench: state built");
    let before = rss_kb();
    let metrics = Arc::new(Metrics::new());
    let served = Served::new("base".into(), Limits::default(), metrics.clone()).unwrap();
    let store = Arc::new(KubeStore::new(served));
    store.become_leader("1000-aa".into()).unwrap();
    // Renewals, as the Lease loop makes them: the leader's writes are
    // fenced by the renew deadline of its last one.
    let fence = store.fence();
    tokio::spawn(async move {
        loop {
            fence.renewed(Instant::now());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let opts = Options {
        settle: Duration::from_millis(settle_ms),
        recheck: if settle_ms == 0 { Duration::from_secs(3600) } else { Duration::from_millis(500) },
        watch: Timing::default(),
        namespace: "isogroup-system".into(),
        istio: Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into())),
        installation: "isogroup-system".into(),
        resync: Duration::from_secs(60),
        instance: "companion-bench".into(),
    };
    let started = Instant::now();
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), opts));
    let deadline = Instant::now() + Duration::from_secs(1200);
    let clusters = || store.served().current().raw.services.values().map(|s| s.clusters.len()).sum::<usize>();
    while clusters() < clusters_total {
        assert!(Instant::now() < deadline, "first table with every lane");
        tokio::time::sleep(Duration::from_millis(500)).await;
        eprintln!(
            "kube_bench: {} services, {} of {clusters_total} clusters so far; {} Istio writes",
            store.served().current().raw.services.len(),
            clusters(),
            metrics.kube_istio_writes.get()
        );
    }
    let first = started.elapsed();
    eprintln!("kube_bench: first table after {first:?}");
    let after = rss_kb();
    // Events: a lane pod of a different service each time turns not ready
    // then ready again; each flip must show in a new table.
    let mut latencies = vec![];
    let writes_before = metrics.kube_istio_writes.get();
    for e in 0..events {
        let i = (e * 37) % services_n;
        let Some(lane_pod) = behind[i].get(1).map(|p| p.0.clone()) else { continue };
        let group = lane_pod.split("-lane-").nth(1).map(|r| format!("lane-{}", r.split('-').next().unwrap())).unwrap();
        let key = format!("svc-{i}.{}", ns(i));
        for ready in [false, true] {
            for p in behind[i].iter_mut().filter(|p| p.0 == lane_pod) {
                p.1 = ready;
            }
            // (a lane has at most one pod behind a service here)
            let sent = Instant::now();
            fake.put(&slices, slice(i, &behind[i]));
            loop {
                let has =
                    store.served().current().raw.services.get(&key).is_some_and(|s| s.clusters.contains_key(&group));
                if has == ready {
                    break;
                }
                assert!(
                    sent.elapsed() < Duration::from_secs(60) + Duration::from_millis(settle_ms),
                    "event {e} not in a table"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            latencies.push(sent.elapsed());
            if latencies.len() % 50 == 0 {
                eprintln!("kube_bench: {} events, last {:?}", latencies.len(), sent.elapsed());
            }
            tokio::time::sleep(EVENT_GAP).await;
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "kube_bench: {services_n} services, {pods_total} pods, {LANES} lanes, --istio target-header, settle {settle_ms} ms; \
         first table (every lane, its subset and route observed) after {first:?}; \
         pod-ready event -> new table over {} events ({} Istio writes): p50 {:?}, p99 {:?}, max {:?}; \
         RSS {} MiB before the companion's state, {} MiB after (+{} MiB), table JSON {} KiB",
        latencies.len(),
        metrics.kube_istio_writes.get() - writes_before,
        pct(0.50),
        pct(0.99),
        latencies.last().unwrap(),
        before / 1024,
        after / 1024,
        after.saturating_sub(before) / 1024,
        store.served().current().json.len() / 1024,
    );
}

fn fake_count(fake: &FakeApi, r: &crate::kube::fake::Res) -> usize {
    fake.count(r)
}

/// Where one update's time goes in the store at the bench's size (10k
/// services, 50k clusters): copying, comparing, checking and serialising
/// the whole table. Run like `kube::bench`.
#[test]
#[ignore = "a benchmark: run with --ignored in a release build"]
fn kube_bench_store_steps() {
    use isogroup_core::{RawService, RawTable, Table};
    let mut raw = RawTable { base_group: Some("base".into()), ..RawTable::default() };
    for i in 0..SERVICES {
        let (name, namespace) = (format!("svc-{i}"), ns(i));
        let host = crate::kube::snapshot::fqdn(&namespace, &name);
        let clusters = std::iter::once("base".to_owned())
            .chain((0..4).map(|k| format!("lane-{}", (i + k * 25) % LANES)))
            .map(|g| (g.clone(), format!("outbound|{{port}}|{g}|{host}")))
            .collect();
        let hosts = vec![format!("{name}.{namespace}"), format!("{name}.{namespace}.svc"), host];
        raw.services.insert(format!("{name}.{namespace}"), RawService { hosts, clusters, ports: vec![8080] });
    }
    let limits = Limits::default();
    let time = |what: &str, f: &mut dyn FnMut()| {
        let mut runs: Vec<Duration> = (0..7)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        runs.sort();
        println!("kube_bench_store_steps: {what}: median {:?}", runs[3]);
    };
    let other = raw.clone();
    time("clone the services", &mut || drop(std::hint::black_box(raw.services.clone())));
    time("compare the services", &mut || assert!(std::hint::black_box(raw.services == other.services)));
    time("Table::check", &mut || drop(std::hint::black_box(Table::check(&raw, "base", &limits).unwrap())));
    time("JSON, pretty", &mut || drop(std::hint::black_box(serde_json::to_vec_pretty(&raw).unwrap())));
    time("JSON, compact", &mut || drop(std::hint::black_box(serde_json::to_vec(&raw).unwrap())));
    let snap = std::cell::RefCell::new(None);
    time("Snapshot::build (clone + check + JSON) and drop the previous", &mut || {
        let s = crate::store::Snapshot::build(raw.clone(), None, 1, "base", &limits).unwrap();
        *snap.borrow_mut() = Some(s);
    });
}
