//! Fenced leadership, the settle record and installations, with real
//! companion binaries (`serve --kubernetes --istio target-header`) over the
//! fake API server (SPEC "Installations", "Leadership is fenced"). Each
//! replica talks to the fake through its own address, so the write log
//! tells their writes apart and one can be cut off alone. Short Lease
//! (`--lease-ms 2000`: renew deadline 1.33 s, retry 0.29 s) and
//! `--resync-s 2`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

#[allow(dead_code)]
#[path = "../src/kube/fake.rs"]
mod kube_fake;

#[path = "common/kube.rs"]
mod kube_common;

use std::process::Command;
use std::time::{Duration, Instant};

use kube_common::{cluster, lane, pod, routes, subsets, wait, Replica, LANE};
use kube_fake::kinds::{configmaps, destination_rules, events, leases, pods};
use kube_fake::{FakeApi, Write};
use serde_json::{json, Value};

const NS: &str = "isogroup-system";

fn holder(fake: &FakeApi, ns: &str, lease: &str) -> Option<String> {
    fake.get(&leases(), ns, lease)?["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

fn lease_epoch(fake: &FakeApi, ns: &str, lease: &str) -> Option<String> {
    fake.get(&leases(), ns, lease)?["metadata"]["annotations"]["isogroup.io/epoch"].as_str().map(str::to_owned)
}

fn shard(fake: &FakeApi, ns: &str, name: &str) -> Option<Value> {
    fake.get(&configmaps(), ns, name)
}

/// `data.<key>` of a shard, parsed.
fn shard_map(fake: &FakeApi, name: &str, key: &str) -> Option<Value> {
    serde_json::from_str(shard(fake, NS, name)?["data"][key].as_str()?).ok()
}

const ISTIO: &[&str] = &["--istio", "target-header"];

fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    ISTIO.iter().copied().chain(extra.iter().copied()).collect()
}

/// A leader whose renewals are blocked has an update of
/// `isogroup-state-0` accepted by the API server, which holds it until the
/// next leader has taken the Lease and rewritten the shard: then it is
/// refused (`409`, its precondition stale) and the shard stays the new
/// leader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_held_update_of_the_record_is_refused() {
    let fake = cluster(&[("companion-a", NS), ("companion-b", NS)]).await;
    let a = Replica::start(&fake, "companion-a", NS, &with(&["--settle-ms", "60000"])).await;
    wait("A leading, its record written", Duration::from_secs(20), async || {
        (a.serving().await && shard(&fake, NS, "isogroup-state-0").is_some()).then_some(())
    })
    .await;
    let b = Replica::start(&fake, "companion-b", NS, &with(&["--settle-ms", "60000"])).await;
    b.listed().await;
    let hold = fake.hold_writes_from(&a.endpoint, &configmaps(), NS, "isogroup-state-0");
    // A lane starts settling: A records it at once (an update of shard 0).
    lane(&fake, true);
    wait("A's update of the record to arrive", Duration::from_secs(20), async || (hold.arrived() >= 1).then_some(()))
        .await;
    // A's renewals from now on get no answer: B takes over once the Lease
    // has gone unrenewed for its duration.
    fake.stall_from(&a.endpoint, &leases(), true);
    let b_epoch = wait("B to take the Lease", Duration::from_secs(20), async || {
        (holder(&fake, NS, "isogroup-companion").as_deref() == Some("companion-b"))
            .then(|| lease_epoch(&fake, NS, "isogroup-companion"))?
    })
    .await;
    wait("B to put its epoch into shard 0", Duration::from_secs(20), async || {
        (shard(&fake, NS, "isogroup-state-0")?["data"]["epoch"].as_str()? == b_epoch).then_some(())
    })
    .await;
    // A no longer leads: no more of its writes arrive.
    wait("A to step down", Duration::from_secs(20), async || (!a.serving().await).then_some(())).await;
    let held = hold.arrived();
    hold.release();
    // B's first write as the leader: taking the Lease.
    let b_first = {
        let log = fake.writes();
        let first = b.writes(&log).find(|(_, w)| w.changed && w.res == leases()).map(|(i, _)| i);
        first.unwrap()
    };
    // Every held write answered (after B's, as they were held until now).
    wait("A's held writes answered", Duration::from_secs(20), async || {
        let log = fake.writes();
        let answered = a.writes(&log).filter(|(i, w)| *i > b_first && w.name == "isogroup-state-0").count() as u64;
        (answered >= held).then_some(())
    })
    .await;
    let log = fake.writes();
    let a_updates: Vec<&Write> =
        a.writes(&log).filter(|(i, w)| *i > b_first && w.name == "isogroup-state-0").map(|(_, w)| w).collect();
    assert!(!a_updates.is_empty(), "A's held update is in the log");
    for w in &a_updates {
        assert_eq!((w.verb, w.code, w.changed), ("update", 409, false), "A's update refused: {w:?}");
    }
    // The shard is B's: the last write that changed it is B's, and it
    // carries B's epoch.
    let last = log.iter().rev().find(|w| w.name == "isogroup-state-0" && w.changed).unwrap();
    assert_eq!(last.endpoint, b.endpoint, "the last write to shard 0 is B's: {last:?}");
    let now = shard(&fake, NS, "isogroup-state-0").unwrap();
    assert_eq!(now["metadata"]["resourceVersion"].as_str(), last.resource_version.as_deref());
    assert_eq!(now["data"]["epoch"], b_epoch);
    drop(a);
}

/// A leader paused (SIGSTOP) past its Lease and resumed: nothing it sends
/// lands once the next leader has written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_lands_no_write_after_the_next_leaders_first() {
    let fake = cluster(&[("companion-a", NS), ("companion-b", NS)]).await;
    let a = Replica::start(&fake, "companion-a", NS, &with(&["--settle-ms", "500"])).await;
    wait("A leading", Duration::from_secs(20), async || a.serving().await.then_some(())).await;
    let b = Replica::start(&fake, "companion-b", NS, &with(&["--settle-ms", "500"])).await;
    b.listed().await;
    // Changes keep coming, so a leader always has something to write.
    let churn = {
        let fake = fake.clone();
        tokio::spawn(async move {
            for i in 0.. {
                lane(&fake, i % 2 == 0);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.signal("-STOP");
    let paused = fake.writes().len();
    wait("B to lead", Duration::from_secs(20), async || b.serving().await.then_some(())).await;
    // B has written (the Lease, its label, the record) before A resumes.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.signal("-CONT");
    // A runs again: its clock says its deadline has long passed.
    wait("A to see it no longer leads", Duration::from_secs(20), async || (!a.serving().await).then_some(())).await;
    // A few more of A's rounds (renew, label, record, reconcile, resync).
    let seen = fake.writes().len();
    wait("more writes after A resumed", Duration::from_secs(20), async || {
        (fake.writes().len() > seen + 10).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    churn.abort();
    let log = fake.writes();
    let b_first = b.writes(&log).find(|(i, w)| *i >= paused && w.changed).map(|(i, _)| i).unwrap();
    let landed: Vec<&Write> = a.writes(&log).filter(|(i, w)| *i > b_first && w.changed).map(|(_, w)| w).collect();
    assert!(landed.is_empty(), "A's writes landed after B's first: {landed:#?}");
    assert!(b.serving().await, "B still leads");
    // Every request they made (the Lease, labels under a resourceVersion,
    // the record's shards, Istio objects) is granted by the shipped RBAC.
    let overlay = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes/companion/kubernetes-target-header");
    let denied = fake.denied(&kube_fake::companion_rbac(&kube_fake::kustomize(&overlay)));
    assert!(denied.is_empty(), "not granted by the shipped RBAC: {denied:#?}");
}

/// Leadership A → B → A, with a lane added while B led: once A leads again,
/// the lane's subset and route are there and A serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_added_while_b_led_is_routed_after_leadership_returns_to_a() {
    let fake = cluster(&[("companion-a", NS), ("companion-b", NS)]).await;
    let a = Replica::start(&fake, "companion-a", NS, &with(&["--settle-ms", "300"])).await;
    wait("A leading", Duration::from_secs(20), async || a.serving().await.then_some(())).await;
    let b = Replica::start(&fake, "companion-b", NS, &with(&["--settle-ms", "300"])).await;
    b.listed().await;
    // A cannot renew: it steps down (alive), B takes over.
    fake.stall_from(&a.endpoint, &leases(), true);
    wait("B leading", Duration::from_secs(20), async || b.serving().await.then_some(())).await;
    fake.stall_from(&a.endpoint, &leases(), false);
    lane(&fake, true);
    wait("B to route the lane", Duration::from_secs(20), async || {
        (b.lanes().await?.contains(&LANE.to_owned()) && routes(&fake).contains(&LANE.to_owned())).then_some(())
    })
    .await;
    // B hands the Lease back on SIGTERM: A leads again.
    b.signal("-TERM");
    wait("A leading again", Duration::from_secs(20), async || {
        (a.serving().await && holder(&fake, NS, "isogroup-companion").as_deref() == Some("companion-a")).then_some(())
    })
    .await;
    // Two of A's resyncs (`--resync-s 2`) later, as A left them: counted,
    // not slept for, so a loaded machine cannot make the check come first.
    let from = a.counter("kube_istio_resyncs").await.unwrap();
    wait("two of A's resyncs", Duration::from_secs(20), async || {
        (a.counter("kube_istio_resyncs").await? >= from + 2).then_some(())
    })
    .await;
    assert_eq!(subsets(&fake), ["base", LANE]);
    assert_eq!(routes(&fake), ["base", LANE]);
    assert_eq!(a.lanes().await.unwrap(), ["base", LANE]);
    // Delete the subset by hand: A (not B, not a memory) puts it back.
    fake.delete(&destination_rules("v1"), "bookinfo", "isogroup-reviews");
    wait("A to put the subset back", Duration::from_secs(10), async || {
        (subsets(&fake) == ["base", LANE]).then_some(())
    })
    .await;
}

/// A failover in the middle of a lane's settle window: the lane is not
/// admitted before `--settle-ms` after its readiness, though the leader
/// that saw it become ready never recorded it (its writes held); and a
/// leaving lane's subset outlives the failover for its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_settle_window_and_a_leaving_lanes_grace_survive_a_failover() {
    const SETTLE_MS: u64 = 6000;
    let settle = SETTLE_MS.to_string();
    let fake = cluster(&[("companion-a", NS), ("companion-b", NS)]).await;
    let args = with(&["--settle-ms", &settle]);
    let a = Replica::start(&fake, "companion-a", NS, &args).await;
    wait("A leading, its record written", Duration::from_secs(20), async || {
        // (or the single ConfigMap of earlier versions)
        let written = ["isogroup-state-0", "isogroup-state"].iter().any(|n| shard(&fake, NS, n).is_some());
        (a.serving().await && written).then_some(())
    })
    .await;
    // A's record writes are held (never land): the lane is not on record
    // (the single ConfigMap earlier versions wrote, held as well).
    let hold = fake.hold_writes_from(&a.endpoint, &configmaps(), NS, "isogroup-state-0");
    let legacy = fake.hold_writes_from(&a.endpoint, &configmaps(), NS, "isogroup-state");
    lane(&fake, true);
    let ready = Instant::now();
    wait("A to route the lane's subset", Duration::from_secs(20), async || {
        (routes(&fake).contains(&LANE.to_owned())).then_some(())
    })
    .await;
    a.signal("-KILL");
    // B starts now: what it finds unrecorded starts now.
    let b = Replica::start(&fake, "companion-b", NS, &args).await;
    let admitted = wait("B to admit the lane", Duration::from_secs(30), async || {
        b.lanes().await?.contains(&LANE.to_owned()).then(Instant::now)
    })
    .await;
    eprintln!("the lane was admitted {:?} after its readiness", admitted.duration_since(ready));
    assert!(
        admitted.duration_since(ready) >= Duration::from_millis(SETTLE_MS),
        "admitted {:?} after the lane's readiness (settle {SETTLE_MS} ms)",
        admitted.duration_since(ready)
    );
    // A third replica to fail over to, then the lane leaves under B.
    fake.put_quietly(&pods(), pod("companion-a2", NS, json!({ "app": "isogroup-companion" })));
    let c = Replica::start(&fake, "companion-a2", NS, &args).await;
    c.listed().await;
    lane(&fake, false);
    let left = Instant::now();
    wait("B to record the leaving lane", Duration::from_secs(10), async || {
        let leaving = shard_map(&fake, "isogroup-state-0", "leaving")?;
        leaving.get(format!("bookinfo/reviews/{LANE}")).map(|_| ())
    })
    .await;
    b.signal("-KILL");
    wait("C leading", Duration::from_secs(20), async || c.serving().await.then_some(())).await;
    let led = Instant::now();
    assert!(led.duration_since(left) < Duration::from_millis(SETTLE_MS - 1000), "the failover took too long to tell");
    // Under C, within the grace: the subset is still there.
    while left.elapsed() < Duration::from_millis(SETTLE_MS - 500) {
        assert!(subsets(&fake).contains(&LANE.to_owned()), "subset gone {:?} after the lane left", left.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait("the subset to go after its grace", Duration::from_secs(15), async || {
        (!subsets(&fake).contains(&LANE.to_owned())).then_some(())
    })
    .await;
    assert!(left.elapsed() >= Duration::from_millis(SETTLE_MS), "deleted before its grace");
    drop((hold, legacy));
}

/// Two installations in one namespace (`--installation team-b` beside the
/// default) and one in another namespace: each leads on its own Lease,
/// keeps its own record and labels its own pod; none writes another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installations_never_share_a_leader_or_state() {
    let fake = cluster(&[("companion-a", NS), ("companion-b", NS), ("companion-c", "other-system")]).await;
    // The lane's subset, kept by hand (no installation runs --istio).
    fake.put_quietly(
        &destination_rules("v1"),
        json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": { "name": "reviews", "namespace": "bookinfo" },
                "spec": { "host": "reviews.bookinfo.svc.cluster.local", "subsets": [
                    { "name": "base", "labels": { "isogroup.io/group": "base" } },
                    { "name": LANE, "labels": { "isogroup.io/group": LANE } } ] } }),
    );
    let a = Replica::start(&fake, "companion-a", NS, &["--settle-ms", "300"]).await;
    let b = Replica::start(&fake, "companion-b", NS, &["--settle-ms", "300", "--installation", "team-b"]).await;
    let c = Replica::start(&fake, "companion-c", "other-system", &["--settle-ms", "300"]).await;
    wait("all three leading", Duration::from_secs(20), async || {
        (a.serving().await && b.serving().await && c.serving().await).then_some(())
    })
    .await;
    assert_eq!(holder(&fake, NS, "isogroup-companion").as_deref(), Some("companion-a"));
    assert_eq!(holder(&fake, NS, "isogroup-companion-team-b").as_deref(), Some("companion-b"));
    assert_eq!(holder(&fake, "other-system", "isogroup-companion").as_deref(), Some("companion-c"));
    let epoch = |ns: &str, lease: &str| lease_epoch(&fake, ns, lease).unwrap();
    let shards = [
        (NS, "isogroup-state-0", epoch(NS, "isogroup-companion")),
        (NS, "isogroup-state-team-b-0", epoch(NS, "isogroup-companion-team-b")),
        ("other-system", "isogroup-state-0", epoch("other-system", "isogroup-companion")),
    ];
    for (ns, name, epoch) in &shards {
        wait(&format!("{ns}/{name} written"), Duration::from_secs(10), async || {
            (shard(&fake, ns, name)?["data"]["epoch"].as_str()? == epoch).then_some(())
        })
        .await;
    }
    let labels = |ns: &str, name: &str| fake.get(&pods(), ns, name).unwrap()["metadata"]["labels"].clone();
    wait("the leader labels", Duration::from_secs(10), async || {
        let (la, lb) = (labels(NS, "companion-a"), labels(NS, "companion-b"));
        (la["isogroup.io/leader"] == "true" && lb["isogroup.io/leader-team-b"] == "true").then_some(())
    })
    .await;
    assert!(labels(NS, "companion-a").get("isogroup.io/leader-team-b").is_none());
    assert!(labels(NS, "companion-b").get("isogroup.io/leader").is_none(), "B is not the default's leader");
    // A lane comes and goes; each keeps its record.
    lane(&fake, true);
    wait("every installation serving the lane", Duration::from_secs(20), async || {
        let all = [a.lanes().await?, b.lanes().await?, c.lanes().await?];
        all.iter().all(|l| l.contains(&LANE.to_owned())).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Whose writes touched what: each only its own Lease, record, pod.
    let log = fake.writes();
    let own = |r: &Replica, ns: &str, lease: &str, state: &str, w: &Write| {
        w.namespace == ns
            && ((w.res == leases() && w.name == lease)
                || (w.res == configmaps() && w.name.starts_with(state))
                || (w.res == pods() && w.name == r.pod))
    };
    for (r, ns, lease, state) in [
        (&a, NS, "isogroup-companion", "isogroup-state-0"),
        (&b, NS, "isogroup-companion-team-b", "isogroup-state-team-b-"),
        (&c, "other-system", "isogroup-companion", "isogroup-state-0"),
    ] {
        let others: Vec<&Write> =
            r.writes(&log).map(|(_, w)| w).filter(|w| w.res != events() && !own(r, ns, lease, state, w)).collect();
        assert!(others.is_empty(), "{} wrote outside its installation: {others:#?}", r.pod);
    }
}

/// `--installation` that is no label value and `--max-stale-s` below the
/// Lease's duration: exit 2, naming the flag.
#[test]
fn bad_flags_exit_2_naming_the_flag() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_isogroup-companion"))
            .args(["serve", "--listen", "127.0.0.1:0", "--kubernetes", "--pod-name", "p"])
            .args(args)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&["--installation", "team a!"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--installation") && err.contains("label value"), "{err}");
    let (code, err) = run(&["--lease-ms", "15000", "--max-stale-s", "10"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--max-stale-s") && err.contains("at least"), "{err}");
    // at the Lease's duration: accepted (then no cluster: exit 1)
    let (code, err) = run(&["--lease-ms", "15000", "--max-stale-s", "15"]);
    assert_eq!(code, Some(1), "{err}");
}
