//! The level-triggered reconcile as an operator meets it: a real companion
//! binary (`serve --kubernetes --istio …`, `--resync-s 2`, a 2 s Lease)
//! over the fake API server, driven with a real `kubectl` (at least 1.27;
//! these tests fail saying so where it is missing or older): what `kubectl
//! delete` removes comes back, what `kubectl edit` changes of the leader's
//! fields is put back and reported, a steady state writes nothing, and a
//! lane's subset, route and admission come in order (SPEC "Reconcile is
//! level-triggered").
//!
//! The fake's write log tells the companion's writes (through its own
//! address) from kubectl's. Lease renewals are writes by nature (one every
//! `--lease-ms`/7); "no writes" means no other write.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

#[allow(dead_code)]
#[path = "../src/kube/fake.rs"]
mod kube_fake;

#[path = "common/kube.rs"]
mod kube_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube_common::{dr, lane, routes_of, subsets_of, vs, wait, Replica, LANE, NAME};
use kube_fake::kinds::{configmaps, destination_rules, envoy_filters, events, leases, virtual_services};
use kube_fake::FakeApi;
use serde_json::{json, Value};

const NS: &str = "isogroup-system";
/// What the issue asks of a deleted or edited object: back within this.
const BACK_WITHIN: Duration = Duration::from_secs(5);

/// kubectl, at least 1.27 (`KUBECTL` may name it).
fn kubectl() -> PathBuf {
    let bin = std::env::var_os("KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
    let out = Command::new(&bin).args(["version", "--client", "-o", "json"]).output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        _ => panic!("these tests need kubectl >= 1.27 on PATH (or KUBECTL=<path>); {} did not run", bin.display()),
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let minor: u32 = v["clientVersion"]["minor"].as_str().unwrap_or("0").trim_end_matches('+').parse().unwrap_or(0);
    let major = v["clientVersion"]["major"].as_str().unwrap_or("0");
    assert!(major == "1" && minor >= 27, "these tests need kubectl >= 1.27; {} is {major}.{minor}", bin.display());
    bin
}

struct Kubectl {
    bin: PathBuf,
    dir: PathBuf,
}

impl Kubectl {
    fn new(fake: &FakeApi, dir: &Path) -> Kubectl {
        std::fs::write(dir.join("kubectl-config"), fake.kubeconfig("bookinfo")).unwrap();
        Kubectl { bin: kubectl(), dir: dir.to_owned() }
    }

    /// (success, stdout + stderr).
    async fn run(&self, args: &[&str], editor: Option<&Path>) -> (bool, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", self.dir.join("kubectl-config"))
            .env("HOME", &self.dir)
            .env("KUBECACHEDIR", self.dir.join("cache"))
            .current_dir(&self.dir);
        if let Some(e) = editor {
            cmd.env("KUBE_EDITOR", e);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }
}

/// reviews in bookinfo with a base pod, the companion's pod, and the
/// EnvoyFilter kind (for `--istio cluster-header`).
async fn cluster() -> FakeApi {
    let fake = kube_common::cluster(&[("companion-a", NS)]).await;
    fake.install(&envoy_filters());
    fake
}

fn our_filter(fake: &FakeApi) -> Option<Value> {
    let all = fake.list_in(&envoy_filters(), "istio-system");
    all.into_iter().find(|o| o["metadata"]["labels"]["isogroup.io/installation"] == NS)
}

/// Waits until the companion leads and routes the lane with its objects
/// in place, and the lane is on its settle record (nothing left to write).
async fn routing(fake: &FakeApi, c: &Replica) {
    wait("the lane routed", Duration::from_secs(30), async || c.routes_lane().await.then_some(())).await;
    wait("the lane on record", Duration::from_secs(10), async || {
        let shard = fake.get(&configmaps(), NS, "isogroup-state-0")?;
        shard["data"]["since"].as_str()?.contains(&format!("reviews.bookinfo/{LANE}")).then_some(())
    })
    .await;
}

/// `kubectl delete` of `kind`: back, as it was, within 5 s; the time.
async fn deleted_and_back(k: &Kubectl, args: &[&str], get: impl Fn() -> Option<Value>) -> Duration {
    let was = get().unwrap();
    let started = Instant::now();
    let (ok, out) = k.run(args, None).await;
    assert!(ok, "{out}");
    let back = wait("the deleted object back", BACK_WITHIN * 2, async || {
        get().filter(|o| o["metadata"]["uid"] != was["metadata"]["uid"])
    })
    .await;
    let took = started.elapsed();
    assert_eq!(back["spec"], was["spec"], "back as wanted");
    assert_eq!(back["metadata"]["labels"], was["metadata"]["labels"]);
    eprintln!("kubectl {}: back in {took:?}", args.join(" "));
    assert!(took <= BACK_WITHIN, "kubectl {}: back only after {took:?}", args.join(" "));
    took
}

/// Waits until `passes` more resyncs have gone by (and at least `min`).
async fn resyncs(c: &Replica, passes: u64, min: Duration) -> u64 {
    let from = c.counter("kube_istio_resyncs").await.unwrap();
    let started = Instant::now();
    wait("resyncs", min + Duration::from_secs(2 * passes + 10), async || {
        let now = c.counter("kube_istio_resyncs").await?;
        (now >= from + passes && started.elapsed() >= min).then_some(now - from)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_and_edit_of_owned_objects_are_undone_and_reported() {
    let fake = cluster().await;
    let dir = common::test_dir("kubectl-delete-edit");
    let k = Kubectl::new(&fake, &dir);
    let c = Replica::start(&fake, "companion-a", NS, &["--istio", "target-header", "--settle-ms", "300"]).await;
    lane(&fake, true);
    routing(&fake, &c).await;
    let wanted = dr(&fake).unwrap();
    let dr_back = deleted_and_back(&k, &["delete", "destinationrule", NAME, "-n", "bookinfo"], || dr(&fake)).await;
    let vs_back = deleted_and_back(&k, &["delete", "virtualservice", NAME, "-n", "bookinfo"], || vs(&fake)).await;
    eprintln!("DestinationRule back in {dr_back:?}, VirtualService in {vs_back:?}");
    // (the lane waits for its subset and route to be observed again)
    wait("the lane routed again", BACK_WITHIN, async || c.routes_lane().await.then_some(())).await;

    // `kubectl edit`: the lane's subset now selects another label (a
    // field the leader sets), and exportTo added (one it does not).
    let editor = dir.join("editor.sh");
    std::fs::write(
        &editor,
        format!(
            "#!/bin/sh\nsed -i -e 's/isogroup.io\\/group: {LANE}$/isogroup.io\\/group: someone-else/' \
             -e 's/^spec:$/spec:\\n  exportTo: [\".\"]/' \"$1\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let before = dr(&fake).unwrap();
    let started = Instant::now();
    let (ok, out) = k.run(&["edit", "destinationrule", NAME, "-n", "bookinfo"], Some(&editor)).await;
    assert!(ok, "{out}");
    let edits: Vec<(u64, &str, Value)> = fake
        .history(&destination_rules("v1"), "bookinfo", NAME)
        .into_iter()
        .filter(|(rv, _, o)| {
            *rv > before["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap()
                && o["spec"]["exportTo"] == json!(["."])
        })
        .collect();
    let edited = &edits.first().expect("the edit landed").2;
    assert!(edited["spec"]["subsets"].to_string().contains("someone-else"), "the editor changed the subset");
    let reverted = wait("the edit put back", BACK_WITHIN * 2, async || {
        dr(&fake).filter(|o| o["spec"]["subsets"] == wanted["spec"]["subsets"])
    })
    .await;
    let took = started.elapsed();
    eprintln!("kubectl edit: the leader's field put back in {took:?}");
    assert!(took <= BACK_WITHIN, "put back only after {took:?}");
    assert_eq!(reverted["spec"]["exportTo"], json!(["."]), "the field the leader does not set is kept");
    let listed = |reason: &str| -> Vec<Value> {
        fake.list_in(&events(), "bookinfo").into_iter().filter(|e| e["reason"] == reason).collect()
    };
    let edit =
        wait("the Event naming the editor", BACK_WITHIN, async || listed("EditReverted").into_iter().next()).await;
    let note = edit["note"].as_str().unwrap();
    assert!(note.contains("spec.subsets changed by kubectl-edit"), "{note}");
    let kept = wait("the kept field reported", BACK_WITHIN, async || listed("FieldsKept").into_iter().next()).await;
    assert!(kept["note"].as_str().unwrap().starts_with("spec.exportTo set by kubectl-edit: kept"), "{kept}");
    let jsonpath = "-o=jsonpath={.items[*].reason}";
    let (ok, out) = k.run(&["get", "events.v1.events.k8s.io", "-n", "bookinfo", jsonpath], None).await;
    assert!(ok && out.contains("EditReverted"), "kubectl lists the Event: {out}");

    // Flat afterwards: two resyncs go by without a write.
    resyncs(&c, 1, Duration::ZERO).await;
    let log = fake.writes().len();
    let passes = resyncs(&c, 2, Duration::ZERO).await;
    let after = fake.writes();
    let later = c.writes_but_renewals(&after[log..]);
    assert!(later.is_empty(), "writes after the edit was put back ({passes} resyncs): {later:#?}");
    assert_eq!((listed("EditReverted").len(), listed("FieldsKept").len()), (1, 1), "each reported once");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_of_an_owned_envoy_filter_is_undone() {
    let fake = cluster().await;
    let dir = common::test_dir("kubectl-envoyfilter");
    let k = Kubectl::new(&fake, &dir);
    let c = Replica::start(&fake, "companion-a", NS, &["--istio", "cluster-header", "--settle-ms", "300"]).await;
    lane(&fake, true);
    routing(&fake, &c).await;
    let name = our_filter(&fake).unwrap()["metadata"]["name"].as_str().unwrap().to_owned();
    let took =
        deleted_and_back(&k, &["delete", "envoyfilter", &name, "-n", "istio-system"], || our_filter(&fake)).await;
    eprintln!("EnvoyFilter back in {took:?}");
    // (the lane waits for its service's EnvoyFilter to be observed again)
    wait("the lane routed again", BACK_WITHIN, async || c.routes_lane().await.then_some(())).await;
    let dr_back = deleted_and_back(&k, &["delete", "destinationrule", NAME, "-n", "bookinfo"], || dr(&fake)).await;
    eprintln!("DestinationRule (cluster-header) back in {dr_back:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A lane added: its subset is written, then its route, and only then
/// does the table admit it (the route's write is held until the test
/// has seen the table without the lane). 20 s of steady state spanning at
/// least 5 resyncs: no write. The lane removed: the table first, then the
/// route, then (after its grace, `--settle-ms`) the subset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_comes_in_order_a_steady_state_writes_nothing_and_it_leaves_in_reverse() {
    const SETTLE_MS: u64 = 3000;
    let fake = cluster().await;
    let c =
        Replica::start(&fake, "companion-a", NS, &["--istio", "target-header", "--settle-ms", &SETTLE_MS.to_string()])
            .await;
    wait("base routed", Duration::from_secs(30), async || {
        (c.lanes().await? == ["base"] && routes_of(&vs(&fake)?) == ["base"]).then_some(())
    })
    .await;

    // In: the subset, then the route (held a while), then the table.
    let hold = fake.hold_writes(&virtual_services(), "bookinfo", NAME);
    lane(&fake, true);
    let added = Instant::now();
    wait("the subset", Duration::from_secs(10), async || dr(&fake).filter(|o| subsets_of(o).contains(&LANE.into())))
        .await;
    wait("the route's write to arrive", Duration::from_secs(10), async || (hold.arrived() >= 1).then_some(())).await;
    // settled, the lane still waits for its route
    while added.elapsed() < Duration::from_millis(SETTLE_MS + 1000) {
        assert!(!c.routes_lane().await, "the lane admitted before its route was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hold.release();
    wait("the lane admitted", Duration::from_secs(15), async || c.routes_lane().await.then_some(())).await;
    let dr_history = fake.history(&destination_rules("v1"), "bookinfo", NAME);
    let vs_history = fake.history(&virtual_services(), "bookinfo", NAME);
    let subset_in = dr_history.iter().find(|(_, _, o)| subsets_of(o).contains(&LANE.into())).unwrap().0;
    let route_in = vs_history.iter().find(|(_, _, o)| routes_of(o).contains(&LANE.into())).unwrap().0;
    eprintln!("lane in: subset at resourceVersion {subset_in}, route at {route_in}, then the table");
    assert!(subset_in < route_in, "the subset ({subset_in}) before the route ({route_in})");

    // Steady: 20 s, at least 5 resyncs, not one write but Lease renewals.
    routing(&fake, &c).await;
    resyncs(&c, 1, Duration::ZERO).await;
    let log = fake.writes().len();
    let started = Instant::now();
    let passes = resyncs(&c, 5, Duration::from_secs(20)).await;
    let after = fake.writes();
    let writes = c.writes_but_renewals(&after[log..]);
    let renewals = after[log..].iter().filter(|w| w.res == leases()).count();
    eprintln!(
        "steady state: {:?}, {passes} resyncs, {} writes (and {renewals} Lease renewals)",
        started.elapsed(),
        writes.len()
    );
    assert!(writes.is_empty(), "writes in a steady state: {writes:#?}");

    // Out: the table first (the route's removal held until it is seen),
    // then the route, then the subset after its grace.
    let hold = fake.hold_writes(&virtual_services(), "bookinfo", NAME);
    lane(&fake, false);
    let left = Instant::now();
    wait("the lane out of the table", Duration::from_secs(10), async || (!c.routes_lane().await).then_some(())).await;
    assert!(routes_of(&vs(&fake).unwrap()).contains(&LANE.into()), "the table dropped the lane while routed");
    wait("the route's removal to arrive", Duration::from_secs(10), async || (hold.arrived() >= 1).then_some(())).await;
    hold.release();
    wait("the route gone", Duration::from_secs(10), async || {
        (!routes_of(&vs(&fake)?).contains(&LANE.into())).then_some(())
    })
    .await;
    while left.elapsed() < Duration::from_millis(SETTLE_MS - 500) {
        assert!(subsets_of(&dr(&fake).unwrap()).contains(&LANE.into()), "subset gone {:?} after", left.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait("the subset gone", Duration::from_secs(15), async || {
        (!subsets_of(&dr(&fake)?).contains(&LANE.into())).then_some(())
    })
    .await;
    let gone_after = left.elapsed();
    eprintln!("lane out: subset deleted {gone_after:?} after the lane left (grace {SETTLE_MS} ms)");
    assert!(gone_after >= Duration::from_millis(SETTLE_MS), "the subset went before its grace");
    let dr_history = fake.history(&destination_rules("v1"), "bookinfo", NAME);
    let vs_history = fake.history(&virtual_services(), "bookinfo", NAME);
    let route_out = vs_history.iter().rfind(|(_, _, o)| routes_of(o).contains(&LANE.into())).map(|v| v.0).unwrap();
    let route_out = vs_history.iter().find(|(r, _, _)| *r > route_out).unwrap().0;
    let subset_out = dr_history.iter().rfind(|(_, _, o)| subsets_of(o).contains(&LANE.into())).map(|v| v.0).unwrap();
    let subset_out = dr_history.iter().find(|(r, _, _)| *r > subset_out).unwrap().0;
    eprintln!("lane out: route removed at resourceVersion {route_out}, subset at {subset_out}");
    assert!(route_out < subset_out, "the route ({route_out}) out before the subset ({subset_out})");
}
