//! A real companion binary (`serve --kubernetes`) over the fake API server,
//! and what the Kubernetes tests seed and read: reviews in bookinfo with a
//! base pod, its lane's pod, the Istio objects' subsets and routes. Included
//! (`#[path]`) by the tests that include the fake as `kube_fake`.

#![allow(dead_code)] // each test binary uses part

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::kube_fake::kinds::{
    configmaps, destination_rules, events, isolation_groups, leases, pods, services, slices, virtual_services,
};
use crate::kube_fake::{endpoint_slice, FakeApi, Write};

/// The lane the tests add to reviews.
pub const LANE: &str = "feature-1";
/// The DestinationRule and VirtualService the companion owns for reviews.
pub const NAME: &str = "isogroup-reviews";

pub fn pod(name: &str, namespace: &str, labels: Value) -> Value {
    json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": name, "namespace": namespace, "labels": labels } })
}

/// reviews in bookinfo with a base pod, and the companions' pods
/// (name, namespace).
pub async fn cluster(companions: &[(&str, &str)]) -> FakeApi {
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
    fake.put_quietly(
        &services(),
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": "reviews", "namespace": "bookinfo" },
                "spec": { "ports": [{ "port": 9080 }] } }),
    );
    fake.put_quietly(&pods(), pod("reviews-base-0", "bookinfo", json!({ "isogroup.io/group": "base" })));
    fake.put_quietly(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true)]));
    for (name, ns) in companions {
        fake.put_quietly(&pods(), pod(name, ns, json!({ "app": "isogroup-companion" })));
    }
    fake
}

/// The lane's pod, ready (or gone: `false`).
pub fn lane(fake: &FakeApi, on: bool) {
    if on {
        fake.put(&pods(), pod("reviews-f1-0", "bookinfo", json!({ "isogroup.io/group": LANE })));
        fake.put(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true), ("reviews-f1-0", true)]));
    } else {
        fake.put(&slices(), endpoint_slice("reviews", &[("reviews-base-0", true)]));
    }
}

/// Polls `probe` until it gives a value; fails naming `what` after `within`.
pub async fn wait<T>(what: &str, within: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn dr(fake: &FakeApi) -> Option<Value> {
    fake.get(&destination_rules("v1"), "bookinfo", NAME)
}

pub fn vs(fake: &FakeApi) -> Option<Value> {
    fake.get(&virtual_services(), "bookinfo", NAME)
}

/// The subsets' names of a DestinationRule.
pub fn subsets_of(o: &Value) -> Vec<String> {
    let all = o["spec"]["subsets"].as_array().cloned().unwrap_or_default();
    all.iter().filter_map(|s| s["name"].as_str().map(str::to_owned)).collect()
}

/// The subsets a VirtualService routes to, sorted, once each.
pub fn routes_of(o: &Value) -> Vec<String> {
    let http = o["spec"]["http"].as_array().cloned().unwrap_or_default();
    let mut subsets: Vec<String> = http
        .iter()
        .flat_map(|h| h["route"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["destination"]["subset"].as_str().map(str::to_owned))
        .collect();
    subsets.sort();
    subsets.dedup();
    subsets
}

/// One companion process (`serve --kubernetes`, a 2 s Lease, `--resync-s
/// 2`): its pod, its port, its own address at the fake (so the write log
/// tells its writes apart and it can be cut off alone). Killed on drop.
pub struct Replica {
    child: Child,
    pub pod: &'static str,
    port: u16,
    pub endpoint: String,
    dir: std::path::PathBuf,
}

impl Replica {
    /// Starts it as `pod` in `namespace` with `args` after the common flags;
    /// returns at once (it may not answer yet).
    pub async fn start(fake: &FakeApi, pod: &'static str, namespace: &str, args: &[&str]) -> Replica {
        let endpoint = fake.add_endpoint().await;
        let dir = crate::common::test_dir(&format!("kube-{pod}"));
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, fake.kubeconfig(namespace).replace(&fake.url, &endpoint)).unwrap();
        let port = crate::common::free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_isogroup-companion"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--kubernetes", "--pod-name", pod])
            .args(["--namespace", namespace, "--lease-ms", "2000", "--resync-s", "2", "--min-publish-ms", "0"])
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", std::env::var("ISOGROUP_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .env_remove("ISOGROUP_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("ISOGROUP_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap();
        Replica { child, pod, port, endpoint, dir }
    }

    /// `kill <signal>` (e.g. `-STOP`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {}", self.pod);
    }

    /// Its table (None: not serving, e.g. a standby).
    pub async fn table(&self) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/v1/table", self.port);
        let resp = reqwest::get(url).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// Its table's lanes (clusters) for reviews (None: not serving).
    pub async fn lanes(&self) -> Option<Vec<String>> {
        let table = self.table().await?;
        let clusters = table["services"]["reviews.bookinfo"]["clusters"].as_object().cloned().unwrap_or_default();
        Some(clusters.keys().cloned().collect())
    }

    /// Whether its table routes `LANE`.
    pub async fn routes_lane(&self) -> bool {
        self.lanes().await.is_some_and(|l| l.contains(&LANE.to_owned()))
    }

    pub async fn serving(&self) -> bool {
        self.table().await.is_some()
    }

    /// Waits until every watch has listed (`/readyz` answers 200).
    pub async fn listed(&self) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        wait(&format!("{} listed", self.pod), Duration::from_secs(20), async || {
            (reqwest::get(&url).await.ok()?.status().as_u16() == 200).then_some(())
        })
        .await;
    }

    /// A counter from `/metrics` (`isogroup_companion_<name>`).
    pub async fn counter(&self, name: &str) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        let prefix = format!("isogroup_companion_{name}");
        let line = text.lines().find(|l| l.starts_with(&prefix) && !l.starts_with('#'))?;
        line.rsplit(' ').next()?.parse::<f64>().ok().map(|v| v as u64)
    }

    /// Its writes in the log, with their places.
    pub fn writes<'a>(&self, log: &'a [Write]) -> impl Iterator<Item = (usize, &'a Write)> + 'a {
        let endpoint = self.endpoint.clone();
        log.iter().enumerate().filter(move |(_, w)| w.endpoint == endpoint)
    }

    /// Its writes in the log other than Lease renewals.
    pub fn writes_but_renewals<'a>(&self, log: &'a [Write]) -> Vec<&'a Write> {
        self.writes(log).map(|(_, w)| w).filter(|w| w.res != leases()).collect()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The DestinationRule's subsets (none while it is absent).
pub fn subsets(fake: &FakeApi) -> Vec<String> {
    dr(fake).map_or_else(Vec::new, |o| subsets_of(&o))
}

/// The VirtualService's routes (none while it is absent).
pub fn routes(fake: &FakeApi) -> Vec<String> {
    vs(fake).map_or_else(Vec::new, |o| routes_of(&o))
}
