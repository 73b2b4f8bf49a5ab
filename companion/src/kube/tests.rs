//! The Kubernetes source end to end inside the process: the watch loop and
//! the Lease election against the fake API server (`kube::fake`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use isogroup_core::{Limits, RawTable};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::kube::fake::kinds::{
    configmaps, destination_rules as rules, envoy_filters, events, isolation_groups as groups, leases, pods, services,
    slices, virtual_services as virtualservices,
};
use crate::kube::fake::{endpoint_slice, FakeApi};
use crate::kube::leader::{LeaseConfig, EPOCH_ANNOTATION, LEADER_LABEL};
use crate::kube::source::Options;
use crate::kube::store::KubeStore;
use crate::kube::watch::Timing;
use crate::metrics::Metrics;
use crate::store::{Change, ChangeError, Readiness, Served, Store};

/// A kube client for the fake API server.
pub(crate) trait FakeClient {
    fn client(&self) -> kube::Client;
}

impl FakeClient for FakeApi {
    fn client(&self) -> kube::Client {
        crate::kube::source::install_crypto();
        kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
    }
}

fn pod(name: &str, group: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": "bookinfo", "labels": { "isogroup.io/group": group } } })
}

fn own_pod(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": "isogroup-system", "labels": { "app": "isogroup-companion" } } })
}

fn service() -> Value {
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "reviews", "namespace": "bookinfo" }, "spec": { "ports": [{ "port": 9080 }] } })
}

fn rule(version: &str, subsets: &[&str]) -> Value {
    let subsets: Vec<Value> =
        subsets.iter().map(|s| json!({ "name": s, "labels": { "isogroup.io/group": s } })).collect();
    json!({ "apiVersion": format!("networking.istio.io/{version}"), "kind": "DestinationRule",
            "metadata": { "name": "reviews", "namespace": "bookinfo" }, "spec": { "host": "reviews", "subsets": subsets } })
}

/// The default installation's entry of an IsolationGroup's status.
fn entry(o: &Value) -> &Value {
    &o["status"]["installations"]["isogroup-system"]
}

fn group(name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "isogroup.io/v1alpha1", "kind": "IsolationGroup", "metadata": { "name": name }, "spec": spec })
}

fn opts(settle_ms: u64) -> Options {
    Options {
        settle: Duration::from_millis(settle_ms),
        recheck: Duration::from_millis(50),
        watch: Timing {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
            missing_recheck: Duration::from_millis(300),
        },
        namespace: "isogroup-system".into(),
        istio: None,
        installation: "isogroup-system".into(),
        resync: Duration::from_secs(2),
        instance: "companion-test".into(),
    }
}

fn store() -> (Arc<KubeStore>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let served = Served::new("base".into(), Limits::default(), metrics.clone()).unwrap();
    (Arc::new(KubeStore::new(served)), metrics)
}

/// Polls `probe` every 20 ms for up to 15 s (a loaded 2-core machine).
async fn wait<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_table(store: &KubeStore, what: &str, want: impl Fn(&RawTable) -> bool) -> u64 {
    wait(what, || {
        let cur = store.served().current();
        want(&cur.raw).then_some(cur.version)
    })
    .await
}

fn lanes(t: &RawTable) -> Vec<String> {
    t.services.get("reviews.bookinfo").map(|s| s.clusters.keys().cloned().collect()).unwrap_or_default()
}

async fn bookinfo(fake_rules: &str) -> FakeApi {
    let fake =
        FakeApi::start(&[pods(), services(), slices(), rules(fake_rules), groups(), leases(), configmaps()]).await;
    fake.put_quietly(&services(), service());
    fake.put_quietly(&pods(), pod("r0", "base"));
    fake.put_quietly(&pods(), pod("f1", "feature-1"));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true)]));
    fake.put_quietly(&rules(fake_rules), rule(fake_rules, &["base", "feature-1"]));
    fake
}

#[tokio::test]
async fn watch_loop_follows_the_cluster() {
    let fake = bookinfo("v1").await;
    let (store, metrics) = store();
    assert!(!store.served().readiness().is_ready(), "not ready before the first lists");
    store.become_leader("1000-aa".into()).unwrap();
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics, opts(300)));

    let mut versions = vec![];
    // what holds at the first list and is on no record starts then
    versions.push(wait_table(&store, "feature-1", |t| lanes(t) == ["base", "feature-1"]).await);
    assert_eq!(store.served().readiness(), Readiness::Ready);
    let reviews = store.served().current().raw.services["reviews.bookinfo"].clone();
    assert_eq!(reviews.clusters["feature-1"], "outbound|{port}|feature-1|reviews.bookinfo.svc.cluster.local");
    assert_eq!(reviews.ports, [9080]);
    // not ready → it leaves
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", false)]));
    versions.push(wait_table(&store, "feature-1 gone", |t| lanes(t) == ["base"]).await);
    // a watch that ends resumes from its resource version: no re-list
    let lists = fake.lists(&slices());
    fake.close_watches(&slices());
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true)]));
    versions.push(wait_table(&store, "resumed watch", |t| lanes(t) == ["base", "feature-1"]).await);
    assert_eq!(fake.lists(&slices()), lists, "resumed, not re-listed");
    // 410 Gone: the log is compacted, the state changes without an event,
    // the watch ends; only a re-list can see the change
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", false)]));
    fake.compact();
    fake.close_watches(&slices());
    versions.push(wait_table(&store, "re-list after 410", |t| lanes(t) == ["base"]).await);
    assert!(fake.lists(&slices()) > lists, "re-listed after 410 Gone");
    // a bookmark moves the watch's version on: after a compaction the
    // watch resumes from it without a re-list
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true)]));
    versions.push(wait_table(&store, "ready again", |t| lanes(t) == ["base", "feature-1"]).await);
    let lists = fake.lists(&pods());
    fake.bookmark(&pods());
    tokio::time::sleep(Duration::from_millis(200)).await; // the bookmark is in flight; nothing to poll for
    fake.compact();
    fake.close_watches(&pods());
    fake.put(&pods(), pod("f1", "team-a"));
    versions.push(wait_table(&store, "relabelled pod, no subset yet", |t| lanes(t) == ["base"]).await);
    wait("pods watched again", || (fake.watches(&pods()) >= 2).then_some(())).await;
    assert_eq!(fake.lists(&pods()), lists, "the bookmark spared a re-list");
    // a new subset enters only after the settle delay
    let started = Instant::now();
    fake.put(&rules("v1"), rule("v1", &["base", "feature-1", "team-a"]));
    versions.push(wait_table(&store, "team-a after settle", |t| lanes(t) == ["base", "team-a"]).await);
    assert!(started.elapsed() >= Duration::from_millis(250), "entered after the settle delay: {:?}", started.elapsed());
    // the leader recorded when team-a's conditions began to hold
    let state = wait("isogroup-state-0", || {
        let cm = fake.get(&configmaps(), "isogroup-system", "isogroup-state-0")?;
        assert_eq!(cm["data"]["epoch"], "1000-aa", "the leader's epoch in the shard");
        let since: std::collections::BTreeMap<String, u64> =
            serde_json::from_str(cm["data"]["since"].as_str()?).ok()?;
        since.contains_key("reviews.bookinfo/team-a").then_some(since)
    })
    .await;
    assert!(state["reviews.bookinfo/base"] < state["reviews.bookinfo/team-a"], "{state:?}");
    assert!(!state.contains_key("reviews.bookinfo/feature-1"), "{state:?}");
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions only go up: {versions:?}");
}

#[tokio::test]
async fn isolation_groups_become_groups_and_invalid_ones_are_reported() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&groups(), group("feature-1", json!({ "fallback": ["team-a"], "description": "checkout" })));
    fake.put_quietly(&groups(), group("team-s", json!({ "mode": "strict" })));
    fake.put_quietly(&groups(), group("broken", json!({ "mode": "strict", "fallback": ["base"] })));
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), opts(0)));
    wait_table(&store, "groups", |t| t.groups.contains_key("feature-1")).await;
    let t = store.served().current().raw.clone();
    assert_eq!(
        serde_json::to_value(&t.groups).unwrap(),
        json!({ "feature-1": { "fallback": ["team-a"], "description": "checkout" }, "team-a": {}, "team-s": { "mode": "strict" } })
    );
    assert_eq!(lanes(&t), ["base", "feature-1"], "the lanes route whatever the objects say");
    // the invalid one: its own status says why, and it is left out
    let status = wait("broken's status", || {
        let o = fake.get(&groups(), "", "broken")?;
        (!entry(&o).is_null()).then(|| entry(&o).clone())
    })
    .await;
    let condition = &status["conditions"][0];
    assert_eq!((condition["type"].as_str(), condition["status"].as_str()), (Some("Accepted"), Some("False")));
    assert!(condition["message"].as_str().unwrap().contains("spec.fallback: a strict group cannot have a fallback"));
    assert_eq!(status["observedGeneration"], 1);
    let ok = wait("feature-1's status", || fake.get(&groups(), "", "feature-1").filter(|o| !entry(o).is_null())).await;
    assert_eq!(entry(&ok)["conditions"][0]["status"], "True");
    assert_eq!(metrics.kube_invalid_groups.get(), 1);
    // fixed: it enters, and its status follows the new generation
    fake.put(&groups(), group("broken", json!({ "mode": "strict" })));
    wait_table(&store, "fixed group", |t| t.groups.contains_key("broken")).await;
    let fixed = wait("fixed status", || {
        let o = fake.get(&groups(), "", "broken")?;
        (entry(&o)["conditions"][0]["status"] == "True").then_some(o)
    })
    .await;
    assert_eq!(entry(&fixed)["observedGeneration"], 2);
    // deleted: gone from the table
    fake.delete(&groups(), "", "team-s");
    wait_table(&store, "deleted group", |t| !t.groups.contains_key("team-s")).await;
    // admin registrations are refused: lanes are pod labels
    let refused = store.apply(crate::store::Change::Unregister { service: "x".into(), group: "y".into() }).await;
    assert!(matches!(refused, Err(crate::store::ChangeError::ManagedByKubernetes)));
}

#[tokio::test]
async fn a_failed_status_write_is_retried_by_the_writer_without_another_event() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&groups(), group("feature-1", json!({ "description": "checkout" })));
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    // No tick and no resync: only a watch event would make the source
    // decide again; the writer alone must retry.
    let opts = Options { recheck: Duration::from_secs(3600), resync: Duration::from_secs(3600), ..opts(0) };
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics, opts));
    let generation = |o: &Value| entry(o)["observedGeneration"].as_i64();
    wait("the first status", || fake.get(&groups(), "", "feature-1").filter(|o| generation(o) == Some(1))).await;
    let logged = fake.writes().len();
    fake.fail_status_writes(&groups(), 500, 2);
    fake.put(&groups(), group("feature-1", json!({ "description": "checkout, second take" })));
    let landed = wait("the new generation's status", || {
        fake.get(&groups(), "", "feature-1").filter(|o| generation(o) == Some(2))
    })
    .await;
    assert_eq!(entry(&landed)["conditions"][0]["status"], "True");
    let tries: Vec<u16> = fake.writes()[logged..]
        .iter()
        .filter(|w| w.res == groups() && w.status && w.name == "feature-1")
        .map(|w| w.code)
        .collect();
    assert!(tries.starts_with(&[500, 500, 200]), "{tries:?}");
}

#[tokio::test]
async fn missing_crds_count_as_empty_and_destination_rules_fall_back_to_v1beta1() {
    // Istio serves only v1beta1; the IsolationGroup CRD is not installed.
    let fake = FakeApi::start(&[pods(), services(), slices(), rules("v1beta1"), leases(), configmaps()]).await;
    fake.put_quietly(&services(), service());
    fake.put_quietly(&pods(), pod("r0", "base"));
    fake.put_quietly(&pods(), pod("f1", "feature-1"));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true)]));
    fake.put_quietly(&rules("v1beta1"), rule("v1beta1", &["base", "feature-1"]));
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics, opts(0)));
    wait_table(&store, "lane via v1beta1 subsets", |t| lanes(t) == ["base", "feature-1"]).await;
    match store.served().readiness() {
        Readiness::Degraded(detail) => {
            assert!(detail.contains("warning: IsolationGroup: no version of isogroup.io"), "{detail}")
        }
        other => panic!("ready with a warning, got {other:?}"),
    }
    // installed later: probed again and watched
    fake.install(&groups());
    fake.put(&groups(), group("feature-1", json!({ "mode": "strict" })));
    wait_table(&store, "late CRD", |t| t.groups.contains_key("feature-1")).await;
    wait("warning cleared", || (store.served().readiness() == Readiness::Ready).then_some(())).await;
}

#[tokio::test]
async fn watch_errors_back_off_and_show_in_readiness() {
    let fake = bookinfo("v1").await;
    fake.fail(&slices(), 403);
    let (store, metrics) = store();
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), opts(0)));
    let detail = wait("the error in the readiness detail", || match store.served().readiness() {
        Readiness::Loading(d) if d.contains("endpointslices: watch error") => Some(d),
        _ => None,
    })
    .await;
    assert!(detail.contains("endpointslices: first list not finished"), "{detail}");
    // backoff 100 ms doubling to 400 ms (jittered): over ~1.5 s a handful of
    // lists, where a tight loop would make thousands
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tries = fake.lists(&slices());
    assert!((2..=12).contains(&tries), "{tries} lists in 1.5 s");
    let errors = metrics.encode();
    assert!(errors.contains("isogroup_companion_kube_watch_errors_total{kind=\"endpointslices\"}"), "{errors}");
    fake.fail(&slices(), 0);
    wait("ready once the list works", || store.served().readiness().is_ready().then_some(())).await;
}

/// One replica: its watch loop and its election, stoppable.
struct Replica {
    store: Arc<KubeStore>,
    metrics: Arc<Metrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Replica {
    fn start(fake: &FakeApi, name: &str) -> Replica {
        Replica::with_lease(fake, name, Duration::from_millis(1200))
    }

    fn with_lease(fake: &FakeApi, name: &str, duration: Duration) -> Replica {
        let metrics = Arc::new(Metrics::new());
        let served = Served::new("base".into(), Limits::default(), metrics.clone()).unwrap();
        let store = Arc::new(KubeStore::new(served).with_renew_deadline(duration * 2 / 3));
        let cfg = LeaseConfig {
            namespace: "isogroup-system".into(),
            name: "isogroup-companion".into(),
            identity: name.into(),
            duration,
            renew_deadline: duration * 2 / 3,
            retry: Duration::from_millis(100),
            leader_label: LEADER_LABEL.into(),
            max_stale: duration,
        };
        let tasks = vec![
            tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), opts(0))),
            tokio::spawn(crate::kube::leader::run(fake.client(), store.clone(), cfg, metrics.clone())),
        ];
        Replica { store, metrics, tasks }
    }

    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn leader_label(fake: &FakeApi, pod: &str) -> Option<String> {
    fake.get(&pods(), "isogroup-system", pod)?["metadata"]["labels"][LEADER_LABEL].as_str().map(str::to_owned)
}

#[tokio::test]
async fn one_leader_serves_and_a_new_one_takes_over_with_a_newer_epoch() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&pods(), own_pod("companion-a"));
    fake.put_quietly(&pods(), own_pod("companion-b"));
    let replicas = [Replica::start(&fake, "companion-a"), Replica::start(&fake, "companion-b")];
    let leader = wait("a leader", || {
        let leading: Vec<usize> = (0..2).filter(|&i| replicas[i].store.is_leader()).collect();
        (leading.len() == 1).then(|| leading[0])
    })
    .await;
    let (names, other) = (["companion-a", "companion-b"], 1 - leader);
    // every replica is ready; only the leader serves
    wait("both ready", || replicas.iter().all(|r| r.store.served().readiness().is_ready()).then_some(())).await;
    assert!(replicas[other].store.not_serving().is_some());
    let first = wait("the leader's table", || {
        let cur = replicas[leader].store.served().current();
        (lanes(&cur.raw) == ["base", "feature-1"]).then_some(cur)
    })
    .await;
    let lease = fake.get(&leases(), "isogroup-system", "isogroup-companion").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], names[leader]);
    assert_eq!(lease["metadata"]["annotations"][EPOCH_ANNOTATION].as_str(), first.epoch.as_deref());
    wait("the leader's pod labelled", || (leader_label(&fake, names[leader]).as_deref() == Some("true")).then_some(()))
        .await;
    assert_eq!(leader_label(&fake, names[other]), None);
    // the leader dies without a word: the other takes over once the lease
    // expires, under a newer epoch, with every lane (its subsets settled)
    replicas[leader].stop();
    let second = wait("the new leader's table", || {
        let cur = replicas[other].store.served().current();
        (replicas[other].store.is_leader() && cur.epoch.is_some()).then_some(cur)
    })
    .await;
    assert!(second.stamp() > first.stamp(), "{:?} after {:?}", second.epoch, first.epoch);
    assert_eq!(lanes(&second.raw), ["base", "feature-1"], "no lane dropped on failover");
    let lease = fake.get(&leases(), "isogroup-system", "isogroup-companion").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], names[other]);
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    wait("labels moved", || {
        (leader_label(&fake, names[other]).as_deref() == Some("true") && leader_label(&fake, names[leader]).is_none())
            .then_some(())
    })
    .await;
    assert_eq!(replicas[other].metrics.kube_leader.get(), 1);
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&pods(), own_pod("companion-a"));
    let replica = Replica::start(&fake, "companion-a");
    wait("leading", || replica.store.is_leader().then_some(())).await;
    let epoch = replica.store.served().current().epoch.clone();
    fake.fail(&leases(), 500);
    wait("stepped down", || replica.store.not_serving().map(|_| ())).await;
    assert_eq!(replica.metrics.kube_leader.get(), 0);
    fake.fail(&leases(), 0);
    // its own lease, its own pod: it takes it back at once, under a newer epoch
    wait("leading again", || replica.store.is_leader().then_some(())).await;
    let again = replica.store.served().current();
    assert!(again.stamp() > isogroup_core::epoch::Stamp::new(epoch.as_deref(), u64::MAX));
}

#[tokio::test]
async fn a_leader_whose_api_server_hangs_steps_down_before_the_lease_can_pass() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&pods(), own_pod("companion-a"));
    let lease = Duration::from_secs(3);
    let replica = Replica::with_lease(&fake, "companion-a", lease);
    wait("leading", || replica.store.is_leader().then_some(())).await;
    // Lease requests get no answer: it must step down (at its renew
    // deadline, 2 s) before a standby could take the Lease, `lease` after
    // the last renewal the API server recorded.
    fake.stall(&leases(), true);
    wait("stepped down", || replica.store.not_serving().map(|_| ())).await;
    let stepped_down = k8s_openapi::chrono::Utc::now();
    let recorded = fake.get(&leases(), "isogroup-system", "isogroup-companion").unwrap();
    let renewed: k8s_openapi::chrono::DateTime<k8s_openapi::chrono::Utc> =
        recorded["spec"]["renewTime"].as_str().unwrap().parse().unwrap();
    let held = (stepped_down - renewed).to_std().unwrap();
    assert!(held < lease, "still leading {held:?} after its last renewal, past the Lease's {lease:?}");
    assert_eq!(replica.metrics.kube_leader.get(), 0);
    // Answered again: it leads again.
    fake.stall(&leases(), false);
    wait("leading again", || replica.store.is_leader().then_some(())).await;
    replica.stop();
}

#[tokio::test]
async fn a_standby_waits_as_long_as_the_lease_names_not_its_own_duration() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&pods(), own_pod("companion-a"));
    fake.put_quietly(&pods(), own_pod("companion-b"));
    // a holds a 600 s Lease and dies without a word; b, started with a
    // 300 ms Lease (another --lease-ms), must not take it after 300 ms.
    let a = Replica::with_lease(&fake, "companion-a", Duration::from_secs(600));
    wait("a leads", || a.store.is_leader().then_some(())).await;
    a.stop();
    let b = Replica::with_lease(&fake, "companion-b", Duration::from_millis(300));
    wait("b ready", || b.store.served().readiness().is_ready().then_some(())).await;
    // b reads the Lease every 100 ms: 20 reads span over 6 of its own durations.
    let from = fake.gets(&leases());
    wait("b's rounds", || (fake.gets(&leases()) >= from + 20).then_some(())).await;
    assert!(!b.store.is_leader(), "b took a Lease its holder still counts on");
    let lease = fake.get(&leases(), "isogroup-system", "isogroup-companion").unwrap();
    assert_eq!(
        (lease["spec"]["holderIdentity"].as_str(), lease["spec"]["leaseDurationSeconds"].as_i64()),
        (Some("companion-a"), Some(600))
    );
    b.stop();
}

#[tokio::test]
async fn a_leader_shutting_down_hands_the_lease_over_at_once() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&pods(), own_pod("companion-a"));
    fake.put_quietly(&pods(), own_pod("companion-b"));
    // A lease far longer than the test's waits: only a release hands it over.
    let a = Replica::with_lease(&fake, "companion-a", Duration::from_secs(600));
    wait("a leads", || a.store.is_leader().then_some(())).await;
    let b = Replica::with_lease(&fake, "companion-b", Duration::from_secs(600));
    wait("b ready", || b.store.served().readiness().is_ready().then_some(())).await;
    a.stop();
    let cfg = LeaseConfig::new("isogroup-system".into(), "companion-a".into());
    crate::kube::leader::release(fake.client(), &a.store, &cfg).await;
    assert!(a.store.not_serving().is_some());
    let lease = fake.get(&leases(), "isogroup-system", "isogroup-companion").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    wait("b leads", || b.store.is_leader().then_some(())).await;
    assert_eq!(leader_label(&fake, "companion-a"), None);
}

#[tokio::test]
async fn over_http_a_standby_answers_not_leader_and_registrations_are_refused() {
    let (store, metrics) = store();
    store.served().set_readiness(Readiness::Ready);
    let token = crate::http::auth::Token::load(None, Some("t0ken".into())).unwrap();
    let (_tx, shutdown) = tokio::sync::watch::channel(false);
    let api = Arc::new(crate::http::Api::new(store.clone(), token, metrics, None, shutdown));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, crate::http::router(api)).await });
    let client = reqwest::Client::new();
    let get = || async { client.get(format!("{url}/v1/table")).send().await.unwrap() };
    let answer = get().await;
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.json::<Value>().await.unwrap()["error"], "not_leader");
    let ready = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "a standby is ready");
    let register = client
        .put(format!("{url}/v1/services/reviews.bookinfo/groups/feature-1"))
        .bearer_auth("t0ken")
        .json(&json!({ "cluster": "c" }))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 409);
    assert_eq!(register.json::<Value>().await.unwrap()["error"], "managed_by_kubernetes");
    publish_one_service(&store);
    store.become_leader("1000-aa".into()).unwrap();
    let answer = get().await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.headers()["x-isogroup-epoch"], "1000-aa");
}

/// Serves the HTTP face over `store`; the answer's sender keeps shutdown
/// from releasing held polls.
async fn serve_http(store: Arc<KubeStore>, metrics: Arc<Metrics>) -> (String, tokio::sync::watch::Sender<bool>) {
    let (tx, shutdown) = tokio::sync::watch::channel(false);
    let api = Arc::new(crate::http::Api::new(store, None, metrics, None, shutdown));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, crate::http::router(api)).await });
    (url, tx)
}

/// Every read derived from the table, as `/v1/table`'s pollers, scripts and
/// the console make them, and the propagation window the leader alone holds.
fn table_reads(service: &str) -> [String; 6] {
    [
        "/v1/table".to_owned(),
        format!("/v1/resolve?service={service}&group=base"),
        "/v1/matrix".to_owned(),
        "/v1/sources".to_owned(),
        "/v1/rules".to_owned(),
        "/v1/propagation".to_owned(),
    ]
}

/// The status and `error` of each of `paths`.
async fn statuses(url: &str, paths: &[String]) -> Vec<(String, u16, Value)> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for path in paths {
        let answer = client.get(format!("{url}{path}")).send().await.unwrap();
        let status = answer.status().as_u16();
        let body = answer.json::<Value>().await.unwrap_or(Value::Null);
        out.push((path.clone(), status, body["error"].clone()));
    }
    out
}

fn all_not_leader(answers: &[(String, u16, Value)]) -> bool {
    answers.iter().all(|(_, status, error)| *status == 503 && error == "not_leader")
}

fn all_ok(answers: &[(String, u16, Value)]) -> bool {
    answers.iter().all(|(_, status, _)| *status == 200)
}

/// A poll of `url` held on what `store` serves, with a wait (30 s) far
/// beyond what the test takes: only a step-down answers it in time. A poll
/// answered at once (a new version served in between) is made again.
async fn hold_poll(url: &str, store: &KubeStore, metrics: &Metrics) -> JoinHandle<reqwest::Response> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let cur = store.served().current();
        let poll = format!("{url}/v1/table?after={}&epoch={}&wait=30", cur.version, cur.epoch.as_deref().unwrap());
        let held = tokio::spawn(async move { reqwest::get(poll).await.unwrap() });
        while metrics.held_polls.get() == 0 && !held.is_finished() {
            assert!(Instant::now() < deadline, "timed out waiting for the poll held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !held.is_finished() {
            return held;
        }
    }
}

/// The cluster's table: one service, `r`, on its base cluster `c`.
fn publish_one_service(store: &KubeStore) {
    store
        .publish(
            serde_json::from_value(json!({"services": {"r": {"hosts": ["r"], "clusters": {"base": "c"}}}})).unwrap(),
            None,
        )
        .unwrap();
}

#[tokio::test]
async fn over_http_a_standby_refuses_every_table_derived_read_and_the_leader_answers() {
    let (store, metrics) = store();
    store.served().set_readiness(Readiness::Ready);
    let (url, _shutdown) = serve_http(store.clone(), metrics).await;
    publish_one_service(&store);
    let reads = table_reads("r");
    let standby = statuses(&url, &reads).await;
    assert!(all_not_leader(&standby), "a standby answered from stale state: {standby:?}");
    store.become_leader("1000-aa".into()).unwrap();
    let leader = statuses(&url, &reads).await;
    assert!(all_ok(&leader), "the leader refused: {leader:?}");
    store.step_down();
    let stepped_down = statuses(&url, &reads).await;
    assert!(all_not_leader(&stepped_down), "a replica that stepped down answered: {stepped_down:?}");
}

/// Propagation reports live in the leader's memory: a standby refuses to
/// take or answer them (`503 not_leader`), as for every read only the
/// leader holds; a new leader starts empty (lost on failover).
#[tokio::test]
async fn over_http_a_standby_refuses_reports_and_propagation_and_the_leader_takes_them() {
    let (store, metrics) = store();
    store.served().set_readiness(Readiness::Ready);
    let (url, _shutdown) = serve_http(store.clone(), metrics).await;
    let client = reqwest::Client::new();
    let report = json!({"workload": "b", "namespace": "demo", "sample": 8, "window_s": 10,
        "outbound": {"c": {"kept": 1, "changed": 0, "healed": 0, "dropped": 2, "untraced": 0}}});
    let post = |instance: &'static str| {
        let request = client.post(format!("{url}/v1/reports")).header("x-isogroup-poller", instance).json(&report);
        async move {
            let answer = request.send().await.unwrap();
            let status = answer.status().as_u16();
            (status, answer.json::<Value>().await.unwrap_or(Value::Null)["error"].clone())
        }
    };
    let get = || async {
        let answer = client.get(format!("{url}/v1/propagation")).send().await.unwrap();
        (answer.status().as_u16(), answer.json::<Value>().await.unwrap())
    };
    assert_eq!(post("envoy-1").await, (503, json!("not_leader")));
    let (status, body) = get().await;
    assert_eq!((status, &body["error"]), (503, &json!("not_leader")));
    publish_one_service(&store);
    store.become_leader("1000-aa".into()).unwrap();
    assert_eq!(post("envoy-1").await.0, 204, "the refused report did not take envoy-1's turn");
    let (status, body) = get().await;
    assert_eq!(status, 200);
    assert_eq!(body["edges"][0]["dropped"], 2);
    store.step_down();
    assert_eq!(post("envoy-2").await, (503, json!("not_leader")));
    assert_eq!(get().await.0, 503);
}

#[tokio::test]
async fn stepping_down_answers_a_held_poll_not_leader_at_once() {
    let (store, metrics) = store();
    store.served().set_readiness(Readiness::Ready);
    let (url, _shutdown) = serve_http(store.clone(), metrics.clone()).await;
    publish_one_service(&store);
    store.become_leader("1000-aa".into()).unwrap();
    let held = hold_poll(&url, &store, &metrics).await;
    store.step_down();
    let answer = held.await.unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.json::<Value>().await.unwrap()["error"], "not_leader");
}

#[tokio::test]
async fn a_leader_losing_its_lease_releases_held_polls_and_its_standby_refuses_reads() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&pods(), own_pod("companion-a"));
    fake.put_quietly(&pods(), own_pod("companion-b"));
    let replicas = [Replica::start(&fake, "companion-a"), Replica::start(&fake, "companion-b")];
    let leader = wait("a leader", || {
        let leading: Vec<usize> = (0..2).filter(|&i| replicas[i].store.is_leader()).collect();
        (leading.len() == 1).then(|| leading[0])
    })
    .await;
    let other = 1 - leader;
    wait("both ready", || replicas.iter().all(|r| r.store.served().readiness().is_ready()).then_some(())).await;
    wait("the leader's table", || {
        let cur = replicas[leader].store.served().current();
        (lanes(&cur.raw) == ["base", "feature-1"]).then_some(())
    })
    .await;
    let (leader_url, _a) = serve_http(replicas[leader].store.clone(), replicas[leader].metrics.clone()).await;
    let (standby_url, _b) = serve_http(replicas[other].store.clone(), replicas[other].metrics.clone()).await;
    let reads = table_reads("reviews.bookinfo");
    let standby = statuses(&standby_url, &reads).await;
    assert!(all_not_leader(&standby), "the standby answered from stale state: {standby:?}");
    let leading = statuses(&leader_url, &reads).await;
    assert!(all_ok(&leading), "the leader refused: {leading:?}");
    // A poll held on the leader, then renewing the Lease fails: it steps
    // down, and the poll is answered then, not when its wait ends.
    let held = hold_poll(&leader_url, &replicas[leader].store, &replicas[leader].metrics).await;
    fake.fail(&leases(), 500);
    let answer = held.await.unwrap();
    assert_eq!(answer.status(), 503);
    assert_eq!(answer.json::<Value>().await.unwrap()["error"], "not_leader");
    assert!(replicas[leader].store.not_serving().is_some());
    for r in &replicas {
        r.stop();
    }
}

fn runtime(sources: &str, rules: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "isogroup-runtime", "namespace": "isogroup-system" },
            "data": { "sources": sources, "rules": rules } })
}

#[tokio::test]
async fn sources_and_rules_come_from_the_runtime_configmap() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(
        &configmaps(),
        runtime(
            r#"[{"cidr": "192.0.2.7/32", "group": "feature-1", "expires_at": 1798761600}]"#,
            r#"[{"header": "x-user", "values": ["ana"], "group": "feature-1"}]"#,
        ),
    );
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics, opts(0)));
    wait_table(&store, "runtime data", |t| t.sources.len() == 1 && t.rules.len() == 1).await;
    let t = store.served().current().raw.clone();
    assert_eq!(t.sources[0].cidr, "192.0.2.7/32");
    assert_eq!(t.sources[0].expires_at, Some(1798761600));
    // a bad edit: named in the readiness detail, the last good data stays
    fake.put(&configmaps(), runtime(r#"[{"cidr": "192.0.2.7/24", "group": "feature-1"}]"#, "[]"));
    let detail = wait("the bad edit reported", || match store.served().readiness() {
        Readiness::Degraded(d) if d.contains("isogroup-runtime") => Some(d),
        _ => None,
    })
    .await;
    assert!(detail.contains("sources[0].cidr"), "{detail}");
    assert_eq!(store.served().current().raw.sources, t.sources, "the last good data stays");
    fake.put(&configmaps(), runtime(r#"[{"cidr": "192.0.2.0/24", "group": "team-a", "extra": 1}]"#, "[]"));
    let detail = wait("an unknown field reported", || match store.served().readiness() {
        Readiness::Degraded(d) if d.contains("extra") => Some(d),
        _ => None,
    })
    .await;
    assert!(detail.contains("sources[0]"), "{detail}");
    // fixed: used, and the warning is gone
    fake.put(&configmaps(), runtime(r#"[{"cidr": "192.0.2.0/24", "group": "team-a"}]"#, "[]"));
    wait_table(&store, "fixed runtime data", |t| {
        t.sources.len() == 1 && t.sources[0].group == "team-a" && t.rules.is_empty()
    })
    .await;
    wait("ready without a warning", || (store.served().readiness() == Readiness::Ready).then_some(())).await;
    // deleted: no runtime data
    fake.delete(&configmaps(), "isogroup-system", "isogroup-runtime");
    wait_table(&store, "runtime data gone", |t| t.sources.is_empty()).await;
}

/// What ConfigMap isogroup-runtime holds under `key` (parsed).
fn runtime_data(fake: &FakeApi, key: &str) -> Option<Value> {
    let cm = fake.get(&configmaps(), "isogroup-system", "isogroup-runtime")?;
    serde_json::from_str(cm["data"][key].as_str()?).ok()
}

#[tokio::test]
async fn the_leader_writes_sources_and_rules_into_the_runtime_configmap() {
    let fake = bookinfo("v1").await;
    let metrics = Arc::new(Metrics::new());
    let served = Served::new("base".into(), Limits::default(), metrics.clone()).unwrap();
    let store =
        Arc::new(KubeStore::new(served).with_runtime_writes(fake.client(), "isogroup-system", "isogroup-runtime"));
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics, opts(0)));
    let bind = |cidr: &str, expires_at: Option<u64>| Change::BindSource {
        cidr: cidr.into(),
        group: "feature-1".into(),
        expires_at,
    };

    // a standby takes no write
    wait("ready", || store.served().readiness().is_ready().then_some(())).await;
    assert!(matches!(store.apply(bind("192.0.2.7/32", None)).await, Err(ChangeError::NotLeader(_))), "a standby wrote");
    assert!(fake.get(&configmaps(), "isogroup-system", "isogroup-runtime").is_none());

    // the leader creates the ConfigMap; the answer serves the binding
    store.become_leader("1000-aa".into()).unwrap();
    let snap = store.apply(bind("192.0.2.7/32", None)).await.unwrap();
    assert_eq!(snap.raw.sources.len(), 1);
    assert_eq!(runtime_data(&fake, "sources").unwrap(), json!([{"cidr": "192.0.2.7/32", "group": "feature-1"}]));
    // registrations stay pod labels
    let register = Change::Register { service: "reviews.bookinfo".into(), group: "f2".into(), cluster: "c".into() };
    assert!(matches!(store.apply(register).await, Err(ChangeError::ManagedByKubernetes)));

    // a hand edit in between (rules) is kept by the next write
    let cm = fake.get(&configmaps(), "isogroup-system", "isogroup-runtime").unwrap();
    let mut edited = cm.clone();
    edited["data"]["rules"] = json!(r#"[{"header": "x-user", "values": ["ana"], "group": "feature-1"}]"#);
    fake.put(&configmaps(), edited);
    wait_table(&store, "the hand edit", |t| t.rules.len() == 1).await;
    let snap = store.apply(bind("198.51.100.0/24", Some(1))).await.unwrap();
    assert_eq!((snap.raw.sources.len(), snap.raw.rules.len()), (2, 1));
    assert_eq!(runtime_data(&fake, "rules").unwrap()[0]["header"], "x-user");

    // another writer wins the race to the next replace: the write re-reads,
    // retries, and both changes stay
    let mut theirs = fake.get(&configmaps(), "isogroup-system", "isogroup-runtime").unwrap();
    theirs["data"]["rules"] = json!("[]");
    fake.race_next_replace(&configmaps(), theirs);
    let snap = store.apply(bind("203.0.113.9/32", None)).await.unwrap();
    assert_eq!((snap.raw.sources.len(), snap.raw.rules.len()), (3, 0), "their rules edit and our binding");
    assert_eq!(runtime_data(&fake, "sources").unwrap().as_array().unwrap().len(), 3);
    store.apply(Change::UnbindSource { cidr: "203.0.113.9/32".into() }).await.unwrap();

    // a refused write (nothing bound there) writes nothing
    let before = fake.get(&configmaps(), "isogroup-system", "isogroup-runtime").unwrap();
    let bad = Change::UnbindSource { cidr: "203.0.113.0/24".into() };
    assert!(matches!(store.apply(bad).await, Err(ChangeError::NotBound { .. })));
    assert_eq!(fake.get(&configmaps(), "isogroup-system", "isogroup-runtime").unwrap(), before);

    // expiry is a guarded write: the expired binding goes, the other stays;
    // again, nothing changes
    let snap = store.apply(Change::ExpireSources { now: 10 }).await.unwrap();
    assert_eq!(snap.raw.sources.iter().map(|s| s.cidr.as_str()).collect::<Vec<_>>(), ["192.0.2.7/32"]);
    assert_eq!(runtime_data(&fake, "sources").unwrap().as_array().unwrap().len(), 1);
    let again = store.apply(Change::ExpireSources { now: 10 }).await.unwrap();
    assert_eq!(again.version, snap.version, "nothing expired: no write, no new version");

    // a stepped-down leader refuses
    store.step_down();
    assert!(matches!(
        store.apply(Change::UnbindSource { cidr: "192.0.2.7/32".into() }).await,
        Err(ChangeError::NotLeader(_))
    ));
}

fn service_named(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": "bookinfo" },
            "spec": { "ports": [{ "port": 9080 }, { "port": 9443 }] } })
}

fn subsets_of(fake: &FakeApi, name: &str) -> Option<Vec<String>> {
    let dr = fake.get(&rules("v1"), "bookinfo", name)?;
    Some(dr["spec"]["subsets"].as_array()?.iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect())
}

#[tokio::test]
async fn istio_objects_follow_the_lanes_and_others_objects_are_left_alone() {
    let fake = istio_fake().await;
    fake.put_quietly(&services(), service_named("reviews"));
    fake.put_quietly(&pods(), pod("r0", "base"));
    fake.put_quietly(&pods(), pod("f1", "feature-1"));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true)]));
    // ratings has a DestinationRule someone else made
    fake.put_quietly(&services(), service_named("ratings"));
    fake.put_quietly(&pods(), pod("t0", "base"));
    fake.put_quietly(&slices(), endpoint_slice("ratings", &[("t0", true)]));
    let mut theirs = rule("v1", &["v1"]);
    theirs["metadata"]["name"] = json!("ratings");
    theirs["spec"]["host"] = json!("ratings");
    fake.put_quietly(&rules("v1"), theirs);
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    let mut o = opts(200);
    o.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));

    // the subsets and the route are made, by server-side apply, then the lane settles
    wait("reviews' subsets", || (subsets_of(&fake, "isogroup-reviews")? == ["base", "feature-1"]).then_some(())).await;
    assert_eq!(fake.manager(&rules("v1"), "bookinfo", "isogroup-reviews").as_deref(), Some("isogroup/isogroup-system"));
    let dr = fake.get(&rules("v1"), "bookinfo", "isogroup-reviews").unwrap();
    assert_eq!(dr["metadata"]["labels"]["app.kubernetes.io/managed-by"], "isogroup");
    assert_eq!(dr["metadata"]["labels"]["isogroup.io/installation"], "isogroup-system");
    let vs = wait("reviews' route", || fake.get(&virtualservices(), "bookinfo", "isogroup-reviews")).await;
    assert_eq!(vs["spec"]["http"][0]["match"][0]["headers"]["x-isogroup-target"]["exact"], "feature-1");
    assert_eq!(vs["spec"]["http"][1]["route"][0]["destination"]["subset"], "base");
    wait_table(&store, "the lane, once its objects exist", |t| lanes(t) == ["base", "feature-1"]).await;
    // ratings: someone else's DestinationRule for its host is left alone, and said so
    assert!(fake.get(&rules("v1"), "bookinfo", "isogroup-ratings").is_none());
    assert!(fake.get(&rules("v1"), "bookinfo", "ratings").is_some());
    wait("the conflict counted", || (metrics.kube_istio_conflicts.get() == 1).then_some(())).await;
    match store.served().readiness() {
        Readiness::Degraded(d) => assert!(d.contains("istio conflict: DestinationRule bookinfo/ratings"), "{d}"),
        other => panic!("ready with the conflict in the detail, got {other:?}"),
    }
    assert!(!store.served().current().raw.services.contains_key("ratings.bookinfo"), "no base subset of ours: out");
    // a new lane's subset exists before its pods are ready (so it can settle)
    fake.put(&pods(), pod("a1", "team-a"));
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true), ("a1", false)]));
    wait("team-a's subset", || {
        (subsets_of(&fake, "isogroup-reviews")? == ["base", "feature-1", "team-a"]).then_some(())
    })
    .await;
    assert_eq!(lanes(&store.served().current().raw), ["base", "feature-1"], "not ready: not in the table");
    // a lane gone: its subset and route go too, after it left the table
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true)]));
    wait("feature-1's subset gone", || (subsets_of(&fake, "isogroup-reviews")? == ["base"]).then_some(())).await;
    assert_eq!(lanes(&store.served().current().raw), ["base"]);
    wait("only the base route left", || {
        let vs = fake.get(&virtualservices(), "bookinfo", "isogroup-reviews")?;
        (vs["spec"]["http"].as_array()?.len() == 1).then_some(())
    })
    .await;
    // the service gone: what isogroup made is deleted, the others' object stays
    fake.delete(&services(), "bookinfo", "reviews");
    wait("reviews' objects deleted", || fake.get(&rules("v1"), "bookinfo", "isogroup-reviews").is_none().then_some(()))
        .await;
    wait("its route deleted", || fake.get(&virtualservices(), "bookinfo", "isogroup-reviews").is_none().then_some(()))
        .await;
    assert!(fake.get(&rules("v1"), "bookinfo", "ratings").is_some());
}

#[tokio::test]
async fn an_apply_conflict_is_reported_not_forced() {
    // an object under isogroup's name and label, but made by another manager
    let fake = istio_fake().await;
    fake.put_quietly(&services(), service_named("reviews"));
    fake.put_quietly(&pods(), pod("r0", "base"));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true)]));
    let mut copied = rule("v1", &["base"]);
    copied["metadata"]["name"] = json!("isogroup-reviews");
    copied["metadata"]["labels"] = json!({ "app.kubernetes.io/managed-by": "isogroup" });
    copied["spec"]["host"] = json!("elsewhere.example.com");
    fake.put_quietly(&rules("v1"), copied.clone());
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    let mut o = opts(0);
    o.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
    wait("the apply conflict counted", || (metrics.kube_istio_conflicts.get() == 1).then_some(())).await;
    let kept = fake.get(&rules("v1"), "bookinfo", "isogroup-reviews").unwrap();
    assert_eq!(kept["spec"]["host"], "elsewhere.example.com", "not overwritten");
    assert_eq!(fake.manager(&rules("v1"), "bookinfo", "isogroup-reviews"), None);
}

/// The Events in `default`, as (regarding name, note).
fn events_listed(fake: &FakeApi) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = fake
        .list_in(&events(), crate::kube::events::NAMESPACE)
        .iter()
        .map(|e| (e["regarding"]["name"].as_str().unwrap().to_owned(), e["note"].as_str().unwrap().to_owned()))
        .collect();
    all.sort();
    all
}

/// A replica's event writer, leading from the start.
fn event_writer(fake: &FakeApi, store: &Arc<KubeStore>, pod: &str) -> JoinHandle<()> {
    let recheck = Duration::from_millis(50);
    let id = opts(0).installation;
    tokio::spawn(crate::kube::events::run(fake.client(), store.clone(), id, pod.into(), recheck, opts(0).watch))
}

#[tokio::test]
async fn an_invalid_isolation_group_gets_one_event_per_occurrence() {
    let fake = bookinfo("v1").await;
    fake.install(&events());
    fake.put_quietly(&groups(), group("broken", json!({ "mode": "strict", "fallback": ["base"] })));
    fake.put_quietly(&groups(), group("fine", json!({ "description": "ok" })));
    let (a, metrics) = store();
    a.become_leader("1000-aa".into()).unwrap();
    let a_tasks = [
        tokio::spawn(crate::kube::source::run(fake.client(), a.clone(), metrics.clone(), opts(0))),
        event_writer(&fake, &a, "companion-a"),
    ];
    let event = wait("broken's Event", || fake.list_in(&events(), "default").into_iter().next()).await;
    let uid = fake.get(&groups(), "", "broken").unwrap()["metadata"]["uid"].clone();
    assert_eq!(
        event["regarding"],
        json!({ "apiVersion": "isogroup.io/v1alpha1", "kind": "IsolationGroup", "name": "broken", "uid": uid })
    );
    assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some("Warning"), Some("Invalid")));
    assert!(event["note"].as_str().unwrap().starts_with("spec.fallback: a strict group cannot have a fallback"));
    assert_eq!(
        (event["reportingController"].as_str(), event["reportingInstance"].as_str()),
        (Some("isogroup.io/companion"), Some("companion-a"))
    );
    // Not repeated: rebuilds (every 50 ms) and rechecks (every 50 ms) go by
    // until another object's Event is written, and broken's is still one.
    fake.put(&groups(), group("fine", json!({ "mode": "loose" })));
    wait("fine's Event", || (events_listed(&fake).len() == 2).then_some(())).await;
    assert_eq!(fake.creates(&events()), 2, "one create per occurrence");
    assert!(events_listed(&fake)[1].1.starts_with("spec.mode: \"loose\""), "{:?}", events_listed(&fake));

    // A new leader meets the same occurrences: AlreadyExists, nothing new.
    a.step_down();
    let (b, metrics_b) = store();
    b.become_leader("2000-bb".into()).unwrap();
    tokio::spawn(crate::kube::source::run(fake.client(), b.clone(), metrics_b, opts(0)));
    event_writer(&fake, &b, "companion-b");
    wait("the new leader's attempts", || (fake.creates(&events()) == 4).then_some(())).await;
    assert_eq!(events_listed(&fake).len(), 2);
    // A new spec, still invalid: a new occurrence, a new Event; a fixed one: none.
    fake.put(&groups(), group("broken", json!({ "owner": "x".repeat(300) })));
    fake.put(&groups(), group("fine", json!({ "mode": "strict" })));
    wait("broken's second Event", || (events_listed(&fake).len() == 3).then_some(())).await;
    let listed = events_listed(&fake);
    assert!(
        listed.iter().any(|(name, note)| name == "broken" && note.starts_with("spec.owner: 300 bytes")),
        "{listed:?}"
    );
    let fixed = wait("fine accepted", || {
        let o = fake.get(&groups(), "", "fine")?;
        (entry(&o)["conditions"][0]["status"] == "True").then_some(o)
    })
    .await;
    assert_eq!(entry(&fixed)["observedGeneration"], 3);
    assert_eq!(events_listed(&fake).len(), 3, "a fixed object gets no Event");
    for t in a_tasks {
        t.abort();
    }
}

#[tokio::test]
async fn the_fake_refuses_an_event_about_a_cluster_scoped_object_outside_default() {
    use k8s_openapi::api::events::v1::Event;
    let fake = FakeApi::start(&[events()]).await;
    let broken = crate::kube::events::WatchedGroup {
        name: "broken".into(),
        uid: "u1".into(),
        generation: 1,
        status: json!({ "observedGeneration": 1, "conditions": [{ "type": "Accepted", "status": "False", "message": "m" }] }),
    };
    let mut event = crate::kube::events::event_for(&broken, "companion-a", "2026-01-01T00:00:00.000000Z").unwrap();
    let ok: Event = serde_json::from_value(event.clone()).unwrap();
    kube::Api::<Event>::namespaced(fake.client(), "default").create(&Default::default(), &ok).await.unwrap();
    event["metadata"]["namespace"] = json!("isogroup-system");
    let elsewhere: Event = serde_json::from_value(event).unwrap();
    let refused = kube::Api::<Event>::namespaced(fake.client(), "isogroup-system")
        .create(&Default::default(), &elsewhere)
        .await
        .unwrap_err();
    match refused {
        kube::Error::Api(e) => assert!(e.code == 422 && e.message.contains("involvedObject.namespace"), "{e:?}"),
        other => panic!("{other:?}"),
    }
}

/// A fake API server with every resource the Istio rendering reads and writes.
async fn istio_fake() -> FakeApi {
    FakeApi::start(&[
        pods(),
        services(),
        slices(),
        rules("v1"),
        virtualservices(),
        envoy_filters(),
        groups(),
        leases(),
        configmaps(),
    ])
    .await
}

/// The labels of an object the default installation (`isogroup-system`) owns.
static OWNED: std::sync::LazyLock<Value> = std::sync::LazyLock::new(
    || json!({ "app.kubernetes.io/managed-by": "isogroup", "isogroup.io/installation": "isogroup-system" }),
);

fn envoyfilter(name: &str, labels: Value) -> Value {
    json!({ "apiVersion": "networking.istio.io/v1alpha3", "kind": "EnvoyFilter",
            "metadata": { "name": name, "namespace": "istio-system", "labels": labels }, "spec": { "configPatches": [] } })
}

#[tokio::test]
async fn cluster_header_mode_keeps_an_envoy_filter_per_service_in_the_root_namespace() {
    let fake = istio_fake().await;
    fake.put_quietly(&services(), service_named("reviews"));
    fake.put_quietly(&pods(), pod("r0", "base"));
    fake.put_quietly(&pods(), pod("f1", "feature-1"));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true)]));
    fake.put_quietly(&envoy_filters(), envoyfilter("theirs", json!({ "app": "mine" })));
    let (store, metrics) = store();
    let mut o = opts(200);
    o.istio = Some((crate::kube::istio::Mode::ClusterHeader, "istio-system".into()));
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
    // A standby, ready; meanwhile the leader makes an EnvoyFilter for a
    // service that then goes, and dies: elected, this replica finds it.
    wait("the standby ready", || store.served().readiness().is_ready().then_some(())).await;
    let ghost = envoyfilter("isogroup-ghost-bookinfo", OWNED.clone());
    fake.put(&envoy_filters(), ghost);
    store.become_leader("1000-aa".into()).unwrap();

    // Server-side applied in the root namespace, where istiod patches every
    // client proxy: a cluster_header route first in each port's virtual host.
    let name = &crate::kube::istio::envoy_filter_name("bookinfo", "reviews");
    let ef = wait("reviews' EnvoyFilter", || fake.get(&envoy_filters(), "istio-system", name)).await;
    assert_eq!(fake.manager(&envoy_filters(), "istio-system", name).as_deref(), Some("isogroup/isogroup-system"));
    assert_eq!(ef["metadata"]["labels"]["app.kubernetes.io/managed-by"], "isogroup");
    let patches = ef["spec"]["configPatches"].as_array().unwrap();
    let vhosts: Vec<&str> =
        patches.iter().map(|p| p["match"]["routeConfiguration"]["vhost"]["name"].as_str().unwrap()).collect();
    assert_eq!(vhosts, ["reviews.bookinfo.svc.cluster.local:9080", "reviews.bookinfo.svc.cluster.local:9443"]);
    for p in patches {
        assert_eq!(
            (p["applyTo"].as_str(), p["match"]["context"].as_str()),
            (Some("HTTP_ROUTE"), Some("SIDECAR_OUTBOUND"))
        );
        assert_eq!(p["patch"]["operation"], "INSERT_FIRST");
        let route = &p["patch"]["value"];
        assert_eq!(route["match"]["headers"], json!([{ "name": "x-isogroup-cluster", "present_match": true }]));
        assert_eq!(route["route"]["cluster_header"], "x-isogroup-cluster");
        assert_eq!(route["route"]["timeout"], "0s", "Istio's own route defaults, written out");
    }
    // The VirtualService keeps only the base route; the subsets follow the lanes.
    let vs = wait("reviews' VirtualService", || fake.get(&virtualservices(), "bookinfo", "isogroup-reviews")).await;
    assert_eq!(
        vs["spec"]["http"],
        json!([{ "name": "base", "route": [{ "destination": { "host": "reviews.bookinfo.svc.cluster.local", "subset": "base" } }] }])
    );
    wait("reviews' subsets", || (subsets_of(&fake, "isogroup-reviews")? == ["base", "feature-1"]).then_some(())).await;
    wait_table(&store, "the lane (no route to wait for in this mode)", |t| lanes(t) == ["base", "feature-1"]).await;
    // The former leader's filter is found and deleted; someone else's stays.
    wait("the stale EnvoyFilter deleted", || {
        fake.get(&envoy_filters(), "istio-system", "isogroup-ghost-bookinfo").is_none().then_some(())
    })
    .await;
    // The lane gone: its subset goes; the service's filter stays (it is
    // there before any lane settles, so a new lane never waits for it).
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true)]));
    wait("feature-1's subset gone", || (subsets_of(&fake, "isogroup-reviews")? == ["base"]).then_some(())).await;
    assert_eq!(lanes(&store.served().current().raw), ["base"]);
    assert!(fake.get(&envoy_filters(), "istio-system", name).is_some());
    // The service gone: its EnvoyFilter goes with its other objects.
    fake.delete(&services(), "bookinfo", "reviews");
    wait("reviews' EnvoyFilter deleted", || fake.get(&envoy_filters(), "istio-system", name).is_none().then_some(()))
        .await;
    wait("reviews' DestinationRule deleted", || {
        fake.get(&rules("v1"), "bookinfo", "isogroup-reviews").is_none().then_some(())
    })
    .await;
    wait("reviews' VirtualService deleted", || {
        fake.get(&virtualservices(), "bookinfo", "isogroup-reviews").is_none().then_some(())
    })
    .await;
    assert!(fake.get(&envoy_filters(), "istio-system", "theirs").is_some(), "someone else's EnvoyFilter stays");
    assert_eq!(metrics.kube_istio_conflicts.get(), 0);
    // Every request it made is granted by the shipped RBAC for this mode.
    let overlay = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/companion/kubernetes-cluster-header");
    let objects = crate::kube::fake::kustomize(&overlay);
    let denied = fake.denied(&crate::kube::fake::companion_rbac(&objects));
    assert!(denied.is_empty(), "not granted by deploy/kubernetes/companion/kubernetes-cluster-header: {denied:#?}");
}

/// reviews in bookinfo with a base pod and a ready feature-1 pod.
fn reviews_with_a_lane(fake: &FakeApi) {
    fake.put_quietly(&services(), service_named("reviews"));
    fake.put_quietly(&pods(), pod("r0", "base"));
    fake.put_quietly(&pods(), pod("f1", "feature-1"));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true)]));
}

/// A kube client's API for an Istio kind (what `kubectl` would talk to).
fn istio_api(fake: &FakeApi, kind: &str, namespace: &str) -> kube::Api<kube::api::DynamicObject> {
    let version = if kind == "EnvoyFilter" { "v1alpha3" } else { "v1" };
    let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", version, kind);
    kube::Api::namespaced_with(fake.client(), namespace, &kube::api::ApiResource::from_gvk(&gvk))
}

fn rv(o: &Value) -> u64 {
    o["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn deleted_or_edited_owned_objects_come_back_and_a_steady_state_makes_no_writes() {
    let fake = istio_fake().await;
    reviews_with_a_lane(&fake);
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    let mut o = opts(0);
    o.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    o.resync = Duration::from_millis(300);
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
    let name = "isogroup-reviews";
    let vs_routes = |fake: &FakeApi| {
        let vs = fake.get(&virtualservices(), "bookinfo", name)?;
        Some(vs["spec"]["http"].as_array()?.len())
    };
    wait("the route to feature-1", || (vs_routes(&fake)? == 2).then_some(())).await;
    wait_table(&store, "the lane", |t| lanes(t) == ["base", "feature-1"]).await;
    let dr = fake.get(&rules("v1"), "bookinfo", name).unwrap();
    let vs = fake.get(&virtualservices(), "bookinfo", name).unwrap();
    assert!(rv(&dr) < rv(&vs), "the subsets were applied before the route naming them");

    // Steady state: five resyncs, not one write.
    let (writes, resyncs) = (metrics.kube_istio_writes.get(), metrics.kube_istio_resyncs.get());
    wait("five resyncs", || (metrics.kube_istio_resyncs.get() >= resyncs + 5).then_some(())).await;
    assert_eq!(metrics.kube_istio_writes.get(), writes, "no write in a steady state");
    assert_eq!(rv(&fake.get(&rules("v1"), "bookinfo", name).unwrap()), rv(&dr));
    assert_eq!(rv(&fake.get(&virtualservices(), "bookinfo", name).unwrap()), rv(&vs));

    // `kubectl delete` of each owned object: back, as wanted.
    let dp = kube::api::DeleteParams::default();
    for kind in ["DestinationRule", "VirtualService"] {
        let started = Instant::now();
        istio_api(&fake, kind, "bookinfo").delete(name, &dp).await.unwrap();
        let r = if kind == "DestinationRule" { rules("v1") } else { virtualservices() };
        let back = wait("the deleted object back", || {
            let o = fake.get(&r, "bookinfo", name)?;
            (o["metadata"]["uid"] != dr["metadata"]["uid"] && o["metadata"]["uid"] != vs["metadata"]["uid"])
                .then_some(o)
        })
        .await;
        let was = if kind == "DestinationRule" { &dr } else { &vs };
        assert_eq!(back["spec"], was["spec"], "{kind} back as wanted");
        eprintln!("{kind} deleted and back in {:?}", started.elapsed());
    }
    // An edit of a field the leader sets: reverted.
    let mut edit = fake.get(&rules("v1"), "bookinfo", name).unwrap();
    edit["spec"]["subsets"][1]["labels"]["isogroup.io/group"] = json!("someone-else");
    let edited = fake.put(&rules("v1"), edit);
    let reverted = wait("the edit reverted", || {
        let o = fake.get(&rules("v1"), "bookinfo", name)?;
        (rv(&o) > rv(&edited)).then_some(o)
    })
    .await;
    assert_eq!(reverted["spec"]["subsets"], dr["spec"]["subsets"]);
    assert_eq!(fake.manager(&rules("v1"), "bookinfo", name).as_deref(), Some("isogroup/isogroup-system"));

    // The lane leaves: the route goes first, its subset after.
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true)]));
    wait("the route gone", || (vs_routes(&fake)? == 1).then_some(())).await;
    wait("the subset gone", || (subsets_of(&fake, name)? == ["base"]).then_some(())).await;
    let dr = fake.get(&rules("v1"), "bookinfo", name).unwrap();
    let vs = fake.get(&virtualservices(), "bookinfo", name).unwrap();
    assert!(rv(&vs) < rv(&dr), "the route left before its subset");
}

/// `kubectl edit` of an owned DestinationRule (a merge patch by field
/// manager `kubectl-edit`) that changes its subsets, which the leader sets,
/// and adds `exportTo`, which it does not: the subsets are put back and an
/// Event names `kubectl-edit` (from managedFields); `exportTo` is kept and
/// reported once; then no more writes.
#[tokio::test]
async fn an_edit_by_another_manager_is_reverted_and_named_and_its_own_field_kept() {
    let fake = istio_fake().await;
    fake.install(&events());
    reviews_with_a_lane(&fake);
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    let mut o = opts(0);
    o.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    o.resync = Duration::from_millis(300);
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
    let name = "isogroup-reviews";
    wait_table(&store, "the lane", |t| lanes(t) == ["base", "feature-1"]).await;
    wait("the lane on record", || {
        let shard = fake.get(&configmaps(), "isogroup-system", "isogroup-state-0")?;
        shard["data"]["since"].as_str()?.contains("reviews.bookinfo/feature-1").then_some(())
    })
    .await;
    let dr = fake.get(&rules("v1"), "bookinfo", name).unwrap();
    let mut subsets = dr["spec"]["subsets"].clone();
    subsets[1]["labels"]["isogroup.io/group"] = json!("someone-else");
    let patch = json!({ "spec": { "subsets": subsets, "exportTo": ["."] } });
    let params = kube::api::PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() };
    let edited: Value = serde_json::to_value(
        istio_api(&fake, "DestinationRule", "bookinfo")
            .patch(name, &params, &kube::api::Patch::Merge(&patch))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(edited["spec"]["subsets"][1]["labels"]["isogroup.io/group"], "someone-else");
    let reverted = wait("the subsets put back", || {
        let o = fake.get(&rules("v1"), "bookinfo", name)?;
        (o["spec"]["subsets"] == dr["spec"]["subsets"]).then_some(o)
    })
    .await;
    assert_eq!(reverted["spec"]["exportTo"], json!(["."]), "the field the leader does not set is kept");
    let versions = fake.history(&rules("v1"), "bookinfo", name);
    let at = |o: &Value| {
        versions.iter().position(|(_, _, v)| v["metadata"]["resourceVersion"] == o["metadata"]["resourceVersion"])
    };
    assert_eq!(at(&edited).unwrap() + 1, at(&reverted).unwrap(), "the next version after the edit is the revert");
    let listed = |reason: &str| -> Vec<Value> {
        fake.list_in(&events(), "bookinfo").into_iter().filter(|e| e["reason"] == reason).collect()
    };
    let edit = wait("the Event naming the editor", || listed("EditReverted").into_iter().next()).await;
    let note = edit["note"].as_str().unwrap();
    assert!(note.contains("spec.subsets changed by kubectl-edit"), "{note}");
    assert_eq!(edit["regarding"]["name"], name);
    assert_eq!(edit["regarding"]["uid"], dr["metadata"]["uid"]);
    let kept = wait("the kept field reported", || listed("FieldsKept").into_iter().next()).await;
    let note = kept["note"].as_str().unwrap();
    assert!(note.starts_with("spec.exportTo set by kubectl-edit: kept"), "{note}");
    // Flat from here: passes go by with no write, no other Event.
    let log = fake.writes().len();
    let resyncs = metrics.kube_istio_resyncs.get();
    wait("five passes", || (metrics.kube_istio_resyncs.get() >= resyncs + 5).then_some(())).await;
    let after: Vec<_> = fake.writes().into_iter().skip(log).collect();
    assert!(after.is_empty(), "writes in a steady state: {after:#?}");
    assert_eq!((listed("EditReverted").len(), listed("FieldsKept").len()), (1, 1));
    assert_eq!(fake.creates(&events()), 2, "each reported once");
}

#[tokio::test]
async fn a_failed_write_is_retried_without_another_change() {
    let fake = istio_fake().await;
    reviews_with_a_lane(&fake);
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    let mut o = opts(0);
    o.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    o.resync = Duration::from_secs(600); // not what puts it back
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
    let name = "isogroup-reviews";
    wait_table(&store, "the lane", |t| lanes(t) == ["base", "feature-1"]).await;
    // Writes fail (the open watch goes on); the rule is deleted under it.
    fake.fail(&rules("v1"), 500);
    fake.delete(&rules("v1"), "bookinfo", name);
    // (no base subset either: the service leaves the table, Envoy's own route)
    wait_table(&store, "the service out with its subsets", |t| lanes(t).is_empty()).await;
    fake.fail(&rules("v1"), 0);
    wait("the rule back", || (subsets_of(&fake, name)? == ["base", "feature-1"]).then_some(())).await;
    wait_table(&store, "the lane back", |t| lanes(t) == ["base", "feature-1"]).await;
}

#[tokio::test]
async fn cluster_header_mode_admits_a_lane_only_once_its_envoy_filter_is_observed() {
    let fake = istio_fake().await;
    reviews_with_a_lane(&fake);
    let (store, metrics) = store();
    let mut o = opts(0);
    o.istio = Some((crate::kube::istio::Mode::ClusterHeader, "istio-system".into()));
    o.resync = Duration::from_millis(200);
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
    wait("ready (every watch listed)", || store.served().readiness().is_ready().then_some(())).await;
    // EnvoyFilter writes are refused (its watch is open already).
    fake.fail(&envoy_filters(), 403);
    store.become_leader("1000-aa".into()).unwrap();
    wait("the subsets", || (subsets_of(&fake, "isogroup-reviews")? == ["base", "feature-1"]).then_some(())).await;
    let resyncs = metrics.kube_istio_resyncs.get();
    wait("passes go by", || (metrics.kube_istio_resyncs.get() >= resyncs + 3).then_some(())).await;
    wait_table(&store, "reviews, base only", |t| lanes(t) == ["base"]).await;
    fake.fail(&envoy_filters(), 0);
    let name = crate::kube::istio::envoy_filter_name("bookinfo", "reviews");
    wait("the EnvoyFilter", || fake.get(&envoy_filters(), "istio-system", &name)).await;
    wait_table(&store, "the lane, its EnvoyFilter observed", |t| lanes(t) == ["base", "feature-1"]).await;
    // `kubectl delete` of the EnvoyFilter: back, as wanted
    let was = fake.get(&envoy_filters(), "istio-system", &name).unwrap();
    let started = Instant::now();
    istio_api(&fake, "EnvoyFilter", "istio-system").delete(&name, &Default::default()).await.unwrap();
    let back = wait("the EnvoyFilter back", || {
        let o = fake.get(&envoy_filters(), "istio-system", &name)?;
        (o["metadata"]["uid"] != was["metadata"]["uid"]).then_some(o)
    })
    .await;
    eprintln!("EnvoyFilter deleted and back in {:?}", started.elapsed());
    assert_eq!(back["spec"], was["spec"]);
    wait_table(&store, "the lane again", |t| lanes(t) == ["base", "feature-1"]).await;
}

#[tokio::test]
async fn two_installations_in_one_cluster_do_not_touch_each_others_objects() {
    let fake = istio_fake().await;
    reviews_with_a_lane(&fake);
    // Installation b's objects for a service it alone knows of (and one
    // that names a service of a's), made before a starts.
    let b_labels = json!({ "app.kubernetes.io/managed-by": "isogroup", "isogroup.io/installation": "b" });
    let mut b_rule = rule("v1", &["base"]);
    b_rule["metadata"]["name"] = json!("isogroup-details");
    b_rule["metadata"]["labels"] = b_labels.clone();
    b_rule["spec"]["host"] = json!("details.bookinfo.svc.cluster.local");
    fake.put_quietly(&rules("v1"), b_rule);
    let b_filter = envoyfilter(&crate::kube::istio::envoy_filter_name("bookinfo", "details"), b_labels);
    fake.put_quietly(&envoy_filters(), b_filter);
    let untouched = |fake: &FakeApi| {
        let dr = fake.get(&rules("v1"), "bookinfo", "isogroup-details").unwrap();
        let ef = fake.list_in(&envoy_filters(), "istio-system");
        let ef = ef.iter().find(|o| o["metadata"]["labels"]["isogroup.io/installation"] == "b").unwrap().clone();
        (rv(&dr), rv(&ef))
    };
    let before = untouched(&fake);

    let start = |id: &str| {
        let (store, metrics) = store();
        store.become_leader(format!("1000-{id}")).unwrap();
        let mut o = opts(0);
        o.istio = Some((crate::kube::istio::Mode::ClusterHeader, "istio-system".into()));
        o.installation = id.into();
        o.resync = Duration::from_millis(200);
        tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
        (store, metrics)
    };
    let (a, a_metrics) = start("a");
    wait_table(&a, "a's lane", |t| lanes(t) == ["base", "feature-1"]).await;
    let dr = fake.get(&rules("v1"), "bookinfo", "isogroup-reviews").unwrap();
    assert_eq!(dr["metadata"]["labels"]["isogroup.io/installation"], "a");
    assert_eq!(fake.manager(&rules("v1"), "bookinfo", "isogroup-reviews").as_deref(), Some("isogroup/a"));
    let resyncs = a_metrics.kube_istio_resyncs.get();
    wait("a's passes", || (a_metrics.kube_istio_resyncs.get() >= resyncs + 3).then_some(())).await;
    assert_eq!(untouched(&fake), before, "a leaves b's objects alone");

    // b starts too: a's objects for reviews are another's to it (a
    // conflict, left alone); its own leftovers it deletes.
    let (b, b_metrics) = start("b");
    wait("b's conflict", || (b_metrics.kube_istio_conflicts.get() >= 1).then_some(())).await;
    wait("b deletes its own leftover", || {
        fake.get(&rules("v1"), "bookinfo", "isogroup-details").is_none().then_some(())
    })
    .await;
    let resyncs = b_metrics.kube_istio_resyncs.get();
    wait("b's passes", || (b_metrics.kube_istio_resyncs.get() >= resyncs + 3).then_some(())).await;
    let now = fake.get(&rules("v1"), "bookinfo", "isogroup-reviews").unwrap();
    assert_eq!(rv(&now), rv(&dr), "b never wrote a's DestinationRule");
    assert_eq!(fake.manager(&rules("v1"), "bookinfo", "isogroup-reviews").as_deref(), Some("isogroup/a"));
    let name = crate::kube::istio::envoy_filter_name("bookinfo", "reviews");
    let ef = fake.get(&envoy_filters(), "istio-system", &name).unwrap();
    assert_eq!(ef["metadata"]["labels"]["isogroup.io/installation"], "a");
    match b.served().readiness() {
        Readiness::Degraded(d) => assert!(d.contains("not owned by this installation"), "{d}"),
        other => panic!("b: degraded with the conflict, got {other:?}"),
    }
}

/// Installations `a` and `b` in one cluster: each writes only its own entry
/// of an IsolationGroup's status (`status.installations.<id>`), under its
/// own field manager; the other's entry stays as its installation left it.
#[tokio::test]
async fn two_installations_each_keep_their_own_status_entry() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&groups(), group("broken", json!({ "mode": "strict", "fallback": ["base"] })));
    let start = |id: &str| {
        let (store, metrics) = store();
        store.become_leader(format!("1000-{id}")).unwrap();
        let mut o = opts(0);
        o.installation = id.into();
        tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics, o));
        store
    };
    let (a, b) = (start("a"), start("b"));
    let entry_of = |id: &str| fake.get(&groups(), "", "broken").unwrap()["status"]["installations"][id].clone();
    let accepted = |e: &Value| (e["conditions"][0]["status"].clone(), e["observedGeneration"].clone());
    wait("both entries", || {
        let both = [entry_of("a"), entry_of("b")];
        both.iter().all(|e| accepted(e) == (json!("False"), json!(1))).then_some(())
    })
    .await;
    // b no longer leads; the object is fixed: a's entry follows, b's stays.
    b.step_down();
    let b_was = entry_of("b");
    let mut fixed = fake.get(&groups(), "", "broken").unwrap();
    fixed["spec"] = json!({ "mode": "strict" });
    fake.put(&groups(), fixed);
    wait("a's entry for generation 2", || (accepted(&entry_of("a")) == (json!("True"), json!(2))).then_some(())).await;
    assert_eq!(entry_of("b"), b_was, "a left b's entry alone");
    // b leads again: its own entry follows, a's is left as a wrote it.
    let a_was = entry_of("a");
    b.become_leader("2000-b".into()).unwrap();
    wait("b's entry for generation 2", || (accepted(&entry_of("b")) == (json!("True"), json!(2))).then_some(())).await;
    assert_eq!(entry_of("a"), a_was, "b left a's entry alone");
    assert!(fake.get(&groups(), "", "broken").unwrap()["status"].get("conditions").is_none(), "no shared entry");
    // Every status write was a fenced merge patch by its installation's manager.
    let writes: Vec<_> = fake.writes().into_iter().filter(|w| w.res == groups() && w.status).collect();
    assert!(writes.len() >= 4, "{writes:#?}");
    for w in &writes {
        assert!(["isogroup/a", "isogroup/b"].contains(&w.manager.as_str()), "{w:?}");
        assert_eq!(w.verb, "patch", "{w:?}");
    }
    drop(a);
}

#[tokio::test]
async fn over_max_groups_the_newest_lane_is_left_out_and_reported() {
    let fake = bookinfo("v1").await;
    // base, feature-1 and team-a live, team-b declared with no lane yet:
    // max_groups 3 admits the three live ones (an idle group goes first)
    fake.put_quietly(&pods(), pod("a1", "team-a"));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true), ("a1", true)]));
    fake.put_quietly(&rules("v1"), rule("v1", &["base", "feature-1", "team-a", "team-b"]));
    fake.put_quietly(&groups(), group("team-b", json!({ "description": "the newest" })));
    let metrics = Arc::new(Metrics::new());
    let limits = Limits { max_groups: 3, ..Limits::default() };
    let served = Served::new("base".into(), limits, metrics.clone()).unwrap();
    let store = Arc::new(KubeStore::new(served));
    store.become_leader("1000-aa".into()).unwrap();
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), opts(0)));
    wait_table(&store, "three groups", |t| lanes(t) == ["base", "feature-1", "team-a"]).await;
    // a fourth live lane, the newest: left out; everything else routes
    fake.put(&pods(), pod("b1", "team-b"));
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true), ("a1", true), ("b1", true)]));
    wait("the lane left out, counted", || (metrics.lanes_left_out.get() == 1).then_some(())).await;
    assert_eq!(lanes(&store.served().current().raw), ["base", "feature-1", "team-a"], "the others keep routing");
    match store.served().readiness() {
        Readiness::Degraded(d) => {
            assert!(d.contains("reviews.bookinfo/team-b (groups: 4 exceeds the limit of 3)"), "{d}")
        }
        other => panic!("degraded, got {other:?}"),
    }
    let status = wait("team-b's status", || {
        let o = fake.get(&groups(), "", "team-b")?;
        entry(&o)["lanesLeftOut"].as_array().cloned()
    })
    .await;
    assert_eq!(status, [json!("reviews.bookinfo: groups: 4 exceeds the limit of 3")]);
    // not frozen: a new service meanwhile enters
    fake.put(&services(), service_named("ratings"));
    fake.put(&pods(), pod("t0", "base"));
    fake.put(&slices(), endpoint_slice("ratings", &[("t0", true)]));
    let mut ratings = rule("v1", &["base"]);
    (ratings["metadata"]["name"], ratings["spec"]["host"]) = (json!("ratings"), json!("ratings"));
    fake.put(&rules("v1"), ratings);
    wait_table(&store, "ratings, while degraded", |t| t.services.contains_key("ratings.bookinfo")).await;
    assert_eq!(metrics.lanes_left_out.get(), 1);
    // one lane goes: the newest gets in
    fake.put(&slices(), endpoint_slice("reviews", &[("r0", true), ("a1", true), ("b1", true)]));
    wait_table(&store, "team-b in", |t| lanes(t) == ["base", "team-a", "team-b"]).await;
    assert_eq!(metrics.lanes_left_out.get(), 0);
    assert_eq!(store.served().readiness(), Readiness::Ready);
    wait("team-b's status cleared", || {
        let o = fake.get(&groups(), "", "team-b")?;
        entry(&o).get("lanesLeftOut").is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_wildcard_destination_rules_tls_settings_are_carried_into_the_generated_one() {
    let fake = istio_fake().await;
    reviews_with_a_lane(&fake);
    let wildcard = |ns: &str, name: &str, host: &str, mode: &str| {
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": { "name": name, "namespace": ns },
                "spec": { "host": host, "trafficPolicy": { "tls": { "mode": mode } } } })
    };
    fake.put_quietly(&rules("v1"), wildcard("istio-system", "mesh", "*.local", "ISTIO_MUTUAL"));
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    let mut o = opts(0);
    o.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
    let policy = |fake: &FakeApi| {
        fake.get(&rules("v1"), "bookinfo", "isogroup-reviews").map(|o| o["spec"]["trafficPolicy"].clone())
    };
    wait("the mesh-wide TLS carried", || {
        (policy(&fake)? == json!({ "tls": { "mode": "ISTIO_MUTUAL" } })).then_some(())
    })
    .await;
    wait_table(&store, "the lane", |t| lanes(t) == ["base", "feature-1"]).await;
    // a more specific one, in the service's namespace: it wins
    let tls = json!({ "mode": "SIMPLE", "sni": "reviews.example", "caCertificates": "/etc/certs/ca.pem" });
    let mut ns_rule = wildcard("bookinfo", "all-bookinfo", "*.bookinfo.svc.cluster.local", "SIMPLE");
    ns_rule["spec"]["trafficPolicy"]["tls"] = tls.clone();
    fake.put(&rules("v1"), ns_rule.clone());
    wait("the namespace's TLS carried", || (policy(&fake)? == json!({ "tls": tls })).then_some(())).await;
    // changed: re-rendered
    ns_rule["spec"]["trafficPolicy"]["tls"]["sni"] = json!("other.example");
    fake.put(&rules("v1"), ns_rule);
    wait("re-rendered", || (policy(&fake)?["tls"]["sni"] == "other.example").then_some(())).await;
    // gone: the mesh-wide one again
    fake.delete(&rules("v1"), "bookinfo", "all-bookinfo");
    wait("back to the mesh-wide TLS", || (policy(&fake)?["tls"]["mode"] == "ISTIO_MUTUAL").then_some(())).await;
    assert_eq!(lanes(&store.served().current().raw), ["base", "feature-1"], "the wildcard rules are no conflict");
}

#[tokio::test]
async fn a_replica_that_stepped_down_writes_no_istio_object() {
    let fake = istio_fake().await;
    reviews_with_a_lane(&fake);
    let (store, metrics) = store();
    store.become_leader("1000-aa".into()).unwrap();
    let mut o = opts(0);
    o.istio = Some((crate::kube::istio::Mode::TargetHeader, "istio-system".into()));
    o.resync = Duration::from_millis(100);
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), o));
    wait_table(&store, "the lane", |t| lanes(t) == ["base", "feature-1"]).await;
    // A write is failing (and retried) when the replica steps down.
    fake.fail(&rules("v1"), 500);
    fake.delete(&rules("v1"), "bookinfo", "isogroup-reviews");
    wait_table(&store, "the service out with its subsets", |t| lanes(t).is_empty()).await;
    store.step_down();
    // a rebuild as a standby (the loop has seen it step down)
    fake.put(&pods(), pod("x1", "team-x"));
    let resyncs = metrics.kube_istio_resyncs.get();
    wait("resyncs", || (metrics.kube_istio_resyncs.get() >= resyncs + 2).then_some(())).await;
    fake.fail(&rules("v1"), 0);
    let resyncs = metrics.kube_istio_resyncs.get();
    wait("more resyncs", || (metrics.kube_istio_resyncs.get() >= resyncs + 10).then_some(())).await;
    assert!(fake.get(&rules("v1"), "bookinfo", "isogroup-reviews").is_none(), "a standby does not put it back");
}

#[tokio::test]
async fn a_table_over_a_limit_given_to_a_standby_is_degraded_once_it_leads() {
    // base + 2 lanes of reviews: 3 cluster entries, 2 allowed
    let fake = bookinfo("v1").await;
    fake.put_quietly(&pods(), pod("a1", "team-a"));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("r0", true), ("f1", true), ("a1", true)]));
    fake.put_quietly(&rules("v1"), rule("v1", &["base", "feature-1", "team-a"]));
    let metrics = Arc::new(Metrics::new());
    let limits = Limits { max_cluster_entries: 2, ..Limits::default() };
    let served = Served::new("base".into(), limits, metrics.clone()).unwrap();
    let store = Arc::new(KubeStore::new(served));
    tokio::spawn(crate::kube::source::run(fake.client(), store.clone(), metrics.clone(), opts(0)));
    wait("the standby ready", || store.served().readiness().is_ready().then_some(())).await;
    // elected: what it was given does not check; served with a lane left out
    let _ = store.become_leader("1000-aa".into());
    wait_table(&store, "base and one lane", |t| lanes(t).len() == 2).await;
    assert_eq!(metrics.lanes_left_out.get(), 1);
    // ties (both in the first list) by name: the later name is left out
    assert_eq!(lanes(&store.served().current().raw), ["base", "feature-1"]);
}

/// A replica campaigns only once every watch has listed, and a leader whose
/// watches fail for `--max-stale-s` steps down (and leads again once they
/// work).
#[tokio::test]
async fn a_replica_leads_only_with_working_watches() {
    let fake = bookinfo("v1").await;
    fake.put_quietly(&pods(), own_pod("companion-a"));
    fake.fail(&services(), 403);
    let replica = Replica::start(&fake, "companion-a");
    // listing fails: it never takes the free Lease
    wait("a failed list", || (fake.lists(&services()) >= 2).then_some(())).await;
    // Every election round reads the Lease (every 100 ms): ten of them go
    // by, counted rather than slept for.
    let from = fake.gets(&leases());
    wait("ten election rounds", || (fake.gets(&leases()) >= from + 10).then_some(())).await;
    assert!(!replica.store.is_leader());
    assert!(fake.get(&leases(), "isogroup-system", "isogroup-companion").is_none(), "no Lease taken");
    fake.fail(&services(), 0);
    wait("leading once listed", || replica.store.is_leader().then_some(())).await;
    // the watch fails for longer than --max-stale-s (here the Lease's 1.2 s)
    fake.fail(&services(), 500);
    fake.close_watches(&services());
    wait("stepped down", || replica.store.not_serving().map(|_| ())).await;
    // It steps down first (polls answered at once), then hands the Lease
    // back with one more write: wait for that write, not the step-down.
    wait("the Lease handed back", || {
        let lease = fake.get(&leases(), "isogroup-system", "isogroup-companion")?;
        lease["spec"]["holderIdentity"].is_null().then_some(())
    })
    .await;
    fake.fail(&services(), 0);
    wait("leading again", || replica.store.is_leader().then_some(())).await;
    replica.stop();
}

/// 25,000 lanes in the settle record: written to the fake (which refuses a
/// ConfigMap over 1 MiB with `422`) in shards, every write accepted.
#[tokio::test]
async fn a_settle_record_of_25000_lanes_is_written_in_shards_under_the_object_limit() {
    let fake = FakeApi::start(&[configmaps()]).await;
    let names = crate::kube::names::Names::new("isogroup-system", "isogroup-system");
    let fence = crate::kube::leader::Fence::new(Duration::from_secs(30));
    fence.lead("1000-aa".into(), Instant::now());
    let writer = crate::kube::state::Writer {
        api: kube::Api::namespaced(fake.client(), "isogroup-system"),
        namespace: "isogroup-system".into(),
        names,
        installation: "isogroup-system".into(),
        manager: "isogroup/isogroup-system".into(),
        fence,
    };
    let mut record = crate::kube::state::Record::default();
    for i in 0..25_000u64 {
        record.since.insert(format!("svc-{i:05}.team-{}/feature-{}", i % 40, i % 300), 1_765_000_000_000 + i);
    }
    let whole = serde_json::to_string(&record.since).unwrap().len();
    assert!(whole > 1024 * 1024, "over the object limit whole: {whole}");
    let (wanted_tx, wanted_rx) = tokio::sync::watch::channel(None);
    let (trusted_tx, mut trusted_rx) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(crate::kube::state::run(writer, wanted_rx, trusted_tx));
    trusted_rx.wait_for(Option::is_some).await.unwrap();
    wanted_tx.send_replace(Some(std::sync::Arc::new(crate::kube::state::Wanted {
        epoch: "1000-aa".into(),
        record: record.clone(),
    })));
    let read = wait("every lane written", || {
        let shards: Vec<Value> = fake.list_in(&configmaps(), "isogroup-system");
        let mut since = std::collections::BTreeMap::<String, u64>::new();
        for cm in &shards {
            since.extend(
                serde_json::from_str::<std::collections::BTreeMap<String, u64>>(cm["data"]["since"].as_str()?).ok()?,
            );
        }
        (since.len() == 25_000).then_some(shards)
    })
    .await;
    assert!(read.len() >= 3, "{} shards", read.len());
    for cm in &read {
        let size: usize =
            cm["data"].as_object().unwrap().iter().map(|(k, v)| k.len() + v.as_str().unwrap().len()).sum();
        assert!(size <= 512 * 1024, "{}: {size} bytes", cm["metadata"]["name"]);
    }
    let writes = fake.writes();
    assert!(writes.iter().all(|w| w.code < 300), "every write accepted: {writes:?}");
    task.abort();
}
