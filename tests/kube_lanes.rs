//! A lane in Kubernetes mode, end to end: the real companion binary
//! (`serve --kubernetes --istio target-header`) on a fake API server, the
//! real Envoy with an Istio sidecar's outbound side (envoy/istio-outbound.yaml)
//! and the filter fed by that companion. A client sends requests without a
//! pause the whole time; the lane appears only once its pod is ready and
//! `--settle-ms` has passed, is routed by Envoy, and leaves when its pod's
//! group label is taken off (its instance stopped once the companion
//! dropped its route) without a single non-200. This Envoy's subset
//! clusters are static: what Istio would do to the subset's endpoints when
//! the label goes is not emulated, so the proof is the order (the lane out
//! of the table, then its route, then its instance).
//! Then a source binding written through the admin API (the console's
//! write) lands in ConfigMap isogroup-runtime and is served, and an invalid
//! IsolationGroup has had its Event.
//! One fake, one companion, one Envoy.
//!
//! Failover: two replicas on one fake; Envoy reaches "the Service", which
//! selects the pod labelled `isogroup.io/leader` (emulated here as
//! kube-proxy would: each connection to the replica whose pod the fake shows
//! labelled). The leader is SIGKILLed while a client sends continuously to
//! the lane: every answer stays the lane's, the standby leads under a newer
//! epoch once the Lease expires, and a lane change made after that reaches
//! Envoy. Then a rolling update: the dead replica restarts as a standby, the
//! lane comes back, and the leader gets SIGTERM: it hands the Lease back, the
//! other leads at once under a newer epoch, and the lane never drops.
//! One fake, two companions, one Envoy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

// The companion's own fake API server (the same file its unit tests use),
// served from this process to the companion binary.
#[allow(dead_code)]
#[path = "../companion/src/kube/fake.rs"]
mod kube_fake;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{demo_instance, http, wait_for, Envoy, Proc, Rendered, TempDir};
use kube_fake::kinds::{
    configmaps, destination_rules, events, isolation_groups, leases, pods, services, slices, virtual_services,
};
use kube_fake::{endpoint_slice, FakeApi};
use serde_json::{json, Value};

const SETTLE_MS: u64 = 1500;
const LANE: &str = "feature-1";
/// Istio's domain forms for reviews:9080, as the client writes them.
const AUTHORITIES: [&str; 8] = [
    "reviews",
    "reviews:9080",
    "reviews.bookinfo",
    "reviews.bookinfo:9080",
    "reviews.bookinfo.svc",
    "reviews.bookinfo.svc:9080",
    "reviews.bookinfo.svc.cluster.local",
    "reviews.bookinfo.svc.cluster.local:9080",
];

fn pod(name: &str, namespace: &str, labels: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": namespace, "labels": labels } })
}

async fn fake_cluster() -> FakeApi {
    let fake = FakeApi::start(&[
        pods(),
        services(),
        slices(),
        destination_rules("v1"),
        virtual_services(),
        isolation_groups(),
        leases(),
        configmaps(),
        events(),
    ])
    .await;
    // An invalid IsolationGroup: reported in its status and an Event.
    let broken = json!({ "apiVersion": "isogroup.io/v1alpha1", "kind": "IsolationGroup", "metadata": { "name": "broken" },
                         "spec": { "mode": "strict", "fallback": ["base"] } });
    fake.put_quietly(&isolation_groups(), broken);
    fake.put_quietly(
        &services(),
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "reviews", "namespace": "bookinfo" },
                "spec": { "ports": [{ "port": 9080 }] } }),
    );
    fake.put_quietly(&pods(), pod("reviews-base-0", "bookinfo", json!({ "isogroup.io/group": "base" })));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true)]));
    fake.put_quietly(&pods(), pod("companion-0", "isogroup-system", json!({ "app": "isogroup-companion" })));
    fake
}

/// The companion binary in Kubernetes mode as pod `pod`, its kubeconfig
/// pointing at the fake; `args`: more `serve` flags.
fn start_companion(fake: &FakeApi, port: u16, dir: &TempDir, pod: &str, args: &[&str]) -> Proc {
    let kubeconfig = dir.0.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\n\
         users: [{{name: fake, user: {{}}}}]\n\
         contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: isogroup-system}}}}]\n\
         current-context: fake\n",
        fake.url
    );
    std::fs::write(&kubeconfig, text).unwrap();
    Proc::spawn(
        pod,
        Command::new(common::companion_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--kubernetes", "--pod-name", pod])
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("ISOGROUP_TOKEN", common::ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null()),
    )
}

/// The groups the companion serves for reviews (None: not serving yet).
async fn lanes(port: u16) -> Option<Vec<String>> {
    let resp = http().get(format!("http://127.0.0.1:{port}/v1/table")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let table: Value = resp.json().await.ok()?;
    let clusters = table["services"]["reviews.bookinfo"]["clusters"].as_object()?;
    Some(clusters.keys().cloned().collect())
}

/// The VirtualService's route for the lane, as the Envoy config mirrors it:
/// `x-isogroup-target: <lane>` to the lane's subset.
fn lane_route(fake: &FakeApi) -> Option<Value> {
    let vs = fake.get(&virtual_services(), "bookinfo", "isogroup-reviews")?;
    vs["spec"]["http"].as_array()?.iter().find(|r| r["name"] == format!("group-{LANE}")).cloned()
}

/// What the client saw: (authority, status, instance), in order.
type Seen = Arc<Mutex<Vec<(String, u16, String)>>>;

fn instances(seen: &Seen, from: usize) -> Vec<String> {
    seen.lock().unwrap()[from..].iter().map(|(_, _, i)| i.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_arrives_is_routed_and_leaves_by_its_label_without_an_error() {
    let started = Instant::now();
    let fake = fake_cluster().await;
    let rendered = Rendered::from_file("envoy/istio-outbound.yaml");
    let dir = TempDir::new("kube-lanes");
    let companion_port = rendered.port(18080);
    let settle = SETTLE_MS.to_string();
    let args = ["--istio", "target-header", "--settle-ms", &settle];
    let _companion = start_companion(&fake, companion_port, &dir, "companion-0", &args);
    let base = wait_for("the companion serving reviews with base", Duration::from_secs(20), || async move {
        lanes(companion_port).await.filter(|l| l == &["base"])
    })
    .await;
    assert_eq!(base, ["base"]);
    // The leader reconciled the base subset and the default route to it.
    let vs = wait_for("the VirtualService reconciled", Duration::from_secs(10), || {
        let fake = fake.clone();
        async move { fake.get(&virtual_services(), "bookinfo", "isogroup-reviews") }
    })
    .await;
    assert_eq!(vs["spec"]["hosts"], json!(["reviews.bookinfo.svc.cluster.local"]));
    assert_eq!(
        vs["spec"]["http"],
        json!([{ "name": "base", "route": [{ "destination": { "host": "reviews.bookinfo.svc.cluster.local", "subset": "base" } }] }])
    );

    let _base = demo_instance("reviews", "base", rendered.port(18000)).await;
    let mut lane_instance = demo_instance("reviews", LANE, rendered.port(18001)).await;
    let envoy = Envoy::start(&rendered, 9901, 10000).await.unwrap_or_else(|log| panic!("{log}"));

    // The client: one request after another, every domain form in turn,
    // each asking for the lane.
    let seen: Seen = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let client_task = {
        let seen = seen.clone();
        let url = envoy.url();
        tokio::spawn(async move {
            let client = common::http_fresh_connections();
            for authority in AUTHORITIES.iter().cycle() {
                if *stopped.borrow() {
                    break;
                }
                let resp = client.get(&url).header("host", *authority).header("x-isogroup", LANE).send().await;
                let (status, instance) = match resp {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.headers().get("x-demo-instance").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned(),
                    ),
                    Err(e) => (0, format!("error: {e}")),
                };
                seen.lock().unwrap().push((authority.to_string(), status, instance));
            }
        })
    };
    wait_for("base answering through Envoy", Duration::from_secs(10), || {
        let seen = seen.clone();
        async move {
            let s = seen.lock().unwrap();
            (s.len() >= 16).then_some(())
        }
    })
    .await;
    assert!(instances(&seen, 0).iter().all(|i| i == "reviews@base"), "before the lane: base only");

    // The lane's pod is scheduled but not ready: its subset and route are
    // reconciled ahead of it, and it stays out of the table.
    fake.put(&pods(), pod("reviews-f1-0", "bookinfo", json!({ "isogroup.io/group": LANE })));
    fake.put(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true), ("reviews-f1-0", false)]));
    let route = wait_for("the lane's route reconciled", Duration::from_secs(10), || {
        let fake = fake.clone();
        async move { lane_route(&fake) }
    })
    .await;
    assert_eq!(route["match"], json!([{ "headers": { "x-isogroup-target": { "exact": LANE } } }]));
    assert_eq!(
        route["route"],
        json!([{ "destination": { "host": "reviews.bookinfo.svc.cluster.local", "subset": LANE } }])
    );
    let rule = fake.get(&destination_rules("v1"), "bookinfo", "isogroup-reviews").expect("DestinationRule reconciled");
    assert!(
        rule["spec"]["subsets"]
            .as_array()
            .unwrap()
            .contains(&json!({ "name": LANE, "labels": { "isogroup.io/group": LANE } })),
        "{rule}"
    );
    assert_eq!(lanes(companion_port).await.unwrap(), ["base"], "a lane with no ready pod is not in the table");

    // Ready: the lane enters the table no sooner than --settle-ms later.
    let ready_at = Instant::now();
    fake.put(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true), ("reviews-f1-0", true)]));
    wait_for("the lane in the table", Duration::from_secs(15), || async move {
        lanes(companion_port).await.filter(|l| l.iter().any(|g| g == LANE))
    })
    .await;
    let entered = ready_at.elapsed();
    assert!(entered >= Duration::from_millis(SETTLE_MS), "the lane entered {entered:?} after its pod was ready");

    // Routed by Envoy through the lane's subset cluster, every domain form.
    let from = seen.lock().unwrap().len();
    wait_for("the lane routed for every domain form", Duration::from_secs(15), || {
        let seen = seen.clone();
        async move {
            let s = seen.lock().unwrap();
            let routed: std::collections::BTreeSet<&str> =
                s[from..].iter().filter(|(_, _, i)| i == "reviews@feature-1").map(|(a, _, _)| a.as_str()).collect();
            (routed.len() == AUTHORITIES.len()).then_some(())
        }
    })
    .await;

    // The pod's group label is taken off (the pod stays, ready, in the
    // Service's endpoints): the lane leaves the table at once, its route
    // stays --settle-ms longer, then goes; only then is its instance
    // stopped and the pod deleted.
    fake.put(&pods(), pod("reviews-f1-0", "bookinfo", json!({})));
    wait_for("the lane out of the table", Duration::from_secs(15), || async move {
        lanes(companion_port).await.filter(|l| l == &["base"])
    })
    .await;
    wait_for("the lane's route removed", Duration::from_secs(15), || {
        let fake = fake.clone();
        async move { fake.get(&virtual_services(), "bookinfo", "isogroup-reviews").filter(|_| lane_route(&fake).is_none()) }
    })
    .await;
    lane_instance.kill();
    fake.delete(&pods(), "bookinfo", "reviews-f1-0");
    fake.put(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true)]));
    let after_kill = seen.lock().unwrap().len();
    wait_for("requests after the lane's instance stopped", Duration::from_secs(10), || {
        let seen = seen.clone();
        async move { (seen.lock().unwrap().len() >= after_kill + 32).then_some(()) }
    })
    .await;
    stop.send(true).unwrap();
    client_task.await.unwrap();

    let seen_all = seen.lock().unwrap().clone();
    let seen = &seen_all;
    let bad: Vec<_> = seen.iter().filter(|(_, status, _)| *status != 200).take(5).collect();
    assert!(bad.is_empty(), "non-200 answers among {} requests: {bad:?}", seen.len());
    assert!(
        seen[after_kill..].iter().all(|(_, _, i)| i == "reviews@base"),
        "after the lane left, base serves every request"
    );

    // The console's writes work in this mode: a binding lands in ConfigMap
    // isogroup-runtime and is served.
    let url = format!("http://127.0.0.1:{companion_port}");
    let bound = http()
        .put(format!("{url}/v1/sources/192.0.2.7"))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({ "group": "base", "ttl_s": 3600 }))
        .send()
        .await
        .unwrap();
    assert_eq!(bound.status(), 200, "{:?}", bound.text().await);
    let cm = fake.get(&configmaps(), "isogroup-system", "isogroup-runtime").expect("ConfigMap written");
    let sources: Value = serde_json::from_str(cm["data"]["sources"].as_str().unwrap()).unwrap();
    assert_eq!(sources[0]["cidr"], "192.0.2.7/32");
    let listed: Value = http().get(format!("{url}/v1/sources")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed["sources"][0]["group"], "base", "{listed}");

    // The invalid IsolationGroup got one Event from the leader, in default
    // (where Events about cluster-scoped objects live).
    let events = wait_for("the Event about broken", Duration::from_secs(10), || {
        let events = fake.list_in(&events(), "default");
        async move { (!events.is_empty()).then_some(events) }
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["regarding"]["name"], "broken");
    assert_eq!(events[0]["reportingInstance"], "companion-0");
    assert!(events[0]["note"].as_str().unwrap().starts_with("spec.fallback: a strict group cannot have a fallback"));

    assert_shipped_rbac_allows(&fake);

    let lane_served = seen.iter().filter(|(_, _, i)| i == "reviews@feature-1").count();
    eprintln!(
        "{} requests, {lane_served} by the lane, all 200; lane entered {entered:?} after ready; {:?} in all",
        seen.len(),
        started.elapsed()
    );
}

/// The Lease's duration in the failover test (`--lease-ms`): a standby takes
/// over this long after the leader's last renewal it saw.
const LEASE_MS: u64 = 3000;

fn leader_label(fake: &FakeApi, pod: &str) -> bool {
    fake.get(&pods(), "isogroup-system", pod).is_some_and(|p| p["metadata"]["labels"]["isogroup.io/leader"] == "true")
}

/// The shipped package this test runs (`serve --kubernetes --istio
/// target-header`), rendered.
const SHIPPED_OVERLAY: &str = "deploy/kubernetes/companion/kubernetes-target-header";

fn shipped_manifest() -> Vec<Value> {
    kube_fake::kustomize(&common::root().join(SHIPPED_OVERLAY))
}

/// The selector of the companion's Service as shipped: which pods it sends
/// connections to.
fn shipped_service_selector() -> serde_json::Map<String, Value> {
    let service = shipped_manifest()
        .into_iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "isogroup-companion")
        .unwrap_or_else(|| panic!("the companion's Service in {SHIPPED_OVERLAY}"));
    service["spec"]["selector"].as_object().unwrap().clone()
}

/// The companion's Service as kube-proxy makes it: each new connection goes
/// to a replica whose pod the API server shows with every label of the
/// shipped Service's selector (which includes the leader label), found when
/// the connection opens; with none, or a dead one, the connection is
/// refused or reset (as a Service without endpoints).
async fn companion_service(
    fake: FakeApi,
    port: u16,
    replicas: Vec<(&'static str, u16)>,
) -> tokio::task::JoinHandle<()> {
    let selector = shipped_service_selector();
    assert_eq!(selector.get("isogroup.io/leader"), Some(&json!("true")), "the Service selects the leader");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            let selected = |pod: &str| {
                let labels = fake.get(&pods(), "isogroup-system", pod).map(|p| p["metadata"]["labels"].clone());
                labels.is_some_and(|l| selector.iter().all(|(k, v)| l[k] == *v))
            };
            let endpoint = replicas.iter().find(|(pod, _)| selected(pod)).map(|(_, port)| *port);
            tokio::spawn(async move {
                let Some(port) = endpoint else { return };
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    })
}

/// A replica's table answer: (epoch, version, groups for reviews); None
/// unless it serves (a standby answers 503 not_leader).
async fn served(port: u16) -> Option<(String, u64, Vec<String>)> {
    let resp = http().get(format!("http://127.0.0.1:{port}/v1/table")).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let epoch = resp.headers().get("x-isogroup-epoch")?.to_str().ok()?.to_owned();
    let table: Value = resp.json().await.ok()?;
    let clusters = table["services"]["reviews.bookinfo"]["clusters"].as_object()?;
    Some((epoch, table["version"].as_u64()?, clusters.keys().cloned().collect()))
}

/// An epoch's number (`<unix-ms>-<random>`).
fn epoch_number(epoch: &str) -> u64 {
    epoch.split_once('-').and_then(|(n, _)| n.parse().ok()).unwrap_or_else(|| panic!("malformed epoch {epoch:?}"))
}

/// Waits until the last `n` answers the client saw came from `instance`;
/// the index where that run began.
async fn run_of(seen: &Seen, from: usize, instance: &str, n: usize, what: &str) -> usize {
    wait_for(what, Duration::from_secs(30), || {
        let seen = seen.clone();
        async move {
            let s = seen.lock().unwrap();
            let start = s.len().checked_sub(n)?;
            (start >= from && s[start..].iter().all(|(_, _, i)| i == instance)).then_some(start)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_dies_under_requests_and_the_lane_never_drops() {
    let started = Instant::now();
    let fake = fake_cluster().await;
    // The lane is up before the companions start (settled at their first list).
    fake.put_quietly(&pods(), pod("reviews-f1-0", "bookinfo", json!({ "isogroup.io/group": LANE })));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true), ("reviews-f1-0", true)]));
    fake.put_quietly(&pods(), pod("companion-1", "isogroup-system", json!({ "app": "isogroup-companion" })));
    let rendered = Rendered::from_file("envoy/istio-outbound.yaml");
    let dir = TempDir::new("kube-failover");
    let names = ["companion-0", "companion-1"];
    let ports = [common::free_port(), common::free_port()];
    let lease = LEASE_MS.to_string();
    let args = ["--istio", "target-header", "--settle-ms", "300", "--lease-ms", &lease];
    let mut replicas: Vec<Proc> = (0..2).map(|i| start_companion(&fake, ports[i], &dir, names[i], &args)).collect();
    let (leader, first) = wait_for("a leader serving the lane, its pod labelled", Duration::from_secs(20), || {
        let fake = fake.clone();
        async move {
            for i in 0..2 {
                if let Some((epoch, _, groups)) = served(ports[i]).await {
                    if groups == ["base", LANE] && leader_label(&fake, names[i]) {
                        return Some((i, epoch));
                    }
                }
            }
            None
        }
    })
    .await;
    let standby = 1 - leader;
    assert!(!leader_label(&fake, names[standby]), "one pod labelled");
    let _service = companion_service(fake.clone(), rendered.port(18080), names.into_iter().zip(ports).collect()).await;

    let _base = demo_instance("reviews", "base", rendered.port(18000)).await;
    let _lane = demo_instance("reviews", LANE, rendered.port(18001)).await;
    let envoy = Envoy::start(&rendered, 9901, 10000).await.unwrap_or_else(|log| panic!("{log}"));
    let seen: Seen = Arc::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let client_task = {
        let (seen, url) = (seen.clone(), envoy.url());
        tokio::spawn(async move {
            let client = common::http_fresh_connections();
            while !*stopped.borrow() {
                let resp = client.get(&url).header("host", "reviews:9080").header("x-isogroup", LANE).send().await;
                let (status, instance) = match resp {
                    Ok(r) => (
                        r.status().as_u16(),
                        r.headers().get("x-demo-instance").and_then(|v| v.to_str().ok()).unwrap_or("none").to_owned(),
                    ),
                    Err(e) => (0, format!("error: {e}")),
                };
                seen.lock().unwrap().push(("reviews:9080".into(), status, instance));
            }
        })
    };
    // Both workers have the leader's table once a run of answers is the lane's.
    let routed = run_of(&seen, 0, "reviews@feature-1", 16, "the lane routed through Envoy").await;

    // SIGKILL: no Lease hand-back, no label taken off; the Service still
    // sends new connections to the dead pod until the standby, once the
    // Lease expired, takes it and moves the label.
    replicas[leader].kill();
    let killed_at = Instant::now();
    let killed = seen.lock().unwrap().len();
    let second = leading(&fake, ports[standby], names[standby], names[leader]).await;
    let took_over = killed_at.elapsed();
    assert_eq!(second.2, ["base", LANE], "the new leader serves the lane at once");
    assert!(epoch_number(&second.0) > epoch_number(&first), "new epoch {} after {first}", second.0);
    let lease = fake.get(&leases(), "isogroup-system", "isogroup-companion").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], names[standby]);
    assert_eq!(lease["metadata"]["annotations"]["isogroup.io/epoch"], second.0.as_str());
    let installed = on_table(&envoy, &seen, second.1).await;

    // A lane change after the failover reaches Envoy: only the new leader
    // can have served it (the old one is dead).
    let changed = seen.lock().unwrap().len();
    fake.delete(&pods(), "bookinfo", "reviews-f1-0");
    fake.put(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true)]));
    let left = run_of(&seen, changed, "reviews@base", 16, "the lane's departure reaching Envoy").await;

    // A rolling update: the dead replica is back (its pod restarted) as a
    // standby, the lane is back, then the leader gets SIGTERM as in a
    // rollout: it hands the Lease back and the other leads at once.
    replicas[leader] = start_companion(&fake, ports[leader], &dir, names[leader], &args);
    wait_for("the restarted replica ready", Duration::from_secs(20), || async move {
        let resp = http().get(format!("http://127.0.0.1:{}/readyz", ports[leader])).send().await.ok()?;
        resp.status().is_success().then_some(())
    })
    .await;
    let returned = seen.lock().unwrap().len();
    fake.put(&pods(), pod("reviews-f1-0", "bookinfo", json!({ "isogroup.io/group": LANE })));
    fake.put(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true), ("reviews-f1-0", true)]));
    let back = run_of(&seen, returned, "reviews@feature-1", 16, "the lane back through Envoy").await;
    let terminated_at = Instant::now();
    let status = Command::new("kill").args(["-TERM", &replicas[standby].pid().to_string()]).status().unwrap();
    assert!(status.success());
    let third = leading(&fake, ports[leader], names[leader], names[standby]).await;
    let handed_over = terminated_at.elapsed();
    assert_eq!(third.2, ["base", LANE]);
    assert!(epoch_number(&third.0) > epoch_number(&second.0), "new epoch {} after {}", third.0, second.0);
    let exit = wait_for("the terminated leader gone", Duration::from_secs(20), || {
        let code = replicas[standby].exited();
        async move { code }
    })
    .await;
    assert_eq!(exit, 0, "a clean shutdown");
    on_table(&envoy, &seen, third.1).await;
    stop.send(true).unwrap();
    client_task.await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let bad: Vec<_> = seen.iter().filter(|(_, status, _)| *status != 200).take(5).collect();
    assert!(bad.is_empty(), "non-200 answers among {} requests: {bad:?}", seen.len());
    let dropped: Vec<_> = seen[routed..changed].iter().filter(|(_, _, i)| i != "reviews@feature-1").take(5).collect();
    assert!(dropped.is_empty(), "the lane dropped around the failover: {dropped:?}");
    assert!(seen[left..returned].iter().all(|(_, _, i)| i == "reviews@base"), "once gone, the lane stays gone");
    let dropped: Vec<_> = seen[back..].iter().filter(|(_, _, i)| i != "reviews@feature-1").take(5).collect();
    assert!(dropped.is_empty(), "the lane dropped around the handover: {dropped:?}");
    assert_shipped_rbac_allows(&fake);
    eprintln!(
        "{} requests through the failover ({} after the kill, {} under the new leader's table, all the lane's); \
         standby took over {took_over:?} after the kill (--lease-ms {LEASE_MS}); rolling update: {} requests, \
         all the lane's, the Lease handed over in {handed_over:?}; {:?} in all",
        changed - routed,
        changed - killed,
        changed - installed,
        seen.len() - back,
        started.elapsed()
    );
}

/// Waits until the replica on `port` serves and its pod alone carries the
/// leader label; its (epoch, version, groups).
async fn leading(fake: &FakeApi, port: u16, pod: &'static str, other: &'static str) -> (String, u64, Vec<String>) {
    wait_for(&format!("{pod} leading and labelled"), Duration::from_secs(20), || {
        let fake = fake.clone();
        async move {
            let answer = served(port).await?;
            (leader_label(&fake, pod) && !leader_label(&fake, other)).then_some(answer)
        }
    })
    .await
}

/// Waits until Envoy has installed a table of at least `version` (a new
/// leader's versions follow the old one's: they are publish times) and 32
/// more requests went through; the index where those began.
async fn on_table(envoy: &Envoy, seen: &Seen, version: u64) -> usize {
    let stat = "wasmcustom.isogroup_table_version";
    wait_for("Envoy on the new leader's table", Duration::from_secs(30), || async move {
        (envoy.stat(stat).await >= version).then_some(())
    })
    .await;
    let installed = seen.lock().unwrap().len();
    wait_for("requests under the new leader's table", Duration::from_secs(10), || {
        let seen = seen.clone();
        async move { (seen.lock().unwrap().len() >= installed + 32).then_some(()) }
    })
    .await;
    installed
}

/// Every request the companion made is one the shipped RBAC allows (a
/// missing grant shows only on a real cluster otherwise).
fn assert_shipped_rbac_allows(fake: &FakeApi) {
    let rules = kube_fake::companion_rbac(&shipped_manifest());
    let denied: Vec<_> = fake
        .denied(&rules)
        .into_iter()
        // Target-header mode looks once for a former cluster-header run's
        // EnvoyFilters in the mesh root namespace; its RBAC does not reach
        // there and the 403 is expected (kube_istio).
        .filter(|(verb, _, resource, ns, _)| {
            !(verb == "list" && resource == "envoyfilters" && ns.as_deref() == Some("istio-system"))
        })
        .collect();
    assert!(denied.is_empty(), "requests {SHIPPED_OVERLAY} does not allow: {denied:#?}");
}
