//! The Kubernetes arm: two companion replicas (`serve --kubernetes`, a 5 s
//! Lease) over the fake API server (the companion's test fake, run in this
//! process), a cluster seeded to the synthetic table's shape (500 services,
//! their base pods and lane pods over 50 lanes). The pollers poll the
//! leader; the leader is SIGKILLed, and the time from the kill until every
//! poller holds the new leader's table (a new epoch: a whole fetch each)
//! is measured, with both replicas' RSS.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake::kinds;
use crate::fake::FakeApi;
use crate::Error;

/// The companions' namespace (their Lease, their pods).
pub const NS: &str = "isogroup-system";
/// Application namespaces the services are spread over.
const NAMESPACES: usize = 10;

fn namespace(i: usize) -> String {
    format!("apps-{}", i % NAMESPACES)
}

/// The groups of service `i`'s pods: base, then the synthetic table's lane
/// instances (0–3 per service over `groups` lanes).
pub fn pod_groups(i: usize, groups: usize) -> Vec<String> {
    let mut out = vec!["base".to_owned()];
    for k in 0..(i % 4) {
        let g = isogroup_core::synth::group(isogroup_core::synth::instance_group(i, k, groups));
        if !out.contains(&g) {
            out.push(g);
        }
    }
    out
}

/// Service `i`, its pods (one per group, all ready), its EndpointSlice and
/// its DestinationRule (a subset per group: a lane enters the table only
/// with one).
pub fn service_objects(i: usize, groups: usize) -> (Value, Vec<Value>, Value, Value) {
    let name = isogroup_core::synth::service(i);
    let ns = namespace(i);
    let service = json!({ "apiVersion": "v1", "kind": "Service", "metadata": { "name": name, "namespace": ns },
                          "spec": { "ports": [{ "port": 80 }] } });
    let mut pods = Vec::new();
    let mut endpoints = Vec::new();
    for (k, group) in pod_groups(i, groups).iter().enumerate() {
        let pod = format!("{name}-{group}-{k}");
        pods.push(json!({ "apiVersion": "v1", "kind": "Pod",
                          "metadata": { "name": pod, "namespace": ns, "labels": { "isogroup.io/group": group, "app": name } } }));
        endpoints.push(json!({ "addresses": [format!("10.{}.{}.{}", i / 250, i % 250, k + 1)],
                               "conditions": { "ready": true }, "targetRef": { "kind": "Pod", "name": pod } }));
    }
    let slice = json!({ "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                        "metadata": { "name": format!("{name}-x1"), "namespace": ns,
                                      "labels": { "kubernetes.io/service-name": name } },
                        "endpoints": endpoints });
    let subsets: Vec<Value> =
        pod_groups(i, groups).iter().map(|g| json!({ "name": g, "labels": { "isogroup.io/group": g } })).collect();
    let rule = json!({ "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                       "metadata": { "name": name, "namespace": ns }, "spec": { "host": name, "subsets": subsets } });
    (service, pods, slice, rule)
}

/// The fake API server with the cluster and the two replicas' pods.
pub async fn cluster(services: usize, groups: usize, replicas: &[&str]) -> FakeApi {
    let fake = FakeApi::start_with(&kinds::every(), "127.0.0.1:0", 1 << 16).await;
    for i in 0..services {
        let (service, pods, slice, rule) = service_objects(i, groups);
        fake.put_quietly(&kinds::destination_rules("v1"), rule);
        fake.put_quietly(&kinds::services(), service);
        for pod in pods {
            fake.put_quietly(&kinds::pods(), pod);
        }
        fake.put_quietly(&kinds::slices(), slice);
    }
    for pod in replicas {
        fake.put_quietly(
            &kinds::pods(),
            json!({ "apiVersion": "v1", "kind": "Pod",
                    "metadata": { "name": pod, "namespace": NS, "labels": { "app": "isogroup-companion" } } }),
        );
    }
    fake
}

/// One companion replica. Killed on drop.
pub struct Replica {
    pub pod: String,
    pub url: String,
    child: Child,
}

impl Replica {
    pub fn start(
        companion: &Path,
        fake: &FakeApi,
        pod: &str,
        dir: &Path,
        lease_ms: u64,
        min_publish_ms: u64,
    ) -> Result<Replica, Error> {
        let kubeconfig = dir.join(format!("kubeconfig-{pod}"));
        std::fs::write(&kubeconfig, fake.kubeconfig(NS))?;
        let port = crate::free_port()?;
        let log = std::fs::File::create(dir.join(format!("companion-{pod}.log")))?;
        let child = Command::new(companion)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--kubernetes", "--pod-name", pod])
            .args(["--namespace", NS, "--lease-ms", &lease_ms.to_string()])
            .args(["--min-publish-ms", &min_publish_ms.to_string()])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "warn")
            .env_remove("ISOGROUP_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        Ok(Replica { pod: pod.to_owned(), url: format!("http://127.0.0.1:{port}"), child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) -> Result<(), Error> {
        Command::new("kill").args(["-KILL", &self.child.id().to_string()]).status()?;
        self.child.wait()?;
        Ok(())
    }

    /// Serves a table (the leader); a standby answers otherwise.
    pub async fn serving(&mut self, client: &reqwest::Client) -> Result<bool, Error> {
        if let Some(status) = self.child.try_wait()? {
            return Err(format!("companion {} exited: {status}", self.pod).into());
        }
        let Ok(r) = client.get(format!("{}/v1/table", self.url)).send().await else { return Ok(false) };
        Ok(r.status().is_success())
    }

    /// Every watch has listed (`/readyz` answers 200).
    pub async fn listed(&self, client: &reqwest::Client) -> bool {
        let Ok(r) = client.get(format!("{}/readyz", self.url)).send().await else { return false };
        r.status().as_u16() == 200
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `probe` to hold, up to `within`; fails naming `what`.
pub async fn wait_for(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<bool, Error>,
) -> Result<Duration, Error> {
    let t0 = Instant::now();
    loop {
        if probe().await? {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            return Err(format!("kube: {what} not within {} s", within.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_service_has_a_ready_pod_per_group_in_its_slice() {
        let (service, pods, slice, rule) = service_objects(7, 50);
        assert_eq!(service["metadata"]["name"], "svc-7");
        let groups = pod_groups(7, 50);
        assert_eq!(groups[0], "base");
        assert_eq!(groups.len(), 4, "7 % 4 = 3 lanes beside base: {groups:?}");
        assert_eq!(pods.len(), groups.len());
        let endpoints = slice["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), pods.len());
        for (pod, endpoint) in pods.iter().zip(endpoints) {
            assert_eq!(endpoint["targetRef"]["name"], pod["metadata"]["name"]);
            assert_eq!(endpoint["conditions"]["ready"], true);
            assert_eq!(pod["metadata"]["namespace"], slice["metadata"]["namespace"]);
        }
        let subsets: Vec<&str> =
            rule["spec"]["subsets"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(subsets, groups);
    }
}
