//! The Envoy arms: a real Envoy (two workers) among the pollers, running
//! the wasm filter with the companion as its table source. Each arm is one
//! Envoy with one wasm build (the shipped one, which asks for deltas, and
//! the whole-only build), all polling the same companion.
//!
//! What a change costs an Envoy is read from the kernel, not from the
//! filter: the CPU time of each of the process's threads
//! (`/proc/<pid>/task/<tid>/schedstat`, nanoseconds; `stat` utime + stime
//! where schedstat is missing) from just before the write until every
//! load poller holds it plus three filter ticks, with no request sent to
//! the Envoy in that window, less the process's idle rate over the same
//! length. Which version each worker VM serves is read afterwards, from
//! `x-isogroup-decision` (`vm=…; table=<version>`) on requests over fresh
//! connections (the listener balances connections exactly over workers).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, Error};

/// One Envoy arm: its name, its wasm.
#[derive(Clone, Debug)]
pub struct ArmSpec {
    pub name: String,
    pub wasm: PathBuf,
}

/// Parses `--envoy-arm name=path.wasm`.
pub fn parse_arm(text: &str) -> Result<ArmSpec, String> {
    let (name, wasm) = text.split_once('=').ok_or_else(|| format!("--envoy-arm: `{text}` is not name=path.wasm"))?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(format!("--envoy-arm: `{name}` is not a name (letters, digits, `-`)"));
    }
    Ok(ArmSpec { name: name.to_owned(), wasm: PathBuf::from(wasm) })
}

/// CPU time per thread name, nanoseconds.
pub type ThreadCpu = BTreeMap<String, u64>;

/// The CPU time of each thread of `pid`, summed per thread name (Envoy
/// names its workers `wrk:worker_<n>`, its main thread `envoy`).
pub fn thread_cpu(pid: u32) -> ThreadCpu {
    let mut out = ThreadCpu::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    let tick_ns = 1_000_000_000 / crate::clock_ticks_per_s().max(1);
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_owned();
        let ns = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| stat_ticks(&dir.join("stat")) * tick_ns);
        *out.entry(name).or_default() += ns;
    }
    out
}

fn stat_ticks(path: &Path) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// `after - before` per thread name (a thread that exited counts nothing).
pub fn cpu_delta(before: &ThreadCpu, after: &ThreadCpu) -> ThreadCpu {
    after.iter().map(|(name, ns)| (name.clone(), ns.saturating_sub(before.get(name).copied().unwrap_or(0)))).collect()
}

/// Per-thread deltas folded into the figures reported: the main thread,
/// the workers, everything else.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct CpuSplit {
    pub main_ns: u64,
    pub workers_ns: u64,
    pub other_ns: u64,
}

impl CpuSplit {
    pub fn of(delta: &ThreadCpu) -> CpuSplit {
        let mut split = CpuSplit::default();
        for (name, ns) in delta {
            if name.starts_with("wrk:") {
                split.workers_ns += ns;
            } else if name == "envoy" {
                split.main_ns += ns;
            } else {
                split.other_ns += ns;
            }
        }
        split
    }

    pub fn total_ns(&self) -> u64 {
        self.main_ns + self.workers_ns + self.other_ns
    }
}

/// The version a worker VM serves, from `x-isogroup-decision`
/// (`vm=<id>; table=<version|none>; …`).
pub fn parse_decision(value: &str) -> Option<(String, Option<u64>)> {
    let mut vm = None;
    let mut table = None;
    for part in value.split(';').map(str::trim) {
        if let Some(v) = part.strip_prefix("vm=") {
            vm = Some(v.to_owned());
        } else if let Some(t) = part.strip_prefix("table=") {
            table = Some(t.parse::<u64>().ok());
        }
    }
    Some((vm?, table?))
}

/// A running Envoy of one arm. Killed on drop.
pub struct Envoy {
    pub name: String,
    child: Child,
    pub port: u16,
    pub admin: u16,
    pub log: PathBuf,
}

impl Envoy {
    pub fn start(envoy: &Path, spec: &ArmSpec, companion_port: u16, dir: &Path, base_id: u32) -> Result<Envoy, Error> {
        let port = free_port()?;
        let admin = free_port()?;
        let wasm =
            std::fs::canonicalize(&spec.wasm).map_err(|e| format!("--envoy-arm {}: {e}", spec.wasm.display()))?;
        let config = dir.join(format!("envoy-{}.yaml", spec.name));
        std::fs::write(&config, render_config(&wasm, port, admin, companion_port))?;
        let log = dir.join(format!("envoy-{}.log", spec.name));
        let child = Command::new(envoy)
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "2", "--disable-hot-restart", "--log-level", "warn"])
            .args(["--base-id", &base_id.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Envoy { name: spec.name.clone(), child, port, admin, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// The version each worker VM serves, from requests over `connections`
    /// fresh connections.
    pub async fn served(&self, connections: usize) -> Result<BTreeMap<String, Option<u64>>, Error> {
        let mut seen = BTreeMap::new();
        for _ in 0..connections {
            // A client per request: a new connection, so exact balance
            // takes turns over the workers.
            let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
            let response = client
                .get(format!("http://127.0.0.1:{}/", self.port))
                .header("host", "fanout-probe")
                .header("x-isogroup-debug", "1")
                .send()
                .await?;
            let decision = response
                .headers()
                .get("x-isogroup-decision")
                .and_then(|v| v.to_str().ok())
                .ok_or("envoy: no x-isogroup-decision on a debug request")?;
            let (vm, table) = parse_decision(decision).ok_or_else(|| format!("envoy: decision `{decision}`"))?;
            seen.insert(vm, table);
        }
        Ok(seen)
    }

    /// Waits until both worker VMs serve `version`; answers how long that took.
    pub async fn wait_served(&mut self, version: u64, within: Duration) -> Result<Duration, Error> {
        let t0 = Instant::now();
        loop {
            if self.exited() {
                return Err(format!("envoy {} exited: see {}", self.name, self.log.display()).into());
            }
            if let Ok(seen) = self.served(6).await {
                if seen.len() >= 2 && seen.values().all(|v| *v == Some(version)) {
                    return Ok(t0.elapsed());
                }
            }
            if t0.elapsed() > within {
                let seen = self.served(6).await.unwrap_or_default();
                return Err(format!("envoy {}: workers serve {seen:?}, not v{version}", self.name).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The filter's counters and gauges (`wasmcustom.isogroup_*`) from the admin API.
    pub async fn stats(&self) -> BTreeMap<String, u64> {
        let url = format!("http://127.0.0.1:{}/stats?filter=isogroup_", self.admin);
        let Ok(response) = reqwest::get(url).await else { return BTreeMap::new() };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                let name = name.rsplit('.').next()?.to_owned();
                Some((name, value.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Envoy arms of a run, with each one's idle CPU rate.
pub struct Arms {
    pub envoys: Vec<Envoy>,
    /// Nanoseconds of CPU per second with no change and no request.
    idle_ns_per_s: Vec<f64>,
}

/// Every arm's per-thread CPU at one moment.
pub struct Snapshot {
    at: Instant,
    cpu: Vec<ThreadCpu>,
}

/// What one change (or the restart) cost one arm.
#[derive(Clone, Debug)]
pub struct ArmCost {
    pub split: CpuSplit,
    /// The total less the idle rate over the window.
    pub net_ns: i64,
    pub window: Duration,
    /// Both worker VMs served the version (checked after the window).
    pub held: bool,
}

impl Arms {
    pub async fn start(
        envoy: &Path,
        specs: &[ArmSpec],
        companion_port: u16,
        dir: &Path,
        version: u64,
    ) -> Result<Arms, Error> {
        let mut envoys = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let base_id = 40_000 + std::process::id() % 10_000 * 4 + i as u32;
            envoys.push(Envoy::start(envoy, spec, companion_port, dir, base_id)?);
        }
        for e in &mut envoys {
            e.wait_served(version, Duration::from_secs(60)).await?;
        }
        Ok(Arms { envoys, idle_ns_per_s: Vec::new() })
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot { at: Instant::now(), cpu: self.envoys.iter().map(|e| thread_cpu(e.pid())).collect() }
    }

    /// Measures each arm's CPU over `span` with nothing happening.
    pub async fn measure_idle(&mut self, span: Duration) {
        let before = self.snapshot();
        tokio::time::sleep(span).await;
        let after = self.snapshot();
        let secs = after.at.duration_since(before.at).as_secs_f64().max(1e-3);
        self.idle_ns_per_s = before
            .cpu
            .iter()
            .zip(&after.cpu)
            .map(|(b, a)| CpuSplit::of(&cpu_delta(b, a)).total_ns() as f64 / secs)
            .collect();
    }

    pub fn idle_ns_per_s(&self) -> &[f64] {
        &self.idle_ns_per_s
    }

    /// Each arm's CPU since `before`, then whether its workers serve
    /// `version`. `served_first`: wait until they do before the window
    /// closes (after a restart, where a poller's back-off sets when it
    /// fetches); the debug requests that check it are then in the window.
    pub async fn cost_since(&mut self, before: &Snapshot, version: u64, served_first: bool) -> Vec<ArmCost> {
        let mut held = Vec::new();
        if served_first {
            for envoy in &mut self.envoys {
                held.push(envoy.wait_served(version, Duration::from_secs(20)).await.is_ok());
            }
        }
        let after = self.snapshot();
        let window = after.at.duration_since(before.at);
        let mut costs = Vec::new();
        for (i, envoy) in self.envoys.iter_mut().enumerate() {
            let split = CpuSplit::of(&cpu_delta(&before.cpu[i], &after.cpu[i]));
            let idle = self.idle_ns_per_s.get(i).copied().unwrap_or(0.0) * window.as_secs_f64();
            let held = match held.get(i) {
                Some(h) => *h,
                None => envoy.wait_served(version, Duration::from_secs(10)).await.is_ok(),
            };
            costs.push(ArmCost { split, net_ns: split.total_ns() as i64 - idle as i64, window, held });
        }
        costs
    }
}

/// A listener whose every request gets a direct response through the
/// filter (the decision header names the VM and its table version), and
/// the companion as the table source.
pub fn render_config(wasm: &Path, port: u16, admin: u16, companion_port: u16) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
static_resources:
  listeners:
  - name: mesh
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    connection_balance_config: {{ exact_balance: {{}} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mesh
          route_config:
            name: mesh
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                direct_response: {{ status: 200, body: {{ inline_string: "ok\n" }} }}
          http_filters:
          - name: isogroup
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: isogroup
                root_id: isogroup
                vm_config:
                  vm_id: isogroup
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{{"table": {{"companion": {{"cluster": "isogroup-companion", "authority": "isogroup-companion", "path": "/v1/table", "wait_s": 60}}}}}}'
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: isogroup-companion
    type: STATIC
    connect_timeout: 1s
    load_assignment: {{ cluster_name: isogroup-companion, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {companion_port} }} }} }} }}] }}] }}
"#,
        wasm = wasm.display()
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_names_the_vm_and_its_table_version() {
        let d = "vm=worker-3; table=42; group=-; passthrough (service not in table)";
        assert_eq!(parse_decision(d), Some(("worker-3".to_owned(), Some(42))));
        assert_eq!(parse_decision("vm=a; table=none; x"), Some(("a".to_owned(), None)));
        assert_eq!(parse_decision("table=4"), None);
    }

    #[test]
    fn thread_cpu_is_split_into_main_workers_and_the_rest() {
        let before = ThreadCpu::from([("envoy".into(), 10), ("wrk:worker_0".into(), 5), ("dog:main".into(), 1)]);
        let after = ThreadCpu::from([
            ("envoy".into(), 30),
            ("wrk:worker_0".into(), 8),
            ("wrk:worker_1".into(), 4),
            ("dog:main".into(), 2),
        ]);
        let split = CpuSplit::of(&cpu_delta(&before, &after));
        assert_eq!(split, CpuSplit { main_ns: 20, workers_ns: 7, other_ns: 1 });
        assert_eq!(split.total_ns(), 28);
    }

    #[test]
    fn this_process_has_cpu_time_on_its_threads() {
        let cpu = thread_cpu(std::process::id());
        assert!(!cpu.is_empty());
    }

    #[test]
    fn arms_are_name_and_wasm() {
        let arm = parse_arm("deltas=target/x.wasm").unwrap();
        assert_eq!((arm.name.as_str(), arm.wasm.as_path()), ("deltas", Path::new("target/x.wasm")));
        assert!(parse_arm("no-equals").unwrap_err().contains("name=path.wasm"));
        assert!(parse_arm("bad name=x").unwrap_err().contains("not a name"));
    }

    #[test]
    fn the_config_points_the_filter_at_the_companion() {
        let yaml = render_config(Path::new("/x/f.wasm"), 1, 2, 3);
        assert!(yaml.contains("filename: /x/f.wasm"));
        assert!(yaml.contains("port_value: 3 }"));
        assert!(yaml.contains(r#""wait_s": 60"#));
    }
}
